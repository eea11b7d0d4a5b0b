"""``ovdet export``: ONNX with a baked or dynamic vocabulary, int8, fp16, TensorRT; checked against PyTorch."""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

HELP = "export for deployment: ONNX with baked or dynamic vocabulary, int8, fp16, TensorRT"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "export", HELP)
    opt.add_model(p)
    opt.add_vocabulary(
        p,
        classes_help="vocabulary to bake in (or, with --dynamic-vocab, the default one)",
        embeddings_help="vocabulary from `ovdet embed` instead of --classes",
    )
    p.add_argument(
        "-o", "--output", default="model.onnx", help="the .onnx file (text encoder etc. are written beside it)"
    )
    p.add_argument(
        "--format", default="onnx", choices=["onnx", "engine"], help="onnx, or engine (TensorRT, built from the ONNX)"
    )
    p.add_argument(
        "--dynamic-vocab",
        action="store_true",
        help="class embeddings are an input (any number at run time); the text encoder and tokenizer are exported too",
    )
    p.add_argument("--no-text-encoder", action="store_true", help="with --dynamic-vocab: export no text encoder")
    p.add_argument("--nms", action="store_true", help="NMS inside the graph (--conf/--iou/--max-det fixed at export)")
    opt.add_detection(
        p,
        conf_help="in-graph NMS score threshold; also the parity check's",
        iou_help="in-graph NMS IoU threshold",
        max_det_help="in-graph NMS boxes per image",
    )
    opt.add_imgsz(p, help="example input size (v1: the fixed input size)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument(
        "--half", action="store_true", help="float16 weights (for GPU runtimes); inputs/outputs stay float32"
    )
    p.add_argument("--int8", action="store_true", help="also write an int8 model (static quantization, needs --calib)")
    p.add_argument("--calib", help="folder of real images for int8 calibration (and the parity check)")
    p.add_argument("--calib-images", type=int, default=64, help="calibration images used")
    p.add_argument("--source", help="images (folder or file) for the parity check against PyTorch")
    p.add_argument("--check-images", type=int, default=16, help="images the parity check uses")
    opt.add_device(p, default="cpu", help="where the model is traced: cpu, cuda or cuda:N")
    opt.add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ovdet.config import ExportConfig
    from ovdet.data.images import iter_sources

    opt.check_device(args.device)
    if args.calib and not Path(args.calib).is_dir():
        raise UsageError(f"--calib {args.calib}: not a folder of images")
    if args.int8 and not args.calib:
        raise UsageError("--int8 needs --calib DIR: a folder of real images to calibrate on")
    opt.check_file("--embeddings", args.embeddings)
    if args.source and not Path(args.source).exists():
        raise UsageError(f"--source {args.source}: not found")
    cfg = opt.build(
        ExportConfig,
        dynamic_vocab=args.dynamic_vocab,
        text_encoder=not args.no_text_encoder,
        nms=args.nms,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        imgsz=args.imgsz,
        opset=args.opset,
        half=args.half,
        int8=args.int8,
        calib=args.calib,
        calib_images=args.calib_images,
    )
    classes = opt.read_classes(args.classes) if args.classes else None
    output = Path(args.output)
    if output.suffix != ".onnx":
        raise UsageError(f"--output {output}: the exported file must end in .onnx")
    opt.check_model_spec(args.model)

    det = opt.open_detector(args, classes, require_vocabulary=not args.dynamic_vocab)
    start = time.perf_counter()
    result = det.export(output, config=cfg)
    print(
        f"exported {args.model} (YOLO-World v{det.cfg.version}) with a {result.metadata['vocab']} vocabulary "
        f"({len(det.names)} classes) in {time.perf_counter() - start:.1f} s:"
    )
    for f in result.files:
        print(f"  {f}  ({f.stat().st_size / 2**20:.1f} MiB)")
    for title, entries in (("inputs", result.inputs), ("outputs", result.outputs)):
        print(f"  {title}: " + ", ".join(f"{n} {dims} {t}" for n, dims, t in entries))
    if "int8" in result.checks:
        r = result.checks["int8"]
        print(
            f"  int8 keeps {r['matched']}/{r['reference_boxes']} fp32 boxes ({100 * r['fraction']:.1f}%, score > "
            f"{r['min_score']}, IoU >= {r['iou']}, same label) on {r['images']} {result.checks['int8_images']} images"
        )
    for reason in result.checks.get("calib_skipped", []):
        print(f"  skipped calibration file: {reason}")
    if args.format == "engine":
        from ovdet.export.tensorrt import build_engine

        engine = build_engine(output, output.with_suffix(".engine"), cfg.imgsz, half=True)
        print(f"  TensorRT engine: {engine}")
    check_source = args.source or args.calib
    if det.names and check_source:
        from ovdet.deploy import OnnxDetector
        from ovdet.export.pipeline import check_against_pytorch

        readable = (it.image for it in iter_sources(check_source) if it.image is not None)
        images = list(itertools.islice(readable, args.check_images))  # decode only what the check uses
        onnx = OnnxDetector(output)
        if onnx.dynamic:
            onnx.set_class_embeddings(det.names, det.class_embeddings)
        report = check_against_pytorch(det.model, onnx, det.names, det.class_embeddings, images, cfg.imgsz, args.conf)
        print(f"parity with PyTorch: {report}")
        if report.fraction < 0.99:
            raise RuntimeError(f"the export does not reproduce PyTorch: {report}")
    else:
        print("parity check skipped: pass --source IMAGES (or --calib DIR) to compare with PyTorch on real images")
    return 0
