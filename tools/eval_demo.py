"""The README's numbers for ``ovdet-demo``: held-out AP, tiny-coco16 AP and the text-space check.

    python tools/eval_demo.py --data-root ../shared/data --imgsz 320 640

* **held-out**: the 16 coco128 images the recipe (``configs/train/ovdet-demo.yaml``) never trains on.
* **tiny-coco16**: 16 other COCO images (``$OVDET_DATA/tiny-coco16``) the model never saw.
* **text space**: each trained name is swapped for a paraphrase it never trained on ("dog" →
  "puppy"); for every ground-truth box of that class on both sets, the best score of a box of that
  class overlapping it (IoU ≥ 0.5) is read with the trained name and with the paraphrase.

Writes ``eval.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_demo import RECIPE, load_demo_recipe, write_split  # noqa: E402

from ovdet.api import Detector  # noqa: E402
from ovdet.config import EvalConfig  # noqa: E402
from ovdet.data.readers import read_dataset  # noqa: E402
from ovdet.inference.validate import validate  # noqa: E402

#: trained name → a phrasing the demo never trained on.
PARAPHRASES = {
    "person": "man",
    "dog": "puppy",
    "car": "automobile",
    "couch": "sofa",
    "tv": "television",
    "motorcycle": "motorbike",
    "cup": "mug",
    "bicycle": "bike",
}


def best_scores(det: Detector, dataset, cls: int, names: list[str], imgsz: int) -> list[float]:
    """For every ground-truth box of class ``cls``: the best score of a same-class box with IoU ≥ 0.5 (0 if none)."""
    det.set_classes(names)
    recs = [r for r in dataset.records if (r.labels == cls).any()]
    out: list[float] = []
    if not recs:
        return out
    for rec, d in zip(recs, det.predict([str(r.path) for r in recs], conf=0.001, imgsz=imgsz, max_det=300)):
        gt = torch.as_tensor(rec.boxes[rec.labels == cls], dtype=torch.float32)  # (G, 4)
        mine = d.labels == cls
        if not mine.any():
            out += [0.0] * len(gt)
            continue
        iou = box_iou(gt, d.boxes[mine])  # (G, P)
        scores = d.scores[mine].expand_as(iou)
        out += torch.where(iou >= 0.5, scores, torch.zeros_like(scores)).amax(dim=1).tolist()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("OVDET_DATA", "../shared/data"))
    ap.add_argument("--model", default="ovdet-demo", help="checkpoint folder or model name")
    ap.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--out", default="runs/demo/eval")
    args = ap.parse_args()

    root = Path(args.data_root).resolve()
    out = Path(args.out)
    recipe = load_demo_recipe(RECIPE)
    split_yaml, names = write_split(root, recipe.extras, out / "split")
    tiny_json = root / "tiny-coco16" / "small_coco" / "instances_train2017_small.json"
    det = Detector.from_pretrained(args.model) if not Path(args.model).is_dir() else Detector.load(args.model)
    report: dict = {"model": args.model, "sets": {}, "text_space": {}}

    sets = {"held-out coco128 (16)": (split_yaml, "val"), "tiny-coco16": (tiny_json, "val")}
    for imgsz in args.imgsz:
        for label, (data, split) in sets.items():
            m = validate(det.model, data, det.encode, EvalConfig(split=split, imgsz=imgsz, progress=False))
            report["sets"][f"{label} @ {imgsz}"] = {k: m[k] for k in ("AP", "AP50", "AP75", "images")}

    # Text space: both sets, COCO names; the class under test swapped for its paraphrase.
    datasets = [read_dataset(split_yaml, split="val"), read_dataset(tiny_json)]
    for imgsz in args.imgsz:
        rows = {}
        for trained, para in PARAPHRASES.items():
            a, b = [], []
            for ds in datasets:
                if trained not in ds.names:
                    continue
                cls = ds.names.index(trained)
                swapped = [para if n == trained else n for n in ds.names]
                a += best_scores(det, ds, cls, list(ds.names), imgsz)
                b += best_scores(det, ds, cls, swapped, imgsz)
            if a:
                rows[f"{trained} → {para}"] = {
                    "boxes": len(a),
                    "trained_mean": sum(a) / len(a),
                    "paraphrase_mean": sum(b) / len(b),
                    "trained_found@0.25": sum(s >= 0.25 for s in a) / len(a),
                    "paraphrase_found@0.25": sum(s >= 0.25 for s in b) / len(b),
                }
        report["text_space"][str(imgsz)] = rows

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    print("| set | imgsz | images | AP | AP50 | AP75 |\n| --- | --- | --- | --- | --- | --- |")
    for key, m in report["sets"].items():
        label, imgsz = key.rsplit(" @ ", 1)
        print(f"| {label} | {imgsz} | {m['images']} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} |")
    for imgsz, rows in report["text_space"].items():
        print(f"\ntext space @ {imgsz}: mean best score on ground-truth boxes (share found at score ≥ 0.25)")
        print("| trained → paraphrase | boxes | trained name | paraphrase |\n| --- | --- | --- | --- |")
        for pair, r in rows.items():
            print(
                f"| {pair} | {r['boxes']} | {r['trained_mean']:.3f} ({r['trained_found@0.25']:.0%}) | "
                f"{r['paraphrase_mean']:.3f} ({r['paraphrase_found@0.25']:.0%}) |"
            )
    print(f"\nwritten: {out / 'eval.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
