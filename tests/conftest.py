"""Shared fixtures: the real-image data folder (``OVDET_DATA``, default ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT_DATA = Path(__file__).resolve().parents[1] / "../shared/data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder; skips the test when it is absent."""
    path = Path(os.environ.get("OVDET_DATA", _DEFAULT_DATA)).resolve()
    if not path.is_dir():
        if os.environ.get("CI") or os.environ.get("OVDET_REQUIRE_DATA"):
            pytest.fail(f"real test data is required in CI but missing at {path} (set OVDET_DATA)")
        pytest.skip(f"real test data not found at {path}; set OVDET_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def coco128_images(data_dir: Path) -> list[Path]:
    """Sorted paths of the 128 coco128 JPEGs (longest side 640)."""
    images = sorted((data_dir / "coco128" / "images" / "train2017").glob("*.jpg"))
    if not images:
        pytest.skip(f"no coco128 images under {data_dir / 'coco128/images/train2017'}")
    return images


@pytest.fixture(autouse=True)
def _isolated_ovdet_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or write the user's ~/.cache/ovdet (tests may override it again)."""
    monkeypatch.setenv("OVDET_HOME", str(tmp_path_factory.getbasetemp() / "ovdet_home"))
