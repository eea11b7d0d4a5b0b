"""The shipped ``ovdet-demo`` model (issue #11): offline, unpickled-nothing, and it really detects.

The model is ``ovdet/assets/ovdet-demo`` (written by ``tools/train_demo.py --publish`` from
``configs/train/ovdet-demo.yaml``): the real COCO YOLOv8n (int8 ONNX export) carried into CLIP
ViT-B/32 space (issue #31). Its COCO names come from the CLIP tables shipped with ovdet, so no
text encoder is built. The network is disabled (socket connects raise) and every unpickling entry
point raises while it loads and predicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.ops import box_iou

from ovdet import Detector
from ovdet.data.readers import read_dataset
from ovdet.weights import BUNDLED, bundled_dir
from tests.helpers import require_data

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "train" / "ovdet-demo.yaml"
#: A held-out coco128 image with one person; the shipped model scores him 0.94 at 640 px.
PERSON_IMAGE = "000000000589.jpg"
#: Scores the test asks for; the shipped model's measured ones are in test messages and the README.
MIN_PERSON_SCORE = 0.3


@pytest.fixture(scope="module")
def demo_meta() -> dict:
    return json.loads((bundled_dir("ovdet-demo") / "config.json").read_text())


def test_bundled_files_are_small_safe_and_fp16(demo_meta: dict) -> None:
    folder = bundled_dir("ovdet-demo")
    assert "ovdet-demo" in BUNDLED
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["class_embeddings.safetensors", "config.json", "model.safetensors"], files
    assert all(not name.endswith((".pt", ".pth", ".pkl", ".bin")) for name in files)
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"
    assert demo_meta["dtype"] == "float16"
    assert demo_meta["model"]["version"] == 2 and demo_meta["model"]["embed_dim"] == 512
    text = demo_meta["model"]["text"]
    assert (text["family"], text["model"], text["pretrained"], text["templates"]) == (
        "open_clip",
        "ViT-B-32",
        "openai",
        ["a {}"],
    )  # the space of the shipped CLIP tables
    assert len(demo_meta["names"]) == 80 and demo_meta["names"][0] == "person"


def test_held_out_images_are_the_recipes(demo_meta: dict) -> None:
    recipe = yaml.safe_load(RECIPE.read_text())
    assert demo_meta["demo"]["held_out"] == sorted(recipe["holdout"])
    assert PERSON_IMAGE in recipe["holdout"]
    assert 0.0 < demo_meta["demo"]["held_out_metrics"]["AP50"] <= 1.0
    recorded = demo_meta["demo"]
    assert recorded["recipe"] == "configs/train/ovdet-demo.yaml"
    assert (recorded["init"], recorded["classes"], recorded["finetune"]) == (
        recipe["init"],
        recipe["classes"],
        recipe["finetune"],
    )


def test_the_rebuild_command_rebuilds_the_shipped_weights(demo_meta: dict, data_dir: Path) -> None:
    """``tools/train_demo.py``'s start, from the recipe, is the shipped model (up to fp16 storage):
    the checkpoint is what its recorded recipe builds, not a file nobody can reproduce."""
    tool = _train_demo_tool()
    recipe = tool.load_demo_recipe(RECIPE)
    assert recipe.extras["finetune"] is False  # a fine-tuned demo would need a training run here
    built = tool.start_detector(recipe.extras, data_dir, "cpu", recipe.train.seed)
    shipped = Detector.from_pretrained("ovdet-demo", device="cpu")
    ours, theirs = built.model.state_dict(), shipped.model.state_dict()
    assert ours.keys() == theirs.keys()
    for k, v in ours.items():
        if v.is_floating_point():
            torch.testing.assert_close(theirs[k], v.half().float(), rtol=0, atol=0, msg=k)
        else:
            assert torch.equal(theirs[k], v), k
    assert shipped.names == built.names


def _train_demo_tool():
    """``tools/train_demo.py`` as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "tools" / "train_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_recipe_is_a_train_config_recipe(tmp_path: Path) -> None:
    """The recipe is read by the common loader and gives the run the former ``train:`` section gave."""
    from ovdet.config import AugmentConfig, ConfigError, TrainConfig, load_recipe

    tool = _train_demo_tool()
    recipe = tool.load_demo_recipe(RECIPE)
    expected = TrainConfig(
        epochs=10,
        imgsz=640,
        batch=16,
        nbs=16,
        workers=2,
        device="cpu",
        mode="freeze_backbone",
        optimizer="AdamW",
        lr0=0.0005,
        warmup_epochs=1.0,
        warmup_bias_lr=0.0,
        max_texts=80,
        keep_vocab="lvis",
        val_interval=10,
        seed=0,
        cache="ram",
        augment=AugmentConfig(close_mosaic=3),
    )
    assert recipe.train == expected and recipe.model is None
    run = tool.run_config(recipe, tmp_path / "data.yaml", "runs/demo")
    assert run == TrainConfig(
        **{**vars(expected), "data": str(tmp_path / "data.yaml"), "project": "runs/demo", "name": "train"}
    )
    demo = recipe.extras
    assert demo["init"] == "yolov8n-coco-int8-onnx" and demo["embed_dim"] == 512 and demo["dataset"] == "coco128"
    assert demo["text"]["model"] == "ViT-B-32" and demo["classes"] == "coco" and len(demo["holdout"]) == 16
    assert tool.load_demo_recipe(RECIPE, epochs=2).train == TrainConfig(**{**vars(expected), "epochs": 2})
    with pytest.raises(
        ConfigError, match=r"ovdet-demo\.yaml: unknown key\(s\) \['classes', 'dataset', 'embed_dim', 'finetune'"
    ):
        load_recipe(RECIPE)  # `ovdet train --config` does not take the demo's own keys silently


