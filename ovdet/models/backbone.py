"""YOLOv8 CSPDarknet backbone: stem, four (downsample + C2f) stages, SPPF."""

from __future__ import annotations

import torch
from torch import nn

from ovdet.models.layers import SPPF, C2f, ConvBNAct


class Stage(nn.Module):
    """A stride-2 3×3 ConvBNAct followed by a C2f block; (B, c_in, H, W) → (B, c_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int, depth: int, bn_eps: float, bn_momentum: float) -> None:
        super().__init__()
        self.down = ConvBNAct(c_in, c_out, 3, 2, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.c2f = C2f(c_out, c_out, depth, shortcut=True, bn_eps=bn_eps, bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2f(self.down(x))


class Backbone(nn.Module):
    """YOLOv8 backbone.

    Args:
        channels: output channels of the stem (P1) and of stages P2..P5.
        depths: C2f repeats of stages P2..P5.

    Shapes:
        (B, 3, H, W) with H, W multiples of 32 → [P3 (B, c3, H/8, W/8), P4 (B, c4, H/16, W/16),
        P5 (B, c5, H/32, W/32)], the P5 map after SPPF.
    """

    def __init__(
        self,
        channels: tuple[int, int, int, int, int],
        depths: tuple[int, int, int, int],
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.03,
    ) -> None:
        super().__init__()
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.stem = ConvBNAct(3, channels[0], 3, 2, **bn)
        self.stages = nn.ModuleList(Stage(channels[i], channels[i + 1], depths[i], **bn) for i in range(4))
        self.sppf = SPPF(channels[4], channels[4], 5, **bn)
        self.out_channels = (channels[2], channels[3], channels[4])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return [outs[1], outs[2], self.sppf(outs[3])]
