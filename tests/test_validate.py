"""`Detector.val` / `ovdet val --model` end to end with the tiny model on real coco128 data."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch
import yaml

from ovdet.cli import main
from ovdet.data.readers import read_coco
from ovdet.inference.validate import dataset_to_coco
from tests.helpers import make_detector


def test_dataset_to_coco_keeps_every_box(data_dir: Path) -> None:
    ds = read_coco(data_dir / "coco128-coco/annotations/instances_train2017.json")
    gt, ids = dataset_to_coco(ds)
    assert len(gt["images"]) == len(ds.records) == len(ids)
    assert len(gt["annotations"]) == 939 and sum(a["iscrowd"] for a in gt["annotations"]) == 10
    assert {c["id"] for c in gt["categories"]} == set(ds.category_ids)


def test_val_on_coco128_coco_writes_every_output(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVDET_HOME", str(tmp_path / "home"))
    det = make_detector()  # random weights with spread scores: metrics are tiny but real
    ckpt = det.save(tmp_path / "ckpt")
    gt = data_dir / "coco128-coco/annotations/instances_train2017.json"
    out = tmp_path / "val"
    assert (
        main(
            [
                "val",
                "--model",
                str(ckpt),
                "--data",
                str(gt),
                "--imgsz",
                "256",
                "--conf",
                "0.01",
                "--max-det",
                "50",
                "--save-dir",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["images"] == 128 and metrics["skipped"] == []
    assert len(metrics["per_class"]) == 80
    assert (out / "pr_curve.png").stat().st_size > 0 and cv2.imread(str(out / "pr_curve.png")) is not None
    samples = sorted((out / "samples").glob("*.jpg"))
    assert len(samples) == 4 and all(cv2.imread(str(s)) is not None for s in samples)
    results = json.loads((out / "results.json").read_text())
    assert len(results) > 0 and all(0 <= r["score"] <= 1 for r in results)
    assert max(sum(r["image_id"] == i for r in results) for i in {r["image_id"] for r in results}) <= 50
    # re-scoring the saved results without the model gives the same numbers
    again = tmp_path / "again"
    assert main(["val", "--results", str(out / "results.json"), "--data", str(gt), "--save-dir", str(again)]) == 0
    rescored = json.loads((again / "metrics.json").read_text())
    for key in ("AP", "AP50", "AR100"):
        assert rescored[key] == pytest.approx(metrics[key], abs=1e-12)


def test_val_on_yolo_yaml_and_empty_dataset(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVDET_HOME", str(tmp_path / "home"))
    images = sorted((data_dir / "coco128/images/train2017").glob("*.jpg"))[:12]
    listing = tmp_path / "subset.txt"
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    names = json.loads(
        json.dumps(__import__("yaml").safe_load((data_dir / "coco128/coco128.yaml").read_text())["names"])
    )
    data = tmp_path / "data.yaml"
    data.write_text(
        __import__("yaml").safe_dump(
            {"path": str(tmp_path), "train": "subset.txt", "val": "subset.txt", "names": names}
        )
    )
    det = make_detector()
    metrics = det.val(data, imgsz=256, conf=0.01, max_det=30, progress=False)
    assert metrics["images"] == 12 and 0.0 <= metrics["AP"] <= 1.0
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (tmp_path / "empty.yaml").write_text(f"path: {empty}\ntrain: images\nval: images\nnames: ['a']\n")
    with pytest.raises((ValueError, FileNotFoundError), match="empty|no .*image|not found"):
        det.val(tmp_path / "empty.yaml", progress=False)


class GroundTruthPredictor:
    """Stands in for the network inside ``validate``: returns each image's ground truth as
    detections (scores descending), so everything around the model is exercised for real."""

    def __init__(self, dataset) -> None:
        self.by_path = {str(r.path): r for r in dataset.records}

    def __call__(self, model, names, embeddings, nms, imgsz, dtype=None):
        self.names = list(names)
        return self

    def predict(self, images, sources, keep_images=True):
        from ovdet import Detections

        out = []
        for image, source in zip(images, sources):
            rec = self.by_path[source]
            keep = ~rec.ignore & (rec.labels >= 0)
            n = int(keep.sum())
            out.append(
                Detections(
                    boxes=torch.from_numpy(rec.boxes[keep]),
                    scores=torch.linspace(1.0, 0.5, n),
                    labels=torch.from_numpy(rec.labels[keep]),
                    names=self.names,
                    image_size=image.shape[:2],
                    path=source,
                )
            )
        return out


@pytest.mark.parametrize("kind", ["coco-json", "yolo-yaml"])
def test_perfect_detections_score_ap_one_through_val(
    kind: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ground-truth boxes fed through Detector.val's whole path (dataset reading, vocabulary,
    image ids, label → category mapping, xyxy → xywh, crowd handling, scorer) score AP 1.0;
    dropping a fifth of them lowers recall, so the number can fail."""
    import ovdet.inference.validate as validate_mod
    from ovdet.data.readers import read_dataset

    data = (
        data_dir / "coco128-coco/annotations/instances_train2017.json"
        if kind == "coco-json"
        else data_dir / "coco128/coco128.yaml"
    )
    dataset = read_dataset(data, split="train")
    fake = GroundTruthPredictor(dataset)
    monkeypatch.setattr(validate_mod, "Predictor", lambda *a, **k: fake(*a, **k).predict)
    det = make_detector()
    metrics = det.val(data, split="train", imgsz=256, progress=False)
    assert metrics["images"] == 128 and metrics["dropped"]["total"] == 0
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AR100"] == pytest.approx(1.0)

    full = fake.predict
    monkeypatch.setattr(
        fake,
        "predict",
        lambda images, sources, keep_images=True: [
            d[: max(0, len(d) - len(d) // 5 - 1)] if i % 2 == 0 else d
            for i, d in enumerate(full(images, sources, keep_images))
        ],
    )
    worse = det.val(data, split="train", imgsz=256, progress=False)
    assert worse["AR100"] < 0.95 and worse["AP"] < metrics["AP"]


def test_val_leaves_vocabulary_and_mode_as_they_were(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVDET_HOME", str(tmp_path / "home"))
    images = sorted((data_dir / "coco128/images/train2017").glob("*.jpg"))[:4]
    listing = tmp_path / "subset.txt"
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    data = tmp_path / "data.yaml"
    names = yaml.safe_load((data_dir / "coco128" / "coco128.yaml").read_text())["names"]  # every label valid
    data.write_text(f"path: {tmp_path}\nval: subset.txt\nnames: {list(names.values())}\n")
    det = make_detector()
    det.set_classes(["zebra", "kite"])
    emb = det.class_embeddings
    for training in (True, False):
        det.model.train(training)
        before = {k: v.clone() for k, v in det.model.state_dict().items()}
        det.val(data, imgsz=256, progress=False)
        assert det.names == ["zebra", "kite"] and torch.equal(det.class_embeddings, emb)
        assert det.model.training is training and all(m.training is training for m in det.model.modules())
        after = det.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "validation must not update BN statistics"


def test_predict_runs_in_eval_mode_and_restores_train_mode(coco128_images: list[Path]) -> None:
    det = make_detector()
    det.set_classes(["person", "dog"])
    ref = det.predict(str(coco128_images[0]), conf=0.05, imgsz=256)[0]
    det.model.train()
    stats = det.model.backbone.stem.bn.running_mean.clone()
    got = det.predict(str(coco128_images[0]), conf=0.05, imgsz=256)[0]
    assert det.model.training
    assert torch.equal(det.model.backbone.stem.bn.running_mean, stats)  # BN ran with its running statistics
    assert len(got) == len(ref) > 0 and torch.equal(got.scores, ref.scores) and torch.equal(got.boxes, ref.boxes)
