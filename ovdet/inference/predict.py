"""Inference: images → letterbox → network → decode + NMS → boxes in original pixels → Detections.

:class:`Predictor` runs one network with one fixed vocabulary; :class:`PredictionStream` feeds
it any source (files, folders, globs, videos, arrays) batch by batch and keeps going past items
that cannot be read, counting them. ``Detector.predict`` and validation both run through here.
The stream, :func:`collect` and :func:`letterbox_groups` live in :mod:`ovdet.inference.stream`
(no PyTorch, shared with the deployment runtime) and are re-exported here.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ovdet.config import NMSConfig, check_imgsz
from ovdet.data.letterbox import to_tensor, unletterbox_boxes
from ovdet.device import autocast
from ovdet.inference.stream import BatchPredictor, PredictionStream, collect, letterbox_groups
from ovdet.models.detector import OVDetector
from ovdet.models.folded import FoldedDetector, fold_vocabulary
from ovdet.models.outputs import RawOutputs
from ovdet.structures import Detections

__all__ = ["BatchPredictor", "FoldedCache", "PredictionStream", "Predictor", "collect", "letterbox_groups"]


def _layout(device: torch.device) -> torch.memory_format:
    """The memory layout convolutions run fastest in on ``device``: channels-last on CPU (oneDNN's
    kernels read NHWC without a reorder per layer) and CUDA (tensor cores); contiguous elsewhere."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


class FoldedCache:
    """The network ``Detector.predict`` runs: a copy with the vocabulary folded into its weights
    (:func:`~ovdet.models.folded.fold_vocabulary`: nothing text-related runs per image), fused,
    in the device's fastest memory layout, its SiLUs in place (each acts on a fresh convolution
    output that nothing else holds: one tensor less to allocate and write per layer) — built once
    and reused until the weights or the vocabulary change.

    A change is seen through every parameter's and buffer's identity (held weakly), storage and in-place
    version counter (optimizer steps, ``load_state_dict``, ``fuse``, ``.to(...)`` and a new
    ``det.model`` all change them), and the embeddings' identity and version, so a stale copy
    is never used.
    """

    def __init__(self) -> None:
        self._refs: list[weakref.ref] = []  # what the copy was built from (weak: never kept alive)
        self._state: list[tuple] = []
        self._net: FoldedDetector | None = None

    @staticmethod
    def _sources(model: OVDetector, embeddings: torch.Tensor) -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers(), embeddings]

    def _fresh(self, tensors: list[torch.Tensor]) -> bool:
        # identity through live weak references: a freed tensor's id and storage can be reused
        return (
            self._net is not None
            and len(tensors) == len(self._refs)
            and all(ref() is t for ref, t in zip(self._refs, tensors))
            and [(t.data_ptr(), t._version, t.dtype, t.device) for t in tensors] == self._state
        )

    def get(self, model: OVDetector, embeddings: torch.Tensor) -> FoldedDetector:
        """The folded network for ``model`` and (K, D) ``embeddings`` (rebuilt if either changed)."""
        tensors = self._sources(model, embeddings)
        if not self._fresh(tensors):
            self.clear()  # drop the old copy before building the new one (peak memory)
            net = fold_vocabulary(model, embeddings)
            for m in net.modules():  # the copy's own modules: the caller's model is untouched
                if isinstance(m, nn.SiLU):
                    m.inplace = True
            self._net = net.to(memory_format=_layout(embeddings.device)).requires_grad_(False)
            self._refs = [weakref.ref(t) for t in tensors]
            self._state = [(t.data_ptr(), t._version, t.dtype, t.device) for t in tensors]
        return self._net  # type: ignore[return-value]

    def clear(self) -> None:
        """Forget the cached network (frees its memory)."""
        self._refs, self._state, self._net = [], [], None


