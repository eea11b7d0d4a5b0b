"""ONNX export of the detector: baked (folded) or dynamic vocabulary, NMS in the graph or not.

Graph inputs:
    ``images``: (B, 3, H, W) float32 RGB in [0, 1], letterboxed (H, W multiples of 32); batch,
    height and width are dynamic.
    ``class_embeddings``: (K, D) float32, K dynamic — dynamic-vocabulary graphs only; rows are
    L2-normalised inside the graph, as ``Detector.set_class_embeddings`` does.

Graph outputs:
    without NMS: ``boxes`` (B, A, 4) xyxy input pixels and ``scores`` (B, A, K) sigmoid scores;
    with NMS: ``boxes`` (N, 4), ``scores`` (N,), ``labels`` (N,) int64 and ``batch_index`` (N,)
    int64, grouped by image, descending score within an image, at most ``max_det`` per image.

What a runtime needs to use the file (vocabulary, thresholds, text encoder) is stored as JSON in
the model's metadata under :data:`METADATA_KEY` (see :func:`ovdet.deploy.metadata.parse_metadata`).
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ovdet._version import __version__
from ovdet.config import ExportConfig
from ovdet.deploy.metadata import METADATA_KEY
from ovdet.io import atomic_write
from ovdet.models.detector import OVDetector, decode_outputs
from ovdet.models.folded import FoldedDetector, fold_vocabulary

__all__ = ["ExportGraph", "ExportResult", "export_detector", "export_files", "graph_signature", "set_metadata"]


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` over one score column (boxes already offset per class).

    ``forward`` computes the same selection with torchvision so tracing sees real shapes;
    ``symbolic`` emits the ONNX operator.

    Shapes:
        boxes (B, A, 4), scores (B, 1, A) → selected (N, 3) int64 rows ``[image, 0, anchor]``.
    """

    @staticmethod
    def forward(ctx: Any, boxes: torch.Tensor, scores: torch.Tensor, max_det: int, iou: float, conf: float):  # noqa: D102
        rows = []
        for b in range(boxes.shape[0]):
            s = scores[b, 0]  # (A,)
            cand = torch.nonzero(s > conf).flatten()
            keep = cand[torchvision.ops.nms(boxes[b, cand], s[cand], iou)[:max_det]]
            rows.append(torch.stack((torch.full_like(keep, b), torch.zeros_like(keep), keep), 1))
        return torch.cat(rows)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, max_det: int, iou: float, conf: float) -> Any:  # noqa: D102
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_det], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([conf], dtype=torch.float32)),
        )


