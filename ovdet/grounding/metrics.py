"""Phrase-grounding metrics over plain boxes: Flickr30k Entities Recall@k and RefCOCO precision@1.

* **Recall@k, ANY-BOX protocol** (Flickr30k Entities as MDETR and GLIP report it): a phrase is
  found at ``k`` when any of its ground-truth boxes has IoU ≥ 0.5 with any of the phrase's first
  ``k`` predicted boxes (ranked by score). Phrases with no ground-truth box are not counted.
  ``R@k = found at k / counted``.
* **Precision@1** (RefCOCO / RefCOCO+ / RefCOCOg): each referring expression has one ground-truth
  box; it is right when its top-1 predicted box has IoU ≥ 0.5 with it. ``P@1 = right / expressions``;
  an expression with no predicted box is wrong.

Boxes are xyxy in the same pixels for predictions and ground truth, as tensors, arrays or nested
lists; predictions must already be sorted best first (:attr:`Grounding.boxes
<ovdet.grounding.result.Grounding.boxes>` is).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = ["IOU_THRESHOLD", "check_ks", "precision_at_1", "recall_at_k"]

#: A predicted box matches a ground-truth box at this IoU or more (both protocols).
IOU_THRESHOLD = 0.5


def _boxes(x: Any, what: str) -> torch.Tensor:
    """``x`` as a ``(N, 4)`` float64 tensor of valid xyxy boxes.

    Raises:
        ValueError: not ``(N, 4)`` (or ``(4,)`` for one box), non-finite, or x2 < x1 / y2 < y1 (named).
    """
    t = torch.as_tensor(np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64))
    if t.ndim == 1 and t.shape[0] == 4:
        t = t[None]
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(f"{what}: boxes must be (N, 4) xyxy, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what}: boxes must be finite")
    bad = torch.nonzero((t[:, 2] < t[:, 0]) | (t[:, 3] < t[:, 1])).flatten()
    if bad.numel():
        raise ValueError(f"{what}: box {int(bad[0])} is {t[int(bad[0])].tolist()}, not xyxy with x2 >= x1, y2 >= y1")
    return t


def _first_hit(pred: torch.Tensor, gt: torch.Tensor, iou_threshold: float) -> int | None:
    """Rank (0-based) of the first predicted box matching any ground-truth box, or None."""
    if pred.shape[0] == 0 or gt.shape[0] == 0:
        return None
    hits = (box_iou(pred, gt) >= iou_threshold).any(dim=1)  # (K,) bool
    idx = torch.nonzero(hits).flatten()
    return int(idx[0]) if idx.numel() else None


def check_ks(ks: Sequence[int]) -> list[int]:
    """The ``k`` values of Recall@k as a list.

    Raises:
        ValueError: none given, or one below 1.
    """
    out = [int(k) for k in ks]
    if not out or any(k < 1 for k in out):
        raise ValueError(f"ks must be positive ints, got {out}")
    return out


def recall_at_k(
    predictions: Sequence[Sequence[Any]],
    ground_truth: Sequence[Sequence[Any]],
    ks: Sequence[int] = (1, 5, 10),
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, float | int]:
    """Flickr30k Entities Recall@k, ANY-BOX protocol (see the module docstring).

    Args:
        predictions: per image, per phrase, the ``(K, 4)`` predicted boxes, best first (K may be 0).
        ground_truth: per image, per phrase (the same phrases), the ``(G, 4)`` ground-truth boxes
            (G = 0: the phrase is not counted).
        ks: the ``k`` values (positive ints).
        iou_threshold: a match needs at least this IoU.

    Returns:
        ``{"R@1": …, "R@5": …, "R@10": …, "phrases": counted}``, recalls in [0, 1] (NaN when no
        phrase is counted).

    Raises:
        ValueError: image or phrase counts that differ between the two (the image is named), a bad
            ``k``, or malformed boxes (named by image and phrase).
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"predictions cover {len(predictions)} images but ground_truth {len(ground_truth)}")
    ks = check_ks(ks)
    found = dict.fromkeys(ks, 0)
    counted = 0
    for i, (pred_phrases, gt_phrases) in enumerate(zip(predictions, ground_truth)):
        if len(pred_phrases) != len(gt_phrases):
            raise ValueError(
                f"image {i}: {len(pred_phrases)} phrases have predictions but {len(gt_phrases)} have ground truth"
            )
        for j, (pred, gt) in enumerate(zip(pred_phrases, gt_phrases)):
            g = _boxes(gt, f"ground truth of image {i}, phrase {j}")
            p = _boxes(pred, f"predictions of image {i}, phrase {j}")
            if g.shape[0] == 0:
                continue
            counted += 1
            rank = _first_hit(p[: max(ks)], g, iou_threshold)
            for k in ks:
                found[k] += rank is not None and rank < k
    out: dict[str, float | int] = {f"R@{k}": found[k] / counted if counted else float("nan") for k in ks}
    out["phrases"] = counted
    return out


def precision_at_1(
    predictions: Sequence[Any], ground_truth: Sequence[Any], iou_threshold: float = IOU_THRESHOLD
) -> dict[str, float | int]:
    """RefCOCO precision@1 (see the module docstring).

    Args:
        predictions: per referring expression, its ``(K, 4)`` predicted boxes, best first (K may be 0).
        ground_truth: per expression, its one ground-truth box ``(4,)`` (or ``(1, 4)``).

    Returns:
        ``{"P@1": …, "expressions": n}`` (NaN for no expressions).

    Raises:
        ValueError: lengths that differ, or a ground truth that is not exactly one box (named).
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} expressions have predictions but {len(ground_truth)} have ground truth")
    right = 0
    for i, (pred, gt) in enumerate(zip(predictions, ground_truth)):
        g = _boxes(gt, f"ground truth of expression {i}")
        if g.shape[0] != 1:
            raise ValueError(f"expression {i}: RefCOCO has one ground-truth box per expression, got {g.shape[0]}")
        p = _boxes(pred, f"predictions of expression {i}")
        right += _first_hit(p[:1], g, iou_threshold) is not None
    n = len(ground_truth)
    return {"P@1": right / n if n else float("nan"), "expressions": n}
