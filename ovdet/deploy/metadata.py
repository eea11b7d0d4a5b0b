"""The JSON descriptions ovdet stores in exported ONNX files, and their checks.

An exported detector carries :data:`METADATA_KEY` (vocabulary mode, names, embedding width,
stride, input size, in-graph NMS settings, text encoder files); an exported text encoder carries
:data:`TEXT_METADATA_KEY` (tokenizer kind and file, context length, templates, width).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["METADATA_KEY", "TEXT_METADATA_KEY", "parse_metadata"]

#: metadata_props key of an exported detector.
METADATA_KEY = "ovdet"
#: metadata_props key of an exported text encoder.
TEXT_METADATA_KEY = "ovdet_text"

_REQUIRED = {
    METADATA_KEY: ("vocab", "names", "embed_dim", "stride", "imgsz", "nms", "inputs", "outputs"),
    TEXT_METADATA_KEY: ("tokenizer", "tokenizer_file", "context_length", "dim", "templates", "inputs", "encoder_id"),
}


def parse_metadata(metadata: dict[str, str], key: str, path: str | Path) -> dict[str, Any]:
    """ovdet's description of an exported file, checked.

    Args:
        metadata: the file's metadata properties.
        key: :data:`METADATA_KEY` (detector) or :data:`TEXT_METADATA_KEY` (text encoder).
        path: the file, for messages.

    Raises:
        ValueError: the file has no ovdet description of that kind, or a broken one (the
            path and the missing fields are named).
    """
    what = "detector" if key == METADATA_KEY else "text encoder"
    if key not in metadata:
        other = TEXT_METADATA_KEY if key == METADATA_KEY else METADATA_KEY
        hint = (
            f" (it is an exported {'text encoder' if key == METADATA_KEY else 'detector'})" if other in metadata else ""
        )
        raise ValueError(
            f"{path}: an ONNX model without ovdet {what} metadata{hint}; export one with `ovdet export` / Detector.export"
        )
    try:
        meta = json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: ovdet metadata is not valid JSON ({e})") from e
    missing = [f for f in _REQUIRED[key] if f not in meta]
    if not isinstance(meta, dict) or missing:
        raise ValueError(f"{path}: ovdet {what} metadata lacks {missing}; re-export the model with this ovdet version")
    return meta
