"""Training/validation samples and batches: decode → augment → per-image texts → collate.

:class:`DetectionDataset` turns the records of a :class:`~ovdet.data.records.Dataset` into
fixed-size samples. Every random choice of item ``i`` in epoch ``e`` comes from a generator
seeded by ``(seed, e, i)``, so a sample does not depend on worker count, batch order or process.
An image that cannot be read never stops an epoch: it is replaced by another (deterministically
chosen) image, and the sample carries the skipped paths and why, so the main process counts them
and adds the file and its reason to the dataset's report (``data.report``, what ``ovdet
check-data`` prints) even when workers produced it (:class:`DetectionLoader` does that). What the
native decoder prints while decoding an image that it still decodes (libjpeg's "Corrupt JPEG
data ...") reaches the report the same way; nothing is printed from here.
"""

from __future__ import annotations

import copy
import ctypes
import itertools
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler, get_worker_info

from ovdet.config import AugmentConfig, check_imgsz
from ovdet.data.batch import Batch, PooledCollate, collate
from ovdet.data.images import ImageReadError, decode_image
from ovdet.data.letterbox import LetterboxInfo
from ovdet.data.records import Dataset
from ovdet.data.sampling import sample_texts
from ovdet.data.transforms import (
    Sample,
    TrainAugment,
    letterbox_sample,
    mosaic_layout,
    swap_left_right,
)

__all__ = ["DetectionDataset", "DetectionLoader", "EpochBatchSampler", "EpochSampler", "build_loader"]

#: Replacement images tried for one unreadable image before giving up on the whole dataset.
MAX_REPLACEMENTS = 100


