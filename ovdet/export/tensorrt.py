"""TensorRT engine build from an exported ONNX detector (when TensorRT is installed).

The engine keeps the ONNX graph's dynamic axes through one optimisation profile: batch 1..
``max_batch``, height and width from 32 to ``max_size`` (optimal at the export size). For a
dynamic-vocabulary graph the number of classes ranges over 1..``max_classes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ovdet.io import atomic_write

__all__ = ["TensorRTUnavailable", "build_engine"]


class TensorRTUnavailable(ImportError):
    """TensorRT (or a CUDA GPU for it) is not available here; the message says what to install."""


def _tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            "TensorRT is not installed: `pip install tensorrt` on a machine with an NVIDIA GPU and CUDA, then "
            "rerun; or deploy the .onnx file with onnxruntime's TensorRT/CUDA execution providers "
            "(OnnxDetector(path, providers='auto'))"
        ) from e
    return trt


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    imgsz: tuple[int, int],
    half: bool = True,
    max_batch: int = 16,
    max_size: int = 1280,
    max_classes: int = 1024,
    workspace_gib: float = 4.0,
) -> Path:
    """Build a serialized TensorRT engine from ``onnx_path``.

    Args:
        onnx_path: an ONNX detector from :func:`~ovdet.export.onnx.export_detector`.
        engine_path: the ``.engine`` file to write.
        imgsz: (h, w) the optimisation profile's optimum.
        half: allow fp16 kernels.
        max_batch / max_size / max_classes: the profile's upper bounds.
        workspace_gib: builder workspace.

    Raises:
        TensorRTUnavailable: TensorRT is missing (what to install is named).
        ValueError: TensorRT cannot parse the graph (its parser errors are listed).
    """
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValueError(f"{onnx_path}: TensorRT cannot parse the graph: {'; '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if half:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    h, w = imgsz
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name == "images":
            profile.set_shape(tensor.name, (1, 3, 32, 32), (1, 3, h, w), (max_batch, 3, max_size, max_size))
        else:  # class_embeddings (K, D)
            d = tensor.shape[1]
            profile.set_shape(tensor.name, (1, d), (80, d), (max_classes, d))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    return atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(bytes(serialized)))
