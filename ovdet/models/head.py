"""Detection head: a DFL box branch and a region-embedding branch per level, scored against texts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ovdet.config import ModelConfig
from ovdet.models.layers import ConvBNAct, fold_bn_into_conv


class ContrastiveHead(nn.Module):
    """Region-text logits from L2-normalised embeddings (YOLO-World v1).

    ``logits = exp(logit_scale) · <x/|x|, t/|t|> + bias``.

    Shapes:
        x (B, D, H, W), text (B, K, D) → (B, K, H, W).
    """

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([-10.0]))  # initial logits ≈ -10: sigmoid ≈ 0, like a prior
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1)
        text = F.normalize(text, dim=-1)
        return torch.einsum("bdhw,bkd->bkhw", x, text) * self.logit_scale.exp() + self.bias


class BNContrastiveHead(nn.Module):
    """Region-text logits with BatchNorm-ed region embeddings (YOLO-World v2).

    ``logits = exp(logit_scale) · <BN(x), t/|t|> + bias``. After :meth:`fold_into` the BN lives in
    the embedding branch's last convolution and ``norm`` is the identity.

    Shapes:
        x (B, D, H, W), text (B, K, D) → (B, K, H, W).
    """

    def __init__(self, dim: int, bn_eps: float = 1e-3, bn_momentum: float = 0.03) -> None:
        super().__init__()
        self.norm: nn.Module = nn.BatchNorm2d(dim, eps=bn_eps, momentum=bn_momentum)
        self.bias = nn.Parameter(torch.tensor([-10.0]))
        self.logit_scale = nn.Parameter(torch.tensor(-1.0))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        text = F.normalize(text, dim=-1)
        return torch.einsum("bdhw,bkd->bkhw", x, text) * self.logit_scale.exp() + self.bias

    @torch.no_grad()
    def fold_into(self, conv: nn.Conv2d) -> nn.Conv2d:
        """Return ``conv`` with this head's BatchNorm folded in; the norm becomes the identity."""
        if not isinstance(self.norm, nn.BatchNorm2d):
            return conv
        fused = fold_bn_into_conv(conv, self.norm)
        self.norm = nn.Identity()
        return fused


def _branch(c_in: int, hidden: int, c_out: int, bn: dict) -> nn.Sequential:
    return nn.Sequential(
        ConvBNAct(c_in, hidden, 3, **bn), ConvBNAct(hidden, hidden, 3, **bn), nn.Conv2d(hidden, c_out, 1)
    )


def _box_logits(branch: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A box branch's (B, 4·reg_max, H, W) logits; under autocast its last 1×1 convolution runs
    in float32.

    bf16 keeps 8 significant bits: box distributions rounded to it move the DFL expectations by
    up to a pixel. The previous ovdet-demo's (v2-s) bf16 predictions on CPU kept 83.5% of its
    fp32 boxes at IoU 0.9 with this convolution in bf16, 94.8% with it in float32 (coco128, 64 images).
    """
    *body, last = branch
    for layer in body:
        x = layer(x)
    if not torch.is_autocast_enabled(x.device.type):
        return last(x)
    with torch.autocast(x.device.type, enabled=False):
        return last(x.float())


class WorldHead(nn.Module):
    """Per-level box distributions and region-text logits.

    Shapes:
        feats [(B, c_i, H_i, W_i)] × 3, text (B, K, D) →
        box_logits (B, 4·reg_max, A), cls_logits (B, K, A), with A = Σ H_i·W_i.
    """

    def __init__(self, cfg: ModelConfig, in_channels: tuple[int, int, int]) -> None:
        super().__init__()
        self.reg_max = cfg.reg_max
        bn = dict(bn_eps=cfg.bn_eps, bn_momentum=cfg.bn_momentum)
        self.box_branches = nn.ModuleList(_branch(c, cfg.box_channels, 4 * cfg.reg_max, bn) for c in in_channels)
        self.embed_branches = nn.ModuleList(_branch(c, cfg.embed_channels, cfg.embed_dim, bn) for c in in_channels)
        self.contrast = nn.ModuleList(
            (ContrastiveHead() if cfg.version == 1 else BNContrastiveHead(cfg.embed_dim, **bn)) for _ in in_channels
        )
        for branch in self.box_branches:  # ultralytics' box prior: every bin starts equal
            nn.init.constant_(branch[-1].bias, 1.0)

    def forward(self, feats: list[torch.Tensor], text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = feats[0].shape[0]
        box, cls = [], []
        for x, box_branch, embed_branch, contrast in zip(feats, self.box_branches, self.embed_branches, self.contrast):
            box.append(_box_logits(box_branch, x).view(b, 4 * self.reg_max, -1))  # (B, 4R, H·W)
            cls.append(contrast(embed_branch(x), text).flatten(2))  # (B, K, H·W)
        return torch.cat(box, 2), torch.cat(cls, 2)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold v2's contrastive BatchNorm into each embedding branch's last convolution."""
        for branch, contrast in zip(self.embed_branches, self.contrast):
            if isinstance(contrast, BNContrastiveHead):
                branch[-1] = contrast.fold_into(branch[-1])
