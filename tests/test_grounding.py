"""Phrase grounding with the shipped ``ovdet-demo`` on real coco128 images (issue #32): boxes per phrase
equal ``predict`` with the phrases as classes, the vocabulary is left as it was, head-noun fallback,
truncation reports, the result's JSON and picture, metrics on real boxes, and ``ovdet ground``.

Phrases that are names of the shipped CLIP tables (``person``, ``dog``, ``bicycle``) need no text
encoder; free phrases (``a dog``) go through the offline MiniLM→CLIP adapter (``approx_clip``) or are
entered into the embedding cache by hand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ovdet import Detector
from ovdet.cli import main
from ovdet.config import TextConfig
from ovdet.grounding import Grounding, ground
from ovdet.grounding.metrics import recall_at_k
from ovdet.structures import label_color
from ovdet.text import EmbeddingCache, build_text_encoder, text_encoder_id
from ovdet.text.tokens import prompt_token_counts

DOG_BICYCLE = "000000000074.jpg"  # 6 people, 1 bicycle, 1 dog (coco128 labels)
ONE_PERSON = "000000000589.jpg"  # 1 person
CATEGORIES = "person. dog. bicycle. person."


@pytest.fixture(scope="module")
def demo() -> Detector:
    """The shipped demo: its CLIP tables answer table names offline. Its embedding cache is in
    memory: a module fixture is built before the per-test ``$OVDET_HOME`` is set."""
    det = Detector.from_pretrained("ovdet-demo", device="cpu")
    det.cache = EmbeddingCache()
    return det


@pytest.fixture(scope="module")
def approx() -> Detector:
    """The demo with the offline approximate-CLIP text encoder, for free phrases."""
    det = Detector.from_pretrained("ovdet-demo", device="cpu").set_text_encoder(TextConfig(family="approx_clip"))
    det.cache = EmbeddingCache()
    return det


@pytest.fixture(scope="module")
def images(coco128_images: list[Path]) -> list[str]:
    by_name = {p.name: str(p) for p in coco128_images}
    return [by_name[DOG_BICYCLE], by_name[ONE_PERSON]]


class FixedEncoder:
    """A text encoder that returns given rows: enters embeddings into a detector's cache under its
    own encoder id and templates, so ``set_classes`` finds them without any encoder."""

    def __init__(self, det: Detector, rows: dict[str, torch.Tensor]) -> None:
        self.id = text_encoder_id(det.cfg.text)
        self.dim = det.cfg.embed_dim
        self.context_length = 77
        self.templates = tuple(det.cfg.text.templates)
        self.rows = rows

    def encode(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.stack([self.rows[t] for t in texts]).float(), dim=-1)

    def enter(self, det: Detector) -> None:
        det.cache.get_or_encode(self, list(self.rows), self.templates)


def vocabulary(det: Detector) -> tuple[list[str], torch.Tensor | None, str]:
    return det._names, det._embeddings, det._encoder_id


def assert_restored(det: Detector, saved: tuple[list[str], torch.Tensor | None, str]) -> None:
    names, emb, encoder_id = vocabulary(det)
    assert names is saved[0] and emb is saved[1] and encoder_id == saved[2]
    assert saved[1] is None or torch.equal(emb, saved[1].clone())


def reference(det: Detector, source: object, texts: list[str], conf: float, **options) -> list:
    """``predict`` with ``texts`` as the classes at ``conf``, checked to have no score within 0.01
    of ``conf`` (a second predict at a lower threshold); the vocabulary is put back afterwards."""
    saved = vocabulary(det)
    try:
        det.set_classes(texts)
        low = det.predict(source, conf=conf - 0.01, **options)
        assert not any(bool(((d.scores - conf).abs() <= 0.01).any()) for d in low), "a score near the threshold"
        return det.predict(source, conf=conf, **options)
    finally:
        det._names, det._embeddings, det._encoder_id = saved


def assert_equals_predict(results: list[Grounding], ref: list) -> int:
    """Each phrase's boxes are exactly its class's boxes in ``ref``; returns the number of boxes."""
    total = 0
    assert len(results) == len(ref)
    for g, d in zip(results, ref):
        assert g.image_size == d.image_size and g.path == d.path
        for e in g.entries:
            keep = d.labels == d.names.index(e.phrase.text)
            assert torch.equal(e.boxes, d.boxes[keep]) and torch.equal(e.scores, d.scores[keep]), e.phrase.text
            total += len(e)
    return total


# ------------------------------------------------------------------------------------ equals predict
def test_ground_equals_predict_with_the_phrases_as_classes(demo: Detector, images: list[str]) -> None:
    saved = vocabulary(demo)
    results = ground(demo, images, CATEGORIES, conf=0.33)
    assert_restored(demo, saved)
    assert [p.text for p in results[0].phrases] == ["person", "dog", "bicycle", "person"]
    ref = reference(demo, images, ["person", "dog", "bicycle"], conf=0.33)
    assert assert_equals_predict(results, ref) == 8
    first = results[0]
    assert [len(e) for e in first.entries] == [2, 1, 1, 2]  # person 0.50, 0.37; dog 0.92; bicycle 0.84
    assert [len(e) for e in results[1].entries] == [1, 0, 0, 1]  # the one person, 0.94
    # the repeated phrase: its own span, the same boxes
    assert first.phrases[0].spans == ((0, 6),) and first.phrases[3].spans == ((22, 28),)
    assert torch.equal(first.entries[0].boxes, first.entries[3].boxes)
    assert demo.ground(images, CATEGORIES, conf=0.33)[0].to_dict() == first.to_dict()  # Detector.ground delegates


def test_free_phrases_through_the_text_encoder(approx: Detector, images: list[str]) -> None:
    caption = "a dog lies next to a bicycle on the street"
    results = ground(approx, images, caption, conf=0.3)
    assert [(p.text, p.spans) for p in results[0].phrases] == [
        ("a dog", ((0, 5),)),
        ("a bicycle", ((19, 28),)),
        ("the street", ((32, 42),)),
    ]
    ref = reference(approx, images, ["a dog", "a bicycle", "the street"], conf=0.3)
    assert assert_equals_predict(results, ref) == 2  # the dog (0.79) and the bicycle (0.53) of the first image


def test_top_k_and_options(demo: Detector, images: list[str]) -> None:
    every = ground(demo, images[:1], "person. dog.", conf=0.1, imgsz=320)
    best = ground(demo, images[:1], "person. dog.", conf=0.1, imgsz=320, top_k=2)
    assert len(every[0].entries[0]) > 2
    for e_all, e_best in zip(every[0].entries, best[0].entries):
        assert torch.equal(e_best.boxes, e_all.boxes[:2]) and torch.equal(e_best.scores, e_all.scores[:2])
    ref = reference(demo, images[:1], ["person", "dog"], conf=0.1, imgsz=320)
    assert_equals_predict(every, ref)
    assert ground(demo, images[:1], "person. dog.", keep_images=False)[0].image is None
    with pytest.raises(ValueError, match="top_k must be a positive int or None"):
        ground(demo, images, "person. dog.", top_k=0)
    with pytest.raises(TypeError, match="no stream= option"):
        ground(demo, images, "person. dog.", stream=True)


# ------------------------------------------------------------------------------------ vocabulary kept
def test_vocabulary_is_restored_exactly(demo: Detector, images: list[str]) -> None:
    saved = vocabulary(demo)
    before = demo.predict(images[:1], conf=0.3)[0]
    with pytest.raises(Exception, match="no/such"):
        ground(demo, "no/such/image.jpg", CATEGORIES)  # fails in predict, after set_classes
    assert_restored(demo, saved)
    ground(demo, images[:1], "person. dog.")
    assert_restored(demo, saved)
    after = demo.predict(images[:1], conf=0.3)[0]
    assert torch.equal(before.boxes, after.boxes) and before.names == after.names and len(before.names) == 80

    bare = Detector(demo.model, device="cpu")  # no vocabulary at all
    assert len(ground(bare, images[:1], "person. dog.")[0].entries[0]) > 0
    assert bare.names == [] and bare.class_embeddings is None and bare._encoder_id == "precomputed"
    with pytest.raises(RuntimeError, match="no vocabulary"):
        bare.predict(images[:1])


# ------------------------------------------------------------------------------------ fallback, truncation
def test_head_noun_fallback(demo: Detector, images: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A phrase that finds nothing ("zorbled dog", entered with the embedding of "giraffe", which
    neither image shows) is asked again as its head noun "dog", in one extra predict with only that noun."""
    FixedEncoder(demo, {"zorbled dog": demo.encode(["giraffe"])[0]}).enter(demo)
    caption = "a zorbled dog near a bicycle"
    plain = ground(demo, images, caption, phrases=["zorbled dog", "bicycle"], conf=0.25)
    assert [len(e) for g in plain for e in g.entries] == [0, 1, 0, 0]
    assert not any(e.fallback for g in plain for e in g.entries)

    calls: list[tuple[list[str], object]] = []
    predict = demo.predict

    def counting(source, **kwargs):
        calls.append((demo.names, source))
        return predict(source, **kwargs)

    monkeypatch.setattr(demo, "predict", counting)
    results = ground(demo, images, caption, phrases=["zorbled dog", "bicycle"], conf=0.25, head_fallback=True)
    monkeypatch.undo()
    assert [names for names, _ in calls] == [["zorbled dog", "bicycle"], ["dog"]]  # heads only ("bicycle" is its own)
    assert [type(s) for s in calls[1][1]] == [np.ndarray, np.ndarray]  # both images needed it
    ref = reference(demo, images, ["dog"], conf=0.25)
    for g, d in zip(results, ref):
        zorbled, bicycle = g.entries
        assert zorbled.fallback and not bicycle.fallback
        assert torch.equal(zorbled.boxes, d.boxes) and torch.equal(zorbled.scores, d.scores)
    assert [len(g.entries[0]) for g in results] == [1, 0]  # the dog of the first image; none in the second
    assert results[0].to_dict()["phrases"][0]["fallback"] is True
    assert torch.equal(results[0].entries[1].boxes, plain[0].entries[1].boxes)


