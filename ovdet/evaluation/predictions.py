"""``predictions.json``: what ``ovdet predict`` writes, and how evaluation reads it back.

::

    {"names": [...],                                  the vocabulary
     "skipped": [{"source": ..., "reason": ...}],     inputs that could not be read
     "images": [Detections.to_dict() + {"annotated": file}, ...]}

Each image entry holds ``path``, ``image_size`` (h, w), ``names`` and ``detections``, each
``{"box": [x1, y1, x2, y2] original pixels, "score", "label", "name"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from ovdet.io import atomic_write_text
from ovdet.structures import xyxy_to_xywh

__all__ = ["is_predictions", "predictions_to_results", "read_predictions", "write_predictions"]


def write_predictions(
    path: str | Path, names: Sequence[str], images: Iterable[Mapping[str, Any]], skipped: Iterable[tuple[str, str]] = ()
) -> Path:
    """Write ``predictions.json`` atomically.

    Args:
        path: the file.
        names: the vocabulary.
        images: one :meth:`~ovdet.structures.Detections.to_dict` per image (extra keys kept).
        skipped: (source, reason) of every input that could not be read.
    """
    data = {
        "names": list(names),
        "skipped": [{"source": s, "reason": r} for s, r in skipped],
        "images": [dict(i) for i in images],
    }
    return atomic_write_text(path, json.dumps(data, indent=1))


def read_predictions(path: str | Path) -> dict[str, Any]:
    """Read and check a ``predictions.json``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not an object with an ``images`` list (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not is_predictions(data):
        raise ValueError(f"{path} is not an ovdet predictions.json (an object with an 'images' list)")
    return data


def is_predictions(data: Any) -> bool:
    """Whether parsed JSON has the shape of a ``predictions.json``."""
    return isinstance(data, dict) and isinstance(data.get("images"), list)


def predictions_to_results(
    data: Mapping[str, Any], gt: Mapping[str, Any], category_ids: Sequence[Any], category_names: Sequence[str]
) -> list[dict[str, Any]]:
    """A ``predictions.json`` as COCO result dicts of a ground truth.

    Images are matched by file name (the basename of ``path`` against the basename of the
    ground truth's ``file_name``, or of ``coco_url`` without one), detections by class name
    against the category names (exactly, else ignoring case, ``_`` vs space and surrounding
    spaces). What does not match keeps a descriptive string as its id, so an evaluator counts
    it as an unknown image or category and can name it.

    Args:
        data: the parsed file.
        gt: the COCO/LVIS ground truth (``images``).
        category_ids: K category ids, in the order of ``category_names``.
        category_names: K category names.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.
    """
    by_file: dict[str, Any] = {}
    for img in gt["images"]:
        name = img.get("file_name") or img.get("coco_url") or ""
        by_file.setdefault(PurePath(str(name)).name, img["id"])

    def norm(s: str) -> str:
        return " ".join(s.replace("_", " ").lower().split())

    by_name: dict[str, Any] = {}
    for cid, name in zip(category_ids, category_names):
        by_name.setdefault(name, cid)
    for cid, name in zip(category_ids, category_names):
        by_name.setdefault(norm(name), cid)
    names = list(data.get("names") or [])
    results = []
    for rec in data["images"]:
        file = PurePath(str(rec.get("path"))).name
        image_id = by_file.get(file, f"<file {file!r} not in the ground truth>")
        for d in rec.get("detections") or []:
            name = d.get("name")
            if name is None and "label" in d and 0 <= int(d["label"]) < len(names):
                name = names[int(d["label"])]
            cid = by_name.get(name, by_name.get(norm(str(name)), f"<name {name!r} not a ground-truth category>"))
            results.append(
                {
                    "image_id": image_id,
                    "category_id": cid,
                    "bbox": xyxy_to_xywh([d["box"]])[0].tolist(),
                    "score": d["score"],
                }
            )
    return results
