"""Pascal VOC reader (issue #30, item 1): both layouts on real files, and a broken-xml corpus.

Real files: Raccoon (LabelImg output, the annotator's absolute ``<path>`` inside, ``train.txt`` /
``val.txt`` beside ``annotations/`` and ``images/``), and a VOCdevkit layout the tests build
from coco128 images and their YOLO labels.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from ovdet.cli import main
from ovdet.data.readers import read_dataset, read_voc
from ovdet.data.readers.voc import parse_voc_xml
from tests.helpers import require_data


@pytest.fixture(scope="module")
def raccoon(data_dir: Path) -> Path:
    return require_data(data_dir / "raccoon", "Raccoon (Pascal VOC)")


def voc_xml(filename: str, size: tuple[int, int] | None, objects: list[dict], path: str | None = None) -> str:
    """A LabelImg-style annotation."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    if path is not None:
        ET.SubElement(root, "path").text = path
    if size is not None:
        s = ET.SubElement(root, "size")
        ET.SubElement(s, "width").text = str(size[0])
        ET.SubElement(s, "height").text = str(size[1])
        ET.SubElement(s, "depth").text = "3"
    for o in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = o["name"]
        ET.SubElement(obj, "difficult").text = str(int(o.get("difficult", 0)))
        if o["box"] is not None:
            b = ET.SubElement(obj, "bndbox")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), o["box"]):
                ET.SubElement(b, k).text = str(v)
    return ET.tostring(root, encoding="unicode")


@pytest.fixture
def devkit(tmp_path: Path, data_dir: Path, coco128_images: list[Path]) -> tuple[Path, dict[str, list]]:
    """A VOC2012-style folder of 8 coco128 images with their YOLO labels as VOC objects."""
    import yaml

    names = yaml.safe_load((data_dir / "coco128" / "coco128.yaml").read_text())["names"]
    root = tmp_path / "VOC2012"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    labels_dir = data_dir / "coco128" / "labels" / "train2017"
    truth: dict[str, list] = {}
    stems = []
    for img in coco128_images[:8]:
        label = labels_dir / f"{img.stem}.txt"
        if not label.is_file():
            continue
        h, w = cv2.imread(str(img)).shape[:2]
        objects = []
        for row in np.loadtxt(label, ndmin=2):
            cx, cy, bw, bh = row[1:] * [w, h, w, h]
            x1, y1 = max(1, round(cx - bw / 2) + 1), max(1, round(cy - bh / 2) + 1)  # 1-based
            x2, y2 = min(w, round(cx + bw / 2)), min(h, round(cy + bh / 2))
            if x2 > x1 and y2 > y1:
                objects.append({"name": names[int(row[0])], "box": (x1, y1, x2, y2)})
        shutil.copy(img, root / "JPEGImages" / img.name)
        (root / "Annotations" / f"{img.stem}.xml").write_text(
            voc_xml(img.name, (w, h), objects, path=f"/home/annotator/VOC/{img.name}")
        )
        truth[img.stem] = objects
        stems.append(img.stem)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(stems[:5]) + "\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(stems[5:]) + "\n")
    return root, truth


def test_raccoon_both_splits(raccoon: Path) -> None:
    train, val = read_voc(raccoon, "train"), read_voc(raccoon, "val")
    assert (len(train.records), len(val.records)) == (160, 40)
    assert train.report.boxes + val.report.boxes == 217 and not train.report.problems and not val.report.problems
    assert train.names == val.names == ["raccoon"] and train.category_ids == [1]
    assert not {r.image_id for r in train.records} & {r.image_id for r in val.records}
    # raccoon-1.xml: <xmin>81 <ymin>88 <xmax>522 <ymax>408 in a 650×417 image; its <path> is the
    # annotator's (/Users/datitran/...), never used: the image is found by <filename> instead.
    (r1,) = [r for r in train.records if r.image_id == "raccoon-1"]
    assert r1.path == raccoon / "images" / "raccoon-1.jpg" and (r1.width, r1.height) == (650, 417)
    np.testing.assert_array_equal(r1.boxes, np.array([[80, 87, 522, 408]], np.float32))
    assert read_dataset(raccoon, "val").report.boxes == 43  # pointing at the folder picks the reader


def test_devkit_layout_round_trips_coco128_boxes(devkit) -> None:
    root, truth = devkit
    train, val = read_dataset(root, "train"), read_dataset(root, "val")
    assert len(train.records) + len(val.records) == len(truth) and len(train.records) == 5
    found = sorted({o["name"] for objs in truth.values() for o in objs})
    assert train.raw_names == val.raw_names == found  # one vocabulary for every split
    for rec in train.records + val.records:
        objs = truth[rec.image_id]
        want = np.array([o["box"] for o in objs], np.float32)
        want[:, :2] -= 1
        np.testing.assert_array_equal(rec.boxes, want)
        assert rec.texts == [o["name"] for o in objs] and rec.path.parent == root / "JPEGImages"
    assert train.report.boxes == sum(len(truth[r.image_id]) for r in train.records)


