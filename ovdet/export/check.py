"""Checks of an exported model against a reference: matched boxes, labels and score differences.

:func:`match_detections` pairs one set of predictions with another (same image order): each
reference box above ``min_score`` is matched one-to-one, greedily by IoU, to an unmatched box of
the same label. It serves both the PyTorch-parity check of ``ovdet export`` and the int8 report
("how many fp32 boxes the int8 model keeps").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ovdet.structures import Detections

__all__ = ["MatchReport", "match_detections"]


@dataclass(frozen=True)
class MatchReport:
    """How well ``other`` reproduces ``reference``.

    Attributes:
        reference: reference boxes considered (score > ``min_score``).
        matched: of those, boxes with a same-label partner at IoU ≥ ``iou``.
        other: boxes of the other predictions above ``min_score``.
        max_score_diff: largest |score difference| over matched pairs (0 when none).
        min_iou: smallest IoU over matched pairs (1 when none).
        iou: the IoU a match needs. min_score: the score floor.
        images: images compared.
    """

    reference: int
    matched: int
    other: int
    max_score_diff: float
    min_iou: float
    iou: float
    min_score: float
    images: int

    @property
    def fraction(self) -> float:
        """matched / reference (1.0 when the reference has no boxes)."""
        return self.matched / self.reference if self.reference else 1.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "images": self.images,
            "reference_boxes": self.reference,
            "matched": self.matched,
            "fraction": round(self.fraction, 6),
            "other_boxes": self.other,
            "max_score_diff": self.max_score_diff,
            "min_iou": self.min_iou,
            "iou": self.iou,
            "min_score": self.min_score,
        }

    def __str__(self) -> str:
        return (
            f"{self.matched}/{self.reference} boxes (score > {self.min_score}) matched at IoU >= {self.iou} with the "
            f"same label ({100 * self.fraction:.1f}%) over {self.images} images; max score difference "
            f"{self.max_score_diff:.2e}, min IoU {self.min_iou:.4f}; {self.other} boxes in the other"
        )


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) xyxy → (N, M) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(-1)  # (N, M)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections(
    reference: list[Detections], other: list[Detections], iou: float = 0.9, min_score: float = 0.25
) -> MatchReport:
    """Match ``other``'s boxes to ``reference``'s, image by image.

    Args:
        reference: per-image detections taken as truth (e.g. PyTorch fp32).
        other: the same images' detections from the model under test.
        iou: IoU a match needs.
        min_score: only boxes scoring above this count, on both sides.

    Raises:
        ValueError: the lists differ in length.
    """
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference images but {len(other)} others")
    total = matched = n_other = 0
    max_diff, min_iou = 0.0, 1.0
    for ref, oth in zip(reference, other):
        rk = (ref.scores > min_score).numpy()
        ok = (oth.scores > min_score).numpy()
        rb, rs, rl = ref.boxes.numpy()[rk].astype(np.float64), ref.scores.numpy()[rk], ref.labels.numpy()[rk]
        ob, os_, ol = oth.boxes.numpy()[ok].astype(np.float64), oth.scores.numpy()[ok], oth.labels.numpy()[ok]
        total += len(rb)
        n_other += len(ob)
        if not len(rb) or not len(ob):
            continue
        ious = _iou(rb, ob) * (rl[:, None] == ol[None, :])  # (N, M), 0 across labels
        used = np.zeros(len(ob), dtype=bool)
        for i in np.argsort(-rs, kind="stable"):  # highest reference scores pick first
            cand = np.where(used, -1.0, ious[i])
            j = int(cand.argmax())
            if cand[j] >= iou:
                used[j] = True
                matched += 1
                max_diff = max(max_diff, float(abs(rs[i] - os_[j])))
                min_iou = min(min_iou, float(cand[j]))
    return MatchReport(total, matched, n_other, max_diff, min_iou, iou, min_score, len(reference))