class SlicedAdaptiveMaxPool2d(nn.Module):
    """``nn.AdaptiveMaxPool2d(size)`` written as max-reductions over its windows.

    ONNX has no adaptive pooling whose output size does not divide the input size; the windows
    (rows ``floor(i·H/n) .. ceil((i+1)·H/n)``, the same for columns) are fixed once the input
    size is, so a fixed-size export traces them as slices. Equal to the adaptive pool exactly.

    Shapes:
        (B, C, H, W) → (B, C, n, n).
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])
        n = self.size

        def window(i: int, length: int) -> tuple[int, int]:
            return (i * length) // n, -((-(i + 1) * length) // n)  # floor, ceil

        rows = []
        for i in range(n):
            r0, r1 = window(i, h)
            cols = []
            for j in range(n):
                c0, c1 = window(j, w)
                cols.append(x[:, :, r0:r1, c0:c1].amax(dim=(2, 3)))  # (B, C)
            rows.append(torch.stack(cols, -1))  # (B, C, n)
        return torch.stack(rows, -2)  # (B, C, n, n)


class ExportGraph(nn.Module):
    """What is exported: network → decode (→ NMS).

    Args:
        net: a :class:`FoldedDetector` (baked vocabulary) or an :class:`OVDetector` (dynamic).
        nms: settings of the in-graph NMS, or None to end at decoded boxes and scores.
    """

    def __init__(self, net: FoldedDetector | OVDetector, nms: ExportConfig | None) -> None:
        super().__init__()
        self.net, self.nms = net, nms
        self.dynamic = isinstance(net, OVDetector)

    def forward(self, images: torch.Tensor, class_embeddings: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if self.dynamic:
            raw = self.net(images, F.normalize(class_embeddings, dim=-1))
        else:
            raw = self.net(images)
        boxes, scores = decode_outputs(raw, self.net.cfg.reg_max)  # (B, A, 4), (B, A, K)
        if self.nms is None:
            return boxes, scores
        best, labels = scores.max(-1)  # (B, A)
        if self.nms.agnostic:
            shifted = boxes
        else:  # one NMS over all classes: boxes of different classes never overlap
            shifted = boxes + (labels.unsqueeze(-1) * (boxes.max() + 1)).to(boxes.dtype)  # (B, A, 4)
        sel = _NonMaxSuppression.apply(shifted, best.unsqueeze(1), self.nms.max_det, self.nms.iou, self.nms.conf)
        b_idx, a_idx = sel[:, 0], sel[:, 2]  # (N,)
        return boxes[b_idx, a_idx], best[b_idx, a_idx], labels[b_idx, a_idx], b_idx


def graph_signature(
    dynamic_vocab: bool, nms: bool, fixed_size: bool = False
) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    """Input names, output names and dynamic axes of an exported detector graph.

    ``fixed_size``: height and width are fixed (v1: its image-pooling attention's adaptive
    max-pool has no ONNX form for a dynamic input size); the batch stays dynamic.
    """
    inputs = ["images"] + (["class_embeddings"] if dynamic_vocab else [])
    axes: dict[str, dict[int, str]] = {"images": {0: "batch"} if fixed_size else {0: "batch", 2: "height", 3: "width"}}
    if dynamic_vocab:
        axes["class_embeddings"] = {0: "num_classes"}
    if nms:
        outputs = ["boxes", "scores", "labels", "batch_index"]
        axes.update({name: {0: "num_detections"} for name in outputs})
    else:
        outputs = ["boxes", "scores"]
        axes["boxes"] = {0: "batch", 1: "anchors"}
        axes["scores"] = {0: "batch", 1: "anchors", 2: "num_classes"}
    return inputs, outputs, axes


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        path: the detector graph.
        metadata: the JSON stored in it (see :func:`ovdet.deploy.metadata.parse_metadata`).
        inputs / outputs: ``(name, shape, dtype)`` of the graph's inputs and outputs, as the
            file declares them (dynamic axes by name).
        files: every file written (detector, text encoder, tokenizer, vocabulary, int8 model).
        checks: results of checks run after writing (e.g. parity against PyTorch).
    """

    path: Path
    metadata: dict[str, Any]
    inputs: list[tuple[str, list[int | str], str]]
    outputs: list[tuple[str, list[int | str], str]]
    files: list[Path] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)


def _write_model(proto: Any, path: Path, metadata: dict[str, Any]) -> Path:
    """Store ``metadata`` under :data:`METADATA_KEY` and write ``proto`` atomically."""
    import onnx

    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    return atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))


