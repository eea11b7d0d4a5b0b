"""Shared fixtures: the real-image data folder (``OVDET_DATA``, default ``../shared/data``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import require_data

_DEFAULT_DATA = Path(__file__).resolve().parents[1] / "../shared/data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder; skips the test when it is absent (fails in CI)."""
    return require_data(Path(os.environ.get("OVDET_DATA", _DEFAULT_DATA)).resolve())


@pytest.fixture(scope="session")
def coco128_images(data_dir: Path) -> list[Path]:
    """Sorted paths of the 128 coco128 JPEGs (longest side 640)."""
    return sorted(require_data(data_dir / "coco128" / "images" / "train2017", "coco128 images").glob("*.jpg"))


@pytest.fixture
def sealed(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, no unpickling: socket connects and every unpickling entry point raise."""
    import pickle
    import socket

    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("this must not touch the network or unpickle anything")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)

    class RefusingUnpickler(pickle.Unpickler):  # a class, so libraries may still subclass it at import
        def __init__(self, *args, **kwargs) -> None:
            refuse()

    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    monkeypatch.setattr(torch, "load", refuse)


@pytest.fixture(autouse=True, scope="session")
def _isolated_ovdet_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never read or write the user's ~/.cache/ovdet (tests may override it again).

    Session-scoped, so it is in place before any module- or class-scoped fixture builds a
    detector or an embedding cache (a function-scoped one came too late for those)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OVDET_HOME", str(tmp_path_factory.getbasetemp() / "ovdet_home"))
        yield


try:  # ultralytics is a dev dependency; tests that need it import it themselves
    from ultralytics.nn.modules.head import Detect as _Detect
except ImportError:  # pragma: no cover
    _Detect = None
_DETECT_LEGACY = None if _Detect is None else _Detect.legacy


@pytest.fixture(autouse=True)
def _restore_ultralytics_globals() -> Iterator[None]:
    """Undo ultralytics' class-level mutation: building a model sets ``Detect.legacy`` for the
    whole process, which changes how later models (WorldDetect inherits it) draw their random
    weights. Every test starts from the value at import, whatever ran before it."""
    yield
    if _Detect is not None:
        _Detect.legacy = _DETECT_LEGACY
