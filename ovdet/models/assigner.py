"""Task-aligned label assignment (TOOD, as YOLOv8 trains): which anchor learns which box.

Each ground-truth box ranks the anchors whose centre lies inside it by the alignment metric
``score^alpha · CIoU^beta`` (score: the anchor's sigmoid score for the box's text; CIoU of the
anchor's predicted box with the ground truth, clamped at 0) and keeps its ``topk`` best. An
anchor kept by several boxes goes to the one it overlaps most. Positives learn a soft class
target: their metric rescaled so that each box's best anchor gets that anchor's overlap.

The arithmetic follows ultralytics' ``TaskAlignedAssigner`` operation for operation (same
gathers, same order of floating-point operations, same ``topk`` call), so that exact ties in
the metric, common with random weights, break the same way and the two assign the same anchors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Assignment(NamedTuple):
    """What :func:`task_aligned_assign` returns.

    Attributes:
        target_labels: (B, A) int64 text index of each anchor's box; K (no text) for an image
            without boxes, arbitrary (the first box's) for background anchors otherwise.
        target_boxes: (B, A, 4) xyxy pixels of each anchor's box (meaningful where ``fg_mask``).
        target_scores: (B, A, K) soft class targets in [0, 1]; zero rows for background.
        fg_mask: (B, A) bool, True for positive (foreground) anchors.
        target_gt_idx: (B, A) int64 index into the M ground-truth rows of each anchor's box.
    """

    target_labels: torch.Tensor
    target_boxes: torch.Tensor
    target_scores: torch.Tensor
    fg_mask: torch.Tensor
    target_gt_idx: torch.Tensor


def complete_iou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU (CIoU, Zheng et al. 2020) of paired xyxy boxes, with ultralytics' exact arithmetic.

    ``CIoU = IoU - rho² / c² - alpha · v`` with ``v = 4/π² (atan(w2/h2) - atan(w1/h1))²`` and
    ``alpha = v / (1 - IoU + v + eps)`` treated as a constant (no gradient), as in the paper.

    Not ``torchvision.ops.complete_box_iou_loss``: that one adds ``eps`` to the union and the
    enclosing diagonal only and divides by the raw heights, while ultralytics adds ``eps`` to
    both heights (not widths) and to the union after the area sum. The values differ in the last
    bits and the gradients slightly; both matter here: the assigner's top-k must break ties as
    ultralytics does, and training must follow ultralytics' gradients.

    Args:
        box1: (..., 4) xyxy boxes.
        box2: (..., 4) xyxy boxes, broadcastable against ``box1``.
        eps: guard against empty boxes and unions.

    Returns:
        (...,) CIoU in [-1.5, 1] (the broadcast shape without the last dimension).
    """
    b1_x1, b1_y1, b1_x2, b1_y2 = box1.unbind(-1)  # (...,) each
    b2_x1, b2_y1, b2_x2, b2_y2 = box2.unbind(-1)  # (...,) each
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps  # (...,)
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps  # (...,)
    inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp(0) * (
        b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)
    ).clamp(0)  # (...,)
    union = w1 * h1 + w2 * h2 - inter + eps  # (...,)
    iou = inter / union  # (...,)
    cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)  # (...,) enclosing box width
    ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)  # (...,) enclosing box height
    c2 = cw.pow(2) + ch.pow(2) + eps  # (...,) enclosing diagonal squared
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2).pow(2) + (b2_y1 + b2_y2 - b1_y1 - b1_y2).pow(2)) / 4  # (...,)
    v = (4 / math.pi**2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)  # (...,) aspect-ratio term
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)  # (...,)
    return iou - (rho2 / c2 + v * alpha)


