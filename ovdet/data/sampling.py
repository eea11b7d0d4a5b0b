"""Per-image text sampling: the image's positive texts plus sampled negatives, padded.

Open-vocabulary training scores every region against a short list of texts per image instead of
the whole vocabulary: the texts present in the image (positives) and texts drawn from the rest of
the vocabulary (negatives), shuffled together and padded to a fixed length so a batch stacks.
A text may only be a negative when the image is known not to contain it: a positive is never a
negative, and ids the caller excludes (LVIS not-exhaustive categories, boxes cut away by
augmentation) are never sampled. Verified-absent categories (LVIS ``neg_category_ids``) are drawn
first.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

__all__ = ["sample_texts"]


def sample_texts(
    record_texts: Sequence[str],
    record_labels: Sequence[int] | np.ndarray,
    vocabulary: Sequence[str],
    max_texts: int = 80,
    rng: np.random.Generator | None = None,
    neg_exclude: Collection[int] = frozenset(),
    neg_prefer: Sequence[int] = (),
    pad_text: str = "",
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Choose the text list one image is trained against.

    Positives are the image's unique box texts (grounding phrases, label -1, are positives by
    their text). When there are more than ``max_texts`` of them, a random subset of
    ``max_texts`` is kept and the boxes of the others get label -1: callers drop those boxes and
    count them (``(per_box_label < 0).sum()``). The remaining slots are filled with negatives,
    drawn without replacement from the vocabulary entries that are neither positive (by index or
    by text) nor in ``neg_exclude``: first from ``neg_prefer`` (verified absent), then from the
    rest. Positives and negatives are shuffled together and the list is padded with ``pad_text``.

    Args:
        record_texts: N per-box texts (class names or phrases), positives of the image.
        record_labels: (N,) int index of each box into ``vocabulary``, -1 for a free phrase.
        vocabulary: K candidate texts (the dataset's names); negatives come from here.
        max_texts: length T of the returned list.
        rng: source of randomness; the result is a pure function of the inputs and its state.
        neg_exclude: vocabulary indices never sampled as negatives.
        neg_prefer: vocabulary indices sampled as negatives before any other.
        pad_text: filler of the padding slots.

    Returns:
        ``texts``: T strings, every real one unique; ``per_box_label``: (N,) int64 index of each
        box's text into ``texts``, -1 for a box whose text did not fit; ``mask``: (T,) bool,
        True for real (positive or negative) texts, False for padding. Padding is at the end.

    Raises:
        TypeError: ``rng`` is not a ``numpy.random.Generator``.
        ValueError: lengths disagree, ``max_texts < 1`` or a label is outside the vocabulary.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"sample_texts needs rng=np.random.default_rng(seed) for reproducible sampling, got {rng!r}")
    if max_texts < 1:
        raise ValueError(f"max_texts must be >= 1, got {max_texts}")
    labels = np.asarray(record_labels, dtype=np.int64).reshape(-1)  # (N,)
    if len(labels) != len(record_texts):
        raise ValueError(f"record_texts has {len(record_texts)} entries but record_labels {len(labels)}")
    k = len(vocabulary)
    if len(labels) and (labels.min() < -1 or labels.max() >= k):
        raise ValueError(f"record_labels must be -1 or in [0, {k}), got range [{labels.min()}, {labels.max()}]")

    # Unique positives in first-occurrence order (deterministic before any random choice).
    positives = list(dict.fromkeys(record_texts))
    if len(positives) > max_texts:
        keep = np.sort(rng.choice(len(positives), size=max_texts, replace=False))
        positives = [positives[i] for i in keep]
    kept = set(positives)

    # Negatives: vocabulary entries that are not positive by index or text, not excluded, and
    # not a repeat of a text already chosen (vocabularies may hold duplicates).
    blocked = set(int(i) for i in neg_exclude) | set(int(i) for i in labels[labels >= 0])
    seen_text = set(record_texts)
    candidates: list[int] = []
    for i, text in enumerate(vocabulary):
        if i in blocked or text in seen_text:
            continue
        seen_text.add(text)
        candidates.append(i)
    n_neg = min(max_texts - len(positives), len(candidates))
    eligible = set(candidates)
    preferred = list(dict.fromkeys(int(i) for i in neg_prefer if int(i) in eligible))
    chosen = [preferred[i] for i in rng.permutation(len(preferred))[:n_neg]]
    if len(chosen) < n_neg:
        taken = set(chosen)
        rest = [i for i in candidates if i not in taken]
        chosen += [rest[i] for i in rng.choice(len(rest), size=n_neg - len(chosen), replace=False)]

    real = positives + [vocabulary[i] for i in chosen]
    real = [real[i] for i in rng.permutation(len(real))]
    texts = real + [pad_text] * (max_texts - len(real))
    mask = np.zeros(max_texts, dtype=bool)
    mask[: len(real)] = True

    slot = {t: i for i, t in enumerate(real)}
    per_box_label = np.array([slot[t] if t in kept else -1 for t in record_texts], dtype=np.int64)  # (N,)
    return texts, per_box_label, mask
