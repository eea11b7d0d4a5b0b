"""The hooks of a training run: schedule, EMA, validation, logging, checkpoints.

Their order in the trainer's list is their order at each moment; at the end of an epoch
validation runs first, then logging (which records the metrics), then checkpoints (which save
the history with them).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ovdet.checkpoint import save_checkpoint
from ovdet.config import to_dict
from ovdet.engine.distributed import barrier
from ovdet.engine.optim import ModelEMA, Schedule
from ovdet.engine.state import replace_dir, staging_dir, write_train_state
from ovdet.engine.tensorboard import EventWriter
from ovdet.engine.trainer import Hook, Trainer
from ovdet.io import atomic_write_text

__all__ = [
    "CheckpointHook",
    "EMAHook",
    "LoggerHook",
    "ScheduleHook",
    "ValidationHook",
    "optimizer_state",
    "plot_results",
]


class ScheduleHook(Hook):
    """Sets learning rate and momentum before each optimizer update's first batch."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def before_step(self, trainer: Trainer) -> None:
        if trainer._pending == 0:
            self.schedule.apply(trainer.optimizer, trainer.state.update)


class EMAHook(Hook):
    """Blends the weights into the EMA after every optimizer update."""

    def __init__(self, ema: ModelEMA) -> None:
        self.ema = ema

    def after_step(self, trainer: Trainer) -> None:
        if trainer.updated:
            self.ema.update(trainer.model)


class ValidationHook(Hook):
    """Validates the EMA weights (or the live ones) every ``interval`` epochs and after the last.

    Only rank 0 validates; the others wait. The metrics go to ``trainer.metrics``.

    Args:
        validate: model → metrics dict (``AP``, ``AP50``, …).
        interval: epochs between validations.
        model: what to validate (default: the trainer's EMA module, else its model).
    """

    def __init__(
        self,
        validate: Callable[[torch.nn.Module], dict[str, Any]],
        interval: int = 1,
        model: Callable[[Trainer], torch.nn.Module] | None = None,
    ) -> None:
        self.validate, self.interval, self.pick = validate, interval, model

    def after_epoch(self, trainer: Trainer) -> None:
        trainer.metrics = {}
        epoch = trainer.state.epoch
        if epoch % self.interval and epoch != trainer.cfg.epochs:
            return
        if trainer.dist.is_main:
            model = self.pick(trainer) if self.pick else (trainer.ema.module if trainer.ema else trainer.model)
            trainer.metrics = self.validate(model)
            fitness = Trainer.fitness(trainer.metrics)
            trainer.metrics["fitness"] = fitness
            best = trainer.state.best_fitness
            trainer.is_best = best is None or fitness > best
            if trainer.is_best:
                trainer.state.best_fitness = fitness
        barrier()


class LoggerHook(Hook):
    """Progress bar, ``results.csv``, TensorBoard events and ``results.png`` (rank 0 only).

    Args:
        run_dir: the run folder.
        progress: show the tqdm bar.
    """

    def __init__(self, run_dir: Path, progress: bool = True) -> None:
        self.run_dir, self.progress = run_dir, progress
        self.bar = None
        self.events: EventWriter | None = None
        self.problems_shown = 0

    def before_train(self, trainer: Trainer) -> None:
        # the data's problems so far were printed when the run started; later ones (images that
        # fail to decode, decoder warnings) are printed after the epoch that met them
        self.problems_shown = len(trainer.loader.dataset.data.report.problems)
        if trainer.dist.is_main:
            self.events = EventWriter(self.run_dir)

    def before_epoch(self, trainer: Trainer) -> None:
        if not (trainer.dist.is_main and self.progress):
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=len(trainer.loader),
            desc=f"epoch {trainer.state.epoch + 1}/{trainer.cfg.epochs}",
            unit="batch",
            leave=True,
            dynamic_ncols=True,
        )

    def after_step(self, trainer: Trainer) -> None:
        if self.bar is None:
            return
        elapsed = time.perf_counter() - trainer.epoch_sums["start"]
        losses = trainer.epoch_losses
        self.bar.set_postfix(
            box=f"{losses['box']:.3f}",
            cls=f"{losses['cls']:.3f}",
            dfl=f"{losses['dfl']:.3f}",
            lr=f"{trainer.lr:.2e}",
            img_s=f"{trainer.epoch_sums['images'] / max(elapsed, 1e-9):.1f}",
            refresh=False,
        )
        self.bar.update(1)

    def after_epoch(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elapsed = time.perf_counter() - trainer.epoch_sums["start"]
        metrics = trainer.metrics
        row: dict[str, Any] = {"epoch": trainer.state.epoch}
        row.update({f"train/{k}_loss": v for k, v in trainer.epoch_losses.items()})
        for key in ("AP", "AP50", "AP75", "fitness"):
            row[f"metrics/{key}"] = metrics.get(key, float("nan"))
        row.update(
            {
                "lr": trainer.lr,
                "images_per_s": trainer.epoch_sums["images"] * trainer.dist.world_size / max(elapsed, 1e-9),
                "epoch_s": elapsed,
                "skipped_images": getattr(trainer.loader.dataset, "skipped", 0),
            }
        )
        trainer.state.history.append(row)
        if not trainer.dist.is_main:
            return
        self._write_csv(trainer.state.history)
        if self.events is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.events.scalar(k, v, trainer.state.epoch)
            self.events.flush()
        ap = metrics.get("AP")
        print(
            f"epoch {trainer.state.epoch}/{trainer.cfg.epochs}: box {row['train/box_loss']:.4f} cls "
            f"{row['train/cls_loss']:.4f} dfl {row['train/dfl_loss']:.4f}"
            + (f", AP50 {metrics['AP50']:.4f} AP {ap:.4f}" if ap is not None else "")
            + f", {row['images_per_s']:.1f} images/s"
        )
        report = trainer.loader.dataset.data.report
        if len(report.problems) > self.problems_shown:
            print(f"epoch {trainer.state.epoch}: {len(report.problems) - self.problems_shown} new data problem(s)")
            print("\n".join(report.problem_lines(self.problems_shown)))
            self.problems_shown = len(report.problems)

    def after_train(self, trainer: Trainer) -> None:
        if not trainer.dist.is_main:
            return
        if self.events is not None:
            self.events.close()
        if trainer.state.history:
            plot_results(trainer.state.history, self.run_dir / "results.png")

    def _write_csv(self, history: list[dict[str, Any]]) -> None:
        import io

        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(history[0]))
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_text(self.run_dir / "results.csv", out.getvalue())


