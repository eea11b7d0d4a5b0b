"""``Detector``: the user's facade — constructors, vocabulary, predict, val, save/load.

Thin by design: the checkpoint format lives in :mod:`ovdet.checkpoint`, conversion and downloads
in :mod:`ovdet.weights`, inference in :mod:`ovdet.inference.predict`, validation in
:mod:`ovdet.inference.validate`, text in :mod:`ovdet.text`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ovdet.checkpoint import load_checkpoint, save_checkpoint
from ovdet.config import (
    EvalConfig,
    ExportConfig,
    ModelConfig,
    PredictConfig,
    TextConfig,
    TrackConfig,
    TrainConfig,
    check_imgsz,
    load_model_config,
)
from ovdet.device import resolve_device, resolve_precision
from ovdet.inference.predict import FoldedCache, Predictor
from ovdet.inference.stream import PredictionStream, predict_source
from ovdet.inference.track import ObjectTracker, TrackingStream, collect_tracks
from ovdet.io import ovdet_home
from ovdet.models.detector import OVDetector
from ovdet.models.folded import FoldedDetector
from ovdet.structures import Detections
from ovdet.text import (
    EmbeddingCache,
    TextEncoder,
    TextEncoderUnavailable,
    build_text_encoder,
    text_encoder_id,
    validate_class_names,
)
from ovdet.text.builtin import encode_names
from ovdet.text.vocabulary import builtin_vocabulary, is_builtin_vocabulary, select_embeddings

if TYPE_CHECKING:
    from ovdet.engine.state import RunState
    from ovdet.grounding.result import Grounding

__all__ = ["Detector", "load_detector", "portable_model_spec"]


class Detector:
    """An open-vocabulary detector: set a vocabulary, then predict boxes for it.

    Example:
        >>> det = Detector.from_config("configs/models/yolo-world-tiny.yaml")
        >>> det.set_classes(["person", "bus"])
        >>> det.predict("bus.jpg")[0].boxes  # (N, 4) xyxy pixels of the original image
    """

    def __init__(
        self, model: OVDetector, device: str | torch.device = "auto", cache: EmbeddingCache | None = None
    ) -> None:
        """Wrap a built model.

        Args:
            model: the network (its config says which text encoder ``set_classes`` uses).
            device: ``"auto"``, ``"cpu"``, ``"cuda:0"``, …
            cache: text-embedding cache; default: in memory plus
                ``$OVDET_HOME/text_embeddings.safetensors`` on disk.
        """
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.cache = cache if cache is not None else EmbeddingCache(ovdet_home() / "text_embeddings.safetensors")
        self._encoder: TextEncoder | None = None
        self._names: list[str] = []
        self._embeddings: torch.Tensor | None = None  # (K, D) float32 on self.device
        self._encoder_id = "precomputed"  # the encoder the current embeddings came from
        self.conversion_report = None  # set by from_ultralytics: what was loaded / left random
        self._forward: Any = None  # the compiled network as it is (see compile()), or None
        self._compile: dict[str, Any] | None = None  # torch.compile arguments set by compile()
        self._compiled: tuple[FoldedDetector, Any] | None = None  # a folded copy and its compiled wrapper
        self._folded = FoldedCache()  # the vocabulary-folded copy predict() runs (see predict(optimize=))
        self._tracker: ObjectTracker | None = None  # what track(persist=True) continues

    @property
    def cfg(self) -> ModelConfig:
        """The model's architecture and text-encoder config."""
        return self.model.cfg

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_config(
        cls,
        config: str | Path | ModelConfig,
        device: str | torch.device = "auto",
        overrides: list[str] | None = None,
        seed: int | None = 0,
    ) -> Detector:
        """A randomly initialised detector from a model YAML (or a :class:`ModelConfig`).

        Args:
            config: path to ``configs/models/*.yaml`` or a config object.
            device: where to run.
            overrides: ``"key=value"`` overrides applied to the YAML (e.g. ``"version=1"``).
            seed: seed for the weights (the global RNG is left untouched); ``None`` draws from it.
        """
        cfg = config if isinstance(config, ModelConfig) else load_model_config(config, overrides)
        if seed is None:
            return cls(OVDetector(cfg), device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = OVDetector(cfg)
        return cls(model, device)

    @classmethod
    def from_ultralytics(
        cls,
        path: str | Path,
        trust: bool = False,
        device: str | torch.device = "auto",
        text: TextConfig | None = None,
        embed_dim: int | None = None,
        class_embeddings: tuple[Sequence[str], torch.Tensor] | None = None,
    ) -> Detector:
        """Convert an official ultralytics YOLO-World (v1/v2, any scale) or YOLOv8 checkpoint.

        ``.pt`` files are pickles, so ``trust=True`` is required; save the result with
        :meth:`save` to get ovdet's safe format. A plain YOLOv8 detector initialises a v2
        YOLO-World network (see :attr:`conversion_report` for what stayed random). A
        YOLO-World checkpoint that carries its classes (names and text features) keeps them
        as the vocabulary, as ultralytics does. ``text``/``embed_dim`` choose the text encoder
        and its width for a YOLOv8 initialisation (see :func:`~ovdet.weights.convert_ultralytics_model`).
        ``class_embeddings`` (names, (N, D) embeddings covering a YOLOv8's class names; rows picked
        by name) carries its classifier over exactly, as in :meth:`from_onnx`.

        Raises:
            UntrustedCheckpointError: ``trust`` is not True (the file is not read).
            ConversionError: the checkpoint does not map onto the architecture (tensors named).
        """
        from ovdet.weights import (
            checkpoint_vocabulary,
            class_names_of,
            class_vocabulary,
            convert_ultralytics_model,
            read_ultralytics_checkpoint,
        )

        model, _ = read_ultralytics_checkpoint(path, trust=trust)
        own = None if class_embeddings is None else class_vocabulary(class_names_of(model), *class_embeddings)
        net, report = convert_ultralytics_model(model, text, embed_dim, own)
        det = cls(net, device)
        det.conversion_report = report
        vocabulary = own or checkpoint_vocabulary(model)
        if vocabulary is not None:
            det.set_class_embeddings(*vocabulary)
        return det

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        text: TextConfig | None = None,
        embed_dim: int | None = None,
        class_embeddings: tuple[Sequence[str], torch.Tensor] | None = None,
    ) -> Detector:
        """Start a YOLO-World network from an ultralytics YOLOv8 ONNX export (fp32, fp16 or int8).

        The file is read as data (see :mod:`ovdet.onnx_import`), never run. Fused convolutions
        come back as convolution + identity BatchNorm, quantized ones dequantized; then the
        weights map as a plain YOLOv8 ``.pt`` does (:func:`~ovdet.weights.convert_yolov8_state`):
        boxes and features equal the export's, and :attr:`conversion_report` lists what was
        loaded, adapted and left random.

        Args:
            path: the ``.onnx`` file.
            device: where to run.
            text, embed_dim: text encoder and width of the result (default CLIP ViT-B/32, 512).
            class_embeddings: (names, (N, D) embeddings) in this detector's text space covering
                the export's class names (its metadata's ``names``; a larger table is fine, rows
                are picked by name): the export's classifier is then carried over exactly and its
                names become the vocabulary. None: the classifier stays random (fine-tune, or
                set classes, before use).

        Raises:
            FileNotFoundError: no such file.
            ConversionError: not a readable ONNX file or not a YOLOv8 detection export (the
                message names what did not match); ``class_embeddings`` does not fit the
                classifier or the export has no names.
        """
        from ovdet.onnx_import import read_onnx_export
        from ovdet.weights import ConversionError, class_vocabulary, convert_yolov8_state

        export = read_onnx_export(path)
        try:
            vocabulary = None if class_embeddings is None else class_vocabulary(export.names, *class_embeddings)
            net, report = convert_yolov8_state(export.state, None, text, embed_dim, vocabulary)
        except ConversionError as e:
            raise ConversionError(f"{path}: {e}") from e
        det = cls(net, device)
        det.conversion_report = report
        if vocabulary is not None:
            det.set_class_embeddings(*vocabulary)
        return det

    @classmethod
    def from_pretrained(cls, name: str, device: str | torch.device = "auto", base_url: str | None = None) -> Detector:
        """A detector with official weights, by name (e.g. ``"yolo-world-v2-s"``).

        The first call downloads the official ultralytics file into ``$OVDET_HOME/downloads/``
        and converts it once to ``$OVDET_HOME/models/<name>/``; later calls read only that
        directory (no network, nothing unpickled). ``"ovdet-demo"`` is shipped inside the package
        (:data:`ovdet.weights.BUNDLED`: never downloaded). Names: :data:`ovdet.weights.PRETRAINED`
        (``yolov8{n..x}`` are COCO detectors whose text-related parts start random).

        Args:
            name: pretrained name.
            device: where to run.
            base_url: download base URL (default ``$OVDET_WEIGHTS_URL``, else the ultralytics
                assets release).

        Raises:
            ValueError: unknown name (the closest valid one is suggested).
            WeightsUnavailable: offline and not cached; the message names the file to place,
                where, and its URL.
        """
        from ovdet.weights import fetch_pretrained

        return cls.load(fetch_pretrained(name, base_url=base_url), device)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> Detector:
        """Restore a detector written by :meth:`save` (safetensors + JSON; nothing is unpickled).

        Raises:
            FileNotFoundError: the directory or one of its files is missing (named).
            ValueError: the files are not an ovdet checkpoint or do not match (named).
        """
        ckpt = load_checkpoint(path)
        det = cls(ckpt.model, device)
        if ckpt.embeddings is not None:
            det._set(validate_class_names(ckpt.names), ckpt.embeddings, ckpt.encoder_id or "precomputed")
        return det

    def save(self, path: str | Path, dtype: torch.dtype = torch.float32, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors``, ``config.json`` and (when set) ``class_embeddings.safetensors``.

        Args:
            path: the folder.
            dtype: storage type of the weights (``torch.float16`` halves the file; loading
                always gives float32).
            extra: more JSON-able entries for ``config.json`` (e.g. provenance).

        Returns:
            The directory written.
        """
        return save_checkpoint(path, self.model, self._names, self._embeddings, self._encoder_id, extra, dtype)

    # ------------------------------------------------------------------ vocabulary
    @property
    def names(self) -> list[str]:
        """The current vocabulary (a copy)."""
        return list(self._names)

    @property
    def class_embeddings(self) -> torch.Tensor | None:
        """(K, D) float32 embeddings of the current vocabulary (a copy), or None."""
        return None if self._embeddings is None else self._embeddings.clone()

    @property
    def text_encoder(self) -> TextEncoder:
        """The text encoder of the config, built on first use (may download weights)."""
        if self._encoder is None:
            self._encoder = build_text_encoder(self.cfg.text, device=self.device)
        return self._encoder

    def set_text_encoder(self, text: TextConfig) -> Detector:
        """Use another text encoder for :meth:`set_classes` (e.g. local weights on an offline machine).

        The current vocabulary is kept (its embeddings came from the previous encoder); the
        new encoder is built on first use and must produce ``cfg.embed_dim``-wide embeddings.
        """
        self.model.cfg = dataclasses.replace(self.model.cfg, text=text)
        self._encoder = None
        return self

    def encode(self, names: Sequence[str]) -> torch.Tensor:
        """Embeddings of ``names`` from the cache, or the text encoder; the vocabulary is unchanged.

        Known names cost no encoder call: when all are cached the encoder is never even built.
        New embeddings are added to the cache file.

        Returns:
            (K, D) float32 on CPU, rows of unit norm.

        Raises:
            ValueError / TypeError: an invalid vocabulary (see :func:`~ovdet.text.validate_class_names`).
            TextEncoderUnavailable: the encoder's weights cannot be fetched (offline); the
                message says how to supply local files or precomputed embeddings.
        """
        return self._encode(validate_class_names(names))

    def _encode(self, names: list[str]) -> torch.Tensor:
        """:meth:`encode` of names already validated; the shipped CLIP tables answer first where
        they are the model's text space (:mod:`ovdet.text.builtin`)."""
        eid = self._encoder.id if self._encoder is not None else text_encoder_id(self.cfg.text)
        emb = encode_names(self.cache, eid, self.cfg.text.templates, names, lambda: self.text_encoder)
        if self.cache.path is not None and self.cache.unsaved:  # nothing new: no file rewrite
            try:
                self.cache.save()
            except OSError as e:
                warnings.warn(f"could not write the embedding cache {self.cache.path}: {e}", stacklevel=3)
        return emb

    def set_classes(self, names: Sequence[str] | str) -> Detector:
        """Set the vocabulary from natural-language names, or a built-in vocabulary by name.

        ``set_classes("coco")``, ``"lvis"``, ``"objects365"`` or ``"openimages"`` uses the class names
        shipped with ovdet (:mod:`ovdet.text.vocabulary`): a prompt-free mode in one word. For a
        model whose text space is CLIP ViT-B/32 OpenAI with templates ``("a {}",)``, the real CLIP
        embeddings shipped with ovdet answer these and any single name of their tables, offline and
        without building an encoder (:mod:`ovdet.text.builtin`). Other embeddings come from the
        cache when known (no encoder call), else from the text encoder; the cache is keyed by
        (encoder id, templates, text), so a new vocabulary or a new encoder never reuses stale
        embeddings.

        Raises:
            ValueError: empty list, duplicate or empty names (named).
            TypeError: a name that is not a string, or one string instead of a list.
            TextEncoderUnavailable: the encoder's weights cannot be fetched (offline); the
                message says how to supply local files or precomputed embeddings.
        """
        if is_builtin_vocabulary(names):
            names = builtin_vocabulary(names)  # type: ignore[arg-type]
        names = validate_class_names(names)
        emb = self._encode(names)
        if emb.shape[1] != self.cfg.embed_dim:
            raise ValueError(
                f"the text encoder {text_encoder_id(self.cfg.text)!r} gives {emb.shape[1]}-d embeddings but the "
                f"model reads {self.cfg.embed_dim}-d ones (model.embed_dim); use a matching text encoder"
            )
        return self._set(names, emb, text_encoder_id(self.cfg.text))

    def set_class_embeddings(self, names: Sequence[str], embeddings: torch.Tensor) -> Detector:
        """Set the vocabulary from precomputed embeddings (no text encoder needed).

        Args:
            names: K class names.
            embeddings: (K, D) float tensor, e.g. from ``ovdet embed``; rows are L2-normalised.

        Raises:
            ValueError: shape does not match the names or the model's embedding size, or
                non-finite values.
        """
        names = validate_class_names(names)
        emb = torch.as_tensor(embeddings)
        if emb.ndim != 2 or emb.shape[0] != len(names) or emb.shape[1] != self.cfg.embed_dim:
            raise ValueError(
                f"embeddings must be ({len(names)}, {self.cfg.embed_dim}) for {len(names)} names, "
                f"got {tuple(emb.shape)}"
            )
        if not torch.isfinite(emb).all():
            raise ValueError("embeddings contain NaN or infinite values")
        return self._set(names, torch.nn.functional.normalize(emb.float(), dim=-1), "precomputed")

    def _set(self, names: list[str], emb: torch.Tensor, encoder_id: str) -> Detector:
        self._names = list(names)
        self._embeddings = emb.detach().to(self.device, torch.float32).clone()
        self._encoder_id = encoder_id
        return self

    # ------------------------------------------------------------------ inference
    def fuse(self) -> Detector:
        """Fold BatchNorms into convolutions for faster inference (outputs unchanged)."""
        self.model.eval().fuse()
        return self

    def folded_network(self) -> FoldedDetector:
        """The network :meth:`predict` runs (``optimize=True``): the current vocabulary folded into a
        fused copy of ``self.model``, in the device's fastest memory layout (channels-last on CPU
        and CUDA). Built on first use and kept until the weights or the vocabulary change;
        ``forward(images)`` equals ``self.model(images, self.class_embeddings)`` up to float rounding.

        Raises:
            RuntimeError: no vocabulary set.
        """
        self._require_vocabulary()
        return self._folded.get(self.model, self._embeddings)

    def compile(self, **kwargs: Any) -> Detector:
        """Run :meth:`predict` through ``torch.compile(network, **kwargs)``.

        The network is :meth:`folded_network` (``predict(optimize=True)``, recompiled after each
        vocabulary or weight change) or ``self.model`` as it is (``optimize=False``). The first
        prediction at each input shape compiles (seconds to minutes); later ones reuse it, so it
        pays off for fixed-size streams (video, a fixed ``imgsz`` without ``auto`` padding).
        Outputs equal the eager network's up to float rounding. ``compile()`` uses torch's
        defaults (inductor); on CPU ``compile(options={"freezing": True})`` also prepacks the
        weights for oneDNN (v2-s at 640: 0.68–0.71× ultralytics' forward time vs 0.79–0.82× eager folded,
        28–40 s to compile one shape, on the 2-core dev machine); ``compile(backend="eager")``
        only checks that the network traces.
        """
        self._compile = dict(kwargs)
        self._forward = torch.compile(self.model, **kwargs)
        self._compiled = None
        return self

    def predict(
        self,
        source: Any,
        conf: float | None = None,
        iou: float | None = None,
        imgsz: int | tuple[int, int] | None = None,
        max_det: int | None = None,
        agnostic_nms: bool | None = None,
        batch: int | None = None,
        precision: str | None = None,
        stream: bool = False,
        keep_images: bool = True,
        video_stride: int = 1,
        max_pixels: int | None = None,
        optimize: bool = True,
        config: PredictConfig | None = None,
    ) -> list[Detections] | PredictionStream:
        """Detect the current vocabulary in images.

        The options (``conf`` … ``max_pixels``) are those of :class:`~ovdet.config.PredictConfig`;
        pass one built beforehand as ``config`` (keywords given as well override its fields).
        None leaves an option at the config's value, or its default.

        Args:
            source: image path, directory, glob, video file, numpy BGR array, PIL image,
                (3, H, W) RGB tensor, or a list of these.
            conf: minimum score (0.25). iou: NMS IoU threshold (0.7). max_det: boxes per image (300).
            imgsz: letterbox target (640; int or (h, w)), a multiple of the network's largest
                stride; images are padded only to a multiple of it.
            agnostic_nms: suppress overlapping boxes across classes (False).
            batch: images per forward pass (1).
            precision: ``"fp32"`` (default), ``"fp16"`` (CUDA only) or ``"bf16"``.
            stream: return a lazy :class:`PredictionStream` (bounded memory for videos and
                large folders; its ``skipped`` lists unreadable items) instead of a list.
            keep_images: keep each original image on its Detections (for ``plot``/``save``).
            video_stride: use every n-th video frame.
            max_pixels: largest image (width × height) decoded; larger ones are skipped as
                possible decompression bombs (None: ``$OVDET_MAX_PIXELS`` or 89,478,485; 0: no limit).
            optimize: run a copy of the network with the vocabulary folded into its weights, in
                channels-last layout (built at the first call, kept until the weights or the
                vocabulary change; outputs equal up to float rounding, ~15–20% faster on CPU).
                False runs ``self.model`` as it is. :meth:`compile` applies to either.
            config: the options as one :class:`~ovdet.config.PredictConfig`.

        Returns:
            One :class:`Detections` per readable image, in source order. Unreadable items of a
            multi-item source are skipped with one warning naming them.

        Raises:
            RuntimeError: no vocabulary set.
            ConfigError: an invalid option (named), e.g. an ``imgsz`` that is no multiple of the
                network's largest stride.
            ImageReadError: the source is a single unreadable image, or nothing could be read.
        """
        cfg = (config or PredictConfig()).replace(
            conf=conf,
            iou=iou,
            imgsz=imgsz,
            max_det=max_det,
            agnostic_nms=agnostic_nms,
            batch=batch,
            precision=precision,
            max_pixels=max_pixels,
        )
        predictor = self._predictor(cfg, optimize)
        return predict_source(predictor, source, cfg, stream, keep_images, video_stride)

    def _predictor(self, cfg: PredictConfig, optimize: bool) -> Predictor:
        """The predictor for the current vocabulary and weights (the folded copy with ``optimize``).

        Raises:
            RuntimeError: no vocabulary set.
            ConfigError: ``cfg.imgsz`` is no multiple of the network's largest stride.
            ValueError: ``cfg.precision`` does not run on this device (fp16 off CUDA).
        """
        self._require_vocabulary()
        dtype = resolve_precision(cfg.precision, self.device)
        folded: Any = None
        if optimize:
            folded = self.folded_network()
            if self._compile is not None:
                if self._compiled is None or self._compiled[0] is not folded:
                    self._compiled = (folded, torch.compile(folded, **self._compile))
                folded = self._compiled[1]
        return Predictor(
            self.model, self._names, self._embeddings, cfg.nms, cfg.imgsz, dtype, forward=self._forward, folded=folded
        )

    def _require_vocabulary(self) -> None:
        """Raises RuntimeError when no vocabulary is set."""
        if self._embeddings is None:
            raise RuntimeError("no vocabulary: call set_classes([...]) or set_class_embeddings(...) first")

    def ground(
        self,
        source: Any,
        caption: str | bytes,
        phrases: Sequence[str] | None = None,
        spans: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[Grounding]:
        """Phrase grounding: boxes for each phrase of ``caption`` in each image (GLIP's task).

        The caption's noun phrases (or its ``"person. dog."`` category list, or the ``phrases`` /
        ``spans`` given) become the vocabulary for one :meth:`predict`; each phrase gets the boxes
        of its text. The vocabulary is left as it was. See :func:`ovdet.grounding.ground`.

        Args:
            source: as in :meth:`predict`.
            caption: the text (``str`` or UTF-8 ``bytes``).
            phrases, spans: the phrases to ground, as strings found in the caption in order or
                as ``(start, end)`` character spans (default: found in the caption).
            **kwargs: ``conf``, ``top_k`` (None: every box above ``conf``), ``head_fallback``,
                ``keep_images`` and the :meth:`predict` options.

        Returns:
            One :class:`~ovdet.grounding.result.Grounding` per image: per phrase its ``(K, 4)``
            xyxy boxes in pixels of the original image and ``(K,)`` scores; ``to_dict``, ``plot``, ``save``.
        """
        from ovdet.grounding.ground import ground

        return ground(self, source, caption, phrases, spans, **kwargs)

    def track(
        self,
        source: Any,
        classes: Sequence[str] | str | None = None,
        tracker: str | TrackConfig = "bytetrack",
        conf: float = 0.1,
        iou: float | None = None,
        imgsz: int | tuple[int, int] | None = None,
        max_det: int | None = None,
        precision: str | None = None,
        stream: bool = False,
        keep_images: bool = True,
        video_stride: int = 1,
        max_pixels: int | None = None,
        optimize: bool = True,
        persist: bool = False,
        config: PredictConfig | None = None,
        **kwargs: Any,
    ) -> list[Detections] | TrackingStream:
        """Detect and track objects through a video: each box gets an identity kept across frames.

        Frames are detected one at a time with the vocabulary set *at that frame*: calling
        :meth:`set_classes` between frames of a stream changes what is detected from the next
        frame on, and (with ``class_aware``, the default) the tracks of classes that stay go on
        with their ids.

        Args:
            source: a video file, a folder or glob of frames (sorted: one sequence), a camera
                index (``0``) or a stream URL (``rtsp://…``, ``http://…``).
            classes: set this vocabulary first (as :meth:`set_classes`; it stays set).
            tracker: ``"bytetrack"`` (default), ``"sort"`` or ``"ocsort"``; or a whole
                :class:`~ovdet.config.TrackConfig` (then ``conf`` and ``**kwargs`` are its own).
            conf: detection threshold (low on purpose: ByteTrack uses low-score boxes to keep
                tracks through occlusion; only boxes at ``new_track`` or above start tracks).
            iou: NMS IoU threshold (0.7). max_det: boxes per frame (300).
            imgsz, precision, keep_images, video_stride, max_pixels, optimize, config: as in
                :meth:`predict` (the detection threshold is always ``conf``, the tracker's).
            persist: continue the tracks of the previous ``track(..., persist=True)`` call, for
                frames fed one call at a time (``det.track(frame, persist=True)`` in your own
                capture loop); False starts new tracks (and forgets the kept ones).
            **kwargs: more :class:`~ovdet.config.TrackConfig` fields (high, new_track,
                match_iou, buffer, min_hits, class_aware, trail).

        Returns:
            One :class:`Detections` per frame, with ``track_ids`` (N,) set and only the boxes of
            confirmed tracks; with ``stream=True`` a lazy :class:`~ovdet.inference.track.TrackingStream`
            (bounded memory; ``skipped`` lists unreadable frames).

        Raises:
            RuntimeError: no vocabulary set (and no ``classes``).
            TypeError: an unknown keyword (the valid ones are named).
            ImportError: the ``trackers`` package is missing (``pip install 'ovdet[track]'``).
            ImageReadError: nothing could be read (``stream=False``).
        """
        if isinstance(tracker, TrackConfig):
            if kwargs:
                raise TypeError(f"Detector.track() got {sorted(kwargs)} besides a TrackConfig: set them in it")
            cfg = tracker
        else:
            cfg = TrackConfig(tracker=tracker, conf=conf, **_config_kwargs(TrackConfig, kwargs, "track"))
        options = (config or PredictConfig()).replace(
            conf=cfg.conf, iou=iou, imgsz=imgsz, max_det=max_det, precision=precision, max_pixels=max_pixels
        )
        if classes is not None:
            self.set_classes(classes)
        self._require_vocabulary()  # fail now, not at the first frame
        resolve_precision(options.precision, self.device)
        check_imgsz(options.imgsz, max(self.cfg.strides))
        if not persist or self._tracker is None or self._tracker.cfg != cfg:
            self._tracker = ObjectTracker(cfg) if persist else None
        # The predictor is made per frame: the vocabulary set at that frame is the one detected.
        run = TrackingStream(
            lambda: self._predictor(options, optimize),
            source,
            cfg,
            keep_images=keep_images,
            video_stride=video_stride,
            max_pixels=options.max_pixels,
            tracker=self._tracker,
        )
        return run if stream else collect_tracks(run)

    def train(
        self,
        data: str | Path | TrainConfig | None = None,
        resume: str | Path | RunState | None = None,
        progress: bool = True,
        *,
        config: TrainConfig | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Fine-tune on box data (or continue a run), then hold the trained weights and vocabulary.

        Three forms: keywords (``det.train(data="my.yaml", epochs=50)``), a config
        (``det.train(cfg)`` or ``det.train(config=cfg)``, keywords then override its fields), or
        a resume (``det.train(resume="runs/train/exp")``).

        Args:
            data: an ultralytics data yaml, a COCO/LVIS instances json or an ODVG jsonl; or a
                :class:`~ovdet.config.TrainConfig` (the same as ``config=``).
            resume: a run folder or its ``weights/last``, or that run already read
                (:func:`~ovdet.engine.state.load_run`, nothing is read again): continue that run
                exactly (its saved settings apply; ``data``, ``config`` and ``kwargs`` are then ignored).
            progress: show progress bars.
            config: the run's settings, used as they are: its ``device`` too (``"auto"`` resolves
                as ``ovdet train`` resolves it); with ``data`` or keywords, those fields are replaced
                (``dataclasses.replace``, checked and validated once).
            **kwargs: :class:`~ovdet.config.TrainConfig` fields (epochs, imgsz, batch, device,
                mode, lr0, optimizer, …); ``loss``/``augment`` take dicts of their fields. Without
                a config, ``device`` defaults to this detector's device.

        Returns:
            ``{"run_dir", "last", "best", "metrics", "epochs", "vocab_report"}``. Afterwards the
            detector holds the run's final (EMA) weights and the dataset's names as its vocabulary.

        Texts are embedded once, before the first step: when the current vocabulary holds every
        text the run needs (e.g. ``set_class_embeddings`` from an ``ovdet embed`` file, for
        training offline) its embeddings are used, else the text encoder's (through the cache).

        Raises:
            TypeError: an unknown keyword (the valid ones are named), two configs, or neither data
                nor a resume.
        """
        from ovdet.config import from_dict, replace_train_config
        from ovdet.engine.state import RunState, load_run
        from ovdet.engine.train import train

        if isinstance(data, TrainConfig):
            if config is not None:
                raise TypeError("Detector.train() got two configs (positional and config=): pass one")
            data, config = None, data
        values = _config_kwargs(TrainConfig, kwargs, "train")
        if data is None and resume is None and (config is None or not config.data):
            raise TypeError("Detector.train() needs data=... (or resume=... to continue a run)")
        if data is not None:
            values["data"] = str(data)
        if resume is not None and not isinstance(resume, RunState):
            resume = load_run(resume)  # read once, here: its config says whether the text encoder trains
        if resume is not None:
            cfg = resume.config
        elif config is not None:
            cfg = replace_train_config(config, values, "Detector.train()")
        else:
            values.setdefault("device", str(self.device))
            cfg = from_dict(TrainConfig, values)
        encoder = self.text_encoder if cfg.text_lr_mult > 0 else None
        result = train(
            self.model,
            cfg,
            self._vocabulary_or_encode,
            encoder_id=self._encoder_id if self._embeddings is not None else text_encoder_id(self.cfg.text),
            text_encoder=encoder,
            resume=resume,
            progress=progress,
        )
        self.model.to(self.device).eval()
        self._set(result.names, result.embeddings, result.encoder_id)
        return {
            "run_dir": result.run_dir,
            "last": result.last,
            "best": result.best,
            "metrics": result.metrics,
            "epochs": result.state.epoch,
            "vocab_report": result.vocab_report,
        }

    def val(self, data: str | Path, config: EvalConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        """Zero-shot COCO/LVIS evaluation with the dataset's class names as the vocabulary.

        The detector is left as it was: its vocabulary and its train/eval mode are unchanged.
        Names the current vocabulary holds are scored with its embeddings (prompt-tuned or
        precomputed ones included); others are embedded by the text encoder.

        Args:
            data: COCO/LVIS instances json, an ultralytics data yaml or an ODVG jsonl.
            config: the settings as one :class:`~ovdet.config.EvalConfig` (keywords given as
                well override its fields).
            **kwargs: :class:`~ovdet.config.EvalConfig` fields (split, imgsz, conf, iou, max_det,
                batch, lvis, fixed_ap, backend, image_dir, save_dir, samples, progress).

        Returns:
            ``{"AP": …, "AP50": …, …, "per_class": [...]}``.

        Raises:
            TypeError: an unknown keyword (the valid ones are named).
        """
        from ovdet.inference.validate import validate

        values = _config_kwargs(EvalConfig, kwargs, "val")
        cfg = dataclasses.replace(config, **values) if config is not None else EvalConfig(**values)
        return validate(self.model, data, self._vocabulary_or_encode, cfg, self.device)

    def export(
        self,
        path: str | Path,
        dynamic_vocab: bool = False,
        nms: bool = False,
        config: ExportConfig | None = None,
        **kwargs: Any,
    ) -> Any:
        """Export for deployment: ONNX, with the vocabulary baked in or as an input.

        Args:
            path: the ``.onnx`` file to write.
            dynamic_vocab: take class embeddings (K, D) as an input (any K at run time) and
                export the text encoder and its tokenizer beside the model, so
                :class:`ovdet.deploy.OnnxDetector` changes classes without PyTorch; False folds
                the current vocabulary into the weights.
            nms: run NMS inside the graph (thresholds fixed at export).
            config: all the settings as one :class:`~ovdet.config.ExportConfig` (built once, e.g.
                by ``ovdet export``); then ``dynamic_vocab``, ``nms`` and ``kwargs`` are its own.
            **kwargs: more :class:`~ovdet.config.ExportConfig` fields (conf, iou, max_det,
                agnostic, imgsz, opset, half, int8, calib, calib_images, text_encoder).

        Returns:
            :class:`~ovdet.export.onnx.ExportResult` (files written, graph inputs/outputs,
            the int8 report under ``checks``).

        Raises:
            RuntimeError: a baked export with no vocabulary set.
            TypeError: an unknown keyword (the valid ones are named).
            ImportError: the ``onnx``/``onnxruntime`` packages are missing (the extra is named).
        """
        from ovdet.export.pipeline import export_model

        if config is not None:
            if kwargs or dynamic_vocab or nms:
                raise TypeError("Detector.export() takes either an ExportConfig or its fields as keywords, not both")
            cfg = config
        else:
            cfg = ExportConfig(dynamic_vocab=dynamic_vocab, nms=nms, **_config_kwargs(ExportConfig, kwargs, "export"))
        encoder = None
        if cfg.dynamic_vocab and cfg.text_encoder:
            try:
                encoder = self.text_encoder
            except TextEncoderUnavailable as e:
                warnings.warn(
                    f"exporting without a text encoder ({e}); the export takes embeddings only "
                    "(set_class_embeddings / `ovdet embed` files)",
                    stacklevel=2,
                )
        was_training = self.model.training
        try:
            return export_model(self.model.eval(), path, cfg, self._names, self._embeddings, self._encoder_id, encoder)
        finally:
            self.model.train(was_training)

    def _vocabulary_or_encode(self, names: Sequence[str]) -> torch.Tensor:
        """(K, D) embeddings for validation and training, on CPU: the current vocabulary's own rows
        when it holds every name (so prompt-tuned or precomputed embeddings are what is scored),
        else :meth:`encode`'s (:func:`~ovdet.text.vocabulary.select_embeddings`)."""
        return select_embeddings(names, self.encode, self._names, self._embeddings).cpu()


def load_detector(model: str | os.PathLike, device: str | torch.device = "auto") -> Detector:
    """A Detector from what ``--model`` accepts: an ovdet checkpoint folder, a model YAML (random
    init, seed 0: the same weights in every process) or a pretrained name; a local folder wins over
    a pretrained name of the same spelling.

    Raises:
        FileNotFoundError / ValueError: see :meth:`Detector.load`, :meth:`Detector.from_config`
            and :meth:`Detector.from_pretrained`.
    """
    path = Path(model)
    if path.is_dir():
        return Detector.load(path, device=device)
    if path.suffix in {".yaml", ".yml"}:
        return Detector.from_config(path, device=device)
    return Detector.from_pretrained(os.fspath(model), device=device)


def portable_model_spec(model: str | os.PathLike) -> str:
    """``model`` as another process or directory can load it with :func:`load_detector`: an
    existing local path made absolute, a pretrained name as given."""
    return str(Path(model).resolve()) if Path(model).exists() else os.fspath(model)


def _config_kwargs(config: type, kwargs: dict[str, Any], method: str) -> dict[str, Any]:
    """Keyword arguments of ``Detector.<method>`` checked against a config's fields (paths as strings).

    Raises:
        TypeError: an unknown keyword (the valid ones are named).
    """
    valid = {f.name for f in fields(config)}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise TypeError(f"Detector.{method}() got unknown argument(s) {unknown}; valid: {sorted(valid)}")
    return {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()}
