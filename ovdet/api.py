"""``Detector``: the one public object — constructors, vocabulary, predict, save/load."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ovdet import __version__
from ovdet.config import ModelConfig, TextConfig, from_dict, load_model_config, to_dict
from ovdet.data.images import ImageReadError, SourceItem, iter_sources
from ovdet.data.letterbox import LetterboxInfo, letterbox, to_tensor, unletterbox_boxes
from ovdet.config import NMSConfig
from ovdet.models.detector import OVDetector
from ovdet.text import (EmbeddingCache, TextEncoder, build_text_encoder, load_embeddings, save_embeddings,
                               text_encoder_id, validate_class_names)
from ovdet.structures import Detections

CHECKPOINT_FORMAT = "ovdet-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def ovdet_home() -> Path:
    """ovdet's cache directory: ``$OVDET_HOME``, default ``~/.cache/ovdet``."""
    return Path(os.environ.get("OVDET_HOME", Path.home() / ".cache" / "ovdet")).expanduser()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → the first CUDA device when available, else CPU; anything else as given.

    Raises:
        ValueError: a CUDA device is asked for but none is available.
    """
    if str(device) == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    return dev


_PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class PredictionStream(Iterable[Detections]):
    """Lazy predictions over a source; iterating runs the model batch by batch.

    Attributes:
        skipped: (source name, reason) of every item that could not be read, filled during
            iteration; a bad item never stops the run.
        seen: items read successfully so far.
    """

    def __init__(self, detector: "Detector", source: Any, nms: NMSConfig, imgsz: int | tuple[int, int], batch: int,
                 precision: str, keep_images: bool, video_stride: int) -> None:
        self._det, self._source, self._nms, self._imgsz = detector, source, nms, imgsz
        self._batch, self._precision, self._keep, self._vid_stride = batch, precision, keep_images, video_stride
        self.skipped: list[tuple[str, str]] = []
        self.seen = 0

    def __iter__(self) -> Iterator[Detections]:
        pending: list[SourceItem] = []
        for item in iter_sources(self._source, video_stride=self._vid_stride):
            if item.error is not None or item.image is None:
                self.skipped.append((item.name, item.error or f"{item.name}: no image"))
                warnings.warn(f"skipped: {self.skipped[-1][1]}", stacklevel=2)
                continue
            pending.append(item)
            if len(pending) == self._batch:
                yield from self._run(pending)
                pending = []
        if pending:
            yield from self._run(pending)

    def _run(self, items: list[SourceItem]) -> list[Detections]:
        self.seen += len(items)
        return self._det._predict_images([it.image for it in items], [it.name for it in items], self._nms,
                                         self._imgsz, self._precision, self._keep)


class Detector:
    """An open-vocabulary detector: set a vocabulary, then predict boxes for it.

    Example:
        >>> det = Detector.from_config("configs/models/yolo-world-tiny.yaml")
        >>> det.set_classes(["person", "bus"])
        >>> det.predict("bus.jpg")[0].boxes  # (N, 4) xyxy pixels of the original image
    """

    def __init__(self, model: OVDetector, device: str | torch.device = "auto",
                 cache: EmbeddingCache | None = None) -> None:
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
        self.conversion_report = None  # set by from_ultralytics: what was loaded / left random

    # ------------------------------------------------------------------ constructors
    @property
    def cfg(self) -> ModelConfig:
        """The model's architecture and text-encoder config."""
        return self.model.cfg

    @classmethod
    def from_config(cls, config: str | Path | ModelConfig, device: str | torch.device = "auto",
                    overrides: list[str] | None = None, seed: int | None = 0) -> "Detector":
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
    def from_ultralytics(cls, path: str | Path, trust: bool = False, device: str | torch.device = "auto",
                         text: TextConfig | None = None) -> "Detector":
        """Convert an official ultralytics YOLO-World (v1/v2, any scale) or YOLOv8 checkpoint.

        ``.pt`` files are pickles, so ``trust=True`` is required; save the result with
        :meth:`save` to get ovdet's safe format. A plain YOLOv8 detector initialises a v2
        YOLO-World network (see :attr:`conversion_report` for what stayed random).

        Raises:
            UntrustedCheckpointError: ``trust`` is not True (the file is not read).
            ConversionError: the checkpoint does not map onto the architecture (tensors named).
        """
        from ovdet.weights import convert_ultralytics_model, read_ultralytics_checkpoint

        model, _ = read_ultralytics_checkpoint(path, trust=trust)
        net, report = convert_ultralytics_model(model, text)
        det = cls(net, device)
        det.conversion_report = report
        return det

    @classmethod
    def from_pretrained(cls, name: str, device: str | torch.device = "auto",
                        base_url: str | None = None) -> "Detector":
        """A detector with official weights, by name (e.g. ``"yolo-world-v2-s"``).

        The first call downloads the official ultralytics file into ``$OVDET_HOME/downloads/``
        and converts it once to ``$OVDET_HOME/models/<name>/``; later calls read only that
        directory (no network, nothing unpickled). Names: :data:`ovdet.weights.PRETRAINED`
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
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> "Detector":
        """Restore a detector written by :meth:`save` (safetensors + JSON; nothing is unpickled).

        Raises:
            FileNotFoundError: the directory or one of its files is missing (named).
            ValueError: the files are not an ovdet checkpoint or do not match (named).
        """
        path = Path(path)
        meta_path, weights_path = path / "config.json", path / "model.safetensors"
        for p in (meta_path, weights_path):
            if not p.is_file():
                raise FileNotFoundError(f"not an ovdet checkpoint directory: {p} is missing")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e})") from e
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{meta_path}: 'format' is {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        cfg = from_dict(ModelConfig, meta["model"], "model.")
        with torch.device("meta"):  # shapes only: every tensor comes from the file
            model = OVDetector(cfg).eval()
            if meta.get("fused"):
                model.fuse()
        try:
            state = load_file(str(weights_path))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{weights_path}: unreadable safetensors file ({e})") from e
        result = model.load_state_dict(state, strict=False, assign=True)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{weights_path} does not match its config: missing {result.missing_keys[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")
        det = cls(model, device)
        emb_path = path / "class_embeddings.safetensors"
        if emb_path.is_file():
            names, emb, _ = load_embeddings(emb_path)
            det.set_class_embeddings(names, emb)
            det._set(det.names, emb)  # bit-exact: the saved rows are already normalised
        return det

    def save(self, path: str | Path) -> Path:
        """Write ``model.safetensors``, ``config.json`` and (when set) ``class_embeddings.safetensors``.

        Returns:
            The directory written.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        _atomic(path / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": CHECKPOINT_FORMAT}))
        meta = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "ovdet": __version__,
                "fused": self.model.is_fused, "model": to_dict(self.cfg), "names": list(self._names)}
        _atomic(path / "config.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
        emb_path = path / "class_embeddings.safetensors"
        if self._embeddings is not None:
            encoder_id = self._encoder.id if self._encoder is not None else "precomputed"
            _atomic(emb_path, lambda p: save_embeddings(p, self._names, self._embeddings.cpu(), encoder_id,
                                                        self.cfg.text.templates))
        elif emb_path.exists():
            emb_path.unlink()
        return path

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

    def set_classes(self, names: Sequence[str]) -> "Detector":
        """Set the vocabulary from natural-language names.

        Embeddings come from the cache when known (no encoder call), else from the text
        encoder; the cache is keyed by (encoder id, templates, text), so a new vocabulary or a
        new encoder never reuses stale embeddings.

        Raises:
            ValueError: empty list, duplicate or empty names (named).
            TypeError: a name that is not a string, or one string instead of a list.
            TextEncoderUnavailable: the encoder's weights cannot be fetched (offline); the
                message says how to supply local files or precomputed embeddings.
        """
        names = validate_class_names(names)
        templates = self.cfg.text.templates
        emb = None
        if self._encoder is None:  # all names cached → the encoder is never even built
            emb = self.cache.lookup(text_encoder_id(self.cfg.text), names, templates)
        if emb is None:
            emb = self.cache.get_or_encode(self.text_encoder, names, templates)
            if self.cache.path is not None:
                try:
                    self.cache.save()
                except OSError as e:
                    warnings.warn(f"could not write the embedding cache {self.cache.path}: {e}", stacklevel=2)
        return self._set(names, emb)

    def set_class_embeddings(self, names: Sequence[str], embeddings: torch.Tensor) -> "Detector":
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
            raise ValueError(f"embeddings must be ({len(names)}, {self.cfg.embed_dim}) for {len(names)} names, "
                             f"got {tuple(emb.shape)}")
        if not torch.isfinite(emb).all():
            raise ValueError("embeddings contain NaN or infinite values")
        return self._set(names, torch.nn.functional.normalize(emb.float(), dim=-1))

    def _set(self, names: list[str], emb: torch.Tensor) -> "Detector":
        self._names = list(names)
        self._embeddings = emb.detach().to(self.device, torch.float32).clone()
        return self

    # ------------------------------------------------------------------ inference
    def fuse(self) -> "Detector":
        """Fold BatchNorms into convolutions for faster inference (outputs unchanged)."""
        self.model.eval().fuse()
        return self

    def predict(self, source: Any, conf: float = 0.25, iou: float = 0.7, imgsz: int | tuple[int, int] = 640,
                max_det: int = 300, agnostic_nms: bool = False, batch: int = 1, precision: str = "fp32",
                stream: bool = False, keep_images: bool = True,
                video_stride: int = 1) -> list[Detections] | PredictionStream:
        """Detect the current vocabulary in images.

        Args:
            source: image path, directory, glob, video file, numpy BGR array, PIL image,
                (3, H, W) RGB tensor, or a list of these.
            conf: minimum score. iou: NMS IoU threshold. max_det: boxes per image.
            imgsz: letterbox target (int or (h, w)); images are padded only to a multiple of 32.
            agnostic_nms: suppress overlapping boxes across classes.
            batch: images per forward pass.
            precision: ``"fp32"``, ``"fp16"`` (CUDA only) or ``"bf16"``.
            stream: return a lazy :class:`PredictionStream` (bounded memory for videos and
                large folders) instead of a list.
            keep_images: keep each original image on its Detections (for ``plot``/``save``).
            video_stride: use every n-th video frame.

        Returns:
            One :class:`Detections` per readable image, in source order.

        Raises:
            RuntimeError: no vocabulary set.
            ImageReadError: the source is a single unreadable image, or nothing could be read.
        """
        if self._embeddings is None:
            raise RuntimeError("no vocabulary: call set_classes([...]) or set_class_embeddings(...) first")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision='fp16' needs a CUDA device; use 'fp32' or 'bf16' on CPU")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        nms = NMSConfig(conf=conf, iou=iou, max_det=max_det, agnostic=agnostic_nms)
        run = PredictionStream(self, source, nms, imgsz, batch, precision, keep_images, video_stride)
        if stream:
            return run
        results = list(run)
        if not results and run.skipped:
            reason = run.skipped[0][1]  # reasons start with the file name
            raise ImageReadError(reason if len(run.skipped) == 1 else
                                 f"none of the {len(run.skipped)} sources could be read; first: {reason}")
        return results

    def val(self, data: str | Path, **kwargs: Any) -> dict[str, Any]:
        """Zero-shot COCO/LVIS evaluation; the vocabulary becomes the dataset's class names.

        Args:
            data: COCO/LVIS instances json or an ultralytics data yaml.
            **kwargs: see :func:`ovdet.engine.validate.validate` (split, imgsz, conf, iou,
                max_det, batch, lvis, fixed_ap, backend, save_dir, …).

        Returns:
            ``{"AP": …, "AP50": …, …, "per_class": [...]}``.
        """
        from ovdet.engine.validate import validate

        return validate(self, data, **kwargs)

    @torch.inference_mode()
    def _predict_images(self, images: list[np.ndarray], names: list[str], nms: NMSConfig,
                        imgsz: int | tuple[int, int], precision: str, keep: bool) -> list[Detections]:
        """Letterbox, run and un-letterbox a batch of BGR uint8 images.

        Images whose letterboxed shapes differ run as separate sub-batches, so a batched
        prediction equals the one-by-one predictions.
        """
        stride = max(self.cfg.strides)
        boxed = [letterbox(im, imgsz, stride=stride) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (arr, _) in enumerate(boxed):
            groups.setdefault(arr.shape[:2], []).append(i)
        out: list[Detections | None] = [None] * len(images)
        dtype = _PRECISIONS[precision]
        amp = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext())
        for idx in groups.values():
            x = to_tensor([boxed[i][0] for i in idx]).to(self.device)  # (b, 3, H, W)
            with amp:
                raw = self.model(x, self._embeddings)
            for i, (boxes, scores, labels) in zip(idx, self.model.postprocess(raw, nms)):
                info: LetterboxInfo = boxed[i][1]
                out[i] = Detections(boxes=unletterbox_boxes(boxes.cpu(), info), scores=scores.cpu(),
                                    labels=labels.cpu(), names=list(self._names), image_size=info.orig_shape,
                                    path=names[i], image=images[i] if keep else None)
        return out  # type: ignore[return-value]


def _atomic(path: Path, write) -> None:
    """Write through a temporary sibling then rename, so a crash never leaves a half file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
