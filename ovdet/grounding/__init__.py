"""Phrase grounding: boxes for the phrases of a caption (issue #32).

* :mod:`ovdet.grounding.phrases` — the phrases of a caption with exact character spans: noun
  phrases (GLIP's grammar over TextBlob's tagger), category lists, or caller-given phrases / spans.
* :mod:`ovdet.grounding.ground` — :func:`ground`: the phrases as a detector's vocabulary, one prediction.
* :mod:`ovdet.grounding.result` — :class:`Grounding`, one per image: boxes per phrase, JSON, plot.
* :mod:`ovdet.grounding.metrics` — Flickr30k-Entities Recall@k and RefCOCO precision@1.
* :mod:`ovdet.grounding.truth` — ground truth: ODVG / MDETR-style files as images with captions
  and phrases, each with its boxes.
* :mod:`ovdet.grounding.evaluate` — :func:`~ovdet.grounding.evaluate.evaluate_grounding`: a
  detector's R@1/5/10 and P@1 on such a file (``ovdet val --task grounding``).
* :mod:`ovdet.grounding.compose` — a real grounding set: captions composed from COCO boxes, as ODVG.

This part sits beside :mod:`ovdet.inference` (below everything that runs a network, so ``api``
and ``serve`` may use it); it drives a detector through :class:`~ovdet.grounding.ground.GroundingDetector`
and never imports :mod:`ovdet.api`.
"""

from ovdet.grounding.ground import GroundingDetector, ground
from ovdet.grounding.phrases import Phrase, Token, extract_phrases
from ovdet.grounding.result import GroundedPhrase, Grounding

__all__ = ["GroundedPhrase", "Grounding", "GroundingDetector", "Phrase", "Token", "extract_phrases", "ground"]
