"""Run ``OnnxDetector(backend="openvino")`` in a process of its own, for ``tests/test_openvino.py``.

OpenVINO's CPU plugin keeps its own thread pool; the test suite's later forking tests (loader
workers, servers) stay clear of it when OpenVINO never loads in the pytest process.

    python -m tests.openvino_worker job.json

``job.json`` (every key but ``model`` and ``out`` optional)::

    {"model": "m.onnx", "out": "result.npz",
     "options": {"precision": "fp32", "static_shapes": 4, "threads": 2},
     "embeddings": {"names": [...], "file": "emb.npy"},       # set_class_embeddings
     "set_classes": [...],                                    # through the exported text encoder
     "raw": "inputs.npz",                                     # session.run on each array in it
     "predict": [{"source": "a.jpg", "conf": 0.25, "iou": 0.7, "imgsz": 320}, ...]}

``out`` gets ``pred{i}_boxes/_scores/_labels`` per predicted image, ``raw_{key}_{j}`` per raw
input and output, ``class_embeddings`` after ``set_classes``, and ``info`` (a JSON string: the
detector's repr, the static shapes compiled, OpenVINO's CPU capabilities) — or ``error``
(``"Type: message"``) if opening the file or running failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def run(job: dict) -> dict[str, np.ndarray]:
    """Carry out one job; the arrays to save."""
    import openvino as ov

    from ovdet.deploy import OnnxDetector

    capabilities = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    out: dict[str, np.ndarray] = {}
    info: dict = {"capabilities": capabilities}
    try:
        det = OnnxDetector(job["model"], backend="openvino", **job.get("options", {}))
        if "embeddings" in job:
            det.set_class_embeddings(job["embeddings"]["names"], np.load(job["embeddings"]["file"]))
        if "set_classes" in job:
            det.set_classes(job["set_classes"])
            out["class_embeddings"] = det.class_embeddings
        if "raw" in job:
            with np.load(job["raw"]) as inputs:
                for key in inputs.files:
                    for j, value in enumerate(det.session.run({"images": inputs[key]})):
                        out[f"raw_{key}_{j}"] = value
        for i, p in enumerate(job.get("predict", [])):
            (d,) = det.predict(p["source"], conf=p["conf"], iou=p["iou"], imgsz=p["imgsz"], keep_images=False)
            out[f"pred{i}_boxes"], out[f"pred{i}_scores"] = d.boxes.numpy(), d.scores.numpy()
            out[f"pred{i}_labels"] = d.labels.numpy()
        info["repr"] = repr(det)
        info["compiled_shapes"] = [
            {k: list(v) for k, v in shapes.items()} for shapes in det.session._run.compiled_shapes
        ]
    except Exception as e:  # reported to the test, which asserts on it
        info["error"] = f"{type(e).__name__}: {e}"
    out["info"] = np.array(json.dumps(info))
    return out


if __name__ == "__main__":
    job = json.loads(Path(sys.argv[1]).read_text())
    np.savez(job["out"], **run(job))
