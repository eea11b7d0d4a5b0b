"""The evaluator protocol and what every box evaluator shares: ground truth, accumulation, validation.

Three methods, as detectron2's evaluators: ``reset()``, ``process(image_ids, detections)``,
``evaluate() -> metrics``. Boxes arrive as float32 xyxy pixels of the original image
(:class:`~ovdet.structures.Detections` or arrays) and are converted to COCO ``[x, y, w, h]``
here, exactly once, when they are accumulated. Class indices are mapped to the dataset's
category ids through a ``category_ids`` list. Bad input (unknown image or category ids, NaN/inf
values, negative sizes, an image processed twice) is dropped and counted, with one warning at
:meth:`BoxEvaluator.evaluate`; ``strict=True`` raises instead.

Example::

    ev = COCOEvaluator("instances_val2017.json", category_ids=dataset.category_ids)
    for ids, images in batches:
        ev.process(ids, det.predict(images))
    metrics = ev.evaluate()          # {"AP": ..., "AP50": ..., ..., "per_class": [...], "dropped": {...}}
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovdet.evaluation.predictions import is_predictions, predictions_to_results
from ovdet.structures import Detections, xyxy_to_xywh

__all__ = ["DROP_REASONS", "BoxEvaluator", "PerClass"]

# Why a detection was dropped → how the warning describes it. Keys are the ``metrics["dropped"]`` keys.
DROP_REASONS = {
    "unknown_image_id": "an image_id not in the ground truth",
    "unknown_category_id": "a category_id not in the ground truth (or a label with no entry in category_ids)",
    "non_finite": "a NaN/inf score or box coordinate",
    "negative_size": "a negative box width or height",
    "duplicate_image": "an image already processed (e.g. padding of a distributed sampler)",
}
_MAX_EXAMPLES = 5

PerClass = list[tuple[Any, str, float]]

# ---------------------------------------------------------------------------------------------
# Ground truth


def _load_gt(gt: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A private, normalised copy of a COCO/LVIS ground-truth dict (the caller's is never mutated).

    Annotations get ``iscrowd`` (default 0) and ``area`` (default box area) when missing, and are
    renumbered 1..N when ids are missing, 0 or repeated: pycocotools stores matches as annotation
    ids with 0 meaning "unmatched", so an annotation with id 0 could never be matched.

    Raises:
        FileNotFoundError: ``gt`` is a path that does not exist.
        ValueError: not a dict, or no images, or no categories.
    """
    if isinstance(gt, Mapping):
        data, source = dict(gt), "the ground-truth dict"
    else:
        path = Path(gt)
        if not path.is_file():
            raise FileNotFoundError(f"ground-truth annotation file not found: {path}")
        with open(path, encoding="utf-8") as f:
            data, source = json.load(f), str(path)
        if not isinstance(data, dict):
            raise ValueError(
                f"{source} is not a COCO/LVIS annotation file (top level is {type(data).__name__}, "
                f"expected an object with 'images', 'annotations', 'categories')"
            )
    images = list(data.get("images") or [])
    if not images:
        raise ValueError(f"{source} has no images: there is nothing to evaluate against")
    categories = list(data.get("categories") or [])
    if not categories:
        raise ValueError(f"{source} has no categories: detections cannot be matched to classes")
    annotations = []
    for ann in data.get("annotations") or []:
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        annotations.append(ann)
    ids = [a.get("id") for a in annotations]
    if any(i in (None, 0) for i in ids) or len(set(ids)) != len(ids):
        for i, ann in enumerate(annotations):
            ann["id"] = i + 1
    data.update(images=images, categories=categories, annotations=annotations)
    return data


