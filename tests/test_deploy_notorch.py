"""The deployment runtime without PyTorch: ``OnnxDetector`` in a process where ``import torch`` fails.

The export is made here (with PyTorch); ``tests/notorch_worker.py`` then runs the same scenario
(construct, predict paths, ``set_classes``, a streamed folder, ``load_embeddings``, arrays, the
``Detections`` methods) in a child process with torch made unimportable, and in this process,
and the two must agree: same boxes, scores and labels, numpy arrays there, tensors here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ovdet.deploy import OnnxDetector
from ovdet.text import save_embeddings
from tests.helpers import NAMES, make_detector
from tests.notorch_worker import run

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("paths", "folder", "arrays")


@pytest.fixture(scope="module")
def job(coco128_images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny dynamic-vocabulary export with its text encoder, real images, a folder with one
    unreadable file, and an embeddings file in the format ``ovdet embed`` writes."""
    root = tmp_path_factory.mktemp("notorch")
    det = make_detector(2)
    det.set_classes(NAMES)
    model = det.export(root / "m.onnx", dynamic_vocab=True, imgsz=320).path
    images = [str(p) for p in coco128_images[:3]]  # three sizes: several letterbox groups
    folder = root / "folder"
    folder.mkdir()
    for p in coco128_images[3:6]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    names = ["person", "car", "kite"]
    det.set_classes(names)
    emb = root / "emb.safetensors"
    save_embeddings(emb, names, det.class_embeddings, OnnxDetector(model).metadata["encoder_id"], ["{}"])
    return {
        "model": str(model),
        "images": images,
        "folder": str(folder),
        "classes": ["person", "umbrella", "dog", "bus"],
        "embeddings": str(emb),
        "conf": 0.05,
        "imgsz": 320,
    }


@pytest.fixture(scope="module")
def without_torch(job: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The worker's result from a child process in which torch cannot be imported."""
    work = tmp_path_factory.mktemp("child")
    spec = work / "job.json"
    spec.write_text(json.dumps({**job, "work": str(work), "out": str(work / "result.json")}))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.notorch_worker", str(spec)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((work / "result.json").read_text())


@pytest.fixture(scope="module")
def with_torch(job: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same scenario in this process, with PyTorch."""
    return run({**job, "work": str(tmp_path_factory.mktemp("parent"))})


def test_child_never_loaded_torch(without_torch: dict[str, Any]) -> None:
    assert without_torch["preloaded"] == [] and without_torch["torch_blocked"]
    assert without_torch["torch_modules"] == []


def test_predictions_equal_with_and_without_torch(without_torch: dict[str, Any], with_torch: dict[str, Any]) -> None:
    assert without_torch["export_names"] == with_torch["export_names"] == NAMES
    np.testing.assert_allclose(without_torch["class_embeddings"], with_torch["class_embeddings"], rtol=0, atol=1e-6)
    assert without_torch["stream"] == with_torch["stream"] == ["PredictionStream", 3, 1]  # broken.jpg skipped
    total = 0
    for source in SOURCES:
        got, ref = without_torch[source], with_torch[source]
        assert len(got) == len(ref) == 3, source
        for g, r in zip(got, ref):
            assert (g["path"], g["image_size"], g["names"], g["n"]) == (r["path"], r["image_size"], r["names"], r["n"])
            assert g["labels"] == r["labels"], (source, g["path"])
            np.testing.assert_allclose(np.reshape(g["boxes"], (-1, 4)), np.reshape(r["boxes"], (-1, 4)), atol=1e-3)
            np.testing.assert_allclose(g["scores"], r["scores"], atol=1e-5)
            assert g["types"] == ["numpy"] * 3 and g["dtypes"] == ["float32", "float32", "int64"]
            assert r["types"] == ["torch"] * 3 and r["dtypes"] == ["torch.float32", "torch.float32", "torch.int64"]
            for c_got, c_ref in zip(g["coco"], r["coco"], strict=True):
                assert (c_got["image_id"], c_got["category_id"]) == (c_ref["image_id"], c_ref["category_id"])
                np.testing.assert_allclose(c_got["bbox"], c_ref["bbox"], atol=1e-3)
            assert len(g["dict"]["detections"]) == g["n"] and g["confident"] == r["confident"]
            if g["n"]:  # the first detection and the last one's label, by indexing
                assert g["first"][1] == r["first"][1]
                np.testing.assert_allclose(g["first"][0], r["first"][0], atol=1e-3)
            assert g["plot"] == r["plot"] == [[*g["image_size"], 3], "uint8", g["n"] > 0]
            total += g["n"]
    assert all(g["saved"] == [*g["image_size"], 3] for g in without_torch["paths"])
    assert total > 20  # the comparison is about real boxes


def test_detections_contract_without_torch(without_torch: dict[str, Any], with_torch: dict[str, Any]) -> None:
    got, ref = without_torch["contract"], with_torch["contract"]
    assert got["types"] == ["numpy"] * 4 and ref["types"] == ["torch"] * 4
    assert got["dtypes"] == ["float32", "float32", "int64", "int64"]
    assert got["labels"] == [1, 1, 0, 2] and got["track_ids"] == [8, 10, 7, 9]  # descending, ties stable
    assert got["scores"] == pytest.approx([0.9, 0.5, 0.2, 0.2])
    assert got["boxes"][0] == [5, 5, 20, 20] and all(got["contiguous"])
    assert got["last"] == [2] and got["slice"] == [10, 7] and got["mask"] == [1, 1]
    assert got["xywh"] == ["numpy", [[5, 5, 15, 15], [3, 3, 27, 37], [0, 0, 10, 10], [1, 1, 1, 1]]]
    assert got["empty"] == [0, "int64"] and got["from_float_labels"] == [2, 1] and got["index_error"]
    assert got["errors"] == {
        "label out of range": "ValueError",
        "non-integer label": "ValueError",
        "bool labels": "TypeError",
        "x2 < x1": "ValueError",
        "nan box": "ValueError",
        "scores shape": "ValueError",
        "boxes shape": "ValueError",
        "track ids": "ValueError",
    }
    # with PyTorch: the same values, as tensors
    assert {k: v for k, v in got.items() if k not in ("types", "dtypes", "xywh", "empty")} == {
        k: v for k, v in ref.items() if k not in ("types", "dtypes", "xywh", "empty")
    }
    assert ref["dtypes"] == [f"torch.{d}" for d in got["dtypes"]] and ref["empty"] == [0, "torch.int64"]
