"""A real grounding set from COCO boxes: one composed caption per image, its phrases' spans
pointing at the annotated boxes, written as ODVG jsonl.

For each image of a COCO instances json (read by :func:`~ovdet.data.readers.read_coco`):

1. **Categories**: those with at least one non-crowd box of area >= :data:`MIN_BOX_AREA` pixels
   (a category with only smaller boxes is not mentioned: at 640 pixels such an object covers a
   few stride-8 cells) and with no crowd region in the image (a crowd cannot be counted), ordered
   by their largest box, biggest first (ties: COCO category order); the first
   :data:`MAX_CATEGORIES` are mentioned.
2. **Phrases**: each mentioned category's phrase counts ALL its non-crowd boxes in the image and
   points at all of them: ``"a dog"``, ``"an umbrella"``, ``"two people"``, ``"13 kites"``
   (number words up to twelve, digits above), ``"a pair of skis"`` / ``"two pairs of scissors"``,
   ``"some broccoli"`` (a mass noun: no count). Plurals: :data:`IRREGULAR_PLURALS`, else
   ``-s``/``-x``/``-z``/``-ch``/``-sh`` + ``es``, consonant + ``y`` → ``ies``, otherwise + ``s``
   (on the last word of a multi-word name: ``"wine glasses"``).
3. **Caption**: ``"A"``, ``"A next to B"`` or ``"A next to B and C"``; each phrase's
   ``tokens_positive`` is its exact ``[start, end]`` span (``caption[start:end]`` is the phrase),
   one ODVG region per box.

An image with no category to mention (only crowd or small boxes, or none) is skipped and named.
Everything is deterministic: the same json gives the same lines, byte for byte. The captions are
templates over the annotations, not human language: they test where a detector puts a phrase
built from a class name, a number and an article, not how it reads free text.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ovdet.data.readers import read_coco
from ovdet.data.readers.common import PathLike
from ovdet.io import atomic_write_text

__all__ = [
    "IRREGULAR_PLURALS",
    "MAX_CATEGORIES",
    "MIN_BOX_AREA",
    "ComposedSet",
    "compose_grounding",
    "count_phrase",
    "indefinite_article",
    "plural",
    "write_odvg",
]

#: A category is mentioned only when one of its boxes has at least this area (pixels²): 16 × 16.
MIN_BOX_AREA = 16 * 16
#: At most this many categories per caption.
MAX_CATEGORIES = 3
#: Plurals the suffix rules get wrong, for COCO's names (and a few LVIS heads).
IRREGULAR_PLURALS: dict[str, str] = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "knife": "knives",
    "leaf": "leaves",
    "sheep": "sheep",
    "deer": "deer",
    "fish": "fish",
}
#: Names that are plural already and are counted in pairs (COCO: skis, scissors).
PAIRS = frozenset({"skis", "scissors"})
#: Mass nouns: ``"some broccoli"``, never counted.
MASS_NOUNS = frozenset({"broccoli"})
#: Number words; larger counts are written in digits.
NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)
#: Words starting with a vowel letter but a consonant sound ("a unicorn", "a one-way sign") and the reverse.
_CONSONANT_SOUND = ("one", "uni", "use", "usu", "eu", "ur")
_VOWEL_SOUND = ("hour", "honest", "honor", "heir")


@dataclass
class ComposedSet:
    """ODVG lines composed from a COCO json.

    Attributes:
        lines: one ODVG object per captioned image (``filename`` relative to ``image_root``,
            ``height``, ``width``, ``image_id``, ``grounding``: ``caption`` and one region per box).
        image_root: the folder the filenames are relative to.
        images: images the json lists.
        skipped: ``(image, reason)`` of each image given no caption; the reader's problems first.
    """

    lines: list[dict[str, Any]]
    image_root: Path
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def indefinite_article(word: str) -> str:
    """``"an"`` before a vowel sound (``"an umbrella"``, ``"an hour"``), else ``"a"`` (``"a unicorn"``)."""
    w = word.lower()
    if w.startswith(_VOWEL_SOUND):
        return "an"
    return "an" if w[:1] in "aeiou" and not w.startswith(_CONSONANT_SOUND) else "a"


def plural(name: str) -> str:
    """The plural of a (possibly multi-word) name: its last word made plural (see the module docstring)."""
    head, _, last = name.rpartition(" ")
    lower = last.lower()
    if lower in IRREGULAR_PLURALS:
        word = IRREGULAR_PLURALS[lower]
    elif lower.endswith(("s", "x", "z", "ch", "sh")):
        word = last + "es"
    elif len(lower) > 1 and lower.endswith("y") and lower[-2] not in "aeiou":
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def count_phrase(name: str, count: int) -> str:
    """``count`` objects named ``name`` as an English noun phrase: ``"a dog"``, ``"two people"``,
    ``"a pair of skis"``, ``"some broccoli"``, ``"13 kites"``.

    Raises:
        ValueError: ``count`` < 1.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    number = NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)
    if name in MASS_NOUNS:
        return f"some {name}"
    if name in PAIRS:
        return f"a pair of {name}" if count == 1 else f"{number} pairs of {name}"
    return f"{indefinite_article(name)} {name}" if count == 1 else f"{number} {plural(name)}"


