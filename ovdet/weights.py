"""Official checkpoints → ovdet: the explicit name table, conversion, and pretrained downloads.

ultralytics stores YOLO-World models as ``nn.Sequential`` layers ``model.<i>.…``; ovdet names
modules by role. :func:`ultralytics_name_table` spells out the correspondence; conversion fails
loudly on any tensor that is unmapped, missing or mis-shaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import torch

from ovdet.config import ModelConfig

#: ovdet module path → ultralytics layer index, per version (v1 has image-pooling attention at 16).
_LAYERS: dict[int, dict[str, int]] = {
    2: {"neck.top_down_p4": 12, "neck.top_down_p3": 15, "neck.down_p3": 16, "neck.bottom_up_p4": 18,
        "neck.down_p4": 19, "neck.bottom_up_p5": 21, "head": 22},
    1: {"neck.top_down_p4": 12, "neck.top_down_p3": 15, "neck.pool_attn": 16, "neck.down_p3": 17,
        "neck.bottom_up_p4": 19, "neck.down_p4": 20, "neck.bottom_up_p5": 22, "head": 23},
}
_BACKBONE = {"backbone.stem": 0, "backbone.stages.0.down": 1, "backbone.stages.0.c2f": 2,
             "backbone.stages.1.down": 3, "backbone.stages.1.c2f": 4, "backbone.stages.2.down": 5,
             "backbone.stages.2.c2f": 6, "backbone.stages.3.down": 7, "backbone.stages.3.c2f": 8,
             "backbone.sppf": 9}
#: ovdet sub-module names → ultralytics' (C2f, Bottleneck, SPPF, attention, head branches).
_PARTS = {"expand": "cv1", "project": "cv2", "blocks": "m", "conv1": "cv1", "conv2": "cv2", "reduce": "cv1",
          "guide": "gl", "box_branches": "cv2", "embed_branches": "cv3", "contrast": "cv4"}
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
            rest = key[len(prefix) + 1:].split(".")
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
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def missing_modules(self) -> list[str]:
        """Missing keys collapsed to their top module paths (e.g. ``head.embed_branches.0``)."""
        mods = []
        for k in self.missing:
            parts = k.split(".")
            mod = ".".join(parts[:3]) if parts[0] == "head" else ".".join(parts[:2])
            if mod not in mods:
                mods.append(mod)
        return mods


def convert_state_dict(theirs: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor], version: int,
                       strict: bool = True) -> tuple[dict[str, torch.Tensor], ConversionReport]:
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
        raise ConversionError("checkpoint tensors have the wrong shape for this architecture "
                              f"(is the config the right version/scale?): {bad_shapes[:10]}"
                              + (f" … and {len(bad_shapes) - 10} more" if len(bad_shapes) > 10 else ""))
    if strict and (report.missing or report.unused):
        raise ConversionError(f"checkpoint does not map one-to-one: missing in checkpoint {report.missing[:10]}"
                              f" ({len(report.missing)} total), unmapped checkpoint tensors {report.unused[:10]}"
                              f" ({len(report.unused)} total)")
    return out, report
