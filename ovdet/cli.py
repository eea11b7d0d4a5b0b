"""The ``ovdet`` command line: ``ovdet predict|embed|convert|check-data|val``.

Each sub-command is argparse → Detector → a summary; ``tools/*.py`` call :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ovdet.config import ConfigError


def _read_classes(spec: str) -> list[str]:
    """Class names from ``"a,b,c"`` or from a text file with one name per line."""
    path = Path(spec)
    if path.suffix in {".txt", ".names"} or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"class file not found: {path}")
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        return [n for n in names if n and not n.startswith("#")]
    return [n.strip() for n in spec.split(",") if n.strip()]


def load_detector(model: str, device: str = "auto"):
    """A Detector from an ovdet checkpoint directory, a model YAML (random init) or a pretrained name.

    A local directory wins over a pretrained name of the same spelling.
    """
    from ovdet.api import Detector
    from ovdet.weights import PRETRAINED

    path = Path(model)
    if path.is_dir():
        return Detector.load(path, device=device)
    if path.suffix in {".yaml", ".yml"}:
        return Detector.from_config(path, device=device)
    if path.suffix == ".pt":
        raise SystemExit(
            f"{path} is an ultralytics checkpoint (a pickle): convert it first with "
            f"`ovdet convert {path} <out_dir> --trust`, then pass --model <out_dir>"
        )
    if model in PRETRAINED:
        return Detector.from_pretrained(model, device=device)
    import difflib

    close = difflib.get_close_matches(model, list(PRETRAINED), n=1, cutoff=0.5)
    hint = f" (did you mean the pretrained model {close[0]!r}?)" if close else ""
    raise FileNotFoundError(
        f"--model must be an ovdet checkpoint directory, a model YAML or a pretrained name "
        f"({', '.join(PRETRAINED)}); got {model!r}{hint}"
    )


def _set_vocabulary(det, classes: str | None, embeddings: str | None) -> None:
    if embeddings:
        from ovdet.text import load_embeddings

        names, emb, _ = load_embeddings(embeddings)
        if classes:
            wanted = _read_classes(classes)
            missing = [n for n in wanted if n not in names]
            if missing:
                raise SystemExit(f"classes {missing} are not in {embeddings}")
            idx = [names.index(n) for n in wanted]
            names, emb = wanted, emb[idx]
        det.set_class_embeddings(names, emb)
    elif classes:
        det.set_classes(_read_classes(classes))
    elif not det.names:
        raise SystemExit("no vocabulary: pass --classes 'a,b,c' (or a .txt file) or --embeddings FILE")


def _unique(path: Path, used: set[Path]) -> Path:
    out, i = path, 1
    while out in used:
        out = path.with_name(f"{path.stem}_{i}{path.suffix}")
        i += 1
    used.add(out)
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ovdet.data.images import count_sources
    from ovdet.evaluation.predictions import write_predictions

    det = load_detector(args.model, args.device)
    _set_vocabulary(det, args.classes, args.embeddings)
    save_dir = Path(args.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    run = det.predict(
        args.source,
        conf=args.conf,
        iou=args.iou,
        imgsz=args.imgsz,
        max_det=args.max_det,
        agnostic_nms=args.agnostic_nms,
        batch=args.batch,
        precision=args.precision,
        stream=True,
        keep_images=not args.no_save_images,
        video_stride=args.video_stride,
    )
    per_class: Counter[str] = Counter()
    records, used = [], set()
    start = time.perf_counter()
    with tqdm(total=count_sources(args.source), unit="img", desc="predict", disable=args.quiet) as bar:
        for d in run:
            per_class.update(d.names[i] for i in d.labels.tolist())
            rec = d.to_dict()
            if not args.no_save_images:
                name, _, frame = Path(str(d.path)).name.partition(":frame")  # video frames: clip.mp4:frame12
                out = _unique(save_dir / (Path(name).stem + (f"_frame{frame}" if frame else "") + ".jpg"), used)
                d.save(out)
                rec["annotated"] = out.name
            records.append(rec)
            bar.update(1)
    elapsed = time.perf_counter() - start
    out_json = write_predictions(save_dir / "predictions.json", det.names, records, run.skipped)
    n = len(records)
    print(
        f"\n{n} images, {sum(per_class.values())} detections, {len(run.skipped)} skipped, "
        f"{n / elapsed if elapsed > 0 else 0:.1f} images/s ({det.device})"
    )
    for name in det.names:
        if per_class[name]:
            print(f"  {name:<30} {per_class[name]}")
    for _, r in run.skipped:
        print(f"  skipped: {r}")
    print(f"results: {out_json}" + ("" if args.no_save_images else f", annotated images in {save_dir}"))
    if n == 0:
        print("error: no image could be read", file=sys.stderr)
        return 1
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from ovdet.config import TextConfig, load_model_config
    from ovdet.text import EmbeddingCache, build_text_encoder, save_embeddings, validate_class_names

    text_cfg = load_model_config(args.model).text if args.model else TextConfig()
    if args.text_weights:
        text_cfg = TextConfig(
            model=text_cfg.model,
            pretrained=args.text_weights,
            templates=text_cfg.templates,
            custom=text_cfg.custom,
            seed=text_cfg.seed,
        )
    if args.template:
        text_cfg = TextConfig(
            model=text_cfg.model,
            pretrained=text_cfg.pretrained,
            templates=tuple(args.template),
            custom=text_cfg.custom,
            seed=text_cfg.seed,
        )
    names = validate_class_names(_read_classes(args.classes))
    encoder = build_text_encoder(text_cfg, device=args.device if args.device != "auto" else "cpu")
    emb = EmbeddingCache(None).get_or_encode(encoder, names, text_cfg.templates)
    save_embeddings(args.output, names, emb, encoder.id, text_cfg.templates)
    print(f"{len(names)} embeddings of dim {emb.shape[1]} from {encoder.id} -> {args.output}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ovdet.api import Detector
    from ovdet.config import ModelConfig
    from ovdet.weights import UntrustedCheckpointError

    try:
        det = Detector.from_ultralytics(args.checkpoint, trust=args.trust, device=args.device)
    except UntrustedCheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = det.save(args.out_dir)
    report, cfg = det.conversion_report, det.cfg
    total = len(report.loaded) + len(report.missing)
    scale = next((s for s in "nsmlx" if ModelConfig.scaled(cfg.version, s, cfg.text) == cfg), "custom")
    print(
        f"{args.checkpoint}: YOLO-World v{cfg.version} scale {scale}, "
        f"loaded {len(report.loaded)}/{total} tensors -> {out}"
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
    print(f"load it with Detector.load({str(out)!r}) or `ovdet predict --model {out} ...`")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from ovdet.data.readers import read_dataset

    ds = read_dataset(
        args.data,
        args.split,
        image_dir=args.image_dir,
        verify_images=args.verify_images,
        require_images=not args.annotations_only,
    )
    report = ds.report
    print(
        f"{args.data}"
        + (f" [{args.split}]" if Path(args.data).suffix.lower() in {".yaml", ".yml"} else "")
        + f": {len(ds.names)} classes, {len(ds.records)} usable images"
    )
    print(report.summary())
    if not ds.records:
        print("error: the dataset has no usable image", file=sys.stderr)
        return 1
    return 0


def cmd_val(args: argparse.Namespace) -> int:
    from ovdet.evaluation import build_evaluator, write_report

    if args.results:  # re-score saved results; no model involved
        evaluator = build_evaluator(
            args.data, lvis=args.lvis or args.fixed_ap, fixed_ap=args.fixed_ap, backend=args.backend, strict=args.strict
        )
        evaluator.process_results_file(args.results)
        metrics = evaluator.evaluate()
        write_report(metrics, args.save_dir, evaluator.precision, evaluator.names)
        return 0
    if not args.model:
        raise SystemExit("ovdet val needs --model (config, checkpoint or pretrained name) or --results FILE")
    det = load_detector(args.model, args.device)
    metrics = det.val(
        args.data,
        split=args.split,
        imgsz=args.imgsz,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        batch=args.batch,
        lvis=True if args.lvis else None,
        fixed_ap=args.fixed_ap,
        backend=args.backend,
        save_dir=args.save_dir,
        progress=not args.quiet,
    )
    print(f"{metrics['images']} images, {len(metrics['skipped'])} skipped, {metrics['images_per_s']:.1f} images/s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ovdet", description="Open-vocabulary object detection.")
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("predict", help="detect text-named classes in images, folders, globs or videos")
    pr.add_argument(
        "--model",
        required=True,
        help="ovdet checkpoint directory, model YAML (random init), or pretrained name "
        "(e.g. yolo-world-v2-s; downloaded and converted once)",
    )
    pr.add_argument("--classes", help="comma-separated names, or a .txt file with one name per line")
    pr.add_argument("--embeddings", help="precomputed embeddings from `ovdet embed` (no text encoder needed)")
    pr.add_argument("--source", required=True, help="image, directory, glob, or video file")
    pr.add_argument("--save-dir", default="runs/predict")
    pr.add_argument("--conf", type=float, default=0.25)
    pr.add_argument("--iou", type=float, default=0.7)
    pr.add_argument("--imgsz", type=int, default=640)
    pr.add_argument("--max-det", type=int, default=300)
    pr.add_argument("--batch", type=int, default=1)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    pr.add_argument("--agnostic-nms", action="store_true")
    pr.add_argument("--video-stride", type=int, default=1)
    pr.add_argument("--no-save-images", action="store_true", help="write only predictions.json")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_predict)

    em = sub.add_parser("embed", help="precompute class-name embeddings to a safetensors file")
    em.add_argument("--classes", required=True, help="comma-separated names or a .txt file")
    em.add_argument("-o", "--output", required=True, help="output .safetensors file")
    em.add_argument("--model", help="model YAML whose text encoder to use (default: open_clip ViT-B-32 openai)")
    em.add_argument("--text-weights", help="local open_clip checkpoint file (offline use)")
    em.add_argument("--template", action="append", help="prompt template with {} (repeatable; averaged)")
    em.add_argument("--device", default="auto")
    em.set_defaults(func=cmd_embed)

    cv = sub.add_parser("convert", help="convert an ultralytics YOLO-World/YOLOv8 .pt to ovdet's safe format")
    cv.add_argument("checkpoint", help="ultralytics .pt file (a pickle: read only with --trust)")
    cv.add_argument("out_dir", help="output directory (model.safetensors + config.json)")
    cv.add_argument(
        "--trust",
        action="store_true",
        help="allow unpickling the checkpoint, which can run code inside it; only for trusted files",
    )
    cv.add_argument("--device", default="cpu")
    cv.set_defaults(func=cmd_convert)

    cd = sub.add_parser("check-data", help="read a dataset and report counts, per-class boxes and problems")
    cd.add_argument("data", help="YOLO data .yaml, COCO/LVIS instances .json, or ODVG .jsonl")
    cd.add_argument("--split", default="train", help="split of a YOLO data yaml (default: train)")
    cd.add_argument("--image-dir", help="image folder of a .json/.jsonl (default: found next to the file)")
    cd.add_argument(
        "--verify-images",
        action="store_true",
        help="open and verify every image file (slower); unreadable ones are problems",
    )
    cd.add_argument(
        "--annotations-only",
        action="store_true",
        help=".json/.jsonl: check annotations without looking for images (e.g. image-less LVIS ground truth)",
    )
    cd.set_defaults(func=cmd_check_data)

    va = sub.add_parser("val", help="zero-shot COCO/LVIS box AP of a model, or of saved detections")
    va.add_argument("--model", help="model YAML, ovdet checkpoint directory or pretrained name to evaluate")
    va.add_argument(
        "--results",
        help="COCO results json (list of image_id/category_id/bbox xywh/score) or an "
        "`ovdet predict` predictions.json (matched by file name and class name)",
    )
    va.add_argument(
        "--data",
        required=True,
        help="ground truth: COCO or LVIS instances .json, or (with --model) an ultralytics data yaml",
    )
    va.add_argument("--split", default="val", help="data yaml split to evaluate (with --model)")
    va.add_argument("--imgsz", type=int, default=640)
    va.add_argument("--conf", type=float, default=0.001)
    va.add_argument("--iou", type=float, default=0.7)
    va.add_argument("--max-det", type=int, default=None, help="boxes per image (default 300; 1000 with --fixed-ap)")
    va.add_argument("--batch", type=int, default=8)
    va.add_argument("--device", default="auto")
    va.add_argument("--quiet", action="store_true", help="no progress bar")
    va.add_argument("--lvis", action="store_true", help="LVIS evaluation (lvis package): APr/APc/APf, 300 dets/image")
    va.add_argument(
        "--fixed-ap",
        action="store_true",
        help="LVIS Fixed AP (implies --lvis): no per-image cap, top 10,000 detections per class",
    )
    va.add_argument(
        "--backend",
        default="pycocotools",
        choices=["pycocotools", "faster_coco_eval"],
        help="COCO scoring backend (same numbers; faster_coco_eval needs pip install faster-coco-eval)",
    )
    va.add_argument(
        "--strict",
        action="store_true",
        help="fail on detections with unknown image/category ids or invalid boxes instead of dropping them",
    )
    va.add_argument(
        "--save-dir",
        default="runs/val",
        help="where metrics.json, pr_curve.png (and with --model results.json, samples/) are written",
    )
    va.set_defaults(func=cmd_val)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ovdet`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ConfigError, ValueError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
