"""A detector with its vocabulary folded into the weights ("prompt-then-detect").

With a fixed vocabulary, everything the network does with the class embeddings is linear in
them, so it can be precomputed once:

* each max-sigmoid attention's text guide ``Linear(text)`` becomes a grouped 1×1 convolution
  (one group per head, K output channels each) with the ``1/sqrt(head_dim)`` scale and the
  per-head bias folded in — ``max_k`` then picks the best class per head;
* v2's contrastive head (BatchNorm, then a dot product with the unit text embeddings) and the
  embedding branch's last 1×1 convolution merge into a single ``hidden → K`` convolution;
* v1's contrastive head (L2-normalised regions) becomes a 1×1 convolution after the normalisation.

v1's image-pooling attention refines the text per image, so the bottom-up blocks that read the
refined text keep their text attention (the text is a constant buffer of the folded network).

:func:`fold_vocabulary` returns a new network; the original is never modified.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ovdet.config import ModelConfig, NMSConfig
from ovdet.models.detector import OVDetector, decode_outputs, head_outputs, postprocess_outputs
from ovdet.models.head import BNContrastiveHead
from ovdet.models.neck import MaxSigmoidAttention
from ovdet.models.outputs import NMSOutput, RawOutputs

__all__ = ["FoldedAttention", "FoldedContrast", "FoldedDetector", "fold_vocabulary"]


class FoldedAttention(nn.Module):
    """:class:`~ovdet.models.neck.MaxSigmoidAttention` for one fixed vocabulary.

    ``sim`` is a grouped 1×1 convolution (``heads`` groups, K outputs each) computing
    ``<x_head, guide_k> / sqrt(head_dim) + bias_head`` for every class k.

    Shapes:
        x (B, c, H, W) → (B, c, H, W); the text arguments are accepted and ignored.
    """

    def __init__(self, attn: MaxSigmoidAttention, text: torch.Tensor) -> None:
        super().__init__()
        k = text.shape[0]
        self.heads, self.head_dim, self.num_classes = attn.heads, attn.head_dim, k
        c = self.heads * self.head_dim
        with torch.no_grad():
            guide = attn.guide(text).view(k, self.heads, self.head_dim)  # (K, nh, hc)
            weight = guide.permute(1, 0, 2).reshape(self.heads * k, self.head_dim, 1, 1)  # (nh·K, hc, 1, 1)
            self.sim = nn.Conv2d(c, self.heads * k, 1, groups=self.heads, bias=True).to(text.device)
            self.sim.weight.copy_(weight / self.head_dim**0.5)
            self.sim.bias.copy_(attn.bias.repeat_interleave(k))  # (nh·K,) head-major, like the weight
        self.sim.requires_grad_(False)
        self.proj = attn.proj

    def forward(
        self, x: torch.Tensor, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        sim = self.sim(x).view(b, self.heads, self.num_classes, h, w)  # (B, nh, K, H, W)
        weight = sim.amax(2).sigmoid()  # (B, nh, H, W)
        y = self.proj(x).view(b, self.heads, self.head_dim, h, w)
        return (y * weight.unsqueeze(2)).view(b, c, h, w)


class FoldedContrast(nn.Module):
    """A contrastive head for one fixed vocabulary: a 1×1 convolution to K logits.

    Args:
        conv: ``D → K`` (v1, after L2 normalisation) or ``hidden → K`` (v2, merged with the
            embedding branch's last convolution).
        normalize: L2-normalise the input over channels first (v1).

    Shapes:
        x (B, C, H, W) → (B, K, H, W); the text argument is accepted and ignored.
    """

    def __init__(self, conv: nn.Conv2d, normalize: bool) -> None:
        super().__init__()
        self.conv, self.normalize = conv.requires_grad_(False), normalize

    def forward(self, x: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.normalize(x, dim=1) if self.normalize else x)


def _conv1x1(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A 1×1 convolution with the given (C_out, C_in) weight and (C_out,) bias."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=True).to(weight.device)
    with torch.no_grad():
        conv.weight.copy_(weight[:, :, None, None])
        conv.bias.copy_(bias)
    return conv


class FoldedDetector(nn.Module):
    """An :class:`~ovdet.models.detector.OVDetector` whose vocabulary is part of the weights.

    Build it with :func:`fold_vocabulary`. ``forward(images)`` equals the source network's
    ``forward(images, text)`` (up to float rounding) for the folded ``text``; it is fused
    (no BatchNorm) and meant for inference.

    Attributes:
        cfg: the source network's config.
        num_classes: K, the folded vocabulary's size.
        text: (1, K, D) the folded embeddings (read only by v1's image-pooling attention).
    """

    def __init__(self, cfg: ModelConfig, backbone: nn.Module, neck: nn.Module, head: nn.Module, text: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.backbone, self.neck, self.head = backbone, neck, head
        self.num_classes = text.shape[0]
        self.register_buffer("text", text.unsqueeze(0).clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> RawOutputs:
        """Run the network on (B, 3, H, W) RGB images in [0, 1] (H, W multiples of 32).

        Returns:
            :class:`~ovdet.models.outputs.RawOutputs` with K = ``num_classes``.
        """
        b = images.shape[0]
        text = self.text.to(images.dtype).expand(b, -1, -1)  # (B, K, D); only v1's pooling attention reads it
        return head_outputs(self.head, self.neck(self.backbone(images), text), text, self.cfg.strides)

    def decode(self, raw: RawOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A, 4) xyxy input-pixel boxes and (B, A, K) scores (see :func:`decode_outputs`)."""
        return decode_outputs(raw, self.cfg.reg_max)

    def postprocess(self, raw: RawOutputs, nms: NMSConfig) -> list[NMSOutput]:
        """Decode and NMS, exactly as :meth:`OVDetector.postprocess`."""
        return postprocess_outputs(raw, self.cfg.reg_max, nms)


@torch.no_grad()
def fold_vocabulary(model: OVDetector, text: torch.Tensor) -> FoldedDetector:
    """Fold a fixed vocabulary into a copy of ``model`` (the original is untouched).

    Args:
        model: the network (fused or not; the copy is fused).
        text: (K, D) class embeddings; normalised here as ``set_class_embeddings`` does.

    Returns:
        A :class:`FoldedDetector` in eval mode, on ``model``'s device, whose
        ``forward(images)`` equals ``model(images, text)``.

    Raises:
        ValueError: ``text`` is not (K, D) with D = ``model.cfg.embed_dim`` and K ≥ 1.
    """
    d = model.cfg.embed_dim
    if text.ndim != 2 or text.shape[0] < 1 or text.shape[1] != d:
        raise ValueError(f"class embeddings must be (K, {d}) with K >= 1, got {tuple(text.shape)}")
    net = copy.deepcopy(model).eval()
    net.fuse()
    param = next(net.parameters())
    text = F.normalize(text.detach().to(param.device, torch.float32), dim=-1)  # (K, D)
    neck = net.neck
    folded_blocks = [neck.top_down_p4, neck.top_down_p3]
    if model.cfg.version != 1:  # v1's bottom-up blocks read the per-image refined text
        folded_blocks += [neck.bottom_up_p4, neck.bottom_up_p5]
    for block in folded_blocks:
        block.attn = FoldedAttention(block.attn, text)
    head = net.head
    for i, contrast in enumerate(head.contrast):
        scale = contrast.logit_scale.exp()
        if isinstance(contrast, BNContrastiveHead):  # v2: BN already folded into the branch's last conv
            last = head.embed_branches[i][-1]
            w = last.weight.flatten(1)  # (D, hidden)
            weight = scale * text @ w  # (K, hidden)
            bias = scale * text @ last.bias + contrast.bias  # (K,)
            head.embed_branches[i][-1] = nn.Identity()
            head.contrast[i] = FoldedContrast(_conv1x1(weight, bias), normalize=False)
        else:  # v1: logits = scale · <x/|x|, t> + bias
            bias = contrast.bias.expand(text.shape[0])  # (K,)
            head.contrast[i] = FoldedContrast(_conv1x1(scale * text, bias), normalize=True)
    return FoldedDetector(net.cfg, net.backbone, neck, head, text).eval()
