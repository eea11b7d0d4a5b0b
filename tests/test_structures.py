"""Detections: validation, COCO/JSON conversion, plotting and saving on a real image."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ovdet.structures import Detections

NAMES = ["person", "bus", "red backpack"]


@pytest.fixture(scope="module")
def image(coco128_images: list[Path]) -> np.ndarray:
    return cv2.imread(str(coco128_images[0]))  # (480, 640, 3)


def _dets(image: np.ndarray | None = None) -> Detections:
    return Detections(
        boxes=torch.tensor([[10.0, 20.0, 110.0, 220.5], [300.25, 40.0, 620.0, 470.0]]),
        scores=torch.tensor([0.9, 0.4]),
        labels=torch.tensor([2, 0]),
        names=NAMES,
        image_size=(480, 640),
        path="img.jpg",
        image=image,
    )


def test_fields_coerced_to_cpu_float32_int64() -> None:
    d = Detections(
        boxes=np.array([[0, 0, 5, 5]], dtype=np.float64),
        scores=[0.5],
        labels=torch.tensor([1], dtype=torch.int32),
        names=("a", "b"),
        image_size=(10, 10),
    )
    assert d.boxes.dtype == torch.float32 and d.scores.dtype == torch.float32 and d.labels.dtype == torch.int64
    assert d.names == ["a", "b"] and isinstance(d.names, list)
    assert len(d) == 1 and d.cpu() is d and d.boxes.device.type == "cpu"


def test_rows_sorted_by_descending_score() -> None:
    d = Detections(
        boxes=torch.tensor([[0.0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]]),
        scores=torch.tensor([0.2, 0.9, 0.5]),
        labels=torch.tensor([0, 1, 2]),
        names=NAMES,
        image_size=(10, 10),
    )
    assert d.scores.tolist() == pytest.approx([0.9, 0.5, 0.2])
    assert d.labels.tolist() == [1, 2, 0]
    assert d.boxes[:, 2].tolist() == [2.0, 3.0, 1.0]


def test_validation_errors_name_the_field() -> None:
    ok = dict(
        boxes=torch.zeros(2, 4),
        scores=torch.zeros(2),
        labels=torch.zeros(2, dtype=torch.int64),
        names=NAMES,
        image_size=(10, 10),
    )
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\), got \(2, 5\)"):
        Detections(**{**ok, "boxes": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match=r"scores must have shape \(2,\)"):
        Detections(**{**ok, "scores": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        Detections(**{**ok, "labels": torch.zeros(2, 1, dtype=torch.int64)})
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        Detections(**{**ok, "labels": torch.tensor([0, 3])})
    with pytest.raises(ValueError, match=r"labels must lie in"):
        Detections(**{**ok, "labels": torch.tensor([-1, 0])})
    with pytest.raises(ValueError, match="non-integer"):
        Detections(**{**ok, "labels": torch.tensor([0.5, 1.0])})
    with pytest.raises(ValueError, match="x2 >= x1"):
        Detections(**{**ok, "boxes": torch.tensor([[0.0, 0, 1, 1], [5, 0, 4, 1]])})
    with pytest.raises(ValueError, match="finite"):
        Detections(**{**ok, "scores": torch.tensor([0.1, float("nan")])})
    with pytest.raises(ValueError, match="image_size"):
        Detections(**{**ok, "image_size": (0, 10)})
    with pytest.raises(ValueError, match=r"image has shape \(5, 10\)"):
        Detections(**{**ok, "image": np.zeros((5, 10, 3), np.uint8)})
    with pytest.raises(ValueError, match="uint8"):
        Detections(**{**ok, "image": np.zeros((10, 10, 3), np.float32)})
    with pytest.raises(TypeError, match="names"):
        Detections(**{**ok, "names": "person"})


def test_to_coco_known_numbers() -> None:
    d = _dets()
    out = d.to_coco(image_id=42)
    assert out == [
        {"image_id": 42, "category_id": 2, "bbox": [10.0, 20.0, 100.0, 200.5], "score": pytest.approx(0.9)},
        {"image_id": 42, "category_id": 0, "bbox": [300.25, 40.0, 319.75, 430.0], "score": pytest.approx(0.4)},
    ]
    mapped = d.to_coco(7, category_ids=[1, 6, 27])
    assert [r["category_id"] for r in mapped] == [27, 1]
    json.dumps(mapped)  # plain Python types only
    assert all(type(v) is float for r in out for v in r["bbox"])
    with pytest.raises(ValueError, match="category_ids has 2 entries but there are 3 names"):
        d.to_coco(1, category_ids=[1, 2])


def test_to_coco_rounds_to_4_decimals() -> None:
    d = Detections(
        boxes=torch.tensor([[1.123456, 2.0, 3.5, 4.987654]]),
        scores=torch.tensor([0.1234567]),
        labels=torch.tensor([0]),
        names=["a"],
        image_size=(10, 10),
    )
    r = d.to_coco(0)[0]
    assert r["bbox"] == [1.1235, 2.0, 2.3765, 2.9877]
    assert r["score"] == 0.12346


def test_to_dict_is_json_ready() -> None:
    d = _dets()
    out = json.loads(json.dumps(d.to_dict()))
    assert out["path"] == "img.jpg" and out["image_size"] == [480, 640] and out["names"] == NAMES
    assert out["detections"][0] == {"box": [10.0, 20.0, 110.0, 220.5], "score": 0.9, "label": 2, "name": "red backpack"}
    assert len(out["detections"]) == 2


def test_empty() -> None:
    d = Detections.empty(NAMES, (480, 640), path="x.jpg")
    assert len(d) == 0 and d.boxes.shape == (0, 4) and d.labels.dtype == torch.int64
    assert d.to_coco(1) == [] and d.to_dict()["detections"] == []


def test_indexing() -> None:
    d = _dets()
    assert len(d[d.scores > 0.5]) == 1 and d[d.scores > 0.5].labels.tolist() == [2]
    assert d[-1].labels.tolist() == [0] and d[0].labels.tolist() == [2]
    with pytest.raises(IndexError):
        d[2]


def test_plot_draws_inside_boxes_and_does_not_mutate(image: np.ndarray) -> None:
    before = image.copy()
    d = _dets(image)
    out = d.plot()
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, image)
    np.testing.assert_array_equal(image, before)  # stored image untouched
    # Box edges are drawn: pixels along each box's left edge changed.
    for x1, y1, _x2, y2 in d.boxes.round().int().tolist():
        edge_out = out[y1 + 10 : y2 - 10, x1].astype(int)
        edge_in = image[y1 + 10 : y2 - 10, x1].astype(int)
        assert np.abs(edge_out - edge_in).sum(axis=1).mean() > 20
    # Far from any box or label, nothing changes.
    np.testing.assert_array_equal(out[300:400, 150:280], image[300:400, 150:280])
    # Deterministic, and colours depend on labels: different labels differ on their edges.
    np.testing.assert_array_equal(d.plot(), out)
    assert not np.array_equal(out[100, 10], out[200, 300])


def test_plot_with_passed_image_and_options(image: np.ndarray) -> None:
    d = _dets()  # no stored image
    with pytest.raises(ValueError, match="needs an image"):
        d.plot()
    a = d.plot(image=image, line_width=1, show_scores=False)
    b = d.plot(image=image, line_width=5)
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"\(240, 320\)"):
        d.plot(image=image[:240, :320])


def test_empty_plot_equals_input(image: np.ndarray) -> None:
    d = Detections.empty(NAMES, image.shape[:2], image=image)
    out = d.plot()
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)


def test_save_writes_readable_image(tmp_path: Path, image: np.ndarray) -> None:
    d = _dets(image)
    path = d.save(tmp_path / "nested" / "dir" / "out.png")
    back = cv2.imread(str(path))
    assert back is not None and back.shape == image.shape
    np.testing.assert_array_equal(back, d.plot())  # PNG is lossless
    jpg = d.save(tmp_path / "out.jpg")
    assert cv2.imread(str(jpg)).shape == image.shape
    with pytest.raises(ValueError, match="no file extension"):
        d.save(tmp_path / "noext")
    with pytest.raises(ValueError, match=r"out\.xyz"):
        d.save(tmp_path / "out.xyz")


def test_repr_is_short(image: np.ndarray) -> None:
    r = repr(_dets(image))
    assert r.startswith("Detections(n=2") and "image_size=(480, 640)" in r and len(r) < 200
