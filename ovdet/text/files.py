"""Embedding files: what ``ovdet embed`` writes and ``Detector.set_class_embeddings`` reads.

One safetensors file: a tensor ``"embeddings"`` (K, D) float32 and metadata holding the names
(JSON list), the encoder id and the templates (JSON list), readable with any safetensors tool.

Reading needs no PyTorch (the deployment runtime loads these files with numpy); writing does.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ovdet.config import TEXT_FAMILIES
from ovdet.io import atomic_write
from ovdet.structures import is_tensor, optional_torch
from ovdet.text.base import validate_class_names, validate_templates

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["check_encoder", "load_embeddings", "read_safetensors", "save_embeddings", "write_safetensors"]

_EMBEDDINGS_FORMAT = "ovdet-embeddings"
FORMAT_VERSION = "1"
#: Rows with a smaller L2 norm cannot be normalised into a direction: they would match nothing.
MIN_ROW_NORM = 1e-6


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (see :func:`ovdet.io.atomic_write`)."""
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor | np.ndarray], dict[str, str]]:
    """(tensors on CPU, metadata) of a safetensors file; the reader's own errors propagate.

    The tensors are ``torch.Tensor`` when PyTorch is installed, numpy arrays where it is not.
    """
    from safetensors import safe_open

    framework = "np" if optional_torch() is None else "pt"
    with safe_open(str(path), framework=framework, device="cpu") as f:
        metadata = dict(f.metadata() or {})
        keys = list(f.keys())  # a safetensors handle, not a dict
        tensors = {k: f.get_tensor(k) for k in keys}
    return tensors, metadata


def save_embeddings(
    path: str | Path, names: Sequence[str], emb: torch.Tensor, encoder_id: str, templates: Sequence[str]
) -> Path:
    """Write class embeddings to a safetensors file (the format ``ovdet embed`` produces).

    The file holds one tensor ``"embeddings"`` (K, D) float32; the metadata holds the names
    (JSON list), the encoder id and the templates (JSON list), readable with any safetensors tool.

    Args:
        path: file to write (atomically).
        names: K class names (validated like :func:`validate_class_names`).
        emb: (K, D) embeddings, one row per name.
        encoder_id: the id of the encoder that produced them.
        templates: prompt templates used.

    Returns:
        The path written.

    Raises:
        ValueError: row count or shape does not match the names, values are not finite, or a row
            is (nearly) zero.
    """
    import torch

    path = Path(path)
    names = validate_class_names(names)
    templates = validate_templates(templates)
    emb = torch.as_tensor(emb)
    if emb.ndim != 2 or emb.shape[0] != len(names):
        raise ValueError(f"embeddings for {path} must be (K, D) with K = {len(names)} names, got {tuple(emb.shape)}")
    emb = emb.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(emb).all():
        raise ValueError(f"embeddings for {path} contain NaN or infinite values")
    _check_rows(emb.numpy(), names, f"embeddings for {path}")
    metadata = {
        "format": _EMBEDDINGS_FORMAT,
        "version": FORMAT_VERSION,
        "names": json.dumps(names),
        "encoder_id": str(encoder_id),
        "templates": json.dumps(list(templates)),
    }
    write_safetensors(path, {"embeddings": emb}, metadata)
    return path


