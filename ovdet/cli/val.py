"""``ovdet val``: zero-shot COCO/LVIS box AP of a model, or of saved detections; with ``--task
grounding``, phrase-grounding Recall@1/5/10 and precision@1 of a model (:mod:`ovdet.grounding.evaluate`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

if TYPE_CHECKING:
    from ovdet.config import EvalConfig

HELP = "zero-shot COCO/LVIS box AP of a model, or of saved detections; phrase-grounding recall (--task grounding)"
TASKS = ("detect", "grounding")


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "val", HELP)
    opt.add_model(p, help="model YAML, ovdet checkpoint folder or pretrained name to evaluate", required=False)
    p.add_argument(
        "--task",
        default="detect",
        choices=list(TASKS),
        help="detect: box AP with the dataset's class names; grounding: Flickr30k-style Recall@1/5/10 (ANY-BOX) "
        "and RefCOCO-style P@1 of the caption phrases of an ODVG .jsonl or MDETR-style .json (needs --model)",
    )
    p.add_argument(
        "--results",
        help="COCO results json (list of image_id/category_id/bbox xywh/score) or an `ovdet predict` "
        "predictions.json (matched by file name and class name)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="ground truth: COCO or LVIS instances .json, or (with --model) a data yaml, ODVG .jsonl or Pascal VOC "
        "folder; --task grounding: an ODVG .jsonl with grounding regions or an MDETR-style .json",
    )
    opt.add_image_dir(p)
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
        help="where metrics.json, pr_curve.png (and with --model results.json, samples/) go; --task grounding "
        "writes metrics.json",
    )
    opt.add_text_options(p)
    p.set_defaults(func=run)


def eval_config(args: argparse.Namespace, **task_fields: object) -> EvalConfig:
    """The :class:`~ovdet.config.EvalConfig` of a model evaluation: the options both tasks share
    (image size, detection thresholds, batch, image folder, output, progress) plus ``task_fields``."""
    from ovdet.config import EvalConfig

    return opt.build(
        EvalConfig,
        imgsz=args.imgsz,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        batch=args.batch,
        image_dir=args.image_dir,
        save_dir=args.save_dir,
        progress=not args.quiet,
        **task_fields,
    )


def run(args: argparse.Namespace) -> int:
    from ovdet.evaluation import build_evaluator, write_report

    opt.check_dataset("--data", args.data)
    if args.task == "grounding":
        return run_grounding(args)
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
    cfg = eval_config(
        args, split=args.split, lvis=True if args.lvis else None, fixed_ap=args.fixed_ap, backend=args.backend
    )
    opt.check_model_spec(args.model)
    det = opt.open_detector(args)
    metrics = det.val(args.data, config=cfg)
    print(f"{metrics['images']} images, {len(metrics['skipped'])} skipped, {metrics['images_per_s']:.1f} images/s")
    return 0


def run_grounding(args: argparse.Namespace) -> int:
    """``--task grounding``: read the ground truth (before the model loads), ground each image's
    phrases, print the summary, write ``metrics.json`` in ``--save-dir``."""
    from ovdet.grounding.evaluate import evaluate_grounding
    from ovdet.grounding.truth import read_grounding

    if args.results:
        raise UsageError("--results re-scores saved detections; --task grounding evaluates a --model")
    for flag, given in (("--lvis", args.lvis), ("--fixed-ap", args.fixed_ap), ("--strict", args.strict)):
        if given:
            raise UsageError(f"{flag} is a detection option; it does not apply to --task grounding")
    if not args.model:
        raise UsageError("ovdet val --task grounding needs --model (config, checkpoint or pretrained name)")
    opt.check_file("--data", args.data, "grounding ground truth is a file: an ODVG .jsonl or an MDETR-style .json")
    opt.check_device(args.device)
    cfg = eval_config(args)
    opt.check_model_spec(args.model)
    truth = read_grounding(args.data, args.image_dir)
    det = opt.open_detector(args)
    metrics = evaluate_grounding(det, truth, cfg)
    print(f"{metrics['images']} images, {len(metrics['skipped'])} skipped, {metrics['images_per_s']:.1f} images/s")
    return 0
