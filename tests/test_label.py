"""``ovdet label``: coco128 images + prompts → a YOLO or COCO dataset that ``ovdet check-data``,
ovdet's readers and ultralytics read back with the detector's boxes; resumable; prompt=name maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ovdet import Detector
from ovdet.cli import main
from ovdet.data.readers import read_dataset
from ovdet.datatools import DatasetWriter, list_images, parse_class_map
from ovdet.datatools.label import STATE_FILE, split_of

CLASSES = "person,car=vehicle,bus=vehicle,dog"


@pytest.fixture()
def folder(tmp_path: Path, coco128_images: list[Path]) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for p in coco128_images[:12]:
        (src / p.name).symlink_to(p)
    return src


def _expected(paths: list[Path]) -> dict[str, np.ndarray]:
    """Per file name: (N, 5) rows x1, y1, x2, y2, dataset class, from Detector.predict at the label defaults."""
    det = Detector.from_pretrained("ovdet-demo", device="cpu")
    cmap = parse_class_map(CLASSES.split(","))
    det.set_classes(cmap.prompts)
    out = {}
    for d in det.predict([str(p) for p in paths], conf=0.3, iou=0.7):
        cls = np.array([cmap.index[i] for i in d.labels.tolist()], dtype=np.float64)
        out[Path(d.path).name] = np.concatenate([d.boxes.numpy(), cls[:, None]], 1).reshape(-1, 5)
    return out


def _records(spec: Path, split: str) -> dict[str, np.ndarray]:
    ds = read_dataset(spec, split)
    return {r.path.name: np.concatenate([r.boxes, r.labels[:, None]], 1).reshape(-1, 5) for r in ds.records}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], tol: float = 0.02) -> None:
    assert set(got) == set(want)
    for name in want:
        a = got[name][np.lexsort(got[name].T[::-1])]
        b = want[name][np.lexsort(want[name].T[::-1])]
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, atol=tol, err_msg=name)


def test_label_yolo_round_trip(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ds"
    argv = ["label", "--model", "ovdet-demo", "--classes", CLASSES, "--source", str(folder), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--val-split", "0.25", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "12 labelled now, 0 already done" in text and "vehicle" in text
    data = out / "data.yaml"
    assert (out / "contact_sheet.png").stat().st_size > 10_000
    assert main(["check-data", str(data)]) == 0 and main(["check-data", str(data), "--split", "val"]) == 0

    want = _expected(sorted(folder.iterdir()))
    assert sum(len(v) for v in want.values()) >= 10, "the round trip needs boxes"
    got = {**_records(data, "train"), **_records(data, "val")}
    _assert_same(got, want)
    splits = {p.name: split_of(str(p.resolve()), 0.25) for p in folder.iterdir()}
    assert {p.name for p in (out / "images" / "val").iterdir()} == {n for n, s in splits.items() if s == "val"}
    assert 0 < sum(s == "val" for s in splits.values()) < 12

    # ultralytics reads the same dataset: its yaml check, and its label verification per image
    from ultralytics.data.utils import check_det_dataset, img2label_paths, verify_image_label

    info = check_det_dataset(str(data))
    assert info["names"] == {0: "person", 1: "vehicle", 2: "dog"} and info["nc"] == 3
    theirs = {}
    for split in ("train", "val"):
        ims = sorted(str(p) for p in Path(info[split]).iterdir())
        for im, lb in zip(ims, img2label_paths(ims)):
            _, rows, shape, *_, msg = verify_image_label((im, lb, "", False, 3, 0, 0, False))
            assert msg == "", msg
            h, w = shape
            xy = rows[:, 1:3] * [w, h]
            wh = rows[:, 3:5] * [w, h]
            theirs[Path(im).name] = np.concatenate([xy - wh / 2, xy + wh / 2, rows[:, :1]], 1).reshape(-1, 5)
    _assert_same(theirs, want)


def test_label_coco_round_trip_and_resume(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "coco"
    files = sorted(folder.iterdir())
    argv = ["label", "--model", "ovdet-demo", "--classes", CLASSES, "--out", str(out), "--format", "coco"]
    argv += ["--device", "cpu", "--quiet", "--val-split", "0"]
    # first run on 5 images, then the whole folder: only the 7 new ones are labelled
    part = tmp_path / "part"
    part.mkdir()
    for p in files[:5]:
        (part / p.name).symlink_to(p.resolve())
    assert main([*argv, "--source", str(part)]) == 0
    assert "5 labelled now, 0 already done" in capsys.readouterr().out
    state_before = (out / STATE_FILE).read_text().splitlines()
    assert main([*argv, "--source", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "5 already labelled, 7 to do" in printed and "7 labelled now, 5 already done" in printed
    state = (out / STATE_FILE).read_text().splitlines()
    assert state[: len(state_before)] == state_before and len(state) == 1 + 12
    # the first 5 sources were not redone (each source appears once)
    sources = [json.loads(line)["source"] for line in state[1:]]
    assert len(set(sources)) == 12
    # a third run has nothing to do
    assert main([*argv, "--source", str(folder)]) == 0
    assert "0 to do" in capsys.readouterr().out

    spec = out / "annotations" / "instances_train.json"
    assert main(["check-data", str(spec)]) == 0
    got = _records(spec, "train")
    want = _expected(files)
    # part/ links point at the coco128 files themselves, so sources dedupe across runs
    _assert_same(got, want)
    coco = json.loads(spec.read_text())
    assert [c["name"] for c in coco["categories"]] == ["person", "vehicle", "dog"]


def test_label_refuses_other_classes_and_reports_bad_images(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "ds"
    argv = ["label", "--model", "ovdet-demo", "--source", str(folder), "--out", str(out), "--device", "cpu", "--quiet"]
    assert main([*argv, "--classes", "person,dog"]) == 0
    text = capsys.readouterr().out
    assert "12 labelled now" in text and "1 skipped" in text and "broken.jpg" in text
    assert main([*argv, "--classes", "person,cat"]) == 2
    assert "same --classes to resume" in capsys.readouterr().err
    assert main([*argv, "--classes", "person,dog", "--format", "coco"]) == 2
    assert main([*argv[:4], str(tmp_path / "missing"), *argv[5:], "--classes", "dog"]) == 2


def test_class_map_and_listing(folder: Path) -> None:
    cmap = parse_class_map(["hard hat", "person wearing a hard hat=worker", "man=person", "woman=person"])
    assert cmap.prompts == ["hard hat", "person wearing a hard hat", "man", "woman"]
    assert cmap.names == ["hard hat", "worker", "person"] and cmap.index == [0, 1, 2, 2]
    with pytest.raises(ValueError, match="twice"):
        parse_class_map(["a", "a=b"])
    with pytest.raises(ValueError, match="neither part empty"):
        parse_class_map(["=b"])
    assert len(list_images(folder)) == 12 and len(list_images(str(folder / "*.jpg"))) == 12
    with pytest.raises(FileNotFoundError):
        list_images(folder / "nothing-here")
    with pytest.raises(ValueError, match="format"):
        DatasetWriter(folder.parent / "x", cmap, format="voc")
