"""Flickr30k Entities Recall@k (ANY-BOX) and RefCOCO precision@1 on hand-built cases whose answers
are known by construction: every IoU is a ratio of areas chosen clear of the 0.5 threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ovdet.grounding.metrics import precision_at_1, recall_at_k

GT = [0.0, 0.0, 10.0, 10.0]  # area 100
HIT = [0.0, 0.0, 10.0, 6.0]  # inside GT, area 60: IoU 0.6
MISS = [0.0, 0.0, 10.0, 4.0]  # IoU 0.4
NEAR_HIT = [0.0, 0.0, 10.0, 5.1]  # IoU 0.51
NEAR_MISS = [0.0, 0.0, 10.0, 4.9]  # IoU 0.49
FAR = [50.0, 50.0, 60.0, 60.0]  # IoU 0 with GT


def test_recall_at_k_any_box() -> None:
    predictions = [
        [
            [MISS, HIT, FAR],  # A: first match at rank 1 → found at 5 and 10, not at 1
            torch.tensor([[100.0, 100.0, 120.0, 121.0]]),  # B: matches B's second GT box (IoU 400/420)
            [HIT],  # C: no ground truth → not counted
            np.zeros((0, 4)),  # D: no prediction → never found
        ],
        [
            [FAR] * 6 + [NEAR_HIT],  # E: first match at rank 6 → found at 10 only
            [NEAR_MISS, MISS, FAR],  # F: fewer boxes than k, none matching → never found
        ],
    ]
    ground_truth = [
        [[GT], [GT, [100.0, 100.0, 120.0, 120.0]], [], [GT]],
        [np.array([GT]), torch.tensor([GT])],
    ]
    got = recall_at_k(predictions, ground_truth)
    assert got == {"R@1": 1 / 5, "R@5": 2 / 5, "R@10": 3 / 5, "phrases": 5}
    # ANY-BOX, not MERGED-BOX: B's boxes merged into one (0, 0, 120, 120) would not match B's prediction
    merged = recall_at_k([[predictions[0][1]]], [[[[0.0, 0.0, 120.0, 120.0]]]], ks=(1,))
    assert merged == {"R@1": 0.0, "phrases": 1}
    assert recall_at_k([[[HIT]]], [[[GT]]], ks=(1,), iou_threshold=0.7) == {"R@1": 0.0, "phrases": 1}
    assert recall_at_k([[[HIT]]], [[[GT]]], ks=(3, 1)) == {"R@3": 1.0, "R@1": 1.0, "phrases": 1}


def test_recall_at_k_edge_cases_and_errors() -> None:
    empty = recall_at_k([[[HIT]]], [[[]]])
    assert empty["phrases"] == 0 and all(math.isnan(empty[k]) for k in ("R@1", "R@5", "R@10"))
    assert recall_at_k([], [])["phrases"] == 0
    with pytest.raises(ValueError, match="predictions cover 1 images but ground_truth 2"):
        recall_at_k([[]], [[], []])
    with pytest.raises(ValueError, match="image 0: 2 phrases have predictions but 1 have ground truth"):
        recall_at_k([[[HIT], [HIT]]], [[[GT]]])
    with pytest.raises(ValueError, match="ks must be positive"):
        recall_at_k([[[HIT]]], [[[GT]]], ks=(0,))
    with pytest.raises(ValueError, match=r"predictions of image 0, phrase 0: box 1 is \[5.0, 0.0, 1.0, 1.0\]"):
        recall_at_k([[[HIT, [5.0, 0.0, 1.0, 1.0]]]], [[[GT]]])
    with pytest.raises(ValueError, match=r"ground truth of image 0, phrase 0: boxes must be \(N, 4\)"):
        recall_at_k([[[HIT]]], [[[0.0, 1.0, 2.0]]])
    with pytest.raises(ValueError, match="must be finite"):
        recall_at_k([[[[0.0, 0.0, float("nan"), 1.0]]]], [[[GT]]])


def test_precision_at_1() -> None:
    predictions = [
        [HIT, GT],  # top-1 IoU 0.6: right
        torch.tensor([MISS, GT]),  # top-1 IoU 0.4: wrong, though the second box is perfect
        [],  # nothing predicted: wrong
        np.array([[20.0, 20.0, 30.0, 30.0]]),  # exact: right
    ]
    ground_truth = [GT, GT, GT, [[20.0, 20.0, 30.0, 30.0]]]
    assert precision_at_1(predictions, ground_truth) == {"P@1": 0.5, "expressions": 4}
    assert precision_at_1([[NEAR_HIT], [NEAR_MISS]], [GT, GT]) == {"P@1": 0.5, "expressions": 2}
    none = precision_at_1([], [])
    assert none["expressions"] == 0 and math.isnan(none["P@1"])
    with pytest.raises(ValueError, match="expression 0: RefCOCO has one ground-truth box per expression, got 2"):
        precision_at_1([[HIT]], [[GT, GT]])
    with pytest.raises(ValueError, match="2 expressions have predictions but 1 have ground truth"):
        precision_at_1([[HIT], [HIT]], [GT])
