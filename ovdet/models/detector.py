"""The open-vocabulary detector module: raw outputs in ``forward``, decoding and NMS separate."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torchvision
from torch import nn

from ovdet.config import LossConfig, ModelConfig, NMSConfig
from ovdet.models.backbone import Backbone
from ovdet.models.head import WorldHead
from ovdet.models.layers import ConvBNAct, dfl_decode, make_anchors
from ovdet.models.loss import LossOutput, detection_loss
from ovdet.models.neck import TextGuidedPAN
from ovdet.models.outputs import NMSOutput, RawOutputs

if TYPE_CHECKING:  # pragma: no cover
    from ovdet.data.batch import Batch


class OVDetector(nn.Module):
    """YOLO-World-style detector: backbone → text-guided PAN → head.

    The class embeddings are an input, never state: ``forward(images, text)`` is a pure
    function of its arguments and the weights, in training and in eval alike; ``loss`` and
    ``postprocess`` take its outputs.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.channels, cfg.depths, cfg.bn_eps, cfg.bn_momentum)
        self.neck = TextGuidedPAN(cfg, self.backbone.out_channels)
        self.head = WorldHead(cfg, self.neck.out_channels)

    def forward(self, images: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> RawOutputs:
        """Run the network.

        Args:
            images: (B, 3, H, W) RGB in [0, 1], H and W multiples of the largest stride (32).
            text: (B, K, D) or (K, D) class embeddings (L2-normalised), shared by all images
                when 2-D.
            text_mask: optional (B, K) bool, False marks padding texts (training); padded
                texts never gate the neck's attention.

        Returns:
            :class:`RawOutputs`.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        stride = max(self.cfg.strides)
        if images.shape[2] % stride or images.shape[3] % stride:
            raise ValueError(f"image height and width must be multiples of {stride}, got {tuple(images.shape[2:])}")
        b = images.shape[0]
        text = text.to(images.dtype)
        if text.ndim == 2:
            text = text.unsqueeze(0).expand(b, -1, -1)
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != self.cfg.embed_dim:
            raise ValueError(
                f"text must be (K, {self.cfg.embed_dim}) or ({b}, K, {self.cfg.embed_dim}), got {tuple(text.shape)}"
            )
        feats = self.neck(self.backbone(images), text, text_mask)
        return head_outputs(self.head, feats, text, self.cfg.strides)

    def decode(self, raw: RawOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes and class scores of every anchor (see :func:`decode_outputs`)."""
        return decode_outputs(raw, self.cfg.reg_max)

    def postprocess(self, raw: RawOutputs, nms: NMSConfig) -> list[NMSOutput]:
        """Decode and run per-class (or agnostic) NMS (see :func:`postprocess_outputs`)."""
        return postprocess_outputs(raw, self.cfg.reg_max, nms)

    def loss(
        self,
        raw: RawOutputs,
        batch: Batch,
        cfg: LossConfig | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> LossOutput:
        """The YOLOv8 detection loss of ``forward(batch images, batch texts)``'s outputs.

        Task-aligned assignment, then BCE over region-text logits (padded texts masked out,
        ignore regions never negatives), CIoU and DFL; equal to ultralytics' loss on the same
        inputs (see :func:`ovdet.models.loss.detection_loss`).

        Args:
            raw: the outputs for ``batch`` (B images, T texts each).
            batch: targets: boxes in input pixels, labels indexing each image's texts.
            cfg: gains and assigner settings (default :class:`~ovdet.config.LossConfig`).
            reduce: data-parallel training: a sum over processes (see ``detection_loss``).
        """
        return detection_loss(
            raw,
            batch.boxes,
            batch.labels,
            batch.batch_idx,
            batch.ignore,
            batch.text_mask,
            self.cfg.reg_max,
            cfg,
            reduce,
        )

    @torch.no_grad()
    def fuse(self) -> OVDetector:
        """Fold every BatchNorm into its convolution for inference; outputs are unchanged."""
        for m in self.modules():
            if isinstance(m, ConvBNAct):
                m.fuse()
        self.head.fuse()
        return self

    @property
    def is_fused(self) -> bool:
        """True once :meth:`fuse` has folded the BatchNorms."""
        return not any(isinstance(m, nn.BatchNorm2d) for m in self.modules())


def head_outputs(
    head: nn.Module, feats: list[torch.Tensor], text: torch.Tensor, strides: tuple[int, ...]
) -> RawOutputs:
    """The head's logits over the neck's ``feats`` (scored against ``text`` (B, K, D)) with the
    anchors of those feature maps: the last step of every detector's ``forward``."""
    box_logits, cls_logits = head(feats, text)
    anchors, anchor_strides = make_anchors([f.shape[2:] for f in feats], strides, box_logits.dtype, box_logits.device)
    return RawOutputs(box_logits, cls_logits, anchors, anchor_strides)


def decode_outputs(raw: RawOutputs, reg_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes and class scores of every anchor.

    Args:
        raw: network outputs (B images, K classes, A anchors).
        reg_max: DFL bins per box side.

    Returns:
        boxes: (B, A, 4) xyxy in input-image pixels.
        scores: (B, A, K) sigmoid class scores in [0, 1].
    """
    dist = dfl_decode(raw.box_logits, reg_max).transpose(1, 2)  # (B, A, 4) ltrb, grid units
    anchors = raw.anchors.unsqueeze(0)  # (1, A, 2)
    boxes = torch.cat((anchors - dist[..., :2], anchors + dist[..., 2:]), -1) * raw.strides
    return boxes, raw.cls_logits.sigmoid().transpose(1, 2)


def postprocess_outputs(raw: RawOutputs, reg_max: int, nms: NMSConfig) -> list[NMSOutput]:
    """Decode and run per-class (or agnostic) NMS.

    Each anchor keeps its best class (as ultralytics' default ``multi_label=False``).

    Returns:
        One :class:`NMSOutput` per image (boxes in input pixels), N ≤ ``nms.max_det``.
    """
    boxes, scores = decode_outputs(raw, reg_max)
    out = []
    for bx, sc in zip(boxes.float(), scores.float()):  # (A, 4), (A, K)
        best, label = sc.max(1)  # (A,)
        keep = best > nms.conf
        bx, best, label = bx[keep], best[keep], label[keep]
        if best.numel() > nms.max_nms:
            top = best.topk(nms.max_nms).indices
            bx, best, label = bx[top], best[top], label[top]
        if nms.agnostic:
            idx = torchvision.ops.nms(bx, best, nms.iou)
        else:
            idx = torchvision.ops.batched_nms(bx, best, label, nms.iou)
        idx = idx[: nms.max_det]
        out.append(NMSOutput(bx[idx], best[idx], label[idx].long()))
    return out
