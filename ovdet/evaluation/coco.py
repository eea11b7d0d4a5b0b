"""COCO box AP/AR through pycocotools (the reference) or faster-coco-eval (the same numbers, in C++)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ovdet.evaluation.base import BoxEvaluator

__all__ = ["BACKENDS", "COCOEvaluator"]

BACKENDS = ("pycocotools", "faster_coco_eval")


def _faster_coco_eval():
    try:
        import faster_coco_eval
    except ImportError as e:
        raise ImportError(
            "backend='faster_coco_eval' needs the faster-coco-eval package: "
            "pip install faster-coco-eval (or pip install 'ovdet[eval]')"
        ) from e
    return faster_coco_eval


def _silent(*args: Any, **kwargs: Any) -> None:
    pass


class COCOEvaluator(BoxEvaluator):
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

    def __init__(
        self,
        gt: str | os.PathLike | Mapping[str, Any],
        category_ids: Sequence[Any] | None = None,
        *,
        backend: str = "pycocotools",
        max_dets: Sequence[int] = (1, 10, 100),
        strict: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        max_dets = tuple(int(m) for m in max_dets)
        if len(max_dets) != 3 or any(m < 1 for m in max_dets) or list(max_dets) != sorted(max_dets):
            raise ValueError(
                f"max_dets must be three increasing positive ints (COCO summarizes AR at each, "
                f"AP at the last), got {max_dets}"
            )
        self.backend, self.max_dets = backend, max_dets
        super().__init__(gt, category_ids, strict)
        self.stat_names = (
            "AP",
            "AP50",
            "AP75",
            "APs",
            "APm",
            "APl",
            *(f"AR{m}" for m in max_dets),
            "ARs",
            "ARm",
            "ARl",
        )
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
                coco_eval = fce.COCOeval_faster(
                    self._gt_api, self._gt_api.loadRes(results), "bbox", print_function=_silent
                )
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
