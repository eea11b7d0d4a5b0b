"""Robustness of dataset reading and training, second pass (issue #35, items 4-8): real coco128
files (YOLO and COCO json layouts) copied into tmp_path and broken there.

4. duplicate class names are refused before the first step (and by ``check-data``);
5. a label file whose every line is invalid skips its image instead of making it background;
6. a truncated JPEG is found by ``check-data`` and counted, never a raw warning, in training;
7. image paths that escape the image folder are skipped and named;
8. a vocabulary over the class limit is refused before anything is embedded; a large one under
   it is embedded with a progress bar.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from ovdet.cli import main
from ovdet.config import TrainConfig
from ovdet.data.loader import DetectionDataset, build_loader
from ovdet.data.readers import MAX_CLASSES, read_dataset, read_odvg, read_yolo
from ovdet.engine.train import train
from ovdet.engine.vocab import TrainingVocabulary
from tests.test_train import IMAGES, make_dataset, quick, tiny_detector


def coco_subset(root: Path, data_dir: Path, n: int = 3) -> tuple[Path, dict]:
    """The first ``n`` images of coco128's COCO json (with their annotations and all 80
    categories) in ``root/train2017`` + ``root/annotations/instances_train2017.json``."""
    src = data_dir / "coco128-coco"
    full = json.loads((src / "annotations" / "instances_train2017.json").read_text())
    images = full["images"][:n]
    ids = {i["id"] for i in images}
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    for im in images:
        shutil.copy(src / "train2017" / im["file_name"], root / "train2017" / im["file_name"])
    body = {
        "images": images,
        "annotations": [a for a in full["annotations"] if a["image_id"] in ids],
        "categories": full["categories"],
    }
    path = root / "annotations" / "instances_train2017.json"
    path.write_text(json.dumps(body))
    return path, body


def _write_json(path: Path, body: dict) -> Path:
    path.write_text(json.dumps(body))
    return path


def _problems(report, part: str) -> list[str]:
    return [reason for file, reason in report.problems if part in file or part in reason]


# ------------------------------------------------------------------------------ 4. duplicate names


def test_duplicate_class_names_fail_before_the_first_step(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "ds", data_dir, stems=IMAGES[:2])
    spec = yaml.safe_load(data.read_text())
    data.write_text(yaml.safe_dump({**spec, "names": ["person", "car", "person"]}))
    for label in (tmp_path / "ds" / "labels").iterdir():
        label.write_text("0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.2 0.2\n")

    assert main(["check-data", str(data)]) == 1
    err = capsys.readouterr().err
    assert str(data) in err and "duplicate class names" in err and "'person' at indices 0, 2" in err

    with pytest.raises(ValueError, match=r"data\.yaml: field 'names': duplicate class names.*'person' at indices 0, 2"):
        tiny_detector().train(data=data, **quick(tmp_path, "dup", epochs=1), progress=False)
    assert not (tmp_path / "runs").exists()  # the run folder is made before the first step: never reached
    data.write_text(yaml.safe_dump({**spec, "names": ["person", "__", "car"]}))  # a name that cleans to nothing
    with pytest.raises(ValueError, match=r"field 'names': class name at index 1 \('__'\) is empty as a prompt"):
        read_yolo(data)

    # a COCO json: two category ids, one name (and two names that clean to one prompt)
    path, body = coco_subset(tmp_path / "coco", data_dir, n=2)
    body["categories"][1]["name"] = "person"
    body["categories"][10]["name"] = "traffic_light"  # beside index 9, "traffic light"
    _write_json(path, body)
    assert main(["check-data", str(path)]) == 1
    err = capsys.readouterr().err
    assert "instances_train2017.json: field 'categories'" in err and "'person' at indices 0, 1" in err
    assert "'traffic light' at indices 9, 10 (written 'traffic light', 'traffic_light')" in err


# ------------------------------------------------------------------------------ 5. all lines invalid


def test_an_image_whose_every_box_is_invalid_is_skipped_not_background(tmp_path: Path, data_dir: Path) -> None:
    a, b, c, d = IMAGES
    data = make_dataset(tmp_path / "ds", data_dir, stems=IMAGES)
    labels = tmp_path / "ds" / "labels"
    (labels / f"{a}.txt").write_text("0 0.5 0.5 0.2\n99 0.5 0.5 0.2 0.2\n0 0.5 0.5 0 0.2\n")  # 3 invalid lines
    (labels / f"{b}.txt").write_text("0 0.5 0.5 0.2 0.2\nx 0.5 0.5 0.2 0.2\n")  # 1 valid, 1 invalid
    (labels / f"{c}.txt").write_text("")  # truly empty: a background image
    ds = read_yolo(data)
    recs = {r.path.stem: r for r in ds.records}
    assert sorted(recs) == sorted([b, c, d])  # a is skipped
    assert recs[b].num_boxes == 1 and recs[c].num_boxes == 0 and recs[d].num_boxes > 0
    r = ds.report
    assert (r.images, r.labelled, r.background, r.invalid) == (4, 2, 1, 4)
    (skip,) = [p for p in _problems(r, f"{a}.txt") if "image skipped" in p]
    assert f"{a}.jpg" in skip and "none of its 3 boxes is valid" in skip
    assert not [p for p in _problems(r, f"{b}.txt") if "image skipped" in p]
    assert "invalid boxes 4" in r.summary()

    # COCO json: an image whose annotations are all invalid (zero size, unknown category)
    path, body = coco_subset(tmp_path / "coco", data_dir, n=3)
    first = body["images"][0]["id"]
    for ann in body["annotations"]:
        if ann["image_id"] == first:
            ann["bbox"][2] = 0.0
    body["annotations"].append({"id": 10**9, "image_id": first, "category_id": 999, "bbox": [1, 1, 5, 5]})
    ds = read_dataset(_write_json(path, body))
    assert first not in {rec.image_id for rec in ds.records} and len(ds.records) == 2
    assert ds.report.background == 0
    (skip,) = [p for p in _problems(ds.report, body["images"][0]["file_name"]) if "image skipped" in p]
    assert "none of its" in skip


# ------------------------------------------------------------------------------ 6. truncated JPEG


def _truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_check_data_finds_a_truncated_jpeg(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "ds", data_dir, stems=IMAGES[:3])
    cut = _truncate(tmp_path / "ds" / "images" / f"{IMAGES[1]}.jpg")
    assert main(["check-data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "2 usable images" in out and f"problem: {cut}: truncated JPEG" in out
    assert cut not in {r.path for r in read_yolo(data).records}  # training reads the same way

    path, body = coco_subset(tmp_path / "coco", data_dir, n=3)
    cut = _truncate(path.parent.parent / "train2017" / body["images"][2]["file_name"])
    assert main(["check-data", str(path)]) == 0  # a json states sizes; check-data still opens the files
    out = capsys.readouterr().out
    assert "2 usable images" in out and f"problem: {cut}: truncated JPEG" in out
    assert main(["check-data", str(path), "--verify-images"]) == 0  # the full decode agrees
    assert f"problem: {cut}: truncated JPEG" in capsys.readouterr().out


def test_a_file_broken_after_reading_is_counted_in_the_report_not_warned(tmp_path: Path, data_dir: Path) -> None:
    data = make_dataset(tmp_path / "ds", data_dir, stems=IMAGES[:3])
    ds = read_yolo(data)
    assert not ds.report.problems
    cut = _truncate(ds.records[1].path)  # broken between reading and training
    whole = ds.records[2].path.read_bytes()  # 5000 bytes cut from the middle: decodes, with a warning
    ds.records[2].path.write_bytes(whole[: len(whole) // 2] + whole[len(whole) // 2 + 5000 :])
    samples = DetectionDataset(ds, imgsz=128, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(build_loader(samples, batch_size=3, workers=0, shuffle=False))
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    assert samples.skipped >= 1 and str(cut) in {p for b in batches for p in b.skipped}
    (reason,) = _problems(ds.report, str(cut))
    assert "truncated JPEG" in reason and "replaced by another image" in reason
    (warned,) = _problems(ds.report, str(ds.records[2].path))
    assert warned == "the decoder warned (Corrupt JPEG data: premature end of data segment): kept"
    assert str(ds.records[2].path) in {p for b in batches for p in b.paths}
    assert len(ds.report.problems) == 2  # each once


def test_training_reports_a_truncated_jpeg_in_its_data_report(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "ds", data_dir, stems=IMAGES[:3])
    cut = _truncate(tmp_path / "ds" / "images" / f"{IMAGES[1]}.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_detector().train(data=data, **quick(tmp_path, "cut", epochs=1, imgsz=128), progress=False)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    out = capsys.readouterr().out
    assert "2 images" in out and "1 data problem" in out and f"problem: {cut}: truncated JPEG" in out


# ------------------------------------------------------------------------------ 7. paths escaping the root


def test_image_paths_escaping_the_image_folder_are_skipped(tmp_path: Path, data_dir: Path) -> None:
    """An escaping ``file_name`` must neither count as a usable image nor move the image folder:
    here it ties with the real image, which, read first, picked the dataset's parent folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    shutil.copy(data_dir / "coco128" / "images" / "train2017" / f"{IMAGES[0]}.jpg", secret)
    path, body = coco_subset(tmp_path / "ds", data_dir, n=2)
    ann_dir = path.parent
    for im in body["images"]:  # the images beside the json (annotations/), a root tried late
        shutil.move(str(tmp_path / "ds" / "train2017" / im["file_name"]), ann_dir / im["file_name"])
    shutil.rmtree(tmp_path / "ds" / "train2017")
    real = body["images"]
    escaping = [  # from <ds> these find <tmp>/outside/secret.jpg, and so would win the probe's tie
        dict(real[0], id=-1, file_name="../outside/secret.jpg"),
        dict(real[0], id=-2, file_name="./../outside/secret.jpg"),
        dict(real[0], id=-3, file_name=str(secret)),  # absolute
    ]
    body["images"] = [*escaping[:2], *real, escaping[2]]
    ds = read_dataset(_write_json(path, body))
    assert sorted(r.path for r in ds.records) == sorted(ann_dir / im["file_name"] for im in real)
    escaped = [p for p in _problems(ds.report, str(path)) if "outside the image folder" in p]
    assert len(escaped) == 3 and "'../outside/secret.jpg'" in escaped[0] and str(secret) in escaped[2]
    # an explicit image folder is a root as well
    ds = read_dataset(path, image_dir=ann_dir)
    assert len(ds.records) == 2 and len([p for p in _problems(ds.report, str(path)) if "outside" in p]) == 3

    # ODVG: the same rule
    name = real[0]["file_name"]
    rows = [
        {"filename": "../../outside/secret.jpg", "height": 480, "width": 640},
        {"filename": name, "height": real[0]["height"], "width": real[0]["width"]},
    ]
    jsonl = ann_dir / "odvg.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = read_odvg(jsonl)
    assert [r.path for r in ds.records] == [ann_dir / name]
    assert [p for p in _problems(ds.report, str(jsonl)) if "outside the image folder" in p]

    # YOLO: a relative line of an image list climbing out of the dataset root (absolute lines
    # are ultralytics' own list format, taken as written)
    yolo = make_dataset(tmp_path / "yolo", data_dir, stems=IMAGES[:2])
    (tmp_path / "yolo" / "train.txt").write_text(f"./images/{IMAGES[0]}.jpg\n../outside/secret.jpg\n{secret}\n")
    spec = yaml.safe_load(yolo.read_text())
    yolo.write_text(yaml.safe_dump({**spec, "train": "train.txt"}))
    ds = read_yolo(yolo)
    assert [r.path for r in ds.records] == sorted([tmp_path / "yolo" / "images" / f"{IMAGES[0]}.jpg", secret])
    (climbs,) = _problems(ds.report, "train.txt")
    assert "line 2: image '../outside/secret.jpg' climbs out of the dataset root" in climbs


