"""``ovdet convert``: an ultralytics YOLO-World / YOLOv8 ``.pt``, or a YOLOv8 ONNX export, to ovdet's safe format."""

from __future__ import annotations

import argparse
from pathlib import Path

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

HELP = "convert an ultralytics YOLO-World/YOLOv8 .pt, or a YOLOv8 .onnx export, to ovdet's safe format"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "convert", HELP)
    p.add_argument(
        "checkpoint",
        help="ultralytics .pt file (a pickle: read only with --trust), or a YOLOv8 .onnx export (read as data)",
    )
    p.add_argument("out_dir", help="output folder (model.safetensors + config.json)")
    p.add_argument(
        "--trust",
        action="store_true",
        help="allow unpickling a .pt checkpoint, which can run code inside it; only for trusted files",
    )
    opt.add_vocabulary(
        p,
        classes_help=None,
        embeddings_help="for a plain YOLOv8 (.pt or .onnx): an `ovdet embed` file (CLIP ViT-B/32, the result's text "
        "space) holding its class names; the YOLOv8 classifier is carried over exactly and they become the vocabulary",
    )
    opt.add_device(p, default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def _table(path: str | None, allow_other_encoder: bool) -> tuple[list[str], object] | None:
    """(names, embeddings) of an ``ovdet embed`` file in the converted model's text space, or None without one."""
    if path is None:
        return None
    from ovdet.config import TextConfig
    from ovdet.text import load_embeddings, text_encoder_id

    if not Path(path).is_file():
        raise UsageError(f"--embeddings: file not found: {path}")
    try:
        names, emb, _ = load_embeddings(path, text_encoder_id(TextConfig()), allow_other_encoder)
    except ValueError as e:
        raise UsageError(f"--embeddings {e}") from e
    return names, emb


def run(args: argparse.Namespace) -> int:
    from ovdet.api import Detector
    from ovdet.config import ModelConfig
    from ovdet.weights import UntrustedCheckpointError

    opt.check_device(args.device)
    if not Path(args.checkpoint).is_file():
        raise UsageError(f"checkpoint not found: {args.checkpoint}")
    try:
        table = _table(args.embeddings, args.allow_other_encoder)
        if Path(args.checkpoint).suffix.lower() == ".onnx":
            det = Detector.from_onnx(args.checkpoint, device=args.device, class_embeddings=table)
        else:
            det = Detector.from_ultralytics(
                args.checkpoint, trust=args.trust, device=args.device, class_embeddings=table
            )
    except UntrustedCheckpointError as e:
        raise UsageError(str(e)) from e
    out = det.save(args.out_dir)
    report, cfg = det.conversion_report, det.cfg
    total = len(report.loaded) + len(report.missing)
    scale = next((s for s in "nsmlx" if ModelConfig.scaled(cfg.version, s, cfg.text) == cfg), "custom")
    print(
        f"{args.checkpoint}: YOLO-World v{cfg.version} scale {scale}, "
        f"loaded {len(report.loaded)}/{total} tensors -> {out}"
    )
    if report.adapted:
        print(
            f"adapted from the checkpoint ({len(report.adapted)} tensors: zero-padded neck projections, solved classifier)"
        )
    if report.missing:
        print(f"left at random initialisation ({len(report.missing)} tensors; train before use):")
        everything = report.loaded + report.missing
        for mod in report.missing_modules():
            n_missing = sum(k.startswith(mod + ".") for k in report.missing)
            n_all = sum(k.startswith(mod + ".") for k in everything)
            print(f"  {mod:<24} {n_missing}/{n_all} tensors" + ("" if n_missing < n_all else " (all)"))
    if report.unused:
        print(f"checkpoint tensors with no counterpart (dropped): {len(report.unused)}")
    if det.names:
        shown = ", ".join(det.names[:8]) + (" ..." if len(det.names) > 8 else "")
        print(f"vocabulary kept from the checkpoint: {len(det.names)} classes ({shown})")
    print(f"load it with Detector.load({str(out)!r}) or `ovdet predict --model {out} ...`")
    return 0
