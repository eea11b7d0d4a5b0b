"""Weights out of an ultralytics YOLOv8 ONNX export, read as data and never executed.

People keep the ``.onnx`` they deployed and lose the ``.pt``. An ultralytics export holds every
convolution of the network as a constant: BatchNorm folded into the convolution (fp32/fp16
exports), and, after onnxruntime's quantization, as ``uint8``/``int8`` integers with a scale and a
zero point (``ConvInteger`` for dynamic quantization, ``DequantizeLinear`` → ``Conv`` for QDQ).
:func:`read_onnx_export` walks the graph as a data structure — constants are folded with numpy
through a handful of pure operators (``Constant``, ``Identity``, ``Cast``, ``Reshape``,
``DequantizeLinear``), nothing is run through onnxruntime — and returns the weights under
ultralytics' own state-dict names, with each fused convolution unfolded into a convolution plus
an identity BatchNorm, so :func:`ovdet.weights.convert_yolov8_state` maps them exactly as it maps
a ``.pt``.

A convolution's module path comes from its node name, which torch's exporter writes as the
module scope (``/model.22/cv2.0/cv2.0.2/Conv`` → ``model.22.cv2.0.2``); the initializer names
(``model.0.conv.weight``, ``model.0.conv.weight_quantized``) are not relied on, because graph
simplifiers rename or deduplicate them.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ovdet.weights import ConversionError

#: ultralytics' BatchNorm epsilon (``Conv`` blocks); the unfolded BatchNorm is the identity under it.
BN_EPS = 1e-3
#: Tasks of an ultralytics export that carry a plain detection head.
DETECT_TASKS = ("detect",)
#: A graph with fewer convolutions than this is no YOLOv8 (YOLOv8n has 64 with the DFL).
_MIN_CONVS = 60
_SCOPE = re.compile(r"^model\.\d+$")


@dataclass
class OnnxExport:
    """What :func:`read_onnx_export` recovered.

    Attributes:
        state: ultralytics state-dict names → float32 tensors (``model.<i>....``): each fused
            convolution as ``<path>.conv.weight`` plus an identity BatchNorm (``<path>.bn.*``),
            each plain convolution (the heads' last layers) as ``weight`` and ``bias``.
        names: the class names from the export's metadata (index order), or None.
        metadata: the export's ``metadata_props`` as strings (ultralytics writes ``task``,
            ``stride``, ``imgsz``, ``names``, ``version``, ...).
        weights: how the weights were stored: ``"float32"``, ``"float16"``, ``"int8-dynamic"``
            (``ConvInteger``) or ``"int8-qdq"`` (``DequantizeLinear`` → ``Conv``).
        convs: the module paths read, in graph order.
    """

    state: dict[str, torch.Tensor]
    names: list[str] | None
    metadata: dict[str, str]
    weights: str
    convs: list[str] = field(default_factory=list)


def _load(path: Path):
    """The ModelProto of ``path``, with no external data (ultralytics detection exports embed it)."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError("reading an ONNX export needs the onnx package: pip install 'ovdet[export]'") from e
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning-derived and plain errors for bad bytes
        raise ConversionError(
            f"{path}: not a readable ONNX file ({type(e).__name__}: {e}); is it truncated? re-export it"
        ) from e
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ConversionError(
            f"{path}: weights are stored in external files ({external[:3]}); ovdet reads only weights stored "
            "inside the .onnx (ultralytics detection exports always are)"
        )
    if not model.graph.initializer:
        raise ConversionError(f"{path}: the graph holds no weights (no initializers)")
    return model


def _module_path(node_name: str) -> str | None:
    """``/model.22/cv2.0/cv2.0.2/Conv`` → ``model.22.cv2.0.2``; None for a name with no module scope.

    torch's exporter writes one scope segment per module, each either the child's own name
    (``conv``) or its full dotted name below the parent (``cv2.0`` then ``cv2.0.2``); a segment
    that extends the previous one replaces it.
    """
    parts = [p for p in node_name.split("/") if p][:-1]  # the last part is the operator's own name
    if not parts or not _SCOPE.match(parts[0]):
        return None
    path = [parts[0]]
    for p in parts[1:]:
        if len(path) > 1 and p.startswith(path[-1] + "."):
            path[-1] = p
        else:
            path.append(p)
    return ".".join(path)


