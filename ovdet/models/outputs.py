"""What the network returns: raw outputs of ``forward`` and per-image results of ``postprocess``."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["NMSOutput", "RawOutputs"]


class RawOutputs(NamedTuple):
    """What :meth:`OVDetector.forward` returns, in training and in eval alike.

    Attributes:
        box_logits: (B, 4·reg_max, A) DFL bin logits per side (left, top, right, bottom).
        cls_logits: (B, K, A) region-text logits (before sigmoid).
        anchors: (A, 2) anchor centres in grid units of their level.
        strides: (A, 1) stride of each anchor's level, in input pixels.
    """

    box_logits: torch.Tensor
    cls_logits: torch.Tensor
    anchors: torch.Tensor
    strides: torch.Tensor


class NMSOutput(NamedTuple):
    """One image's detections after decoding and NMS, in network-input pixels.

    Attributes:
        boxes: (N, 4) float32 xyxy input pixels (not clipped).
        scores: (N,) float32 sigmoid scores, descending.
        labels: (N,) int64 class indices.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
