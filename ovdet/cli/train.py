"""``ovdet train``: fine-tune or train a detector on box data (resumable; torchrun for several GPUs/machines)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

HELP = "fine-tune or train a detector on box data (resumable; torchrun for several GPUs/machines)"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "train", HELP)
    opt.add_model(
        p,
        required=False,
        help="what to start from: model YAML (random init), ovdet checkpoint folder, pretrained name, or an "
        "ultralytics YOLO-World / YOLOv8 .pt (with --trust)",
    )
    p.add_argument(
        "--data",
        help="training data: data yaml (YOLO or format: voc), COCO/LVIS instances json, ODVG jsonl, or a Pascal VOC folder",
    )
    p.add_argument("--val-data", help="validation data (default: the data yaml's val split, none for json)")
    p.add_argument("--config", help="a training recipe YAML (TrainConfig fields, optional model:); flags win over it")
    p.add_argument("--epochs", type=int, default=None, help="passes over the data (default 100)")
    opt.add_imgsz(p, default=None, help="training image size, a multiple of 32 (default 640)")
    opt.add_batch(p, default=None, help="images per step per process (default 16)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes per training process (default 2)")
    opt.add_device(p, default=None, help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--mode",
        default=None,
        choices=["full", "freeze_backbone", "prompt_tuning", "linear_probe"],
        help="what trains (default full)",
    )
    p.add_argument("--optimizer", default=None, choices=["AdamW", "SGD"], help="optimizer (default AdamW)")
    p.add_argument("--lr0", type=float, default=None, help="initial learning rate (default 2e-3 AdamW, 1e-2 SGD)")
    p.add_argument(
        "--amp", default=None, choices=["auto", "off", "bf16", "fp16"], help="mixed precision (default auto)"
    )
    p.add_argument(
        "--keep-vocab",
        default=None,
        help="mix a general vocabulary (lvis, coco, objects365 or a .txt) into "
        "negative sampling, to keep the open vocabulary",
    )
    opt.add_vocabulary(
        p,
        classes_help=None,
        embeddings_help="text embeddings from `ovdet embed` covering the dataset's names (train offline without a "
        "text encoder)",
    )
    p.add_argument("--text-lr-mult", type=float, default=None, help="> 0 fine-tunes the text encoder at lr0 × this")
    p.add_argument("--cache", default=None, choices=["ram"], help="keep decoded images in memory")
    p.add_argument(
        "--buffer-mb",
        type=float,
        default=None,
        help="without --cache: MiB of recently decoded images each loader worker keeps (default 256; 0: none)",
    )
    p.add_argument("--project", default=None, help="runs folder (default runs/train)")
    p.add_argument("--name", default=None, help="run name (default exp; exp2, exp3… when taken)")
    p.add_argument("--seed", type=int, default=None, help="seed of initialisation order, sampling and augmentation")
    p.add_argument(
        "--deterministic", action="store_true", help="deterministic kernels: a resumed run equals an uninterrupted one"
    )
    p.add_argument("--resume", help="a run folder or its weights/last: continue it exactly (its saved settings apply)")
    p.add_argument("--trust", action="store_true", help="allow unpickling an ultralytics .pt given as --model")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any TrainConfig field, e.g. --set loss.cls=1.0 --set augment.mosaic=0 (repeatable)",
    )
    opt.add_quiet(p, help="no progress bars")
    opt.add_text_options(p)
    p.set_defaults(func=run)


def init_detector(model: str, device: str, trust: bool):
    """The detector a training run starts from: an ovdet checkpoint, a model YAML (random init),
    a pretrained name, or an ultralytics YOLO-World / YOLOv8 ``.pt`` (converted; needs ``trust``)."""
    from ovdet.api import Detector

    if Path(model).suffix == ".pt":
        if not Path(model).is_file():
            raise UsageError(f"--model {model}: checkpoint not found")
        from ovdet.weights import UntrustedCheckpointError

        try:
            det = Detector.from_ultralytics(model, trust=trust, device=device)
        except UntrustedCheckpointError as e:
            raise UsageError(f"{e} (ovdet train --trust)") from e
        report = det.conversion_report
        if report is not None and report.missing:
            print(
                f"initialised from {model}: {len(report.loaded)} tensors loaded, {len(report.missing)} left random "
                f"({', '.join(report.missing_modules()[:6])}{' ...' if len(report.missing_modules()) > 6 else ''})"
            )
        return det
    from ovdet.api import load_detector

    return load_detector(model, device)


#: The flags of ``ovdet train`` that set a TrainConfig field of the same name (``--set`` reaches the rest).
TRAIN_FLAGS = (
    "data",
    "val_data",
    "epochs",
    "imgsz",
    "batch",
    "workers",
    "device",
    "mode",
    "optimizer",
    "lr0",
    "amp",
    "project",
    "name",
    "seed",
    "cache",
    "buffer_mb",
    "keep_vocab",
    "text_lr_mult",
)


def run(args: argparse.Namespace) -> int:
    from ovdet.api import Detector
    from ovdet.config import load_recipe

    if args.resume:
        from ovdet.engine.state import load_run

        if not Path(args.resume).exists():
            raise UsageError(f"--resume {args.resume}: not found (give a run folder or its weights/last)")
        state = load_run(args.resume)  # read once; the run's saved settings apply
        det = Detector(state.checkpoint.model, device=state.config.device)
        result = det.train(resume=state, progress=not args.quiet)
    else:
        flags = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
        if args.deterministic:
            flags["deterministic"] = True
        recipe = opt.build(load_recipe, args.config, flags, args.set)
        cfg, model_spec = recipe.train, args.model or recipe.model
        if not model_spec:
            raise UsageError("ovdet train needs --model (a model YAML, checkpoint, pretrained name or .pt) or --resume")
        if not cfg.data:
            raise UsageError("ovdet train needs --data (a data yaml, instances json or ODVG jsonl)")
        opt.check_dataset("--data", cfg.data)
        opt.check_dataset("--val-data", cfg.val_data)
        opt.check_device(cfg.device)
        if Path(model_spec).suffix != ".pt":
            opt.check_model_spec(model_spec)
        opt.check_file("--embeddings", args.embeddings)

        det = init_detector(model_spec, cfg.device, args.trust)
        opt.apply_text_options(det, args)
        if args.embeddings:  # offline: the run's texts come from this file (names it lacks need the encoder)
            opt.set_vocabulary(det, None, args.embeddings, args.allow_other_encoder)
        result = det.train(cfg, progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    metrics = result["metrics"]
    summary = f"{result['epochs']} epochs done -> {result['run_dir']}"
    if metrics:
        summary += (
            f"; validation AP50 {metrics.get('AP50', float('nan')):.4f}, AP {metrics.get('AP', float('nan')):.4f}"
        )
    print(summary)
    print(f"weights: {result['last']}" + (f" (best: {result['best']})" if result["best"] else ""))
    return 0