class _Constants:
    """Constant folding over the few pure operators that carry weights in an export."""

    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        self._to_array = numpy_helper.to_array
        self.values: dict[str, np.ndarray] = {t.name: self._to_array(t) for t in graph.initializer}
        for node in graph.node:  # ONNX graphs are topologically sorted
            self._fold(node)

    def _fold(self, node) -> None:
        from onnx import helper

        ins = [self.values.get(i) if i else None for i in node.input]
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        out: np.ndarray | None = None
        if op == "Constant" and "value" in attrs:
            out = self._to_array(attrs["value"])
        elif op == "Identity" and ins and ins[0] is not None:
            out = ins[0]
        elif op == "Cast" and ins and ins[0] is not None:
            out = ins[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        elif op == "Reshape" and len(ins) >= 2 and ins[0] is not None and ins[1] is not None:
            dims = [ins[0].shape[i] if d == 0 and i < ins[0].ndim else int(d) for i, d in enumerate(ins[1])]
            try:
                out = ins[0].reshape(dims)
            except ValueError:  # an inconsistent shape: leave it unfolded (a weight reading it fails by name)
                out = None
        elif op == "DequantizeLinear" and ins and ins[0] is not None and len(ins) >= 2 and ins[1] is not None:
            out = _dequantize(ins[0], ins[1], ins[2] if len(ins) > 2 else None, int(attrs.get("axis", 1)))
        if out is not None and node.output:
            self.values[node.output[0]] = out

    def get(self, name: str) -> np.ndarray | None:
        return self.values.get(name)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    """``(q - zero) · scale`` in float64, per tensor or per channel along ``axis``."""
    q = q.astype(np.float64)
    scale = scale.astype(np.float64)
    zero = np.zeros_like(scale) if zero is None else zero.astype(np.float64)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


class _Edges:
    """Who produces and who consumes each tensor name of a graph."""

    def __init__(self, graph) -> None:
        self.producer = {out: node for node in graph.node for out in node.output}
        self.users: dict[str, list] = {}
        for node in graph.node:
            for i in node.input:
                self.users.setdefault(i, []).append(node)

    def single(self, name: str, op: str, where: str):
        """The one ``op`` node reading ``name``."""
        found = [n for n in self.users.get(name, []) if n.op_type == op]
        if len(found) != 1:
            raise ConversionError(f"{where}: expected one {op} after it, found {len(found)}")
        return found[0]


def _conv_integer(node, consts: _Constants, edges: _Edges) -> tuple[np.ndarray, np.ndarray | None]:
    """(W, bias) of one ``ConvInteger``: ``W = (W_q - W_zero) · W_scale`` and the bias added after it.

    onnxruntime writes ``ConvInteger → Cast → Mul(·, x_scale · W_scale) → Add(·, bias)``; the
    weight scale is the constant operand of the scale product.
    """
    w_q = consts.get(node.input[1])
    w_zero = consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if w_q is None:
        raise ConversionError(f"{node.name}: the weight of ConvInteger is not a constant")
    cast = edges.single(node.output[0], "Cast", node.name)
    mul = edges.single(cast.output[0], "Mul", node.name)
    scale = None
    for operand in mul.input:
        producer = edges.producer.get(operand)
        if producer is not None and producer.op_type == "Mul":  # x_scale · W_scale
            scale = next((consts.get(i) for i in producer.input if consts.get(i) is not None), None)
        elif consts.get(operand) is not None:
            scale = consts.get(operand)
    if scale is None:
        raise ConversionError(f"{node.name}: found no constant weight scale after ConvInteger")
    scale = np.asarray(scale).reshape(-1)
    weight = _dequantize(w_q, scale, None if w_zero is None else np.asarray(w_zero).reshape(-1), axis=0)
    bias = None
    adds = [n for n in edges.users.get(mul.output[0], []) if n.op_type == "Add"]
    if len(adds) == 1:
        other = [i for i in adds[0].input if i != mul.output[0]]
        if other and consts.get(other[0]) is not None:
            bias = np.asarray(consts.get(other[0]), dtype=np.float64).reshape(-1)
    return weight, bias


def _names(metadata: dict[str, str]) -> list[str] | None:
    """The ``names`` entry of ultralytics' metadata (a Python dict literal, parsed as a literal only)."""
    raw = metadata.get("names")
    if raw is None:
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, dict) and all(isinstance(k, int) for k in value) and sorted(value) == list(range(len(value))):
        names = [value[i] for i in range(len(value))]
    elif isinstance(value, list):
        names = value
    else:
        return None
    return names if all(isinstance(n, str) for n in names) else None


