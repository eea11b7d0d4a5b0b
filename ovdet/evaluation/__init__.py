"""Evaluation: COCO and LVIS box AP with the reference scorers, reports and plots.

* :mod:`ovdet.evaluation.base` — the ``reset/process/evaluate`` protocol and shared accumulation.
* :mod:`ovdet.evaluation.coco` — :class:`COCOEvaluator` (pycocotools or faster-coco-eval).
* :mod:`ovdet.evaluation.lvis` — :class:`LVISEvaluator` (standard AP or Fixed AP).
* :mod:`ovdet.evaluation.predictions` — ``predictions.json`` (what ``ovdet predict`` writes), read back.
* :mod:`ovdet.evaluation.report` — the metrics table, ``metrics.json``, PR curves, results files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ovdet.evaluation.base import DROP_REASONS, BoxEvaluator
from ovdet.evaluation.coco import BACKENDS, COCOEvaluator
from ovdet.evaluation.lvis import LVISEvaluator
from ovdet.evaluation.report import format_metrics, plot_pr_curves, save_results, write_report

__all__ = [
    "BACKENDS",
    "DROP_REASONS",
    "BoxEvaluator",
    "COCOEvaluator",
    "LVISEvaluator",
    "build_evaluator",
    "evaluate_results_file",
    "format_metrics",
    "plot_pr_curves",
    "save_results",
    "write_report",
]


def build_evaluator(
    gt: str | os.PathLike | Mapping[str, Any],
    *,
    lvis: bool = False,
    fixed_ap: bool = False,
    backend: str = "pycocotools",
    strict: bool = False,
    category_ids: Sequence[Any] | None = None,
) -> COCOEvaluator | LVISEvaluator:
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


def evaluate_results_file(
    results_json: str | os.PathLike,
    gt_json: str | os.PathLike | Mapping[str, Any],
    lvis: bool = False,
    fixed_ap: bool = False,
    backend: str = "pycocotools",
    strict: bool = False,
) -> dict[str, Any]:
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
