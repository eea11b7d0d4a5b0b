"""Resumable training state in safetensors + JSON, and folders replaced atomically.

A run's ``weights/last/`` (and ``weights/best/``) is an ovdet checkpoint of the EMA weights —
loadable with ``Detector.load`` — plus, for resuming:

* ``train_state.safetensors``: the live (non-EMA) weights ``model.*``, the optimizer's tensors
  ``optim.<param>.<name>``, learnable prompts ``vocab.*``, a fine-tuned text encoder ``text.*``,
  the RNG states ``rng.*``;
* ``train_state.json``: epoch / update / history, the run's config, the optimizer's groups and
  scalars, the grad scaler, EMA counters.

A folder is written next to its final name and swapped in with renames
(:func:`replace_dir`), so a kill at any moment leaves either the old or the new folder complete;
:func:`find_state_dir` recovers the newest complete one when a kill fell between two renames.
Nothing is ever unpickled. :func:`load_run` reads everything a resume needs in one go (the
:class:`RunState` a caller builds its detector from and hands to the trainer).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ovdet.checkpoint import Checkpoint, load_checkpoint
from ovdet.config import TrainConfig, from_dict
from ovdet.io import atomic_write, atomic_write_text

__all__ = [
    "STATE_JSON",
    "RunState",
    "find_state_dir",
    "load_run",
    "read_train_state",
    "replace_dir",
    "write_train_state",
]

STATE_FORMAT = "ovdet-train-state"
STATE_JSON = "train_state.json"
STATE_TENSORS = "train_state.safetensors"


def write_train_state(folder: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write the resumable part of a checkpoint into ``folder`` (the JSON last: it marks completion)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(folder / STATE_TENSORS, lambda p: save_file(flat, str(p), metadata={"format": STATE_FORMAT}))
    atomic_write_text(folder / STATE_JSON, json.dumps({"format": STATE_FORMAT, "version": 1, **meta}, indent=1))


def read_train_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) written by :func:`write_train_state`.

    Raises:
        FileNotFoundError: ``folder`` holds no training state (e.g. a plain model checkpoint).
        ValueError: the files are not ovdet training state (named).
    """
    from safetensors.torch import load_file

    meta_path, tensor_path = folder / STATE_JSON, folder / STATE_TENSORS
    for p in (meta_path, tensor_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{folder} holds no training state ({p.name} missing): resume needs a run folder or its "
                f"weights/last written by `ovdet train`"
            )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e})") from e
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"{meta_path}: 'format' is {meta.get('format')!r}, expected {STATE_FORMAT!r}")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{tensor_path}: unreadable ({e})") from e
    return tensors, meta


def _complete(folder: Path) -> bool:
    return (folder / STATE_JSON).is_file() and (folder / "model.safetensors").is_file()


def replace_dir(tmp: Path, final: Path) -> Path:
    """Move the finished folder ``tmp`` to ``final``, replacing what is there.

    ``final`` is first renamed aside (``.<name>.<id>.old``), then ``tmp`` renamed to ``final``,
    then the old one removed: at every moment one complete folder exists under a name
    :func:`find_state_dir` knows.
    """
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.{uuid.uuid4().hex}.old")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def staging_dir(final: Path) -> Path:
    """A fresh sibling folder to build ``final`` in (``.<name>.<id>.tmp``)."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    return tmp


def find_state_dir(path: str | Path) -> Path:
    """The folder to resume from: ``path`` itself, its ``weights/last``, or — when a kill fell
    between the renames of :func:`replace_dir` — the newest complete staged or set-aside copy.

    Raises:
        FileNotFoundError: nothing resumable there (the message says what was looked for).
    """
    path = Path(path)
    candidates = [path, path / "weights" / "last"]
    for folder in candidates:
        if _complete(folder):
            return folder
    for folder in candidates:  # a swap interrupted: ".last.<id>.old" / ".last.<id>.tmp" beside it
        staged = [p for p in folder.parent.glob(f".{folder.name}.*") if p.is_dir() and _complete(p)]
        if staged:
            return max(staged, key=lambda p: json.loads((p / STATE_JSON).read_text()).get("state", {}).get("update", 0))
    raise FileNotFoundError(
        f"nothing to resume at {path}: expected a run folder (with weights/last) or a weights/last folder "
        f"written by `ovdet train` (train_state.json + model.safetensors)"
    )


@dataclass(frozen=True)
class RunState:
    """A saved run, read once by :func:`load_run`: everything a resume needs.

    Build the detector from ``checkpoint.model`` (on ``config.device``) and pass this object as
    ``resume=`` to :func:`ovdet.engine.train.train` / ``Detector.train``: nothing is read again.
    The resume trains that model in place, so a ``RunState`` serves one resume.

    Attributes:
        folder: the folder read (a run's ``weights/last``, or the copy recovered beside it).
        run_dir: the run folder the resumed run keeps writing to.
        config: the run's saved :class:`~ovdet.config.TrainConfig` (it continues unchanged).
        checkpoint: the ovdet checkpoint in ``folder``: the EMA weights (``checkpoint.model``),
            the run's names and embeddings.
        tensors: the resumable tensors of :func:`read_train_state` (live weights, optimizer, RNG…).
        meta: the resumable metadata of :func:`read_train_state` (counters, optimizer groups…).
    """

    folder: Path
    run_dir: Path
    config: TrainConfig
    checkpoint: Checkpoint
    tensors: Mapping[str, torch.Tensor]
    meta: Mapping[str, Any]


def load_run(path: str | Path) -> RunState:
    """Read a run to resume, once: its folder found, training state and checkpoint loaded.

    Args:
        path: a run folder or its ``weights/last`` (an interrupted swap is recovered, see
            :func:`find_state_dir`).

    Raises:
        FileNotFoundError: nothing resumable there (named).
        ValueError: unreadable state or checkpoint files, or a saved config that is not valid (named).
    """
    folder = find_state_dir(path)
    tensors, meta = read_train_state(folder)
    config = from_dict(TrainConfig, meta["config"])
    run_dir = folder.parent.parent if folder.parent.name == "weights" else folder.parent
    return RunState(folder, run_dir, config, load_checkpoint(folder), tensors, meta)
