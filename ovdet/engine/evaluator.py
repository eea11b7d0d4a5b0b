"""COCO and LVIS box evaluation with the three-method protocol: ``reset()``, ``process()``, ``evaluate()``.

Boxes arrive as float32 xyxy pixels of the original image (:class:`~ovdet.structures.Detections`
or arrays) and are converted to COCO ``[x, y, w, h]`` here, exactly once, when they are accumulated.
Class indices are mapped to the dataset's category ids through a ``category_ids`` list.

Scoring is delegated to the reference implementations: pycocotools (or faster-coco-eval, which
reproduces it) for COCO, the ``lvis`` package for LVIS, so numbers match published tables.
Bad input (unknown image or category ids, NaN/inf values, negative sizes, an image processed
twice) is dropped and counted, with one warning at :meth:`evaluate`; ``strict=True`` raises instead.

Example::

    ev = COCOEvaluator("instances_val2017.json", category_ids=dataset.category_ids)
    for batch in loader:
        ev.process(batch.image_ids, det.predict(batch.images))
    metrics = ev.evaluate()          # {"AP": ..., "AP50": ..., ..., "per_class": [...], "dropped": {...}}
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ovdet.structures import Detections

__all__ = [
    "write_report",
    "COCOEvaluator",
    "LVISEvaluator",
    "evaluate_results_file",
    "format_metrics",
    "plot_pr_curves",
    "save_results",
]

BACKENDS = ("pycocotools", "faster_coco_eval")

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
            raise ValueError(f"{source} is not a COCO/LVIS annotation file (top level is {type(data).__name__}, "
                             f"expected an object with 'images', 'annotations', 'categories')")
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


class _BoxEvaluator:
    """Accumulation and validation shared by :class:`COCOEvaluator` and :class:`LVISEvaluator`."""

    def __init__(self, gt: str | os.PathLike | Mapping[str, Any], category_ids: Sequence[Any] | None,
                 strict: bool) -> None:
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
            raise ValueError(f"process() got {len(image_ids)} image ids but {len(detections)} detection items; "
                             f"give one per image")
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
        metrics["dropped"] = {**{k: int(self._dropped[k]) for k in DROP_REASONS},
                              "total": int(sum(self._dropped.values()))}
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
                raise ValueError(f"result {i} is not a COCO result dict with image_id, category_id, bbox, score: "
                                 f"{r!r}") from e
        xywh = self._as_boxes(boxes, "bbox of the results")
        self._accept(image_ids, xywh, self._as_scores(scores, len(xywh)), cats)

    def process_results_file(self, path: str | os.PathLike) -> None:
        """Accumulate a COCO results json (a list of result dicts) or an ``ovdet predict`` predictions.json.

        For predictions.json, images are matched to the ground truth by file name (the basename of
        ``path`` against the basename of ``file_name``, or of ``coco_url`` when there is no
        ``file_name``), and detections by class name against the ground-truth category names
        (exactly, else ignoring case, ``_`` vs space and surrounding spaces). Unmatched images and
        names are counted as unknown image/category ids.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"results file not found: {path}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list):
            self.process_results(data)
        elif isinstance(data, dict) and isinstance(data.get("images"), list):
            self.process_results(self._from_predictions(data))
        else:
            raise ValueError(f"{path} is neither a COCO results list nor an ovdet predictions.json "
                             f"(an object with 'images')")

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
                raise ValueError(f"detections for image {image_id!r} lack {missing}: a mapping needs 'boxes' "
                                 f"(N, 4) xyxy pixels, 'scores' (N,), 'labels' (N,)")
            xyxy = self._as_boxes(item["boxes"], f"boxes of image {image_id!r}")
            scores = self._as_scores(item["scores"], len(xyxy))
            cats = self._labels_to_categories(item["labels"], len(xyxy))
        elif isinstance(item, Sequence) and not isinstance(item, str):
            for r in item:
                if not isinstance(r, Mapping) or not {"bbox", "score", "category_id"} <= r.keys():
                    raise ValueError(f"detections for image {image_id!r} must be Detections, a mapping with boxes/"
                                     f"scores/labels, or COCO result dicts with bbox/score/category_id; got {r!r}")
                if "image_id" in r and _py(r["image_id"]) != image_id:
                    raise ValueError(f"a result dict with image_id {r['image_id']!r} was given for image {image_id!r}")
            xywh = self._as_boxes([r["bbox"] for r in item], f"bbox of image {image_id!r}")
            scores = self._as_scores([r["score"] for r in item], len(xywh))
            return xywh, scores, [_py(r["category_id"]) for r in item]
        else:
            raise TypeError(f"detections for image {image_id!r} must be Detections, a mapping or a list of COCO "
                            f"result dicts, got {type(item).__name__}")
        xywh = xyxy.copy()  # (N, 4) xyxy → xywh: the one place boxes change format
        xywh[:, 2:] -= xywh[:, :2]
        return xywh, scores, cats

    def _drop(self, reason: str, count: int, examples: Iterable[str]) -> None:
        examples = list(dict.fromkeys(examples))  # distinct, in order
        if self.strict:
            shown = ", ".join(examples[:_MAX_EXAMPLES]) + (", ..." if len(examples) > _MAX_EXAMPLES else "")
            raise ValueError(f"{count} detection(s) with {DROP_REASONS[reason]}: {shown} "
                             f"(strict=True; fix the input, or use strict=False to drop and count them)")
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
            self._results.append({"image_id": image_ids[i], "category_id": cats[i],
                                  "bbox": xywh[i].tolist(), "score": float(scores[i])})

    def _warn_dropped(self) -> None:
        total = sum(self._dropped.values())
        if not total:
            return
        parts = [f"{self._dropped[k]} with {DROP_REASONS[k]} (e.g. {', '.join(self._examples[k])})"
                 for k in DROP_REASONS if self._dropped[k]]
        warnings.warn(f"{type(self).__name__}: dropped {total} of {total + len(self._results)} detections: "
                      + "; ".join(parts) + ". Pass strict=True to raise instead.", stacklevel=3)

    def _from_predictions(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """ovdet predictions.json → COCO result dicts (unmatched files/names left as strings to be counted)."""
        by_file: dict[str, Any] = {}
        for img in self.gt["images"]:
            name = img.get("file_name") or img.get("coco_url") or ""
            by_file.setdefault(PurePath(str(name)).name, img["id"])

        def norm(s: str) -> str:
            return " ".join(s.replace("_", " ").lower().split())

        by_name: dict[str, Any] = {}
        for cid, name in zip(self.gt_category_ids, self.names):
            by_name.setdefault(name, cid)
        for cid, name in zip(self.gt_category_ids, self.names):
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
                x1, y1, x2, y2 = d["box"]
                results.append({"image_id": image_id, "category_id": cid, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "score": d["score"]})
        return results

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


# ---------------------------------------------------------------------------------------------
# COCO


def _faster_coco_eval():
    try:
        import faster_coco_eval
    except ImportError as e:
        raise ImportError("backend='faster_coco_eval' needs the faster-coco-eval package: "
                          "pip install faster-coco-eval (or pip install 'ovdet[eval]')") from e
    return faster_coco_eval


def _silent(*args: Any, **kwargs: Any) -> None:
    pass


class COCOEvaluator(_BoxEvaluator):
    """COCO box AP/AR (the 12 ``COCOeval.stats``) over accumulated detections.

    Args:
        gt: COCO instances json path, or the same content as a dict (copied, never mutated).
        category_ids: the dataset category id of each class index (``Detections.labels`` and
            mapping ``labels`` index into it); default: the ground-truth category ids sorted
            ascending (label i ↔ the i-th category). Not used for COCO result dicts, which carry
            their ``category_id``.
        backend: ``"pycocotools"`` (reference) or ``"faster_coco_eval"`` (same numbers, C++).
        max_dets: the three per-image detection caps of AR1/AR10/AR100; AP uses the last.
        strict: raise ValueError on input that would otherwise be dropped and counted.

    Raises:
        ValueError: empty ground truth (no images or categories), bad ``backend`` or ``max_dets``.
        ImportError: ``backend="faster_coco_eval"`` without the package installed.
    """

    def __init__(self, gt: str | os.PathLike | Mapping[str, Any], category_ids: Sequence[Any] | None = None, *,
                 backend: str = "pycocotools", max_dets: Sequence[int] = (1, 10, 100), strict: bool = False) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        max_dets = tuple(int(m) for m in max_dets)
        if len(max_dets) != 3 or any(m < 1 for m in max_dets) or list(max_dets) != sorted(max_dets):
            raise ValueError(f"max_dets must be three increasing positive ints (COCO summarizes AR at each, "
                             f"AP at the last), got {max_dets}")
        self.backend, self.max_dets = backend, max_dets
        super().__init__(gt, category_ids, strict)
        self.stat_names = ("AP", "AP50", "AP75", "APs", "APm", "APl", *(f"AR{m}" for m in max_dets),
                           "ARs", "ARm", "ARl")
        with contextlib.redirect_stdout(io.StringIO()):
            if backend == "pycocotools":
                from pycocotools.coco import COCO

                self._gt_api = COCO()
                self._gt_api.dataset = self.gt
                self._gt_api.createIndex()
            else:
                self._gt_api = _faster_coco_eval().COCO(self.gt)
        self.backend_log = ""

    def _score(self, results: list[dict[str, Any]]) -> tuple[dict[str, Any], np.ndarray]:
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # pycocotools prints progress; the caller prints the table
            if self.backend == "pycocotools":
                from pycocotools.coco import COCO
                from pycocotools.cocoeval import COCOeval

                if results:
                    dt = self._gt_api.loadRes(results)
                else:  # loadRes cannot take an empty list; an empty result set is still a valid one
                    dt = COCO()
                    dt.dataset = {"images": self.gt["images"], "categories": self.gt["categories"], "annotations": []}
                    dt.createIndex()
                coco_eval = COCOeval(self._gt_api, dt, "bbox")
            else:
                fce = _faster_coco_eval()
                coco_eval = fce.COCOeval_faster(self._gt_api, self._gt_api.loadRes(results), "bbox",
                                                print_function=_silent)
            coco_eval.params.maxDets = list(self.max_dets)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.backend_log = log.getvalue()
        metrics: dict[str, Any] = {k: float(v) for k, v in zip(self.stat_names, coco_eval.stats[:12])}
        metrics["detections"] = len(results)
        return metrics, np.asarray(coco_eval.eval["precision"])  # (T, R, K, A, M)

    def _class_precision(self, precision: np.ndarray) -> np.ndarray:
        return precision[:, :, :, 0, -1]  # area "all", max_dets[-1]


# ---------------------------------------------------------------------------------------------
# LVIS


def _lvis():
    try:
        import lvis
    except ImportError as e:
        raise ImportError("LVIS evaluation needs the lvis package: pip install lvis "
                          "(or pip install 'ovdet[eval]')") from e
    return lvis


def _lvis_accumulate(lvis_eval: Any) -> None:
    """``LVISEval.accumulate`` for numpy >= 1.24 (lvis 0.5.3 uses the removed ``np.float``).

    Same arithmetic as the original, vectorised: per category and area range, detections of all
    images sorted by score (stable), cumulative TP/FP, precision made monotone from the right and
    sampled at the 101 recall thresholds (0 beyond the highest recall reached); -1 where the
    category has no ground truth in that range.
    """
    p = lvis_eval.params
    n_thr, n_rec, n_area, n_img = len(p.iou_thrs), len(p.rec_thrs), len(p.area_rng), len(p.img_ids)
    n_cat = len(p.cat_ids) if p.use_cats else 1
    precision = -np.ones((n_thr, n_rec, n_cat, n_area))
    recall = -np.ones((n_thr, n_cat, n_area))
    for k in range(n_cat):
        for a in range(n_area):
            start = (k * n_area + a) * n_img  # eval_imgs is ordered category, area, image
            evals = [e for e in lvis_eval.eval_imgs[start:start + n_img] if e is not None]
            if not evals:
                continue
            order = np.argsort(-np.concatenate([e["dt_scores"] for e in evals]), kind="mergesort")
            dt_m = np.concatenate([e["dt_matches"] for e in evals], axis=1)[:, order]  # (T, D)
            dt_ig = np.concatenate([e["dt_ignore"] for e in evals], axis=1)[:, order]  # (T, D)
            num_gt = np.count_nonzero(np.concatenate([e["gt_ignore"] for e in evals]) == 0)
            if num_gt == 0:
                continue
            tp_sum = np.cumsum(np.logical_and(dt_m, ~dt_ig), axis=1, dtype=np.float64)  # (T, D)
            fp_sum = np.cumsum(np.logical_and(np.logical_not(dt_m), ~dt_ig), axis=1, dtype=np.float64)
            for t in range(n_thr):
                tp, fp = tp_sum[t], fp_sum[t]
                rc = tp / num_gt
                recall[t, k, a] = rc[-1] if len(tp) else 0
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1]  # best precision at this recall or beyond
                idx = np.searchsorted(rc, p.rec_thrs, side="left")  # (R,)
                q = np.zeros(n_rec)
                ok = idx < len(pr)
                q[ok] = pr[idx[ok]]
                precision[t, :, k, a] = q
    lvis_eval.eval = {"params": p, "counts": [n_thr, n_rec, n_cat, n_area], "precision": precision,
                      "recall": recall}


