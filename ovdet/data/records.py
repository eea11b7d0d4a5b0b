"""The one record type every dataset reader produces, and the report readers fill in."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ImageRecord:
    """One image and its boxes, in the format every reader emits.

    Attributes:
        path: the image file.
        image_id: the dataset's id (COCO/LVIS ``id``; YOLO: the file stem).
        height: image height in pixels (as annotated, or as read from the file).
        width: image width in pixels.
        boxes: (N, 4) float32 xyxy in absolute pixels, 0 <= x1 < x2 <= width, same for y.
        texts: N per-box texts (the prompt-ready class name or grounding phrase).
        labels: (N,) int64 index into the dataset vocabulary (``Dataset.names``), -1 for free
            phrases that are not in it (grounding data).
        ignore: (N,) bool, True for regions that are neither positive nor negative (COCO crowd).
        neg_category_ids: LVIS: category ids verified absent from the image (safe negatives).
        not_exhaustive_category_ids: LVIS: categories whose boxes may be missing here; never
            sampled as negatives.
        caption: the grounding caption the boxes' spans point into (ODVG ``grounding.caption``,
            an MDETR-style json image's ``caption``); None for detection data.
        spans: N per-box tuples of ``(start, end)`` character spans into ``caption`` (ODVG /
            MDETR ``tokens_positive``, sorted, distinct; ``caption[start:end]`` is the phrase),
            ``()`` for a box without any; an empty list means none for every box.
    """

    path: Path
    image_id: int | str
    height: int
    width: int
    boxes: np.ndarray
    texts: list[str]
    labels: np.ndarray
    ignore: np.ndarray
    neg_category_ids: list[int] = field(default_factory=list)
    not_exhaustive_category_ids: list[int] = field(default_factory=list)
    caption: str | None = None
    spans: list[tuple[tuple[int, int], ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.texts)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        spans = len(self.spans) if self.spans else n  # an empty list: no spans at all (not filled in, so
        # filtering the boxes with dataclasses.replace keeps the record valid)
        if not (len(self.boxes) == len(self.labels) == len(self.ignore) == spans == n):
            raise ValueError(
                f"{self.path}: boxes {len(self.boxes)}, texts {n}, labels {len(self.labels)}, "
                f"ignore {len(self.ignore)}, spans {len(self.spans)} must have one entry per box"
            )

    @property
    def num_boxes(self) -> int:
        """Boxes that are positives (crowd/ignore regions excluded)."""
        return int((~self.ignore).sum())


@dataclass
class DataReport:
    """What a reader found: counts and every problem, with the file it concerns.

    Attributes:
        images: image entries found (readable or not).
        labelled: images with at least one box.
        background: images without boxes.
        boxes: boxes kept (positives).
        ignored: ignore regions kept (crowd).
        clipped: boxes clipped to the image (kept, counted).
        invalid: boxes dropped as invalid (malformed label lines or annotations, unknown classes,
            degenerate or outside boxes), each also a problem.
        per_class: positives per class name.
        problems: (file, reason) of everything skipped or changed, one entry per item.
    """

    images: int = 0
    labelled: int = 0
    background: int = 0
    boxes: int = 0
    ignored: int = 0
    clipped: int = 0
    invalid: int = 0
    per_class: Counter = field(default_factory=Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def problem(self, file: str | Path, reason: str) -> None:
        """Record one skipped or altered item."""
        self.problems.append((str(file), reason))

    def summary(self) -> str:
        """A short human-readable report (the body of ``ovdet check-data``)."""
        lines = [
            f"images {self.images}, labelled {self.labelled}, background {self.background}, "
            f"boxes {self.boxes}, ignored (crowd) {self.ignored}, clipped {self.clipped}, "
            f"invalid boxes {self.invalid}, problems {len(self.problems)}"
        ]
        for name, n in sorted(self.per_class.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {name:<30} {n}")
        return "\n".join(lines + self.problem_lines())

    def problem_lines(self, start: int = 0, limit: int | None = None) -> list[str]:
        """``"  problem: <file>: <reason>"`` lines of ``problems[start:]``, at most ``limit`` of
        them and then one line saying how many more there are."""
        shown = self.problems[start:] if limit is None else self.problems[start : start + limit]
        lines = [f"  problem: {file}: {reason}" for file, reason in shown]
        more = len(self.problems) - start - len(shown)
        if more > 0:
            lines.append(f"  ... and {more} more")
        return lines


@dataclass
class Dataset:
    """Records plus the vocabulary they index into.

    Attributes:
        records: one per readable, annotated-or-background image.
        names: prompt-ready class names (``labels`` index into these).
        raw_names: the dataset's original names (for evaluation tables), same order.
        category_ids: the dataset's category id of each name (COCO/LVIS ids; YOLO: 0..K-1).
        report: what the reader found.
    """

    records: list[ImageRecord]
    names: list[str]
    raw_names: list[str]
    category_ids: list[int]
    report: DataReport
