"""Typed configuration: dataclasses, YAML load/save and ``a.b=c`` overrides.

A model config states every channel count explicitly, so a YAML file reads as the
architecture it builds. :meth:`ModelConfig.scaled` derives the official YOLO-World
scales (n/s/m/l/x) from ultralytics' compound-scaling rules; the shipped
``configs/models/yolo-world-v{1,2}-{n,s,m,l,x}.yaml`` are its output.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")

#: ultralytics' compound-scaling constants per scale: (depth, width, max_channels).
SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the field."""


@dataclass(frozen=True)
class TextConfig:
    """Which text encoder turns class names into embeddings.

    Attributes:
        model: open_clip model name, e.g. ``"ViT-B-32"`` (the encoder YOLO-World was trained with).
        pretrained: open_clip pretrained tag (``"openai"``) or a path to a local checkpoint
            file; ``None`` builds the architecture with random weights.
        templates: prompt templates with one ``{}`` each; embeddings of several templates are
            averaged and re-normalised. ``("{}",)`` feeds names as they are (ultralytics' way).
        custom: an open_clip text-tower config (``embed_dim``, ``context_length``,
            ``vocab_size``, ``width``, ``heads``, ``layers``) for a randomly initialised tower,
            used by tests and tiny configs; when set, ``model``/``pretrained`` are ignored.
        seed: seed for the random initialisation of a ``custom`` tower, so the same config
            always yields the same encoder.
    """

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    templates: tuple[str, ...] = ("{}",)
    custom: dict[str, int] | None = None
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a YOLO-World-style detector, with every channel count explicit.

    Attributes:
        version: 1 (L2-normalised contrastive head + image-pooling attention) or
            2 (BatchNorm contrastive head, no image-pooling attention).
        channels: backbone output channels of the stem (P1), P2, P3, P4, P5 stages.
        depths: C2f repeats in the P2, P3, P4, P5 stages.
        neck_channels: outputs of the four text-guided C2f blocks, in build order:
            top-down P4, top-down P3 (= neck P3 output), bottom-up P4, bottom-up P5.
        neck_depth: bottleneck repeats inside each neck block.
        neck_heads: attention heads of each neck block's max-sigmoid attention.
        embed_dim: dimension D of text and region embeddings.
        pool_channels: width of v1's image-pooling attention.
        pool_heads: heads of v1's image-pooling attention.
        pool_size: v1's image-pooling output grid (k x k per level).
        box_channels: hidden width of the box (DFL) branch.
        embed_channels: hidden width of the embedding branch.
        reg_max: DFL bins per box side.
        strides: strides of the three detection levels.
        bn_eps: BatchNorm epsilon (ultralytics uses 1e-3).
        bn_momentum: BatchNorm momentum (ultralytics uses 0.03).
        text: the text encoder used by ``set_classes``.
    """

    version: int = 2
    channels: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)
    depths: tuple[int, int, int, int] = (1, 2, 2, 1)
    neck_channels: tuple[int, int, int, int] = (256, 128, 256, 512)
    neck_depth: int = 1
    neck_heads: tuple[int, int, int, int] = (4, 2, 4, 8)
    embed_dim: int = 512
    pool_channels: int = 256
    pool_heads: int = 8
    pool_size: int = 3
    box_channels: int = 64
    embed_channels: int = 128
    reg_max: int = 16
    strides: tuple[int, int, int] = (8, 16, 32)
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ConfigError(f"model.version must be 1 or 2, got {self.version!r}")
        for name, n in (("channels", 5), ("depths", 4), ("neck_channels", 4), ("neck_heads", 4),
                        ("strides", 3)):
            value = getattr(self, name)
            if len(value) != n:
                raise ConfigError(f"model.{name} needs {n} values, got {list(value)}")
        for i, (c, h) in enumerate(zip(self.neck_channels, self.neck_heads)):
            if (c // 2) % h:
                raise ConfigError(
                    f"model.neck_heads[{i}]={h} must divide the block's hidden width {c // 2} "
                    f"(neck_channels[{i}]={c} // 2)")
        if self.version == 1 and self.pool_channels % self.pool_heads:
            raise ConfigError(f"model.pool_heads={self.pool_heads} must divide "
                              f"model.pool_channels={self.pool_channels}")

    @classmethod
    def scaled(cls, version: int, scale: str, text: TextConfig | None = None) -> "ModelConfig":
        """The official YOLO-World v1/v2 architecture at one scale.

        Follows ultralytics' YAML scaling of ``yolov8-world.yaml`` / ``yolov8-worldv2.yaml``
        (``nc=80``) so parameter shapes equal the official checkpoints'.

        Args:
            version: 1 or 2.
            scale: one of ``n, s, m, l, x``.
            text: text encoder config; the default is open_clip ViT-B-32 ``openai``.
        """
        if scale not in SCALES:
            raise ConfigError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
        depth, width, max_ch = SCALES[scale]

        def ch(c: int) -> int:
            return int(math.ceil(min(c, max_ch) * width / 8) * 8)

        def rep(n: int) -> int:
            return max(round(n * depth), 1) if n > 1 else n

        def heads(nh: int) -> int:
            return int(max(round(min(nh, max_ch // 2 // 32)) * width, 1)) if nh > 1 else nh

        channels = (ch(64), ch(128), ch(256), ch(512), ch(1024))
        neck = (ch(512), ch(256), ch(512), ch(1024))
        nc = 80  # the class count the official configs were built with fixes the hidden width
        return cls(
            version=version,
            channels=channels,
            depths=(rep(3), rep(6), rep(6), rep(3)),
            neck_channels=neck,
            neck_depth=rep(3),
            neck_heads=(heads(8), heads(4), heads(8), heads(16)),
            embed_dim=512,
            box_channels=max(16, neck[1] // 4, 16 * 4),
            embed_channels=max(neck[1], min(nc, 100)),
            text=text or TextConfig(),
        )


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain YAML/JSON-ready data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by name.

    Args:
        cls: the dataclass type.
        data: field values; nested dataclass fields take nested mappings.
        where: dotted prefix for error messages (e.g. ``"model."``).

    Raises:
        ConfigError: an unknown key or a value of the wrong kind, naming the field.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[where + k for k in unknown]}; "
                          f"valid keys: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    hints = {f.name: f.type for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name, value in data.items():
        default = getattr(cls(), name) if _has_defaults(cls) else None
        if dataclasses.is_dataclass(default) and value is not None:
            kwargs[name] = from_dict(type(default), value, f"{where}{name}.")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}{name} must be a list, got {value!r}")
            kwargs[name] = tuple(value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}{name} must be true/false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}{name} must be a number, got {value!r} ({hints[name]})")
            kwargs[name] = type(default)(value) if isinstance(default, float) else value
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - dataclass signature errors
        raise ConfigError(f"{where or 'config'}: {e}") from e


def _has_defaults(cls: type) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``"a.b=c"`` overrides to nested config data; values are parsed as YAML.

    Example: ``apply_overrides(d, ["model.text.templates=['a photo of a {}']", "model.version=1"])``.

    Raises:
        ConfigError: an override without ``=`` or one that walks into a non-mapping.
    """
    out = yaml.safe_load(yaml.safe_dump(data))  # deep copy through plain data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_model_config(path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """Read a model YAML (top-level keys are ModelConfig fields, ``text:`` nested).

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ConfigError: the file is not valid YAML or has unknown/ill-typed keys (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return from_dict(ModelConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def save_model_config(cfg: ModelConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (the format :func:`load_model_config` reads)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
