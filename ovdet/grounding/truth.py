"""Grounding ground truth for evaluation: per image, a caption and its phrases, each with its
ground-truth boxes.

The files are read by ovdet's dataset readers (:func:`~ovdet.data.readers.read_dataset`), which
keep a grounding caption and each box's ``tokens_positive`` spans on the record:

* **ODVG jsonl** (Grounding DINO / Open-GroundingDino ``data_format.md``), one line per image:
  ``{"filename", "height", "width", "grounding": {"caption", "regions": [{"bbox": [x1, y1, x2, y2],
  "phrase", "tokens_positive": [[start, end], ...]}]}}`` (:func:`~ovdet.data.readers.read_odvg`);
* **MDETR-style COCO json** (``final_flickr_*.json``, ``final_refcoco_*.json``): images with a
  ``caption``, annotations (``bbox`` xywh) with ``tokens_positive`` (:func:`~ovdet.data.readers.read_coco`).

:func:`grounding_set` turns those records into :class:`GroundingItem` s: the boxes of one record
that share the same span(s) are ONE phrase with several ground-truth boxes (Flickr30k Entities
lists a phrase's boxes as separate regions with one span). A phrase with several spans (a
discontinuous mention) is asked for by the caption text that covers them all
(:attr:`PhraseTruth.query_span`).

Bad input never stops a set: what the readers skip (a malformed line, a missing image, a span
outside the caption, an invalid box) is in :attr:`GroundingSet.problems` with the file it
concerns, and so is what this module skips (an entry without a caption, boxes without a span,
crowd boxes are not ground truth). Whole-file errors (no file, no valid line) raise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovdet.data.readers import read_dataset
from ovdet.data.readers.common import PathLike
from ovdet.data.records import Dataset

__all__ = ["GroundingItem", "GroundingSet", "PhraseTruth", "grounding_set", "read_grounding"]

Span = tuple[int, int]


@dataclass(frozen=True, eq=False)
class PhraseTruth:
    """One phrase of a caption and where it is in the image.

    Attributes:
        text: the phrase as the caption writes it (several spans: their texts joined by a space).
        spans: its ``(start, end)`` character spans into the caption, sorted, distinct.
        boxes: ``(G, 4)`` float32 xyxy ground-truth boxes in pixels of the image, G >= 1.
    """

    text: str
    spans: tuple[Span, ...]
    boxes: np.ndarray

    @property
    def query_span(self) -> Span:
        """The one span :func:`~ovdet.grounding.ground` is asked for: from the first span's start
        to the last span's end (the span itself for the usual one-span phrase)."""
        return (self.spans[0][0], self.spans[-1][1])


@dataclass(frozen=True, eq=False)
class GroundingItem:
    """One image with one caption (an ODVG line, an MDETR image entry).

    Attributes:
        path: the image file.
        image_id: the file's id of the entry (ODVG ``image_id`` or the filename's stem; MDETR ``id``).
        caption: the caption the spans point into.
        image_size: ``(height, width)`` in pixels, as annotated.
        phrases: the ground-truth phrases, ordered by span.
    """

    path: Path
    image_id: int | str
    caption: str
    image_size: tuple[int, int]
    phrases: tuple[PhraseTruth, ...]


@dataclass
class GroundingSet:
    """The items of a grounding file and what was left out of them.

    Attributes:
        source: what it was read from (for messages).
        items: the evaluable entries, in file order.
        entries: entries the file holds (lines / image entries, readable or not).
        skipped_boxes: ground-truth boxes of readable entries that are no phrase's (no span, crowd).
        problems: ``(file, reason)`` of everything skipped or changed: the reader's, then this module's.
    """

    source: str
    items: list[GroundingItem]
    entries: int
    skipped_boxes: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def phrases(self) -> int:
        """Ground-truth phrases over all items."""
        return sum(len(item.phrases) for item in self.items)


def read_grounding(path: PathLike, image_dir: PathLike | None = None) -> GroundingSet:
    """Read grounding ground truth: an ODVG ``.jsonl`` or an MDETR-style COCO ``.json``.

    Args:
        path: the file.
        image_dir: the folder its image paths are relative to (default: found next to the file,
            as the readers do).

    Returns:
        The set (see :func:`grounding_set`).

    Raises:
        FileNotFoundError: the file or its image folder is missing.
        ValueError: the file cannot be read at all (no valid line, not JSON, an unsupported type).
    """
    return grounding_set(read_dataset(path, image_dir=image_dir), source=str(path))


def grounding_set(dataset: Dataset, source: str = "<dataset>") -> GroundingSet:
    """The evaluation items of records read with their captions and spans.

    Per record: crowd boxes (``ignore``) and boxes without a span are left out (counted in
    ``skipped_boxes``, named in ``problems``); the other boxes are grouped by their span tuple,
    one :class:`PhraseTruth` per group. A record without a caption, or without any box that has
    a span, is no item (named).
    """
    problems = list(dataset.report.problems)
    items: list[GroundingItem] = []
    skipped = 0
    for rec in dataset.records:
        where = f"image {rec.path.name} (id {rec.image_id})"
        if rec.caption is None:
            problems.append((source, f"{where}: no grounding caption (a detection entry): not evaluated"))
            skipped += int(len(rec.texts))
            continue
        groups: dict[tuple[Span, ...], list[int]] = {}
        no_span: list[str] = []
        for i, spans in enumerate(rec.spans or [()] * len(rec.texts)):  # [] : no box has a span
            if rec.ignore[i]:
                skipped += 1
            elif not spans:
                no_span.append(rec.texts[i])
            else:
                groups.setdefault(spans, []).append(i)
        if no_span:
            skipped += len(no_span)
            shown = sorted(set(no_span))[:5]
            problems.append(
                (source, f"{where}: {len(no_span)} box(es) of {shown} have no span into the caption: not evaluated")
            )
        if not groups:
            problems.append((source, f"{where}: no box with a span into the caption: not evaluated"))
            continue
        phrases = tuple(
            PhraseTruth(
                text=" ".join(rec.caption[s:e] for s, e in spans),
                spans=spans,
                boxes=rec.boxes[idx].copy(),  # (G, 4)
            )
            for spans, idx in sorted(groups.items())
        )
        items.append(GroundingItem(rec.path, rec.image_id, rec.caption, (rec.height, rec.width), phrases))
    return GroundingSet(source, items, dataset.report.images, skipped, problems)
