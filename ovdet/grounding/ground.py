"""Phrase grounding (GLIP / Grounding DINO's task) with an open-vocabulary detector: boxes for each
phrase of a caption.

``ground(det, "beach.jpg", "a man in a red shirt holding an umbrella")`` is ``set_classes`` over the
caption's phrases (:func:`~ovdet.grounding.phrases.extract_phrases`): the unique phrase texts become
the vocabulary (embedded by the detector's own ``set_classes``, so its prompt templates, cache and
shipped CLIP tables apply) and the images are predicted ONCE; each phrase takes the boxes of its
text. So a phrase's boxes are exactly ``det.set_classes(texts).predict(source, conf=...)``'s boxes
of that class (same options), at most ``top_k`` of them. A text that occurs twice (``"a dog and a
dog"``) is one class: both phrases list the same boxes, as two entries with their own spans (the
detector cannot tell which dog the caption means).

Options, as GLIP's and Grounding DINO's demos behave: every box above ``conf`` is kept
(``top_k=None``); ``top_k=1`` keeps each phrase's best box (the Flickr30k / RefCOCO evaluations
rank the first ``k``, see :mod:`ovdet.grounding.metrics`). With ``head_fallback``, a phrase with
no box in an image is asked again by its head noun (``"a furry brown dog"`` → ``"dog"``): one more
prediction, over the images that need it, with the needed head nouns only as the vocabulary; its
entries say ``fallback=True``.

Text-encoder limit: a prompt longer than the encoder's ``context_length`` tokens is truncated by
the encoder (CLIP: 77 tokens, start and end included). Phrases that would be are counted with the
encoder's tokenizer (:func:`~ovdet.text.tokens.prompt_token_counts`, no weights needed), named in
one warning and marked ``truncated=True``.

The detector is left as it was found: its vocabulary (names, embeddings and the id of the encoder
they came from) is put back afterwards, also when prediction fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch

from ovdet.config import ModelConfig, TextConfig
from ovdet.grounding.phrases import Phrase, check_caption, extract_phrases
from ovdet.grounding.result import GroundedPhrase, Grounding
from ovdet.structures import Detections

__all__ = ["GroundingDetector", "ground"]


class GroundingDetector(Protocol):
    """What :func:`ground` needs of a detector (``ovdet.Detector`` is one).

    The three vocabulary fields are read and put back as they are: restoring through
    ``set_class_embeddings`` would re-normalise the rows and relabel their encoder as
    ``"precomputed"``, and could not restore "no vocabulary".
    """

    _names: list[str]
    _embeddings: torch.Tensor | None
    _encoder_id: str

    @property
    def cfg(self) -> ModelConfig: ...

    def set_classes(self, names: Sequence[str]) -> Any: ...

    def predict(self, source: Any, **kwargs: Any) -> Any: ...


def ground(
    detector: GroundingDetector,
    source: Any,
    caption: str | bytes,
    phrases: Sequence[str] | None = None,
    spans: Sequence[Sequence[int]] | None = None,
    *,
    conf: float | None = None,
    top_k: int | None = None,
    head_fallback: bool = False,
    keep_images: bool = True,
    **predict_options: Any,
) -> list[Grounding]:
    """Boxes for each phrase of ``caption`` in each image of ``source`` (see the module docstring).

    Args:
        detector: the detector (``ovdet.Detector``); its vocabulary is unchanged afterwards.
        source: what ``Detector.predict`` reads: an image path, folder, glob, video, array, … or a list.
        caption: the text (``str``, or UTF-8 ``bytes``).
        phrases: the phrases to ground, found in the caption in this order (default: the
            caption's category list or noun phrases, :func:`~ovdet.grounding.phrases.extract_phrases`).
        spans: or the phrases as ``(start, end)`` character spans of the caption.
        conf: minimum score of a box (default: ``config``'s, else 0.25, as ``predict``).
        top_k: at most this many boxes per phrase, best first; None keeps all above ``conf``.
        head_fallback: ask again by the head noun for a phrase that found no box.
        keep_images: keep each original image on its result (for ``plot``/``save``).
        **predict_options: more ``Detector.predict`` options (``iou``, ``imgsz``, ``max_det``,
            ``agnostic_nms``, ``batch``, ``precision``, ``max_pixels``, ``optimize``, ``config``,
            ``video_stride``); ``stream`` is not one (the results are a list).

    Returns:
        One :class:`~ovdet.grounding.result.Grounding` per readable image, in source order.

    Raises:
        TypeError / ValueError: a bad caption, phrases or spans (see
            :func:`~ovdet.grounding.phrases.extract_phrases`), a caption with no noun phrase, a bad
            ``top_k``, or ``stream``.
        TextEncoderUnavailable: a phrase needs the text encoder and it cannot be built (offline).
        Whatever ``Detector.predict`` raises for the source or the options.
    """
    caption = check_caption(caption)
    found = extract_phrases(caption, phrases, spans)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None (all boxes above conf), got {top_k!r}")
    if "stream" in predict_options:
        raise TypeError("ground() returns a list: it takes no stream= option")
    texts = list(dict.fromkeys(p.text for p in found))  # the vocabulary: each text once, in caption order
    truncated = _truncated(detector.cfg.text, texts)

    with _kept_vocabulary(detector):
        detector.set_classes(texts)
        dets: list[Detections] = detector.predict(source, conf=conf, keep_images=True, **predict_options)
        picked = [[_boxes_of(d, texts.index(p.text), top_k) for p in found] for d in dets]  # [image][phrase]
        fallback = [[False] * len(found) for _ in dets]
        if head_fallback:
            _fall_back_to_heads(detector, found, dets, picked, fallback, conf, top_k, predict_options)

    return [
        Grounding(
            caption=caption,
            entries=[
                GroundedPhrase(p, boxes, scores, fallback[i][j], p.text in truncated)
                for j, (p, (boxes, scores)) in enumerate(zip(found, picked[i]))
            ],
            image_size=d.image_size,
            path=d.path,
            image=d.image if keep_images else None,
        )
        for i, d in enumerate(dets)
    ]


def _boxes_of(d: Detections, label: int, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """((K, 4) boxes, (K,) scores) of class ``label``, best first, at most ``top_k``."""
    keep = d.labels == label  # (N,) bool; rows are sorted by descending score
    return d.boxes[keep][:top_k], d.scores[keep][:top_k]


def _fall_back_to_heads(
    detector: GroundingDetector,
    found: list[Phrase],
    dets: list[Detections],
    picked: list[list[tuple[torch.Tensor, torch.Tensor]]],
    fallback: list[list[bool]],
    conf: float | None,
    top_k: int | None,
    predict_options: dict[str, Any],
) -> None:
    """One more prediction, with the head nouns of the phrases that found nothing as the vocabulary,
    over the images where they found nothing; fills ``picked`` and ``fallback`` in place."""
    need = [
        (i, j)
        for i in range(len(dets))
        for j, p in enumerate(found)
        if len(picked[i][j][0]) == 0 and p.head is not None and p.head.text != p.text  # the same query finds nothing
    ]
    if not need:
        return
    heads = list(dict.fromkeys(found[j].head.text for _, j in need))  # type: ignore[union-attr]
    images = sorted({i for i, _ in need})
    detector.set_classes(heads)
    again: list[Detections] = detector.predict(
        [dets[i].image for i in images], conf=conf, keep_images=False, **predict_options
    )
    row = {i: d for i, d in zip(images, again)}
    for i, j in need:
        picked[i][j] = _boxes_of(row[i], heads.index(found[j].head.text), top_k)  # type: ignore[union-attr]
        fallback[i][j] = True


def _truncated(text: TextConfig, texts: list[str]) -> set[str]:
    """The texts whose prompts exceed the encoder's context (one warning names them)."""
    from ovdet.text.tokens import prompt_token_counts

    counts = prompt_token_counts(text, texts)
    if counts is None:
        return set()
    long = [texts[i] for i in counts.truncated()]
    if long:
        shown = [t if len(t) <= 60 else t[:57] + "..." for t in long]
        warnings.warn(
            f"phrase(s) {shown} need more than the {counts.context_length} tokens the text encoder "
            f"({text.family} {text.model}) reads, prompt template included: their embeddings see only the "
            f"first tokens (marked truncated=True)",
            stacklevel=3,
        )
    return set(long)


@contextmanager
def _kept_vocabulary(detector: GroundingDetector) -> Iterator[None]:
    """Put the detector's vocabulary back as it was (names, embeddings, encoder id) on the way out."""
    saved = (detector._names, detector._embeddings, detector._encoder_id)
    try:
        yield
    finally:
        detector._names, detector._embeddings, detector._encoder_id = saved
