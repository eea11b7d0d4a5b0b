"""Build the real grounding set of the README: one caption per coco128 image composed from its COCO
boxes (:mod:`ovdet.grounding.compose`), written as ODVG jsonl.

    python tools/build_grounding_set.py --out runs/grounding/coco128_grounding.jsonl
    ovdet val --task grounding --data runs/grounding/coco128_grounding.jsonl \\
        --image-dir ../shared/data/coco128-coco/train2017 --model ovdet-demo --text-family approx_clip

The json defaults to ``$OVDET_DATA/coco128-coco/annotations/instances_train2017.json`` (``OVDET_DATA``
defaults to ``../shared/data`` beside the repository). Nothing of the data is copied: the lines
name the images relative to their folder, which ``--image-dir`` gives to ``ovdet val``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovdet.grounding.compose import MAX_CATEGORIES, MIN_BOX_AREA, compose_grounding, write_odvg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COCO128_JSON = Path("coco128-coco") / "annotations" / "instances_train2017.json"


def main(argv: Sequence[str] | None = None) -> int:
    data = Path(os.environ.get("OVDET_DATA", REPO / ".." / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco", default=str(data / COCO128_JSON), help="COCO instances json (default: coco128's)")
    p.add_argument("--image-dir", help="its image folder (default: found next to the json)")
    p.add_argument("--out", default="runs/grounding/coco128_grounding.jsonl", help="the ODVG jsonl to write")
    p.add_argument("--min-box-area", type=float, default=MIN_BOX_AREA, help="px²: smaller boxes mention nothing")
    p.add_argument("--max-categories", type=int, default=MAX_CATEGORIES, help="categories per caption")
    args = p.parse_args(argv)

    composed = compose_grounding(
        args.coco, args.image_dir, min_box_area=args.min_box_area, max_categories=args.max_categories
    )
    out = write_odvg(composed.lines, args.out)
    regions = sum(len(line["grounding"]["regions"]) for line in composed.lines)
    phrases = sum(
        len({tuple(r["tokens_positive"][0]) for r in line["grounding"]["regions"]}) for line in composed.lines
    )
    print(f"{composed.images} images: {len(composed.lines)} captions, {phrases} phrases, {regions} boxes -> {out}")
    for image, reason in composed.skipped:
        print(f"  skipped: {image}: {reason}")
    print(
        f"evaluate: ovdet val --task grounding --data {out} --image-dir {composed.image_root} --model ovdet-demo "
        f"--text-family approx_clip"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
