"""Post-processing in numpy, equal to :func:`ovdet.models.detector.postprocess_outputs`.

For runtimes whose graph ends at decoded boxes and scores (exports without in-graph NMS).
"""

from __future__ import annotations

import numpy as np

__all__ = ["nms", "select"]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, labels: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression (as ``torchvision.ops.nms`` / ``batched_nms``).

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,).
        iou: a box is suppressed by a higher-scored kept box when their IoU exceeds this.
        labels: (N,) class ids: only boxes of the same class suppress each other (None: all do).

    Returns:
        (M,) int64 indices of the kept boxes, by descending score.
    """
    b = boxes.astype(np.float64)  # (N, 4); float64 keeps the class offsets below exact
    if labels is not None and len(b):
        b = b + (labels.astype(np.float64) * (b.max() + 1.0))[:, None]  # classes never overlap
    area = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)  # (N,)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = (np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0])).clip(0)  # (R,)
        h = (np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1])).clip(0)
        inter = w * h
        union = area[i] + area[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def select(
    boxes: np.ndarray,
    scores: np.ndarray,
    conf: float,
    iou: float,
    max_det: int,
    agnostic: bool = False,
    max_nms: int = 30000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections from every anchor's box and class scores.

    Each anchor keeps its best class (ultralytics' ``multi_label=False``); anchors scoring above
    ``conf`` enter NMS (at most ``max_nms``, the highest); at most ``max_det`` are kept.

    Args:
        boxes: (A, 4) xyxy input pixels.
        scores: (A, K) class scores.

    Returns:
        boxes (N, 4) float32, scores (N,) float32 descending, labels (N,) int64.
    """
    best = scores.max(1)  # (A,)
    label = scores.argmax(1)  # (A,)
    keep = np.nonzero(best > conf)[0]
    if keep.size > max_nms:
        keep = keep[np.argsort(-best[keep], kind="stable")[:max_nms]]
    bx, sc, lb = boxes[keep], best[keep], label[keep]
    idx = nms(bx, sc, iou, None if agnostic else lb)[:max_det]
    return bx[idx].astype(np.float32), sc[idx].astype(np.float32), lb[idx].astype(np.int64)
