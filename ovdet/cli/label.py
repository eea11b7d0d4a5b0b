"""``ovdet label``: auto-label a folder of images from text prompts into a YOLO or COCO dataset."""

from __future__ import annotations

import argparse

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

HELP = "auto-label a folder of images from text prompts into a YOLO or COCO dataset"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "label", HELP)
    opt.add_model(p)
    opt.add_vocabulary(
        p,
        classes_help="prompts, comma-separated ('hard hat,person wearing a hard hat=worker': prompt=dataset name), "
        "a built-in vocabulary or a .txt file",
        embeddings_help=None,
        required=True,
    )
    p.add_argument("--source", required=True, help="image file, folder or glob")
    p.add_argument("--out", required=True, help="dataset folder (rerun with the same one to resume)")
    p.add_argument("--format", default="yolo", choices=["yolo", "coco"], help="dataset layout")
    opt.add_detection(
        p,
        conf=0.3,
        conf_help="minimum score of a kept box",
        iou_help="NMS IoU threshold",
        max_det_help="boxes per image at most",
    )
    opt.add_imgsz(p, help="letterbox size (a multiple of 32)")
    opt.add_batch(p)
    p.add_argument("--val-split", type=float, default=0.1, help="share of images in the val split")
    p.add_argument("--copy", action="store_true", help="copy images instead of symlinking them")
    p.add_argument("--sheet", type=int, default=16, help="images in contact_sheet.png (0: none)")
    opt.add_device(p)
    opt.add_quiet(p)
    opt.add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ovdet.datatools import DatasetWriter, list_images, parse_class_map

    options = opt.predict_config(args)
    try:
        classes = parse_class_map(opt.read_classes(args.classes))
        files = list_images(args.source)
        writer = DatasetWriter(args.out, classes, args.format, args.val_split, args.copy, args.sheet)
    except FileNotFoundError as e:
        raise UsageError(f"--source: {e}") from e
    except ValueError as e:
        raise UsageError(str(e)) from e
    opt.check_model_spec(args.model)

    pending = writer.pending(files)
    print(f"{len(files)} images in {args.source}: {len(files) - len(pending)} already labelled, {len(pending)} to do")
    if pending:
        det = opt.open_detector(args, classes.prompts)
        run = det.predict([str(p) for p in pending], config=options, stream=True, keep_images=False)
        with tqdm(total=len(pending), unit="img", desc="label", disable=args.quiet) as bar:
            for d in run:
                writer.add(d)
                bar.update(1)
            for name, reason in run.skipped:
                writer.skip(name, reason)
                bar.update(1)
    summary = writer.finish()
    print(summary.text())
    return 0
