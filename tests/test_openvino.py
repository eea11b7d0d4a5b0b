"""``OnnxDetector(backend="openvino")``: exported graphs on OpenVINO's CPU plugin (issue #12).

fp32 kernels must reproduce PyTorch (same boxes at IoU > 0.99, scores within 1e-4, on real
coco128 images, through both the static-shape copies and the dynamic graph); bf16 kernels (AMX /
AVX512_BF16) must keep the trained ovdet-demo's fp32 boxes as the int8 export does. OpenVINO runs
in a child process (``tests/openvino_worker.py``), never in the pytest process.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ovdet import Detections, Detector
from ovdet.deploy import OnnxDetector
from ovdet.deploy.session import open_session
from ovdet.export.check import match_detections
from tests.helpers import assert_same_predictions, clear_nms, decoded_outputs, minilm_yolov8n, v2s_detector

ROOT = Path(__file__).resolve().parents[1]

#: lower bound on the fraction of PyTorch fp32 boxes bf16 keeps (measured: 129/131 = 0.985,
#: the int8 export 0.954); the room is for other CPUs' bf16 kernels.
BF16_KEEPS = 0.92


def run_openvino(job: dict, tmp_path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Run ``job`` (see ``tests/openvino_worker.py``) in a child process; (arrays, info)."""
    out = tmp_path / f"openvino-{len(list(tmp_path.glob('openvino-*.npz')))}.npz"
    spec = tmp_path / (out.stem + ".json")
    spec.write_text(json.dumps({**job, "out": str(out)}))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.openvino_worker", str(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as f:
        arrays = {k: f[k] for k in f.files}
    return arrays, json.loads(str(arrays.pop("info")))


def _detections(arrays: dict[str, np.ndarray], n: int, names: list[str]) -> list[Detections]:
    return [
        Detections(arrays[f"pred{i}_boxes"], arrays[f"pred{i}_scores"], arrays[f"pred{i}_labels"], names, (1, 1))
        for i in range(n)
    ]


def _clear_jobs(det: Detector, paths: list[Path], size: int = 320) -> list[dict]:
    """One predict entry per image, at thresholds where no NMS decision is a near-tie."""
    nms = clear_nms(det, [cv2.imread(str(p)) for p in paths], size)
    return [{"source": str(p), "conf": n.conf, "iou": n.iou, "imgsz": size} for p, n in zip(paths, nms)]


def _reference(det: Detector, jobs: list[dict]) -> list[Detections]:
    return [
        det.predict(j["source"], conf=j["conf"], iou=j["iou"], imgsz=j["imgsz"], keep_images=False)[0] for j in jobs
    ]


def test_fp32_equals_pytorch_through_static_and_dynamic_shapes(coco128_images: list[Path], tmp_path: Path) -> None:
    """v2-s, baked vocabulary: raw outputs and predictions on five coco128 photos of three
    letterboxed shapes, with two static copies, so the third shape runs on the dynamic graph."""
    det = v2s_detector()
    path = det.export(tmp_path / "m.onnx", imgsz=320).path
    paths = coco128_images[:5]
    raws = decoded_outputs(det.model, [cv2.imread(str(p)) for p in paths], det.class_embeddings)
    np.savez(tmp_path / "inputs.npz", **{f"x{i}": x.numpy() for i, (x, _, _) in enumerate(raws)})
    jobs = _clear_jobs(det, paths)
    arrays, info = run_openvino(
        {
            "model": str(path),
            "options": {"precision": "fp32", "static_shapes": 2, "threads": 2},
            "raw": str(tmp_path / "inputs.npz"),
            "predict": jobs,
        },
        tmp_path,
    )
    assert "error" not in info, info["error"]
    assert "backend=openvino" in info["repr"] and "precision=fp32" in info["repr"]
    shapes = {tuple(x.shape) for x, _, _ in raws}
    assert len(shapes) == 3 and len(info["compiled_shapes"]) == 2  # the third shape ran dynamic
    for i, (_, boxes, scores) in enumerate(raws):
        np.testing.assert_allclose(arrays[f"raw_x{i}_1"][0], scores.numpy(), rtol=0, atol=1e-4)
        assert np.abs(arrays[f"raw_x{i}_0"][0] - boxes.numpy()).max() < 0.05  # px
    assert_same_predictions(_reference(det, jobs), _detections(arrays, len(jobs), det.names))


