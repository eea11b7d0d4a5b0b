"""Text-guided PAN neck (YOLO-World's RepVL-PAN without re-parameterisation).

Each fusion block is a C2f whose last branch is gated by max-sigmoid attention over the class
embeddings: a cell's features are scaled by how strongly it matches its best text. Version 1
additionally refines the text embeddings with image-pooling attention after the top-down path.
"""

from __future__ import annotations

import torch
from torch import nn

from ovdet.config import ModelConfig
from ovdet.models.layers import Bottleneck, ConvBNAct, upsample2x


class MaxSigmoidAttention(nn.Module):
    """Gate image features by their best-matching text, per head.

    Args:
        c: channels of the input and output (the C2f hidden width); split into ``heads`` groups.
        heads: number of attention heads; must divide ``c``.
        text_dim: D, the text-embedding dimension.

    Shapes:
        x (B, c, H, W), text (B, K, D), text_mask (B, K) bool or None → (B, c, H, W).
    """

    def __init__(self, c: int, heads: int, text_dim: int, bn_eps: float = 1e-3, bn_momentum: float = 0.03) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = c // heads
        self.guide = nn.Linear(text_dim, c)
        self.bias = nn.Parameter(torch.zeros(heads))
        self.proj = ConvBNAct(c, c, 3, act=False, bn_eps=bn_eps, bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        k = text.shape[1]
        guide = self.guide(text).view(b, k, self.heads, self.head_dim)  # (B, K, nh, hc)
        embed = x.view(b, self.heads, self.head_dim, h * w)  # (B, nh, hc, HW)
        sim = embed.transpose(2, 3) @ guide.permute(0, 2, 3, 1)  # (B, nh, HW, K)
        if text_mask is not None:  # padded texts never win the max
            sim = sim.masked_fill(~text_mask.view(b, 1, 1, k), float("-inf"))
        weight = sim.max(dim=-1).values.view(b, self.heads, h, w)  # (B, nh, H, W)
        weight = (weight / self.head_dim**0.5 + self.bias.view(1, -1, 1, 1)).sigmoid()
        y = self.proj(x).view(b, self.heads, self.head_dim, h, w)
        return (y * weight.unsqueeze(2)).view(b, c, h, w)


class C2fTextAttn(nn.Module):
    """C2f whose concatenation also holds the text-gated last branch.

    Shapes:
        x (B, c_in, H, W), text (B, K, D) → (B, c_out, H, W); hidden width c = c_out // 2.
    """

    def __init__(
        self, c_in: int, c_out: int, n: int, heads: int, text_dim: int, bn_eps: float = 1e-3, bn_momentum: float = 0.03
    ) -> None:
        super().__init__()
        self.hidden = c_out // 2
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.expand = ConvBNAct(c_in, 2 * self.hidden, 1, **bn)
        self.blocks = nn.ModuleList(Bottleneck(self.hidden, False, **bn) for _ in range(n))
        self.attn = MaxSigmoidAttention(self.hidden, heads, text_dim, **bn)
        self.project = ConvBNAct((3 + n) * self.hidden, c_out, 1, **bn)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        parts = list(self.expand(x).chunk(2, 1))  # 2 × (B, c, H, W)
        for block in self.blocks:
            parts.append(block(parts[-1]))
        parts.append(self.attn(parts[-1], text, text_mask))
        return self.project(torch.cat(parts, 1))  # (B, (3 + n)·c, H, W) → (B, c_out, H, W)


class ImagePoolingAttention(nn.Module):
    """Refine text embeddings with max-pooled patches of the image features (YOLO-World v1).

    Args:
        in_channels: channels of the three feature maps it pools.
        dim: attention width.
        text_dim: D.
        heads: attention heads; must divide ``dim``.
        pool: each map is max-pooled to ``pool × pool`` patches.

    Shapes:
        feats [(B, c_i, H_i, W_i)] × 3, text (B, K, D) → (B, K, D) (text + attended image context).
    """

    def __init__(self, in_channels: tuple[int, ...], dim: int, text_dim: int, heads: int, pool: int) -> None:
        super().__init__()
        self.heads, self.dim, self.pool = heads, dim, pool
        self.query = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
        self.key = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.value = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.proj = nn.Linear(dim, text_dim)
        self.projections = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.pooling = nn.AdaptiveMaxPool2d((pool, pool))

    def forward(self, feats: list[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        b, k, _ = text.shape
        patches = torch.cat(
            [self.pooling(proj(f)).flatten(2) for f, proj in zip(feats, self.projections)], dim=-1
        ).transpose(1, 2)  # (B, P, dim), P = levels · pool²
        hd = self.dim // self.heads
        q = self.query(text).view(b, k, self.heads, hd)  # (B, K, nh, hd)
        key = self.key(patches).view(b, -1, self.heads, hd)  # (B, P, nh, hd)
        val = self.value(patches).view(b, -1, self.heads, hd)  # (B, P, nh, hd)
        attn = torch.einsum("bknd,bpnd->bnkp", q, key) / hd**0.5  # (B, nh, K, P)
        ctx = torch.einsum("bnkp,bpnd->bknd", attn.softmax(-1), val).reshape(b, k, self.dim)
        return text + self.proj(ctx)


class TextGuidedPAN(nn.Module):
    """Top-down then bottom-up feature pyramid with text-guided fusion blocks.

    Shapes:
        feats [P3 (B, c3, H/8, W/8), P4 (B, c4, H/16, W/16), P5 (B, c5, H/32, W/32)],
        text (B, K, D), text_mask (B, K) bool or None → [N3, N4, N5] with ``cfg.neck_channels[1:]``
        channels at strides 8, 16, 32. The head scores against the original ``text`` (v1's
        image-pooling refinement feeds only the bottom-up blocks, as in YOLO-World).
    """

    def __init__(self, cfg: ModelConfig, in_channels: tuple[int, int, int]) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        td4, out3, out4, out5 = cfg.neck_channels
        n, d, heads = cfg.neck_depth, cfg.embed_dim, cfg.neck_heads
        bn = dict(bn_eps=cfg.bn_eps, bn_momentum=cfg.bn_momentum)
        self.top_down_p4 = C2fTextAttn(c5 + c4, td4, n, heads[0], d, **bn)
        self.top_down_p3 = C2fTextAttn(td4 + c3, out3, n, heads[1], d, **bn)
        self.pool_attn = (
            ImagePoolingAttention((out3, td4, c5), cfg.pool_channels, d, cfg.pool_heads, cfg.pool_size)
            if cfg.version == 1
            else None
        )
        self.down_p3 = ConvBNAct(out3, out3, 3, 2, **bn)
        self.bottom_up_p4 = C2fTextAttn(out3 + td4, out4, n, heads[2], d, **bn)
        self.down_p4 = ConvBNAct(out4, out4, 3, 2, **bn)
        self.bottom_up_p5 = C2fTextAttn(out4 + c5, out5, n, heads[3], d, **bn)
        self.out_channels = (out3, out4, out5)

    def forward(
        self, feats: list[torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        p3, p4, p5 = feats
        t4 = self.top_down_p4(torch.cat((upsample2x(p5), p4), 1), text, text_mask)
        n3 = self.top_down_p3(torch.cat((upsample2x(t4), p3), 1), text, text_mask)
        if self.pool_attn is not None:
            # v1: the bottom-up blocks see image-refined text; the head keeps the original text
            text = self.pool_attn([n3, t4, p5], text)
        n4 = self.bottom_up_p4(torch.cat((self.down_p3(n3), t4), 1), text, text_mask)
        n5 = self.bottom_up_p5(torch.cat((self.down_p4(n4), p5), 1), text, text_mask)
        return [n3, n4, n5]
