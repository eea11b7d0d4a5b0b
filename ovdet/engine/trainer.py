"""The training loop: a short :meth:`Trainer.run_step` and hooks around it (detectron2's shape).

Hooks (:mod:`ovdet.engine.hooks`) do everything that is not one step: the learning-rate
schedule, the EMA, validation, checkpoints, logging. :class:`Trainer` only iterates epochs and
batches and calls them in order: ``before_train``, then per epoch ``before_epoch``, per batch
``before_step`` / ``run_step`` / ``after_step``, ``after_epoch``, and ``after_train``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ovdet.config import TrainConfig
from ovdet.data.batch import Batch
from ovdet.device import autocast
from ovdet.engine.distributed import DistInfo, all_sum
from ovdet.engine.optim import ModelEMA
from ovdet.engine.vocab import TrainingVocabulary
from ovdet.models.detector import OVDetector

__all__ = ["Hook", "TrainState", "Trainer"]


@dataclass
class TrainState:
    """Where a run is; saved with every checkpoint, restored on resume.

    Attributes:
        epoch: epochs completed.
        update: optimizer updates made.
        iteration: batches processed.
        images: training images seen (this process).
        bad_steps: steps skipped for a non-finite loss.
        best_fitness: best validation fitness so far (0.1·AP50 + 0.9·AP), or None.
        history: one row per epoch (losses, metrics, learning rate, speed).
    """

    epoch: int = 0
    update: int = 0
    iteration: int = 0
    images: int = 0
    bad_steps: int = 0
    best_fitness: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Hook:
    """Something done around the steps; override the moments it needs. ``trainer`` is the :class:`Trainer`."""

    def before_train(self, trainer: Trainer) -> None: ...

    def before_epoch(self, trainer: Trainer) -> None: ...

    def before_step(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer) -> None: ...

    def after_epoch(self, trainer: Trainer) -> None: ...

    def after_train(self, trainer: Trainer) -> None: ...


class Trainer:
    """Runs the epochs; one :meth:`run_step` per batch.

    Args:
        model: the detector being trained (unwrapped).
        net: what runs the forward pass: ``model`` or its DistributedDataParallel wrapper.
        vocab: the run's texts → embeddings.
        loader: yields :class:`~ovdet.data.batch.Batch` (with ``set_epoch(epoch, total)``).
        optimizer: over the trainable parameters.
        cfg: the run's settings.
        dist: this process in the job.
        ema: the weights' moving average, or None.
        scaler: gradient scaler (fp16); disabled otherwise.
        amp_dtype: autocast dtype (None: float32).
        accumulate: batches per optimizer update.
        hooks: in call order.
        state: where to start (resume), default a fresh run.
        frozen: modules kept in eval mode while training (frozen parts' BatchNorm statistics
            must not drift).
        manual_sync: trainable parameters outside the DDP-wrapped model (prompts, a text
            encoder): their gradients are averaged over processes before each update.

    Attributes:
        last: the last step's detached losses ``{"box", "cls", "dfl", "total"}`` summed over
            processes, or None when the step was skipped.
        updated: whether the last step made an optimizer update.
        epoch_sums: per-epoch running sums of the losses and the step count.
    """

    def __init__(
        self,
        model: OVDetector,
        net: nn.Module,
        vocab: TrainingVocabulary,
        loader: Any,
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        dist: DistInfo,
        ema: ModelEMA | None,
        scaler: torch.amp.GradScaler,
        amp_dtype: torch.dtype | None,
        accumulate: int,
        hooks: Sequence[Hook],
        state: TrainState | None = None,
        frozen: Iterable[nn.Module] = (),
        manual_sync: Sequence[nn.Parameter] = (),
    ) -> None:
        self.model, self.net, self.vocab, self.loader = model, net, vocab, loader
        self.optimizer, self.cfg, self.dist, self.ema = optimizer, cfg, dist, ema
        self.scaler, self.amp_dtype, self.accumulate = scaler, amp_dtype, accumulate
        self.hooks = list(hooks)
        self.state = state if state is not None else TrainState()
        self.frozen = list(frozen)
        self.manual_sync = list(manual_sync)
        self.last: dict[str, float] | None = None
        self.updated = False
        self.metrics: dict[str, Any] = {}  # the last validation's (set by the validation hook)
        self.is_best = False
        self.epoch_sums: dict[str, float] = {}
        self._pending = 0  # batches accumulated since the last update
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    # ------------------------------------------------------------------------------------ loop
    def train(self) -> TrainState:
        """Run from ``state.epoch`` to ``cfg.epochs``; returns the final state."""
        self._call("before_train")
        try:
            self._epochs()
        finally:  # also when a step fails: logs are closed and written, as far as the run got
            self._call("after_train")
        return self.state

    def _epochs(self) -> None:
        for epoch in range(self.state.epoch, self.cfg.epochs):
            self.loader.set_epoch(epoch, self.cfg.epochs)
            self.epoch_sums = {
                "box": 0.0,
                "cls": 0.0,
                "dfl": 0.0,
                "steps": 0.0,
                "images": 0.0,
                "start": time.perf_counter(),
            }
            self._set_modes()
            self._call("before_epoch")
            for batch in self.loader:
                self._call("before_step")
                self.run_step(batch)
                self.state.iteration += 1
                self._call("after_step")
            self.state.epoch = epoch + 1
            self._call("after_epoch")

    def run_step(self, batch: Batch) -> None:
        """Forward, loss, backward; an optimizer update every ``accumulate`` batches."""
        batch = batch.to(self.dist.device, non_blocking=True)
        reduce = all_sum if self.dist.distributed else None
        last_of_update = self._pending + 1 >= self.accumulate
        # DDP synchronises gradients in backward; between updates there is nothing to synchronise
        sync = self.net.no_sync() if self.dist.distributed and not last_of_update else nullcontext()
        with sync:
            text = self.vocab.lookup(batch.texts)  # (B, T, D), padding zeros (and masked)
            with autocast(self.dist.device, self.amp_dtype):
                raw = self.net(batch.normalized_images(), text, batch.text_mask)
            loss = self.model.loss(raw, batch, self.cfg.loss, reduce=reduce)
            parts = torch.stack((loss.box, loss.cls, loss.dfl)).float()  # (3,) this process's shares
            finite = torch.isfinite(loss.total).float().reshape(1)
            summed = all_sum(torch.cat((parts, finite)))
            if summed[3] < self.dist.world_size:  # any process saw a NaN/inf loss: all skip the step
                self._skip(batch, summed[:3])
                return
            self.scaler.scale(loss.total).backward()
        self._pending += 1
        self.updated = False
        if self._pending >= self.accumulate:
            self._update()
        box, cls, dfl = (float(v) for v in summed[:3])
        self.last = {"box": box, "cls": cls, "dfl": dfl, "total": box + cls + dfl}
        for k in ("box", "cls", "dfl"):
            self.epoch_sums[k] += self.last[k]
        self.epoch_sums["steps"] += 1
        self.epoch_sums["images"] += len(batch)
        self.state.images += len(batch)

    # ------------------------------------------------------------------------------------ pieces
    def _update(self) -> None:
        if self.dist.distributed:
            for p in self.manual_sync:
                if p.grad is not None:
                    p.grad.copy_(all_sum(p.grad) / self.dist.world_size)
        self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, max_norm=self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._pending = 0
        self.state.update += 1
        self.updated = True

    def _skip(self, batch: Batch, parts: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # the accumulated gradients may hold the bad values too
        self._pending = 0
        self.updated = False
        self.last = None
        self.state.bad_steps += 1
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in zip(("box", "cls", "dfl"), parts))
        if self.state.bad_steps > self.cfg.max_bad_steps:
            raise RuntimeError(
                f"training stopped at epoch {self.state.epoch + 1}, step {self.state.iteration + 1}: "
                f"{self.state.bad_steps} steps had a non-finite loss (last: {shown}; images "
                f"{batch.paths[:3]}). Lower the learning rate (--lr0), check the data with "
                f"`ovdet check-data`, or raise max_bad_steps"
            )
        warnings.warn(
            f"step {self.state.iteration + 1}: non-finite loss ({shown}); step skipped "
            f"({self.state.bad_steps}/{self.cfg.max_bad_steps} allowed)",
            RuntimeWarning,
            stacklevel=2,
        )

    def _set_modes(self) -> None:
        self.net.train()
        for module in self.frozen:
            module.eval()

    def _call(self, moment: str) -> None:
        for hook in self.hooks:
            getattr(hook, moment)(self)

    @property
    def epoch_losses(self) -> dict[str, float]:
        """Mean losses of the epoch so far."""
        n = max(self.epoch_sums.get("steps", 0.0), 1.0)
        return {k: self.epoch_sums.get(k, 0.0) / n for k in ("box", "cls", "dfl")}

    @property
    def lr(self) -> float:
        """The learning rate of the first weight group."""
        return float(self.optimizer.param_groups[0]["lr"])

    @staticmethod
    def fitness(metrics: dict[str, Any]) -> float:
        """ultralytics' model-selection score: 0.1 · AP50 + 0.9 · AP (AP = mAP50-95)."""
        ap50, ap = metrics.get("AP50", 0.0), metrics.get("AP", 0.0)
        ap50, ap = (0.0 if v is None or (isinstance(v, float) and math.isnan(v)) or v < 0 else v for v in (ap50, ap))
        return 0.1 * ap50 + 0.9 * ap
