"""``OnnxDetector``: the ``Detector`` API over an exported ONNX file, on onnxruntime or OpenVINO.

Same sources, same preprocessing (letterbox to a stride multiple, BGR→RGB, /255), same
un-letterboxing and the same :class:`~ovdet.structures.Detections` as
:meth:`ovdet.Detector.predict`; the network, the text encoder and NMS run without PyTorch.

A file exported with a baked vocabulary detects its fixed classes; one exported with
``dynamic_vocab=True`` takes any vocabulary: ``set_classes`` (through the exported text encoder
beside it), ``set_class_embeddings`` or ``load_embeddings`` (files from ``ovdet embed``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovdet.config import PredictConfig, check_imgsz
from ovdet.data.letterbox import unletterbox_boxes
from ovdet.deploy.metadata import METADATA_KEY, parse_metadata
from ovdet.deploy.postprocess import select
from ovdet.deploy.session import Session, open_session
from ovdet.deploy.text import OnnxTextEncoder
from ovdet.inference.stream import PredictionStream, letterbox_groups, predict_source
from ovdet.structures import Detections
from ovdet.text.base import validate_class_names

__all__ = ["OnnxDetector", "OnnxPredictor"]


def images_to_array(images: Sequence[np.ndarray]) -> np.ndarray:
    """B same-shape (H, W, 3) uint8 BGR images → (B, 3, H, W) float32 RGB in [0, 1]."""
    batch = np.stack(images)[..., ::-1].transpose(0, 3, 1, 2)  # (B, 3, H, W) RGB uint8
    return np.ascontiguousarray(batch, dtype=np.float32) / np.float32(255.0)


#: ``OnnxDetector.predict``'s ``imgsz`` when not given: the config's size (``None`` is the export's).
CONFIG_SIZE = object()


class OnnxPredictor:
    """Detect one vocabulary in batches of decoded images with an exported graph.

    Args:
        session: the loaded detector graph.
        meta: its ovdet metadata.
        names: K class names.
        embeddings: (K, D) float32 (dynamic-vocabulary graphs), or None (baked).
        conf / iou / max_det / agnostic: post-processing (checked against in-graph NMS settings).
        imgsz: letterbox target (int or (h, w)).
    """

    def __init__(
        self,
        session: Session,
        meta: dict[str, Any],
        names: list[str],
        embeddings: np.ndarray | None,
        conf: float,
        iou: float,
        max_det: int,
        agnostic: bool,
        imgsz: int | tuple[int, int],
    ) -> None:
        self.session, self.meta, self.names, self.embeddings = session, meta, names, embeddings
        self.conf, self.iou, self.max_det, self.agnostic = conf, iou, max_det, agnostic
        self.imgsz, self.stride = imgsz, int(meta["stride"])
        self.fixed = bool(meta.get("fixed_size", False))

    def _feeds(self, x: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"images": x}
        if self.embeddings is not None:
            feeds["class_embeddings"] = self.embeddings
        return feeds

    def raw(self, x: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for a (B, 3, H, W) float32 batch."""
        return self.session.run(self._feeds(x))

    def __call__(
        self, images: Sequence[np.ndarray], sources: Sequence[str | None], keep_images: bool = True
    ) -> list[Detections]:
        """Detections of B (H, W, 3) uint8 BGR images, in order (same-shape sub-batches)."""
        boxed, groups = letterbox_groups(images, self.imgsz, self.stride, auto=not self.fixed)
        out: list[Detections | None] = [None] * len(images)
        for idx in groups:
            outputs = self.raw(images_to_array([boxed[i][0] for i in idx]))
            for j, i in enumerate(idx):
                bx, sc, lb = self._select(outputs, j)
                info = boxed[i][1]
                out[i] = Detections(
                    boxes=unletterbox_boxes(bx, info),
                    scores=sc,
                    labels=lb,
                    names=list(self.names),
                    image_size=info.orig_shape,
                    path=sources[i],
                    image=images[i] if keep_images else None,
                )
        return out  # type: ignore[return-value]

    def _select(self, outputs: list[np.ndarray], j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``j``'s boxes (N, 4), scores (N,) and labels (N,) from the graph's outputs."""
        if self.meta["nms"] is None:
            boxes, scores = outputs  # (B, A, 4), (B, A, K)
            return select(boxes[j], scores[j], self.conf, self.iou, self.max_det, self.agnostic)
        boxes, scores, labels, batch_index = outputs  # (N, 4), (N,), (N,), (N,)
        keep = (batch_index == j) & (scores > self.conf)
        return boxes[keep][: self.max_det], scores[keep][: self.max_det], labels[keep][: self.max_det].astype(np.int64)


class OnnxDetector:
    """An exported detector with the ``Detector`` API: set a vocabulary, predict boxes.

    Args:
        path: the detector ``.onnx`` written by ``Detector.export`` / ``ovdet export``.
        providers: onnxruntime execution providers (default: the fastest present of TensorRT,
            CUDA and CPU).
        threads: intra-op threads (None: the runtime's default).
        backend: ``"onnxruntime"`` (default) or ``"openvino"`` (CPU; ``pip install "ovdet[openvino]"``).
            The exported text encoder runs on onnxruntime either way.
        precision: ``"fp32"``, or ``"bf16"`` with OpenVINO on a CPU with bfloat16 instructions
            (AMX: ~3x faster than fp32; ovdet-demo keeps ~95% of its fp32 boxes at IoU 0.9).
        static_shapes: OpenVINO: input shapes that get their own static-shape compiled copy
            (see :func:`~ovdet.deploy.session.open_session`).

    Raises:
        FileNotFoundError: no such file.
        ImportError: the runtime is not installed (the extra is named).
        ValueError: a corrupt file, a non-ONNX file, or an ONNX file not exported by ovdet (named).

    Example:
        >>> det = OnnxDetector("model.onnx")            # exported with dynamic_vocab=True
        >>> det.set_classes(["person", "red backpack"])  # exported text encoder, no PyTorch
        >>> det.predict("bus.jpg")[0].boxes
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        backend: str = "onnxruntime",
        precision: str = "fp32",
        static_shapes: int = 4,
    ) -> None:
        self.path = Path(path)
        self.session = open_session(self.path, providers, threads, backend, precision, static_shapes)
        self.metadata = parse_metadata(self.session.metadata, METADATA_KEY, self.path)
        self._providers, self._threads = providers, threads
        self.dynamic = self.metadata["vocab"] == "dynamic"
        self.embed_dim = int(self.metadata["embed_dim"])
        self._encoder: OnnxTextEncoder | None = None
        self._names: list[str] = list(self.metadata["names"])
        self._embeddings: np.ndarray | None = None
        vocab_file = self.metadata.get("vocab_file")
        if self.dynamic:
            self._names = []
            if vocab_file and (self.path.parent / vocab_file).is_file():
                self.load_embeddings(self.path.parent / vocab_file)

    def __repr__(self) -> str:
        return (
            f"OnnxDetector({str(self.path)!r}, vocab={self.metadata['vocab']}, classes={len(self._names)}, "
            f"backend={self.session.backend}, providers={self.session.providers}, precision={self.session.precision})"
        )

    # ------------------------------------------------------------------ vocabulary
    @property
    def names(self) -> list[str]:
        """The current vocabulary (a copy)."""
        return list(self._names)

    @property
    def class_embeddings(self) -> np.ndarray | None:
        """(K, D) float32 embeddings of the current vocabulary (dynamic files), or None."""
        return None if self._embeddings is None else self._embeddings.copy()

    @property
    def text_encoder(self) -> OnnxTextEncoder:
        """The text encoder exported beside the model, loaded on first use.

        Raises:
            RuntimeError: the export has no text encoder (the ways around it are named).
        """
        if self._encoder is None:
            text = self.metadata.get("text_model")
            if not text:
                raise RuntimeError(
                    f"{self.path} was exported without a text encoder: use set_class_embeddings(...) or "
                    f"load_embeddings(file from `ovdet embed`), or re-export with the text encoder"
                )
            providers = self._providers if self.session.backend == "onnxruntime" else None
            self._encoder = OnnxTextEncoder(self.path.parent / text, providers, self._threads)
        return self._encoder

    def _require_dynamic(self, what: str) -> None:
        if not self.dynamic:
            raise RuntimeError(
                f"{what}: the vocabulary of {self.path} is baked into the model ({len(self._names)} classes: "
                f"{self._names[:5]}{' ...' if len(self._names) > 5 else ''}); export with dynamic_vocab=True "
                f"(ovdet export --dynamic-vocab) to change classes after export"
            )

    def set_classes(self, names: Sequence[str]) -> OnnxDetector:
        """Set the vocabulary from names through the exported text encoder (no PyTorch).

        Raises:
            RuntimeError: a baked-vocabulary model, or an export without a text encoder.
            ValueError / TypeError: an invalid vocabulary (see :func:`~ovdet.text.validate_class_names`).
        """
        self._require_dynamic("set_classes")
        names = validate_class_names(names)
        return self.set_class_embeddings(names, self.text_encoder.encode(names))

    def set_class_embeddings(self, names: Sequence[str], embeddings: Any) -> OnnxDetector:
        """Set the vocabulary from precomputed (K, D) embeddings (numpy, or anything array-like).

        Raises:
            RuntimeError: a baked-vocabulary model.
            ValueError: the shape is not (K, D) for K names and the model's D, or values are
                not finite (the expected shape is named).
            TypeError: a dtype that is not floating point.
        """
        self._require_dynamic("set_class_embeddings")
        names = validate_class_names(names)
        emb = np.asarray(embeddings.numpy() if hasattr(embeddings, "numpy") else embeddings)
        if emb.ndim != 2 or emb.shape[0] != len(names) or emb.shape[1] != self.embed_dim:
            raise ValueError(
                f"embeddings must be ({len(names)}, {self.embed_dim}) for {len(names)} names and this model's "
                f"{self.embed_dim}-d text space, got {tuple(emb.shape)}"
            )
        if not np.issubdtype(emb.dtype, np.floating):
            raise TypeError(f"embeddings must be floating point (float32), got {emb.dtype}")
        if not np.isfinite(emb).all():
            raise ValueError("embeddings contain NaN or infinite values")
        emb = emb.astype(np.float32)
        self._embeddings = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        self._names = list(names)
        return self

    def load_embeddings(self, path: str | Path) -> OnnxDetector:
        """Set the vocabulary from an embeddings file written by ``ovdet embed``.

        A file from another text encoder than the model's is used with a warning (its
        embeddings may not live in the space the model was trained on).
        """
        from ovdet.text.files import load_embeddings

        names, emb, meta = load_embeddings(path)
        model_id = self.metadata.get("encoder_id")
        if model_id and meta["encoder_id"] and meta["encoder_id"] not in (model_id, "precomputed"):
            warnings.warn(
                f"{path} was written by text encoder {meta['encoder_id']!r}; {self.path} expects {model_id!r}",
                stacklevel=2,
            )
        return self.set_class_embeddings(names, emb)  # a tensor, or numpy without PyTorch

    # ------------------------------------------------------------------ inference
    def _predictor(self, cfg: PredictConfig, imgsz: int | tuple[int, int] | None) -> OnnxPredictor:
        """The predictor of ``cfg`` at ``imgsz`` (None: the export's size).

        Raises:
            RuntimeError: no vocabulary.
            ValueError: thresholds the graph cannot honour, or a size it refuses.
        """
        if not self._names:
            raise RuntimeError(
                "no vocabulary: call set_classes([...]), set_class_embeddings(...) or load_embeddings(...)"
            )
        conf, iou, max_det, agnostic = cfg.conf, cfg.iou, cfg.max_det, cfg.agnostic_nms
        graph_nms = self.metadata["nms"]
        if graph_nms is not None:
            fixed = f"{self.path} runs NMS inside the graph with conf={graph_nms['conf']}, iou={graph_nms['iou']}, max_det={graph_nms['max_det']}, agnostic={graph_nms['agnostic']}"
            if (
                conf < graph_nms["conf"]
                or iou != graph_nms["iou"]
                or max_det > graph_nms["max_det"]
                or agnostic != graph_nms["agnostic"]
            ):
                raise ValueError(
                    f"{fixed}: conf={conf}, iou={iou}, max_det={max_det}, agnostic={agnostic} cannot be honoured "
                    f"(conf may only be raised, max_det only lowered); export without --nms for free thresholds"
                )
        size = tuple(self.metadata["imgsz"]) if imgsz is None else check_imgsz(imgsz, int(self.metadata["stride"]))
        if self.metadata.get("fixed_size"):
            want = tuple(self.metadata["imgsz"])
            got = (size, size) if isinstance(size, int) else tuple(size)
            if got != want:
                raise ValueError(
                    f"{self.path} takes {want[0]}x{want[1]} inputs only (fixed at export), got imgsz={size}"
                )
        return OnnxPredictor(
            self.session, self.metadata, self._names, self._embeddings, conf, iou, max_det, agnostic, size
        )

    def predict(
        self,
        source: Any,
        conf: float | None = None,
        iou: float | None = None,
        imgsz: int | tuple[int, int] | None | object = CONFIG_SIZE,
        max_det: int | None = None,
        agnostic_nms: bool | None = None,
        batch: int | None = None,
        stream: bool = False,
        keep_images: bool = True,
        video_stride: int = 1,
        max_pixels: int | None = None,
        config: PredictConfig | None = None,
    ) -> list[Detections] | PredictionStream:
        """Detect the current vocabulary in images (same arguments and sources as ``Detector.predict``,
        :class:`~ovdet.config.PredictConfig` options as keywords or as ``config``; its
        ``precision`` is the runtime's, chosen when the file is opened).

        ``imgsz=None`` uses the export's size; left out, the config's (640 by default). With
        in-graph NMS, ``conf`` may only be raised and ``max_det`` only lowered from the exported
        values, and ``iou``/``agnostic_nms`` must equal them.

        Returns:
            One :class:`Detections` per readable image (or a lazy :class:`PredictionStream`).

        Raises:
            RuntimeError: no vocabulary.
            ValueError: thresholds the graph cannot honour, or a size a fixed-size graph refuses.
            ImageReadError: the source is a single unreadable image, or nothing could be read.
        """
        cfg = (config or PredictConfig()).replace(
            conf=conf,
            iou=iou,
            imgsz=None if imgsz is CONFIG_SIZE else imgsz,
            max_det=max_det,
            agnostic_nms=agnostic_nms,
            batch=batch,
            max_pixels=max_pixels,
        )
        size = cfg.imgsz if imgsz is CONFIG_SIZE else imgsz
        predictor = self._predictor(cfg, size)  # type: ignore[arg-type]
        return predict_source(predictor, source, cfg, stream, keep_images, video_stride)