class Predictor:
    """Detect a fixed vocabulary in batches of decoded images.

    Args:
        model: the network; it runs in eval mode (its previous mode is restored after each call).
        names: K class names.
        embeddings: (K, D) class embeddings on the model's device.
        nms: post-processing thresholds.
        imgsz: letterbox target (int or (h, w)), a multiple of the model's largest stride; images
            are padded only to a multiple of it.
        dtype: autocast dtype (None: float32).
        auto: letterbox to the smallest stride multiple (True, ultralytics' predictor) or to
            exactly ``imgsz`` (False; what fixed-size exports see).
        forward: what runs the network (default ``model`` itself; e.g. ``torch.compile(model)``).
        folded: ``model`` with ``embeddings`` folded in (:class:`FoldedCache`; or its
            ``torch.compile`` wrapper); when given it runs instead of ``model`` (same outputs up
            to float rounding), on channels-last input.
    """

    def __init__(
        self,
        model: OVDetector,
        names: Sequence[str],
        embeddings: torch.Tensor,
        nms: NMSConfig,
        imgsz: int | tuple[int, int] = 640,
        dtype: torch.dtype | None = None,
        auto: bool = True,
        forward: Callable[[torch.Tensor, torch.Tensor], RawOutputs] | None = None,
        folded: FoldedDetector | nn.Module | None = None,
    ) -> None:
        if embeddings.ndim != 2 or embeddings.shape[0] != len(names):
            raise ValueError(
                f"embeddings must be ({len(names)}, D) for {len(names)} names, got {tuple(embeddings.shape)}"
            )
        self.model, self.names, self.embeddings = model, list(names), embeddings
        self.stride = max(model.cfg.strides)
        self.nms, self.imgsz, self.dtype, self.auto = nms, check_imgsz(imgsz, self.stride), dtype, auto
        self.forward = model if forward is None else forward
        if folded is not None and folded.num_classes != len(self.names):
            raise ValueError(f"the folded network has {folded.num_classes} classes, not {len(self.names)}")
        self.folded = folded

    @torch.inference_mode()
    def __call__(
        self, images: Sequence[np.ndarray], sources: Sequence[str | None], keep_images: bool = True
    ) -> list[Detections]:
        """Detections of ``images``, in order.

        Images whose letterboxed shapes differ run as separate sub-batches, so a batched
        prediction equals the one-by-one predictions.

        Args:
            images: B (H, W, 3) uint8 BGR arrays.
            sources: B names stored as ``Detections.path``.
            keep_images: keep each image on its Detections (for ``plot``/``save``).
        """
        device = self.embeddings.device
        boxed, groups = letterbox_groups(images, self.imgsz, self.stride, self.auto)
        out: list[Detections | None] = [None] * len(images)
        # Only when a module is in training mode (``eval()``/``train()`` walk every submodule through
        # __setattr__, ~7 ms for v2-s); never for the folded copy (always in eval mode). Each
        # module's own mode is restored afterwards.
        modules = [] if self.folded is not None else list(self.model.modules())
        modes = [m.training for m in modules]
        if any(modes):
            self.model.eval()
        try:
            for idx in groups:
                x = to_tensor([boxed[i][0] for i in idx]).to(device)  # (b, 3, H, W)
                with autocast(device, self.dtype):
                    if self.folded is not None:
                        raw = self.folded(x.contiguous(memory_format=_layout(device)))
                    else:
                        raw = self.forward(x, self.embeddings)
                for i, result in zip(idx, self.model.postprocess(raw, self.nms)):
                    info = boxed[i][1]
                    out[i] = Detections(
                        boxes=unletterbox_boxes(result.boxes.cpu(), info),
                        scores=result.scores.cpu(),
                        labels=result.labels.cpu(),
                        names=list(self.names),
                        image_size=info.orig_shape,
                        path=sources[i],
                        image=images[i] if keep_images else None,
                    )
        finally:
            if any(modes):
                for m, mode in zip(modules, modes):
                    m.training = mode
        return out  # type: ignore[return-value]
