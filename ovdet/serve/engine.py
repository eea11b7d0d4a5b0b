"""The server's model side: one worker thread owns the network and runs micro-batches.

Requests (:class:`Job`) wait in a bounded queue. The worker takes the oldest one and, for up to
``batch_window_ms`` after it arrived, gathers others with the same key (vocabulary, image size,
thresholds) into one forward pass of at most ``max_batch`` images; jobs with other keys wait for
the next round in arrival order. Vocabularies' embeddings and folded network copies are kept in
least-recently-used caches (:class:`VocabularyStore`), so clients with different classes do not
re-encode or re-fold on every call. Nothing here knows about HTTP.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from ovdet.config import NMSConfig, PredictConfig, ServeConfig
from ovdet.inference.predict import FoldedCache, Predictor
from ovdet.models.detector import OVDetector
from ovdet.structures import Detections
from ovdet.text.vocabulary import select_embeddings

log = logging.getLogger("ovdet.serve")

__all__ = ["BatchEngine", "Job", "JobResult", "QueueFull", "ServableDetector", "VocabularyError", "VocabularyStore"]


class ServableDetector(Protocol):
    """What the server needs of a detector (:class:`ovdet.Detector` is one)."""

    model: OVDetector
    device: torch.device

    @property
    def names(self) -> list[str]: ...

    @property
    def class_embeddings(self) -> torch.Tensor | None: ...

    def encode(self, names: Sequence[str]) -> torch.Tensor: ...


class VocabularyError(ValueError):
    """A vocabulary the model cannot use (its embeddings have the wrong width)."""


class QueueFull(Exception):
    """The queue holds ``queue_size`` requests already; ``retry_after`` is a guess in seconds."""

    def __init__(self, size: int, retry_after: int) -> None:
        super().__init__(f"the server is busy: {size} requests are queued (serve.queue_size); retry later")
        self.retry_after = retry_after


@dataclass
class JobResult:
    """What one request gets back.

    Attributes:
        detections: one per image, in request order (no images kept).
        queue_ms: from submission to the start of its batch.
        inference_ms: the batch's time in the worker (vocabulary lookup, forward, NMS).
        batch_requests: requests that shared the forward pass (this one included).
        batch_images: images in that batch.
    """

    detections: list[Detections]
    queue_ms: float
    inference_ms: float
    batch_requests: int
    batch_images: int


@dataclass(eq=False)
class Job:
    """One request's images and what to find in them.

    Attributes:
        images: B (H, W, 3) uint8 BGR arrays; emptied once the job has run or is cancelled.
        sources: B names, kept as ``Detections.path``.
        names: the vocabulary (validated).
        options: thresholds and letterbox size, built once from the request (its ``batch`` and
            ``precision`` are the server's: requests share micro-batches and one precision).
    """

    images: list[np.ndarray]
    sources: list[str]
    names: tuple[str, ...]
    options: PredictConfig
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple:
        """Jobs with equal keys can share a forward pass."""
        return (self.names, self.options)


class VocabularyStore:
    """Embeddings and folded networks of recently used vocabularies (LRU), for one detector.

    The detector's vocabulary when the store is made (``--classes`` at start, or the
    checkpoint's) is the default: a vocabulary made only of its names takes their rows as they
    are (precomputed or prompt-tuned ones included, no encoder needed); any other is encoded
    through ``detector.encode`` (the on-disk embedding cache, then the text encoder), as
    :func:`~ovdet.text.vocabulary.select_embeddings` says.

    Only the worker thread calls it.
    """

    def __init__(self, detector: ServableDetector, size: int, folded_size: int) -> None:
        self.detector, self.size, self.folded_size = detector, size, folded_size
        self.default_names = detector.names  # the server's default vocabulary, as it was at start
        self.default_embeddings = detector.class_embeddings
        self._embeddings: collections.OrderedDict[tuple[str, ...], torch.Tensor] = collections.OrderedDict()
        self._folded: collections.OrderedDict[tuple[str, ...], FoldedCache] = collections.OrderedDict()
        self.hits = self.misses = 0
        self.encode_ms = 0.0

    def embeddings(self, names: tuple[str, ...]) -> torch.Tensor:
        """(K, D) float32 embeddings on the detector's device.

        Raises:
            TextEncoderUnavailable: the names need the encoder and it cannot be built.
            VocabularyError: the encoder's width does not match the model's.
        """
        emb = self._embeddings.get(names)
        if emb is not None:
            self.hits += 1
            self._embeddings.move_to_end(names)
            return emb
        self.misses += 1
        start = time.perf_counter()
        emb = select_embeddings(names, self.detector.encode, self.default_names, self.default_embeddings)
        dim = self.detector.model.cfg.embed_dim
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise VocabularyError(f"the text encoder gives {tuple(emb.shape)} embeddings; the model reads {dim}-d ones")
        emb = emb.to(self.detector.device, torch.float32)
        self.encode_ms += (time.perf_counter() - start) * 1e3
        self._embeddings[names] = emb
        while len(self._embeddings) > self.size:
            evicted, _ = self._embeddings.popitem(last=False)
            self._folded.pop(evicted, None)
        return emb

    def folded(self, names: tuple[str, ...], embeddings: torch.Tensor):
        """The network with ``embeddings`` folded in (:class:`~ovdet.inference.predict.FoldedCache`:
        rebuilt if the model's weights changed since)."""
        cache = self._folded.get(names)
        if cache is None:
            cache = self._folded[names] = FoldedCache()
            while len(self._folded) > self.folded_size:
                self._folded.popitem(last=False)
        else:
            self._folded.move_to_end(names)
        return cache.get(self.detector.model, embeddings)

    def __len__(self) -> int:
        return len(self._embeddings)


_STOP = object()


class BatchEngine:
    """A worker thread that runs submitted :class:`Job` s in micro-batches.

    Args:
        detector: the model (only the worker thread touches it once started).
        cfg: ``batch_window_ms``, ``max_batch``, ``queue_size``, ``vocab_cache``, ``folded_cache``.
        dtype: autocast dtype (None: float32).
    """

    def __init__(self, detector: ServableDetector, cfg: ServeConfig, dtype: torch.dtype | None = None) -> None:
        self.detector, self.cfg, self.dtype = detector, cfg, dtype
        self.vocab = VocabularyStore(detector, cfg.vocab_cache, cfg.folded_cache)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: collections.deque[Job] = collections.deque()  # taken from the queue, other keys
        self._lock = threading.Lock()
        self._inflight = 0  # submitted and not finished
        self._thread: threading.Thread | None = None
        self.started = time.time()
        self.counts = collections.Counter()  # requests, images, batches, batch_images, rejected, cancelled, errors
        self._batch_s = collections.deque(maxlen=50)  # recent batch times, for Retry-After

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> BatchEngine:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ovdet-serve-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Let the worker finish what it runs, fail what still waits, and end the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
        self._fail_waiting(RuntimeError("the server is shutting down"))

    def warmup(self, imgsz: int = 640) -> None:
        """Encode and fold the detector's own vocabulary and run one forward pass, so the first
        request does not pay for it. Call before :meth:`start` (the worker owns the model after)."""
        if self._thread is not None:
            raise RuntimeError("warmup() must run before start()")
        names = tuple(self.vocab.default_names)
        if not names:
            return
        emb = self.vocab.embeddings(names)
        predictor = Predictor(
            self.detector.model, names, emb, NMSConfig(), imgsz, self.dtype, folded=self.vocab.folded(names, emb)
        )
        predictor([np.full((imgsz, imgsz, 3), 114, np.uint8)], ["warmup"], keep_images=False)

    # ------------------------------------------------------------------ submission
    @property
    def inflight(self) -> int:
        """Requests waiting or running."""
        return self._inflight

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the queue's expected drain time, at least 1."""
        per_batch = sum(self._batch_s) / len(self._batch_s) if self._batch_s else 1.0
        return max(1, math.ceil(per_batch * self._inflight / max(1, self.cfg.max_batch)))

    def check_capacity(self) -> None:
        """Raise :class:`QueueFull` when a new request would be refused (to fail before reading it)."""
        if self._inflight >= self.cfg.queue_size:
            with self._lock:
                self.counts["rejected"] += 1
            raise QueueFull(self.cfg.queue_size, self.retry_after())

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue ``job``; its future gives a :class:`JobResult` or raises the worker's error.

        Raises:
            QueueFull: ``queue_size`` requests are waiting or running.
            RuntimeError: the worker is not running.
        """
        if self._thread is None:
            raise RuntimeError("the batch engine is not running (call start())")
        with self._lock:
            if self._inflight >= self.cfg.queue_size:
                self.counts["rejected"] += 1
                raise QueueFull(self.cfg.queue_size, self.retry_after())
            self._inflight += 1
            self.counts["requests"] += 1
            self.counts["images"] += len(job.images)
        job.future.add_done_callback(self._done)
        self._queue.put(job)
        return job.future

    def cancel(self, job: Job) -> bool:
        """Cancel ``job`` if it has not started, dropping its images at once (the queue keeps the
        job itself until the worker reaches and skips it); False when it already runs."""
        if not job.future.cancel():
            return False
        self._drop_images([job])
        return True

    def _done(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._inflight -= 1
            if future.cancelled():
                self.counts["cancelled"] += 1

    def stats(self) -> dict[str, float | int]:
        """Counters since start: requests, images, batches, mean batch size (requests and images per
        forward pass), rejected (503), cancelled (timed out before running), errors, queue depth,
        vocabulary cache hits/misses."""
        c = self.counts
        batches = max(1, c["batches"])
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "requests": c["requests"],
            "images": c["images"],
            "batches": c["batches"],
            "mean_batch_requests": round(c["batch_requests"] / batches, 3),
            "mean_batch_images": round(c["batch_images"] / batches, 3),
            "rejected": c["rejected"],
            "cancelled": c["cancelled"],
            "errors": c["errors"],
            "inflight": self._inflight,
            "vocabularies_cached": len(self.vocab),
            "vocab_cache_hits": self.vocab.hits,
            "vocab_cache_misses": self.vocab.misses,
            "encode_ms_total": round(self.vocab.encode_ms, 1),
        }

    # ------------------------------------------------------------------ the worker
    def _next(self, timeout: float | None) -> Job | object | None:
        try:
            return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` and the jobs that can share its forward pass; True when a stop arrived."""
        batch, n = [first], len(first.images)
        deadline = first.submitted + self.cfg.batch_window_ms / 1e3
        for job in list(self._pending):  # waiting jobs with the same key, oldest first
            if n >= self.cfg.max_batch:
                break
            if job.key == first.key and n + len(job.images) <= self.cfg.max_batch:
                self._pending.remove(job)
                batch.append(job)
                n += len(job.images)
        while n < self.cfg.max_batch:
            item = self._next(max(0.0, deadline - time.perf_counter()))
            if item is None:
                break
            if item is _STOP:
                return batch, True
            assert isinstance(item, Job)
            if item.key == first.key and n + len(item.images) <= self.cfg.max_batch:
                batch.append(item)
                n += len(item.images)
            else:
                self._pending.append(item)
        return batch, False

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._pending.popleft() if self._pending else self._next(None)
            if first is _STOP:
                break
            assert isinstance(first, Job)
            batch = [first]
            try:
                batch, stopping = self._gather(first)
            except Exception as e:  # noqa: BLE001 - never let the worker die: fail this batch, go on
                log.exception("gathering a batch failed")
                for j in batch:
                    if j.future.set_running_or_notify_cancel():
                        j.future.set_exception(e)
                continue
            self._run([j for j in batch if j.future.set_running_or_notify_cancel()])

    def _run(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        start = time.perf_counter()
        try:
            head = jobs[0]
            emb = self.vocab.embeddings(head.names)
            folded = self.vocab.folded(head.names, emb)
            options = head.options
            predictor = Predictor(
                self.detector.model, head.names, emb, options.nms, options.imgsz, self.dtype, folded=folded
            )
            sizes = [len(j.images) for j in jobs]
            sources = [s for j in jobs for s in j.sources]
            detections = predictor([im for j in jobs for im in j.images], sources, keep_images=False)
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error (and logs it); the worker lives on
            self._drop_images(jobs)
            with self._lock:
                self.counts["errors"] += len(jobs)
            for j in jobs:
                j.future.set_exception(e)
            return
        self._drop_images(jobs)
        elapsed = time.perf_counter() - start
        self._batch_s.append(elapsed)
        with self._lock:
            self.counts["batches"] += 1
            self.counts["batch_requests"] += len(jobs)
            self.counts["batch_images"] += sum(sizes)
        i = 0
        for j, n in zip(jobs, sizes):
            own = detections[i : i + n]
            i += n
            j.future.set_result(JobResult(own, (start - j.submitted) * 1e3, elapsed * 1e3, len(jobs), sum(sizes)))

    @staticmethod
    def _drop_images(jobs: list[Job]) -> None:
        """Let go of the jobs' arrays before their requests are told (the server's memory budget
        counts them until then), rather than when the worker's locals are next rebound."""
        for j in jobs:
            j.images = []

    def _fail_waiting(self, error: Exception) -> None:
        waiting = list(self._pending)
        self._pending.clear()
        while True:
            item = self._next(0)
            if item is None:
                break
            if isinstance(item, Job):
                waiting.append(item)
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)
