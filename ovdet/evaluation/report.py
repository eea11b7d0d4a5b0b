"""What people look at after an evaluation: the metrics table, ``metrics.json``, PR curves, results files."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovdet.io import atomic_write_text

__all__ = ["format_metrics", "json_ready", "plot_pr_curves", "save_results", "write_metrics", "write_report"]


def save_results(path: str | os.PathLike, results: Iterable[Mapping[str, Any]]) -> Path:
    """Write COCO result dicts (e.g. ``evaluator.results``) as a json list, atomically.

    Returns:
        The written path (parent directories are created).
    """
    return atomic_write_text(path, json.dumps([dict(r) for r in results]))


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
    raise TypeError(
        f"plot_pr_curves needs a precision array, an evaluated COCOEvaluator/LVISEvaluator or a "
        f"COCOeval/LVISEval after accumulate(), got {type(source).__name__}"
    )


def plot_pr_curves(
    source: Any, names: Sequence[str], path: str | os.PathLike, iou: float = 0.5, num_classes: int = 5
) -> Path:
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
    ax.set(
        xlabel="Recall",
        ylabel="Precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=f"Precision-recall at IoU={iou:g} (legend: AP{round(iou * 100)})",
    )
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def json_ready(value: Any) -> Any:
    """``value`` for strict JSON: NaN (a metric with nothing to count, the AP of a class without
    ground truth) becomes None, tuples become lists; dicts and lists are copied."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, Mapping):
        return {k: json_ready(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(x) for x in value]
    return value


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics`` as strict JSON (:func:`json_ready`), atomically.

    Returns:
        The written path (parent directories are created).
    """
    return atomic_write_text(path, json.dumps(json_ready(metrics), indent=1, allow_nan=False))


def write_report(
    metrics: Mapping[str, Any], save_dir: str | os.PathLike, precision: Any = None, names: Sequence[str] | None = None
) -> Path:
    """Print the metrics table; write ``metrics.json`` (NaN → null) and, given a precision array, ``pr_curve.png``.

    Returns:
        The save directory (created if needed).
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    print(format_metrics(metrics))
    write_metrics(save_dir / "metrics.json", metrics)
    written = ["metrics.json"]
    if precision is not None and names is not None:
        try:
            plot_pr_curves(precision, names, save_dir / "pr_curve.png")
            written.append("pr_curve.png")
        except ImportError as e:
            print(f"warning: no pr_curve.png ({e})", file=sys.stderr)
    print(f"results: {', '.join(str(save_dir / w) for w in written)}")
    return save_dir