def _caption(phrases: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The caption joining 1–3 phrases and each phrase's ``(start, end)`` span in it."""
    glue = ["", " next to ", " and "]
    caption, spans = "", []
    for i, phrase in enumerate(phrases):
        caption += glue[min(i, 2)]
        spans.append((len(caption), len(caption) + len(phrase)))
        caption += phrase
    return caption, spans


def compose_grounding(
    coco_json: PathLike,
    image_dir: PathLike | None = None,
    *,
    min_box_area: float = MIN_BOX_AREA,
    max_categories: int = MAX_CATEGORIES,
) -> ComposedSet:
    """One caption per image of a COCO instances json, its phrases' spans on the boxes.

    Args:
        coco_json: the COCO instances json (e.g. ``$OVDET_DATA/coco128-coco/annotations/instances_train2017.json``).
        image_dir: its image folder (default: found next to the json, as :func:`~ovdet.data.readers.read_coco` does).
        min_box_area: a category needs a non-crowd box of at least this many pixels² to be mentioned.
        max_categories: at most this many categories per caption (>= 1).

    Returns:
        The ODVG lines, in the json's image order (see :class:`ComposedSet`).

    Raises:
        ValueError: ``max_categories`` < 1, or the json cannot be read (see :func:`~ovdet.data.readers.read_coco`).
        FileNotFoundError: the json or its image folder is missing.
    """
    if max_categories < 1:
        raise ValueError(f"max_categories must be >= 1, got {max_categories}")
    data = read_coco(coco_json, image_dir)
    skipped = list(data.report.problems)
    lines: list[dict[str, Any]] = []
    root = Path(os.path.commonpath([str(r.path.parent) for r in data.records])) if data.records else Path(".")
    if image_dir is not None:
        root = Path(image_dir)
    for rec in data.records:
        b = rec.boxes.astype(np.float64)  # (N, 4) xyxy
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # (N,)
        crowded = set(rec.labels[rec.ignore].tolist())
        largest: dict[int, float] = {}
        for label, a, crowd in zip(rec.labels.tolist(), area.tolist(), rec.ignore.tolist()):
            if not crowd and label not in crowded:
                largest[label] = max(largest.get(label, 0.0), a)
        chosen = sorted((lab for lab, a in largest.items() if a >= min_box_area), key=lambda lab: (-largest[lab], lab))
        chosen = chosen[:max_categories]
        if not chosen:
            why = (
                "no annotation"
                if not len(rec.labels)
                else f"no non-crowd category with a box of >= {min_box_area:g} px²"
            )
            skipped.append((rec.path.name, f"{why}: no caption"))
            continue
        members = [[i for i, lab in enumerate(rec.labels.tolist()) if lab == c and not rec.ignore[i]] for c in chosen]
        phrases = [count_phrase(data.names[c], len(m)) for c, m in zip(chosen, members)]
        caption, spans = _caption(phrases)
        regions = [
            {
                "bbox": [round(float(v), 3) for v in rec.boxes[i].tolist()],
                "phrase": phrase,
                "tokens_positive": [[start, end]],
            }
            for phrase, (start, end), idx in zip(phrases, spans, members)
            for i in idx
        ]
        lines.append(
            {
                "filename": rec.path.relative_to(root).as_posix(),
                "height": rec.height,
                "width": rec.width,
                "image_id": rec.image_id,
                "grounding": {"caption": caption, "regions": regions},
            }
        )
    return ComposedSet(lines, root, data.report.images, skipped)


def write_odvg(lines: list[dict[str, Any]], path: PathLike) -> Path:
    """Write ODVG objects as jsonl (one per line, UTF-8), atomically; returns the path."""
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    return atomic_write_text(path, text)