def test_truncated_phrases_are_reported(demo: Detector, images: list[str]) -> None:
    long = "dog " + "very " * 80 + "old"
    FixedEncoder(demo, {long: demo.encode(["dog"])[0]}).enter(demo)
    caption = f"a bicycle and a {long}"
    with pytest.warns(UserWarning, match=r"need more than the 77 tokens the text encoder \(open_clip ViT-B-32\)"):
        results = ground(demo, images[:1], caption, phrases=["bicycle", long])
    assert [e.truncated for e in results[0].entries] == [False, True]
    assert [p["truncated"] for p in results[0].to_dict()["phrases"]] == [False, True]


def test_token_counts_are_the_encoders(approx: Detector) -> None:
    """:func:`prompt_token_counts` (tokenizers only) counts as the built encoders do."""
    texts = ["dog", "a red shirt", "caf\u00e9 in Z\u00fcrich", "very " * 60 + "long"]
    custom = dict(embed_dim=8, context_length=16, vocab_size=49408, width=8, heads=1, layers=1)
    tiny = TextConfig(custom=custom, templates=("a photo of {}", "{}"))
    clip = build_text_encoder(tiny)
    counts = prompt_token_counts(tiny, texts)
    assert counts is not None and counts.context_length == clip.context_length == 16
    assert counts.counts == tuple(clip.token_count(f"a photo of {t}") for t in texts)  # the longer template
    assert counts.truncated() == [3]

    minilm = approx.text_encoder  # MiniLM reads "a " + each prompt (the adapter's fitted form)
    counts = prompt_token_counts(approx.cfg.text, texts)
    assert counts is not None and counts.context_length == minilm.context_length == 256
    tokenizer = minilm._minilm._model.tokenizer
    assert counts.counts == tuple(len(tokenizer(f"a {t}")["input_ids"]) for t in texts) and counts.counts[0] == 4
    assert prompt_token_counts(TextConfig(model="mt5-base-ViT-B-32", pretrained=None), texts) is None  # HF tokenizer