def describe_graph(
    proto: Any,
) -> tuple[list[tuple[str, list[int | str], str]], list[tuple[str, list[int | str], str]]]:
    """``(inputs, outputs)`` of an ONNX model: ``(name, shape, element type)`` each, shapes with
    dynamic axes by name."""
    import onnx

    graph = proto.graph

    def entries(values: Any) -> list[tuple[str, list[int | str], str]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims: list[int | str] = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out.append((v.name, dims, onnx.TensorProto.DataType.Name(t.elem_type).lower()))
        return out

    return entries(graph.input), entries(graph.output)


def _to_half(proto: Any) -> Any:
    """The graph in float16 with float32 inputs and outputs (for GPU execution providers)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # NMS and the anchor grid (Range has no float16 form) stay float32.
    blocked = [*DEFAULT_OP_BLOCK_LIST, "NonMaxSuppression", "Range"]
    return convert_float_to_float16(proto, keep_io_types=True, op_block_list=blocked)


def export_detector(
    model: OVDetector,
    path: str | Path,
    cfg: ExportConfig,
    names: list[str],
    embeddings: torch.Tensor | None,
    encoder_id: str,
    extra: dict[str, Any] | None = None,
) -> ExportResult:
    """Write the detector graph (and its metadata) to ``path``.

    Args:
        model: the network (left unchanged; the export works on a folded or fused copy).
        path: the ``.onnx`` file to write.
        cfg: export settings.
        names: the current vocabulary (K names; may be empty for a dynamic-vocabulary export).
        embeddings: (K, D) the current vocabulary's embeddings, or None.
        encoder_id: the text encoder the embeddings came from (stored for the runtime).
        extra: more metadata entries (e.g. the names of the text-encoder files beside it).

    Returns:
        :class:`ExportResult` for the detector file (the caller adds text-encoder files).

    Raises:
        RuntimeError: baked vocabulary without a vocabulary.
        ImportError: the ``onnx`` package is missing (the extra to install is named).
    """
    try:
        import onnx
    except ImportError as e:
        raise ImportError('ONNX export needs the onnx package: pip install "ovdet[export]"') from e

    path = Path(path)
    if not cfg.dynamic_vocab and embeddings is None:
        raise RuntimeError(
            "no vocabulary to bake into the export: call set_classes([...]) or set_class_embeddings(...) first, "
            "or export with dynamic_vocab=True"
        )
    device = next(model.parameters()).device
    d = model.cfg.embed_dim
    if cfg.dynamic_vocab:
        net: FoldedDetector | OVDetector = copy.deepcopy(model).eval().fuse()
    else:
        net = fold_vocabulary(model, embeddings)
    if net.neck.pool_attn is not None:  # v1: fixed-size export, the adaptive pool becomes slices
        net.neck.pool_attn.pooling = SlicedAdaptiveMaxPool2d(net.cfg.pool_size)
    graph = ExportGraph(net, cfg if cfg.nms else None).eval()
    h, w = cfg.imgsz
    example: tuple[torch.Tensor, ...] = (torch.rand(1, 3, h, w, device=device),)
    if cfg.dynamic_vocab:
        example_emb = embeddings if embeddings is not None else torch.randn(3, d, device=device)
        example += (F.normalize(example_emb.to(device, torch.float32), dim=-1),)
    fixed_size = model.cfg.version == 1
    inputs, outputs, axes = graph_signature(cfg.dynamic_vocab, cfg.nms, fixed_size)

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and exporter deprecation chatter
        torch.onnx.export(
            graph,
            example,
            buffer,
            dynamo=False,  # the TorchScript exporter: dynamic axes by name and the NMS symbolic
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=cfg.opset,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for out in proto.graph.output:  # the exporter names the box axis symbolically; it is 4
        if out.name == "boxes":
            out.type.tensor_type.shape.dim[-1].dim_value = 4
    if cfg.half:
        proto = _to_half(proto)
    metadata = {
        "format": "ovdet-onnx",
        "ovdet_version": __version__,
        "vocab": "dynamic" if cfg.dynamic_vocab else "baked",
        "names": list(names),
        "embed_dim": d,
        "model_version": model.cfg.version,
        "stride": max(model.cfg.strides),
        "imgsz": list(cfg.imgsz),
        "fixed_size": fixed_size,  # True: images must be letterboxed to exactly imgsz (no stride-minimal padding)
        "nms": (
            {"conf": cfg.conf, "iou": cfg.iou, "max_det": cfg.max_det, "agnostic": cfg.agnostic} if cfg.nms else None
        ),
        "precision": "fp16" if cfg.half else "fp32",
        "encoder_id": encoder_id,
        "templates": list(model.cfg.text.templates),
        "inputs": inputs,
        "outputs": outputs,
    }
    metadata.update(extra or {})
    _write_model(proto, path, metadata)
    ins, outs = describe_graph(proto)
    return ExportResult(path, metadata, ins, outs, files=[path])


def export_files(model_path: str | Path) -> dict[str, Path]:
    """The files an export of ``model.onnx`` writes beside it: ``text_model`` (``model.text.onnx``),
    ``bpe`` / ``tokenizer_json`` (its tokenizer), ``vocab`` (``model.vocab.safetensors``) and
    ``int8`` (``model.int8.onnx``)."""
    model_path = Path(model_path)
    stem = model_path.name[: -len(".onnx")] if model_path.name.endswith(".onnx") else model_path.name
    parent = model_path.parent
    return {
        "text_model": parent / f"{stem}.text.onnx",
        "bpe": parent / f"{stem}.text.bpe.txt.gz",
        "tokenizer_json": parent / f"{stem}.text.tokenizer.json",
        "vocab": parent / f"{stem}.vocab.safetensors",
        "int8": parent / f"{stem}.int8.onnx",
    }


def set_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    """Replace the ovdet metadata of an ONNX file written by :func:`export_detector`."""
    import onnx

    _write_model(onnx.load(str(path)), Path(path), metadata)
