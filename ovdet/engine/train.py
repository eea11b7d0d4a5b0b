"""A training run from a :class:`~ovdet.config.TrainConfig`: data, vocabulary, fine-tune mode,
optimizer, hooks, resume — everything :class:`~ovdet.engine.trainer.Trainer` needs, built in
named steps. ``Detector.train`` and ``ovdet train`` call :func:`train`.

Outputs in ``<project>/<name>/``: ``results.csv``, TensorBoard events, ``results.png``,
``weights/last/`` (resumable) and ``weights/best/`` (ovdet checkpoints of the EMA weights),
``val/`` (the final validation's metrics.json, PR curve and samples), ``args.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ovdet.config import EvalConfig, TrainConfig, to_dict
from ovdet.data.loader import DetectionDataset, build_loader
from ovdet.data.readers import load_data_yaml, read_dataset, read_yaml_split
from ovdet.data.readers.voc import find_layout, is_voc_dir
from ovdet.data.records import Dataset
from ovdet.device import resolve_device
from ovdet.engine.distributed import DistInfo, barrier, cleanup_distributed, init_distributed
from ovdet.engine.hooks import CheckpointHook, EMAHook, LoggerHook, ScheduleHook, ValidationHook, load_optimizer_state
from ovdet.engine.optim import ModelEMA, Schedule, build_optimizer
from ovdet.engine.state import RunState, load_run
from ovdet.engine.trainer import Hook, Trainer, TrainState
from ovdet.engine.vocab import TrainingVocabulary
from ovdet.inference.validate import ValidationSet, read_validation_set, validate
from ovdet.io import atomic_write_text
from ovdet.models.detector import OVDetector
from ovdet.text.vocabulary import parse_class_spec, select_embeddings

__all__ = ["TrainResult", "TrainingData", "read_training_data", "train"]

#: Data problems printed when a run starts (all of them: ``ovdet check-data``).
SHOWN_PROBLEMS = 10


@dataclass
class TrainResult:
    """What a run leaves.

    Attributes:
        run_dir: the run folder.
        last: ``weights/last`` (resumable checkpoint of the final EMA weights).
        best: ``weights/best`` (the best validation), or None without validation.
        metrics: the final validation's metrics, of the final EMA weights (empty without validation data).
        names: the dataset's class names (the trained vocabulary).
        embeddings: (K, D) their embeddings as trained (prompts when prompt tuning).
        state: the final :class:`~ovdet.engine.trainer.TrainState`.
        vocab_report: scores on names outside the training set before and after (``keep_vocab``), or None.
        encoder_id: where ``embeddings`` come from (``prompt-tuned:<encoder>`` after prompt tuning).
    """

    run_dir: Path
    last: Path
    best: Path | None
    metrics: dict[str, Any]
    names: list[str]
    embeddings: torch.Tensor
    state: TrainState
    vocab_report: dict[str, Any] | None = None
    encoder_id: str = "precomputed"


@dataclass(frozen=True)
class TrainingData:
    """A run's data, read once (:func:`read_training_data`) and handed to every step that needs it.

    Attributes:
        train: the training set (checked: images, boxes, readable files).
        val_source: where validation reads from, ``(spec, split)``, or None without validation.
        val: the validation set read once, or None (no validation, or not read on this process:
            only rank 0 validates).
    """

    train: Dataset
    val_source: tuple[str, str] | None
    val: ValidationSet | None


def train(
    model: OVDetector,
    cfg: TrainConfig,
    embed: Callable[[Sequence[str]], torch.Tensor],
    *,
    encoder_id: str = "precomputed",
    text_encoder: Any = None,
    resume: str | Path | RunState | None = None,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
) -> TrainResult:
    """Train ``model`` (in place) as ``cfg`` says; resumable, data-parallel under torchrun.

    Args:
        model: the network to train (its weights are the initialisation).
        cfg: the run (ignored when resuming: the saved run's config continues).
        embed: K texts → (K, D) unit-norm embeddings (the frozen text encoder through its cache;
            with ``progress``, a large vocabulary is first embedded chunk by chunk to fill that
            cache, then asked for as a whole, which must then be cheap).
        encoder_id: the id of that encoder (stored with the saved embeddings).
        text_encoder: the encoder itself, needed only to fine-tune it (``cfg.text_lr_mult > 0``).
        resume: a run folder or its ``weights/last``, or that run already read
            (:func:`~ovdet.engine.state.load_run`, then not read again): continue that run
            exactly where it stopped.
        progress: show progress bars.
        hooks: more :class:`~ovdet.engine.trainer.Hook` objects, called after the built-in ones.

    Raises:
        ValueError: unusable data (no image, no labelled image, every image unreadable), or a
            config that cannot work (named).
        RuntimeError: too many non-finite losses, or CUDA out of memory (with the batch size).
    """
    saved = resume if isinstance(resume, RunState) or resume is None else load_run(resume)
    if saved is not None:
        cfg = saved.config
    with _deterministic(cfg.deterministic):
        dist = init_distributed(resolve_device(cfg.device))
        try:
            if saved is not None:
                run_dir = saved.run_dir
            else:
                run_dir = _new_run_dir(Path(cfg.project), cfg.name) if dist.is_main else Path(cfg.project) / cfg.name
            return _run(
                model,
                cfg,
                embed,
                encoder_id,
                text_encoder,
                dist,
                run_dir,
                saved,
                progress,
                hooks,
            )
        except torch.cuda.OutOfMemoryError as e:
            raise RuntimeError(
                f"CUDA out of memory training with batch={cfg.batch} at imgsz={cfg.imgsz} on {dist.device}: lower "
                f"the batch (e.g. --batch {max(cfg.batch // 2, 1)}; gradients still accumulate to nbs={cfg.nbs}) or "
                f"the image size, or use --amp bf16"
            ) from e
        finally:
            cleanup_distributed()


def _run(
    model: OVDetector,
    cfg: TrainConfig,
    embed: Callable[[Sequence[str]], torch.Tensor],
    encoder_id: str,
    text_encoder: Any,
    dist: DistInfo,
    run_dir: Path,
    saved: RunState | None,
    progress: bool,
    user_hooks: Sequence[Hook],
) -> TrainResult:
    _seed(cfg.seed + dist.rank)
    data = read_training_data(cfg, read_val=dist.is_main)
    train_data = data.train
    names = list(train_data.names)
    extra = list(dict.fromkeys(parse_class_spec(cfg.keep_vocab, inline=False))) if cfg.keep_vocab else []
    if cfg.mode == "prompt_tuning" and extra:
        raise ValueError(
            "keep_vocab mixes extra negatives into text sampling; prompt tuning trains only the "
            "dataset's class embeddings against each other: use one or the other"
        )
    fine_tune_text = cfg.text_lr_mult > 0
    if fine_tune_text and not hasattr(text_encoder, "encode_trainable"):
        raise ValueError(
            "text_lr_mult > 0 fine-tunes the text encoder, which needs its weights (an open_clip "
            "encoder); set text_lr_mult: 0 to keep it frozen"
        )

    # The model on its device, in its fine-tune mode.
    model.to(dist.device)
    trainable, frozen = _apply_mode(model, cfg.mode)
    texts = names + [t for r in train_data.records for t in r.texts] + extra
    vocab = TrainingVocabulary(
        texts,
        lambda t: embed(t).to(dist.device),
        learnable=names if cfg.mode == "prompt_tuning" else (),
        encoder=text_encoder if fine_tune_text else None,
        progress=progress and dist.is_main,
    ).to(dist.device)
    if vocab.dim != model.cfg.embed_dim:
        raise ValueError(f"the text encoder gives {vocab.dim}-d embeddings but the model reads {model.cfg.embed_dim}-d")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lr_mults: dict[int, float] = {}
    if vocab.prompts is not None:
        named.append(("prompts", vocab.prompts))
    if fine_tune_text:
        text_encoder.module.requires_grad_(True).train()
        for n, p in text_encoder.module.named_parameters():
            named.append((f"text.{n}", p))
            lr_mults[id(p)] = cfg.text_lr_mult
    net: nn.Module = model
    manual_sync = [p for n, p in named if n == "prompts" or n.startswith("text.")]  # outside DDP's model
    if dist.distributed:
        if cfg.sync_bn:
            if dist.device.type != "cuda":
                raise ValueError("sync_bn needs GPUs (PyTorch's SyncBatchNorm has no CPU implementation)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # converted in place: the same module
        if any(p.requires_grad for p in model.parameters()):  # prompt tuning trains nothing inside the model
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
            )

    # Data.
    dataset = DetectionDataset(
        train_data,
        imgsz=cfg.imgsz,
        train=True,
        augment=cfg.augment,
        max_texts=len(names) if cfg.mode == "prompt_tuning" else cfg.max_texts,
        seed=cfg.seed,
        cache=cfg.cache,
        extra_negatives=extra,
        buffer_mb=cfg.buffer_mb,
    )
    if cfg.cache == "ram":
        dataset.fill_cache()
    loader = build_loader(
        dataset,
        cfg.batch,
        workers=cfg.workers,
        shuffle=True,
        seed=cfg.seed,
        distributed=dist.distributed,
        drop_last=dist.distributed,
    )
    accumulate = max(round(cfg.nbs / (cfg.batch * dist.world_size)), 1)
    updates_per_epoch = max(len(loader) // accumulate, 1)

    # Optimisation.
    optimizer = build_optimizer(named, cfg, accumulate, dist.world_size, lr_mults)
    schedule = Schedule.for_run(cfg, updates_per_epoch)
    amp_dtype = _amp_dtype(cfg.amp, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=amp_dtype == torch.float16)
    frozen_names = [
        f"{prefix}.{n}" if prefix else n
        for prefix, module in _named_modules(model, frozen)
        for n, _ in [*module.named_parameters(), *module.named_buffers()]
    ]
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau, frozen=frozen_names) if cfg.ema else None
    state = TrainState()
    if saved is not None:
        state = _restore(saved, model, ema, optimizer, scaler, vocab, text_encoder)

    # Hooks and the run. Only rank 0 validates (ValidationHook), on the set read once.
    eval_cfg = EvalConfig(imgsz=cfg.imgsz, batch=max(cfg.batch, 1), progress=False, samples=0)
    validate_fn = _validator(data, vocab, embed, eval_cfg, dist.device) if data.val_source else None
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "args.json", json.dumps(to_dict(cfg), indent=1))
    report_before = _vocab_scores(model, data.val, names, extra, embed, cfg, dist) if dist.is_main else None
    hooks = [ScheduleHook(schedule)]
    if ema is not None:
        hooks.append(EMAHook(ema))
    if validate_fn is not None:
        hooks.append(ValidationHook(validate_fn, cfg.val_interval))
    extra_tensors = (
        (lambda: {f"text.{k}": v for k, v in text_encoder.module.state_dict().items()}) if fine_tune_text else None
    )
    saved_id = f"prompt-tuned:{encoder_id}" if cfg.mode == "prompt_tuning" else encoder_id
    hooks += [LoggerHook(run_dir, progress), CheckpointHook(run_dir, names, saved_id, extra_tensors), *user_hooks]
    trainer = Trainer(
        model,
        net,
        vocab,
        loader,
        optimizer,
        cfg,
        dist,
        ema,
        scaler,
        amp_dtype,
        accumulate,
        hooks,
        state,
        frozen,
        manual_sync,
    )
    if dist.is_main:
        _announce(cfg, train_data, data.val_source, dist, accumulate, trainable, run_dir, saved is not None)
    state = trainer.train()

    # The end: final weights into ``model``, a full validation with pictures, the summary. The
    # validation scores the weights the caller is left holding (and ``weights/last`` stores), so
    # its numbers describe that model; ``weights/best`` is the epoch picked on the validation set
    # (picking on it biases its own numbers upward, so it is offered, not substituted).
    final = ema.module if ema is not None else model
    if final is not model:
        model.load_state_dict(final.state_dict())
    metrics: dict[str, Any] = {}
    best = run_dir / "weights" / "best"
    if dist.is_main and data.val is not None:
        metrics = validate(
            final,
            data.val,
            _embed_for(vocab, embed),
            dataclasses.replace(eval_cfg, save_dir=str(run_dir / "val"), samples=4),
            dist.device,
        )
    report = None
    if dist.is_main and report_before is not None:
        report = {**report_before, "after": _vocab_scores(model, data.val, names, extra, embed, cfg, dist)["before"]}
        _print_vocab_report(report)
    barrier()
    if fine_tune_text and dist.is_main:
        from safetensors.torch import save_file

        state_dict = {k: v.detach().contiguous().cpu() for k, v in text_encoder.module.state_dict().items()}
        save_file(state_dict, str(run_dir / "weights" / "text_tower.safetensors"))
    return TrainResult(
        run_dir=run_dir,
        last=run_dir / "weights" / "last",
        best=best if best.is_dir() else None,
        metrics=metrics,
        names=names,
        embeddings=vocab.embeddings_of(names),
        state=state,
        vocab_report=report,
        encoder_id=saved_id,
    )


# ------------------------------------------------------------------------------------------------ steps
def read_training_data(cfg: TrainConfig, *, read_val: bool = True) -> TrainingData:
    """The run's data, each file read once: the training set (checked) and the validation set.

    A data yaml is parsed once for both of its splits. Validation reads ``cfg.val_data`` (its
    ``val`` split when a yaml), else the data yaml's ``val`` split when it has one (or a Pascal
    VOC folder's ``val`` split file), else nothing: the run then trains without validation and says
    so. Validation images that are also training images (the same file) are warned about.

    The readers check the vocabulary first (repeated or empty class names, too many classes:
    :func:`~ovdet.data.readers.check_vocabulary`), so a run that could not save its checkpoint
    stops here, before its folder exists; unreadable, truncated or escaping images are skipped
    and listed in ``train.report``.

    Args:
        cfg: the run.
        read_val: read the validation set (False: only say where it is; ranks other than 0 never validate).

    Raises:
        ValueError: an unusable vocabulary, no usable image (every one unreadable, say) or no
            labelled image (named), or a validation set without a usable image.
    """
    is_yaml = str(cfg.data).endswith((".yaml", ".yml"))
    content = load_data_yaml(cfg.data) if is_yaml else None
    if content is not None:
        data = read_yaml_split(cfg.data, "train", content)
    else:  # every image's header and end are read, as a yaml's are: truncated files are skipped here
        data = read_dataset(cfg.data, split="train", probe_images=True)
    where = f"{cfg.data}" + (" [train]" if is_yaml else "")
    if not data.records:
        raise ValueError(f"{where}: no usable image to train on\n{data.report.summary()}")
    if data.report.labelled == 0:
        raise ValueError(
            f"{where}: none of its {len(data.records)} images has a box: nothing to learn "
            f"(run `ovdet check-data {cfg.data}`)"
        )
    if cfg.val_data:
        source = (cfg.val_data, "val")
        val = read_validation_set(cfg.val_data, "val") if read_val else None
    elif content is not None and content.get("val"):
        source = (cfg.data, "val")
        val = (
            read_validation_set(read_yaml_split(cfg.data, "val", content), name=f"{cfg.data} [val]")
            if read_val
            else None
        )
    elif is_voc_dir(cfg.data) and "val" in find_layout(cfg.data).split_files:
        source = (cfg.data, "val")  # a VOC folder's own val split, as a data yaml's
        val = read_validation_set(cfg.data, "val", name=f"{cfg.data} [val]") if read_val else None
    else:
        return TrainingData(data, None, None)
    if val is not None:
        _warn_shared_images(data, val, where, val.source)
    return TrainingData(data, source, val)


def _warn_shared_images(train: Dataset, val: ValidationSet, train_name: str, val_name: str) -> None:
    """Warn when validation images are also training images (the same file, by its real path):
    the run still trains, but its validation scores measure memory, not generalisation."""
    seen = {os.path.realpath(r.path) for r in train.records}
    shared = [r.path for r in val.dataset.records if os.path.realpath(r.path) in seen]
    if shared:
        warnings.warn(
            f"{len(shared)} of the {len(val.dataset.records)} validation images ({val_name}) are also training "
            f"images ({train_name}), e.g. {shared[0]}: validation scores will be optimistic; "
            "give a validation set of other images for a fair score",
            stacklevel=3,
        )


def _apply_mode(model: OVDetector, mode: str) -> tuple[int, list[nn.Module]]:
    """Freeze what the fine-tune mode keeps fixed; returns (trainable parameter count, frozen modules).

    Frozen modules run in eval mode while training, so their BatchNorm statistics stay as they were.
    """
    model.requires_grad_(True)
    frozen: list[nn.Module] = []
    if mode == "freeze_backbone":
        frozen = [model.backbone]
    elif mode == "prompt_tuning":
        frozen = [model]
    elif mode == "linear_probe":
        frozen = [model.backbone, model.neck, model.head.box_branches]
    for module in frozen:
        module.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad), frozen


def _named_modules(model: nn.Module, modules: Sequence[nn.Module]) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of each of ``modules`` inside ``model``."""
    names = {id(m): n for n, m in model.named_modules()}
    return [(names[id(m)], m) for m in modules]


def _restore(
    saved: RunState,
    model: OVDetector,
    ema: ModelEMA | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    vocab: TrainingVocabulary,
    text_encoder: Any,
) -> TrainState:
    """Put a saved run back exactly: live weights, EMA, optimizer, scaler, prompts, RNG, counters.

    The EMA weights are copied first: ``model`` may be the saved checkpoint's own network (a
    detector built from the :class:`~ovdet.engine.state.RunState`), which then receives the live weights.
    """
    device = next(model.parameters()).device
    tensors, meta = saved.tensors, saved.meta
    if ema is not None:  # the checkpoint's model files hold the EMA weights
        ema.module.load_state_dict(saved.checkpoint.model.state_dict())
        ema.updates = int(meta.get("ema_updates", 0))
    live = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(live)
    load_optimizer_state(
        optimizer, {k: v.to(device) for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"]
    )
    scaler.load_state_dict(meta["scaler"])
    if vocab.prompts is not None and "vocab.prompts" in tensors:
        with torch.no_grad():
            vocab.prompts.copy_(tensors["vocab.prompts"])
    text = {k[len("text.") :]: v for k, v in tensors.items() if k.startswith("text.")}
    if text and text_encoder is not None:
        text_encoder.module.load_state_dict(text)
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    return TrainState(**meta["state"])


def _validator(
    data: TrainingData,
    vocab: TrainingVocabulary,
    embed: Callable[[Sequence[str]], torch.Tensor],
    eval_cfg: EvalConfig,
    device: torch.device,
) -> Callable[[nn.Module], dict[str, Any]]:
    """The periodic validation: model → metrics on the validation set read once (rank 0 only)."""

    def run(model: nn.Module) -> dict[str, Any]:
        if data.val is None:
            raise RuntimeError("the validation set is read by rank 0 only, which alone validates")
        return validate(model, data.val, _embed_for(vocab, embed), eval_cfg, device)

    return run


def _embed_for(
    vocab: TrainingVocabulary, embed: Callable[[Sequence[str]], torch.Tensor]
) -> Callable[[Sequence[str]], torch.Tensor]:
    """Validation's text function: the run's own (possibly learned) embeddings where it has them."""

    def run(names: Sequence[str]) -> torch.Tensor:
        if vocab.encoder is not None:  # the text encoder trains: no row of the table is a constant
            return embed(list(names))
        with torch.no_grad():
            return select_embeddings(names, embed, vocab.texts, vocab.table().detach().cpu())

    return run


def _vocab_scores(
    model: OVDetector,
    val: ValidationSet | None,
    names: list[str],
    extra: list[str],
    embed: Callable[[Sequence[str]], torch.Tensor],
    cfg: TrainConfig,
    dist: DistInfo,
) -> dict[str, Any] | None:
    """How strongly the model responds to names outside the training set, on validation images.

    For up to 200 ``keep_vocab`` names not among the dataset's, the mean over images of the best
    score any of them reaches, and the share of images where one passes 0.25.
    """
    if not extra or val is None:
        return None
    from ovdet.config import NMSConfig
    from ovdet.inference.predict import PredictionStream, Predictor

    outside = [n for n in extra if n not in set(names)][:200]
    paths = [str(r.path) for r in val.dataset.records[:64]]
    emb = embed(outside).to(dist.device, torch.float32)
    run = PredictionStream(
        Predictor(model, outside, emb, NMSConfig(conf=0.0, iou=0.7, max_det=1), cfg.imgsz),
        paths,
        batch=8,
        keep_images=False,
    )
    tops = [float(d.scores.max()) if len(d) else 0.0 for d in run]
    return {
        "outside_names": len(outside),
        "images": len(tops),
        "before": {
            "mean_top_score": float(np.mean(tops)) if tops else 0.0,
            "share_over_0.25": float(np.mean([t > 0.25 for t in tops])) if tops else 0.0,
        },
    }


def _print_vocab_report(report: dict[str, Any]) -> None:
    b, a = report["before"], report["after"]
    print(
        f"open vocabulary ({report['outside_names']} names outside the training set, {report['images']} val images): "
        f"mean top score {b['mean_top_score']:.4f} → {a['mean_top_score']:.4f}, images over 0.25 "
        f"{b['share_over_0.25']:.1%} → {a['share_over_0.25']:.1%}"
    )


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if device.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' or 'off' on CPU")
    return torch.float16


def _new_run_dir(project: Path, name: str) -> Path:
    """``project/name``, or ``name2``, ``name3``… when taken (never an existing folder)."""
    out, i = project / name, 2
    while out.exists():
        out, i = project / f"{name}{i}", i + 1
    return out


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def _deterministic(on: bool):
    """Deterministic kernels for the run only (the setting is restored afterwards)."""
    before = torch.are_deterministic_algorithms_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    if on:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def _announce(
    cfg: TrainConfig,
    data: Dataset,
    val_source: Any,
    dist: DistInfo,
    accumulate: int,
    trainable: int,
    run_dir: Path,
    resumed: bool,
) -> None:
    print(
        f"{'resuming' if resumed else 'training'} {cfg.mode} on {cfg.data}: {len(data.records)} images "
        f"({data.report.boxes} boxes, {len(data.names)} classes), {cfg.epochs} epochs at {cfg.imgsz}px, batch "
        f"{cfg.batch}×{dist.world_size} process(es)×{accumulate} accumulated, {trainable:,} trainable parameters, "
        f"device {dist.device}, validation: {val_source[0] if val_source else 'none (no val split: pass val_data)'} → {run_dir}"
    )
    n = len(data.report.problems)
    if n:
        print(f"{n} data problem(s) in {cfg.data}: items skipped or changed (`ovdet check-data` lists them all)")
        print("\n".join(data.report.problem_lines(limit=SHOWN_PROBLEMS)))
