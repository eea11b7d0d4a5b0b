"""Fine-tuning on real custom data (issue #30): a short real Raccoon fine-tune from the COCO
YOLOv8n that beats its zero-shot start, and what users trip on when fine-tuning — one class vs
many, dataset names that differ in case from the prompt, images without boxes, a missing val
split, boxes outside the image, the same image listed twice.

The real run starts where ``benchmarks/bench_finetune.py`` starts: the int8 YOLOv8n ONNX export
imported with its COCO classifier carried into CLIP ViT-B/32 space, the real CLIP embedding of
OpenImages' "Raccoon", Raccoon's own ``train.txt``/``val.txt`` split (160/40 images). The others
use the tiny config on real coco128 images (seconds each).
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ovdet import Detector
from ovdet.data.readers import read_dataset
from tests.helpers import require_data
from tests.test_train import IMAGES, make_dataset, quick, tiny_detector


def clip_rows(data_dir: Path, part: str) -> tuple[list[str], torch.Tensor]:
    """Names and (K, 512) float32 CLIP ViT-B/32 text embeddings of one shared table."""
    folder = require_data(data_dir / "clip-vit-b32-text", "real CLIP ViT-B/32 text embeddings")
    names = (folder / f"{part}.txt").read_text(encoding="utf-8").splitlines()
    return names, torch.from_numpy(np.load(folder / f"{part}.npy").astype(np.float32))


# ------------------------------------------------------------------------------ the real fine-tune

#: Measured on 2 CPU cores (3 epochs, freeze_backbone, lr0 5e-4, imgsz 320, batch 16, workers 1):
#: zero-shot val mAP50-95 0.4765 / mAP50 0.9074; after the run, seeds 0 / 1 / 2: mAP50-95 0.5697 /
#: 0.5640 / 0.5631 (gain +0.087 to +0.093, spread 0.007), mAP50 0.8930 / 0.8753 / 0.8561 (AdamW
#: defaults of 2026-12-08: beta1 0.9, weight decay 5e-4; 0.5699 / 0.5668 / 0.5637 with the former).
ZERO_SHOT_AP = 0.4765
#: The asserted gain: over half the smallest measured one, eight times the seed-to-seed spread.
AP_GAIN = 0.05
#: How far mAP50 may fall in three epochs (measured: 0.014 to 0.055 below its near-saturated start).
AP50_SLACK = 0.08


def test_short_raccoon_fine_tune_beats_the_zero_shot_start(tmp_path: Path, data_dir: Path) -> None:
    """Three epochs on Raccoon's 160 training images lift val mAP50-95 well above the start.

    AP50 starts near saturation (0.91: a COCO-only classifier already finds raccoons through
    CLIP's "Raccoon"), so the box-quality average mAP50-95 is what a short run can move; AP50
    dips in three epochs (the 30-epoch benchmark ends at 0.93) and must not fall past the
    measured dips. The embedding is given as OpenImages'
    "Raccoon" while the xml files say "raccoon": the run matches them (warned), as users expect.
    """
    raccoon = require_data(data_dir / "raccoon", "Raccoon (Pascal VOC)")
    onnx = require_data(data_dir.parent / "weights" / "yolov8n-coco-int8-onnx" / "yolov8n_int8.onnx", "YOLOv8n ONNX")
    coco_names, coco_emb = clip_rows(data_dir, "coco")
    oi_names, oi_emb = clip_rows(data_dir, "openimages")
    raccoon_emb = oi_emb[oi_names.index("Raccoon")][None]  # (1, 512)

    det = Detector.from_onnx(onnx, device="cpu", class_embeddings=(coco_names, coco_emb))
    det.set_class_embeddings(["Raccoon"], raccoon_emb)
    zero = det.val(str(raccoon), split="val", imgsz=320, progress=False, samples=0)
    assert zero["AP"] == pytest.approx(ZERO_SHOT_AP, abs=2e-3) and zero["AP50"] > 0.88

    with pytest.warns(UserWarning, match="Raccoon"):
        out = det.train(
            data=str(raccoon),  # the folder: train.txt trains, its val.txt validates
            epochs=3,
            imgsz=320,
            batch=16,
            workers=1,
            device="cpu",
            mode="freeze_backbone",
            lr0=5e-4,
            warmup_epochs=0,
            warmup_bias_lr=0.0,
            seed=0,
            val_interval=100,
            amp="off",
            project=str(tmp_path / "runs"),
            name="raccoon",
            progress=False,
        )
    after = out["metrics"]
    assert after["AP"] >= zero["AP"] + AP_GAIN, (zero["AP"], after["AP"])
    assert after["AP50"] >= zero["AP50"] - AP50_SLACK, (zero["AP50"], after["AP50"])
    assert det.names == ["raccoon"]
    expected = torch.nn.functional.normalize(raccoon_emb, dim=1)
    assert torch.allclose(det._embeddings.cpu(), expected, atol=1e-6)  # the given vector, not a re-encoding


# ------------------------------------------------------------------------------ what users trip on


def _one_class_dataset(root: Path, data_dir: Path, keep: int = 0) -> Path:
    """The four test images with only class ``keep``'s boxes, as a one-name dataset."""
    y = make_dataset(root, data_dir)
    names = yaml.safe_load(y.read_text())["names"]
    for label in (root / "labels").iterdir():
        rows = [line.split() for line in label.read_text().splitlines() if line.split()]
        label.write_text("".join("0 " + " ".join(r[1:]) + "\n" for r in rows if int(r[0]) == keep))
    content = yaml.safe_load(y.read_text())
    content["names"] = [names[keep]]
    y.write_text(yaml.safe_dump(content))
    return y


@pytest.mark.parametrize("classes", ["one", "many"])
def test_one_class_and_many_classes_train_and_score_per_class(
    classes: str, tmp_path: Path, data_dir: Path, capsys
) -> None:
    """A one-class dataset trains as well as an 80-class one: the run's vocabulary is the
    dataset's names, validation scores each class with ground truth, the losses are finite."""
    if classes == "one":
        data = _one_class_dataset(tmp_path / "d", data_dir, keep=49)  # "orange": 4 boxes
        expected = ["orange"]
    else:
        data = make_dataset(tmp_path / "d", data_dir)
        expected = yaml.safe_load(data.read_text())["names"]
        expected = list(expected.values()) if isinstance(expected, dict) else expected
    det = tiny_detector()
    out = det.train(data=data, **quick(tmp_path, classes, epochs=2, val_interval=1), progress=False)
    assert det.names == expected
    present = {"one": 1, "many": 8}[classes]  # classes with ground truth in the 4 images
    scored = [name for _, name, ap in out["metrics"]["per_class"] if not math.isnan(ap)]
    assert len(out["metrics"]["per_class"]) == len(expected) and len(scored) == present, scored
    rows = list(csv.DictReader((out["run_dir"] / "results.csv").open()))
    assert len(rows) == 2 and all(math.isfinite(float(r["train/cls_loss"])) for r in rows)
    assert f"({ {'one': 4, 'many': 14}[classes] } boxes, {len(expected)} classes)" in capsys.readouterr().out


def test_images_without_boxes_are_trained_as_background(tmp_path: Path, data_dir: Path, capsys) -> None:
    """Images with an empty label file, or none, are backgrounds: kept, counted and trained on
    (they teach the model what is not an object), never skipped as errors."""
    data = make_dataset(tmp_path / "d", data_dir)
    (tmp_path / "d" / "labels" / f"{IMAGES[0]}.txt").write_text("")  # empty label file
    (tmp_path / "d" / "labels" / f"{IMAGES[1]}.txt").unlink()  # no label file
    ds = read_dataset(data, "train")
    assert (len(ds.records), ds.report.labelled, ds.report.background, ds.report.problems) == (4, 2, 2, [])
    det = tiny_detector()
    out = det.train(data=data, **quick(tmp_path, "bg", epochs=2), progress=False)
    printed = capsys.readouterr().out
    assert "4 images (" in printed and "problem" not in printed
    rows = list(csv.DictReader((out["run_dir"] / "results.csv").open()))
    assert all(math.isfinite(float(r["train/box_loss"])) for r in rows)


def test_a_missing_val_split(tmp_path: Path, data_dir: Path, capsys) -> None:
    """A val entry that names nothing stops the run before its folder exists, naming the entry;
    a yaml with no val split trains without validation and says so."""
    data = make_dataset(tmp_path / "d", data_dir)
    content = yaml.safe_load(data.read_text())
    (tmp_path / "d" / "wrong.yaml").write_text(yaml.safe_dump({**content, "val": "images/val"}))
    with pytest.raises(FileNotFoundError, match=r"split 'val' entry 'images/val' not found"):
        tiny_detector().train(data=tmp_path / "d" / "wrong.yaml", **quick(tmp_path, "wrong"), progress=False)
    assert not (tmp_path / "runs").exists()

    content.pop("val")
    (tmp_path / "d" / "noval.yaml").write_text(yaml.safe_dump(content))
    out = tiny_detector().train(
        data=tmp_path / "d" / "noval.yaml", **quick(tmp_path, "noval", epochs=1), progress=False
    )
    assert out["metrics"] == {} and out["best"] is None
    assert "validation: none (no val split: pass val_data)" in capsys.readouterr().out


def test_boxes_outside_the_image_are_clipped_or_dropped(tmp_path: Path, data_dir: Path) -> None:
    """A box partly outside its image is clipped to it (counted); one wholly outside is dropped
    (counted and named); the image and its other boxes train."""
    data = make_dataset(tmp_path / "d", data_dir)
    label = tmp_path / "d" / "labels" / f"{IMAGES[2]}.txt"
    original = label.read_text()
    label.write_text(original + "0 0.95 0.5 0.3 0.2\n0 1.6 0.5 0.2 0.2\n")  # right edge at 1.1; wholly right of 1
    ds = read_dataset(data, "train")
    rec = next(r for r in ds.records if r.path.stem == IMAGES[2])
    n_before = len(original.splitlines())
    assert len(rec.boxes) == n_before + 1 and ds.report.clipped == 1 and ds.report.invalid == 1
    assert float(rec.boxes[:, 2].max()) <= rec.width and float(rec.boxes[-1, 2]) == rec.width
    assert any(IMAGES[2] in f and "fully outside" in why for f, why in ds.report.problems)
    out = tiny_detector().train(data=data, **quick(tmp_path, "outside", epochs=1), progress=False)
    rows = list(csv.DictReader((out["run_dir"] / "results.csv").open()))
    assert math.isfinite(float(rows[0]["train/box_loss"]))


def test_the_same_image_listed_twice(tmp_path: Path, data_dir: Path) -> None:
    """An image listed twice in a split is read once (the repeat named); an image in both the
    training and the validation split is warned about (its scores would be optimistic)."""
    data = make_dataset(tmp_path / "d", data_dir)
    images = sorted((tmp_path / "d" / "images").iterdir())
    listing = tmp_path / "d" / "train.txt"
    listing.write_text("".join(f"./images/{p.name}\n" for p in images) + f"{images[0]}\n")  # relative, then absolute
    content = yaml.safe_load(data.read_text())
    (tmp_path / "d" / "twice.yaml").write_text(yaml.safe_dump({**content, "train": ["train.txt", "images"]}))
    ds = read_dataset(tmp_path / "d" / "twice.yaml", "train")
    assert len(ds.records) == 4 and len({r.path.name for r in ds.records}) == 4
    repeats = [why for _, why in ds.report.problems if "listed again" in why]
    assert len(repeats) == 5, ds.report.problems  # once more in the list, four more in the folder

    with pytest.warns(UserWarning, match=r"4 of the 4 validation images .* are also training images"):
        tiny_detector().train(data=tmp_path / "d" / "twice.yaml", **quick(tmp_path, "twice", epochs=1), progress=False)
    other = make_dataset(tmp_path / "v", data_dir, stems=IMAGES[:2])  # other files (copies): not warned about
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_detector().train(data=data, **quick(tmp_path, "apart", epochs=1, val_data=str(other)), progress=False)
    assert not [w for w in caught if "also training images" in str(w.message)]
