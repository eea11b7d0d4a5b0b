"""The training loss: task-aligned assigner, BCE/CIoU/DFL, padded texts, ignore regions, and
parity with ultralytics' ``v8DetectionLoss`` (loss parts and every parameter's gradient).

Hand-built cases use a 64×64 input with strides 8/16/32 (84 anchors); the parity tests run a
random ultralytics YOLO-World n model on real coco128 images with their real labels.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovdet.config import LossConfig
from ovdet.models.assigner import complete_iou, task_aligned_assign
from ovdet.models.layers import make_anchors
from ovdet.models.loss import detection_loss, distribution_focal_loss, pad_targets
from ovdet.models.outputs import RawOutputs
from tests.helpers import perturbed_world_model, save_like_ultralytics

REG_MAX = 16
STRIDES = (8, 16, 32)


def grid(h: int = 64, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors (A, 2) in grid units and strides (A, 1) of an h×w input."""
    return make_anchors([(h // s, w // s) for s in STRIDES], STRIDES, torch.float32, torch.device("cpu"))


def two_bin_logits(dist: torch.Tensor, reg_max: int = REG_MAX) -> torch.Tensor:
    """DFL logits whose expectation is exactly ``dist``: mass only on the two bins around it.

    Args:
        dist: (A, 4) ltrb distances in grid units, in [0, reg_max - 1].

    Returns:
        (4·reg_max, A) logits (sides l, t, r, b; bins within a side).
    """
    a = dist.shape[0]
    left = dist.floor().clamp(max=reg_max - 2).long()  # (A, 4)
    w_right = dist - left  # (A, 4)
    logits = torch.full((a, 4, reg_max), -100.0)  # (A, 4, R)
    logits.scatter_(-1, left.unsqueeze(-1), (1 - w_right).clamp(min=1e-30).log().unsqueeze(-1))
    logits.scatter_(-1, (left + 1).unsqueeze(-1), w_right.clamp(min=1e-30).log().unsqueeze(-1))
    return logits.view(a, 4 * reg_max).T.contiguous()


def raw_predicting(box: list[float], cls_logits: torch.Tensor, h: int = 64, w: int = 64) -> RawOutputs:
    """Raw outputs whose every anchor predicts ``box`` (xyxy pixels) where it can reach it.

    Args:
        cls_logits: (B, K, A) region-text logits.
    """
    anchors, strides = grid(h, w)  # (A, 2), (A, 1)
    target = torch.tensor(box) / strides  # (A, 4) grid units of each anchor's level
    dist = torch.cat((anchors - target[:, :2], target[:, 2:] - anchors), 1).clamp(0, REG_MAX - 1)  # (A, 4)
    box_logits = two_bin_logits(dist).unsqueeze(0).expand(cls_logits.shape[0], -1, -1).clone()  # (B, 4R, A)
    return RawOutputs(box_logits, cls_logits, anchors, strides)


def random_raw(b: int, k: int, seed: int, requires_grad: bool = True) -> RawOutputs:
    """Random raw outputs of a 64×64 input (A = 84)."""
    g = torch.Generator().manual_seed(seed)
    anchors, strides = grid()
    a = len(anchors)
    box_logits = torch.randn(b, 4 * REG_MAX, a, generator=g).requires_grad_(requires_grad)
    cls_logits = (torch.randn(b, k, a, generator=g) * 2 - 2).requires_grad_(requires_grad)
    return RawOutputs(box_logits, cls_logits, anchors, strides)


def targets(*rows: tuple[int, int, list[float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, label, xyxy) rows → boxes (N, 4), labels (N,), batch_idx (N,)."""
    boxes = torch.tensor([r[2] for r in rows], dtype=torch.float32).view(-1, 4)
    labels = torch.tensor([r[1] for r in rows], dtype=torch.long)
    batch_idx = torch.tensor([r[0] for r in rows], dtype=torch.long)
    return boxes, labels, batch_idx


# --------------------------------------------------------------------------------------------
# CIoU and the assigner
# --------------------------------------------------------------------------------------------


def random_boxes(n: int, g: torch.Generator, scale: float = 64.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * scale
    wh = torch.rand(n, 2, generator=g) * scale / 2 + 0.5
    return torch.cat((xy, xy + wh), 1)  # (n, 4)


def test_complete_iou_equals_ultralytics_bitwise_with_gradients() -> None:
    metrics = pytest.importorskip("ultralytics.utils.metrics")
    g = torch.Generator().manual_seed(0)
    b1 = random_boxes(500, g).requires_grad_(True)
    b2 = random_boxes(500, g)
    b2[:50] = b1[:50].detach()  # identical pairs: CIoU 1, alpha's 0/0 guard
    ours = complete_iou(b1, b2)  # (500,)
    ours.sum().backward()
    grad = b1.grad.clone()
    b1.grad = None
    ref = metrics.bbox_iou(b1, b2, xywh=False, CIoU=True).squeeze(-1)  # (500,)
    ref.sum().backward()
    assert torch.equal(ours, ref)
    assert torch.equal(grad, b1.grad)


def test_complete_iou_matches_torchvision_up_to_eps_placement() -> None:
    """An independent reference: torchvision's CIoU loss (also a constant alpha, eps placed elsewhere)."""
    from torchvision.ops import complete_box_iou_loss

    g = torch.Generator().manual_seed(1)
    b1 = random_boxes(200, g).requires_grad_(True)
    b2 = random_boxes(200, g)
    (1 - complete_iou(b1, b2)).sum().backward()
    grad = b1.grad.clone()
    b1.grad = None
    ref = complete_box_iou_loss(b1, b2)  # (200,)
    ref.sum().backward()
    torch.testing.assert_close(1 - complete_iou(b1, b2), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, b1.grad, rtol=1e-4, atol=1e-6)


def assign(scores, pred_boxes, anchors, gts, mask=None, **kw):
    """task_aligned_assign on one image with (label, xyxy) ground-truth rows."""
    gt_labels = torch.tensor([[[lab] for lab, _ in gts]], dtype=torch.long).view(1, -1, 1)
    gt_boxes = torch.tensor([[box for _, box in gts]], dtype=torch.float32).view(1, -1, 4)
    gt_mask = torch.ones(1, len(gts), 1, dtype=torch.bool) if mask is None else torch.tensor(mask).view(1, -1, 1)
    return task_aligned_assign(scores, pred_boxes, anchors, gt_labels, gt_boxes, gt_mask, **kw)


def single_level(n: int = 8, stride: int = 8) -> torch.Tensor:
    """(n², 2) anchor centres in pixels of one n×n level."""
    pts, _ = make_anchors([(n, n)], (stride,), torch.float32, torch.device("cpu"))
    return pts * stride


def test_assigner_keeps_the_topk_inside_anchors_by_score() -> None:
    anchors = single_level()  # (64, 2): centres 4, 12, ..., 60
    gt = [0.0, 0.0, 32.0, 32.0]
    scores = torch.rand(1, 64, 1, generator=torch.Generator().manual_seed(0))  # (1, A, 1) distinct
    inside = (anchors < 32).all(1)  # (A,) the 16 anchors in the box
    scores[0, ~inside, 0] += 1.0  # outside anchors score higher but are never candidates
    pred = torch.tensor(gt).expand(1, 64, 4).clone()  # every anchor predicts the box: CIoU ≈ 1
    out = assign(scores.clamp(max=1), pred, anchors, [(0, gt)], topk=3)
    expected = torch.zeros(64, dtype=torch.bool)
    expected[torch.where(inside, scores[0, :, 0], -1.0).topk(3).indices] = True
    assert torch.equal(out.fg_mask[0], expected)
    assert torch.equal(out.target_boxes[0, expected], torch.tensor([gt] * 3))
    assert bool((out.target_scores[0, ~expected] == 0).all())


def test_assigner_gives_a_shared_anchor_to_the_box_it_overlaps_most() -> None:
    anchors = single_level()  # (64, 2)
    gt1, gt2 = [0.0, 0.0, 40.0, 40.0], [16.0, 16.0, 56.0, 56.0]
    pred = torch.tensor(gt1).expand(1, 64, 4).clone()  # (1, A, 4)
    shared = int(((anchors - torch.tensor([28.0, 28.0])).abs().sum(1) == 0).nonzero())  # lies in both boxes
    pred[0, shared] = torch.tensor(gt2)  # ... and predicts box 2
    scores = torch.full((1, 64, 2), 0.5)
    out = assign(scores, pred, anchors, [(0, gt1), (1, gt2)], topk=64)  # every candidate is claimed
    assert bool(out.fg_mask[0, shared])
    assert int(out.target_gt_idx[0, shared]) == 1 and int(out.target_labels[0, shared]) == 1
    other = int(((anchors - torch.tensor([20.0, 20.0])).abs().sum(1) == 0).nonzero())  # also in both, predicts box 1
    assert int(out.target_gt_idx[0, other]) == 0 and int(out.target_labels[0, other]) == 0


def test_assigner_target_scores_are_metrics_rescaled_to_the_best_overlap() -> None:
    anchors = single_level()  # (64, 2)
    gt = [0.0, 0.0, 32.0, 32.0]
    g = torch.Generator().manual_seed(1)
    pred = torch.tensor(gt) + torch.randn(1, 64, 4, generator=g) * 2  # (1, A, 4) imperfect boxes
    scores = torch.rand(1, 64, 3, generator=g)  # (1, A, 3)
    out = assign(scores, pred, anchors, [(2, gt)], topk=4)
    fg = out.fg_mask[0]  # (A,)
    assert int(fg.sum()) == 4
    overlap = complete_iou(torch.tensor(gt), pred[0]).clamp(0)  # (A,)
    metric = scores[0, :, 2].sqrt() * overlap.pow(6)  # (A,)
    expected = metric[fg] / metric[fg].max() * overlap[fg].max()  # (4,)
    torch.testing.assert_close(out.target_scores[0, fg, 2], expected, rtol=1e-5, atol=1e-7)
    assert bool((out.target_scores[0, fg, :2] == 0).all())  # other texts: target 0


def test_assigner_skips_padding_rows_and_handles_no_boxes() -> None:
    anchors = single_level()
    scores = torch.full((1, 64, 2), 0.9)
    pred = torch.tensor([0.0, 0.0, 64.0, 64.0]).expand(1, 64, 4).clone()
    out = assign(scores, pred, anchors, [(0, [0.0, 0.0, 64.0, 64.0])], mask=[False])  # covers every anchor
    assert not bool(out.fg_mask.any()) and float(out.target_scores.sum()) == 0
    empty = task_aligned_assign(
        scores,
        pred,
        anchors,
        torch.zeros(1, 0, 1, dtype=torch.long),
        torch.zeros(1, 0, 4),
        torch.zeros(1, 0, 1, dtype=torch.bool),
    )
    assert not bool(empty.fg_mask.any())
    assert bool((empty.target_labels == 2).all())  # "no text" = K
    assert empty.target_scores.shape == (1, 64, 2) and float(empty.target_scores.abs().sum()) == 0


def test_assigner_widens_tiny_boxes_to_min_size() -> None:
    anchors = single_level()  # centres at 4 + 8i
    tiny = [6.0, 6.0, 10.0, 10.0]  # 4 px, between anchor centres
    scores = torch.full((1, 64, 1), 0.9)
    pred = torch.tensor(tiny).expand(1, 64, 4).clone()
    assert not bool(assign(scores, pred, anchors, [(0, tiny)], min_size=0.0).fg_mask.any())
    widened = assign(scores, pred, anchors, [(0, tiny)], min_size=16.0).fg_mask[0]  # box 0..16
    assert widened.nonzero().flatten().tolist() == [0, 1, 8, 9]


@pytest.mark.parametrize("seed", range(4))
def test_assigner_equals_ultralytics_including_ties(seed: int) -> None:
    """Same outputs, bit for bit, as ultralytics' TaskAlignedAssigner, on inputs full of exact ties."""
    tal = pytest.importorskip("ultralytics.utils.tal")
    g = torch.Generator().manual_seed(seed)
    b, k, m = 3, 5, 8
    anchors, strides = grid(64, 96)  # (A, 2), (A, 1); A = 126
    a = len(anchors)
    scores = (torch.rand(b, a, k, generator=g) * 4).round() / 4  # (B, A, K) four values: many ties
    centres = (anchors * strides).unsqueeze(0) + (torch.rand(b, a, 2, generator=g) * 4).round() * 2  # (B, A, 2)
    half = (torch.rand(b, a, 2, generator=g) * 3).round() * 6 + 2  # (B, A, 2)
    pred = torch.cat((centres - half, centres + half), -1)  # (B, A, 4) pixels
    gt_boxes = torch.stack([random_boxes(m, g, 96.0) for _ in range(b)])  # (B, M, 4) overlapping, some < 16 px
    gt_boxes[0, 0] = torch.tensor([10.0, 10.0, 13.0, 12.0])  # tiny: only the min-size widening finds anchors
    gt_labels = torch.randint(0, k, (b, m, 1), generator=g).float()  # (B, M, 1)
    gt_mask = torch.ones(b, m, 1)
    gt_mask[1, 5:] = 0  # padding rows (zeros, as ultralytics pads)
    gt_boxes[1, 5:] = 0
    gt_mask[2, :] = 0  # an image without boxes
    gt_boxes[2] = 0
    ref = tal.TaskAlignedAssigner(topk=10, num_classes=k, alpha=0.5, beta=6.0, stride=list(STRIDES))(
        scores, pred, anchors * strides, gt_labels, gt_boxes, gt_mask
    )
    ours = task_aligned_assign(scores, pred, anchors * strides, gt_labels.long(), gt_boxes, gt_mask.bool())
    assert int(ours.fg_mask.sum()) > 10
    assert torch.equal(ours.fg_mask, ref[3])
    assert torch.equal(ours.target_gt_idx, ref[4])
    assert torch.equal(ours.target_labels, ref[0])
    assert torch.equal(ours.target_boxes, ref[1])
    assert torch.equal(ours.target_scores, ref[2].float())


# --------------------------------------------------------------------------------------------
# The loss on hand-made outputs
# --------------------------------------------------------------------------------------------


def test_distribution_focal_loss_equals_ultralytics() -> None:
    loss_mod = pytest.importorskip("ultralytics.utils.loss")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 4, REG_MAX, generator=g)  # (N, 4, R)
    target = torch.rand(50, 4, generator=g) * (REG_MAX - 1 - 0.01)  # (N, 4) fractional bins
    ref = loss_mod.DFLoss(REG_MAX)(logits.view(-1, REG_MAX), target.clone())  # (N, 1)
    torch.testing.assert_close(distribution_focal_loss(logits, target), ref, rtol=1e-6, atol=1e-6)


def test_pad_targets_groups_rows_by_image_in_order() -> None:
    boxes = torch.arange(20, dtype=torch.float32).view(5, 4)
    labels = torch.tensor([10, 11, 12, 13, 14])
    batch_idx = torch.tensor([2, 0, 2, 0, 2])
    gt_labels, gt_boxes, gt_mask = pad_targets(boxes, labels, batch_idx, 4)
    assert gt_labels[..., 0].tolist() == [[11, 13, 0], [0, 0, 0], [10, 12, 14], [0, 0, 0]]
    assert gt_mask[..., 0].tolist() == [[True, True, False], [False] * 3, [True] * 3, [False] * 3]
    assert torch.equal(gt_boxes[2], boxes[[0, 2, 4]])


def test_perfect_prediction_has_zero_box_loss() -> None:
    """Every anchor predicts the box exactly: 1 - CIoU ≈ 0; DFL is then its floor, ln 2 per side.

    The box's sides lie half-way between bins for every level's anchors (centres at
    (i + 0.5)·stride, sides at multiples of 16), so the best DFL distribution is 50/50 over two
    bins and its cross-entropy against the 50/50 target is ln 2.
    """
    box = [16.0, 16.0, 48.0, 48.0]
    cls = torch.full((1, 2, 84), -8.0)
    cls[:, 0] = 8.0  # confident about text 0
    boxes, labels, batch_idx = targets((0, 0, box))
    out = detection_loss(raw_predicting(box, cls), boxes, labels, batch_idx)
    assert float(out.box) < 1e-5
    assert math.isclose(float(out.dfl), 1.5 * math.log(2), rel_tol=1e-5)
    shifted = detection_loss(raw_predicting([20.0, 16.0, 52.0, 48.0], cls), boxes, labels, batch_idx)
    assert float(shifted.box) > 0.5  # a 4-pixel miss is not free


def test_no_boxes_gives_zero_box_and_dfl_and_all_negative_bce() -> None:
    raw = random_raw(2, 3, seed=0)
    boxes, labels, batch_idx = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    out = detection_loss(raw, boxes, labels, batch_idx)
    assert float(out.box) == 0.0 and float(out.dfl) == 0.0
    negative = F.binary_cross_entropy_with_logits(raw.cls_logits, torch.zeros_like(raw.cls_logits), reduction="sum")
    torch.testing.assert_close(out.cls, 0.5 * negative.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.total, 2 * out.cls, rtol=1e-6, atol=0)
    out.total.backward()
    assert float(raw.box_logits.grad.abs().sum()) == 0.0
    torch.testing.assert_close(raw.cls_logits.grad, 2 * 0.5 * raw.cls_logits.detach().sigmoid(), rtol=1e-5, atol=1e-7)


def test_padded_texts_contribute_nothing() -> None:
    text_mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    boxes, labels, batch_idx = targets(
        (0, 2, [8.0, 8.0, 40.0, 48.0]), (1, 1, [20.0, 4.0, 60.0, 30.0]), (1, 0, [0.0, 30.0, 30.0, 64.0])
    )

    def run(cls_logits: torch.Tensor, mask: torch.Tensor | None):
        raw = random_raw(2, 4, seed=3, requires_grad=False)
        raw = raw._replace(box_logits=raw.box_logits.requires_grad_(True), cls_logits=cls_logits.requires_grad_(True))
        out = detection_loss(raw, boxes, labels, batch_idx, text_mask=mask)
        out.total.backward()
        return out, raw.box_logits.grad, raw.cls_logits.grad

    base = random_raw(2, 4, seed=3, requires_grad=False).cls_logits
    changed = base.clone()
    changed[~text_mask] = torch.randn(int((~text_mask).sum()), 84) * 10 + 5  # wild padded logits
    out1, box_grad1, cls_grad1 = run(base.clone(), text_mask)
    out2, box_grad2, cls_grad2 = run(changed, text_mask)
    assert float(out1.box) > 0
    for part in ("total", "box", "cls", "dfl"):
        assert torch.equal(getattr(out1, part), getattr(out2, part)), part
    assert torch.equal(box_grad1, box_grad2) and torch.equal(cls_grad1, cls_grad2)
    assert float(cls_grad1[~text_mask].abs().max()) == 0.0
    assert float(cls_grad1[text_mask].abs().min()) > 0.0
    _, _, unmasked = run(base.clone(), None)
    assert float(unmasked[~text_mask].abs().min()) > 0.0  # without the mask they would learn


def test_targets_on_padded_or_missing_texts_are_rejected() -> None:
    raw = random_raw(1, 3, seed=0)
    boxes, labels, batch_idx = targets((0, 2, [8.0, 8.0, 40.0, 40.0]))
    with pytest.raises(ValueError, match="label 2, a padding text"):
        detection_loss(raw, boxes, labels, batch_idx, text_mask=torch.tensor([[True, True, False]]))
    with pytest.raises(ValueError, match=r"labels must index the 3 texts, got values 5\.\.5"):
        detection_loss(raw, boxes, torch.tensor([5]), batch_idx)
    with pytest.raises(ValueError, match=r"batch_idx must be in \[0, 1\)"):
        detection_loss(raw, boxes, labels, torch.tensor([1]))


def test_ignore_regions_are_never_negatives() -> None:
    gt, crowd = [8.0, 8.0, 40.0, 40.0], [24.0, 8.0, 64.0, 56.0]  # the crowd region overlaps the box
    boxes, labels, batch_idx = targets((0, 0, gt), (0, 1, crowd))
    ignore = torch.tensor([False, True])

    def run(ign: torch.Tensor | None, rows: slice = slice(None)):
        raw = random_raw(1, 2, seed=5)
        out = detection_loss(raw, boxes[rows], labels[rows], batch_idx[rows], ignore=ign)
        out.total.backward()
        return out, raw.box_logits.grad, raw.cls_logits.grad

    out, box_grad, cls_grad = run(ignore)
    anchors, strides = grid()
    px = anchors * strides  # (A, 2)
    in_crowd = ((px > torch.tensor(crowd[:2])) & (px < torch.tensor(crowd[2:]))).all(1)  # (A,)
    fg = box_grad[0].abs().sum(0) > 0  # (A,) positives are the anchors with a box gradient
    cls_moves = cls_grad[0].abs().sum(0) > 0  # (A,)
    assert bool((in_crowd & fg).any()) and bool((in_crowd & ~fg).any())
    assert torch.equal(cls_moves, fg | ~in_crowd)  # silent exactly on background inside the crowd
    alone, _, _ = run(None, slice(0, 1))  # the same box without the crowd row: same positives
    assert torch.equal(out.box, alone.box) and torch.equal(out.dfl, alone.dfl)
    as_box, _, _ = run(None)  # the crowd row as an ordinary box would get positives
    assert not torch.equal(out.box, as_box.box)


def test_loss_config_validates() -> None:
    with pytest.raises(ValueError, match="loss.topk must be >= 1, got 0"):
        LossConfig(topk=0)
    with pytest.raises(ValueError, match="loss.box must be >= 0, got -1"):
        LossConfig(box=-1.0)


# --------------------------------------------------------------------------------------------
# Parity with ultralytics on a real model, real images and their real labels
# --------------------------------------------------------------------------------------------

SIZE = (256, 320)  # (H, W): non-square so a width/height swap shows
PICKS = (0, 6, 42, 3)  # 8 boxes, 9 boxes, none (000000000250), 1 box
NUM_TEXTS = 12


def yolo_labels(image: Path) -> np.ndarray:
    """(N, 5) class, normalised cx, cy, w, h rows of a coco128 image (N = 0 without a label file)."""
    txt = image.parents[2] / "labels" / image.parent.name / f"{image.stem}.txt"
    if not txt.exists() or not txt.read_text().strip():
        return np.zeros((0, 5), dtype=np.float32)
    return np.loadtxt(txt, ndmin=2, dtype=np.float32)


@pytest.fixture(scope="module")
def real_batch(coco128_images: list[Path]) -> dict[str, torch.Tensor]:
    """Letterboxed coco128 images with their labels as ultralytics' trainer feeds them.

    Keys: img (B, 3, H, W); batch_idx (N,) float; cls (N, 1) float (coco class mod K);
    bboxes (N, 4) xywh normalised to the letterboxed input.
    """
    from ultralytics.utils.ops import xywh2xyxy, xyxy2xywh

    from ovdet.data.letterbox import letterbox, letterbox_boxes, to_tensor

    h, w = SIZE
    arrays, cls, bboxes, batch_idx = [], [], [], []
    for i, index in enumerate(PICKS):
        image = cv2.imread(str(coco128_images[index]))
        out, info = letterbox(image, SIZE, stride=32, auto=False)
        arrays.append(out)
        rows = torch.from_numpy(yolo_labels(coco128_images[index]))  # (n, 5)
        h0, w0 = image.shape[:2]
        xyxy = letterbox_boxes(xywh2xyxy(rows[:, 1:] * torch.tensor([w0, h0, w0, h0])), info)  # (n, 4) input px
        bboxes.append(xyxy2xywh(xyxy) / torch.tensor([w, h, w, h]))
        cls.append(rows[:, :1] % NUM_TEXTS)
        batch_idx.append(torch.full((len(rows),), float(i)))
    return {
        "img": to_tensor(arrays),
        "batch_idx": torch.cat(batch_idx),
        "cls": torch.cat(cls),
        "bboxes": torch.cat(bboxes),
    }


@pytest.fixture(scope="module")
def calib(coco128_images: list[Path]) -> torch.Tensor:
    from ovdet.data.letterbox import letterbox, to_tensor

    return to_tensor([letterbox(cv2.imread(str(p)), SIZE, stride=32, auto=False)[0] for p in coco128_images[10:14]])


@pytest.fixture
def one_thread():
    """Run on one intra-op thread, then restore the setting.

    The comparison is exact with 1 or 2 threads (both checked); but on a 2-core machine shared
    with other jobs, 2 threads oversubscribe the cores and this test slows from ~8 s to ~80 s.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("version", [1, 2])
def test_loss_and_gradients_equal_ultralytics(version: int, real_batch, calib, tmp_path: Path, one_thread) -> None:
    pytest.importorskip("ultralytics")
    from ultralytics.utils.ops import xywh2xyxy

    from ovdet import Detector
    from ovdet.weights import ultralytics_name

    pt = save_like_ultralytics(perturbed_world_model(version, "n", calib), tmp_path / f"v{version}.pt")
    ours = Detector.from_ultralytics(pt, trust=True, device="cpu").model.train()
    theirs = torch.load(pt, weights_only=False)["model"].float().train()  # the same fp16-rounded weights
    b = len(real_batch["img"])
    text = F.normalize(torch.randn(b, NUM_TEXTS, 512, generator=torch.Generator().manual_seed(version)), dim=-1)
    if version == 1:
        text = text[:1]  # one vocabulary for the batch: ovdet takes (K, D), ultralytics expands (1, K, D)

    theirs.model[-1].nc = NUM_TEXTS  # the criterion reads the class count when it is built
    theirs.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    theirs.criterion = None
    loss, items = theirs.loss({**real_batch, "txt_feats": text})
    loss.sum().backward()

    raw = ours(real_batch["img"], text[0] if version == 1 else text)
    h, w = SIZE
    boxes = xywh2xyxy(real_batch["bboxes"] * torch.tensor([w, h, w, h]))  # ultralytics' own pixel boxes
    out = detection_loss(raw, boxes, real_batch["cls"][:, 0].long(), real_batch["batch_idx"].long())
    out.total.backward()

    assert float(items["box_loss"]) > 0.1, "the batch must have positives"
    for part, name in (("box", "box_loss"), ("cls", "cls_loss"), ("dfl", "dfl_loss")):
        torch.testing.assert_close(getattr(out, part), items[name], rtol=1e-4, atol=0)
    torch.testing.assert_close(out.total, loss.sum().detach(), rtol=1e-4, atol=0)

    params = dict(theirs.named_parameters())
    grads = {key: (p.grad, params[ultralytics_name(key, version)].grad) for key, p in ours.named_parameters()}
    assert all(g is not None and r is not None for g, r in grads.values())
    # float32 backprop that sums the same terms in another order errs by ~1e-7 of the largest
    # gradient flowing through the network (1e-6 seen when ovdet decoded DFL by a weighted sum
    # instead of a matmul). A tensor's own scale is no guide: where the true gradient is zero
    # (a conv bias right before a train-mode BatchNorm, the key bias before a softmax) it holds
    # rounding noise only. So atol is 1e-5 of the network's largest gradient.
    atol = 1e-5 * max(float(r.abs().max()) for _, r in grads.values())
    for key, (g, r) in grads.items():
        torch.testing.assert_close(g, r, rtol=1e-4, atol=atol, msg=key)
    nonzero = sum(float(r.abs().max()) > 1e-3 * atol for _, r in grads.values())
    assert nonzero > 100, "gradients must reach the whole network"
