"""Per-image text sampling: exact invariants of positives, negatives, padding and labels."""

from __future__ import annotations

import numpy as np
import pytest

from ovdet.data.sampling import sample_texts

VOCAB = [f"class{i}" for i in range(100)]


def _check(texts, per_box, mask, record_texts, max_texts, pad=""):
    """Invariants every result must satisfy; returns the real texts."""
    assert len(texts) == max_texts
    assert mask.shape == (max_texts,) and mask.dtype == bool
    assert per_box.shape == (len(record_texts),) and per_box.dtype == np.int64
    n_real = int(mask.sum())
    assert mask[:n_real].all() and not mask[n_real:].any()  # padding only at the end
    assert all(t == pad for t in texts[n_real:])
    real = texts[:n_real]
    assert len(set(real)) == n_real  # no text twice
    for text, label in zip(record_texts, per_box):
        if label >= 0:
            assert mask[label] and texts[label] == text
    return real


def test_positives_first_then_negatives_up_to_max():
    record_texts = ["class3", "class7", "class3", "class50"]
    labels = [3, 7, 3, 50]
    texts, per_box, mask = sample_texts(record_texts, labels, VOCAB, 80, np.random.default_rng(0))
    real = _check(texts, per_box, mask, record_texts, 80)
    assert len(real) == 80  # 3 positives + 77 negatives
    assert {"class3", "class7", "class50"} <= set(real)
    assert (per_box >= 0).all()
    assert per_box[0] == per_box[2]  # same text, same slot
    assert set(real) <= set(VOCAB)


def test_small_vocabulary_is_padded():
    vocab = ["cat", "dog", "bird", "fish"]
    texts, per_box, mask = sample_texts(["dog"], [1], vocab, 8, np.random.default_rng(1), pad_text="<pad>")
    real = _check(texts, per_box, mask, ["dog"], 8, pad="<pad>")
    assert sorted(real) == sorted(vocab)
    assert texts[4:] == ["<pad>"] * 4
    assert mask.tolist() == [True] * 4 + [False] * 4


def test_excluded_never_sampled_and_preferred_first():
    rng = np.random.default_rng(2)
    exclude = set(range(10, 60))
    prefer = [70, 71, 72, 10]  # 10 is excluded: exclusion wins
    for _ in range(20):
        texts, per_box, mask = sample_texts(["class1"], [1], VOCAB, 8, rng, neg_exclude=exclude, neg_prefer=prefer)
        real = _check(texts, per_box, mask, ["class1"], 8)
        assert len(real) == 8
        assert not ({f"class{i}" for i in exclude} & set(real))
        assert {"class70", "class71", "class72"} <= set(real)  # all 3 eligible preferred fit in 7 slots
        assert "class1" in real


def test_preferred_subset_when_more_than_slots():
    prefer = list(range(20, 40))
    texts, per_box, mask = sample_texts(["class1"], [1], VOCAB, 6, np.random.default_rng(3), neg_prefer=prefer)
    real = _check(texts, per_box, mask, ["class1"], 6)
    negatives = set(real) - {"class1"}
    assert len(negatives) == 5 and negatives <= {f"class{i}" for i in prefer}


def test_grounding_phrases_are_positives_by_text():
    record_texts = ["a man in a red hat", "class5", "a man in a red hat"]
    labels = [-1, 5, -1]
    vocab = VOCAB + ["a man in a red hat"]  # the phrase also in the vocabulary: never a negative twice
    texts, per_box, mask = sample_texts(record_texts, labels, vocab, 80, np.random.default_rng(4))
    real = _check(texts, per_box, mask, record_texts, 80)
    assert real.count("a man in a red hat") == 1
    assert texts[per_box[0]] == "a man in a red hat" and per_box[0] == per_box[2]


def test_deterministic_under_seed_and_seeds_differ():
    args = (["class3", "class9"], [3, 9], VOCAB, 80)
    a = sample_texts(*args, np.random.default_rng(123))
    b = sample_texts(*args, np.random.default_rng(123))
    c = sample_texts(*args, np.random.default_rng(124))
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert a[0] != c[0]


def test_positives_shuffled_among_negatives():
    # Positives must not always sit in the first slots (the model could learn the position).
    first_slots = set()
    for seed in range(10):
        texts, per_box, _ = sample_texts(["class3"], [3], VOCAB, 80, np.random.default_rng(seed))
        first_slots.add(int(per_box[0]))
    assert len(first_slots) > 5


def test_more_positives_than_max_texts_drops_boxes():
    record_texts = [f"class{i}" for i in range(10)] + ["class2", "class9"]
    labels = list(range(10)) + [2, 9]
    texts, per_box, mask = sample_texts(record_texts, labels, VOCAB, 4, np.random.default_rng(5))
    real = _check(texts, per_box, mask, record_texts, 4)
    assert len(real) == 4 and set(real) <= set(record_texts)  # only positives, no room for negatives
    kept_boxes = per_box >= 0
    # Every box of a kept text keeps its label; every other box is dropped (-1), and counted.
    assert {record_texts[i] for i in np.flatnonzero(kept_boxes)} == set(real)
    n_dropped = int((~kept_boxes).sum())
    expected = sum(1 for t in record_texts if t not in real)
    assert n_dropped == expected and n_dropped >= 6


def test_empty_image_gets_only_negatives():
    texts, per_box, mask = sample_texts([], [], VOCAB, 10, np.random.default_rng(6))
    real = _check(texts, per_box, mask, [], 10)
    assert len(real) == 10 and per_box.shape == (0,)


def test_rejects_missing_rng_and_bad_labels():
    with pytest.raises(TypeError, match="default_rng"):
        sample_texts(["class1"], [1], VOCAB, 80)
    with pytest.raises(ValueError, match="record_labels"):
        sample_texts(["class1"], [1, 2], VOCAB, 80, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        sample_texts(["x"], [100], VOCAB, 80, np.random.default_rng(0))
