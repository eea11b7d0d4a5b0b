"""Embedding files: what ``ovdet embed`` writes and ``Detector.set_class_embeddings`` reads.

One safetensors file: a tensor ``"embeddings"`` (K, D) float32 and metadata holding the names
(JSON list), the encoder id and the templates (JSON list), readable with any safetensors tool.

Reading needs no PyTorch (the deployment runtime loads these files with numpy); writing does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ovdet.io import atomic_write
from ovdet.structures import is_tensor, optional_torch
from ovdet.text.base import validate_class_names, validate_templates

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["load_embeddings", "read_safetensors", "save_embeddings", "write_safetensors"]

_EMBEDDINGS_FORMAT = "ovdet-embeddings"
FORMAT_VERSION = "1"


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
        ValueError: row count or shape does not match the names, or values are not finite.
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
    metadata = {
        "format": _EMBEDDINGS_FORMAT,
        "version": FORMAT_VERSION,
        "names": json.dumps(names),
        "encoder_id": str(encoder_id),
        "templates": json.dumps(list(templates)),
    }
    write_safetensors(path, {"embeddings": emb}, metadata)
    return path


def load_embeddings(path: str | Path) -> tuple[list[str], torch.Tensor | np.ndarray, dict[str, Any]]:
    """Read a file written by :func:`save_embeddings` / ``ovdet embed``.

    Returns:
        (names: K strings, embeddings: (K, D) float32 (a tensor; a numpy array where PyTorch
        is not installed), meta: ``{"encoder_id": str, "templates": tuple[str, ...],
        "format": str, "version": str}``).

    Raises:
        FileNotFoundError: the file does not exist (named).
        ValueError: the file is unreadable, lacks the embeddings or names, or its row count does
            not match its names (the file is named).
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
    emb = emb.float() if is_tensor(emb) else emb.astype(np.float32, copy=False)  # (K, D)
    if not np.isfinite(np.asarray(emb)).all():
        raise ValueError(f"{path}: embeddings contain NaN or infinite values")
    meta = {
        "encoder_id": metadata.get("encoder_id", ""),
        "templates": templates,
        "format": metadata.get("format", ""),
        "version": metadata.get("version", ""),
    }
    return names, emb, meta
