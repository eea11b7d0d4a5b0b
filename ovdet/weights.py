"""Official checkpoints → ovdet: the explicit name table, conversion, and pretrained downloads.

ultralytics stores YOLO-World models as ``nn.Sequential`` layers ``model.<i>.…``; ovdet names
modules by role. :func:`ultralytics_name_table` spells out the correspondence; conversion fails
loudly on any tensor that is unmapped, missing or mis-shaped.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit
from urllib.request import url2pathname

import torch

from ovdet.checkpoint import is_checkpoint_dir, save_checkpoint, warn_non_finite
from ovdet.config import SCALES, ModelConfig, TextConfig
from ovdet.io import atomic_write, ovdet_home, publish_dir, unreachable_reason
from ovdet.models.detector import OVDetector

#: ovdet module path → ultralytics layer index, per version (v1 has image-pooling attention at 16).
_LAYERS: dict[int, dict[str, int]] = {
    2: {
        "neck.top_down_p4": 12,
        "neck.top_down_p3": 15,
        "neck.down_p3": 16,
        "neck.bottom_up_p4": 18,
        "neck.down_p4": 19,
        "neck.bottom_up_p5": 21,
        "head": 22,
    },
    1: {
        "neck.top_down_p4": 12,
        "neck.top_down_p3": 15,
        "neck.pool_attn": 16,
        "neck.down_p3": 17,
        "neck.bottom_up_p4": 19,
        "neck.down_p4": 20,
        "neck.bottom_up_p5": 22,
        "head": 23,
    },
}
_BACKBONE = {
    "backbone.stem": 0,
    "backbone.stages.0.down": 1,
    "backbone.stages.0.c2f": 2,
    "backbone.stages.1.down": 3,
    "backbone.stages.1.c2f": 4,
    "backbone.stages.2.down": 5,
    "backbone.stages.2.c2f": 6,
    "backbone.stages.3.down": 7,
    "backbone.stages.3.c2f": 8,
    "backbone.sppf": 9,
}
#: ovdet sub-module names → ultralytics' (C2f, Bottleneck, SPPF, attention, head branches).
_PARTS = {
    "expand": "cv1",
    "project": "cv2",
    "blocks": "m",
    "conv1": "cv1",
    "conv2": "cv2",
    "reduce": "cv1",
    "guide": "gl",
    "box_branches": "cv2",
    "embed_branches": "cv3",
    "contrast": "cv4",
}
#: ultralytics tensors that carry no learned information (fixed DFL integral weights).
_IGNORED = re.compile(r"^model\.\d+\.dfl\.conv\.weight$")


def ultralytics_name(key: str, version: int) -> str:
    """The ultralytics state-dict key of one ovdet state-dict key.

    Example: ``backbone.stages.1.c2f.blocks.0.conv1.bn.weight`` → ``model.4.m.0.cv1.bn.weight``.

    Raises:
        KeyError: ``key`` belongs to no mapped module.
    """
    table = {**_BACKBONE, **_LAYERS[version]}
    for prefix in sorted(table, key=len, reverse=True):
        if key == prefix or key.startswith(prefix + "."):
            rest = key[len(prefix) + 1 :].split(".")
            break
    else:
        raise KeyError(f"no ultralytics counterpart for ovdet tensor {key!r}")
    parts = []
    for i, p in enumerate(rest):
        if p == "proj" and i > 0 and rest[i - 1] == "attn":
            parts.append("proj_conv")  # max-sigmoid attention's 3×3 conv; image-pooling's 'proj' keeps its name
        else:
            parts.append(_PARTS.get(p, p))
    return ".".join([f"model.{table[prefix]}", *parts])


def ultralytics_name_table(model_state: Mapping[str, torch.Tensor], version: int) -> dict[str, str]:
    """ovdet key → ultralytics key for every tensor of an ovdet state dict."""
    return {k: ultralytics_name(k, version) for k in model_state}


class ConversionError(ValueError):
    """A checkpoint does not map one-to-one onto the ovdet architecture; the message lists the tensors."""


@dataclass
class ConversionReport:
    """What a conversion loaded and what it left at initialisation.

    Attributes:
        loaded: ovdet keys filled from the checkpoint.
        missing: ovdet keys the checkpoint had no tensor for (left as initialised).
        unused: checkpoint keys that mapped to nothing.
        adapted: ovdet keys (among ``loaded``) derived from the checkpoint rather than copied: a
            YOLOv8 neck projection widened with zeros, a classifier solved from class embeddings.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def missing_modules(self) -> list[str]:
        """Missing keys collapsed to their top module paths (e.g. ``head.embed_branches.0``)."""
        mods = []
        for k in self.missing:
            parts = k.split(".")
            mod = ".".join(parts[:3]) if parts[0] == "head" else ".".join(parts[:2])
            if mod not in mods:
                mods.append(mod)
        return mods