def _py(value: Any) -> Any:
    """numpy scalar → Python scalar (JSON-ready); anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _numpy(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly on an accelerator
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Shared accumulation and validation


class BoxEvaluator:
    """Accumulation and validation shared by the COCO and LVIS evaluators; subclasses score."""

    def __init__(
        self, gt: str | os.PathLike | Mapping[str, Any], category_ids: Sequence[Any] | None, strict: bool
    ) -> None:
        self.gt = _load_gt(gt)
        cats = sorted(self.gt["categories"], key=lambda c: c["id"])
        self.gt_category_ids: list[Any] = [c["id"] for c in cats]
        self.names: list[str] = [str(c.get("name", c["id"])) for c in cats]
        self.category_ids: list[Any] = list(self.gt_category_ids if category_ids is None else category_ids)
        self.strict = strict
        self._image_set = {img["id"] for img in self.gt["images"]}
        self._category_set = set(self.gt_category_ids)
        self.reset()

    # -- the protocol ------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all accumulated detections, drop counters and the last precision array."""
        self._results: list[dict[str, Any]] = []
        self._dropped: Counter[str] = Counter()
        self._examples: dict[str, list[str]] = defaultdict(list)
        self._seen: set[Any] = set()
        self.precision: np.ndarray | None = None

    def process(self, image_ids: Sequence[Any], detections: Sequence[Any]) -> None:
        """Accumulate the detections of a batch of images.

        Args:
            image_ids: ``B`` dataset image ids (COCO/LVIS ``images[].id``).
            detections: ``B`` per-image items, each one of
                - :class:`~ovdet.structures.Detections` (boxes ``(N, 4)`` float32 xyxy pixels,
                  ``labels`` index ``category_ids``);
                - a mapping with ``"boxes"`` ``(N, 4)`` xyxy pixels, ``"scores"`` ``(N,)`` and
                  ``"labels"`` ``(N,)`` indices into ``category_ids`` (arrays, tensors or lists);
                - a list of COCO result dicts ``{"bbox": [x, y, w, h], "score", "category_id"}``
                  (an ``"image_id"`` in them, if present, must equal the image's id).

        Raises:
            ValueError: lengths differ, an item is malformed, or (``strict=True``) a detection
                would be dropped (the message names the offending ids/values).
        """
        if len(image_ids) != len(detections):
            raise ValueError(
                f"process() got {len(image_ids)} image ids but {len(detections)} detection items; give one per image"
            )
        for image_id, item in zip(image_ids, detections):
            image_id = _py(image_id)
            xywh, scores, cats = self._convert(image_id, item)  # (N, 4), (N,), N
            if image_id in self._seen and image_id in self._image_set:
                if len(scores):
                    self._drop("duplicate_image", len(scores), [repr(image_id)])
                continue
            self._seen.add(image_id)
            self._accept([image_id] * len(scores), xywh, scores, cats)

    def evaluate(self) -> dict[str, Any]:
        """Score everything accumulated so far (the accumulated state is kept).

        Returns:
            The summary metrics (floats; see the subclass), plus ``per_class``: a list of
            ``(category_id, name, AP)`` with AP NaN for categories absent from the ground truth,
            ``dropped``: drop counts per reason and ``total``, and ``detections``: how many were
            scored. A summary metric is -1.0 where the ground truth has no box in its range
            (pycocotools' convention). ``self.precision`` holds the backend's precision array.
        """
        self._warn_dropped()
        metrics, precision = self._score([dict(r) for r in self._results])
        self.precision = precision
        metrics["per_class"] = self._per_class(precision)
        metrics["dropped"] = {
            **{k: int(self._dropped[k]) for k in DROP_REASONS},
            "total": int(sum(self._dropped.values())),
        }
        return metrics

    # -- extras ------------------------------------------------------------------------------

    @property
    def results(self) -> list[dict[str, Any]]:
        """The accumulated, validated COCO result dicts (``bbox`` xywh pixels), a copy."""
        return [dict(r) for r in self._results]

    def process_results(self, results: Iterable[Mapping[str, Any]]) -> None:
        """Accumulate COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

        Unlike :meth:`process`, the same image may appear any number of times (one dict per box).

        Raises:
            ValueError: a dict lacks a key or has a malformed ``bbox``; or, with ``strict=True``,
                a detection would be dropped.
        """
        results = list(results)
        image_ids, cats, boxes, scores = [], [], [], []
        for i, r in enumerate(results):
            try:
                image_ids.append(_py(r["image_id"]))
                cats.append(_py(r["category_id"]))
                boxes.append(r["bbox"])
                scores.append(r["score"])
            except (KeyError, TypeError) as e:
                raise ValueError(
                    f"result {i} is not a COCO result dict with image_id, category_id, bbox, score: {r!r}"
                ) from e
        xywh = self._as_boxes(boxes, "bbox of the results")
        self._accept(image_ids, xywh, self._as_scores(scores, len(xywh)), cats)

    def process_results_file(self, path: str | os.PathLike) -> None:
        """Accumulate a COCO results json (a list of result dicts) or an ``ovdet predict`` predictions.json.

        For predictions.json, images and classes are matched by file and class name (see
        :func:`~ovdet.evaluation.predictions.predictions_to_results`); unmatched ones are counted
        as unknown image/category ids.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not JSON, or neither format (named).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"results file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if isinstance(data, list):
            self.process_results(data)
        elif is_predictions(data):
            self.process_results(predictions_to_results(data, self.gt, self.gt_category_ids, self.names))
        else:
            raise ValueError(
                f"{path} is neither a COCO results list nor an ovdet predictions.json (an object with 'images')"
            )

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _as_boxes(boxes: Any, what: str) -> np.ndarray:
        try:
            arr = _numpy(boxes, np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what} must be numbers of shape (N, 4): {e}") from e
        if arr.size == 0:
            return np.zeros((0, 4))
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"{what} must have shape (N, 4), got {arr.shape}")
        return arr

    @staticmethod
    def _as_scores(scores: Any, n: int) -> np.ndarray:
        try:
            arr = _numpy(scores, np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"scores must be numbers: {e}") from e
        if arr.shape != (n,):
            raise ValueError(f"got {arr.shape[0]} scores for {n} boxes")
        return arr

    def _labels_to_categories(self, labels: Any, n: int) -> list[Any]:
        labels = _numpy(labels, np.float64).reshape(-1)
        if labels.shape != (n,):
            raise ValueError(f"got {labels.shape[0]} labels for {n} boxes")
        k = len(self.category_ids)
        out = []
        for v in labels.tolist():
            i = int(v) if math.isfinite(v) and v == int(v) else -1
            # A label with no category is kept as a description so the drop message can name it.
            out.append(_py(self.category_ids[i]) if 0 <= i < k else f"<label {v:g}; category_ids has {k} entries>")
        return out

    def _convert(self, image_id: Any, item: Any) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """One image's item → (xywh (N, 4) float64, scores (N,) float64, N category ids)."""
        if isinstance(item, Detections):
            xyxy = item.boxes.numpy().astype(np.float64)  # (N, 4)
            scores = item.scores.numpy().astype(np.float64)
            cats = self._labels_to_categories(item.labels.numpy(), len(scores))
        elif isinstance(item, Mapping):
            missing = [k for k in ("boxes", "scores", "labels") if k not in item]
            if missing:
                raise ValueError(
                    f"detections for image {image_id!r} lack {missing}: a mapping needs 'boxes' "
                    f"(N, 4) xyxy pixels, 'scores' (N,), 'labels' (N,)"
                )
            xyxy = self._as_boxes(item["boxes"], f"boxes of image {image_id!r}")
            scores = self._as_scores(item["scores"], len(xyxy))
            cats = self._labels_to_categories(item["labels"], len(xyxy))
        elif isinstance(item, Sequence) and not isinstance(item, str):
            for r in item:
                if not isinstance(r, Mapping) or not {"bbox", "score", "category_id"} <= r.keys():
                    raise ValueError(
                        f"detections for image {image_id!r} must be Detections, a mapping with boxes/"
                        f"scores/labels, or COCO result dicts with bbox/score/category_id; got {r!r}"
                    )
                if "image_id" in r and _py(r["image_id"]) != image_id:
                    raise ValueError(f"a result dict with image_id {r['image_id']!r} was given for image {image_id!r}")
            xywh = self._as_boxes([r["bbox"] for r in item], f"bbox of image {image_id!r}")
            scores = self._as_scores([r["score"] for r in item], len(xywh))
            return xywh, scores, [_py(r["category_id"]) for r in item]
        else:
            raise TypeError(
                f"detections for image {image_id!r} must be Detections, a mapping or a list of COCO "
                f"result dicts, got {type(item).__name__}"
            )
        return xyxy_to_xywh(xyxy), scores, cats  # the one place detections change box format

    def _drop(self, reason: str, count: int, examples: Iterable[str]) -> None:
        examples = list(dict.fromkeys(examples))  # distinct, in order
        if self.strict:
            shown = ", ".join(examples[:_MAX_EXAMPLES]) + (", ..." if len(examples) > _MAX_EXAMPLES else "")
            raise ValueError(
                f"{count} detection(s) with {DROP_REASONS[reason]}: {shown} "
                f"(strict=True; fix the input, or use strict=False to drop and count them)"
            )
        self._dropped[reason] += count
        seen = self._examples[reason]
        seen.extend(e for e in examples if e not in seen and len(seen) < _MAX_EXAMPLES)

    def _accept(self, image_ids: list[Any], xywh: np.ndarray, scores: np.ndarray, cats: list[Any]) -> None:
        """Validate N detections (image_ids N, xywh (N, 4), scores (N,), cats N); keep the good ones."""
        n = len(scores)
        if n == 0:
            return
        known_image = np.fromiter((i in self._image_set for i in image_ids), bool, n)
        known_cat = np.fromiter((c in self._category_set for c in cats), bool, n)
        finite = np.isfinite(xywh).all(axis=1) & np.isfinite(scores)  # (N,)
        with np.errstate(invalid="ignore"):
            non_negative = (xywh[:, 2] >= 0) & (xywh[:, 3] >= 0)

        def describe(i: int) -> str:
            return f"image_id={image_ids[i]!r} bbox(xywh)={xywh[i].tolist()} score={scores[i]}"

        keep = np.ones(n, bool)
        for reason, bad, example in (
            ("unknown_image_id", ~known_image, lambda i: repr(image_ids[i])),
            ("unknown_category_id", ~known_cat, lambda i: repr(cats[i])),
            ("non_finite", ~finite, describe),
            ("negative_size", ~non_negative, describe),
        ):
            bad &= keep
            if bad.any():
                idx = np.flatnonzero(bad)
                self._drop(reason, len(idx), (example(int(i)) for i in idx[: 50 * _MAX_EXAMPLES]))
                keep &= ~bad
        for i in np.flatnonzero(keep).tolist():
            self._results.append(
                {"image_id": image_ids[i], "category_id": cats[i], "bbox": xywh[i].tolist(), "score": float(scores[i])}
            )

    def _warn_dropped(self) -> None:
        total = sum(self._dropped.values())
        if not total:
            return
        parts = [
            f"{self._dropped[k]} with {DROP_REASONS[k]} (e.g. {', '.join(self._examples[k])})"
            for k in DROP_REASONS
            if self._dropped[k]
        ]
        warnings.warn(
            f"{type(self).__name__}: dropped {total} of {total + len(self._results)} detections: "
            + "; ".join(parts)
            + ". Pass strict=True to raise instead.",
            stacklevel=3,
        )

    def _score(self, results: list[dict[str, Any]]) -> tuple[dict[str, Any], np.ndarray]:
        raise NotImplementedError

    def _class_precision(self, precision: np.ndarray) -> np.ndarray:
        """Precision over IoU × recall for each class, all areas, widest max-dets: (T, R, K)."""
        raise NotImplementedError

    def _per_class(self, precision: np.ndarray) -> PerClass:
        p = self._class_precision(precision)  # (T, R, K)
        table = []
        for k, (cid, name) in enumerate(zip(self.gt_category_ids, self.names)):
            valid = p[:, :, k][p[:, :, k] > -1]
            table.append((cid, name, float(valid.mean()) if valid.size else float("nan")))
        return table
