"""The README's numbers for ``ovdet-demo``: held-out AP, tiny-coco16 AP and the synonym check.

    python tools/eval_demo.py --data-root ../shared/data --imgsz 416 640 \
        --ultralytics ../shared/weights/yolov8n-coco-int8-onnx/yolov8n_int8.onnx

* **held-out**: the 16 coco128 images the recipe (``configs/train/ovdet-demo.yaml``) never trains on.
* **tiny-coco16**: 16 other COCO images (``$OVDET_DATA/tiny-coco16``) the model never saw.
* **ultralytics** (``--ultralytics``): that ONNX detector scored by ultralytics' own ``val`` on a
  YOLO-format copy of the same two sets (its own mAP code, not pycocotools).
* **synonyms**: the class under test is swapped for a synonym the model never trained on ("person"
  → "man"); for every ground-truth box of that class on both sets, the best score of a box of that
  class overlapping it (IoU ≥ 0.5) is read with the canonical name and with the synonym: mean best
  score, and recall at the default confidence (0.25). A synonym the model cannot embed (offline:
  not in ovdet's built-in CLIP tables) is listed as such.

Writes ``eval.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_demo import RECIPE, load_demo_recipe, write_split  # noqa: E402

from benchmarks.common import write_yolo_copy  # noqa: E402
from ovdet.api import Detector  # noqa: E402
from ovdet.config import EvalConfig  # noqa: E402
from ovdet.data.readers import read_dataset  # noqa: E402
from ovdet.inference.validate import validate  # noqa: E402
from ovdet.text import TextEncoderUnavailable  # noqa: E402

#: canonical COCO name → synonyms the demo never trained on (issue #31's list, plus a few).
SYNONYMS = {
    "person": ["man", "woman", "child", "boy", "girl"],
    "dog": ["puppy"],
    "cup": ["mug"],
    "couch": ["sofa"],
    "motorcycle": ["motorbike"],
    "tv": ["television"],
    "car": ["automobile"],
    "bicycle": ["bike"],
}
#: The detector's default confidence (NMSConfig.conf): what "found" means for a user.
DEFAULT_CONF = 0.25


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


def ultralytics_val(onnx: Path, data, imgsz: int, work: Path) -> dict[str, float]:
    """ultralytics' own ``val`` of an ONNX export on a YOLO-format copy of ``data`` (a Dataset)."""
    from ultralytics import YOLO

    yaml_path = write_yolo_copy({"train": data, "val": data}, work)
    m = YOLO(str(onnx), task="detect").val(
        data=str(yaml_path), imgsz=imgsz, batch=1, conf=0.001, iou=0.7, device="cpu", plots=False, verbose=False
    )
    return {"AP": float(m.box.map), "AP50": float(m.box.map50), "AP75": float(m.box.map75), "images": len(data.records)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("OVDET_DATA", "../shared/data"))
    ap.add_argument("--model", default="ovdet-demo", help="checkpoint folder or model name")
    ap.add_argument("--imgsz", type=int, nargs="+", default=[416, 640])
    ap.add_argument("--ultralytics", default=None, help="an ONNX export to score with ultralytics' val as well")
    ap.add_argument("--out", default="runs/demo/eval")
    args = ap.parse_args()

    root = Path(args.data_root).resolve()
    out = Path(args.out)
    recipe = load_demo_recipe(RECIPE)
    split_yaml, names = write_split(root, recipe.extras, out / "split")
    tiny_json = root / "tiny-coco16" / "small_coco" / "instances_train2017_small.json"
    det = Detector.from_pretrained(args.model) if not Path(args.model).is_dir() else Detector.load(args.model)
    report: dict = {"model": args.model, "sets": {}, "ultralytics": {}, "synonyms": {}}
    datasets = {"held-out coco128 (16)": read_dataset(split_yaml, split="val"), "tiny-coco16": read_dataset(tiny_json)}

    for imgsz in args.imgsz:
        for label, data in datasets.items():
            m = validate(det.model, data, det.encode, EvalConfig(imgsz=imgsz, progress=False))
            report["sets"][f"{label} @ {imgsz}"] = {k: m[k] for k in ("AP", "AP50", "AP75", "images")}
            if args.ultralytics:
                work = out / "ultralytics" / f"{label.split()[0]}-{imgsz}"
                shutil.rmtree(work, ignore_errors=True)
                report["ultralytics"][f"{label} @ {imgsz}"] = ultralytics_val(Path(args.ultralytics), data, imgsz, work)

    for imgsz in args.imgsz:
        rows = {}
        for canonical, synonyms in SYNONYMS.items():
            sets = [ds for ds in datasets.values() if canonical in ds.names]
            base = [s for ds in sets for s in best_scores(det, ds, ds.names.index(canonical), list(ds.names), imgsz)]
            if not base:
                continue
            rows[canonical] = {
                "boxes": len(base),
                "mean": sum(base) / len(base),
                "recall": recall(base),
                "synonyms": {},
            }
            for syn in synonyms:
                try:
                    got = [
                        s
                        for ds in sets
                        for s in best_scores(
                            det, ds, ds.names.index(canonical), [syn if n == canonical else n for n in ds.names], imgsz
                        )
                    ]
                except TextEncoderUnavailable:
                    rows[canonical]["synonyms"][syn] = None  # not embeddable here (offline, in no table)
                    continue
                rows[canonical]["synonyms"][syn] = {"mean": sum(got) / len(got), "recall": recall(got)}
        report["synonyms"][str(imgsz)] = rows

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    print("| set | imgsz | images | AP | AP50 | AP75 |" + (" ultralytics AP | AP50 |" if args.ultralytics else ""))
    print("| --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if args.ultralytics else ""))
    for key, m in report["sets"].items():
        label, imgsz = key.rsplit(" @ ", 1)
        ul = report["ultralytics"].get(key)
        extra = f" {ul['AP']:.3f} | {ul['AP50']:.3f} |" if ul else ""
        print(f"| {label} | {imgsz} | {m['images']} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} |{extra}")
    for imgsz, rows in report["synonyms"].items():
        print(f"\nsynonyms @ {imgsz}: mean best score on ground-truth boxes, recall at conf {DEFAULT_CONF}")
        print(
            "| class | boxes | canonical | synonym | synonym score | recall ratio |\n| --- | --- | --- | --- | --- | --- |"
        )
        for canonical, r in rows.items():
            for syn, v in r["synonyms"].items():
                shown = "not embeddable offline" if v is None else f"{v['mean']:.3f} ({v['recall']:.0%})"
                ratio = "" if v is None or r["recall"] == 0 else f"{v['recall'] / r['recall']:.2f}"
                print(
                    f"| {canonical} | {r['boxes']} | {r['mean']:.3f} ({r['recall']:.0%}) | {syn} | {shown} | {ratio} |"
                )
    print(f"\nwritten: {out / 'eval.json'}")
    return 0


def recall(scores: list[float]) -> float:
    """Share of ground-truth boxes found at the default confidence."""
    return sum(s >= DEFAULT_CONF for s in scores) / len(scores)


if __name__ == "__main__":
    raise SystemExit(main())