def test_data_yaml_selects_voc_and_fixes_names(devkit, tmp_path: Path, capsys) -> None:
    root, truth = devkit
    extra = "zebra crossing"  # a name no xml holds keeps its place in the vocabulary
    found = sorted({o["name"] for objs in truth.values() for o in objs})
    names = [extra, *reversed(found)]
    data_yaml = tmp_path / "voc.yaml"
    data_yaml.write_text(f"format: voc\npath: {root.name}\ntrain: train\nval: ImageSets/Main/val.txt\nnames: {names}\n")
    ds = read_dataset(data_yaml, "val")
    assert ds.raw_names == names and len(ds.records) == len(truth) - 5
    rec = ds.records[0]
    assert [names[k] for k in rec.labels] == [o["name"] for o in truth[rec.image_id]]
    assert main(["check-data", str(data_yaml), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert f"images {len(truth) - 5}" in out and "problems 0" in out
    assert main(["check-data", str(root)]) == 0 and "images 5," in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: pascal\ntrain: train\n")
    with pytest.raises(ValueError, match="format 'pascal' is not one of yolo, voc"):
        read_dataset(bad)


def test_broken_corpus_is_skipped_counted_and_named(devkit) -> None:
    root, truth = devkit
    ann, images = root / "Annotations", root / "JPEGImages"
    stems = sorted(truth)
    some = images / f"{stems[0]}.jpg"
    h, w = cv2.imread(str(some)).shape[:2]

    def add(stem: str, text: str, image: bool = True) -> None:
        (ann / f"{stem}.xml").write_text(text)
        if image:
            shutil.copy(some, images / f"{stem}.jpg")

    good = voc_xml("x.jpg", (w, h), [{"name": "person", "box": (10, 10, 50, 60)}])
    add("truncated", good[: len(good) // 2])
    add("notxml", "this is not xml at all")
    add("bomb", '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bbbbbbbb">]><annotation>&b;</annotation>')
    add("wrongroot", "<labels><object/></labels>")
    add(
        "badobjects",
        voc_xml(
            "badobjects.jpg",
            (w, h),
            [
                {"name": "", "box": (1, 1, 5, 5)},
                {"name": "person", "box": (10, 10, 50, 60)},  # kept
                {"name": "person", "box": None},
                {"name": "person", "box": ("ten", 10, 50, 60)},
                {"name": "person", "box": (50, 10, 49, 60)},  # xmax = xmin - 1: zero width (xmin = xmax is 1 px)
                {"name": "person", "box": (60, 70, 20, 30)},  # inverted
                {"name": "person", "box": (5, 5, 40, 40), "difficult": 1},  # ignore region
            ],
        ),
    )
    add("wrongsize", voc_xml("wrongsize.jpg", (w * 2, h * 2), [{"name": "person", "box": (10, 10, w, h)}]))
    add("escape", voc_xml("../../../../etc/passwd", (w, h), [{"name": "person", "box": (1, 1, 5, 5)}]), image=False)
    add("absolute", voc_xml("/etc/hostname", (w, h), [{"name": "person", "box": (1, 1, 5, 5)}]), image=False)
    add("noimage", voc_xml("noimage.jpg", (w, h), [{"name": "person", "box": (1, 1, 5, 5)}]), image=False)
    add("byname", voc_xml("renamed-by-annotator.png", (w, h), [{"name": "person", "box": (1, 1, 9, 9)}]))
    listed = stems + [
        "truncated", "notxml", "bomb", "wrongroot", "badobjects", "wrongsize",
        "escape", "absolute", "noimage", "byname", "gone", stems[0],
    ]  # fmt: skip
    (root / "ImageSets" / "Main" / "all.txt").write_text("\n".join(listed) + "\n")

    ds = read_voc(root, "all", names=["person", *sorted({o["name"] for v in truth.values() for o in v} - {"person"})])
    report = ds.report
    problems = "\n".join(f"{f}: {r}" for f, r in report.problems)
    by_file = {Path(f).stem: r for f, r in report.problems}
    assert "not well-formed XML" in by_file["truncated"] and "truncated" in by_file["truncated"]
    assert "not well-formed XML" in by_file["notxml"]
    assert "DTD or entity" in by_file["bomb"]
    assert "root element is <labels>" in by_file["wrongroot"]
    assert "points outside the image folder" in problems and "'../../../../etc/passwd'" in problems
    assert "'/etc/hostname' points outside the image folder" in problems
    assert "image 'noimage.jpg' not found" in problems
    assert "gone.xml: listed in the split but the annotation file does not exist" in problems
    assert f"line {len(listed)}: {stems[0]!r} is listed twice" in problems
    assert "object 1: no <name>: skipped" in problems and "object 3 ('person'): no <bndbox>: skipped" in problems
    assert "<xmin> is 'ten', not a number" in problems
    assert problems.count("zero or negative size") == 2
    assert f"<size> says {2 * w}x{2 * h} but wrongsize.jpg is {w}x{h}: used the image's size" in problems
    recs = {r.image_id: r for r in ds.records}
    assert set(recs) == set(stems) | {"badobjects", "wrongsize", "byname"}
    bad = recs["badobjects"]
    assert bad.ignore.tolist() == [False, True] and bad.num_boxes == 1  # difficult = ignore region
    assert recs["byname"].path == images / "byname.jpg"  # the xml's stem when <filename> is wrong
    assert (recs["wrongsize"].width, recs["wrongsize"].height) == (w, h)
    assert report.ignored == 1 and report.images == len(listed) - 1  # the repeated stem is not read twice
    assert parse_voc_xml(ann / "badobjects.xml").filename == "badobjects.jpg"


def test_unknown_class_with_given_names_is_named(devkit) -> None:
    root, truth = devkit
    ds = read_voc(root, "train", names=["person"])
    others = [o for r in ds.records for o in truth[r.image_id] if o["name"] != "person"]
    assert others, "the fixture needs an image with a non-person object"
    unknown = [r for _, r in ds.report.problems if "is not in the vocabulary" in r]
    assert len(unknown) == len(others) and f"class {others[0]['name']!r}" in "\n".join(unknown)


def test_missing_split_and_empty_folder_are_errors(devkit, tmp_path: Path) -> None:
    root, _ = devkit
    with pytest.raises(FileNotFoundError, match="no split 'test'.*splits found: train, val"):
        read_voc(root, "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no xml annotations"):
        read_dataset(tmp_path / "empty")
    flat = tmp_path / "flat"  # xml beside the images, no split files: 'train' is everything
    flat.mkdir()
    for f in list((root / "Annotations").glob("*.xml"))[:3]:
        shutil.copy(f, flat / f.name)
        shutil.copy(root / "JPEGImages" / f"{f.stem}.jpg", flat / f"{f.stem}.jpg")
    assert len(read_dataset(flat).records) == 3


def test_training_and_validation_read_a_voc_data_yaml(devkit, tmp_path: Path) -> None:
    """``train`` reads the yaml's VOC train split and validates on its val split (issue #30, item 1)."""
    from ovdet import Detector
    from tests.helpers import TINY

    root, truth = devkit
    data_yaml = tmp_path / "voc.yaml"
    data_yaml.write_text(f"format: voc\npath: {root}\ntrain: train\nval: val\n")
    det = Detector.from_config(TINY, device="cpu")
    no_augment = {
        "mosaic": 0.0,
        "scale": [1.0, 1.0],
        "translate": 0.0,
        "hsv_h": 0,
        "hsv_s": 0,
        "hsv_v": 0,
        "fliplr": 0.0,
    }
    out = det.train(
        data=str(data_yaml), epochs=1, imgsz=128, batch=2, nbs=2, workers=0, device="cpu",
        augment=no_augment, project=str(tmp_path / "runs"), name="voc", val_interval=1,
    )  # fmt: skip
    found = sorted({o["name"] for objs in truth.values() for o in objs})
    assert det.names == found and out["metrics"]["images"] == len(truth) - 5
    assert 0.0 <= out["metrics"]["AP"] <= 1.0


def test_cli_train_and_val_take_a_voc_folder(devkit, tmp_path: Path, capsys) -> None:
    """``--data`` may be a VOC folder (train reads its train split, val its val split)."""
    from tests.helpers import TINY

    root, truth = devkit
    runs = tmp_path / "runs"
    args = ["--epochs", "1", "--imgsz", "128", "--batch", "2", "--workers", "0", "--device", "cpu", "--quiet"]
    code = main(["train", "--model", str(TINY), "--data", str(root), "--val-data", str(root),
                 "--project", str(runs), "--name", "voc", *args])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "1 epochs done" in out
    model = runs / "voc" / "weights" / "last"
    assert main(["val", "--model", str(model), "--data", str(root), "--imgsz", "128", "--quiet"]) == 0
    assert f"{len(truth) - 5} images, 0 skipped" in capsys.readouterr().out
    assert main(["val", "--model", str(model), "--data", str(tmp_path / "nowhere")]) == 2
    assert "dataset not found" in capsys.readouterr().err