# ------------------------------------------------------------------------------ 8. huge vocabularies


def test_a_vocabulary_over_the_limit_is_refused_before_anything_is_embedded(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, body = coco_subset(tmp_path / "coco", data_dir, n=2)
    body["categories"] = [{"id": i, "name": f"thing {i}"} for i in range(1, 100_001)]
    for ann in body["annotations"]:
        ann["category_id"] = 1
    _write_json(path, body)
    assert main(["check-data", str(path)]) == 1
    err = capsys.readouterr().err
    assert "100,000 classes" in err and f"over the limit of {MAX_CLASSES:,}" in err and "OVDET_MAX_CLASSES" in err

    def embed(texts):
        raise AssertionError(f"embedded {len(texts)} texts before the class limit was checked")

    det = tiny_detector()
    cfg = TrainConfig(**quick(tmp_path, "huge", epochs=1), data=str(path))
    with pytest.raises(ValueError, match="100,000 classes"):
        train(det.model, cfg, embed, progress=False)
    assert not (tmp_path / "runs").exists()

    monkeypatch.setenv("OVDET_MAX_CLASSES", "0")  # no limit: the same file reads
    assert len(read_dataset(path).names) == 100_000


def test_a_large_vocabulary_is_embedded_with_progress(capsys: pytest.CaptureFixture[str]) -> None:
    texts = [f"thing {i}" for i in range(5000)]
    calls: list[int] = []

    def embed(batch):
        calls.append(len(batch))
        emb = torch.stack([torch.tensor([float(hash(t) % 997), 1.0, float(len(t))]) for t in batch])
        return torch.nn.functional.normalize(emb, dim=-1)

    quiet = TrainingVocabulary(texts, embed)
    assert calls == [5000]
    calls.clear()
    shown = TrainingVocabulary(texts, embed, progress=True)
    err = capsys.readouterr().err
    assert "embedding the vocabulary" in err and "5000/5000" in err
    assert max(calls[:-1]) < 5000 and calls[-1] == 5000  # chunks with progress, then the whole list once
    assert shown.texts == quiet.texts and torch.equal(shown.fixed, quiet.fixed)
