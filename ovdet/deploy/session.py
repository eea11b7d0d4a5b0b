"""One interface over the runtimes that execute exported graphs: onnxruntime and OpenVINO.

:func:`open_session` loads a file and returns a :class:`Session`: ``run(feeds)`` maps input
names to numpy arrays and returns the outputs in the graph's order; ``metadata`` holds the
file's metadata properties (ovdet's JSON descriptions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BACKENDS", "Session", "open_session"]

#: runtimes :func:`open_session` knows.
BACKENDS = ("onnxruntime", "openvino")


class Session:
    """A loaded graph on one runtime.

    Attributes:
        path: the file.
        backend: ``"onnxruntime"`` or ``"openvino"``.
        input_names / output_names: the graph's inputs and outputs, in order.
        metadata: the file's metadata properties (key → string).
        providers: the execution providers (onnxruntime) or device (OpenVINO) in use.
    """

    def __init__(
        self,
        path: Path,
        backend: str,
        run: Any,
        inputs: list[str],
        outputs: list[str],
        metadata: dict[str, str],
        providers: list[str],
    ) -> None:
        self.path, self.backend = path, backend
        self._run = run
        self.input_names, self.output_names = inputs, outputs
        self.metadata, self.providers = metadata, providers

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs (in ``output_names`` order) for ``feeds`` (every input by name)."""
        return self._run(feeds)

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, backend={self.backend!r}, providers={self.providers})"


def _ort_providers(requested: Sequence[str] | str | None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is None or requested == "auto":  # the fastest present, CPU always last
        preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        return [p for p in preferred if p in available] or ["CPUExecutionProvider"]
    names = [requested] if isinstance(requested, str) else list(requested)
    missing = [p for p in names if p not in available]
    if missing:
        raise ValueError(f"onnxruntime execution provider(s) {missing} are not available here; available: {available}")
    return names


def open_session(
    path: str | Path,
    backend: str = "onnxruntime",
    providers: Sequence[str] | str | None = None,
    threads: int | None = None,
) -> Session:
    """Load an ONNX file on a runtime.

    Args:
        path: the ``.onnx`` file.
        backend: ``"onnxruntime"`` (CPU; CUDA and TensorRT providers when present) or
            ``"openvino"`` (CPU).
        providers: onnxruntime execution providers (``"auto"``/None: TensorRT, CUDA, CPU,
            whichever are present).
        threads: intra-op threads (None: the runtime's default).

    Raises:
        FileNotFoundError: no such file.
        ImportError: the runtime is not installed (the extra to install is named).
        ValueError: unknown backend, or a file the runtime cannot load (the path and the
            runtime's reason are named).
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    if backend == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError('running exported models needs onnxruntime: pip install "ovdet[deploy]"') from e
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers etc. stay off the terminal
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        chosen = _ort_providers(providers)
        try:
            sess = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as e:  # onnxruntime raises its own InvalidProtobuf / Fail / InvalidGraph types
            raise ValueError(
                f"{path}: onnxruntime cannot load this file as an ONNX model ({type(e).__name__}: {e})"
            ) from e
        outputs = [o.name for o in sess.get_outputs()]
        return Session(
            path,
            backend,
            lambda feeds: sess.run(outputs, feeds),
            [i.name for i in sess.get_inputs()],
            outputs,
            dict(sess.get_modelmeta().custom_metadata_map),
            list(sess.get_providers()),
        )
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError('the OpenVINO backend needs openvino: pip install "ovdet[openvino]"') from e
    core = ov.Core()
    try:
        model = core.read_model(str(path))
        compiled = core.compile_model(model, "CPU", {} if threads is None else {"INFERENCE_NUM_THREADS": int(threads)})
    except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
        raise ValueError(f"{path}: OpenVINO cannot load this file as an ONNX model ({type(e).__name__}: {e})") from e
    request = compiled.create_infer_request()
    inputs = [p.get_any_name() for p in compiled.inputs]
    outputs = [p.get_any_name() for p in compiled.outputs]

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = request.infer(feeds)
        return [np.asarray(result[compiled.output(name)]) for name in outputs]

    return Session(path, backend, run, inputs, outputs, _onnx_metadata(path), ["CPU"])


def _onnx_metadata(path: Path) -> dict[str, str]:
    """Metadata properties of an ONNX file, read without loading its weights."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