def test_dynamic_vocabulary_on_openvino(coco128_images: list[Path], tmp_path: Path) -> None:
    """A real COCO detector (YOLOv8n in MiniLM space, whose encoder exports offline) exported with
    a dynamic vocabulary, given one it never saw: by embeddings it equals PyTorch; by names,
    through the exported text encoder, the embeddings equal PyTorch's."""
    demo = minilm_yolov8n().set_classes(["person", "bus", "dog", "car", "chair"])
    path = demo.export(tmp_path / "demo.onnx", dynamic_vocab=True).path
    det = copy.copy(demo)
    vocab = ["person", "umbrella", "backpack", "traffic light", "handbag"]
    det.set_classes(vocab)
    np.save(tmp_path / "emb.npy", det.class_embeddings.numpy())
    chosen = ("000000000036.jpg", "000000000049.jpg", "000000000086.jpg", "000000000110.jpg")
    jobs = _clear_jobs(det, [p for p in coco128_images if p.name in chosen])
    arrays, info = run_openvino(
        {
            "model": str(path),
            "options": {"threads": 2},
            "embeddings": {"names": vocab, "file": str(tmp_path / "emb.npy")},
            "predict": jobs,
        },
        tmp_path,
    )
    assert "error" not in info, info["error"]
    ref = _reference(det, jobs)
    assert sum(len(r) for r in ref) >= 4
    assert_same_predictions(ref, _detections(arrays, len(jobs), vocab))
    arrays, info = run_openvino({"model": str(path), "options": {"threads": 2}, "set_classes": vocab}, tmp_path)
    assert "error" not in info, info["error"]
    np.testing.assert_allclose(arrays["class_embeddings"], det.class_embeddings.numpy(), rtol=0, atol=1e-5)


def test_bf16_keeps_fp32_boxes(coco128_images: list[Path], tmp_path: Path) -> None:
    """ovdet-demo on coco128's last 64 images (the int8 test's held-out set): OpenVINO's bf16
    kernels keep PyTorch's fp32 boxes (score > 0.25) at IoU >= 0.9 with the same label. A CPU
    without bfloat16 instructions must refuse bf16 with a message saying so."""
    demo = Detector.from_pretrained("ovdet-demo", device="cpu").set_classes(["person", "bus", "dog", "car", "chair"])
    path = demo.export(tmp_path / "demo.onnx").path
    paths = coco128_images[64:128]
    jobs = [{"source": str(p), "conf": 0.25, "iou": 0.7, "imgsz": 640} for p in paths]
    arrays, info = run_openvino(
        {"model": str(path), "options": {"precision": "bf16", "threads": 2}, "predict": jobs}, tmp_path
    )
    if "BF16" not in info["capabilities"]:
        assert info["error"].startswith("ValueError") and "bfloat16 instructions" in info["error"], info
        return
    assert "error" not in info, info["error"]
    assert "precision=bf16" in info["repr"] and len(info["compiled_shapes"]) == 4
    ref = demo.predict([str(p) for p in paths], conf=0.25, iou=0.7, imgsz=640, keep_images=False)
    report = match_detections(ref, _detections(arrays, len(jobs), demo.names), iou=0.9, min_score=0.25)
    assert report.reference >= 120 and report.fraction >= BF16_KEEPS, str(report)  # ovdet-demo: 131 boxes
    assert report.min_iou >= 0.9


def test_openvino_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors name the file, the option and the fix; none of these loads OpenVINO here."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not an onnx model\xff" * 10)
    with pytest.raises(ValueError, match="no bfloat16 kernels.*backend='openvino'"):
        open_session(bad, precision="bf16")
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        OnnxDetector(bad, backend="tensorflow")
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        OnnxDetector(bad, backend="openvino", precision="fp16")
    with pytest.raises(ValueError, match="onnxruntime execution providers"):
        OnnxDetector(bad, backend="openvino", providers=["CUDAExecutionProvider"])
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        OnnxDetector(tmp_path / "missing.onnx", backend="openvino")
    with monkeypatch.context() as m, pytest.raises(ImportError, match=r'pip install "ovdet\[openvino\]"'):
        m.setitem(sys.modules, "openvino", None)
        OnnxDetector(bad, backend="openvino")
    _, info = run_openvino({"model": str(bad)}, tmp_path)
    assert info["error"].startswith("ValueError") and str(bad) in info["error"]
    assert "OpenVINO cannot load this file" in info["error"]