def load_embeddings(
    path: str | Path, encoder_id: str | None = None, allow_other_encoder: bool = False
) -> tuple[list[str], torch.Tensor | np.ndarray, dict[str, Any]]:
    """Read a file written by :func:`save_embeddings` / ``ovdet embed``.

    Args:
        path: the file.
        encoder_id: the text encoder of the model the embeddings are for (e.g.
            ``text_encoder_id(model.cfg.text)``); the file's is compared with it (see
            :func:`check_encoder`). None: no comparison.
        allow_other_encoder: use a file of another encoder anyway, with a warning.

    Returns:
        (names: K strings, embeddings: (K, D) float32 (a tensor; a numpy array where PyTorch
        is not installed), meta: ``{"encoder_id": str, "templates": tuple[str, ...],
        "format": str, "version": str}``).

    Raises:
        FileNotFoundError: the file does not exist (named).
        ValueError: the file is unreadable, lacks the embeddings or names, its row count does
            not match its names, its embeddings are not floating-point, finite and non-zero, or
            it was written by another text encoder than ``encoder_id`` (the file is named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    try:
        tensors, metadata = read_safetensors(path)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(
            f"{path}: not a readable safetensors embeddings file ({type(e).__name__}: {e}); "
            f"write one with `ovdet embed`"
        ) from e
    if "embeddings" not in tensors:
        raise ValueError(f"{path}: no 'embeddings' tensor (found {sorted(tensors)}); write one with `ovdet embed`")
    if "names" not in metadata:
        raise ValueError(f"{path}: no 'names' metadata; write the file with `ovdet embed`")
    try:
        names = json.loads(metadata["names"])
        templates = tuple(json.loads(metadata.get("templates", '["{}"]')))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: metadata is not valid JSON ({e})") from e
    try:
        names = validate_class_names(names)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad class names: {e}") from e
    emb = tensors["embeddings"]
    if emb.ndim != 2:
        raise ValueError(f"{path}: embeddings must be 2-D (K, D), got shape {tuple(emb.shape)}")
    if emb.shape[0] != len(names):
        raise ValueError(f"{path}: {len(names)} names but {emb.shape[0]} embedding rows")
    floating = emb.is_floating_point() if is_tensor(emb) else np.issubdtype(emb.dtype, np.floating)
    if not floating:
        raise ValueError(
            f"{path}: embeddings are {str(emb.dtype).removeprefix('torch.')}, not floating-point numbers; "
            "write the file with `ovdet embed` (float32)"
        )
    emb = emb.float() if is_tensor(emb) else emb.astype(np.float32, copy=False)  # (K, D)
    if not np.isfinite(np.asarray(emb)).all():
        raise ValueError(f"{path}: embeddings contain NaN or infinite values")
    _check_rows(np.asarray(emb), names, str(path))
    meta = {
        "encoder_id": metadata.get("encoder_id", ""),
        "templates": templates,
        "format": metadata.get("format", ""),
        "version": metadata.get("version", ""),
    }
    if encoder_id is not None:
        check_encoder(path, meta["encoder_id"], encoder_id, allow_other_encoder)
    return names, emb, meta


def check_encoder(path: str | Path, file_id: str, encoder_id: str, allow_other_encoder: bool = False) -> None:
    """Compare the text encoder an embeddings file records with the model's.

    Embeddings of another encoder can have the right width and still live in another space
    (e.g. OpenAI CLIP weights run with GELU instead of the QuickGELU they were trained with), so
    the model would silently match the wrong things. A file whose id names another encoder ovdet
    knows (``open_clip:…``, ``sentence_transformers:…``, as ``ovdet embed`` writes) is refused
    unless ``allow_other_encoder``, then used with a warning. A file whose id ovdet cannot compare
    (none, ``"precomputed"``, or one a user or another tool wrote) is used with a warning.

    Args:
        path: the file (for the messages).
        file_id: the encoder id the file records.
        encoder_id: the model's text encoder id (``text_encoder_id(cfg.text)``).
        allow_other_encoder: warn instead of refusing another encoder's file.

    Raises:
        ValueError: the file names another known encoder and ``allow_other_encoder`` is False (both
            ids and the override are named).
    """
    if file_id == encoder_id:
        return
    if not file_id.startswith(tuple(f"{family}:" for family in TEXT_FAMILIES)):
        recorded = f"records the text encoder {file_id!r}, not one ovdet can compare" if file_id else "records no"
        warnings.warn(
            f"{path} {recorded} text encoder: it is used as it is with the model's {encoder_id!r}; make sure it "
            "comes from that encoder (`ovdet embed --model <the model>` writes files that are checked)",
            stacklevel=3,
        )
        return
    what = (
        f"{path} was written by text encoder {file_id!r} but the model's text encoder is {encoder_id!r}; "
        "embeddings of another encoder are in another space even at the same width"
    )
    if not allow_other_encoder:
        raise ValueError(
            f"{what}, so the model would match the wrong things. Write the file with the model's encoder "
            "(`ovdet embed --model <the model>`), or use it anyway with allow_other_encoder=True "
            "(command line: --allow-other-encoder)"
        )
    warnings.warn(f"{what}; using it anyway (allow_other_encoder)", stacklevel=3)


def _check_rows(emb: np.ndarray, names: Sequence[str], what: str) -> None:
    """Raises ValueError naming the first row of (K, D) ``emb`` too small to normalise (it matches nothing)."""
    norms = np.linalg.norm(emb.astype(np.float64), axis=-1)  # (K,)
    small = np.flatnonzero(norms < MIN_ROW_NORM)
    if len(small):
        i = int(small[0])
        more = f" ({len(small)} such rows)" if len(small) > 1 else ""
        raise ValueError(
            f"{what}: row {i} ({names[i]!r}) is all zeros or nearly (norm {norms[i]:.1e}){more}: a zero "
            "embedding matches nothing; encode the names again with `ovdet embed`"
        )
