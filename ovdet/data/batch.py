"""The training batch: what the loader yields and what ``OVDetector.loss`` consumes."""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ovdet.data.letterbox import LetterboxInfo

__all__ = ["Batch", "BufferLease", "PooledCollate", "collate"]


@dataclass(frozen=True)
class BufferLease:
    """A batch's hold on a DataLoader worker's reused shared-memory segment (:class:`PooledCollate`).

    Attributes:
        flags: (workers, slots) int32 in shared memory: 1 while a segment is out.
        worker: the worker that made the batch.
        slot: its segment.
    """

    flags: torch.Tensor
    worker: int
    slot: int

    def release(self) -> None:
        """Hand the segment back to its worker (its batch's images are freed everywhere)."""
        self.flags[self.worker, self.slot] = 0


@dataclass
class Batch:
    """B images with their boxes (all images' boxes concatenated, M in total) and per-image texts.

    Attributes:
        images: (B, 3, S, S) uint8 RGB.
        boxes: (M, 4) float32 xyxy pixels of ``images``, 0 <= x1 < x2 <= S (same for y).
        labels: (M,) int64 index of each box's text in ``texts[batch_idx]``.
        batch_idx: (M,) int64 image of each box, non-decreasing.
        ignore: (M,) bool crowd / ignore regions (never positives, never negatives).
        texts: B lists of T strings: each image's positives, sampled negatives and padding.
        text_mask: (B, T) bool, False for padding texts.
        paths: B image paths (the first record of a mosaic).
        orig_sizes: B original (height, width).
        indices: B record indices (the first of a mosaic).
        sources: B lists of the record indices each image was built from (4 for a mosaic).
        mosaic: (B,) bool.
        flipped: (B,) bool, horizontally flipped (texts already left/right-swapped).
        skipped: paths replaced because they could not be read, while building this batch.
        dropped: boxes dropped because their image had more than T distinct texts.
        box_source: (M, 2) int64 (record index, box index in the record) of each box.
        letterbox: B :class:`LetterboxInfo` (validation samples) or None (training samples).
        lease: set when ``images`` lie in a worker's reused segment (:class:`PooledCollate`).
        problems: (path, reason) of images found unreadable, or decoded with decoder warnings, by
            the process that built this batch, each the first time that process met it.
    """

    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    batch_idx: torch.Tensor
    ignore: torch.Tensor
    texts: list[list[str]]
    text_mask: torch.Tensor
    paths: list[str]
    orig_sizes: list[tuple[int, int]]
    indices: list[int]
    sources: list[list[int]]
    mosaic: torch.Tensor
    flipped: torch.Tensor
    skipped: list[str]
    dropped: int
    box_source: torch.Tensor
    letterbox: list[LetterboxInfo | None]
    lease: BufferLease | None = None
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle the small tensors inline, as arrays; only ``images`` as a tensor.

        A DataLoader worker's pickler moves every CPU tensor into a shared-memory segment of
        its own and passes its file descriptor to the main process through a socket
        connection: worth it for the images, not for eight tensors of a few kilobytes each.
        """
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.lease is not None and get_worker_info() is None:
            # Sent on from the process it was sent to: a copy of its own, so the segment keeps
            # one holder (whose freeing hands it back).
            fields["images"], fields["lease"] = self.images.clone(), None
        for name, v in fields.items():
            if name != "images" and isinstance(v, torch.Tensor) and v.device.type == "cpu" and not v.requires_grad:
                fields[name] = v.numpy()
        return _unpickle_batch, (fields,)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device`` (lists are shared)."""
        moved = {
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for f in dataclasses.fields(self)
            for v in (getattr(self, f.name),)
        }
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        """Page-locked copies of the tensors (DataLoader's ``pin_memory=True`` calls this)."""
        return Batch(
            **{
                f.name: (v.pin_memory() if isinstance(v, torch.Tensor) else v)
                for f in dataclasses.fields(self)
                for v in (getattr(self, f.name),)
            }
        )

    def normalized_images(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, 3, S, S) images in [0, 1] — the network's input."""
        return self.images.to(dtype) / 255.0


def _unpickle_batch(fields: dict[str, Any]) -> Batch:
    """:meth:`Batch.__reduce__`'s inverse: arrays back to tensors (no copy)."""
    # (An array unpickled from a protocol-5 buffer is read-only: those few bytes are copied.)
    arrays = {k: v if v.flags.writeable else v.copy() for k, v in fields.items() if isinstance(v, np.ndarray)}
    batch = Batch(**{**fields, **{k: torch.from_numpy(v) for k, v in arrays.items()}})
    if batch.lease is not None:  # the segment goes back once every view of these images is gone
        weakref.finalize(batch.images.untyped_storage(), batch.lease.release)
    return batch


