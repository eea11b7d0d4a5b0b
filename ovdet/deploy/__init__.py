"""Deployment runtimes: exported ONNX detectors and text encoders on onnxruntime (or OpenVINO).

* :mod:`ovdet.deploy.runtime` — :class:`OnnxDetector`, the ``Detector`` API over an exported file.
* :mod:`ovdet.deploy.text` — :class:`OnnxTextEncoder`: class names → embeddings from an exported encoder.
* :mod:`ovdet.deploy.tokenizer` — CLIP's BPE tokenizer in pure Python.
* :mod:`ovdet.deploy.postprocess` — NMS and box decoding in numpy.
* :mod:`ovdet.deploy.session` — the runtimes (onnxruntime; OpenVINO with fp32 or bf16 kernels).

Nothing here runs PyTorch: images are decoded and letterboxed with OpenCV/numpy, the networks run
on the runtime, NMS runs in numpy (or in the graph). Imported on first access.
"""

from typing import TYPE_CHECKING, Any

__all__ = ["OnnxDetector", "OnnxTextEncoder"]

if TYPE_CHECKING:  # pragma: no cover
    from ovdet.deploy.runtime import OnnxDetector
    from ovdet.deploy.text import OnnxTextEncoder


def __getattr__(name: str) -> Any:
    if name == "OnnxDetector":
        from ovdet.deploy.runtime import OnnxDetector

        return OnnxDetector
    if name == "OnnxTextEncoder":
        from ovdet.deploy.text import OnnxTextEncoder

        return OnnxTextEncoder
    raise AttributeError(f"module 'ovdet.deploy' has no attribute {name!r}")
