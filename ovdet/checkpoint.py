"""ovdet's own checkpoint format: a folder of safetensors + JSON, nothing to unpickle.

::

    <dir>/config.json                    {"format": "ovdet-checkpoint", "format_version": 1, "ovdet": ...,
                                          "fused": bool, "model": ModelConfig, "names": [...], ...}
    <dir>/model.safetensors              the network's state dict
    <dir>/class_embeddings.safetensors   (K, D) vocabulary embeddings, when a vocabulary is set

Every file is written atomically (:func:`ovdet.io.atomic_write`); loading builds the network on
the meta device and assigns the file's tensors, so no memory is spent on a random init.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ovdet._version import __version__
from ovdet.config import ConfigError, ModelConfig, from_dict, to_dict
from ovdet.io import atomic_write, atomic_write_text
from ovdet.models.detector import OVDetector
from ovdet.text.files import load_embeddings, save_embeddings

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "Checkpoint",
    "is_checkpoint_dir",
    "load_checkpoint",
    "non_finite_tensors",
    "read_checkpoint_meta",
    "save_checkpoint",
    "warn_non_finite",
]

CHECKPOINT_FORMAT = "ovdet-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
#: ``format_version`` values :func:`load_checkpoint` reads.
READABLE_FORMAT_VERSIONS: tuple[int, ...] = (1,)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMBEDDINGS_FILE = "class_embeddings.safetensors"


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes:
        model: the network, in eval mode, on CPU (fused when it was saved fused).
        names: the saved vocabulary (empty when none was saved).
        embeddings: (K, D) float32 embeddings of ``names``, or None.
        encoder_id: the text encoder the embeddings came from (``"precomputed"`` when unknown).
        meta: the whole ``config.json``.
    """

    model: OVDetector
    names: list[str] = field(default_factory=list)
    embeddings: torch.Tensor | None = None
    encoder_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


#: Storage types of floating-point weights :func:`save_checkpoint` writes, by their ``config.json`` name.
STORAGE_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def is_checkpoint_dir(path: str | Path) -> bool:
    """Whether ``path`` holds the two files every ovdet checkpoint has."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def save_checkpoint(
    path: str | Path,
    model: OVDetector,
    names: Sequence[str] = (),
    embeddings: torch.Tensor | None = None,
    encoder_id: str = "precomputed",
    extra: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``model`` (and a vocabulary) as an ovdet checkpoint folder.

    Args:
        path: the folder (created when missing; files already there are replaced one by one,
            each atomically).
        model: the network.
        names: K class names of ``embeddings``.
        embeddings: (K, D) vocabulary embeddings, or None (a stale embeddings file is removed).
        encoder_id: id of the text encoder that produced the embeddings.
        extra: more JSON-able entries for ``config.json`` (e.g. training provenance).
        dtype: storage type of floating-point weights (``torch.float16`` halves the file);
            :func:`load_checkpoint` always returns float32 weights.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {list(STORAGE_DTYPES.values())}, got {dtype}")
    state = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    atomic_write(path / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": CHECKPOINT_FORMAT}))
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "ovdet": __version__,
        "fused": model.is_fused,
        "dtype": STORAGE_DTYPES[dtype],
        "model": to_dict(model.cfg),
        "names": list(names) if embeddings is not None else [],
        **dict(extra or {}),
    }
    atomic_write_text(path / CONFIG_FILE, json.dumps(meta, indent=2))
    emb_path = path / EMBEDDINGS_FILE
    if embeddings is not None:
        save_embeddings(emb_path, list(names), embeddings.detach().cpu(), encoder_id, model.cfg.text.templates)
    elif emb_path.exists():
        emb_path.unlink()
    return path


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[tuple[str, int, int]]:
    """(name, non-finite values, all values) of each floating-point tensor of ``state`` holding a
    NaN or an infinity, in ``state``'s order."""
    out = []
    for name, t in state.items():
        if t.is_floating_point() and t.device.type != "meta":
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                out.append((name, bad, t.numel()))
    return out


def warn_non_finite(state: Mapping[str, torch.Tensor], source: str | Path, shown: int = 10) -> int:
    """Warn when weights read from ``source`` hold NaN or infinite values (such a model scores NaN
    and finds nothing); the message names the tensors (the first ``shown``) and their counts.

    Returns:
        How many tensors hold non-finite values (0: no warning).
    """
    bad = non_finite_tensors(state)
    if bad:
        listed = ", ".join(f"{name} ({n} of {total})" for name, n, total in bad[:shown])
        more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
        warnings.warn(
            f"{source}: {len(bad)} tensor(s) hold NaN or infinite values: {listed}{more}; the model's scores "
            "will be NaN and it will find nothing (the weights are damaged or training diverged: use an "
            "earlier checkpoint)",
            stacklevel=3,
        )
    return len(bad)


def read_checkpoint_meta(path: str | Path) -> tuple[dict[str, Any], ModelConfig]:
    """The ``config.json`` of a checkpoint folder and its validated model config (no weights read).

    Raises:
        FileNotFoundError: no ``config.json`` there.
        ValueError: not an ovdet checkpoint, a ``format_version`` this ovdet cannot read, or an
            invalid model config (:class:`~ovdet.config.ConfigError`); the file and field are named.
    """
    meta_path = Path(path) / CONFIG_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"not an ovdet checkpoint directory: {meta_path} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{meta_path}: 'format' is {found!r}, expected {CHECKPOINT_FORMAT!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in READABLE_FORMAT_VERSIONS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > CHECKPOINT_FORMAT_VERSION
        raise ValueError(
            f"{meta_path}: format_version {version!r} is not one this ovdet ({__version__}) reads "
            f"({list(READABLE_FORMAT_VERSIONS)})"
            + ("; it was written by a newer ovdet: upgrade ovdet" if newer else "; re-save the model with ovdet")
        )
    if "model" not in meta:
        raise ValueError(f"{meta_path}: no 'model' entry (the architecture)")
    try:
        cfg = from_dict(ModelConfig, meta["model"], "model.")
    except ConfigError as e:
        raise ConfigError(f"{meta_path}: {e}") from e
    return meta, cfg


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a folder written by :func:`save_checkpoint` (safetensors + JSON; nothing is unpickled).

    Weights holding NaN or infinite values are loaded with a warning naming them
    (:func:`warn_non_finite`).

    Raises:
        FileNotFoundError: the folder or one of its files is missing (named).
        ValueError: the files are not an ovdet checkpoint, of a format version this ovdet does not
            read, or do not match each other (named).
    """
    from safetensors.torch import load_file

    path = Path(path)
    weights_path = path / WEIGHTS_FILE
    meta, cfg = read_checkpoint_meta(path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"not an ovdet checkpoint directory: {weights_path} is missing")
    with torch.device("meta"):  # shapes only: every tensor comes from the file
        model = OVDetector(cfg).eval()
        if meta.get("fused"):
            model.fuse()
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{weights_path}: unreadable safetensors file ({e})") from e
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # stored fp16 → fp32
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{weights_path} does not match its config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    warn_non_finite(state, weights_path)
    ckpt = Checkpoint(model=model, meta=meta)
    emb_path = path / EMBEDDINGS_FILE
    if emb_path.is_file():
        ckpt.names, ckpt.embeddings, emb_meta = load_embeddings(emb_path)
        ckpt.encoder_id = str(emb_meta.get("encoder_id", ""))
        if ckpt.embeddings.shape[1] != cfg.embed_dim:
            raise ValueError(
                f"{emb_path}: embeddings are {tuple(ckpt.embeddings.shape)}, the model needs (K, {cfg.embed_dim})"
            )
    return ckpt
