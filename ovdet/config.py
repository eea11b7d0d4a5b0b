"""Typed configuration: dataclasses, YAML load/save and ``a.b=c`` overrides.

A model config states every channel count explicitly, so a YAML file reads as the
architecture it builds. :meth:`ModelConfig.scaled` derives the official YOLO-World
scales (n/s/m/l/x) from ultralytics' compound-scaling rules; the shipped
``configs/models/yolo-world-v{1,2}-{n,s,m,l,x}.yaml`` are its output.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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


#: Strides of the three detection levels of every YOLO-World / YOLOv8 detector (P3, P4, P5).
STRIDES: tuple[int, int, int] = (8, 16, 32)
#: What an image size is checked against before a model is known: the largest stride of
#: :data:`STRIDES`. Where the model is known (:class:`~ovdet.inference.predict.Predictor`, the ONNX
#: runtime, training) the same rule runs again against that model's own largest stride.
MAX_STRIDE: int = max(STRIDES)

#: Numeric precisions of inference (``fp16`` needs CUDA; see :func:`ovdet.device.resolve_precision`).
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")


def check_imgsz(
    imgsz: int | tuple[int, int] | list[int], stride: int = MAX_STRIDE, name: str = "imgsz", square: bool = False
) -> int | tuple[int, int]:
    """The one stride rule: an image size is a positive multiple of the network's largest stride.

    Args:
        imgsz: one side, or ``(height, width)`` (not with ``square``).
        stride: the largest stride of the network the size is for.
        name: what the message calls the value (``"--imgsz"``, ``"train.imgsz"``).
        square: only one int is accepted (training and evaluation sizes).

    Returns:
        ``imgsz`` as an int or an ``(h, w)`` tuple.

    Raises:
        ConfigError: anything else, naming ``name``, the stride and the value.
    """
    one = isinstance(imgsz, int)
    sizes = [imgsz] if one else list(imgsz) if isinstance(imgsz, (tuple, list)) and not square else []
    ok = len(sizes) in (1, 2) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= stride and v % stride == 0 for v in sizes
    )
    if not ok:
        pair = "" if square else " (one, or two for height and width)"
        raise ConfigError(
            f"{name} must be a positive multiple of {stride}{pair}, the network's largest stride; got {imgsz!r}"
        )
    return sizes[0] if one else (sizes[0], sizes[-1])


#: Text-encoder families :class:`TextConfig` can describe.
TEXT_FAMILIES: tuple[str, ...] = ("open_clip", "sentence_transformers", "approx_clip")


@dataclass(frozen=True)
class TextConfig:
    """Which text encoder turns class names into embeddings.

    Attributes:
        model: ``family="open_clip"``: open_clip model name, e.g. ``"ViT-B-32"`` (the encoder
            YOLO-World was trained with). ``family="sentence_transformers"``: a model name
            (``"sentence-transformers/all-MiniLM-L6-v2"``) or a local model folder.
        pretrained: open_clip: pretrained tag (``"openai"``) or a path to a local checkpoint
            file; ``None`` builds the architecture with random weights. sentence-transformers:
            a local model folder that overrides where ``model``'s files come from, or ``None``
            to find them by name (an installed offline package, the Hugging Face cache, or a
            download).
        templates: prompt templates with one ``{}`` each; embeddings of several templates are
            averaged and re-normalised. ``("{}",)`` feeds names as they are (ultralytics' way).
        custom: an open_clip text-tower config (``embed_dim``, ``context_length``,
            ``vocab_size``, ``width``, ``heads``, ``layers``) for a randomly initialised tower,
            used by tests and tiny configs; when set, ``model``/``pretrained`` are ignored.
        seed: seed for the random initialisation of a ``custom`` tower, so the same config
            always yields the same encoder.
        family: encoder family: ``"open_clip"`` (CLIP text towers, what YOLO-World uses) or
            ``"sentence_transformers"`` (BERT-family sentence encoders, e.g. MiniLM) or
            ``"approx_clip"`` (opt-in "approximate CLIP text": the shipped MiniLM mapped into
            ViT-B-32/openai space by a fitted adapter, for offline names in no CLIP table;
            ``model``/``pretrained`` must stay ``"ViT-B-32"``/``"openai"``).
    """

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    templates: tuple[str, ...] = ("{}",)
    custom: dict[str, int] | None = None
    seed: int = 0
    family: str = "open_clip"

    def __post_init__(self) -> None:
        if self.family not in TEXT_FAMILIES:
            raise ConfigError(f"text.family must be one of {list(TEXT_FAMILIES)}, got {self.family!r}")
        if self.family != "open_clip" and self.custom is not None:
            raise ConfigError(f"text.custom (a random open_clip tower) does not apply to text.family={self.family!r}")


#: Bounds of ModelConfig's integer fields: (smallest, largest, what the largest leaves room for).
#: The largest official architectures (YOLO-World v1/v2 x) use widths up to 640, 6 repeats, 10 heads,
#: 512-d text; the bounds leave several times that, for custom and future models.
MODEL_BOUNDS: dict[str, tuple[int, int, str]] = {
    "channels": (2, 4096, "a C2f block splits each width in halves; the official x scale's widest is 640"),
    "depths": (1, 32, "the official x scale repeats at most 6 blocks"),
    "neck_channels": (2, 4096, "a C2f block splits each width in halves; the official x scale's widest is 640"),
    "neck_depth": (1, 32, "the official x scale repeats 3 blocks"),
    "neck_heads": (1, 512, "the official x scale uses at most 10 heads"),
    "embed_dim": (1, 8192, "CLIP ViT-B-32 gives 512, the widest common text encoders 4096"),
    "pool_channels": (1, 4096, "the official models use 256"),
    "pool_heads": (1, 512, "the official models use 8"),
    "pool_size": (1, 32, "the official models pool to 3 x 3"),
    "box_channels": (1, 4096, "the official x scale uses 80"),
    "embed_channels": (1, 4096, "the official x scale uses 320"),
    "reg_max": (1, 64, "the official models use 16 bins"),
    "strides": (1, 1024, "the official models use 8, 16, 32"),
}
#: ultralytics' BatchNorm settings, quoted where a config's are out of range.
MODEL_BN: dict[str, float] = {"bn_eps": 1e-3, "bn_momentum": 0.03}


def _check_bounded_int(name: str, value: Any, lo: int, hi: int, why: str) -> None:
    """Raises ConfigError unless ``value`` is an int (not a bool) in ``[lo, hi]``; the message names
    ``name``, the value and the bound (with ``why``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < lo:
        raise ConfigError(f"{name}={value} must be >= {lo}")
    if value > hi:
        raise ConfigError(f"{name}={value} is out of range: it must be at most {hi} ({why})")


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

    Every field is checked when the config is made, before anything is built: integers within
    :data:`MODEL_BOUNDS`, the BatchNorm settings in range (:class:`ConfigError` names the field,
    the value and the bound).
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
    strides: tuple[int, int, int] = STRIDES
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        # Every field is bounded here, before anything is built: a typo such as depths: [1, 2, 2, 1000000]
        # would otherwise allocate gigabytes for minutes, and a zero or negative width fails deep in torch.
        if isinstance(self.version, bool) or self.version not in (1, 2):
            raise ConfigError(f"model.version must be 1 or 2, got {self.version!r}")
        for name, n in (("channels", 5), ("depths", 4), ("neck_channels", 4), ("neck_heads", 4), ("strides", 3)):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != n:
                raise ConfigError(f"model.{name} needs a list of {n} integers, got {value!r}")
        for name, (lo, hi, why) in MODEL_BOUNDS.items():
            value = getattr(self, name)
            for i, v in enumerate(value) if isinstance(value, (tuple, list)) else [(None, value)]:
                _check_bounded_int(f"model.{name}" + ("" if i is None else f"[{i}]"), v, lo, hi, why)
        for i, (c, h) in enumerate(zip(self.neck_channels, self.neck_heads)):
            if (c // 2) % h:
                raise ConfigError(
                    f"model.neck_heads[{i}]={h} must divide the block's hidden width {c // 2} "
                    f"(neck_channels[{i}]={c} // 2)"
                )
        if self.version == 1 and self.pool_channels % self.pool_heads:
            raise ConfigError(
                f"model.pool_heads={self.pool_heads} must divide model.pool_channels={self.pool_channels}"
            )
        if any(b <= a for a, b in zip(self.strides, self.strides[1:])):
            raise ConfigError(
                f"model.strides must be 3 strictly increasing integers (the detection levels' strides, "
                f"e.g. {list(STRIDES)}), got {list(self.strides)}"
            )
        for name, value, closed in (("bn_eps", self.bn_eps, False), ("bn_momentum", self.bn_momentum, True)):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not (0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0):
                span = "[0, 1]" if closed else "(0, 1)"
                raise ConfigError(f"model.{name}={value!r} must be in {span} (ultralytics uses {MODEL_BN[name]})")
        if not isinstance(self.text, TextConfig):
            raise ConfigError(f"model.text must be a text-encoder config, got {type(self.text).__name__}")

    @classmethod
    def scaled(cls, version: int, scale: str, text: TextConfig | None = None, embed_dim: int = 512) -> ModelConfig:
        """The official YOLO-World v1/v2 architecture at one scale.

        Follows ultralytics' YAML scaling of ``yolov8-world.yaml`` / ``yolov8-worldv2.yaml``
        (``nc=80``) so parameter shapes equal the official checkpoints'.

        Args:
            version: 1 or 2.
            scale: one of ``n, s, m, l, x``.
            text: text encoder config; the default is open_clip ViT-B-32 ``openai``.
            embed_dim: width D of the text embeddings the head matches regions against (512 for
                CLIP ViT-B-32, as the official weights; e.g. 384 for MiniLM).
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
            embed_dim=embed_dim,
            box_channels=max(16, neck[1] // 4, 16 * 4),
            embed_channels=max(neck[1], min(nc, 100)),
            text=text or TextConfig(),
        )


@dataclass(frozen=True)
class NMSConfig:
    """Post-processing settings.

    Attributes:
        conf: minimum class score kept.
        iou: IoU above which a lower-scored box of the same class is suppressed.
        max_det: boxes kept per image after NMS.
        agnostic: suppress across classes too.
        max_nms: candidates entering NMS (the highest scored).
    """

    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    agnostic: bool = False
    max_nms: int = 30000

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf <= 1.0:
            raise ConfigError(f"nms.conf must be in [0, 1], got {self.conf}")
        if not 0.0 <= self.iou <= 1.0:
            raise ConfigError(f"nms.iou must be in [0, 1], got {self.iou}")
        if self.max_det < 1:
            raise ConfigError(f"nms.max_det must be >= 1, got {self.max_det}")


@dataclass(frozen=True)
class PredictConfig:
    """How images become detections: built once at the edge (the command line, an HTTP request, a
    Ray job, a search index) and passed down to ``Detector.predict`` / ``track``,
    :class:`~ovdet.deploy.OnnxDetector`, the serve engine, evaluation and the Ray actors.

    Attributes:
        conf: minimum class score kept, in [0, 1].
        iou: NMS IoU threshold, in [0, 1].
        imgsz: letterbox target, one side or ``(height, width)``; images are padded only to a
            multiple of the network's largest stride (checked here against :data:`MAX_STRIDE`,
            and again against the model's own stride where it runs).
        max_det: boxes kept per image.
        agnostic_nms: suppress overlapping boxes across classes too.
        batch: images per forward pass.
        precision: ``"fp32"``, ``"fp16"`` (CUDA only) or ``"bf16"``.
        max_pixels: largest image (width × height) decoded; larger ones are skipped as possible
            decompression bombs (None: ``$OVDET_MAX_PIXELS`` or 89,478,485; 0: no limit).
        nms: the :class:`NMSConfig` of ``conf``/``iou``/``max_det``/``agnostic_nms`` (derived).
    """

    conf: float = 0.25
    iou: float = 0.7
    imgsz: int | tuple[int, int] = 640
    max_det: int = 300
    agnostic_nms: bool = False
    batch: int = 1
    precision: str = "fp32"
    max_pixels: int | None = None
    nms: NMSConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "imgsz", check_imgsz(self.imgsz))
        nms = NMSConfig(conf=self.conf, iou=self.iou, max_det=self.max_det, agnostic=bool(self.agnostic_nms))
        object.__setattr__(self, "nms", nms)
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"batch must be an integer >= 1, got {self.batch!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or self.max_pixels < 0):
            raise ConfigError(f"max_pixels must be >= 0 (0 = no limit), got {self.max_pixels}")

    def replace(self, **changes: Any) -> PredictConfig:
        """A copy with ``changes`` (PredictConfig fields; None values leave a field as it is).

        Raises:
            TypeError: an unknown field (the valid ones are named).
            ConfigError: an invalid value.
        """
        valid = {f.name for f in dataclasses.fields(self) if f.init}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise TypeError(f"unknown prediction option(s) {unknown}; valid: {sorted(valid)}")
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self


@dataclass(frozen=True)
class ExportConfig:
    """How :func:`ovdet.export.export_onnx` writes a deployable model.

    Attributes:
        dynamic_vocab: the graph takes ``class_embeddings`` (K, D) as an input, K dynamic; else
            the current vocabulary is folded into the weights (K fixed, nothing text-related
            runs per image).
        text_encoder: with ``dynamic_vocab``, also export the text encoder (token ids →
            embeddings) and its tokenizer beside the model, so a deployment changes classes
            without PyTorch.
        nms: NMS inside the graph (outputs ``boxes``/``scores``/``labels``/``batch_index``,
            thresholds ``conf``/``iou``/``max_det``/``agnostic`` fixed at export); else the graph
            ends at decoded boxes (B, A, 4) and scores (B, A, K) and the runtime runs NMS.
        conf: in-graph NMS score threshold.
        iou: in-graph NMS IoU threshold.
        max_det: in-graph NMS boxes kept per image.
        agnostic: in-graph NMS across classes.
        imgsz: (height, width) of the example input used for tracing; height, width and batch
            stay dynamic in the graph (v1: height and width are fixed to ``imgsz``, since its
            image-pooling attention has no ONNX form for a dynamic size).
        opset: ONNX opset.
        half: store the graph in float16 (inputs and outputs stay float32); for GPU runtimes.
        int8: also write a post-training statically quantized int8 model (needs ``calib``).
        calib: folder of real images for int8 calibration.
        calib_images: at most this many calibration images are read.
    """

    dynamic_vocab: bool = False
    text_encoder: bool = True
    nms: bool = False
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    agnostic: bool = False
    imgsz: tuple[int, int] = (640, 640)
    opset: int = 17
    half: bool = False
    int8: bool = False
    calib: str | None = None
    calib_images: int = 64

    def __post_init__(self) -> None:
        NMSConfig(conf=self.conf, iou=self.iou, max_det=self.max_det)  # same ranges, same messages
        imgsz = check_imgsz(self.imgsz, name="export.imgsz")
        object.__setattr__(self, "imgsz", (imgsz, imgsz) if isinstance(imgsz, int) else imgsz)
        if not 11 <= self.opset <= 21:
            raise ConfigError(f"export.opset must be in [11, 21], got {self.opset}")
        if self.int8 and not self.calib:
            raise ConfigError(
                "export.int8 needs calibration images: set calib to a folder of real images (--calib DIR)"
            )
        if self.half and self.int8:
            raise ConfigError("export.half and export.int8 exclude each other: choose one precision")
        if self.calib_images < 1:
            raise ConfigError(f"export.calib_images must be >= 1, got {self.calib_images}")


@dataclass(frozen=True)
class TrackConfig:
    """How :meth:`ovdet.Detector.track` links detections across video frames (ByteTrack).

    ByteTrack matches confident detections to tracks first, then gives tracks left unmatched a
    second chance with the low-score ones (a partly occluded object scores lower), so the
    detector runs with the low threshold ``conf`` and only ``new_track`` starts a track.

    Attributes:
        tracker: the algorithm: ``"bytetrack"`` (default), ``"sort"`` or ``"ocsort"`` (the
            ``trackers`` package's implementations).
        conf: detection threshold: boxes below it are not seen by the tracker at all.
        high: score separating ByteTrack's first (confident) and second (low-score) matching.
        new_track: a detection left unmatched starts a new track only at this score or above.
        match_iou: IoU between a track's predicted box and a detection needed to match.
        buffer: frames (at 30 fps; scaled by the video's rate) a lost track is kept for
            re-association before it ends.
        min_hits: consecutive frames an object must be detected in before its track gets an id
            and its boxes are returned (the ``trackers`` package confirms a track at its second
            frame at the earliest, so 1 acts as 2).
        class_aware: one tracker per class name: boxes of different classes never swap ids,
            and a vocabulary change leaves the tracks of the classes that stay untouched; False:
            one tracker for every class (a track keeps its id if its label flips).
        trail: centre points drawn behind each box on annotated frames (0: none).
    """

    tracker: str = "bytetrack"
    conf: float = 0.1
    high: float = 0.25
    new_track: float = 0.25
    match_iou: float = 0.1
    buffer: int = 30
    min_hits: int = 2
    class_aware: bool = True
    trail: int = 30

    def __post_init__(self) -> None:
        if self.tracker not in ("bytetrack", "sort", "ocsort"):
            raise ConfigError(f"track.tracker must be 'bytetrack', 'sort' or 'ocsort', got {self.tracker!r}")
        for name in ("conf", "high", "new_track", "match_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"track.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.high < self.conf:
            raise ConfigError(f"track.high ({self.high}) must be >= track.conf ({self.conf})")
        if self.buffer < 0:
            raise ConfigError(f"track.buffer must be >= 0, got {self.buffer}")
        if self.min_hits < 1:
            raise ConfigError(f"track.min_hits must be >= 1, got {self.min_hits}")
        if self.trail < 0:
            raise ConfigError(f"track.trail must be >= 0, got {self.trail}")


#: How many times ``ovdet serve`` counts a request body against ``memory_budget_bytes`` while it is
#: read and parsed: the bytes received, their parsed form (multipart parts or the JSON text) and the
#: image bytes taken out of it.
SERVE_BODY_COPIES = 3


@dataclass(frozen=True)
class ServeConfig:
    """How ``ovdet serve`` (:func:`ovdet.serve.create_app`) answers HTTP requests.

    Attributes:
        host: address to bind; loopback unless told otherwise (a public address without
            ``api_key`` starts with a warning).
        port: TCP port.
        api_key: when set, ``/v1/detect``, ``/v1/model`` and ``/v1/stats`` need it in an
            ``X-API-Key`` (or ``Authorization: Bearer``) header, compared in constant time.
        batch_window_ms: how long the first request of a batch waits for others with the same
            vocabulary, image size and thresholds to share its forward pass.
        max_batch: images per forward pass at most.
        queue_size: requests waiting or running at most; more get 503 with ``Retry-After``.
        timeout_s: seconds a request may wait for its result (queue + inference) before 504.
        max_upload_bytes: largest request body (413 beyond).
        max_pixels: largest image (width × height), checked on the header before decoding
            (decompression bombs) and on the decoded image (413 beyond).
        max_images: images per request at most.
        max_classes: class names per request at most (LVIS has 1203).
        max_name_length: characters per class name at most.
        max_imgsz: largest ``imgsz`` a request may ask for.
        vocab_cache: vocabularies whose embeddings are kept (least recently used go first).
        folded_cache: vocabularies whose folded network copy is kept (each holds a copy of the
            weights; a miss costs one fold: ~0.2 s for v2-s on 2 CPU cores).
        cors_origins: origins allowed to call the API from a browser (CORS); empty: CORS off.
        max_connections: open connections at most. At the limit a new connection closes the one
            that has waited longest for its next request's headers (idle keep-alive or half-sent);
            when every connection is running a request, the new one gets 503 JSON. Must exceed
            ``queue_size``, so that a full queue still leaves room for health checks.
        header_timeout_s: seconds a connection has to send a request's headers, from its opening or
            from its previous answer (a slow or half-open client is closed after, with 408 JSON
            when it sent part of a request).
        keep_alive_s: seconds an idle keep-alive connection stays open between requests.
        max_request_decoded_bytes: largest memory one request's images may decode to: 3 bytes per
            pixel of every image plus 8 per pixel of the largest (the decoder's working copy),
            from the sizes the headers declare, before decoding (413 beyond).
        memory_budget_bytes: request bodies (counted :data:`SERVE_BODY_COPIES` times while read
            and parsed, then once until decoded) and decoded images in flight across the server,
            whatever the queue holds; a request that cannot reserve its share within 2 s gets 503
            with ``Retry-After``. At least ``max_request_decoded_bytes`` plus
            ``SERVE_BODY_COPIES × max_upload_bytes``.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    batch_window_ms: float = 10.0
    max_batch: int = 8
    queue_size: int = 64
    timeout_s: float = 60.0
    max_upload_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_images: int = 16
    max_classes: int = 2000
    max_name_length: int = 200
    max_imgsz: int = 1920
    vocab_cache: int = 64
    folded_cache: int = 4
    cors_origins: tuple[str, ...] = ()
    max_connections: int = 256
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_request_decoded_bytes: int = 1 << 30
    memory_budget_bytes: int = 4 << 30

    def __post_init__(self) -> None:
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ConfigError("serve.api_key must be at least 8 characters (or unset)")
        if self.batch_window_ms < 0:
            raise ConfigError(f"serve.batch_window_ms must be >= 0, got {self.batch_window_ms}")
        if self.timeout_s <= 0:
            raise ConfigError(f"serve.timeout_s must be > 0, got {self.timeout_s}")
        check_imgsz(self.max_imgsz, name="serve.max_imgsz", square=True)
        for name in (
            "max_batch",
            "queue_size",
            "max_upload_bytes",
            "max_pixels",
            "max_images",
            "max_classes",
            "max_name_length",
            "vocab_cache",
            "folded_cache",
            "max_connections",
            "max_request_decoded_bytes",
            "memory_budget_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("header_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"serve.{name} must be > 0, got {getattr(self, name)}")
        if self.max_connections <= self.queue_size:
            raise ConfigError(
                f"serve.max_connections ({self.max_connections}) must exceed serve.queue_size ({self.queue_size}), "
                "so that a full queue leaves connections for health checks: raise max_connections"
            )
        need = self.max_request_decoded_bytes + SERVE_BODY_COPIES * self.max_upload_bytes
        if self.memory_budget_bytes < need:
            raise ConfigError(
                f"serve.memory_budget_bytes ({self.memory_budget_bytes:,}) must hold one largest request: "
                f"max_request_decoded_bytes + {SERVE_BODY_COPIES} x max_upload_bytes = {need:,}; raise it or lower those"
            )


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings (defaults follow ultralytics' YOLOv8 training recipe).

    Attributes:
        mosaic: probability of building an image as a 4-image mosaic.
        close_mosaic: mosaic is switched off for the last this-many epochs.
        scale: (min, max) zoom of the random affine.
        translate: max shift of the affine as a fraction of the output size.
        degrees: max rotation, degrees (0 keeps boxes tight).
        shear: max shear, degrees.
        hsv_h: max hue shift, OpenCV hue units (0..180 is the full circle); albumentations'
            additive ``HueSaturationValue`` limits, not ultralytics' multiplicative gains.
        hsv_s: max saturation shift (0..255 scale).
        hsv_v: max value (brightness) shift (0..255 scale).
        fliplr: probability of a horizontal flip.
        min_area: boxes smaller than this many pixels after a geometric step are dropped.
        min_visibility: boxes with less than this fraction of their area inside the image after
            a geometric step are dropped.
        min_size: boxes narrower or shorter than this many pixels are dropped.
        max_aspect_ratio: boxes longer than this ratio (either way) are dropped.
    """

    mosaic: float = 1.0
    close_mosaic: int = 10
    scale: tuple[float, float] = (0.5, 1.5)
    translate: float = 0.1
    degrees: float = 0.0
    shear: float = 0.0
    hsv_h: float = 3.0
    hsv_s: float = 50.0
    hsv_v: float = 40.0
    fliplr: float = 0.5
    min_area: float = 4.0
    min_visibility: float = 0.1
    min_size: float = 2.0
    max_aspect_ratio: float = 100.0

    def __post_init__(self) -> None:
        for name in ("mosaic", "fliplr", "min_visibility"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in (
            "close_mosaic",
            "translate",
            "degrees",
            "shear",
            "hsv_h",
            "hsv_s",
            "hsv_v",
            "min_area",
            "min_size",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"augment.scale must be (min, max) with 0 < min <= max, got {self.scale}")
        if self.max_aspect_ratio < 1:
            raise ConfigError(f"augment.max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")


@dataclass(frozen=True)
class LossConfig:
    """Loss gains and assigner settings (ultralytics' defaults).

    Attributes:
        box: gain of the CIoU box loss.
        cls: gain of the classification (BCE) loss.
        dfl: gain of the distribution focal loss.
        topk: anchors each ground-truth box keeps.
        alpha: exponent of the score in the alignment metric.
        beta: exponent of the CIoU in the alignment metric.
        min_size: box sides shorter than this (input pixels) are widened to it when looking for
            candidate anchors (ultralytics uses its middle stride, 16); 0 disables.
    """

    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    min_size: float = 16.0

    def __post_init__(self) -> None:
        for name in ("box", "cls", "dfl", "alpha", "beta", "min_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.topk < 1:
            raise ConfigError(f"loss.topk must be >= 1, got {self.topk}")


@dataclass(frozen=True)
class EvalConfig:
    """Zero-shot evaluation settings (``Detector.val``, ``ovdet val``).

    Attributes:
        split: split of an ultralytics data yaml to evaluate.
        imgsz: letterbox size.
        conf: minimum score kept (low, so the precision-recall curve is complete).
        iou: NMS IoU threshold.
        max_det: boxes kept per image; None: 300 (1000 for LVIS Fixed AP).
        batch: images per forward pass.
        lvis: score with LVIS metrics (APr/APc/APf); None: when the json is LVIS.
        fixed_ap: LVIS Fixed AP (no per-image cap; top 10,000 per class).
        backend: COCO scorer, ``"pycocotools"`` or ``"faster_coco_eval"`` (same numbers).
        image_dir: image folder of a json (default: found next to it).
        save_dir: where ``metrics.json``, ``results.json``, ``pr_curve.png`` and ``samples/`` go;
            None writes nothing.
        samples: annotated sample images written to ``save_dir/samples``.
        progress: show a progress bar.
    """

    split: str = "val"
    imgsz: int = 640
    conf: float = 0.001
    iou: float = 0.7
    max_det: int | None = None
    batch: int = 8
    lvis: bool | None = None
    fixed_ap: bool = False
    backend: str = "pycocotools"
    image_dir: str | None = None
    save_dir: str | None = None
    samples: int = 4
    progress: bool = True
    predict: PredictConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_imgsz(self.imgsz, name="eval.imgsz", square=True)
        try:
            predict = PredictConfig(
                conf=self.conf, iou=self.iou, imgsz=self.imgsz, max_det=self.max_detections, batch=self.batch
            )
        except ConfigError as e:
            raise ConfigError(f"eval.{e}") from None
        object.__setattr__(self, "predict", predict)
        if self.backend not in ("pycocotools", "faster_coco_eval"):
            raise ConfigError(f"eval.backend must be 'pycocotools' or 'faster_coco_eval', got {self.backend!r}")
        if self.fixed_ap and self.lvis is False:
            raise ConfigError("eval.fixed_ap is an LVIS metric; it cannot be combined with lvis=False")

    @property
    def max_detections(self) -> int:
        """``max_det``, or its default: 300, 1000 for Fixed AP."""
        return self.max_det if self.max_det is not None else (1000 if self.fixed_ap else 300)


#: fine-tuning modes: which parameters train (see :class:`TrainConfig`).
TRAIN_MODES = ("full", "freeze_backbone", "prompt_tuning", "linear_probe")


#: What ``lr0``, ``momentum``, ``weight_decay`` and ``warmup_bias_lr`` left at None mean, per
#: optimizer (``TrainConfig.resolved``). AdamW's are ultralytics' ``auto`` AdamW's; its biases start
#: warmup at 0: an Adam step moves each parameter by about the rate itself.
OPTIMIZER_DEFAULTS: dict[str, dict[str, float]] = {
    "AdamW": {"lr0": 2e-3, "momentum": 0.9, "weight_decay": 5e-4, "warmup_bias_lr": 0.0},
    "SGD": {"lr0": 1e-2, "momentum": 0.937, "weight_decay": 5e-4, "warmup_bias_lr": 0.1},
}


@dataclass(frozen=True)
class TrainConfig:
    """A training run (``Detector.train``, ``ovdet train``); names follow ultralytics' where they exist.

    Attributes:
        data: the training set: an ultralytics data yaml, a COCO/LVIS instances json or an ODVG jsonl.
        val_data: the validation set (same formats); None: the yaml's ``val`` split when ``data``
            is a yaml, else no periodic validation.
        epochs: passes over the training set.
        imgsz: training image side (a multiple of 32).
        batch: images per step on each process.
        nbs: nominal batch size: gradients accumulate over ``max(round(nbs / (batch × world)), 1)``
            steps before each optimizer update, and weight decay scales by the effective batch / nbs.
        workers: data-loading worker processes per training process.
        device: ``"auto"``, ``"cpu"``, ``"cuda:N"`` (under torchrun each rank takes its local GPU).
        mode: ``full`` (everything trains), ``freeze_backbone``, ``prompt_tuning`` (only the class
            embeddings train, initialised from the text encoder; everything else is frozen) or
            ``linear_probe`` (embedding branches and contrastive heads only).
        optimizer: ``AdamW`` or ``SGD``.
        lr0: initial learning rate; None: 2e-3 for AdamW, 1e-2 for SGD.
        lrf: final learning rate as a fraction of ``lr0``.
        momentum: SGD momentum / AdamW beta1; None: 0.937 for SGD, 0.9 for AdamW.
        weight_decay: on weights only (never norms, biases or logit scales/biases); None: 5e-4.
            The AdamW defaults (beta1 0.9 that does not warm up, weight decay 5e-4) are those of
            ultralytics' ``auto`` AdamW. ovdet's former 0.937 (warmed up from 0.8) and 0.025
            ended the Raccoon fine-tune 0.02–0.04 mAP50-95 lower (README "Fine-tuning on real
            custom data"). Long pretraining runs, as YOLO-World's recipe does, set a larger decay
            (0.025–0.05) explicitly.
        warmup_epochs: length of the linear warmup, in epochs (at least 100 steps, never past the run's half).
        warmup_bias_lr: biases start warmup at this learning rate and fall to lr0; None: 0.1 for
            SGD, 0 for AdamW (an Adam step moves every bias by about the rate itself, so 0.1
            wrecks a trained start within a few updates; ultralytics' ``auto`` makes the same choice).
        warmup_momentum: SGD momentum at the start of warmup (AdamW's beta1 stays at ``momentum``
            throughout, as in ultralytics).
        schedule: ``cosine`` or ``linear`` decay from lr0 to lr0 × lrf.
        amp: ``auto`` (bf16 on GPUs that support it, else fp16; off on CPU), ``off``, ``bf16``, ``fp16``.
        grad_clip: max gradient norm (0 disables).
        ema: keep an exponential moving average of the weights; it is what is evaluated and saved.
        ema_decay: EMA decay; ramps up as ``decay × (1 - exp(-updates / ema_tau))``.
        ema_tau: EMA ramp length in updates.
        max_texts: texts per image (positives + sampled negatives, padded).
        text_lr_mult: > 0 fine-tunes the text encoder at ``lr0 × text_lr_mult`` (needs its weights).
        keep_vocab: a general vocabulary mixed into negative sampling to keep the open
            vocabulary: ``lvis``, ``coco`` or a text file of names; None: the dataset's names only.
        val_interval: validate every this many epochs (and after the last).
        project: runs folder.
        name: run name; the run writes ``project/name`` (``name2``, ``name3``… when taken).
        seed: seed of initialisation order, sampling and augmentation.
        deterministic: deterministic kernels (slower); resuming then reproduces an uninterrupted run.
        cache: ``"ram"`` keeps decoded images in memory.
        buffer_mb: without a cache, MiB of recently decoded images each loader worker keeps
            (least recently used dropped first; 0: none). Samples are the same either way.
        sync_bn: synchronise BatchNorm statistics across processes (distributed only).
        max_bad_steps: non-finite losses skipped before the run stops with an error.
        loss: loss gains and assigner.
        augment: augmentation.
    """

    data: str = ""
    val_data: str | None = None
    epochs: int = 100
    imgsz: int = 640
    batch: int = 16
    nbs: int = 64
    workers: int = 2
    device: str = "auto"
    mode: str = "full"
    optimizer: str = "AdamW"
    lr0: float | None = None
    lrf: float = 0.01
    momentum: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float = 3.0
    warmup_bias_lr: float | None = None
    warmup_momentum: float = 0.8
    schedule: str = "cosine"
    amp: str = "auto"
    grad_clip: float = 10.0
    ema: bool = True
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    max_texts: int = 80
    text_lr_mult: float = 0.0
    keep_vocab: str | None = None
    val_interval: int = 1
    project: str = "runs/train"
    name: str = "exp"
    seed: int = 0
    deterministic: bool = False
    cache: str | None = None
    buffer_mb: float = 256.0
    sync_bn: bool = False
    max_bad_steps: int = 20
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for name, kind in (("loss", LossConfig), ("augment", AugmentConfig)):  # plain dicts are accepted
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, from_dict(kind, value, f"train.{name}."))
            elif not isinstance(value, kind):
                raise ConfigError(f"train.{name} must be a {kind.__name__} or a mapping, got {type(value).__name__}")
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        check_imgsz(self.imgsz, name="train.imgsz", square=True)
        for name in ("batch", "nbs", "max_texts", "val_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0 or self.max_bad_steps < 0:
            raise ConfigError("train.workers and train.max_bad_steps must be >= 0")
        choices = {
            "mode": TRAIN_MODES,
            "optimizer": tuple(OPTIMIZER_DEFAULTS),
            "schedule": ("cosine", "linear"),
            "amp": ("auto", "off", "bf16", "fp16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.cache not in (None, "ram"):
            raise ConfigError(f"train.cache must be null or 'ram', got {self.cache!r}")
        if isinstance(self.buffer_mb, bool) or not (isinstance(self.buffer_mb, (int, float)) and self.buffer_mb >= 0):
            raise ConfigError(f"train.buffer_mb must be a number >= 0, got {self.buffer_mb!r}")
        for name in (
            "lrf",
            "warmup_epochs",
            "warmup_momentum",
            "grad_clip",
            "text_lr_mult",
            "ema_tau",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr0 is not None and self.lr0 <= 0:
            raise ConfigError(f"train.lr0 must be > 0, got {self.lr0}")
        for name in ("warmup_bias_lr", "weight_decay"):  # None: the optimizer's default
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")

    def resolved(self, name: str) -> float:
        """An optimizer setting (``lr0``, ``momentum``, ``weight_decay``, ``warmup_bias_lr``): the
        field's value, or the optimizer's default from :data:`OPTIMIZER_DEFAULTS` when it is None."""
        value = getattr(self, name)
        return OPTIMIZER_DEFAULTS[self.optimizer][name] if value is None else value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain YAML/JSON-ready data (tuples become lists; derived fields,
    ``init=False``, are left out)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
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
    try:
        return cls(**_field_values(cls, data, where))
    except TypeError as e:  # pragma: no cover - dataclass signature errors
        raise ConfigError(f"{where or 'config'}: {e}") from e


def _field_values(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``data`` checked against dataclass ``cls``'s fields and converted as :func:`from_dict` does.

    Raises:
        ConfigError: an unknown key or a value of the wrong kind, naming the field.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[where + k for k in unknown]}; valid keys: {sorted(fields)}")
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
        elif isinstance(value, (list, tuple)) and "tuple" in str(hints[name]):  # e.g. imgsz: int | tuple
            kwargs[name] = tuple(value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}{name} must be true/false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}{name} must be a number, got {value!r} ({hints[name]})")
            kwargs[name] = type(default)(value) if isinstance(default, float) else value
        else:
            kwargs[name] = value
    return kwargs


def _has_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
        if f.init
    )


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
    data = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return from_dict(ModelConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def save_model_config(cfg: ModelConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (the format :func:`load_model_config` reads)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file.

    Raises:
        FileNotFoundError: the file does not exist (named).
        ConfigError: not valid YAML, or not a mapping (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def train_config(data: Mapping[str, Any], overrides: list[str] | None = None, where: str = "") -> TrainConfig:
    """A :class:`TrainConfig` from settings (a recipe file's content) and ``"a.b=c"`` overrides.

    Raises:
        ConfigError: an unknown or ill-typed key (named, with ``where`` in front).
    """
    values = apply_overrides(dict(data), overrides or [])
    try:
        return from_dict(TrainConfig, values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from e


def replace_train_config(cfg: TrainConfig, changes: Mapping[str, Any], where: str = "") -> TrainConfig:
    """``cfg`` with some fields changed, checked as :func:`from_dict` checks them and validated once.

    Unchanged fields are kept as they are (``cfg`` is not rebuilt); a mapping for ``loss`` or
    ``augment`` replaces that whole section (its fields not given take their defaults).

    Args:
        cfg: the config to start from (returned itself when ``changes`` is empty).
        changes: field → new value.
        where: prefix for error messages (e.g. the caller's name).

    Raises:
        ConfigError: an unknown field, a value of the wrong kind or out of range (named).
    """
    if not changes:
        return cfg
    try:
        return dataclasses.replace(cfg, **_field_values(TrainConfig, changes, ""))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from e


#: The recipe key naming the model to train (``ovdet train --config``; ``--model`` wins over it).
RECIPE_MODEL_KEY = "model"


@dataclass(frozen=True)
class Recipe:
    """A training recipe read by :func:`load_recipe`.

    Attributes:
        train: the run's settings (the file's :class:`TrainConfig` fields, then ``values``, then overrides).
        model: the file's ``model:`` (what to train: a model YAML, checkpoint, pretrained name or
            ``.pt``), or None.
        extras: the file's values of the extra keys its reader accepts (``extras=``), as written.
        path: the file read, or None (settings only).
    """

    train: TrainConfig
    model: str | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None


def load_recipe(
    path: str | Path | None,
    values: Mapping[str, Any] | None = None,
    overrides: Sequence[str] | None = None,
    *,
    extras: Collection[str] = (),
) -> Recipe:
    """Read a training recipe: one YAML mapping of :class:`TrainConfig` fields (``loss:`` and
    ``augment:`` nested), an optional ``model:`` and the extra keys a tool declares.

    ``ovdet train --config`` and ``tools/train_demo.py`` both read recipes through this function.

    Args:
        path: the recipe YAML, or None for ``values`` alone.
        values: TrainConfig fields that win over the file (e.g. command-line flags).
        overrides: ``"a.b=c"`` overrides of TrainConfig fields, applied last (``--set``).
        extras: top-level keys besides TrainConfig fields and ``model`` that the caller reads
            itself (returned in :attr:`Recipe.extras`); any other key is an error.

    Returns:
        The recipe: its validated TrainConfig, model and extras.

    Raises:
        FileNotFoundError: ``path`` does not exist (named).
        ConfigError: not valid YAML, an unknown key (named, with the file), or an invalid value.
    """
    data = read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else ""
    known = {f.name for f in dataclasses.fields(TrainConfig)} | {RECIPE_MODEL_KEY, *extras}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; a recipe holds TrainConfig fields "
            f"{sorted(f.name for f in dataclasses.fields(TrainConfig))}, {RECIPE_MODEL_KEY!r}"
            + (f" and {sorted(extras)}" if extras else "")
        )
    model = data.pop(RECIPE_MODEL_KEY, None)
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"{where}: {RECIPE_MODEL_KEY} must be a string (a model spec), got {model!r}")
    found = {k: data.pop(k) for k in list(data) if k in extras}
    train = train_config({**data, **(values or {})}, list(overrides or []), where=where)
    return Recipe(train=train, model=model, extras=found, path=Path(path) if path is not None else None)
