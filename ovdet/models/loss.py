"""The YOLOv8 detection loss over region-text logits: task-aligned targets, BCE, CIoU and DFL.

``total = B · (7.5 · box + 0.5 · cls + 1.5 · dfl)`` with, after :func:`task_aligned_assign`:

* ``cls``: BCE-with-logits of every (anchor, text) against the soft targets, summed and divided
  by the sum of the targets (at least 1);
* ``box``: ``1 - CIoU`` of each positive anchor's box, weighted by its target score;
* ``dfl``: distribution focal loss of each positive's four side distributions, same weights.

Numbers and gradients equal ultralytics' ``v8DetectionLoss`` (tested). Two additions for
open-vocabulary training: padded texts (``text_mask`` False) are left out of the BCE and never
assigned, and ignore regions (crowd) are never negatives: background anchors whose centre lies
inside one get no classification loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ovdet.config import LossConfig
from ovdet.models.assigner import candidates_inside, complete_iou, task_aligned_assign
from ovdet.models.outputs import RawOutputs


class LossOutput(NamedTuple):
    """What :func:`detection_loss` returns.

    Attributes:
        total: () the scalar to backpropagate: batch size × (box + cls + dfl), as ultralytics.
        box: () detached gained CIoU loss (ultralytics' ``box_loss`` item).
        cls: () detached gained classification loss (``cls_loss``).
        dfl: () detached gained distribution focal loss (``dfl_loss``).
    """

    total: torch.Tensor
    box: torch.Tensor
    cls: torch.Tensor
    dfl: torch.Tensor


def pad_targets(
    boxes: torch.Tensor, labels: torch.Tensor, batch_idx: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image rows of a flat target list, padded to the busiest image.

    Args:
        boxes: (N, 4) xyxy pixels.
        labels: (N,) int64 text indices.
        batch_idx: (N,) int64 image of each row, in [0, batch_size).
        batch_size: B.

    Returns:
        gt_labels: (B, M, 1) int64, M the most rows of one image; rows keep their order.
        gt_boxes: (B, M, 4) xyxy pixels, zeros on padding.
        gt_mask: (B, M, 1) bool, False on padding.
    """
    counts = torch.bincount(batch_idx, minlength=batch_size)  # (B,)
    m = int(counts.max()) if len(batch_idx) else 0
    order = torch.argsort(batch_idx, stable=True)  # (N,) rows grouped by image, order kept
    first = torch.cumsum(counts, 0) - counts  # (B,) first row of each image in ``order``
    img = batch_idx[order]  # (N,)
    slot = torch.arange(len(order), device=boxes.device) - first[img]  # (N,) position within its image
    gt_boxes = boxes.new_zeros(batch_size, m, 4)  # (B, M, 4)
    gt_labels = labels.new_zeros(batch_size, m, 1)  # (B, M, 1)
    gt_mask = torch.zeros(batch_size, m, 1, dtype=torch.bool, device=boxes.device)  # (B, M, 1)
    gt_boxes[img, slot] = boxes[order]
    gt_labels[img, slot, 0] = labels[order]
    gt_mask[img, slot] = True
    return gt_labels, gt_boxes, gt_mask


def decode_boxes(box_logits: torch.Tensor, anchors: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Expected side distances of the DFL bins, as xyxy boxes around the anchors.

    Same value as :meth:`OVDetector.decode` (up to the last bit), computed as ultralytics'
    loss does (softmax over the last axis, then a matrix product with the bin centres) so the
    assigner sees bit-identical boxes.

    Args:
        box_logits: (B, A, 4·reg_max) bin logits, sides left, top, right, bottom.
        anchors: (A, 2) anchor centres, grid units.
        reg_max: bins per side.

    Returns:
        (B, A, 4) xyxy boxes, grid units.
    """
    b, a, _ = box_logits.shape
    bins = torch.arange(reg_max, dtype=box_logits.dtype, device=box_logits.device)  # (R,)
    dist = box_logits.view(b, a, 4, reg_max).softmax(3).matmul(bins)  # (B, A, 4) ltrb
    lt, rb = dist.chunk(2, -1)  # (B, A, 2) each
    return torch.cat((anchors - lt, anchors + rb), -1)


def box_to_distances(anchors: torch.Tensor, boxes: torch.Tensor, limit: float) -> torch.Tensor:
    """Distances from anchors to the sides of boxes, clamped to ``[0, limit]``.

    Args:
        anchors: (A, 2) anchor centres, grid units.
        boxes: (B, A, 4) xyxy, grid units.
        limit: largest distance (the last DFL bin minus a margin).

    Returns:
        (B, A, 4) ltrb distances.
    """
    x1y1, x2y2 = boxes.chunk(2, -1)  # (B, A, 2) each
    return torch.cat((anchors - x1y1, x2y2 - anchors), -1).clamp(0, limit)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL (Li et al. 2020): cross-entropy towards the two bins around each target distance.

    A target ``t`` between bins ``l = floor(t)`` and ``l + 1`` puts weight ``l + 1 - t`` on the
    left bin and ``t - l`` on the right one.

    Args:
        logits: (N, 4, R) bin logits of the four sides.
        target: (N, 4) distances in [0, R - 1 - 0.01] (bins; the margin keeps ``l + 1`` a bin).

    Returns:
        (N, 1) loss per anchor, averaged over the four sides.
    """
    left = target.long()  # (N, 4) floor, as targets are non-negative
    right = left + 1  # (N, 4)
    w_left = right - target  # (N, 4)
    w_right = 1 - w_left  # (N, 4)
    log_p = F.log_softmax(logits, dim=-1)  # (N, 4, R)
    lp_left = log_p.gather(-1, left.unsqueeze(-1)).squeeze(-1)  # (N, 4)
    lp_right = log_p.gather(-1, right.unsqueeze(-1)).squeeze(-1)  # (N, 4)
    return -(lp_left * w_left + lp_right * w_right).mean(-1, keepdim=True)


def _check_targets(
    raw: RawOutputs,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    batch_idx: torch.Tensor,
    ignore: torch.Tensor,
    text_mask: torch.Tensor | None,
    reg_max: int | None,
) -> int:
    """Validate shapes and index ranges; returns reg_max."""
    b, c, a = raw.box_logits.shape
    if c % 4 or (reg_max is not None and c != 4 * reg_max):
        raise ValueError(f"box_logits has {c} channels, expected 4·reg_max (reg_max={reg_max})")
    if raw.cls_logits.ndim != 3 or raw.cls_logits.shape[::2] != (b, a):
        raise ValueError(f"cls_logits must be ({b}, K, {a}), got {tuple(raw.cls_logits.shape)}")
    k = raw.cls_logits.shape[1]
    n = len(boxes)
    if boxes.shape != (n, 4) or not boxes.is_floating_point():
        raise ValueError(f"boxes must be a float (M, 4) xyxy tensor, got {tuple(boxes.shape)} {boxes.dtype}")
    for name, t, dtypes in (
        ("labels", labels, (torch.int64, torch.int32)),
        ("batch_idx", batch_idx, (torch.int64, torch.int32)),
        ("ignore", ignore, (torch.bool,)),
    ):
        if t.shape != (n,) or t.dtype not in dtypes:
            raise ValueError(f"{name} must be a ({n},) {dtypes[0]} tensor like boxes, got {tuple(t.shape)} {t.dtype}")
    if n and (int(batch_idx.min()) < 0 or int(batch_idx.max()) >= b):
        raise ValueError(f"batch_idx must be in [0, {b}), got values {int(batch_idx.min())}..{int(batch_idx.max())}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"labels must index the {k} texts, got values {int(labels.min())}..{int(labels.max())}")
    if text_mask is not None:
        if text_mask.shape != (b, k) or text_mask.dtype != torch.bool:
            raise ValueError(
                f"text_mask must be a bool ({b}, {k}) tensor, got {tuple(text_mask.shape)} {text_mask.dtype}"
            )
        bad = ~text_mask[batch_idx, labels] & ~ignore  # (N,)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"box {i} (image {int(batch_idx[i])}) has label {int(labels[i])}, a padding text "
                f"(text_mask False); padded texts must never be targets"
            )
    return c // 4


def detection_loss(
    raw: RawOutputs,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    batch_idx: torch.Tensor,
    ignore: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    reg_max: int | None = None,
    cfg: LossConfig | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LossOutput:
    """YOLOv8 training loss of one batch, equal to ultralytics' ``v8DetectionLoss``.

    Args:
        raw: the detector's :class:`RawOutputs` (box_logits (B, 4·R, A), cls_logits (B, K, A),
            anchors (A, 2) grid units, strides (A, 1) pixels).
        boxes: (N, 4) float xyxy boxes in pixels of the network input.
        labels: (N,) int64 index of each box's text among its image's K texts.
        batch_idx: (N,) int64 image of each box.
        ignore: (N,) bool, True for crowd/ignore regions: not positives, and background
            anchors inside them get no classification loss. None: no ignore regions.
        text_mask: (B, K) bool, False for padding texts, which get no loss at all. None: all valid.
        reg_max: DFL bins per side; None takes it from ``box_logits`` (4·R channels).
        cfg: gains and assigner settings (default :class:`~ovdet.config.LossConfig`).
        reduce: data-parallel training: sums a tensor over all processes (``all_reduce``). The
            loss is then normalised by the whole batch's target sum, and ``total`` is scaled so
            that the gradients DDP averages equal those of one process on the joint batch;
            ``box``/``cls``/``dfl`` are this process's shares (their sum over processes is the
            joint batch's value). None: one process.

    Returns:
        :class:`LossOutput`; ``total`` carries the gradient.

    Raises:
        ValueError: a shape, a batch index or a label out of range, or a label pointing at a
            padding text (each named).
    """
    cfg = cfg if cfg is not None else LossConfig()
    if ignore is None:
        ignore = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    reg_max = _check_targets(raw, boxes, labels, batch_idx, ignore, text_mask, reg_max)
    b = raw.box_logits.shape[0]
    # (B, A, C) layouts made contiguous as ultralytics does, so sigmoid and softmax run the same kernels
    box_logits = raw.box_logits.permute(0, 2, 1).contiguous()  # (B, A, 4R)
    cls_logits = raw.cls_logits.permute(0, 2, 1).contiguous().float()  # (B, A, K)
    anchors, strides = raw.anchors, raw.strides  # (A, 2) grid units, (A, 1) pixels
    pred_boxes = decode_boxes(box_logits, anchors, reg_max)  # (B, A, 4) grid units

    gt_labels, gt_boxes, gt_mask = pad_targets(boxes[~ignore], labels[~ignore], batch_idx[~ignore], b)
    assigned = task_aligned_assign(
        cls_logits.detach().sigmoid(),
        (pred_boxes.detach() * strides).to(gt_boxes.dtype),
        anchors * strides,
        gt_labels,
        gt_boxes,
        gt_mask,
        topk=cfg.topk,
        alpha=cfg.alpha,
        beta=cfg.beta,
        min_size=cfg.min_size,
    )
    target_scores, fg = assigned.target_scores, assigned.fg_mask  # (B, A, K), (B, A)
    score_sum = target_scores.sum()  # ()
    batch_size, world = float(b), 1
    if reduce is not None:  # every process normalises by the joint batch's totals
        counts = reduce(
            torch.stack((score_sum.detach().float(), score_sum.new_tensor(float(b)), score_sum.new_ones(())))
        )
        score_sum = counts[0].to(score_sum.dtype)
        batch_size, world = float(counts[1]), int(round(float(counts[2])))
    score_sum = score_sum.clamp(min=1)  # ()

    bce = F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="none")  # (B, A, K)
    keep = _classification_mask(anchors * strides, fg, boxes[ignore], batch_idx[ignore], text_mask)
    if keep is not None:  # ``where``, not a product: masked logits get an exact zero gradient
        bce = torch.where(keep, bce, torch.zeros((), dtype=bce.dtype, device=bce.device))
    loss_cls = bce.sum() / score_sum

    pos = fg.nonzero(as_tuple=True)  # ((P,), (P,)) the positive anchors
    weight = target_scores[pos].sum(-1, keepdim=True)  # (P, 1)
    target_boxes = assigned.target_boxes / strides  # (B, A, 4) grid units
    ciou = complete_iou(pred_boxes[pos], target_boxes[pos]).unsqueeze(-1)  # (P, 1)
    loss_box = ((1.0 - ciou) * weight).sum() / score_sum
    target_ltrb = box_to_distances(anchors, target_boxes, reg_max - 1 - 0.01)  # (B, A, 4)
    dfl = distribution_focal_loss(box_logits[pos].view(-1, 4, reg_max), target_ltrb[pos])  # (P, 1)
    loss_dfl = (dfl * weight).sum() / score_sum

    parts = torch.stack((loss_box * cfg.box, loss_cls * cfg.cls, loss_dfl * cfg.dfl))  # (3,)
    box, cls, dfl_part = parts.detach()
    # × world: DDP averages the processes' gradients, the joint batch's loss sums them
    return LossOutput(parts.sum() * batch_size * world, box, cls, dfl_part)


def _classification_mask(
    anchors: torch.Tensor,
    fg: torch.Tensor,
    ignore_boxes: torch.Tensor,
    ignore_idx: torch.Tensor,
    text_mask: torch.Tensor | None,
) -> torch.Tensor | None:
    """Which (anchor, text) BCE terms count: valid texts, and not background inside an ignore region.

    Args:
        anchors: (A, 2) anchor centres, pixels.
        fg: (B, A) bool positives.
        ignore_boxes: (G, 4) xyxy pixels of the ignore regions.
        ignore_idx: (G,) int64 image of each.
        text_mask: (B, K) bool or None.

    Returns:
        (B, A, K) or broadcastable bool, or None when every term counts.
    """
    keep = None if text_mask is None else text_mask.unsqueeze(1)  # (B, 1, K)
    if len(ignore_boxes):
        _, ign_boxes, ign_mask = pad_targets(ignore_boxes, ignore_idx, ignore_idx, fg.shape[0])  # labels unused
        inside = (candidates_inside(anchors, ign_boxes, 0.0) & ign_mask).any(1)  # (B, A)
        counted = (fg | ~inside).unsqueeze(-1)  # (B, A, 1)
        keep = counted if keep is None else keep & counted
    return keep
