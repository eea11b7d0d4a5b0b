"""``ovdet check-data``: read a dataset as training reads it and report counts, per-class boxes and problems.

A vocabulary training could not finish with (repeated or empty class names, more than
``ovdet.data.readers.MAX_CLASSES`` classes, ``$OVDET_MAX_CLASSES`` to change it) is an error (exit 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

HELP = "read a dataset and report counts, per-class boxes and problems"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "check-data", HELP)
    p.add_argument(
        "data", help="data .yaml (YOLO or format: voc), COCO/LVIS instances .json, ODVG .jsonl, or a Pascal VOC folder"
    )
    p.add_argument("--split", default="train", help="split of a data yaml or a VOC folder")
    opt.add_image_dir(p)
    p.add_argument(
        "--verify-images",
        action="store_true",
        help="decode every image file fully, as training does (slower); without it each image's header and "
        "end are read, which finds truncated files and wrong sizes",
    )
    p.add_argument(
        "--annotations-only",
        action="store_true",
        help=".json/.jsonl: check annotations without looking for images (e.g. image-less LVIS ground truth)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ovdet.data.readers import read_dataset

    if not Path(args.data).exists():
        raise UsageError(f"dataset not found: {args.data}")
    ds = read_dataset(
        args.data,
        args.split,
        image_dir=args.image_dir,
        verify_images=args.verify_images,
        require_images=not args.annotations_only,
        probe_images=True,
    )
    report = ds.report
    split = (
        f" [{args.split}]" if Path(args.data).suffix.lower() in {".yaml", ".yml"} or Path(args.data).is_dir() else ""
    )
    print(f"{args.data}{split}: {len(ds.names)} classes, {len(ds.records)} usable images")
    print(report.summary())
    if not ds.records:
        raise RuntimeError(f"{args.data}: the dataset has no usable image (see the problems above)")
    return 0
