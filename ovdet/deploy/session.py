"""The runtime that executes exported graphs: onnxruntime, behind a small :class:`Session`.

:func:`open_session` loads a file and returns a :class:`Session`: ``run(feeds)`` maps input
names to numpy arrays and returns the outputs in the graph's order; ``metadata`` holds the
file's metadata properties (ovdet's JSON descriptions). Another runtime fits behind the same
class (``benchmarks/bench_export.py`` measures OpenVINO that way; on the CPUs measured it was
not faster than onnxruntime, so ovdet does not ship it as a backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Session", "open_session"]


class Session:
    """A loaded graph on one runtime.

    Attributes:
        path: the file.
        backend: the runtime's name (``"onnxruntime"``).
        input_names / output_names: the graph's inputs and outputs, in order.
        metadata: the file's metadata properties (key → string).
        providers: the execution providers in use.
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


def open_session(path: str | Path, providers: Sequence[str] | str | None = None, threads: int | None = None) -> Session:
    """Load an ONNX file on onnxruntime.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers (``"auto"``/None: TensorRT, CUDA, CPU, whichever are
            present).
        threads: intra-op threads (None: onnxruntime's default).

    Raises:
        FileNotFoundError: no such file.
        ImportError: onnxruntime is not installed (the extra to install is named).
        ValueError: a file onnxruntime cannot load (the path and its reason are named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
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
