"""Dataset readers on the real shared data (coco128 YOLO/COCO, tiny-coco16, LVIS) and on generated bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ovdet.cli import main
from ovdet.data.images import decode_image
from ovdet.data.readers import (
    check_data,
    clean_name,
    prompt_names,
    read_coco,
    read_dataset,
    read_lvis,
    read_odvg,
    read_yolo,
)
from ovdet.data.records import Dataset, ImageRecord
from tests.helpers import require_data

# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco128_yaml(data_dir: Path) -> Path:
    return require_data(data_dir / "coco128" / "coco128.yaml")


@pytest.fixture(scope="module")
def coco128_json(data_dir: Path) -> Path:
    return require_data(data_dir / "coco128-coco" / "annotations" / "instances_train2017.json")


@pytest.fixture(scope="module")
def lvis_json(data_dir: Path) -> Path:
    return require_data(data_dir / "coco-eval-vectors" / "lvis_val_100" / "lvis_val_100.json")


@pytest.fixture(scope="module")
def yolo_ds(coco128_yaml: Path) -> Dataset:
    return read_yolo(coco128_yaml)


@pytest.fixture(scope="module")
def coco_ds(coco128_json: Path) -> Dataset:
    return read_coco(coco128_json)


def _check_record_invariants(rec: ImageRecord, names: list[str]) -> None:
    b = rec.boxes
    assert b.dtype == np.float32 and b.shape == (len(rec.texts), 4)
    assert np.isfinite(b).all()
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= rec.width).all() and (b[:, 3] <= rec.height).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    for lab, text in zip(rec.labels.tolist(), rec.texts):
        if lab >= 0:
            assert text == names[lab]


def _write_yaml(tmp_path: Path, body: dict, name: str = "data.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def _reasons(ds: Dataset, file_part: str) -> list[str]:
    return [r for f, r in ds.report.problems if file_part in f]


# ------------------------------------------------------------------------------------------
# Names
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("bolt_(for_a_door)", "bolt"),
        ("tape_(sticky_cloth_or_paper)", "tape"),
        ("traffic_light", "traffic light"),
        ("  hot   dog ", "hot dog"),
        ("person", "person"),
        ("bow_(weapon)", "bow"),
        ("(x)", "x"),
        ("Dixie_cup", "Dixie cup"),
    ],
)
def test_clean_name(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


def test_prompt_names_keep_colliding_qualifiers() -> None:
    raw = ["bow_(weapon)", "bow_(decorative_ribbons)", "fish", "fish_(food)", "bolt_(for_a_door)"]
    assert prompt_names(raw) == ["bow (weapon)", "bow (decorative ribbons)", "fish", "fish (food)", "bolt"]


# ------------------------------------------------------------------------------------------
# Real data: coco128 YOLO, coco128-coco json, tiny-coco16, LVIS
# ------------------------------------------------------------------------------------------


def test_coco128_yolo_counts_and_quirks(yolo_ds: Dataset) -> None:
    r = yolo_ds.report
    assert (r.images, r.labelled, r.background, r.boxes, r.ignored, r.clipped) == (128, 126, 2, 929, 0, 0)
    assert len(yolo_ds.records) == 128
    background = sorted(rec.path.name for rec in yolo_ds.records if rec.num_boxes == 0)
    assert background == ["000000000250.jpg", "000000000508.jpg"]
    # Exactly the two label files without an image, and nothing else.
    assert sorted(Path(f).name for f, _ in r.problems) == ["000000000656.txt", "000000000659.txt"]
    assert all("without an image" in reason for _, reason in r.problems)
    assert sum(r.per_class.values()) == 929 and r.per_class["person"] == 254
    assert len(yolo_ds.names) == 80 and yolo_ds.names[9] == "traffic light"
    assert yolo_ds.category_ids == list(range(80))
    for rec in yolo_ds.records:
        _check_record_invariants(rec, yolo_ds.names)
        assert rec.image_id == rec.path.stem
        assert max(rec.height, rec.width) <= 640


def test_coco128_yolo_sizes_match_decoded_images(yolo_ds: Dataset) -> None:
    for rec in yolo_ds.records[:5]:
        assert decode_image(rec.path).shape[:2] == (rec.height, rec.width)


def test_coco128_coco_json_counts(coco_ds: Dataset, coco128_json: Path) -> None:
    raw = json.loads(coco128_json.read_text())
    r = coco_ds.report
    assert len(raw["annotations"]) == 939
    assert (r.images, r.labelled, r.background, r.boxes, r.ignored, r.clipped) == (128, 126, 2, 929, 10, 0)
    assert r.problems == []
    assert sum(len(rec.texts) for rec in coco_ds.records) == 939
    assert sum(int(rec.ignore.sum()) for rec in coco_ds.records) == 10
    assert coco_ds.category_ids == sorted(c["id"] for c in raw["categories"])
    assert coco_ds.raw_names[0] == "person" and coco_ds.names[-1] == "toothbrush"
    assert coco_ds.records[0].path == coco128_json.parents[1] / "train2017" / "000000000009.jpg"
    # One crowd box checked against the json by hand: xywh -> xyxy.
    crowd = next(a for a in raw["annotations"] if a["iscrowd"])
    rec = next(rec for rec in coco_ds.records if rec.image_id == crowd["image_id"])
    x, y, w, h = crowd["bbox"]
    i = int(np.flatnonzero(rec.ignore)[0]) if rec.ignore.sum() == 1 else None
    if i is not None:
        np.testing.assert_allclose(rec.boxes[i], [x, y, x + w, y + h], atol=1e-4)
    for rec in coco_ds.records:
        _check_record_invariants(rec, coco_ds.names)


def test_yolo_and_coco_readers_agree(yolo_ds: Dataset, coco_ds: Dataset) -> None:
    coco_by_name = {rec.path.name: rec for rec in coco_ds.records}
    assert set(coco_by_name) == {rec.path.name for rec in yolo_ds.records}
    assert yolo_ds.names == coco_ds.names
    worst = 0.0
    for y in yolo_ds.records:
        c = coco_by_name[y.path.name]
        scale = np.array([c.width / y.width, c.height / y.height] * 2, dtype=np.float64)
        yb = y.boxes.astype(np.float64) * scale  # (N, 4) in full-size pixels
        cpos = ~c.ignore
        cb, cl = c.boxes[cpos].astype(np.float64), c.labels[cpos]
        assert len(yb) == len(cb), y.path.name
        unmatched = set(range(len(cb)))
        for box, lab in zip(yb, y.labels):
            cands = [j for j in unmatched if cl[j] == lab]
            j = min(cands, key=lambda j: np.abs(cb[j] - box).max())
            err = float(np.abs(cb[j] - box).max())
            worst = max(worst, err)
            unmatched.remove(j)
        assert not unmatched
    assert worst < 1e-3, worst


def test_tiny_coco16_finds_images_beside_the_json(data_dir: Path) -> None:
    ds = read_dataset(require_data(data_dir / "tiny-coco16" / "small_coco" / "instances_train2017_small.json"))
    r = ds.report
    assert r.images == 16 and len(ds.records) == 16 and r.problems == []
    assert r.boxes + r.ignored == 197
    assert all(rec.path.is_file() and rec.path.parent.name == "train_2017_small" for rec in ds.records)


def test_lvis_val_100_without_images(lvis_json: Path) -> None:
    raw = json.loads(lvis_json.read_text())
    ds = read_dataset(lvis_json, require_images=False)  # dispatches to LVIS (neg_category_ids)
    r = ds.report
    assert (r.images, len(ds.records), r.boxes, r.problems) == (100, 100, 977, [])
    assert len(ds.names) == len(ds.raw_names) == len(ds.category_ids) == 1230
    assert all("_" not in n and n == n.strip() for n in ds.names)
    assert len(set(ds.names)) == 1230  # colliding cleaned names keep their qualifier
    assert "bow (weapon)" in ds.names and "bow (decorative ribbons)" in ds.names
    cats = {c["id"]: c for c in raw["categories"]}
    for cid, raw_name, name in zip(ds.category_ids, ds.raw_names, ds.names):
        assert raw_name == cats[cid]["name"]
        if "(" not in name:
            assert name == clean_name(cats[cid]["synonyms"][0])
    by_id = {img["id"]: img for img in raw["images"]}
    for rec in ds.records:
        img = by_id[rec.image_id]
        assert rec.neg_category_ids == img["neg_category_ids"]
        assert rec.not_exhaustive_category_ids == img["not_exhaustive_category_ids"]
        assert (rec.height, rec.width) == (img["height"], img["width"])
        assert rec.path.name == img["coco_url"].rsplit("/", 1)[-1]
        _check_record_invariants(rec, ds.names)
    assert any(rec.neg_category_ids for rec in ds.records)
    assert any(rec.not_exhaustive_category_ids for rec in ds.records)
    assert ds.records[0].texts[0] == ds.names[int(ds.records[0].labels[0])]


def test_lvis_requires_images_by_default_and_names_tried_folders(lvis_json: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tried .*lvis_val_100"):
        read_lvis(lvis_json)


def test_lvis_finds_images_under_split_folder(lvis_json: Path, coco128_images: list[Path], tmp_path: Path) -> None:
    raw = json.loads(lvis_json.read_text())
    img = dict(
        raw["images"][0], coco_url="http://images.cocodataset.org/val2017/000000000009.jpg", width=640, height=480
    )
    (tmp_path / "val2017").mkdir()
    shutil.copy(coco128_images[0], tmp_path / "val2017" / "000000000009.jpg")
    one = dict(raw, images=[img], annotations=[])
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(one))
    ds = read_lvis(path, tmp_path)
    assert ds.records[0].path == tmp_path / "val2017" / "000000000009.jpg"
    assert ds.report.background == 1 and ds.report.problems == []


# ------------------------------------------------------------------------------------------
# YOLO data yaml resolution
# ------------------------------------------------------------------------------------------


def test_yaml_path_forms(tmp_path: Path, data_dir: Path, yolo_ds: Dataset) -> None:
    names = {i: n for i, n in enumerate(yolo_ds.raw_names)}
    absolute = _write_yaml(tmp_path, {"path": str(data_dir / "coco128"), "train": "images/train2017", "names": names})
    assert read_yolo(absolute).report.boxes == 929
    # `path` relative to the yaml's folder; names as a list; the val split.
    rel = Path("..") / Path(*([".."] * (len(tmp_path.parts) - 1))) / str(data_dir / "coco128").lstrip("/")
    sub = tmp_path / "sub"
    sub.mkdir()
    relative = _write_yaml(sub, {"path": str(rel), "val": "images/train2017", "names": list(yolo_ds.raw_names)})
    ds = read_yolo(relative, "val")
    assert ds.report.images == 128 and ds.report.boxes == 929
    with pytest.raises(ValueError, match=r"no 'train' split .*'val'"):
        read_yolo(relative, "train")
    # A .txt image list ("./" lines relative to the list file) and a list of sources.
    listed = sorted((data_dir / "coco128" / "images" / "train2017").glob("*.jpg"))[:3]
    (tmp_path / "list.txt").write_text("\n".join(str(p) for p in listed) + "\n")
    body = {"path": str(tmp_path), "train": ["list.txt"], "names": names}
    ds = read_yolo(_write_yaml(tmp_path, body, "list.yaml"))
    assert [rec.path for rec in ds.records] == listed
    assert ds.report.problems == []  # no orphan-label scan for list files: a list is a chosen subset


def test_yaml_relative_path_falls_back_to_working_directory(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ultralytics resolves a relative `path` against the working directory; the yaml's folder wins
    # when both exist, the working directory is the fallback (datasets/coco128.yaml relies on it).
    (tmp_path / "ds").symlink_to(data_dir / "coco128")
    (tmp_path / "cfg").mkdir()
    spec = _write_yaml(
        tmp_path / "cfg", {"path": "ds", "train": "images/train2017", "names": [f"x{i}" for i in range(80)]}
    )
    monkeypatch.chdir(tmp_path)
    assert read_yolo(spec).report.images == 128
    with pytest.raises(ValueError, match="image_dir does not apply"):
        read_dataset(spec, image_dir=tmp_path)


def test_yaml_errors(tmp_path: Path, data_dir: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("names: [a, b\ntrain: x\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        read_yolo(bad)
    gaps = _write_yaml(
        tmp_path,
        {"path": str(data_dir / "coco128"), "train": "images/train2017", "names": {0: "a", 2: "b"}},
        "gaps.yaml",
    )
    with pytest.raises(ValueError, match=r"gaps.yaml: 'names' keys"):
        read_yolo(gaps)
    missing = _write_yaml(tmp_path, {"path": str(tmp_path), "train": "nowhere", "names": ["a"]}, "missing.yaml")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_yolo(missing)


# ------------------------------------------------------------------------------------------
# Generated bad input
# ------------------------------------------------------------------------------------------


@pytest.fixture()
def bad_yolo(tmp_path: Path, coco128_images: list[Path]) -> Path:
    """A YOLO dataset with every kind of bad label; image a.jpg is 640x480 (w x h)."""
    images = tmp_path / "ds" / "images" / "train"
    labels = tmp_path / "ds" / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for name in ("a", "b", "c", "d"):
        shutil.copy(coco128_images[0], images / f"{name}.jpg")
    (labels / "a.txt").write_text(
        "\n".join(
            [
                "0 0.5 0.5 0.25 0.5",  # 1 good: [240, 120, 400, 360]
                "1 0.5 0.5 0 0.2",  # 2 zero width
                "1 0.5 0.5 -0.1 0.2",  # 3 negative width
                "2 nan 0.5 0.1 0.1",  # 4 NaN
                "2 0.5 inf 0.1 0.1",  # 5 inf
                "0 1.5 0.5 0.2 0.2",  # 6 fully outside (x from 896 to 1024 px)
                "0 0.95 0.5 0.2 0.2",  # 7 partly outside: clipped to x2 = 640
                "0 0.5 0.5 0.2",  # 8 four columns
                "0 0.5 0.5 0.2 0.2 0.1",  # 9 six columns
                "0 0.5 abc 0.2 0.2",  # 10 non-numeric
                "3 0.5 0.5 0.2 0.2",  # 11 class out of range (3 classes)
                "-1 0.5 0.5 0.2 0.2",  # 12 negative class
                "0.5 0.5 0.5 0.2 0.2",  # 13 fractional class
                "",  # blank line: ignored
                "2 0.1 0.1 0.3 0.1 0.2 0.4",  # 15 polygon -> bounding box [64, 48, 192, 192]
                "1 0.25 0.25 0.5 0.5",  # 16 good, touching the corner
            ]
        )
        + "\n"
    )
    (labels / "b.txt").write_text("")  # empty label file: background, no problem
    # c.jpg has no label file: background.
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (images / "d.jpg").write_bytes(b"this is not a jpeg")  # unreadable even without verification
    (labels / "d.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    data = coco128_images[0].read_bytes()
    (images / "e.jpg").write_bytes(data[: len(data) // 2])  # truncated: header fine, pixels missing
    (labels / "e.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    return _write_yaml(
        tmp_path, {"path": str(tmp_path / "ds"), "train": "images/train", "names": ["person", "bicycle", "car"]}
    )


def test_yolo_bad_input_is_skipped_and_reported(bad_yolo: Path) -> None:
    ds = read_yolo(bad_yolo)
    r = ds.report
    recs = {rec.path.name: rec for rec in ds.records}
    assert sorted(recs) == ["a.jpg", "b.jpg", "c.jpg"]  # d.jpg unreadable; e.jpg truncated (its end is read)
    assert r.images == 5 and r.labelled == 1 and r.background == 2
    a = recs["a.jpg"]
    assert (a.width, a.height) == (640, 480)
    np.testing.assert_allclose(
        a.boxes, [[240, 120, 400, 360], [544, 192, 640, 288], [64, 48, 192, 192], [0, 0, 320, 240]], atol=1e-4
    )
    assert a.labels.tolist() == [0, 0, 2, 1] and a.texts == ["person", "person", "car", "bicycle"]
    assert r.clipped == 1 and r.boxes == 4 and r.invalid == 11  # lines 2-6 and 8-13
    reasons = _reasons(ds, "a.txt")
    expected_lines = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert sorted(int(x.split(":")[0].split()[1]) for x in reasons) == expected_lines
    by_line = {int(x.split(":")[0].split()[1]): x for x in reasons}
    assert "zero or negative size" in by_line[2] and "zero or negative size" in by_line[3]
    assert "non-finite" in by_line[4] and "non-finite" in by_line[5]
    assert "fully outside" in by_line[6]
    assert "clipped" in by_line[7] and "skipped" not in by_line[7]
    assert "columns" in by_line[8] and "columns" in by_line[9]
    assert "non-numeric" in by_line[10]
    assert all("out of range" in by_line[n] for n in (11, 12, 13))
    assert _reasons(ds, "b.txt") == [] and _reasons(ds, "c.") == []
    assert _reasons(ds, "orphan.txt") == ["label file without an image: ignored"]
    (d_reason,) = _reasons(ds, "d.jpg")
    assert d_reason.startswith("unreadable image")
    (e_reason,) = _reasons(ds, "e.jpg")
    assert e_reason == "truncated JPEG (end-of-image marker 0xFFD9 missing)"
    assert len(r.problems) == 12 + 1 + 1 + 1  # a.txt lines, orphan, d.jpg, e.jpg, nothing else


def test_yolo_verify_images_decodes_every_image(bad_yolo: Path) -> None:
    # f.jpg: 5000 bytes cut from the middle of its scan, its end intact: only a decode finds it
    data = (bad_yolo.parent / "ds" / "images" / "train" / "a.jpg").read_bytes()
    f = bad_yolo.parent / "ds" / "images" / "train" / "f.jpg"
    f.write_bytes(data[: len(data) // 2] + data[len(data) // 2 + 5000 :])
    assert _reasons(read_yolo(bad_yolo), "f.jpg") == []
    ds = read_yolo(bad_yolo, verify_images=True)
    assert sorted(rec.path.name for rec in ds.records) == ["a.jpg", "b.jpg", "c.jpg", "f.jpg"]  # f decodes
    (reason,) = _reasons(ds, "e.jpg")
    assert "truncated" in reason
    assert _reasons(ds, "f.jpg") == ["the decoder warned (Corrupt JPEG data: premature end of data segment): kept"]
    assert ds.report.images == 6


def test_yolo_exif_rotated_image_size(tmp_path: Path, coco128_images: list[Path]) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    Image.open(coco128_images[0]).save(tmp_path / "images" / "r.jpg", exif=exif, quality=90)
    (tmp_path / "labels" / "r.txt").write_text("0 0.5 0.25 0.5 0.5\n")
    ds = read_yolo(_write_yaml(tmp_path, {"train": "images", "names": ["x"]}))
    rec = ds.records[0]
    assert (rec.height, rec.width) == decode_image(rec.path).shape[:2] == (640, 480)
    np.testing.assert_allclose(rec.boxes, [[120, 0, 360, 320]], atol=1e-4)


def _coco_json(tmp_path: Path, coco128_images: list[Path]) -> Path:
    """A COCO json over two real 640x480 images in <tmp>/train2017, with bad annotations."""
    (tmp_path / "train2017").mkdir()
    (tmp_path / "annotations").mkdir()
    shutil.copy(coco128_images[0], tmp_path / "train2017" / "a.jpg")
    shutil.copy(coco128_images[0], tmp_path / "train2017" / "b.jpg")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0},  # good
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "iscrowd": 1},  # crowd
        {"id": 3, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # unknown cat
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [600, 400, 100, 100], "iscrowd": 0},  # clipped
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [700, 10, 10, 10], "iscrowd": 0},  # outside
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "iscrowd": 0},  # 3 numbers
        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [1, "x", 3, 4], "iscrowd": 0},  # not numeric
        {"id": 9, "image_id": 42, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0},  # unknown image
        {"id": 10, "image_id": 3, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0},  # missing file
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
            {"id": 2, "file_name": "b.jpg", "width": 640, "height": 480},
            {"id": 3, "file_name": "missing.jpg", "width": 640, "height": 480},
        ],
        "annotations": anns,
        "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}],
    }
    path = tmp_path / "annotations" / "instances_train2017.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_bad_input_is_skipped_and_reported(tmp_path: Path, coco128_images: list[Path]) -> None:
    path = _coco_json(tmp_path, coco128_images)
    before = path.read_text()
    ds = read_coco(path)
    r = ds.report
    assert ds.names == ["person", "car"] and ds.category_ids == [1, 3]
    assert [rec.path.name for rec in ds.records] == ["a.jpg", "b.jpg"]
    a = ds.records[0]
    np.testing.assert_allclose(a.boxes, [[10, 20, 40, 60], [0, 0, 100, 100], [600, 400, 640, 480]])
    assert a.labels.tolist() == [1, 0, 0] and a.ignore.tolist() == [False, True, False]
    assert a.texts == ["car", "person", "person"]
    assert (r.images, r.labelled, r.background, r.boxes, r.ignored, r.clipped) == (3, 1, 1, 2, 1, 1)
    json_problems = {
        int(re.search(r"annotation id (\d+)", x).group(1)): x for x in _reasons(ds, "instances_train2017.json")
    }
    assert sorted(json_problems) == [3, 4, 5, 6, 7, 8, 9]
    assert "unknown category_id 99" in json_problems[3]
    assert "zero or negative size" in json_problems[4]
    assert "clipped" in json_problems[5]
    assert "fully outside" in json_problems[6]
    assert "bbox must be" in json_problems[7] and "not a number" in json_problems[8]
    assert "image_id 42" in json_problems[9]
    assert _reasons(ds, "missing.jpg") == ["image file not found"]
    assert path.read_text() == before
    # Annotations only (evaluation ground truth): the missing image becomes a record.
    gt = read_coco(path, require_images=False)
    assert [rec.path.name for rec in gt.records] == ["a.jpg", "b.jpg", "missing.jpg"]


def test_coco_verify_images_checks_size_and_corruption(tmp_path: Path, coco128_images: list[Path]) -> None:
    path = _coco_json(tmp_path, coco128_images)
    data = json.loads(path.read_text())
    data["images"][1]["width"] = 500  # b.jpg is really 640 wide
    path.write_text(json.dumps(data))
    (tmp_path / "train2017" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    assert [rec.path.name for rec in read_coco(path).records] == ["a.jpg", "b.jpg"]  # only existence checked
    ds = read_coco(path, verify_images=True)
    assert ds.records == []
    assert "unreadable image" in _reasons(ds, "a.jpg")[0]
    assert "640x480 (w x h) but annotated as 500x480" in _reasons(ds, "b.jpg")[0]


def test_coco_image_folder_resolution(tmp_path: Path, coco128_images: list[Path]) -> None:
    path = _coco_json(tmp_path, coco128_images)
    other = tmp_path / "x" / "elsewhere"  # not beside or below the json's folder: not searched
    other.parent.mkdir()
    (tmp_path / "train2017").rename(other)
    with pytest.raises(FileNotFoundError, match=r"tried .*train2017"):
        read_coco(path)
    ds = read_coco(path, other)
    assert [rec.path.parent for rec in ds.records] == [other, other]
    with pytest.raises(FileNotFoundError, match="nope"):
        read_coco(path, tmp_path / "nope")


def test_unreadable_json_is_a_whole_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "instances_x.json"
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"instances_x.json: not valid JSON"):
        read_dataset(path)
    path.write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"instances_x.json: field 'categories'"):
        read_coco(path)
    with pytest.raises(ValueError, match="unsupported dataset file type"):
        (tmp_path / "x.csv").write_text("")
        read_dataset(tmp_path / "x.csv")


# ------------------------------------------------------------------------------------------
# ODVG
# ------------------------------------------------------------------------------------------


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_odvg_grounding(tmp_path: Path, coco128_images: list[Path]) -> None:
    root = coco128_images[0].parent
    a, b = coco128_images[0].name, coco128_images[1].name
    rows = [
        {
            "filename": a,
            "height": 480,
            "width": 640,
            "grounding": {
                "caption": "a bowl of broccoli next to an orange",
                "regions": [
                    {"bbox": [1, 2, 101, 52], "phrase": "a bowl", "tokens_positive": [[0, 6]]},
                    {
                        "bbox": [[10, 10, 20, 20], [30, 30, 700, 40]],
                        "phrase": "broccoli",
                        "tokens_positive": [[10, 18]],
                    },
                    {"bbox": [5, 5, 5, 9], "phrase": "an orange", "tokens_positive": [[28, 37]]},
                    {"bbox": [5, 5, 6, 9], "phrase": ""},
                ],
            },
        },
        "{not json",
        {"filename": "nope.jpg", "height": 10, "width": 10, "grounding": {"caption": "", "regions": []}},
        {"filename": b, "grounding": {"caption": "nothing", "regions": []}},
    ]
    ds = read_odvg(_jsonl(tmp_path / "g.jsonl", rows), root)
    r = ds.report
    assert ds.names == [] and [rec.path.name for rec in ds.records] == [a, b]
    rec = ds.records[0]
    assert rec.texts == ["a bowl", "broccoli", "broccoli"] and rec.labels.tolist() == [-1, -1, -1]
    np.testing.assert_allclose(rec.boxes, [[1, 2, 101, 52], [10, 10, 20, 20], [30, 30, 640, 40]])
    assert ds.records[1].image_id == Path(b).stem  # size read from the file when the line has none
    assert (ds.records[1].height, ds.records[1].width) == decode_image(root / b).shape[:2]
    assert (r.images, r.labelled, r.background, r.boxes, r.clipped) == (4, 1, 1, 3, 1)
    reasons = [x for _, x in r.problems]
    assert any("line 2: not valid JSON" in x for x in reasons)
    assert any("region 2" in x and "zero or negative size" in x for x in reasons)
    assert any("region 3" in x and "phrase must be" in x for x in reasons)
    assert _reasons(ds, "nope.jpg") == ["image file not found"]


def test_odvg_detection_with_and_without_label_map(tmp_path: Path, coco128_images: list[Path]) -> None:
    root = coco128_images[0].parent
    a = coco128_images[0].name
    rows = [
        {
            "filename": a,
            "height": 480,
            "width": 640,
            "detection": {
                "instances": [
                    {"bbox": [10, 20, 110, 220], "label": 2, "category": "traffic_light"},
                    {"bbox": [0, 0, 50, 50], "label": 0, "category": "person"},
                    {"bbox": [0, 0, 50, 50], "label": 7},
                    {"bbox": [5, 5, 50, 50], "label": 0, "category": "man"},
                ]
            },
        }
    ]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    ds = read_dataset(path, image_dir=root)
    assert ds.names == ["person", "traffic light"] and ds.category_ids == [0, 2]
    assert ds.records[0].labels.tolist() == [1, 0, 0]
    assert ds.records[0].texts == ["traffic light", "person", "person"]
    assert any("label 7" in x for _, x in ds.report.problems)
    assert any("named 'man' here but 'person' earlier" in x for _, x in ds.report.problems)
    mapped = read_odvg(path, root, label_map={"0": "person", "1": "bicycle", "2": "car", "7": "truck"})
    assert mapped.names == ["person", "bicycle", "car", "truck"] and mapped.category_ids == [0, 1, 2, 7]
    assert mapped.records[0].labels.tolist() == [2, 0, 3, 0]
    assert mapped.records[0].texts == ["car", "person", "truck", "person"] and mapped.report.problems == []
    # The jsonl's own folder is the default image root when it holds the images.
    shutil.copy(coco128_images[0], tmp_path / a)
    assert read_odvg(path).records[0].path == tmp_path / a


# ------------------------------------------------------------------------------------------
# check_data and the CLI
# ------------------------------------------------------------------------------------------


def test_check_data_cli_on_coco128(
    tmp_path: Path, data_dir: Path, yolo_ds: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _write_yaml(
        tmp_path,
        {
            "path": str((data_dir / "coco128").resolve()),
            "train": "images/train2017",
            "val": "images/train2017",
            "names": dict(enumerate(yolo_ds.raw_names)),
        },
    )
    assert check_data(spec).boxes == 929
    assert main(["check-data", str(spec), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "80 classes, 128 usable images" in out
    assert "images 128, labelled 126, background 2, boxes 929" in out
    assert "000000000656.txt" in out and "000000000659.txt" in out
    assert "person" in out and " 254" in out


def test_check_data_cli_exit_codes(
    tmp_path: Path, coco128_images: list[Path], lvis_json: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _coco_json(tmp_path, coco128_images)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["check-data", str(path), "--image-dir", str(empty)]) == 1  # no usable image
    assert "no usable image" in capsys.readouterr().err
    assert main(["check-data", str(lvis_json)]) == 2  # no images for LVIS: a clear error
    assert "cannot find the images" in capsys.readouterr().err
    assert main(["check-data", str(lvis_json), "--annotations-only"]) == 0
    assert "images 100" in capsys.readouterr().out