def test_demo_finds_a_person_offline(sealed: None, data_dir: Path) -> None:
    coco128 = require_data(data_dir / "coco128", "coco128")
    det = Detector.from_pretrained("ovdet-demo", device="cpu")
    assert det.model.cfg.embed_dim == 512 and next(det.model.parameters()).dtype == torch.float32
    det.set_classes(["person", "bus", "dog"])  # the shipped CLIP tables: no encoder, no hub
    assert det._encoder is None
    image = coco128 / "images" / "train2017" / PERSON_IMAGE
    d = det.predict(str(image), conf=0.05)[0]
    truth = read_dataset(coco128 / "coco128.yaml", split="train")
    rec = next(r for r in truth.records if Path(r.path).name == PERSON_IMAGE)
    people = torch.as_tensor(rec.boxes[rec.labels == 0], dtype=torch.float32)  # (G, 4) xyxy pixels
    assert len(people) > 0
    mine = d.labels == 0
    assert mine.any(), f"no person found in {PERSON_IMAGE}: {d.scores.tolist()[:5]}"
    iou = box_iou(d.boxes[mine], people).amax(dim=1)  # (P,)
    matched = d.scores[mine][iou >= 0.5]
    assert len(matched) and matched.max() >= MIN_PERSON_SCORE, (
        f"best person score overlapping a true person: {matched.max() if len(matched) else None}"
    )


def test_bundled_name_uses_no_cache_and_is_suggested(tmp_path: Path) -> None:
    from ovdet.cli import check_model_spec
    from ovdet.weights import fetch_pretrained

    assert fetch_pretrained("ovdet-demo", cache_dir=tmp_path) == bundled_dir("ovdet-demo")
    assert not any(tmp_path.iterdir())  # nothing downloaded, converted or copied
    with pytest.raises(ValueError, match="did you mean 'ovdet-demo'"):
        fetch_pretrained("ovdet-dmeo", cache_dir=tmp_path)
    check_model_spec("ovdet-demo")  # the command line accepts the name