def candidates_inside(
    anchors: torch.Tensor, gt_boxes: torch.Tensor, min_size: float, eps: float = 1e-9
) -> torch.Tensor:
    """Which anchor centres lie strictly inside each ground-truth box.

    Box sides shorter than ``min_size`` are first widened to it about the box centre, so that a
    tiny box still covers an anchor of the finer levels.

    Args:
        anchors: (A, 2) anchor centres, pixels.
        gt_boxes: (B, M, 4) xyxy pixels.
        min_size: smallest box side used for the test, pixels (0 keeps the boxes as they are).
        eps: margin an anchor must keep from every side.

    Returns:
        (B, M, A) bool.
    """
    # Through centre/size and back even when nothing is widened: the round trip moves the sides
    # by a few ulps, exactly as ultralytics' xyxy→xywh→xyxy does, so border anchors agree.
    centre = torch.stack(
        ((gt_boxes[..., 0] + gt_boxes[..., 2]) / 2, (gt_boxes[..., 1] + gt_boxes[..., 3]) / 2), -1
    )  # (B, M, 2)
    size = gt_boxes[..., 2:] - gt_boxes[..., :2]  # (B, M, 2)
    size = torch.where(size < min_size, torch.full_like(size, min_size), size)  # (B, M, 2)
    half = size / 2  # (B, M, 2)
    lt = (centre - half).unsqueeze(2)  # (B, M, 1, 2)
    rb = (centre + half).unsqueeze(2)  # (B, M, 1, 2)
    inside = anchors[:, 0] - lt[..., 0] > eps  # (B, M, A)
    inside &= anchors[:, 1] - lt[..., 1] > eps
    inside &= rb[..., 0] - anchors[:, 0] > eps
    inside &= rb[..., 1] - anchors[:, 1] > eps
    return inside