def _new_shared(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory, mapped in.

    Shared memory is mapped in page by page on first write; one write per page up front, in
    order, costs less than taking those faults while a batch is written into it.
    """
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    torch.empty(0, dtype=torch.uint8).set_(storage)[:: mmap.PAGESIZE].zero_()  # already zero: maps it in
    return torch.empty(0, dtype=dtype).set_(storage).view(*shape)


def _stack_shared(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)``; in a DataLoader worker, straight into new shared memory.

    A worker's batch reaches the main process through shared memory: stacking into it saves
    the copy that moving a private tensor there would make (as ``default_collate`` does).
    """
    if get_worker_info() is None:
        return torch.stack(list(tensors))
    out = _new_shared((len(tensors), *tensors[0].shape), tensors[0].dtype)
    return torch.stack(list(tensors), out=out)


def collate(items: Sequence[dict[str, Any]]) -> Batch:
    """Stack :class:`~ovdet.data.loader.DetectionDataset` items into a :class:`Batch`.

    Raises:
        ValueError: no items.
    """
    if not items:
        raise ValueError("collate got an empty batch")
    return _assemble(items, _stack_shared([b["image"] for b in items]))


def _assemble(items: Sequence[dict[str, Any]], images: torch.Tensor, lease: BufferLease | None = None) -> Batch:
    """The :class:`Batch` of ``items`` with their images already stacked ((B, 3, S, S))."""
    counts = torch.tensor([len(b["labels"]) for b in items], dtype=torch.int64)  # (B,)
    return Batch(
        images=images,  # (B, 3, S, S)
        boxes=torch.cat([b["boxes"] for b in items]).reshape(-1, 4),  # (M, 4)
        labels=torch.cat([b["labels"] for b in items]),  # (M,)
        batch_idx=torch.repeat_interleave(torch.arange(len(items), dtype=torch.int64), counts),  # (M,)
        ignore=torch.cat([b["ignore"] for b in items]),  # (M,)
        texts=[b["texts"] for b in items],
        text_mask=torch.stack([b["text_mask"] for b in items]),  # (B, T)
        paths=[b["path"] for b in items],
        orig_sizes=[b["orig_size"] for b in items],
        indices=[b["index"] for b in items],
        sources=[b["sources"] for b in items],
        mosaic=torch.tensor([b["mosaic"] for b in items], dtype=torch.bool),  # (B,)
        flipped=torch.tensor([b["flipped"] for b in items], dtype=torch.bool),  # (B,)
        skipped=[p for b in items for p in b["skipped"]],
        dropped=sum(b["dropped"] for b in items),
        box_source=torch.cat([b["box_source"] for b in items]).reshape(-1, 2),  # (M, 2)
        letterbox=[b["letterbox"] for b in items],
        lease=lease,
        problems=[p for b in items for p in b.get("problems", ())],
    )


class PooledCollate:
    """:func:`collate` whose DataLoader workers stack images into reused shared memory.

    A worker's batch reaches the main process through shared memory. A new segment per batch
    costs page faults on both sides (a 16-image 640 batch is 19.7 MB, ~4800 pages); a worker
    here keeps up to ``slots`` segments and reuses one once the main process has freed every
    tensor on the batch it last carried:

    * the flags ((workers, slots) int32, shared, made here before the workers start) say which
      segments are out; a worker takes only a segment whose flag is 0 and sets it to 1;
    * the batch carries its :class:`BufferLease`; where it is unpickled (the main process), the
      flag goes back to 0 when that batch's image storage is freed — every view of it, a NumPy
      array on it included — never before;
    * a leased batch pickled anywhere but its worker (sent on to another process) takes a
      private copy of its images and no lease, so the segment has one holder only;
    * with every segment out (a training loop that keeps batches), a worker stacks into a new
      segment, as :func:`collate` does.

    Items and batches equal :func:`collate`'s. Outside a worker this is :func:`collate`. A
    worker keeps its segments while it lives: ``slots`` batches of shared memory (4 × 19.7 MB
    for 16 images at 640), where a DataLoader holds ~3 per worker in flight anyway.

    Args:
        workers: the DataLoader's worker count.
        slots: segments per worker (its 2 prefetched batches, one in use, one being made); a
            free segment of another batch shape (an epoch's last, partial batch) is replaced.
    """

    def __init__(self, workers: int, slots: int = 4) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.flags = torch.zeros((max(workers, 1), slots), dtype=torch.int32).share_memory_()
        self._buffers: list[torch.Tensor | None] = [None] * slots  # this process's segments
        self._pid = os.getpid()

    def __call__(self, items: Sequence[dict[str, Any]]) -> Batch:
        info = get_worker_info()
        if info is None or not items or info.id >= len(self.flags):  # (more workers than it was made for)
            return collate(items)
        if self._pid != os.getpid():  # a new worker: its own segments (not its parent's)
            self._buffers, self._pid = [None] * len(self._buffers), os.getpid()
        images = [b["image"] for b in items]
        shape, dtype = (len(images), *images[0].shape), images[0].dtype
        slot = self._free_slot(self.flags[info.id], shape, dtype)
        if slot is None:  # every segment is still out
            return collate(items)
        buffer = self._buffers[slot]
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = self._buffers[slot] = _new_shared(shape, dtype)
        self.flags[info.id, slot] = 1
        return _assemble(items, torch.stack(images, out=buffer), lease=BufferLease(self.flags, info.id, slot))

    def _free_slot(self, flags: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> int | None:
        """A free slot: one whose segment fits ``shape`` first, then an empty one, then any."""
        free = [k for k, taken in enumerate(flags.tolist()) if not taken]
        fits = [k for k in free if (b := self._buffers[k]) is not None and b.shape == shape and b.dtype == dtype]
        empty = [k for k in free if self._buffers[k] is None]
        return (fits or empty or free or [None])[0]