# ------------------------------------------------------------------------------------ result
def test_to_dict_plot_and_save(demo: Detector, images: list[str], tmp_path: Path) -> None:
    g = ground(demo, images[:1], CATEGORIES, conf=0.3)[0]
    d = json.loads(json.dumps(g.to_dict()))
    assert d["caption"] == CATEGORIES and d["image_size"] == [426, 640] and d["path"] == images[0]
    assert [(p["text"], p["spans"], p["head"]) for p in d["phrases"]][:2] == [
        ("person", [[0, 6]], {"text": "person", "span": [0, 6]}),
        ("dog", [[8, 11]], {"text": "dog", "span": [8, 11]}),
    ]
    dog = d["phrases"][1]
    assert dog["boxes"] == [[round(v, 4) for v in g.entries[1].boxes[0].tolist()]] and dog["fallback"] is False
    assert dog["scores"] == [round(float(g.entries[1].scores[0]), 5)]

    picture = g.plot()
    h, w = g.image_size
    assert picture.dtype == np.uint8 and picture.shape[1:] == (w, 3) and picture.shape[0] > h
    band, top = picture[h:], picture[:h]
    for color in (0, 1, 2):  # person, dog, bicycle: highlighted in the caption, boxes in the image
        assert (band == label_color(color)).all(axis=2).any(), color
        assert (top == label_color(color)).all(axis=2).any(), color
    assert not (band == label_color(3)).all(axis=2).any()  # the repeated "person" keeps colour 0
    assert np.array_equal(top[400:, 400:], g.image[400:, 400:])  # the pavement, far from every box, is untouched
    path = g.save(tmp_path / "out.png")
    assert np.array_equal(cv2.imread(str(path)), picture)
    with pytest.raises(ValueError, match="Grounding.plot needs an image"):
        ground(demo, images[:1], CATEGORIES, keep_images=False)[0].plot()


