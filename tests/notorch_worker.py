"""Run the deployment runtime in a process where PyTorch cannot be imported, for ``tests/test_deploy_notorch.py``.

    python -m tests.notorch_worker job.json

:func:`main` makes ``torch`` and ``torchvision`` (and their submodules) unimportable before
anything else is imported, then runs :func:`run`; the test runs the same :func:`run` in its own
process, with PyTorch, and compares. ``job.json``::

    {"model": "m.onnx",                 # exported with dynamic_vocab=True (text encoder beside it)
     "images": ["a.jpg", ...],          # predicted as paths, then as decoded arrays
     "folder": "dir",                   # predicted with stream=True
     "classes": ["person", ...],        # set_classes through the exported text encoder
     "embeddings": "emb.safetensors",   # load_embeddings (a file as `ovdet embed` writes it)
     "conf": 0.05, "imgsz": 320,
     "work": "dir",                     # where Detections.save writes
     "out": "result.json"}              # main() only: where the result goes

The result (JSON) holds every prediction's fields, types and dtypes, what ``to_coco``,
``to_dict``, indexing, ``plot`` and ``save`` gave, checks of the ``Detections`` contract on
hand-made inputs, and the ``torch*`` modules loaded at the end.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Top-level packages made unimportable.
BLOCKED = ("torch", "torchvision")


class _NoTorch(importlib.abc.MetaPathFinder):
    """A finder that refuses :data:`BLOCKED` packages and their submodules, as if not installed."""

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: Any = None) -> None:
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by tests/notorch_worker.py)", name=name)
        return None


def torch_modules() -> list[str]:
    """Names of the loaded modules of :data:`BLOCKED` packages."""
    return sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)


def _record(det: Any, image_id: int, save_to: Path | None = None) -> dict[str, Any]:
    """What a :class:`~ovdet.structures.Detections` holds and what its methods return, as JSON."""
    import cv2
    import numpy as np

    fields = (det.boxes, det.scores, det.labels)
    out: dict[str, Any] = {
        "path": det.path,
        "image_size": list(det.image_size),
        "names": det.names,
        "n": len(det),
        "types": [type(f).__module__.partition(".")[0] for f in fields],  # "numpy" or "torch"
        "dtypes": [str(f.dtype) for f in fields],
        "boxes": np.asarray(det.boxes).tolist(),
        "scores": np.asarray(det.scores).tolist(),
        "labels": np.asarray(det.labels).tolist(),
        "coco": det.to_coco(image_id),
        "dict": det.to_dict(),
        "confident": len(det[det.scores > 0.3]),
        "first": None if not len(det) else [np.asarray(det[0].boxes).tolist(), int(det[-1].labels[0])],
    }
    canvas = det.plot()
    out["plot"] = [list(canvas.shape), str(canvas.dtype), bool((canvas != det.image).any())]
    if save_to is not None:
        written = det.save(save_to)
        out["saved"] = list(cv2.imread(str(written)).shape)
    return out


def _contract() -> dict[str, Any]:
    """The Detections contract on hand-made inputs: coercion, stable descending sort, indexing, errors."""
    import numpy as np

    from ovdet.structures import Detections, xyxy_to_xywh

    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2], [3, 3, 30, 40]], dtype=np.float64)
    ok = dict(names=["a", "b", "c"], image_size=(50, 60))
    det = Detections(boxes, [0.2, 0.9, 0.2, 0.5], np.array([0, 1, 2, 1], np.int32), track_ids=[7, 8, 9, 10], **ok)
    out: dict[str, Any] = {
        "types": [type(f).__module__.partition(".")[0] for f in (det.boxes, det.scores, det.labels, det.track_ids)],
        "dtypes": [str(f.dtype) for f in (det.boxes, det.scores, det.labels, det.track_ids)],
        "labels": np.asarray(det.labels).tolist(),
        "scores": np.asarray(det.scores).tolist(),
        "boxes": np.asarray(det.boxes).tolist(),
        "track_ids": np.asarray(det.track_ids).tolist(),
        "contiguous": [bool(np.asarray(f).flags.c_contiguous) for f in (det.boxes, det.scores, det.labels)],
        "last": np.asarray(det[-1].labels).tolist(),
        "slice": np.asarray(det[1:3].track_ids).tolist(),
        "mask": np.asarray(det[det.scores > 0.3].labels).tolist(),
        "xywh": [
            type(xyxy_to_xywh(det.boxes)).__module__.partition(".")[0],
            np.asarray(xyxy_to_xywh(det.boxes)).tolist(),
        ],
        "empty": [len(Detections.empty(**ok)), str(Detections.empty(**ok).labels.dtype)],
        "from_float_labels": np.asarray(Detections(boxes[:2], [0.1, 0.2], [1.0, 2.0], **ok).labels).tolist(),
    }
    try:
        det[4]
    except IndexError:
        out["index_error"] = True
    bad = {
        "label out of range": dict(labels=[0, 3]),
        "non-integer label": dict(labels=[0.5, 1.0]),
        "bool labels": dict(labels=[True, False]),
        "x2 < x1": dict(boxes=[[5, 0, 1, 1], [0, 0, 1, 1]]),
        "nan box": dict(boxes=[[0, 0, float("nan"), 1], [0, 0, 1, 1]]),
        "scores shape": dict(scores=[0.5]),
        "boxes shape": dict(boxes=[[0, 0, 1], [0, 0, 1]]),
        "track ids": dict(track_ids=[1.5, 2.0]),
    }
    out["errors"] = {}
    for case, change in bad.items():
        args = {"boxes": boxes[:2], "scores": [0.5, 0.4], "labels": [0, 1], **ok, **change}
        try:
            Detections(**args)
            out["errors"][case] = None
        except (TypeError, ValueError) as e:
            out["errors"][case] = type(e).__name__
    return out


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Build an OnnxDetector on ``job["model"]`` and predict every kind of source (see the module doc)."""
    import cv2

    from ovdet.deploy import OnnxDetector

    work = Path(job["work"])
    kw = dict(conf=job["conf"], imgsz=job["imgsz"])
    det = OnnxDetector(job["model"])  # its export vocabulary, from the vocab file beside it
    out: dict[str, Any] = {"export_names": det.names}
    out["paths"] = [_record(d, i, work / f"path{i}.jpg") for i, d in enumerate(det.predict(job["images"], **kw))]
    det.set_classes(job["classes"])
    out["class_embeddings"] = det.class_embeddings.tolist()
    stream = det.predict(job["folder"], stream=True, **kw)
    out["folder"] = [_record(d, i) for i, d in enumerate(stream)]
    out["stream"] = [type(stream).__name__, stream.seen, len(stream.skipped)]
    det.load_embeddings(job["embeddings"])
    arrays = [cv2.imread(p) for p in job["images"]]
    out["arrays"] = [_record(d, i) for i, d in enumerate(det.predict(arrays, batch=2, **kw))]
    out["contract"] = _contract()
    out["torch_modules"] = torch_modules()
    return out


def main(argv: Sequence[str]) -> int:
    """Block PyTorch, run the job in ``argv[0]``, write its result to the job's ``out``."""
    preloaded = torch_modules()  # nothing may have loaded torch before this point (site hooks)
    sys.meta_path.insert(0, _NoTorch())
    try:
        import torch  # noqa: F401

        blocked = False
    except ImportError:
        blocked = True
    job = json.loads(Path(argv[0]).read_text())
    result = {**run(job), "preloaded": preloaded, "torch_blocked": blocked}
    Path(job["out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
