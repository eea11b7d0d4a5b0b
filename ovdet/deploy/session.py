"""The runtimes that execute exported graphs (onnxruntime, OpenVINO), behind a small :class:`Session`.

:func:`open_session` loads a file and returns a :class:`Session`: ``run(feeds)`` maps input
names to numpy arrays and returns the outputs in the graph's order; ``metadata`` holds the
file's metadata properties (ovdet's JSON descriptions).

* ``"onnxruntime"`` (default): TensorRT, CUDA or CPU execution providers; float32 arithmetic for
  float graphs, int8 kernels for the int8 export.
* ``"openvino"`` (CPU): ``precision="fp32"`` runs float32 kernels; ``precision="bf16"`` runs the
  convolutions and matrix products in bfloat16 (AMX / AVX512_BF16), which onnxruntime's CPU
  provider cannot. Each of the first ``static_shapes`` input shapes gets its own static-shape
  compiled copy (faster than the dynamic graph; ~65 MB each for v2-s at 640), later shapes run
  on the dynamic graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BACKENDS", "PRECISIONS", "Session", "open_session"]

#: the runtimes :func:`open_session` knows.
BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino")
#: arithmetic precisions of float graphs; ``"bf16"`` needs the OpenVINO backend.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


class Session:
    """A loaded graph on one runtime.

    Attributes:
        path: the file.
        backend: the runtime's name (one of :data:`BACKENDS`).
        input_names / output_names: the graph's inputs and outputs, in order.
        metadata: the file's metadata properties (key → string).
        providers: the execution providers (onnxruntime) or device (OpenVINO) in use.
        precision: the arithmetic precision of the float kernels (one of :data:`PRECISIONS`).
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
        precision: str = "fp32",
    ) -> None:
        self.path, self.backend, self.precision = path, backend, precision
        self._run = run
        self.input_names, self.output_names = inputs, outputs
        self.metadata, self.providers = metadata, providers

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs (in ``output_names`` order) for ``feeds`` (every input by name)."""
        return self._run(feeds)

    def __repr__(self) -> str:
        return (
            f"Session({str(self.path)!r}, backend={self.backend!r}, providers={self.providers}, "
            f"precision={self.precision!r})"
        )


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
    providers: Sequence[str] | str | None = None,
    threads: int | None = None,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    static_shapes: int = 4,
) -> Session:
    """Load an ONNX file on a runtime.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (``"auto"``/None: TensorRT, CUDA, CPU,
            whichever are present). Not used by OpenVINO (CPU).
        threads: intra-op threads (None: the runtime's default).
        backend: ``"onnxruntime"`` or ``"openvino"``.
        precision: ``"fp32"``, or ``"bf16"`` (OpenVINO on a CPU with bfloat16 instructions).
        static_shapes: OpenVINO: how many distinct input shapes get a static-shape compiled copy.

    Raises:
        FileNotFoundError: no such file.
        ImportError: the runtime is not installed (the extra to install is named).
        ValueError: unknown backend or precision, a combination the runtime cannot run (named),
            or a file the runtime cannot load (the path and the runtime's reason are named).
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    if backend == "openvino":
        if providers not in (None, "auto"):
            raise ValueError(
                f"providers={providers!r} are onnxruntime execution providers; the OpenVINO backend runs on its CPU device"
            )
        return _open_openvino(path, threads, precision, static_shapes)
    if precision != "fp32":
        raise ValueError(
            f"precision={precision!r}: onnxruntime's CPU provider has no bfloat16 kernels; use backend='openvino' "
            f'(pip install "ovdet[openvino]"), or export with half=True for GPU providers'
        )
    return _open_onnxruntime(path, providers, threads)


def _open_onnxruntime(path: Path, providers: Sequence[str] | str | None, threads: int | None) -> Session:
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
        raise ValueError(f"{path}: onnxruntime cannot load this file as an ONNX model ({type(e).__name__}: {e})") from e
    outputs = [o.name for o in sess.get_outputs()]
    return Session(
        path,
        "onnxruntime",
        lambda feeds: sess.run(outputs, feeds),
        [i.name for i in sess.get_inputs()],
        outputs,
        dict(sess.get_modelmeta().custom_metadata_map),
        list(sess.get_providers()),
    )


class _OpenVinoGraph:
    """One OpenVINO model, compiled per input shape: a static-shape copy for each of the first
    ``static_shapes`` shapes seen, the dynamic model (compiled on first need) for any other."""

    def __init__(self, core: Any, model: Any, path: Path, config: dict[str, Any], static_shapes: int) -> None:
        self._core, self._model, self._path, self._config = core, model, path, config
        self._limit = max(0, int(static_shapes))
        self._static: dict[tuple, tuple[Any, list[Any]]] = {}
        self._dynamic: tuple[Any, list[Any]] | None = None

    @property
    def compiled_shapes(self) -> list[dict[str, tuple[int, ...]]]:
        """The input shapes that have a static compiled copy, in the order they were seen."""
        return [dict(key) for key in self._static]

    def _compile(self, model: Any) -> tuple[Any, list[Any]]:
        try:
            compiled = self._core.compile_model(model, "CPU", self._config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise ValueError(f"{self._path}: OpenVINO cannot compile this model ({type(e).__name__}: {e})") from e
        return compiled.create_infer_request(), list(compiled.outputs)

    def _entry(self, feeds: dict[str, np.ndarray]) -> tuple[Any, list[Any]]:
        key = tuple((name, tuple(np.shape(value))) for name, value in sorted(feeds.items()))
        entry = self._static.get(key)
        if entry is not None:
            return entry
        if len(self._static) < self._limit:
            model = self._model.clone()
            try:
                model.reshape(dict(key))
            except Exception as e:  # a shape the graph cannot take (e.g. a fixed-size v1 export)
                raise ValueError(f"{self._path}: inputs of shapes {dict(key)} do not fit this graph ({e})") from e
            self._static[key] = entry = self._compile(model)
            return entry
        if self._dynamic is None:
            self._dynamic = self._compile(self._model)
        return self._dynamic

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request, outputs = self._entry(feeds)
        result = request.infer(feeds)  # copies the outputs out of the request's buffers
        return [np.asarray(result[port]) for port in outputs]


def _open_openvino(path: Path, threads: int | None, precision: str, static_shapes: int) -> Session:
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError('the OpenVINO backend needs openvino: pip install "ovdet[openvino]"') from e
    core = ov.Core()
    if precision == "bf16":
        capabilities = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        if "BF16" not in capabilities:
            raise ValueError(
                f"precision='bf16' needs a CPU with bfloat16 instructions (AMX or AVX512_BF16); this CPU offers "
                f"{capabilities}; use precision='fp32'"
            )
    try:
        model = core.read_model(str(path))
    except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
        raise ValueError(f"{path}: OpenVINO cannot load this file as an ONNX model ({type(e).__name__}: {e})") from e
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    graph = _OpenVinoGraph(core, model, path, config, static_shapes)
    return Session(
        path,
        "openvino",
        graph,
        [port.get_any_name() for port in model.inputs],
        [port.get_any_name() for port in model.outputs],
        _openvino_metadata(model),
        ["CPU"],
        precision,
    )


def _openvino_metadata(model: Any) -> dict[str, str]:
    """The ONNX file's metadata properties, which OpenVINO keeps in the model's ``framework`` info."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    framework = info["framework"]
    framework = framework.astype(dict) if hasattr(framework, "astype") else framework
    return {str(k): str(v.astype(str) if hasattr(v, "astype") else v) for k, v in dict(framework).items()}