def convert_state_dict(
    theirs: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor], version: int, strict: bool = True
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map an ultralytics state dict onto ovdet's keys.

    Args:
        theirs: ultralytics ``model.state_dict()`` (any float dtype; converted to ours).
        ours: the target ovdet state dict (defines keys, shapes and dtypes).
        version: 1 or 2 (which name table).
        strict: when True any missing or unused tensor is an error; when False (initialising a
            YOLO-World model from a plain YOLOv8 detector) they are reported instead.

    Raises:
        ConversionError: a shape mismatch (always), or unmapped tensors when ``strict``.
    """
    report = ConversionReport()
    out: dict[str, torch.Tensor] = {}
    used = set()
    bad_shapes = []
    for key, target in ours.items():
        name = ultralytics_name(key, version)
        if name not in theirs:
            report.missing.append(key)
            continue
        src = theirs[name]
        if tuple(src.shape) != tuple(target.shape):
            bad_shapes.append(f"{name} {tuple(src.shape)} -> {key} {tuple(target.shape)}")
            continue
        out[key] = src.detach().to(dtype=target.dtype).clone()
        used.add(name)
        report.loaded.append(key)
    report.unused = [k for k in theirs if k not in used and not _IGNORED.match(k)]
    if bad_shapes:
        raise ConversionError(
            "checkpoint tensors have the wrong shape for this architecture "
            f"(is the config the right version/scale?): {bad_shapes[:10]}"
            + (f" … and {len(bad_shapes) - 10} more" if len(bad_shapes) > 10 else "")
        )
    if strict and (report.missing or report.unused):
        raise ConversionError(
            f"checkpoint does not map one-to-one: missing in checkpoint {report.missing[:10]}"
            f" ({len(report.missing)} total), unmapped checkpoint tensors {report.unused[:10]}"
            f" ({len(report.unused)} total)"
        )
    return out, report


class UntrustedCheckpointError(PermissionError):
    """An ultralytics ``.pt`` (a pickle) was offered without ``trust=True``."""


def _world_version(model: torch.nn.Module) -> int | None:
    """1 or 2 for an ultralytics YOLO-World model, None for a plain detector."""
    kinds = {type(m).__name__ for m in model.modules()}
    if "WorldDetect" not in kinds:
        return None
    return 1 if "ImagePoolingAttn" in kinds else 2


def _yaml_multiples(cfg: Mapping) -> tuple[float, float, int | None] | None:
    """(depth, width, max_channels or None) an ultralytics model yaml was built with; None if it states none.

    A ``scales:`` table wins, as in ultralytics' ``parse_model``: its row named by ``scale``, and
    None when ``scale`` is unset (the table lists every scale, not which one was built). Otherwise
    the top-level ``depth_multiple``/``width_multiple`` (default 1.0 each) and ``max_channels`` when
    written (``parse_model`` itself ignores a top-level ``max_channels``).
    """
    scales = cfg.get("scales")
    if isinstance(scales, Mapping) and scales:
        if cfg.get("scale") not in scales:
            return None
        depth, width, max_ch = scales[cfg["scale"]]
        return float(depth), float(width), int(max_ch)
    if "depth_multiple" not in cfg and "width_multiple" not in cfg:
        return None
    max_ch = cfg.get("max_channels")
    return (
        float(cfg.get("depth_multiple", 1.0)),
        float(cfg.get("width_multiple", 1.0)),
        None if max_ch is None else int(max_ch),
    )


def _backbone_mismatch(state: Mapping[str, torch.Tensor], version: int, scale: str) -> str | None:
    """None when the checkpoint's backbone (layers 0-9) has exactly the tensor names and shapes of
    ``scale``; otherwise the first difference, for an error message.

    Only the backbone is compared: it is the same in YOLOv8 and YOLO-World v1/v2 of one scale,
    while the necks differ (C2f vs. text-guided C2fAttn) and the heads depend on the class count.
    """
    with torch.device("meta"):
        ours = OVDetector(ModelConfig.scaled(version, scale)).state_dict()
    want = {ultralytics_name(k, version): tuple(v.shape) for k, v in ours.items() if k.startswith("backbone.")}
    layers = tuple(f"model.{i}." for i in _BACKBONE.values())
    have = {k: tuple(v.shape) for k, v in state.items() if k.startswith(layers)}
    for name in [*want, *(k for k in have if k not in want)]:
        if want.get(name) != have.get(name):
            return (
                f"{name} is {have.get(name, 'absent')} in the checkpoint, {want.get(name, 'absent')} in scale {scale!r}"
            )
    return None


def _stem_width(version: int, scale: str) -> int:
    """Output channels of the first convolution at ``scale``."""
    return ModelConfig.scaled(version, scale).channels[0]


def _scale_of(cfg: Mapping, state: Mapping[str, torch.Tensor], version: int) -> str:
    """The scale letter (n/s/m/l/x) of an ultralytics YOLOv8 or YOLO-World model, from its yaml
    dict ``cfg`` (``{}`` when there is none, e.g. an ONNX export) and its state dict.

    From the yaml's ``scale`` key; else from its multiples (a ``scales:`` table, or
    ``depth_multiple``/``width_multiple`` and ``max_channels`` if written, as in hand-written
    YOLOv5-style yamls) matched against :data:`ovdet.config.SCALES` and confirmed by the backbone
    tensor shapes; else, with no multiples in the yaml, the one scale whose backbone shapes fit.

    Raises:
        ConversionError: no official scale fits; the message names the yaml's values or the tensor.
    """
    scale = cfg.get("scale")
    if scale in SCALES:
        return scale
    multiples = _yaml_multiples(cfg)
    if multiples is None:
        problems = {s: _backbone_mismatch(state, version, s) for s in SCALES}
        fits = [s for s, problem in problems.items() if problem is None]
        if len(fits) == 1:
            return fits[0]
        detail = f"fit several scales {fits}" if fits else "fit no official scale"
        if not fits:
            stem = state.get("model.0.conv.weight")
            width = None if stem is None else stem.shape[0]
            near = next((s for s in SCALES if _stem_width(version, s) == width), None)
            if near is not None:
                detail += f" (the stem is {near!r}'s width, but {problems[near]})"
            if any(re.match(r"^model\.10\.m\.\d+\.attn\.", k) for k in state):
                detail += "; layer 10 holds attention (C2PSA): this is a YOLO11 model, and ovdet's networks use the YOLOv8 backbone"
        raise ConversionError(
            "could not infer the model scale (n/s/m/l/x): the model yaml (if any) states no scale, "
            f"depth_multiple or width_multiple, and the backbone tensor shapes {detail}"
        )
    depth, width, max_ch = multiples
    stated = f"depth_multiple={depth}, width_multiple={width}, max_channels={'not set' if max_ch is None else max_ch}"
    # The yamls write the multiples to two decimals (0.33 for 1/3); the scales differ by >= 0.25.
    fits = [
        s
        for s, (d, w, c) in SCALES.items()
        if math.isclose(d, depth, abs_tol=0.01) and math.isclose(w, width, abs_tol=0.01) and max_ch in (None, c)
    ]
    if not fits:
        raise ConversionError(
            f"could not infer the model scale (n/s/m/l/x): the model yaml has {stated}, which "
            "matches none of the official scales' (depth_multiple, width_multiple, max_channels) "
            f"{dict(SCALES)}; ovdet converts only these architectures"
        )
    problem = _backbone_mismatch(state, version, fits[0])
    if problem:
        hint = (
            (
                "; ultralytics caps channel counts at max_channels only through a 'scales:' table, so a yaml "
                f"without one must write them already capped at {SCALES[fits[0]][2]}"
            )
            if "scales" not in cfg
            else ""
        )
        raise ConversionError(
            f"the model yaml's {stated} match scale {fits[0]!r}, but the checkpoint's backbone "
            f"is not that scale's: {problem}{hint}"
        )
    return fits[0]


def read_ultralytics_checkpoint(path: str | Path, trust: bool = False) -> tuple[torch.nn.Module, dict]:
    """Unpickle an ultralytics checkpoint — only when the caller vouches for the file.

    Args:
        path: a ``.pt`` written by ultralytics (a dict holding the model as a pickled module).
        trust: must be True: unpickling can run arbitrary code embedded in the file.

    Returns:
        (the float32 model in eval mode, the checkpoint dict's other entries).

    Raises:
        UntrustedCheckpointError: ``trust`` is False (nothing is read).
        FileNotFoundError: no such file.
        ImportError: ultralytics is not installed (its classes are inside the pickle).
        ConversionError: the file holds no model.

    Weights holding NaN or infinite values are read with a warning naming them.
    """
    path = Path(path)
    if not trust:
        raise UntrustedCheckpointError(
            f"{path} is an ultralytics checkpoint, i.e. a Python pickle: loading it can execute arbitrary code. "
            "Pass trust=True (command line: --trust) only for files from a source you trust, such as the "
            "official ultralytics releases; the converted model is then saved in ovdet's safe format "
            "(safetensors + JSON) and never needs unpickling again."
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        import ultralytics  # noqa: F401  (the pickle refers to its classes)
    except ImportError as e:
        raise ImportError(
            "reading an ultralytics checkpoint needs the ultralytics package: pip install 'ovdet[ultralytics]'"
        ) from e
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the caller, see above
    except Exception as e:  # corrupt, truncated or not a torch file: unpickling errors come in many types
        raise ConversionError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e}); re-download or re-export it"
        ) from e
    model = ckpt
    if isinstance(ckpt, dict):
        model = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")
    if not isinstance(model, torch.nn.Module):
        raise ConversionError(
            f"{path}: no model inside (keys: {sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt)})"
        )
    extra = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer")} if isinstance(ckpt, dict) else {}
    model = model.float().eval()
    warn_non_finite(model.state_dict(), path)
    return model, extra


def class_names_of(model: torch.nn.Module) -> list[str] | None:
    """An ultralytics model's class names in index order (its ``names`` dict or list), or None."""
    names = getattr(model, "names", None)
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        names = [names[i] for i in range(len(names))]
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def class_vocabulary(
    names: Sequence[str] | None, table_names: Sequence[str], table: torch.Tensor
) -> tuple[list[str], torch.Tensor]:
    """The rows of an embedding table for a checkpoint's class ``names``, in their order.

    Args:
        names: the checkpoint's class names (index order).
        table_names, table: names and (N, D) embeddings, e.g. an ``ovdet embed`` file or a
            built-in vocabulary; it may hold more names than needed (matched as
            :func:`~ovdet.text.vocabulary.select_embeddings` matches them).

    Returns:
        (names, (K, D) float32 embeddings).

    Raises:
        ConversionError: the checkpoint has no names, or the table lacks some (named).
    """
    if not names:
        raise ConversionError("the checkpoint holds no class names to take embeddings for")
    from ovdet.text.vocabulary import name_key, select_embeddings

    try:
        rows = select_embeddings(list(names), None, list(table_names), torch.as_tensor(table))
    except KeyError:
        have = {name_key(n) for n in table_names}
        missing = [n for n in names if name_key(n) not in have]
        raise ConversionError(
            f"the class embeddings lack {len(missing)} of the checkpoint's {len(names)} class names "
            f"(e.g. {missing[:5]}); embed them (ovdet embed) in the detector's text space"
        ) from None
    return list(names), rows.float()


def checkpoint_vocabulary(model: torch.nn.Module) -> tuple[list[str], torch.Tensor] | None:
    """The classes an ultralytics YOLO-World model carries: its names and (K, D) text features.

    ultralytics' ``set_classes`` stores L2-normalised text features (``txt_feats``, (1, K, D))
    and the names; a model saved after it predicts those classes by default (the official
    files: the 80 COCO names). A freshly built model holds a random, un-normalised placeholder
    instead, and a plain YOLOv8 has none: both give None.
    """
    feats = getattr(model, "txt_feats", None)
    names = getattr(model, "names", None)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 3 or feats.shape[0] != 1:
        return None
    feats = feats[0].detach().float()  # (K, D)
    names = class_names_of(model)
    if names is None or len(names) != len(feats):
        return None
    norms = feats.norm(dim=-1)  # (K,)
    if not torch.isfinite(feats).all() or not bool(((norms - 1).abs() < 1e-2).all()):
        return None  # the placeholder of a model that never had set_classes
    if len(set(names)) != len(names):
        return None
    return list(names), feats


def convert_ultralytics_model(
    model: torch.nn.Module,
    text: TextConfig | None = None,
    embed_dim: int | None = None,
    vocabulary: tuple[list[str], torch.Tensor] | None = None,
) -> tuple[OVDetector, ConversionReport]:
    """An ovdet network with the weights of an ultralytics YOLO-World or YOLOv8 detection model.

    YOLO-World v1/v2 map one-to-one (any unmapped or mis-shaped tensor is an error). A plain
    YOLOv8 detector initialises a v2 YOLO-World network of the same scale (see
    :func:`convert_yolov8_state`).

    Args:
        model: an ultralytics ``WorldModel`` or ``DetectionModel`` (float32).
        text: text encoder config for the result (default open_clip ViT-B-32 ``openai``,
            whose embeddings are what ultralytics feeds YOLO-World).
        embed_dim: text-embedding width of the result, for a plain YOLOv8 initialising a
            detector for another text encoder (e.g. 384 for MiniLM; the text parts are random
            anyway). None: 512. A YOLO-World checkpoint fixes its own width.
        vocabulary: for a plain YOLOv8 only: (names, (K, D) embeddings) of the checkpoint's own
            classes, in its class order; the classifier is then carried over exactly (see
            :func:`convert_yolov8_state`).

    Raises:
        ConversionError: ``embed_dim`` differs from a YOLO-World checkpoint's, or ``vocabulary``
            is given for a YOLO-World checkpoint.
    """
    state = model.state_dict()
    version = _world_version(model)
    if version is None:
        scale = _scale_of(getattr(model, "yaml", None) or {}, state, 2)
        return convert_yolov8_state(state, scale, text, embed_dim, vocabulary)
    if vocabulary is not None:
        raise ConversionError("vocabulary= carries a plain YOLOv8's classifier over; a YOLO-World checkpoint has none")
    cfg = ModelConfig.scaled(version, _scale_of(getattr(model, "yaml", None) or {}, state, version), text)
    if embed_dim is not None and embed_dim != cfg.embed_dim:
        raise ConversionError(f"embed_dim={embed_dim}: a YOLO-World checkpoint's text embeddings are {cfg.embed_dim}-d")
    net = OVDetector(cfg).eval()
    mapped, report = convert_state_dict(state, net.state_dict(), version, strict=True)
    missing = net.load_state_dict(mapped, strict=False).missing_keys
    if missing:
        raise ConversionError(f"tensors left unfilled: {missing[:10]}")
    return net, report


def convert_yolov8_state(
    state: Mapping[str, torch.Tensor],
    scale: str | None = None,
    text: TextConfig | None = None,
    embed_dim: int | None = None,
    vocabulary: tuple[list[str], torch.Tensor] | None = None,
) -> tuple[OVDetector, ConversionReport]:
    """A v2 YOLO-World network that computes what a plain YOLOv8 detector computes.

    Every tensor whose name and shape fit is loaded (backbone, neck convolutions, box branches,
    the embedding branches' first two layers). Two parts are adapted so that the network's boxes
    and features equal the YOLOv8's exactly rather than starting from random:

    - **the neck's text attention is switched off at the start**: each text-guided C2f
      concatenates one branch more than YOLOv8's C2f (the attention output, last); its projection
      gets YOLOv8's weights for the shared inputs and zeros for that branch (reported in
      ``adapted``). The attention layers themselves stay random and learn from zero influence.
    - **the classifier**, when ``vocabulary`` gives the checkpoint's own classes with text
      embeddings ``T`` (K, D), K ≤ D: YOLOv8 scores class k as ``w_k·h + b_k`` on the hidden
      features h of its class branch; YOLO-World scores ``exp(s)·<W h + c, t̂_k> + β`` with
      t̂_k = T_k/|T_k| (v2, BatchNorm set to the identity). Choosing ``W = T̂⁺ W_cls / exp(s)``,
      ``c = T̂⁺ b_cls / exp(s)`` and β = 0 (``T̂⁺`` the pseudo-inverse, exact since the rows of
      ``T̂`` are independent) reproduces every class logit; other texts score by where their
      embedding falls in the span of the K class embeddings. Without ``vocabulary`` the
      embedding branches' last layers and the contrastive heads stay random (train before use).

    Args:
        state: an ultralytics YOLOv8 ``DetectionModel`` state dict (``model.<i>.…``), e.g. from a
            ``.pt`` or :func:`ovdet.onnx_import.read_onnx_export`.
        scale: n/s/m/l/x; None: the one scale whose backbone shapes fit.
        text, embed_dim: the text encoder and width of the result (see
            :func:`convert_ultralytics_model`).
        vocabulary: (names, embeddings (K, D)) in the checkpoint's class order.

    Raises:
        ConversionError: no scale fits; the vocabulary does not match the classifier (count,
            width, duplicate or linearly dependent embeddings).
    """
    scale = scale or _scale_of({}, state, 2)
    cfg = ModelConfig.scaled(2, scale, text)
    if embed_dim is not None:
        cfg = dataclasses.replace(cfg, embed_dim=int(embed_dim))
    net = OVDetector(cfg).eval()
    ours = net.state_dict()
    state, adapted = _pad_attention_inputs(state, ours)
    fitting = {
        k: v
        for k, v in ours.items()
        if ultralytics_name(k, 2) in state and tuple(state[ultralytics_name(k, 2)].shape) == tuple(v.shape)
    }
    mapped, report = convert_state_dict(state, fitting, 2, strict=False)
    report.adapted = adapted
    if vocabulary is not None:
        solved = _classifier_from_vocabulary(state, net, *vocabulary)
        mapped.update(solved)
        report.loaded += [k for k in solved if k not in report.loaded]
        report.adapted += sorted(solved)
        report.unused = [k for k in report.unused if not _CLASS_LAYER.match(k)]
    report.missing = [k for k in ours if k not in mapped]
    net.load_state_dict(mapped, strict=False)
    return net, report


@torch.no_grad()
def calibrate_batchnorm(net: OVDetector, images: torch.Tensor, batch: int = 8) -> int:
    """Give every BatchNorm of ``net`` the statistics of its input on real images, keeping the
    network's eval-mode function.

    A BatchNorm unfolded from a fused convolution (:mod:`ovdet.onnx_import`) is the identity with
    mean 0 and variance 1, which is exact in eval mode but not in training: there BatchNorm
    normalises by the batch's own statistics, which are nothing like 0 and 1, so the first step of
    a fine-tune changes the whole network (a fine-tune from the YOLOv8n int8 export fell from
    mAP50-95 0.48 to 0.03 within 8 epochs). Here each BatchNorm's running mean μ and variance σ²
    become those of its input over ``images`` and its affine part compensates
    (``weight ← weight·sqrt(σ² + eps)/sqrt(var + eps)``, ``bias ← bias + (μ - mean)·weight/sqrt(var + eps)``),
    so eval outputs are unchanged (up to rounding) and a training batch normalises almost as the
    running statistics do.

    Args:
        net: the network (left in the mode it was in).
        images: (N, 3, H, W) float images in [0, 1], letterboxed as for inference.
        batch: images per forward pass.

    Returns:
        The number of BatchNorm layers calibrated.

    Shapes:
        per layer, μ and σ² are (C,), over N·H·W positions.
    """
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    sums: dict[torch.nn.Module, list] = {m: [0.0, 0.0, 0] for m in norms}

    def record(module, inputs, output) -> None:
        x = inputs[0].double()  # (B, C, H, W)
        acc = sums[module]
        acc[0] = acc[0] + x.sum((0, 2, 3))
        acc[1] = acc[1] + (x * x).sum((0, 2, 3))
        acc[2] += x.numel() // x.shape[1]

    handles = [m.register_forward_hook(record) for m in norms]
    was_training = net.training
    net.eval()
    try:
        text = torch.zeros(1, 1, net.cfg.embed_dim, device=images.device)
        text[..., 0] = 1.0
        for i in range(0, len(images), batch):
            chunk = images[i : i + batch]
            net(chunk, text.expand(len(chunk), -1, -1))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    for m in norms:
        total, squares, n = sums[m]
        if n == 0:
            continue
        mean = total / n  # (C,)
        var = (squares / n - mean * mean).clamp_min(0)  # (C,)
        old_scale = m.weight.double() / (m.running_var.double() + m.eps).sqrt()
        new_bias = m.bias.double() + (mean - m.running_mean.double()) * old_scale
        m.weight.copy_((old_scale * (var + m.eps).sqrt()).to(m.weight.dtype))
        m.bias.copy_(new_bias.to(m.bias.dtype))
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    return len(norms)


#: ultralytics' YOLOv8 class layers (the 1×1 convolution ending each ``cv3`` branch of the head).
_CLASS_LAYER = re.compile(r"^model\.22\.cv3\.(\d)\.2\.(weight|bias)$")


def _pad_attention_inputs(
    state: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """YOLOv8's C2f projections widened with zero columns for the text-attention branch.

    Returns:
        (the state with those weights replaced, the ovdet keys adapted).

    Shapes:
        theirs (C_out, (2 + n)·c, 1, 1) → ours (C_out, (3 + n)·c, 1, 1), c = C_out // 2; the
        attention output is the last c input channels of ``C2fTextAttn.project``.
    """
    out, adapted = dict(state), []
    for key, target in ours.items():
        if not re.fullmatch(r"neck\.\w+\.project\.conv\.weight", key):
            continue
        name = ultralytics_name(key, 2)
        src = state.get(name)
        hidden = target.shape[0] // 2
        if src is None or tuple(src.shape) == tuple(target.shape):
            continue
        if (
            src.shape[0] == target.shape[0]
            and src.shape[2:] == target.shape[2:]
            and src.shape[1] + hidden == target.shape[1]
        ):
            padded = torch.zeros(target.shape, dtype=src.dtype)
            padded[:, : src.shape[1]] = src
            out[name] = padded
            adapted.append(key)
    return out, adapted


@torch.no_grad()
def _classifier_from_vocabulary(
    state: Mapping[str, torch.Tensor], net: OVDetector, names: list[str], embeddings: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The embedding branches' last layers and contrastive heads that reproduce YOLOv8's class logits.

    See :func:`convert_yolov8_state` for the algebra. Solved in float64.

    Returns:
        ovdet key → tensor for ``head.embed_branches.{i}.2.*`` and ``head.contrast.{i}.*``.
    """
    emb = torch.as_tensor(embeddings).detach().double()  # (K, D)
    k, d = emb.shape if emb.ndim == 2 else (None, None)
    if emb.ndim != 2 or d != net.cfg.embed_dim:
        raise ConversionError(
            f"vocabulary embeddings are {tuple(emb.shape)}; expected (K, {net.cfg.embed_dim}) for this network"
        )
    if len(names) != k or len(set(names)) != k:
        raise ConversionError(f"vocabulary: {len(names)} names ({len(set(names))} distinct) for {k} embeddings")
    if not torch.isfinite(emb).all() or bool((emb.norm(dim=1) == 0).any()):
        raise ConversionError("vocabulary embeddings hold non-finite values or all-zero rows")
    unit = torch.nn.functional.normalize(emb, dim=1)  # (K, D)
    if k > d or torch.linalg.matrix_rank(unit).item() < k:
        raise ConversionError(
            f"the {k} class embeddings are linearly dependent (rank {torch.linalg.matrix_rank(unit).item()}, "
            f"width {d}): YOLOv8's classifier cannot be carried over exactly; are two names the same text?"
        )
    pinv = torch.linalg.pinv(unit)  # (D, K)
    eps = net.cfg.bn_eps
    out: dict[str, torch.Tensor] = {}
    for i, contrast in enumerate(net.head.contrast):
        w_cls = state.get(f"model.22.cv3.{i}.2.weight")
        b_cls = state.get(f"model.22.cv3.{i}.2.bias")
        if w_cls is None or b_cls is None or w_cls.shape[0] != k:
            raise ConversionError(
                f"vocabulary: {k} classes, but the checkpoint's class layer model.22.cv3.{i}.2 has "
                f"{None if w_cls is None else w_cls.shape[0]} outputs"
            )
        scale = contrast.logit_scale.double().exp()
        w = (pinv @ w_cls.double().flatten(1)) / scale  # (D, c3)
        b = (pinv @ b_cls.double()) / scale  # (D,)
        out[f"head.embed_branches.{i}.2.weight"] = w.view(d, -1, 1, 1).float()
        out[f"head.embed_branches.{i}.2.bias"] = b.float()
        out[f"head.contrast.{i}.bias"] = torch.zeros(1)
        out[f"head.contrast.{i}.logit_scale"] = contrast.logit_scale.detach().clone()
        out[f"head.contrast.{i}.norm.weight"] = torch.full((d,), math.sqrt(1.0 + eps))
        out[f"head.contrast.{i}.norm.bias"] = torch.zeros(d)
        out[f"head.contrast.{i}.norm.running_mean"] = torch.zeros(d)
        out[f"head.contrast.{i}.norm.running_var"] = torch.ones(d)
        out[f"head.contrast.{i}.norm.num_batches_tracked"] = torch.tensor(0)
    return out


# ---------------------------------------------------------------------------------------------
# Pretrained names → official ultralytics release files, downloaded once and converted once.

#: The release ultralytics' own ``attempt_download_asset`` fetches its assets from
#: (``https://github.com/{repo}/releases/download/{release}/{file}``, repo ``ultralytics/assets``).
DEFAULT_WEIGHTS_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0"
#: Environment variable overriding :data:`DEFAULT_WEIGHTS_URL` (a base URL: https://, http:// or file://).
WEIGHTS_URL_ENV = "OVDET_WEIGHTS_URL"

#: Pretrained name → official ultralytics release file. Only files that ultralytics lists as
#: release assets (``ultralytics.utils.downloads.GITHUB_ASSETS_NAMES``) are here: there is no
#: ``yolov8n-world.pt`` nor ``yolov8n-worldv2.pt``, so ``yolo-world-v1-n``/``yolo-world-v2-n``
#: do not exist. ``yolov8{n..x}`` are COCO detectors that initialise a v2 YOLO-World network
#: (backbone, neck convolutions and box branches loaded; text parts left random: train before use).
PRETRAINED: Mapping[str, str] = MappingProxyType(
    {
        **{f"yolo-world-v1-{s}": f"yolov8{s}-world.pt" for s in "smlx"},
        **{f"yolo-world-v2-{s}": f"yolov8{s}-worldv2.pt" for s in "smlx"},
        **{f"yolov8{s}": f"yolov8{s}.pt" for s in "nsmlx"},
    }
)

#: Models shipped inside the package (read with no network, ever): name → folder under ``ovdet/assets``.
#: ``ovdet-demo`` is a small v2-s detector with a MiniLM text encoder, trained by
#: ``tools/train_demo.py`` on 112 coco128 images (see the README): a demo, not the official weights.
BUNDLED: Mapping[str, str] = MappingProxyType({"ovdet-demo": "ovdet-demo"})


def bundled_dir(name: str) -> Path:
    """The checkpoint folder of a bundled model (see :data:`BUNDLED`).

    Raises:
        KeyError: not a bundled name.
        FileNotFoundError: the package's files are missing (a broken install).
    """
    path = Path(__file__).resolve().parent / "assets" / BUNDLED[name]
    if not is_checkpoint_dir(path):
        raise FileNotFoundError(
            f"the bundled model {name!r} is missing from {path} (config.json + model.safetensors); reinstall ovdet"
        )
    return path


def model_names() -> list[str]:
    """Every name :func:`fetch_pretrained` accepts: bundled models first, then official ones."""
    return [*BUNDLED, *PRETRAINED]


_PROBE_TIMEOUT_S = 5.0  # a host that does not answer a TCP connect within this is treated as offline
_DOWNLOAD_RETRIES = 1  # safe_download waits 5 s before its one retry (which resumes a partial body)
_MIN_BYTES = 1e5  # smaller bodies are error pages, not checkpoints (ultralytics uses the same bound)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are neither cached nor downloadable; the message says where to put the file."""


def pretrained_file(name: str) -> str:
    """The official ultralytics file behind a pretrained name (e.g. ``yolo-world-v2-s`` → ``yolov8s-worldv2.pt``).

    Raises:
        ValueError: unknown name; the message suggests the closest valid one and lists all.
    """
    if name in PRETRAINED:
        return PRETRAINED[name]
    if name in BUNDLED:
        raise ValueError(f"{name!r} is bundled with ovdet (see bundled_dir), not an ultralytics release file")
    close = difflib.get_close_matches(str(name), model_names(), n=1, cutoff=0.5)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown pretrained model {name!r}{hint} Valid names: {', '.join(model_names())}")


def pretrained_url(name: str, base_url: str | None = None) -> str:
    """The URL a pretrained name is downloaded from: ``base_url``, else ``$OVDET_WEIGHTS_URL``,
    else :data:`DEFAULT_WEIGHTS_URL`, followed by the file name."""
    base = base_url or os.environ.get(WEIGHTS_URL_ENV) or DEFAULT_WEIGHTS_URL
    return f"{base.rstrip('/')}/{pretrained_file(name)}"


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else ovdet_home()


def _fetch(url: str, dest: Path) -> None:
    """Copy ``url`` (https://, http:// or file://) to ``dest``; raises OSError/ConnectionError on failure."""
    scheme = urlsplit(url).scheme
    if scheme == "file":
        shutil.copyfile(Path(url2pathname(urlsplit(url).path)), dest)
    elif scheme in ("http", "https"):
        # requests (inside safe_download) waits 30 s per connect attempt on a network that drops
        # packets silently; a short probe answers "offline" within seconds instead.
        reason = unreachable_reason(url, timeout=_PROBE_TIMEOUT_S)
        if reason is not None:
            raise ConnectionError(reason)
        try:
            from ultralytics.utils.downloads import safe_download
        except ImportError as e:
            raise ImportError(
                "downloading pretrained weights needs the ultralytics package: pip install 'ovdet[ultralytics]'"
            ) from e
        # safe_download itself writes to a unique '.part' name and publishes only a complete body.
        safe_download(url, file=dest, retry=_DOWNLOAD_RETRIES, min_bytes=_MIN_BYTES, unzip=False, progress=True)
    else:
        raise ConnectionError(
            f"unsupported URL scheme in {url!r}; {WEIGHTS_URL_ENV} / base_url must start with "
            "https://, http:// or file://"
        )
    if not dest.is_file():
        raise ConnectionError(f"nothing was written for {url}")


def download_pretrained(name: str, cache_dir: str | Path | None = None, base_url: str | None = None) -> Path:
    """The official ``.pt`` of a pretrained name in ``<cache>/downloads/``, downloading it when absent.

    A file already there (e.g. copied by hand onto an offline machine) is used with no network.
    Downloads go to a unique temporary name and are renamed into place only when complete and
    recognisably a torch checkpoint, so an interrupted run never leaves a half file that looks valid.

    Args:
        name: a key of :data:`PRETRAINED`.
        cache_dir: cache root (default :func:`ovdet.io.ovdet_home`).
        base_url: download base URL (default ``$OVDET_WEIGHTS_URL``, else :data:`DEFAULT_WEIGHTS_URL`).

    Raises:
        ValueError: unknown name.
        WeightsUnavailable: not cached and the download failed; the message names the file to
            place, where, and the URL to fetch it from.
    """
    filename = pretrained_file(name)
    target = _cache_root(cache_dir) / "downloads" / filename
    if target.is_file():
        return target
    url = pretrained_url(name, base_url)

    def download(tmp: Path) -> None:
        _fetch(url, tmp)
        if not zipfile.is_zipfile(tmp):  # torch.save writes zip archives; an HTML page or junk is not one
            raise ConnectionError(f"the body of {url} is not a torch checkpoint (not a zip archive)")

    try:
        atomic_write(target, download)
    except OSError as e:  # ConnectionError, requests' errors and file errors are all OSErrors
        raise WeightsUnavailable(
            f"pretrained weights {name!r} are not available: {target} does not exist and fetching {url} failed "
            f"({e}). On a machine with internet access download {url} and copy it to {target}; ovdet then uses "
            f"it without network. Or convert it yourself: Detector.from_ultralytics('{filename}', trust=True)"
            f".save('<dir>') (CLI: ovdet convert {filename} <dir> --trust) and use Detector.load('<dir>'). "
            f"A mirror can be set with ${WEIGHTS_URL_ENV}."
        ) from e
    return target


def fetch_pretrained(name: str, cache_dir: str | Path | None = None, base_url: str | None = None) -> Path:
    """The ovdet checkpoint directory of a pretrained model, downloading and converting it once.

    A bundled model (:data:`BUNDLED`, e.g. ``"ovdet-demo"``) is the package's own folder: no
    cache, no network.

    ``<cache>/models/<name>/`` holding ``config.json`` and ``model.safetensors`` is returned at
    once (no network, nothing unpickled). Otherwise the official ``.pt`` is taken from
    ``<cache>/downloads/`` or downloaded (:func:`download_pretrained`), converted, and written
    through a temporary directory that is renamed into place, so a crash never leaves a
    half-written model directory.

    The ``.pt`` is unpickled with ``trust=True``: it is the official ultralytics release file,
    fetched from ultralytics' own release URL (or a mirror/file the user configured, or placed
    under the official name in ovdet's own cache) — the same file ``ultralytics.YOLO(...)``
    would download and unpickle. This happens once; later loads read only safetensors + JSON.

    Args:
        name: a key of :data:`BUNDLED` or :data:`PRETRAINED`, e.g. ``"yolo-world-v2-s"``.
        cache_dir: cache root (default :func:`ovdet.io.ovdet_home`, i.e. ``$OVDET_HOME``).
        base_url: download base URL (default ``$OVDET_WEIGHTS_URL``, else :data:`DEFAULT_WEIGHTS_URL`).

    Returns:
        The directory, loadable with :meth:`ovdet.api.Detector.load`.

    Raises:
        ValueError: unknown name (closest valid name suggested).
        WeightsUnavailable: not cached and not downloadable (offline); the message says what to do.
        ConversionError: the cached ``.pt`` is unreadable or not the expected model.
    """
    if name in BUNDLED:
        return bundled_dir(name)
    pretrained_file(name)  # validate before touching the disk
    root = _cache_root(cache_dir)
    out = root / "models" / name
    if is_checkpoint_dir(out):
        return out
    pt = download_pretrained(name, root, base_url)
    try:
        model, _ = read_ultralytics_checkpoint(pt, trust=True)
        net, report = convert_ultralytics_model(model)
    except (ConversionError, UntrustedCheckpointError, ImportError):
        raise
    except Exception as e:  # torch.load's errors on a truncated or foreign file are of many types
        raise ConversionError(
            f"{pt} could not be read as an ultralytics checkpoint ({type(e).__name__}: {e}); "
            f"delete it so it is downloaded again, or replace it with "
            f"{pretrained_url(name, None)}"
        ) from e
    names, emb = checkpoint_vocabulary(model) or ([], None)
    tmp = out.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        save_checkpoint(
            tmp,
            net,
            names,
            emb,
            extra={
                "converted_from": {"name": name, "source_file": pt.name, "missing_modules": report.missing_modules()}
            },
        )
        publish_dir(tmp, out, is_checkpoint_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
