"""The result type of phrase grounding: :class:`Grounding`, one per image, holding one
:class:`GroundedPhrase` per phrase of the caption.

Boxes are float32 xyxy in pixels of the ORIGINAL image, as in :class:`~ovdet.structures.Detections`;
:meth:`Grounding.to_dict` is the JSON of ``ovdet ground``, :meth:`Grounding.plot` draws the boxes
(with :meth:`Detections.plot <ovdet.structures.Detections.plot>`, a colour per phrase) above the
caption, each phrase's span highlighted in its colour.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovdet.grounding.phrases import Phrase
from ovdet.structures import Detections, label_color, save_image, text_color_on

__all__ = ["GroundedPhrase", "Grounding"]

_INK = (20, 20, 20)  # RGB of caption text outside the phrases
_PAPER = (255, 255, 255)  # RGB of the caption band


@dataclass(frozen=True, eq=False)
class GroundedPhrase:
    """One phrase's boxes in one image.

    Attributes:
        phrase: the phrase (text, spans into the caption, head noun).
        boxes: ``(K, 4)`` float32 xyxy boxes, pixels of the original image, best first.
        scores: ``(K,)`` float32 scores, descending.
        fallback: the boxes are those of the phrase's head noun (its own query found nothing).
        truncated: the phrase's prompt is longer than the text encoder reads: its embedding saw
            only the first tokens.
    """

    phrase: Phrase
    boxes: torch.Tensor
    scores: torch.Tensor
    fallback: bool = False
    truncated: bool = False

    def __post_init__(self) -> None:
        boxes = torch.as_tensor(self.boxes, dtype=torch.float32).detach().cpu()
        scores = torch.as_tensor(self.scores, dtype=torch.float32).detach().cpu()
        if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
            raise ValueError(
                f"phrase {self.phrase.text!r}: boxes must be (K, 4) and scores (K,), got {tuple(boxes.shape)} and "
                f"{tuple(scores.shape)}"
            )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(eq=False)
class Grounding:
    """The phrases of one caption grounded in one image.

    Attributes:
        caption: the caption, as given (decoded when given as bytes).
        entries: one :class:`GroundedPhrase` per phrase, in caption order; a phrase that occurs
            twice has two entries (with the same boxes).
        image_size: ``(height, width)`` of the original image, pixels.
        path: source name (file path, ``"array0"``, …), if any.
        image: the original ``(H, W, 3)`` uint8 BGR image, kept for plotting; never modified.
    """

    caption: str
    entries: list[GroundedPhrase]
    image_size: tuple[int, int]
    path: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        h, w = (int(v) for v in self.image_size)
        if h < 1 or w < 1:
            raise ValueError(f"Grounding.image_size must be (height, width) > 0, got {self.image_size!r}")
        self.image_size = (h, w)
        for e in self.entries:
            for start, end in e.phrase.spans:
                if end > len(self.caption):
                    raise ValueError(
                        f"phrase {e.phrase.text!r}: span {(start, end)} lies outside the caption "
                        f"({len(self.caption)} characters)"
                    )

    @property
    def phrases(self) -> list[Phrase]:
        """The phrases, in caption order."""
        return [e.phrase for e in self.entries]

    @property
    def boxes(self) -> list[torch.Tensor]:
        """Each phrase's ``(K_i, 4)`` boxes (the input of :mod:`ovdet.grounding.metrics`)."""
        return [e.boxes for e in self.entries]

    @property
    def scores(self) -> list[torch.Tensor]:
        """Each phrase's ``(K_i,)`` scores."""
        return [e.scores for e in self.entries]

    def __repr__(self) -> str:
        found = ", ".join(f"{e.phrase.text!r}: {len(e)}" for e in self.entries)
        return (
            f"Grounding(caption={self.caption!r}, boxes={{{found}}}, image_size={self.image_size}, path={self.path!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: caption, path, image_size and per phrase its text, spans, head noun, boxes
        (rounded to 4 decimals), scores (5 decimals), ``fallback`` and ``truncated``."""
        return {
            "caption": self.caption,
            "path": self.path,
            "image_size": [self.image_size[0], self.image_size[1]],
            "phrases": [
                {
                    "text": e.phrase.text,
                    "spans": [[s, t] for s, t in e.phrase.spans],
                    "head": None
                    if e.phrase.head is None
                    else {"text": e.phrase.head.text, "span": [e.phrase.head.start, e.phrase.head.end]},
                    "boxes": [[round(v, 4) for v in box] for box in e.boxes.tolist()],
                    "scores": [round(v, 5) for v in e.scores.tolist()],
                    "fallback": e.fallback,
                    "truncated": e.truncated,
                }
                for e in self.entries
            ],
        }

    def plot(
        self,
        image: np.ndarray | None = None,
        line_width: int | None = None,
        show_scores: bool = True,
        font_size: int | None = None,
    ) -> np.ndarray:
        """Each phrase's boxes in its colour, above a band with the caption, each phrase's span
        highlighted in the same colour (the ``i``-th distinct phrase text takes
        :func:`~ovdet.structures.label_color` ``(i)``; a repeated text keeps its colour).

        Box labels are drawn by :meth:`Detections.plot <ovdet.structures.Detections.plot>` (OpenCV's
        fonts: ASCII only before OpenCV 5); the caption band with Pillow and DejaVu Sans (Latin, Greek,
        Cyrillic; no CJK glyphs).

        Args:
            image: ``(H, W, 3)`` uint8 BGR image matching ``image_size``; default the stored one.
            line_width: box line width (default scales with the image).
            show_scores: append the score to each box's label.
            font_size: caption font size in pixels (default ≈ 2.8% of the image width, at least 12).

        Returns:
            A new ``(H + band, W, 3)`` uint8 BGR array: the image, then the wrapped caption.

        Raises:
            ValueError: no image given or stored, or its shape does not match ``image_size``.
        """
        texts, color = self._colors()
        n = [len(e) for e in self.entries]
        dets = Detections(
            boxes=torch.cat([torch.zeros(0, 4), *self.boxes]),
            scores=torch.cat([torch.zeros(0), *self.scores]),
            labels=torch.cat([torch.zeros(0, dtype=torch.int64)] + [torch.full((k,), c) for k, c in zip(n, color)]),
            names=texts,
            image_size=self.image_size,
            path=self.path,
            image=self.image,
        )
        try:
            top = dets.plot(image=image, line_width=line_width, show_scores=show_scores)
        except ValueError as e:
            raise ValueError(str(e).replace("Detections.plot", "Grounding.plot")) from None
        w = self.image_size[1]
        size = font_size if font_size is not None else max(12, round(0.028 * w))
        return np.concatenate([top, self._caption_band(w, size)], axis=0)

    def _colors(self) -> tuple[list[str], list[int]]:
        """(the distinct phrase texts in caption order, each entry's index among them): a text that
        occurs twice is one query with one set of boxes, so both take one colour."""
        texts = list(dict.fromkeys(e.phrase.text for e in self.entries))
        return texts, [texts.index(e.phrase.text) for e in self.entries]

    def _caption_band(self, width: int, size: int) -> np.ndarray:
        """``(band, width, 3)`` uint8 BGR: the caption wrapped at word boundaries (long words at
        characters), runs of whitespace shown as one space, phrase characters on their colour."""
        from PIL import Image, ImageDraw

        font = _caption_font(size)
        owner = [-1] * len(self.caption)  # (C,) the colour of the phrase each character belongs to, or -1
        for e, color in zip(self.entries, self._colors()[1]):
            for start, end in e.phrase.spans:
                owner[start:end] = [color] * (end - start)
        pad = max(2, size // 3)
        room = max(1, width - 2 * pad)
        lines: list[list[tuple[str, int]]] = [[]]  # each line: (text, owner) runs
        x = 0.0
        for m in re.finditer(r"\S+|\s+", self.caption):
            if m.group().isspace():
                if x > 0:  # one space between words on a line; none at a line's start
                    inside = owner[m.start()] if owner[m.start()] == owner[m.end() - 1] else -1
                    _append(lines[-1], " ", inside)
                    x += font.getlength(" ")
                continue
            word = range(m.start(), m.end())
            if x > 0 and x + font.getlength(m.group()) > room:
                _drop_trailing_space(lines[-1])
                lines.append([])
                x = 0.0
            for k in word:  # characters, so a word wider than the band breaks where it must
                glyph = self.caption[k]
                advance = font.getlength(glyph)
                if x > 0 and x + advance > room:
                    lines.append([])
                    x = 0.0
                _append(lines[-1], glyph, owner[k])
                x += advance
        ascent, descent = font.getmetrics()
        line_h = ascent + descent + 2
        band = Image.new("RGB", (width, 2 * pad + line_h * len(lines)), _PAPER)
        draw = ImageDraw.Draw(band)
        for row, runs in enumerate(lines):
            x, y = float(pad), pad + row * line_h
            for text, who in runs:
                advance = font.getlength(text)
                ink = _INK
                if who >= 0:
                    b, g, r = label_color(who)
                    draw.rectangle((x, y, x + advance, y + line_h - 1), fill=(r, g, b))
                    ink = text_color_on((b, g, r))[::-1]
                draw.text((x, y + 1), text, font=font, fill=ink)
                x += advance
        return np.ascontiguousarray(np.asarray(band)[:, :, ::-1])  # RGB → BGR

    def save(self, path: str | os.PathLike, image: np.ndarray | None = None, **plot_kwargs: Any) -> Path:
        """Write :meth:`plot`'s picture to ``path`` (format from its extension; parent dirs created).

        Raises:
            ValueError: no image to plot, or OpenCV cannot encode to the extension.
            OSError: the file cannot be written.
        """
        return save_image(path, self.plot(image=image, **plot_kwargs), "the grounding")


def _caption_font(size: int) -> Any:
    """DejaVu Sans at ``size`` px (shipped with matplotlib, a dependency: Latin, Greek and Cyrillic
    glyphs, which Pillow's built-in font lacks), else Pillow's built-in font."""
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")  # located, not imported
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def _append(runs: list[tuple[str, int]], text: str, owner: int) -> None:
    """Add ``text`` to a line's last run when it has the same owner, else start a run."""
    if runs and runs[-1][1] == owner:
        runs[-1] = (runs[-1][0] + text, owner)
    else:
        runs.append((text, owner))


def _drop_trailing_space(runs: list[tuple[str, int]]) -> None:
    """A line ends at its last word: remove the space after it."""
    if runs and runs[-1][0].endswith(" "):
        text, owner = runs.pop()
        if text[:-1]:
            runs.append((text[:-1], owner))
