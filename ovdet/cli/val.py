"""``ovdet val``: zero-shot COCO/LVIS box AP of a model, or of saved detections."""

from __future__ import annotations

import argparse

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

HELP = "zero-shot COCO/LVIS box AP of a model, or of saved detections"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "val", HELP)
    opt.add_model(p, help="model YAML, ovdet checkpoint folder or pretrained name to evaluate", required=False)
    p.add_argument(
        "--results",
        help="COCO results json (list of image_id/category_id/bbox xywh/score) or an `ovdet predict` "
        "predictions.json (matched by file name and class name)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="ground truth: COCO or LVIS instances .json, or (with --model) a data yaml or Pascal VOC folder",
    )
    p.add_argument("--split", default="val", help="data yaml split to evaluate (with --model)")
    opt.add_imgsz(p)
    opt.add_detection(
        p,
        conf=0.001,
        conf_help="minimum score kept",
        iou_help="NMS IoU threshold",
        max_det=None,
        max_det_help="boxes per image (default 300; 1000 with --fixed-ap)",
    )
    opt.add_batch(p, default=8)
    opt.add_device(p)
    opt.add_quiet(p)
    p.add_argument("--lvis", action="store_true", help="LVIS evaluation (lvis package): APr/APc/APf, 300 dets/image")
    p.add_argument(
        "--fixed-ap",
        action="store_true",
        help="LVIS Fixed AP (implies --lvis): no per-image cap, top 10,000 detections per class",
    )
    p.add_argument(
        "--backend",
        default="pycocotools",
        choices=["pycocotools", "faster_coco_eval"],
        help="COCO scoring backend (same numbers; faster_coco_eval needs pip install faster-coco-eval)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail on detections with unknown image/category ids or invalid boxes instead of dropping them",
    )
    p.add_argument(
        "--save-dir",
        default="runs/val",
        help="where metrics.json, pr_curve.png (and with --model results.json, samples/) go",
    )
    opt.add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ovdet.config import EvalConfig
    from ovdet.evaluation import build_evaluator, write_report

    opt.check_dataset("--data", args.data)
    if args.results:  # re-score saved results; no model involved
        opt.check_file("--data", args.data, "re-scoring results needs a ground-truth json file")
        opt.check_file("--results", args.results)
        try:
            evaluator = build_evaluator(
                args.data,
                lvis=args.lvis or args.fixed_ap,
                fixed_ap=args.fixed_ap,
                backend=args.backend,
                strict=args.strict,
            )
        except ValueError as e:  # e.g. --lvis with COCO ground truth: the flags do not fit the data
            raise UsageError(str(e)) from e
        evaluator.process_results_file(args.results)
        metrics = evaluator.evaluate()
        write_report(metrics, args.save_dir, evaluator.precision, evaluator.names)
        return 0
    if not args.model:
        raise UsageError("ovdet val needs --model (config, checkpoint or pretrained name) or --results FILE")
    opt.check_device(args.device)
    cfg = opt.build(
        EvalConfig,
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
    opt.check_model_spec(args.model)
    det = opt.open_detector(args)
    metrics = det.val(args.data, config=cfg)
    print(f"{metrics['images']} images, {len(metrics['skipped'])} skipped, {metrics['images_per_s']:.1f} images/s")
    return 0