class CheckpointHook(Hook):
    """Saves ``weights/last`` every epoch (resumable) and ``weights/best`` on a better validation (rank 0).

    Args:
        run_dir: the run folder.
        names: the dataset's class names (the saved vocabulary).
        encoder_id: the text encoder the embeddings come from.
        extra_tensors: more tensors to resume (e.g. a fine-tuned text encoder), called at save time.
    """

    def __init__(
        self,
        run_dir: Path,
        names: Sequence[str],
        encoder_id: str,
        extra_tensors: Callable[[], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.weights = run_dir / "weights"
        self.names, self.encoder_id, self.extra = list(names), encoder_id, extra_tensors

    def after_epoch(self, trainer: Trainer) -> None:
        if trainer.dist.is_main:
            self.save(trainer, self.weights / "last", resumable=True)
            if trainer.is_best:
                self.save(trainer, self.weights / "best", resumable=False)
        trainer.is_best = False
        barrier()

    def save(self, trainer: Trainer, folder: Path, resumable: bool) -> Path:
        """Write one checkpoint folder atomically (built beside it, then swapped in)."""
        tmp = staging_dir(folder)
        model = trainer.ema.module if trainer.ema is not None else trainer.model
        emb = trainer.vocab.embeddings_of(self.names)
        metrics = {k: v for k, v in trainer.metrics.items() if isinstance(v, (int, float))}
        save_checkpoint(
            tmp,
            model,
            self.names,
            emb,
            self.encoder_id,
            extra={"trained": {"epoch": trainer.state.epoch, "metrics": metrics}},
        )
        if resumable:
            tensors = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
            opt_tensors, opt_meta = optimizer_state(trainer.optimizer)
            tensors.update(opt_tensors)
            if trainer.vocab.prompts is not None:
                tensors["vocab.prompts"] = trainer.vocab.prompts.detach()
            if self.extra is not None:
                tensors.update(self.extra())
            tensors["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available():
                tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            meta = {
                "state": trainer.state.to_dict(),
                "config": to_dict(trainer.cfg),
                "optimizer": opt_meta,
                "scaler": trainer.scaler.state_dict(),
                "ema_updates": trainer.ema.updates if trainer.ema else 0,
                "accumulate": trainer.accumulate,
                "world_size": trainer.dist.world_size,
            }
            write_train_state(tmp, tensors, json.loads(json.dumps(meta)))
        return replace_dir(tmp, folder)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict split into tensors (``optim.<param>.<name>``) and JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Restore what :func:`optimizer_state` split (the optimizer must have the same groups)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def plot_results(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and mAP curves of a run to a PNG (no pyplot: an Agg canvas of its own)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(12, 4), dpi=100)
    FigureCanvasAgg(fig)
    panels = [
        ("train/box_loss", "box loss"),
        ("train/cls_loss", "cls loss"),
        ("train/dfl_loss", "dfl loss"),
        ("metrics/AP50", "AP50 (val)"),
        ("metrics/AP", "AP50-95 (val)"),
    ]
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        points = [
            (e, row.get(key))
            for e, row in zip(epochs, history)
            if isinstance(row.get(key), (int, float)) and math.isfinite(row.get(key))
        ]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, linewidth=1.5)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
