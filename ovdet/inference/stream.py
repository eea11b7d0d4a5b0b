"""Prediction streams without a network: sources → batches of decoded images → Detections.

:class:`PredictionStream` feeds any :class:`BatchPredictor` (the PyTorch
:class:`~ovdet.inference.predict.Predictor`, the exported
:class:`~ovdet.deploy.runtime.OnnxPredictor`) from any source, batch by batch, and keeps going
past items that cannot be read; :func:`collect` runs one to the end; :func:`letterbox_groups`
batches images by letterboxed shape. Nothing here imports PyTorch: the deployment runtime runs
these where it is not installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from ovdet.config import PredictConfig
from ovdet.data.images import ImageReadError, SourceItem, iter_sources
from ovdet.data.letterbox import LetterboxInfo, letterbox
from ovdet.structures import Detections

__all__ = ["BatchPredictor", "PredictionStream", "collect", "letterbox_groups", "predict_source"]


class BatchPredictor(Protocol):
    """Anything that turns a batch of decoded images into Detections (:class:`Predictor`,
    :class:`ovdet.deploy.runtime.OnnxPredictor`)."""

    def __call__(
        self, images: Sequence[np.ndarray], sources: Sequence[str | None], keep_images: bool = True
    ) -> list[Detections]: ...


def letterbox_groups(
    images: Sequence[np.ndarray], imgsz: int | tuple[int, int], stride: int, auto: bool = True
) -> tuple[list[tuple[np.ndarray, LetterboxInfo]], list[list[int]]]:
    """Letterbox every image and group the indices of those that came out the same shape
    (each group is one batch through the network, so batched equals one by one).

    Returns:
        (letterboxed image and its info, per image) and the index groups, in first-seen order.
    """
    boxed = [letterbox(im, imgsz, stride=stride, auto=auto) for im in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (arr, _) in enumerate(boxed):
        groups.setdefault(arr.shape[:2], []).append(i)
    return boxed, list(groups.values())


class PredictionStream(Iterable[Detections]):
    """Lazy predictions over a source; iterating runs the model batch by batch.

    Args:
        predictor: runs each batch.
        source: anything :func:`~ovdet.data.images.iter_sources` accepts.
        batch: images per forward pass.
        keep_images: keep each original image on its Detections.
        video_stride: use every n-th video frame.
        max_pixels: largest image (width × height) decoded (see
            :func:`~ovdet.data.images.resolve_max_pixels`).

    Attributes:
        skipped: (source name, reason) of every item that could not be read, filled during
            iteration; a bad item never stops the run.
        seen: items read successfully so far.
        notes: (source name, message) of what native decoders printed (kept off the terminal).
        fps: frames per second of each video source seen, by path.
    """

    def __init__(
        self,
        predictor: BatchPredictor,
        source: Any,
        batch: int = 1,
        keep_images: bool = True,
        video_stride: int = 1,
        max_pixels: int | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.predictor, self.batch, self.keep_images = predictor, batch, keep_images
        # resolves now: a missing path raises here, not at the first next()
        self.items = iter_sources(source, video_stride=video_stride, max_pixels=max_pixels)
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[tuple[str, str]] = []
        self.fps: dict[str, float] = {}
        self.seen = 0

    def __iter__(self) -> Iterator[Detections]:
        pending: list[SourceItem] = []
        for item in self.items:
            self.notes.extend((item.name, n) for n in item.notes)
            if item.fps is not None:
                self.fps[item.name.rpartition(":frame")[0] or item.name] = item.fps
            if item.error is not None or item.image is None:
                self.skipped.append((item.name, item.error or f"{item.name}: no image"))
                continue
            pending.append(item)
            if len(pending) == self.batch:
                yield from self._run(pending)
                pending = []
        if pending:
            yield from self._run(pending)

    def _run(self, items: list[SourceItem]) -> list[Detections]:
        self.seen += len(items)
        return self.predictor([it.image for it in items], [it.name for it in items], self.keep_images)


def predict_source(
    predictor: BatchPredictor,
    source: Any,
    options: PredictConfig,
    stream: bool = False,
    keep_images: bool = True,
    video_stride: int = 1,
) -> list[Detections] | PredictionStream:
    """What ``Detector.predict`` and ``OnnxDetector.predict`` return: ``source`` through ``predictor``
    in batches of ``options.batch`` (images above ``options.max_pixels`` skipped), as a lazy
    :class:`PredictionStream` (``stream``) or a list (see :func:`collect`)."""
    run = PredictionStream(
        predictor,
        source,
        batch=options.batch,
        keep_images=keep_images,
        video_stride=video_stride,
        max_pixels=options.max_pixels,
    )
    return run if stream else collect(run, stacklevel=4)


def collect(run: PredictionStream, stacklevel: int = 3) -> list[Detections]:
    """Run a stream to the end; unreadable items are skipped with one warning naming them.

    Raises:
        ImageReadError: nothing could be read (a single bad source's own reason is the message).
    """
    results = list(run)
    if run.skipped:
        first = run.skipped[0][1]  # reasons start with the file name
        if not results:
            raise ImageReadError(
                first
                if len(run.skipped) == 1
                else f"none of the {len(run.skipped)} sources could be read; first: {first}"
            )
        warnings.warn(
            f"skipped {len(run.skipped)} unreadable source(s): "
            + "; ".join(r for _, r in run.skipped[:5])
            + (" ..." if len(run.skipped) > 5 else ""),
            stacklevel=stacklevel,
        )
    return results