class LVISEvaluator(_BoxEvaluator):
    """LVIS box AP (with APr/APc/APf) through the ``lvis`` package's ``LVISEval``.

    Standard AP keeps each image's ``max_dets`` (300) highest-scoring detections. Fixed AP
    (Dave et al., "Evaluating Large-Vocabulary Detectors: The Devil is in the Details", 2021)
    has no per-image cap and keeps each category's ``topk_per_class`` (10,000) highest-scoring
    detections over the whole dataset, so AP no longer depends on how a detector splits its
    budget between images. Caps are applied here, by score (stable for ties), before scoring;
    ``metrics["capped"]`` counts what they removed.

    Args:
        gt: LVIS v1 json path or dict (images need ``neg_category_ids`` and
            ``not_exhaustive_category_ids``, categories ``frequency``).
        category_ids: as for :class:`COCOEvaluator`.
        fixed_ap: score Fixed AP instead of standard AP.
        max_dets: the per-image cap of standard AP.
        topk_per_class: the per-category cap of Fixed AP.
        strict: raise ValueError on input that would otherwise be dropped and counted.

    Returned keys: AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR@300, ARs@300, ARm@300,
    ARl@300 (``@all`` instead of ``@300`` for Fixed AP), ``capped``, plus the common ones.
    """

    def __init__(self, gt: str | os.PathLike | Mapping[str, Any], category_ids: Sequence[Any] | None = None, *,
                 fixed_ap: bool = False, max_dets: int = 300, topk_per_class: int = 10_000,
                 strict: bool = False) -> None:
        _lvis()
        if max_dets < 1 or topk_per_class < 1:
            raise ValueError(f"max_dets and topk_per_class must be >= 1, got {max_dets}, {topk_per_class}")
        self.fixed_ap, self.max_dets, self.topk_per_class = fixed_ap, int(max_dets), int(topk_per_class)
        super().__init__(gt, category_ids, strict)
        bad_img = [img["id"] for img in self.gt["images"]
                   if "neg_category_ids" not in img or "not_exhaustive_category_ids" not in img]
        bad_cat = [c["id"] for c in self.gt["categories"] if c.get("frequency") not in ("r", "c", "f")]
        if bad_img or bad_cat:
            raise ValueError(f"not an LVIS annotation set: {len(bad_img)} images lack neg_category_ids/"
                             f"not_exhaustive_category_ids and {len(bad_cat)} categories lack frequency r/c/f "
                             f"(for COCO-style data use COCOEvaluator, i.e. drop --lvis/--fixed-ap)")
        from lvis import LVIS

        self._gt_api = LVIS.__new__(LVIS)  # LVIS() only reads paths; index the normalised dict instead
        self._gt_api.logger = logging.getLogger("lvis.lvis")
        self._gt_api.dataset = self.gt
        self._gt_api._create_index()

    def _cap(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        key, limit = ("category_id", self.topk_per_class) if self.fixed_ap else ("image_id", self.max_dets)
        groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for r in results:
            groups[r[key]].append(r)
        kept = []
        for group in groups.values():
            kept.extend(sorted(group, key=lambda r: r["score"], reverse=True)[:limit] if len(group) > limit else group)
        return kept

    def _score(self, results: list[dict[str, Any]]) -> tuple[dict[str, Any], np.ndarray]:
        lvis = _lvis()
        from lvis.eval import LVISEval

        kept = self._cap(results)
        for i, r in enumerate(kept):
            r["area"], r["id"] = r["bbox"][2] * r["bbox"][3], i + 1
        # LVISResults' constructor deep-copies the whole ground truth and rejects an empty list;
        # build the same object (bbox results need only area and id) around the kept detections.
        dt = lvis.LVISResults.__new__(lvis.LVISResults)
        dt.logger = logging.getLogger("lvis.results")
        dt.dataset = {"images": self.gt["images"], "categories": self.gt["categories"], "annotations": kept}
        dt._create_index()
        lvis_eval = LVISEval(self._gt_api, dt, iou_type="bbox")
        lvis_eval.params.max_dets = -1 if self.fixed_ap else self.max_dets  # only names the AR keys
        lvis_eval.evaluate()
        _lvis_accumulate(lvis_eval)
        lvis_eval.summarize()
        metrics: dict[str, Any] = {k.replace("@-1", "@all"): float(v) for k, v in lvis_eval.results.items()}
        metrics["detections"] = len(kept)
        metrics["capped"] = len(results) - len(kept)
        return metrics, lvis_eval.eval["precision"]  # (T, R, K, A)

    def _class_precision(self, precision: np.ndarray) -> np.ndarray:
        return precision[:, :, :, 0]  # area "all"


# ---------------------------------------------------------------------------------------------
# Files, tables, plots


def save_results(path: str | os.PathLike, results: Iterable[Mapping[str, Any]]) -> Path:
    """Write COCO result dicts (e.g. ``evaluator.results``) as a json list, atomically.

    Returns:
        The written path (parent directories are created).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([dict(r) for r in results]), encoding="utf-8")
    os.replace(tmp, path)
    return path


def build_evaluator(gt: str | os.PathLike | Mapping[str, Any], *, lvis: bool = False, fixed_ap: bool = False,
                    backend: str = "pycocotools", strict: bool = False,
                    category_ids: Sequence[Any] | None = None) -> COCOEvaluator | LVISEvaluator:
    """The evaluator for a dataset kind: LVIS (standard or Fixed AP) or COCO with a backend.

    ``category_ids[label]`` is the dataset category of a detection label (default: the GT
    category ids in ascending order).
    """
    if fixed_ap and not lvis:
        raise ValueError("Fixed AP is an LVIS metric: pass lvis=True (--lvis) with fixed_ap")
    if lvis:
        if backend != "pycocotools":
            raise ValueError(f"LVIS evaluation always uses the lvis package; backend={backend!r} applies to COCO only")
        return LVISEvaluator(gt, category_ids, fixed_ap=fixed_ap, strict=strict)
    return COCOEvaluator(gt, category_ids, backend=backend, strict=strict)


def evaluate_results_file(results_json: str | os.PathLike, gt_json: str | os.PathLike | Mapping[str, Any],
                          lvis: bool = False, fixed_ap: bool = False, backend: str = "pycocotools",
                          strict: bool = False) -> dict[str, Any]:
    """Re-score saved detections without the model.

    Args:
        results_json: a COCO results json (list of ``{"image_id", "category_id", "bbox", "score"}``,
            bbox xywh pixels) or an ``ovdet predict`` predictions.json (matched by file and class name,
            see :meth:`COCOEvaluator.process_results_file`).
        gt_json: the ground truth, path or dict.
        lvis, fixed_ap, backend, strict: see :func:`build_evaluator`.

    Returns:
        :meth:`COCOEvaluator.evaluate` / :meth:`LVISEvaluator.evaluate` metrics.
    """
    evaluator = build_evaluator(gt_json, lvis=lvis, fixed_ap=fixed_ap, backend=backend, strict=strict)
    evaluator.process_results_file(results_json)
    return evaluator.evaluate()


def format_metrics(metrics: Mapping[str, Any], max_classes: int = 100) -> str:
    """A plain-text table of summary metrics, per-class AP (classes with ground truth) and drops."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
    lines = [f"{k:<10} {v:8.4f}" for k, v in scalars.items()]
    for k in ("detections", "capped"):
        if k in metrics:
            lines.append(f"{k:<10} {metrics[k]:8d}")
    dropped = metrics.get("dropped") or {}
    if dropped.get("total"):
        lines.append("dropped    " + ", ".join(f"{k} {v}" for k, v in dropped.items() if v and k != "total"))
    rows = [(cid, name, ap) for cid, name, ap in metrics.get("per_class") or [] if not math.isnan(ap)]
    if rows:
        lines.append(f"\nper-class AP ({len(rows)} classes with ground truth)")
        lines += [f"  {str(cid):>6} {name:<30} {ap:.4f}" for cid, name, ap in rows[:max_classes]]
        if len(rows) > max_classes:
            lines.append(f"  ... {len(rows) - max_classes} more in metrics.json")
    return "\n".join(lines)


def _precision_source(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """(precision array, IoU thresholds) from an array, an evaluator or a COCOeval/LVISEval."""
    default_thrs = np.linspace(0.5, 0.95, 10)
    if isinstance(source, np.ndarray):
        return source, default_thrs
    if isinstance(getattr(source, "precision", None), np.ndarray):
        return source.precision, default_thrs
    eval_ = getattr(source, "eval", None)
    if isinstance(eval_, dict) and "precision" in eval_:
        params = eval_.get("params") or getattr(source, "params", None)
        thrs = getattr(params, "iouThrs", getattr(params, "iou_thrs", default_thrs))
        return np.asarray(eval_["precision"]), np.asarray(thrs)
    raise TypeError(f"plot_pr_curves needs a precision array, an evaluated COCOEvaluator/LVISEvaluator or a "
                    f"COCOeval/LVISEval after accumulate(), got {type(source).__name__}")


def plot_pr_curves(source: Any, names: Sequence[str], path: str | os.PathLike, iou: float = 0.5,
                   num_classes: int = 5) -> Path:
    """Precision-recall curves at one IoU threshold to a PNG: the class mean plus a few classes.

    Args:
        source: a precision array (COCO ``(T, R, K, A, M)`` or LVIS ``(T, R, K, A)``), an evaluator
            after :meth:`~COCOEvaluator.evaluate`, or a ``COCOeval``/``LVISEval`` after ``accumulate()``.
        names: ``K`` class names in category-id order (``evaluator.names``).
        path: output PNG (parent directories are created).
        iou: the IoU threshold to plot (one of the evaluated ones).
        num_classes: how many single classes to draw besides the mean, spread from best to worst AP.

    Returns:
        The written path.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plot_pr_curves needs matplotlib: pip install matplotlib") from e
    precision, thrs = _precision_source(source)
    t = np.flatnonzero(np.isclose(thrs, iou))
    if not t.size:
        raise ValueError(f"IoU {iou} was not evaluated; thresholds are {np.round(thrs, 2).tolist()}")
    curves = precision[t[0], :, :, 0, -1] if precision.ndim == 5 else precision[t[0], :, :, 0]  # (R, K)
    if curves.shape[1] != len(names):
        raise ValueError(f"got {len(names)} names for {curves.shape[1]} classes in the precision array")
    recall = np.linspace(0.0, 1.0, curves.shape[0])
    valid = np.flatnonzero((curves > -1).all(axis=0))  # classes with ground truth
    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)  # attaches an Agg canvas to this figure only; no pyplot, no global backend
    ax = fig.add_subplot()
    if valid.size:
        ap = curves[:, valid].mean(axis=0)  # (V,) AP at this IoU per class
        ranked = valid[np.argsort(-ap, kind="stable")]
        picks = ranked[np.unique(np.linspace(0, len(ranked) - 1, min(num_classes, len(ranked))).round().astype(int))]
        for k in picks:
            ax.plot(recall, curves[:, k], linewidth=1, label=f"{names[k]} {curves[:, k].mean():.3f}")
        mean = curves[:, valid].mean(axis=1)  # (R,)
        ax.plot(recall, mean, linewidth=3, color="black", label=f"all {len(valid)} classes {mean.mean():.3f}")
        ax.legend(loc="lower left", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no class has ground truth", ha="center", va="center")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"Precision-recall at IoU={iou:g} (legend: AP{round(iou * 100)})")
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_report(metrics: Mapping[str, Any], save_dir: str | os.PathLike, precision: Any = None,
                 names: Sequence[str] | None = None) -> Path:
    """Print the metrics table; write ``metrics.json`` (NaN → null) and, given a precision array, ``pr_curve.png``.

    Returns:
        The save directory (created if needed).
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    print(format_metrics(metrics))

    def clean(v):  # strict JSON: NaN (AP of a class without ground truth) becomes null
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    (save_dir / "metrics.json").write_text(json.dumps(clean(metrics), indent=1, allow_nan=False))
    written = ["metrics.json"]
    if precision is not None and names is not None:
        try:
            plot_pr_curves(precision, names, save_dir / "pr_curve.png")
            written.append("pr_curve.png")
        except ImportError as e:
            print(f"warning: no pr_curve.png ({e})", file=sys.stderr)
    print(f"results: {', '.join(str(save_dir / w) for w in written)}")
    return save_dir