def align_metrics(
    scores: torch.Tensor,
    pred_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    candidates: torch.Tensor,
    alpha: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alignment metric and overlap of every candidate (box, anchor) pair; zero elsewhere.

    Args:
        scores: (B, A, K) sigmoid scores.
        pred_boxes: (B, A, 4) predicted xyxy pixels.
        gt_labels: (B, M, 1) text index of each box.
        gt_boxes: (B, M, 4) xyxy pixels.
        candidates: (B, M, A) bool pairs to score (anchor inside a real box).
        alpha: exponent of the score.
        beta: exponent of the overlap.

    Returns:
        metric: (B, M, A) ``score^alpha · overlap^beta``.
        overlap: (B, M, A) CIoU clamped at 0.
    """
    b_idx, m_idx, a_idx = candidates.nonzero(as_tuple=True)  # (N,) each, row-major like ultralytics
    pair_scores = scores[b_idx, a_idx, gt_labels[b_idx, m_idx, 0].long()]  # (N,)
    pair_overlap = complete_iou(gt_boxes[b_idx, m_idx], pred_boxes[b_idx, a_idx]).clamp(0)  # (N,)
    pair_metric = pair_scores.pow(alpha) * pair_overlap.pow(beta)  # (N,)
    overlap = torch.zeros(candidates.shape, dtype=pred_boxes.dtype, device=pred_boxes.device)  # (B, M, A)
    metric = torch.zeros(candidates.shape, dtype=pair_metric.dtype, device=scores.device)  # (B, M, A)
    overlap[b_idx, m_idx, a_idx] = pair_overlap
    metric[b_idx, m_idx, a_idx] = pair_metric
    return metric, overlap


def top_k_mask(metric: torch.Tensor, k: int, gt_mask: torch.Tensor) -> torch.Tensor:
    """The ``k`` anchors of highest metric for every real box.

    A box with fewer than ``k`` non-zero candidates also gets zero-metric anchors (``topk``'s
    choice among ties); the caller intersects with the candidates, as ultralytics does.

    Args:
        metric: (B, M, A) alignment metric.
        k: anchors kept per box (at most A).
        gt_mask: (B, M, 1) bool, False for padding rows.

    Returns:
        (B, M, A) bool, all False on padding rows.
    """
    top = torch.topk(metric, k, dim=-1, largest=True).indices  # (B, M, k)
    chosen = torch.zeros(metric.shape, dtype=torch.bool, device=metric.device)  # (B, M, A)
    chosen.scatter_(-1, top, True)
    return chosen & gt_mask


def resolve_overlaps(positive: torch.Tensor, overlap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Give an anchor claimed by several boxes to the box of highest overlap.

    As in ultralytics, the highest overlap is taken over all boxes the anchor is a candidate
    of, not only those that claimed it: a third box it lies inside can win.

    Args:
        positive: (B, M, A) bool claims.
        overlap: (B, M, A) CIoU of candidate pairs, zero elsewhere.

    Returns:
        gt_idx: (B, A) int64 box of each anchor (0 for background).
        fg_mask: (B, A) bool.
        positive: (B, M, A) bool, at most one True per anchor.
    """
    claims = positive.sum(1, keepdim=True)  # (B, 1, A)
    best = overlap.max(1).indices  # (B, A)
    is_best = torch.zeros_like(positive).scatter_(1, best.unsqueeze(1), True)  # (B, M, A)
    positive = torch.where(claims > 1, is_best, positive)  # (B, M, A)
    fg, gt_idx = positive.to(torch.uint8).max(1)  # (B, A) each
    return gt_idx, fg.bool(), positive


@torch.no_grad()
def task_aligned_assign(
    scores: torch.Tensor,
    pred_boxes: torch.Tensor,
    anchors: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_mask: torch.Tensor,
    *,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    min_size: float = 16.0,
    eps: float = 1e-9,
) -> Assignment:
    """Assign ground-truth boxes to anchors by the task-aligned metric (no gradients).

    Args:
        scores: (B, A, K) predicted sigmoid scores, one per text.
        pred_boxes: (B, A, 4) predicted xyxy pixels.
        anchors: (A, 2) anchor centres, pixels.
        gt_labels: (B, M, 1) text index of each box (any value on padding rows).
        gt_boxes: (B, M, 4) xyxy pixels (any value on padding rows).
        gt_mask: (B, M, 1) bool or 0/1, False/0 marks padding rows.
        topk: anchors each box keeps (clipped to A).
        alpha: exponent of the score in the metric.
        beta: exponent of the overlap in the metric.
        min_size: box sides shorter than this (pixels) are widened to it when looking for
            candidate anchors; ultralytics uses its middle stride (16).
        eps: guard of the normalisation (ultralytics: 1e-9).

    Returns:
        :class:`Assignment`.

    Raises:
        ValueError: inconsistent shapes (named).
    """
    b, a, k = scores.shape
    m = gt_boxes.shape[1]
    if pred_boxes.shape != (b, a, 4) or anchors.shape != (a, 2):
        raise ValueError(
            f"pred_boxes must be ({b}, {a}, 4) and anchors ({a}, 2) for scores {tuple(scores.shape)}, "
            f"got {tuple(pred_boxes.shape)} and {tuple(anchors.shape)}"
        )
    if gt_boxes.shape != (b, m, 4) or gt_labels.shape != (b, m, 1) or gt_mask.shape != (b, m, 1):
        raise ValueError(
            f"gt_boxes, gt_labels, gt_mask must be ({b}, M, 4), ({b}, M, 1), ({b}, M, 1), got "
            f"{tuple(gt_boxes.shape)}, {tuple(gt_labels.shape)}, {tuple(gt_mask.shape)}"
        )
    if m == 0:
        return Assignment(
            target_labels=torch.full((b, a), k, dtype=torch.long, device=scores.device),
            target_boxes=torch.zeros_like(pred_boxes),
            target_scores=torch.zeros_like(scores),
            fg_mask=torch.zeros((b, a), dtype=torch.bool, device=scores.device),
            target_gt_idx=torch.zeros((b, a), dtype=torch.long, device=scores.device),
        )
    gt_mask = gt_mask.bool()  # (B, M, 1)
    pred_boxes = pred_boxes.to(gt_boxes.dtype)

    inside = candidates_inside(anchors, gt_boxes, min_size)  # (B, M, A)
    metric, overlap = align_metrics(scores, pred_boxes, gt_labels, gt_boxes, inside & gt_mask, alpha, beta)
    positive = top_k_mask(metric, min(topk, a), gt_mask) & inside  # (B, M, A)
    gt_idx, fg_mask, positive = resolve_overlaps(positive, overlap)  # (B, A), (B, A), (B, M, A)

    labels = gt_labels[..., 0].long().gather(1, gt_idx)  # (B, A)
    boxes = gt_boxes.gather(1, gt_idx.unsqueeze(-1).expand(-1, -1, 4))  # (B, A, 4)
    one_hot = F.one_hot(labels.clamp(0), k) * fg_mask.unsqueeze(-1)  # (B, A, K) int64

    # Soft targets: each box's metrics rescaled so its best anchor gets its best overlap.
    metric = metric * positive  # (B, M, A)
    overlap = overlap * positive  # (B, M, A)
    best_metric = metric.amax(-1, keepdim=True)  # (B, M, 1)
    best_overlap = overlap.amax(-1, keepdim=True)  # (B, M, 1)
    norm = (metric * best_overlap / (best_metric + eps)).amax(1)  # (B, A)
    target_scores = one_hot * norm.unsqueeze(-1)  # (B, A, K)
    return Assignment(labels, boxes, target_scores, fg_mask, gt_idx)