class DetectionDataset(torch.utils.data.Dataset):
    """Augmented, text-sampled samples over a dataset's records.

    Args:
        data: records and vocabulary (``data.names``: negatives are drawn from these).
        imgsz: output side s; every image is s × s.
        train: True: mosaic/affine/HSV/flip per ``augment``; False: letterbox only
            (``letterbox(image, imgsz, auto=False)``, as at inference).
        augment: augmentation settings (training only); default :class:`AugmentConfig`.
        max_texts: texts per image T (positives + negatives + padding).
        seed: seed of every random choice.
        cache: ``"ram"`` keeps decoded (training: already resized) images in memory, per process;
            call :meth:`fill_cache` before building a loader so forked workers share it.
        buffer_mb: without a cache, each process (each persistent loader worker) keeps up to this
            many MiB of the images it decoded last (least recently used dropped first), so a
            small dataset, or mosaic partners drawn again, is decoded once per worker rather
            than every time; samples are the same with or without it. 0 turns it off.
            (ultralytics' loader buffers up to 1000 decoded images per worker.)
        pad_text: text of the padding slots.
        extra_negatives: more texts negatives may be drawn from besides ``data.names`` (e.g. a
            general vocabulary, to keep the open vocabulary while fine-tuning); never positives.

    Attributes:
        skipped: images replaced because they could not be read (each occurrence counts); each
            image's reason is added once to ``data.report`` (:meth:`report_problems`).
        dropped: boxes dropped because their image had more than ``max_texts`` distinct texts.
        epoch: the current epoch (see :meth:`set_epoch`).
    """

    def __init__(
        self,
        data: Dataset,
        imgsz: int = 640,
        train: bool = True,
        augment: AugmentConfig | None = None,
        max_texts: int = 80,
        seed: int = 0,
        cache: Literal["ram"] | None = None,
        pad_text: str = "",
        extra_negatives: Sequence[str] = (),
        buffer_mb: float = 256.0,
    ) -> None:
        check_imgsz(imgsz, square=True)
        if cache not in (None, "ram"):
            raise ValueError(f"cache must be None or 'ram', got {cache!r}")
        if not buffer_mb >= 0:
            raise ValueError(f"buffer_mb must be >= 0, got {buffer_mb!r}")
        if not data.records:
            raise ValueError("the dataset has no records; check the reader's report (ovdet check-data)")
        self.data = data
        self.records = data.records
        self.names = list(data.names)
        self.imgsz = imgsz
        self.train = train
        self.augment = augment if augment is not None else AugmentConfig()
        self.max_texts = max_texts
        self.seed = seed
        self.pad_text = pad_text
        # negatives come from the dataset's names, then the extra texts (labels index the former)
        self.negative_pool = self.names + [t for t in dict.fromkeys(extra_negatives) if t not in set(self.names)]
        self.epoch = 0
        self.total_epochs: int | None = None
        self.skipped = 0
        self.dropped = 0
        self._cache: dict[int, tuple[np.ndarray, tuple[int, int]]] | None = {} if cache == "ram" else None
        self._buffer: OrderedDict[int, tuple[np.ndarray, tuple[int, int]]] = OrderedDict()  # LRU, per process
        self._buffer_limit = 0 if cache == "ram" else int(buffer_mb * 2**20)
        self._buffer_bytes = 0
        self._bad: dict[int, str] = {}  # index → reason, learnt per process
        self._noted: set[int] = set()  # indices whose decoder warnings were noted, per process
        self._pending: list[tuple[str, str]] = []  # (path, reason) met here, not yet in a sample
        self._reported: set[tuple[str, str]] = set()  # what report_problems added to data.report
        self._name_to_index = {n: i for i, n in reversed(list(enumerate(self.names)))}
        self._cat_to_index = {int(c): i for i, c in enumerate(data.category_ids)}
        self._train_transform = TrainAugment(imgsz, self.augment, self.names) if train else None

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int, total_epochs: int | None = None) -> None:
        """Select the epoch: it seeds the augmentation, and mosaic is off for the last
        ``augment.close_mosaic`` of ``total_epochs`` epochs."""
        self.epoch = int(epoch)
        self.total_epochs = total_epochs

    @property
    def mosaic_enabled(self) -> bool:
        """Whether mosaic can be drawn in the current epoch."""
        return self._mosaic_on(self.epoch, self.total_epochs)

    def _mosaic_on(self, epoch: int, total_epochs: int | None) -> bool:
        if not self.train or self.augment.mosaic <= 0:
            return False
        return total_epochs is None or epoch < total_epochs - self.augment.close_mosaic

    def fill_cache(self) -> int:
        """Decode every readable image into the RAM cache (``cache="ram"`` only).

        Returns:
            The number of images cached.
        """
        if self._cache is None:
            raise ValueError("fill_cache needs DetectionDataset(..., cache='ram')")
        for i in range(len(self)):
            if i not in self._cache and i not in self._bad:
                try:
                    self._load(i)
                except (ImageReadError, OSError) as e:
                    self._mark_bad(i, e)
        self.report_problems(self._take_pending())
        return len(self._cache)

    def report_problems(self, problems: Sequence[tuple[str, str]]) -> None:
        """Add (path, reason) pairs met while loading to ``data.report``, each pair once.

        Samples made in this process are reported by :meth:`__getitem__`; a
        :class:`DetectionLoader` calls this with the problems of its workers' batches.
        """
        for path, reason in problems:
            if (path, reason) not in self._reported:
                self._reported.add((path, reason))
                self.data.report.problem(path, reason)

    def _take_pending(self) -> list[tuple[str, str]]:
        pending, self._pending = self._pending, []
        return pending

    # ---------------------------------------------------------------------------------------
    # Loading
    # ---------------------------------------------------------------------------------------

    def _load(self, i: int) -> tuple[Sample, tuple[int, int]]:
        """Decode record ``i`` (training: resized to longest side imgsz); raises if unreadable.

        Returns:
            The sample and the original ``(height, width)``.
        """
        if self._cache is not None and i in self._cache:
            image, orig = self._cache[i]
        elif i in self._buffer:
            self._buffer.move_to_end(i)
            image, orig = self._buffer[i]
        else:
            notes: list[str] = []
            image = decode_image(self.records[i].path, notes=notes)
            if notes and i not in self._noted:
                self._noted.add(i)
                self._pending.append((str(self.records[i].path), f"the decoder warned ({'; '.join(notes[:3])}): kept"))
            orig = image.shape[:2]
            if self.train:  # resize once here so the cache holds what augmentation starts from
                h, w = orig
                r = self.imgsz / max(h, w)
                if r != 1:
                    image = cv2.resize(
                        image, (max(round(w * r), 1), max(round(h * r), 1)), interpolation=cv2.INTER_LINEAR
                    )
            if self._cache is not None:
                self._cache[i] = (image, orig)
            elif image.nbytes <= self._buffer_limit:
                self._buffer[i] = (image, orig)
                self._buffer_bytes += image.nbytes
                while self._buffer_bytes > self._buffer_limit:
                    self._buffer_bytes -= self._buffer.popitem(last=False)[1][0].nbytes
        return Sample.from_record(self.records[i], image, i, orig_size=orig), orig

    def _mark_bad(self, i: int, error: Exception) -> None:
        if i not in self._bad:
            path = str(self.records[i].path)
            self._bad[i] = str(error)
            reason = str(error).removeprefix(f"{path}: ")
            self._pending.append((path, f"{reason}: replaced by another image during training"))

    def _try_load(self, i: int, skipped: list[str]) -> tuple[Sample, tuple[int, int]] | None:
        """Load record ``i``, or note it in ``skipped`` and return None when unreadable."""
        if i not in self._bad:
            try:
                return self._load(i)
            except (ImageReadError, OSError) as e:  # FileNotFoundError is an OSError
                self._mark_bad(i, e)
        skipped.append(str(self.records[i].path))
        return None

    def _load_replacing(
        self, i: int, rng: np.random.Generator, skipped: list[str]
    ) -> tuple[int, Sample, tuple[int, int]]:
        """Load record ``i``, replacing it with random other records while unreadable."""
        for _ in range(MAX_REPLACEMENTS + 1):
            loaded = self._try_load(i, skipped)
            if loaded is not None:
                return i, loaded[0], loaded[1]
            i = int(rng.integers(len(self)))
        raise RuntimeError(
            f"{len(skipped)} images in a row could not be read (last: {skipped[-1]}); "
            f"{len(self._bad)} of {len(self)} known unreadable: "
            f"check the dataset with `ovdet check-data`"
        )

    # ---------------------------------------------------------------------------------------
    # Items
    # ---------------------------------------------------------------------------------------

    def __getitem__(self, index: int | tuple[int, int, int | None]) -> dict[str, Any]:
        """One sample.

        Args:
            index: a record index (the epoch set by :meth:`set_epoch` applies), or
                ``(index, epoch, total_epochs)`` as :class:`EpochSampler` yields them, so
                persistent worker processes need no state from the main process.

        Returns:
            dict with ``image`` (3, s, s) uint8 RGB tensor; ``boxes`` (N, 4) float32 xyxy pixels,
            0 <= x1 < x2 <= s (same for y); ``labels`` (N,) int64 index into ``texts``;
            ``ignore`` (N,) bool (crowd regions, same geometry); ``texts`` T strings;
            ``text_mask`` (T,) bool (False = padding); ``path`` of the image used;
            ``orig_size`` (h, w) of that image; ``index`` of the record used; ``sources`` the
            records the image was built from (``index`` first; 4 for a mosaic); ``mosaic`` /
            ``flipped`` flags; ``skipped`` paths replaced while making it; ``problems`` (path,
            reason) first met by this process while making it; ``dropped`` boxes
            over ``max_texts``; ``box_source`` (N, 2) int64 (record index, box index in the
            record) of each box; ``letterbox`` (validation: its LetterboxInfo, else None).
        """
        epoch, total = self.epoch, self.total_epochs
        if isinstance(index, tuple):
            index, epoch, total = index
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        skipped: list[str] = []
        index, main, orig = self._load_replacing(int(index), rng, skipped)
        used = [index]
        info: LetterboxInfo | None = None
        use_mosaic = bool(rng.random() < self.augment.mosaic) and self._mosaic_on(epoch, total)
        flipped = False
        if not self.train:
            sample, info = letterbox_sample(main, self.imgsz, scaleup=True)
        elif use_mosaic:
            parts = [main]
            for _ in range(3):
                j, part, _ = self._load_replacing(int(rng.integers(len(self))), rng, skipped)
                used.append(j)
                parts.append(part)
            layout = mosaic_layout(parts, self.imgsz, rng, self.augment)
            sample, flipped = self._train_transform(layout, int(rng.integers(2**31)))
        else:
            sample, flipped = self._train_transform(main, int(rng.integers(2**31)))

        texts, per_box, mask = sample_texts(
            sample.texts,
            sample.labels,
            self.negative_pool,
            self.max_texts,
            rng,
            neg_exclude=self._excluded_negatives(used, sample, flipped),
            neg_prefer=self._preferred_negatives(used),
            pad_text=self.pad_text,
        )
        dropped = int((per_box < 0).sum())
        sample = sample.take(per_box >= 0)
        per_box = per_box[per_box >= 0]
        problems = self._take_pending()
        if get_worker_info() is None:  # in a worker these copies die with it; DetectionLoader counts
            self.skipped += len(skipped)
            self.dropped += dropped
            self.report_problems(problems)

        image = np.empty((3, *sample.image.shape[:2]), dtype=np.uint8)  # (3, s, s) RGB planes
        cv2.split(sample.image, [image[2], image[1], image[0]])  # BGR → RGB planes, one pass
        return {
            "image": torch.from_numpy(image),
            "boxes": torch.from_numpy(sample.boxes.astype(np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(per_box.astype(np.int64)),
            "ignore": torch.from_numpy(sample.ignore.astype(bool)),
            "texts": texts,
            "text_mask": torch.from_numpy(mask),
            "path": str(self.records[index].path),
            "orig_size": (int(orig[0]), int(orig[1])),
            "index": index,
            "sources": used,
            "mosaic": use_mosaic,
            "flipped": flipped,
            "skipped": skipped,
            "problems": problems,
            "dropped": dropped,
            "box_source": torch.from_numpy(sample.source.astype(np.int64).reshape(-1, 2)),
            "letterbox": info,
        }

    def _excluded_negatives(self, used: Sequence[int], sample: Sample, flipped: bool) -> set[int]:
        """Vocabulary indices that must not be negatives for an image built from ``used``.

        LVIS not-exhaustive categories of any contributing image, and the texts of boxes that
        augmentation cut away: those objects may still be partly visible.
        """
        exclude: set[int] = set()
        kept = {(int(r), int(b)) for r, b in sample.source}
        for r in used:
            record = self.records[r]
            exclude.update(self._cat_to_index[c] for c in record.not_exhaustive_category_ids if c in self._cat_to_index)
            for b, (text, label) in enumerate(zip(record.texts, record.labels)):
                if (r, b) in kept:
                    continue
                for t in (text, swap_left_right(text)) if flipped else (text,):
                    idx = self._name_to_index.get(t)
                    if idx is not None:
                        exclude.add(idx)
                if label >= 0:
                    exclude.add(int(label))
        return exclude

    def _preferred_negatives(self, used: Sequence[int]) -> list[int]:
        """Vocabulary indices verified absent from every contributing image (LVIS)."""
        common: set[int] | None = None
        for r in dict.fromkeys(used):
            ids = set(self.records[r].neg_category_ids)
            common = ids if common is None else common & ids
        return sorted(self._cat_to_index[c] for c in (common or ()) if c in self._cat_to_index)


class EpochSampler(Sampler):
    """Yields ``(index, epoch, total_epochs)``: the epoch travels with each index.

    Persistent worker processes keep their own copy of the dataset; passing the epoch with the
    index (rather than setting it on the dataset) makes every sample a pure function of
    (seed, epoch, index), whichever process builds it.
    """

    def __init__(self, order: DistributedSampler) -> None:
        self.order = order
        self.epoch, self.total_epochs = 0, None

    def set_epoch(self, epoch: int, total_epochs: int | None = None) -> None:
        self.epoch, self.total_epochs = int(epoch), total_epochs
        self.order.set_epoch(epoch)

    def keys(self, epoch: int, total_epochs: int | None) -> list[tuple[int, int, int | None]]:
        """The ``(index, epoch, total_epochs)`` of any epoch (the selected one stays selected)."""
        order = copy.copy(self.order)
        order.set_epoch(epoch)
        return [(int(i), epoch, total_epochs) for i in order]

    def __iter__(self) -> Iterator[tuple[int, int, int | None]]:
        return iter(self.keys(self.epoch, self.total_epochs))

    def __len__(self) -> int:
        return len(self.order)


class EpochBatchSampler(Sampler):
    """Batches of :class:`EpochSampler`'s ``(index, epoch, total_epochs)``, epoch after epoch.

    Iteration starts at the selected epoch and does not stop at its end: the next epoch's
    batches follow (each batch within one epoch; the last one partial unless ``drop_last``), so
    loader workers prepare the first batches of epoch e + 1 while epoch e's last ones are used,
    as ultralytics' ``InfiniteDataLoader`` does. ``len`` is the batches of one epoch;
    :class:`DetectionLoader` takes that many per pass.
    """

    def __init__(self, sampler: EpochSampler, batch_size: int, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int, total_epochs: int | None = None) -> None:
        self.sampler.set_epoch(epoch, total_epochs)

    def __iter__(self) -> Iterator[list[tuple[int, int, int | None]]]:
        start, total = self.sampler.epoch, self.sampler.total_epochs
        for epoch in itertools.count(start):
            keys = self.sampler.keys(epoch, total)
            for k in range(0, len(keys), self.batch_size):
                batch = keys[k : k + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class DetectionLoader(DataLoader):
    """A DataLoader over a :class:`DetectionDataset` that keeps the dataset's counters right.

    Worker processes count skipped images and dropped boxes in their own copies of the dataset;
    this loader adds each batch's counts, and its problems (to ``data.report``), to the main
    process's dataset instead. Workers persist across epochs; the epoch reaches them with each
    index (:class:`EpochSampler`). One pass yields the selected epoch. When the next pass is the
    next epoch (``set_epoch(e + 1)`` with the same ``total_epochs``, as a training loop does) it
    continues the batch stream, whose first batches the workers have already made
    (:class:`EpochBatchSampler`); any other epoch, or a pass left before its end, starts the
    stream afresh at the selected epoch.
    """

    _stream: Iterator[Batch] | None = None
    _stream_next: tuple[int, int | None] | None = None  # the epoch the stream is at the start of

    def set_epoch(self, epoch: int, total_epochs: int | None = None) -> None:
        """Select the epoch for the shuffle order and the dataset (augmentation, close_mosaic)."""
        self.batch_sampler.set_epoch(epoch, total_epochs)
        self.dataset.set_epoch(epoch, total_epochs)

    def __iter__(self) -> Iterator[Batch]:
        epochs = self.batch_sampler.sampler
        here = (epochs.epoch, epochs.total_epochs)
        if self._stream is None or self._stream_next != here:
            self._stream = super().__iter__()  # persistent workers: drops what they made ahead
        self._stream_next = None  # until this pass has taken its last batch
        for k in range(len(self)):
            batch = next(self._stream)
            if self.num_workers > 0:
                self.dataset.skipped += len(batch.skipped)
                self.dataset.dropped += batch.dropped
                self.dataset.report_problems(batch.problems)
            if k == len(self) - 1:
                self._stream_next = (here[0] + 1, here[1])
            yield batch


def _worker_init(_: int) -> None:
    # Each worker is one process per core already; OpenCV's own thread pool would oversubscribe.
    cv2.setNumThreads(0)
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """In a loader worker (a process of ours): glibc serves blocks up to 32 MiB from its heap
    and keeps up to 256 MiB of freed heap instead of returning it to the system at once.

    A worker allocates and frees image-sized (~1.2 MB at 640) blocks all the time; by default
    glibc maps most of them fresh and unmaps them when freed, so every image pays page faults
    again (3.7 vs 3.2 ms per mosaic sample at 640, one core). No-op where glibc is absent.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def build_loader(
    dataset: DetectionDataset,
    batch_size: int,
    workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    distributed: bool = False,
    pin_memory: bool | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
    drop_last: bool = False,
) -> DetectionLoader:
    """A batch loader with an epoch-seeded order, sharded across ranks when distributed.

    The order always comes from a ``DistributedSampler`` seeded by ``seed`` + epoch (one
    replica when not distributed), so a resumed run sees the same order. With
    ``distributed=True`` or an initialised process group, each rank gets a disjoint 1/world
    share of the indices (padded by repetition to equal length unless ``drop_last``).

    Args:
        dataset: the samples.
        batch_size: images per batch on this process.
        workers: DataLoader worker processes (0: load in this process).
        shuffle: shuffle the order every epoch.
        seed: seed of the order.
        distributed: shard across ranks; ``num_replicas``/``rank`` default to the process group's.
        pin_memory: pin batches for faster host-to-GPU copies; default: when CUDA is available.
        num_replicas: number of ranks (explicit, e.g. without a process group).
        rank: this process's rank.
        drop_last: drop the last incomplete batch (and, distributed, the uneven tail).

    Returns:
        A :class:`DetectionLoader`; call ``loader.set_epoch(epoch, total_epochs)`` before each epoch.
    """
    initialized = dist.is_available() and dist.is_initialized()
    if distributed and not initialized and (num_replicas is None or rank is None):
        raise ValueError(
            "distributed=True without a process group needs num_replicas and rank "
            "(or call torch.distributed.init_process_group first, e.g. under torchrun)"
        )
    if distributed or initialized:
        order = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    else:
        order = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed)
    return DetectionLoader(
        dataset,
        batch_sampler=EpochBatchSampler(EpochSampler(order), batch_size, drop_last=drop_last),
        num_workers=workers,
        collate_fn=PooledCollate(workers) if workers > 0 else collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=_worker_init,
        persistent_workers=workers > 0,
        # Its own generator: starting a pass (or not, when the stream continues) never draws
        # from torch's global RNG, which a resumed run restores exactly.
        generator=torch.Generator().manual_seed(seed),
    )