def test_long_captions_wrap(demo: Detector, images: list[str]) -> None:
    caption = "person. dog. bicycle. " + " ".join(["person."] * 30)
    g = ground(demo, images[:1], caption, top_k=1)[0]
    short = ground(demo, images[:1], "person. dog. bicycle.", top_k=1)[0]
    assert g.plot().shape[0] > short.plot().shape[0] > g.image_size[0]
    assert g.plot().shape[1] == short.plot().shape[1] == g.image_size[1]


def test_recall_on_coco_boxes(demo: Detector, images: list[str], data_dir: Path) -> None:
    """Recall@k of the demo's groundings against coco128's own boxes (person, dog, bicycle)."""
    results = ground(demo, images, "person. dog. bicycle.", conf=0.05, top_k=10)
    truth = []
    for g in results:
        labels = np.loadtxt(data_dir / "coco128/labels/train2017" / (Path(str(g.path)).stem + ".txt"), ndmin=2)
        h, w = g.image_size
        per_phrase = []
        for cls in (0, 16, 1):
            cx, cy, bw, bh = labels[labels[:, 0] == cls, 1:].T
            per_phrase.append(np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1))
        truth.append(per_phrase)
    # counted: person, dog, bicycle in the first image, the person of the second; the first image's
    # best person box (0.50) is a pedestrian coco128 did not label, its second (0.37) is labelled
    assert recall_at_k([g.boxes for g in results], truth) == {"R@1": 0.75, "R@5": 1.0, "R@10": 1.0, "phrases": 4}


# ------------------------------------------------------------------------------------ the command
def test_cli_writes_the_groundings(demo: Detector, images: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["ground", "--model", "ovdet-demo", "--device", "cpu", "--caption", CATEGORIES, "--source", images[0]]
    assert main([*argv, "--conf", "0.3", "--top-k", "2", "--save-dir", str(out)]) == 0
    written = json.loads((out / "grounding.json").read_text(encoding="utf-8"))
    expected = ground(demo, images[0], CATEGORIES, conf=0.3, top_k=2)
    assert len(written) == 1
    assert written[0].pop("annotated") == "000000000074.jpg"
    assert written == [g.to_dict() for g in expected]
    picture = cv2.imread(str(out / "000000000074.jpg"))
    assert picture.shape == expected[0].plot().shape and picture.shape[0] > 426


def test_cli_usage_errors(images: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ground", "--model", "ovdet-demo", "--device", "cpu", "--source", images[0], "--save-dir", str(tmp_path)]
    assert main([*argv, "--caption", "is running quickly"]) == 2
    assert "no noun phrase found" in capsys.readouterr().err
    assert main([*argv, "--caption", "a dog", "--phrases", "cat"]) == 2
    assert "'cat' (index 0) is not in the caption" in capsys.readouterr().err
    assert main([*argv, "--caption", "a dog", "--top-k", "0"]) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written for a command line that cannot work