def read_onnx_export(path: str | Path) -> OnnxExport:
    """The weights of an ultralytics YOLOv8 detection export, under ultralytics' state-dict names.

    Args:
        path: a ``.onnx`` written by ``YOLO(...).export(format="onnx")`` (fp32 or fp16), or that
            file after onnxruntime quantization (dynamic ``ConvInteger`` or static QDQ).

    Returns:
        :class:`OnnxExport` whose ``state`` :func:`ovdet.weights.convert_yolov8_state` converts.

    Raises:
        FileNotFoundError: no such file.
        ConversionError: not a readable ONNX file, weights outside it, not a detection export
            (the metadata's task), or convolutions that cannot be read as constants; the message
            names the file and what did not match.
    """
    path = Path(path)
    model = _load(path)
    graph = model.graph
    metadata = {p.key: p.value for p in model.metadata_props}
    task = metadata.get("task")
    if task is not None and task not in DETECT_TASKS:
        raise ConversionError(
            f"{path}: an ultralytics {task!r} export; ovdet converts detection exports (task 'detect') only"
        )
    consts = _Constants(graph)
    edges = _Edges(graph)
    state: dict[str, torch.Tensor] = {}
    convs: list[str] = []
    kinds = set()
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvInteger"):
            continue
        mod = _module_path(node.name)
        if mod is None:
            raise ConversionError(
                f"{path}: convolution node {node.name!r} carries no ultralytics module scope ('/model.<i>/...'); "
                "only graphs exported by ultralytics (torch.onnx with module names) can be read"
            )
        if node.op_type == "ConvInteger":
            try:
                weight, bias = _conv_integer(node, consts, edges)
            except ConversionError as e:
                raise ConversionError(f"{path}: {e}") from None
            kinds.add("int8-dynamic")
        else:
            w = consts.get(node.input[1])
            if w is None:
                raise ConversionError(f"{path}: the weight of {node.name!r} is not a constant")
            producer = edges.producer.get(node.input[1])
            if producer is not None and producer.op_type == "DequantizeLinear":
                kinds.add("int8-qdq")
            else:
                kinds.add("float16" if w.dtype == np.float16 else "float32")
            weight = w.astype(np.float64)
            bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            bias = None if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
        if weight.ndim != 4:
            raise ConversionError(f"{path}: {node.name!r} has a {weight.ndim}-d weight; expected 4-d")
        if bias is None:
            bias = np.zeros(weight.shape[0])
        convs.append(mod)
        _unfold(state, mod, torch.from_numpy(weight).float(), torch.from_numpy(bias).float())
    if len(convs) < _MIN_CONVS:
        raise ConversionError(
            f"{path}: {len(convs)} convolutions; a YOLOv8 detection export has at least {_MIN_CONVS} "
            "(is it a YOLOv8 export at all?)"
        )
    # A quantized export keeps a few convolutions in float (e.g. the fixed DFL): name the quantization.
    weights = next((k for k in ("int8-dynamic", "int8-qdq", "float16") if k in kinds), "float32")
    return OnnxExport(state, _names(metadata), metadata, weights, convs)


def _unfold(state: dict[str, torch.Tensor], mod: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Write one convolution under ultralytics' names.

    A ``Conv`` block's convolution (path ending ``.conv``) had its BatchNorm folded in; it comes
    back as the convolution plus a BatchNorm that is the identity up to float rounding
    (mean 0, variance 1, ``weight = sqrt(1 + eps)``, ``bias`` = the folded bias). A plain
    convolution (the heads' last 1×1 layers) keeps its own bias; the fixed DFL integral
    (``model.<i>.dfl.conv``, no bias) only its weight.

    Shapes:
        weight (C_out, C_in, k, k), bias (C_out,).
    """
    if mod.endswith(".conv") and not mod.endswith(".dfl.conv"):
        block = mod[: -len(".conv")]
        c = weight.shape[0]
        state[f"{block}.conv.weight"] = weight
        state[f"{block}.bn.weight"] = torch.full((c,), math.sqrt(1.0 + BN_EPS))
        state[f"{block}.bn.bias"] = bias
        state[f"{block}.bn.running_mean"] = torch.zeros(c)
        state[f"{block}.bn.running_var"] = torch.ones(c)
        state[f"{block}.bn.num_batches_tracked"] = torch.tensor(0)
    elif mod.endswith(".dfl.conv"):
        state[f"{mod}.weight"] = weight
    else:
        state[f"{mod}.weight"] = weight
        state[f"{mod}.bias"] = bias
