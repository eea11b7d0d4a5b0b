"""Optimisation pieces of training: parameter groups, the learning-rate schedule, and the EMA of weights."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ovdet.config import TrainConfig

__all__ = ["ModelEMA", "Schedule", "build_optimizer", "param_groups"]

#: Group order of :func:`param_groups` (the schedule treats the bias group specially in warmup).
GROUPS = ("decay", "no_decay", "bias")


def param_groups(params: Iterable[tuple[str, nn.Parameter]]) -> dict[str, list[nn.Parameter]]:
    """Split trainable parameters into weight-decayed weights and the rest.

    Weight decay applies to convolution and linear weights only; never to norms' scales,
    biases, logit scales and biases (all of them 0-D or 1-D), nor to prompt embeddings.

    Args:
        params: (name, parameter) pairs; those with ``requires_grad`` False are left out.

    Returns:
        ``{"decay": [...], "no_decay": [...], "bias": [...]}`` (biases: names ending in
        ``.bias`` with one dimension; they warm up from ``TrainConfig.warmup_bias_lr``).
    """
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, p in params:
        if not p.requires_grad:
            continue
        if name.endswith(".bias") and p.ndim == 1:
            groups["bias"].append(p)
        elif p.ndim <= 1 or name.startswith("prompt") or "logit_scale" in name:
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    return groups


def build_optimizer(
    named: Iterable[tuple[str, nn.Parameter]],
    cfg: TrainConfig,
    accumulate: int,
    world_size: int = 1,
    lr_mults: dict[int, float] | None = None,
) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`param_groups`, weight decay scaled by the effective batch / ``nbs``.

    Args:
        named: (name, parameter) pairs to train.
        cfg: optimizer, learning rate, momentum, weight decay.
        accumulate: steps accumulated per update.
        world_size: processes (the effective batch is ``batch × accumulate × world``).
        lr_mults: ``id(parameter) → multiplier`` of the learning rate (e.g. the text encoder's),
            applied by splitting each group; every group records its ``lr_mult``.

    Raises:
        ValueError: nothing to train.
    """
    named = list(named)
    decay = cfg.resolved("weight_decay") * cfg.batch * accumulate * world_size / cfg.nbs
    lr, momentum, lr_mults = cfg.resolved("lr0"), cfg.resolved("momentum"), lr_mults or {}
    groups = []
    for kind, params in param_groups(named).items():
        by_mult: dict[float, list[nn.Parameter]] = {}
        for p in params:
            by_mult.setdefault(lr_mults.get(id(p), 1.0), []).append(p)
        for mult, ps in by_mult.items():
            groups.append(
                {
                    "params": ps,
                    "kind": kind,
                    "lr_mult": mult,
                    "lr": lr * mult,
                    "weight_decay": decay if kind == "decay" else 0.0,
                }
            )
    if not any(g["params"] for g in groups):
        raise ValueError("nothing to train: every parameter is frozen (check the fine-tune mode)")
    if cfg.optimizer == "SGD":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))


@dataclass(frozen=True)
class Schedule:
    """Learning rate and momentum at every optimizer update: linear warmup, then cosine or linear decay.

    During the first ``warmup`` updates the bias group's rate falls from ``warmup_bias_lr`` and
    the others rise from 0 towards the decayed rate, and SGD's momentum rises from
    ``warmup_momentum`` (AdamW's beta1 stays at ``momentum``, as in ultralytics); afterwards the
    rate decays from ``lr0`` to ``lr0 × lrf`` over the run.

    Attributes:
        total: optimizer updates of the whole run.
        warmup: updates of the warmup (at least 100 when the run is long enough, never more
            than half the run).
    """

    cfg: TrainConfig
    total: int
    warmup: int

    @classmethod
    def for_run(cls, cfg: TrainConfig, updates_per_epoch: int) -> Schedule:
        total = max(cfg.epochs * updates_per_epoch, 1)
        warmup = (
            0 if cfg.warmup_epochs <= 0 else min(max(round(cfg.warmup_epochs * updates_per_epoch), 100), total // 2)
        )
        return cls(cfg, total, warmup)

    def factor(self, update: int) -> float:
        """Decay factor of ``lr0`` at an update (1 → ``lrf``)."""
        x = min(max(update / self.total, 0.0), 1.0)
        if self.cfg.schedule == "linear":
            return (1.0 - x) * (1.0 - self.cfg.lrf) + self.cfg.lrf
        return ((1.0 - math.cos(x * math.pi)) / 2.0) * (self.cfg.lrf - 1.0) + 1.0

    def apply(self, optimizer: torch.optim.Optimizer, update: int) -> None:
        """Set every group's learning rate (and momentum) for the update about to happen."""
        cfg = self.cfg
        target = cfg.resolved("lr0") * self.factor(update)
        warm = update < self.warmup
        t = update / self.warmup if warm else 1.0
        momentum = cfg.warmup_momentum + t * (cfg.resolved("momentum") - cfg.warmup_momentum)
        bias_start = cfg.resolved("warmup_bias_lr")
        for g in optimizer.param_groups:
            mult = g.get("lr_mult", 1.0)
            start = bias_start if g.get("kind") == "bias" else 0.0
            g["lr"] = mult * ((start + t * (target - start)) if warm else target)
            if "momentum" in g:  # SGD only: AdamW's betas are left as built
                g["momentum"] = momentum


class ModelEMA:
    """Exponential moving average of a model's weights and buffers: what is evaluated and saved.

    ``ema = d · ema + (1 - d) · model`` after each optimizer update, with ``d`` ramping up as
    ``decay · (1 - exp(-updates / tau))`` so early, poor weights fade quickly.

    Args:
        model: the trained model (copied; the copy is frozen and in eval mode).
        decay: the asymptotic decay.
        tau: ramp length in updates.
        updates: updates already made (resume).
        frozen: names of parameters and buffers that do not train: copied, never averaged, so
            they stay bit-identical (an average of equal values is not, in floating point).
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0, frozen: Iterable[str] = ()
    ) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates
        self.frozen = frozenset(frozen)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current weights in (call after each optimizer update)."""
        self.updates += 1
        d = self.decay * (1.0 - math.exp(-self.updates / self.tau))
        theirs = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point and name not in self.frozen:
                value.mul_(d).add_(theirs[name].detach(), alpha=1.0 - d)
            else:
                value.copy_(theirs[name])
