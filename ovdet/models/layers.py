"""Building blocks of the YOLOv8 family: Conv-BN-SiLU, Bottleneck, C2f, SPPF, DFL.

Every block keeps inference-time folding (``fuse``) next to its definition so that a fused
model computes the same function as the unfused one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


class ConvBNAct(nn.Module):
    """Conv2d (no bias) → BatchNorm2d → SiLU (or no activation).

    Args:
        c_in: input channels.
        c_out: output channels.
        k: kernel size (square); padding is ``k // 2`` so stride 1 keeps the size.
        s: stride.
        act: apply SiLU when True.
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum.

    Shapes:
        (B, c_in, H, W) → (B, c_out, ceil(H / s), ceil(W / s)).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        k: int = 1,
        s: int = 1,
        act: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.03,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum)
        self.act: nn.Module = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BatchNorm into the convolution (inference only; outputs unchanged)."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fold_bn_into_conv(self.conv, self.bn)
            self.bn = nn.Identity()


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d equal to ``bn(conv(x))`` in eval mode.

    With ``s = gamma / sqrt(var + eps)``: ``W' = W * s`` per output channel and
    ``b' = (b - mean) * s + beta``.
    """
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    ).to(conv.weight.device)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    return fused.requires_grad_(False)


class Bottleneck(nn.Module):
    """Two 3×3 ConvBNAct with an optional residual; (B, c, H, W) → (B, c, H, W)."""

    def __init__(self, c: int, shortcut: bool, bn_eps: float = 1e-3, bn_momentum: float = 0.03) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(c, c, 3, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.conv2 = ConvBNAct(c, c, 3, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """CSP block with two halves and ``n`` chained bottlenecks whose outputs are all kept.

    ``expand`` (1×1) makes 2·c hidden channels, split in halves a, b; b runs through the
    bottlenecks b→b1→…→bn; ``project`` (1×1) maps concat(a, b, b1, …, bn) to ``c_out``.

    Shapes:
        (B, c_in, H, W) → (B, c_out, H, W); hidden width c = c_out // 2.
    """

    def __init__(
        self, c_in: int, c_out: int, n: int, shortcut: bool, bn_eps: float = 1e-3, bn_momentum: float = 0.03
    ) -> None:
        super().__init__()
        self.hidden = c_out // 2
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.expand = ConvBNAct(c_in, 2 * self.hidden, 1, **bn)
        self.blocks = nn.ModuleList(Bottleneck(self.hidden, shortcut, **bn) for _ in range(n))
        self.project = ConvBNAct((2 + n) * self.hidden, c_out, 1, **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.expand(x).chunk(2, 1))  # 2 × (B, c, H, W)
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.project(torch.cat(parts, 1))  # (B, (2 + n)·c, H, W) → (B, c_out, H, W)


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5×5 max-pools, equivalent to SPP(5, 9, 13).

    Shapes:
        (B, c_in, H, W) → (B, c_out, H, W); hidden width c_in // 2.
    """

    def __init__(self, c_in: int, c_out: int, k: int = 5, bn_eps: float = 1e-3, bn_momentum: float = 0.03) -> None:
        super().__init__()
        hidden = c_in // 2
        self.reduce = ConvBNAct(c_in, hidden, 1, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.pool = nn.MaxPool2d(k, 1, k // 2)
        self.project = ConvBNAct(hidden * 4, c_out, 1, bn_eps=bn_eps, bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.reduce(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.project(torch.cat(y, 1))


def dfl_decode(box_logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Distribution focal loss integral: expected distance per box side.

    Args:
        box_logits: (B, 4·reg_max, A) per-side bin logits, sides ordered left, top, right, bottom.
        reg_max: bins per side.

    Returns:
        (B, 4, A) distances in stride units, each in [0, reg_max - 1].
    """
    b, _, a = box_logits.shape
    prob = box_logits.view(b, 4, reg_max, a).softmax(2)  # (B, 4, R, A)
    bins = torch.arange(reg_max, dtype=prob.dtype, device=prob.device).view(1, 1, reg_max, 1)
    return (prob * bins).sum(2)


def make_anchors(
    sizes: list[tuple[int, int]], strides: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres of every cell of every level, in grid units.

    Args:
        sizes: (h, w) of each level's feature map.
        strides: stride of each level in input pixels.

    Returns:
        points: (A, 2) cell centres (x + 0.5, y + 0.5) in grid units, levels concatenated
            in order, row-major within a level.
        stride: (A, 1) the stride of each anchor's level.
    """
    points, stride = [], []
    for (h, w), s in zip(sizes, strides):
        sx = torch.arange(w, dtype=dtype, device=device) + 0.5
        sy = torch.arange(h, dtype=dtype, device=device) + 0.5
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xx, yy), -1).view(-1, 2))
        stride.append(torch.full((h * w, 1), float(s), dtype=dtype, device=device))
    return torch.cat(points), torch.cat(stride)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour ×2 upsampling; (B, C, H, W) → (B, C, 2H, 2W)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")
