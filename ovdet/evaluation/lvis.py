"""LVIS box AP (APr/APc/APf), standard or Fixed AP, through the ``lvis`` package.

The ``lvis`` package (0.5.3) still uses ``np.float``, removed in numpy 1.24; its one accumulate
step is reimplemented here (:func:`_lvis_accumulate`), verified equal to the original.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ovdet.evaluation.base import BoxEvaluator

__all__ = ["LVISEvaluator"]


def _lvis():
    try:
        import lvis
    except ImportError as e:
        raise ImportError(
            "LVIS evaluation needs the lvis package: pip install lvis (or pip install 'ovdet[eval]')"
        ) from e
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
            evals = [e for e in lvis_eval.eval_imgs[start : start + n_img] if e is not None]
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
    lvis_eval.eval = {"params": p, "counts": [n_thr, n_rec, n_cat, n_area], "precision": precision, "recall": recall}


class LVISEvaluator(BoxEvaluator):
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

    def __init__(
        self,
        gt: str | os.PathLike | Mapping[str, Any],
        category_ids: Sequence[Any] | None = None,
        *,
        fixed_ap: bool = False,
        max_dets: int = 300,
        topk_per_class: int = 10_000,
        strict: bool = False,
    ) -> None:
        _lvis()
        if max_dets < 1 or topk_per_class < 1:
            raise ValueError(f"max_dets and topk_per_class must be >= 1, got {max_dets}, {topk_per_class}")
        self.fixed_ap, self.max_dets, self.topk_per_class = fixed_ap, int(max_dets), int(topk_per_class)
        super().__init__(gt, category_ids, strict)
        bad_img = [
            img["id"]
            for img in self.gt["images"]
            if "neg_category_ids" not in img or "not_exhaustive_category_ids" not in img
        ]
        bad_cat = [c["id"] for c in self.gt["categories"] if c.get("frequency") not in ("r", "c", "f")]
        if bad_img or bad_cat:
            raise ValueError(
                f"not an LVIS annotation set: {len(bad_img)} images lack neg_category_ids/"
                f"not_exhaustive_category_ids and {len(bad_cat)} categories lack frequency r/c/f "
                f"(for COCO-style data use COCOEvaluator, i.e. drop --lvis/--fixed-ap)"
            )
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
