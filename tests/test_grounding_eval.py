"""Grounding evaluation (issue #32, item 4): ground truth read from ODVG jsonl and MDETR-style json
(phrases grouped by span, bad input skipped and named), ``evaluate_grounding`` on hand-built cases
whose Recall@k / P@1 are known by construction (a stub detector answers each phrase with given
boxes), the shipped demo end to end on composed coco128 captions against an independent
recomputation, and ``ovdet val --task grounding``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from ovdet import Detector
from ovdet.cli import main
from ovdet.config import EvalConfig, TextConfig
from ovdet.data.images import ImageReadError
from ovdet.data.readers import read_odvg
from ovdet.grounding import ground
from ovdet.grounding.compose import compose_grounding, write_odvg
from ovdet.grounding.evaluate import evaluate_grounding
from ovdet.grounding.metrics import precision_at_1, recall_at_k
from ovdet.grounding.truth import read_grounding
from ovdet.structures import Detections
from ovdet.text import EmbeddingCache
from tests.helpers import require_data

A, B, C, D = "000000000074.jpg", "000000000589.jpg", "000000000009.jpg", "000000000025.jpg"
SIZES = {A: (426, 640), B: (640, 480), C: (480, 640), D: (640, 426)}  # (h, w) of the coco128 files

# image A: "a dog" (0, 5), "two cats" (14, 22), "a bird" (27, 33)
CAPTION_A = "a dog next to two cats and a bird"
DOG = [0.0, 0.0, 100.0, 100.0]
CAT1, CAT2 = [200.0, 200.0, 300.0, 300.0], [400.0, 100.0, 500.0, 200.0]
BIRD = [10.0, 300.0, 60.0, 350.0]
# image B: nested phrases "a man" (0, 5), "a red shirt" (9, 20), "a man in a red shirt" (0, 20)
CAPTION_B = "a man in a red shirt"
MAN, SHIRT, WHOLE = [100.0, 100.0, 200.0, 300.0], [100.0, 150.0, 200.0, 250.0], [100.0, 100.0, 200.0, 400.0]
FAR = [600.0, 0.0, 620.0, 20.0]  # IoU 0 with every box above


def region(box: Any, phrase: str, spans: Any) -> dict:
    return {"bbox": box, "phrase": phrase, "tokens_positive": spans}


def odvg_line(name: str, caption: str | None, regions: list[dict], size: tuple[int, int] | None = None) -> str:
    h, w = size or SIZES[name]
    obj: dict[str, Any] = {"filename": name, "height": h, "width": w}
    if caption is not None:
        obj["grounding"] = {"caption": caption, "regions": regions}
    return json.dumps(obj)


@pytest.fixture(scope="module")
def image_dir(data_dir: Path) -> Path:
    return data_dir / "coco128" / "images" / "train2017"


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> Path:
    """Two evaluable lines (A, B) and one of each kind of bad input."""
    lines = [
        odvg_line(
            A,
            CAPTION_A,
            [
                region(DOG, "a dog", [[0, 5]]),
                region(CAT1, "two cats", [[14, 22]]),  # two regions, one span: one phrase, two boxes
                region(CAT2, "cats", [[14, 22]]),
                region([BIRD], "a bird", [[27, 33]]),  # a list of boxes
            ],
        ),
        odvg_line(
            B,
            CAPTION_B,
            [region(MAN, "a man", [[0, 5]]), region(SHIRT, "a red shirt", [[9, 20]]), region(WHOLE, "all", [[0, 20]])],
        ),
        odvg_line(C, "a bowl", [region(DOG, "a bowl", [[0, 6]])], size=(640, 640)),  # annotated at the wrong size
        odvg_line(D, "a giraffe", [region(DOG, "a giraffe", [[0, 9]])]),  # the stub cannot read it
        '{"filename": "000000000030.jpg", "height": 10',  # malformed JSON
        odvg_line(A, "a dog", [region(DOG, "a dog", [[3, 90]])]),  # span outside the caption
        odvg_line(A, "a dog", [region(DOG, "a dog", [["0", 5]])]),  # span not ints
        odvg_line(A, "a dog", [{"bbox": DOG, "phrase": "a dog"}]),  # no tokens_positive
        json.dumps({"filename": "000000999999.jpg", "height": 9, "width": 9, "grounding": {"caption": "x"}}),
        json.dumps({"filename": A, "height": 426, "width": 640, "detection": {"instances": []}}),  # no caption
    ]
    path = tmp_path_factory.mktemp("grounding") / "hand.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class StubDetector:
    """Answers phrase ``text`` in image ``name`` with ``answers[(name, text)]`` (best first): what
    :func:`ground` asks of a detector, and a record of its calls."""

    def __init__(self, answers: dict[tuple[str, str], list[list[float]]], unreadable: tuple[str, ...] = ()) -> None:
        self._names: list[str] = []
        self._embeddings = None
        self._encoder_id = "precomputed"
        self.cfg = SimpleNamespace(text=TextConfig())
        self.answers, self.unreadable = answers, unreadable
        self.calls: list[tuple[str, list[str], Any]] = []

    def set_classes(self, names: list[str]) -> None:
        self._names = list(names)

    def predict(self, source: str, conf: float | None = None, keep_images: bool = True, **options: Any) -> list:
        name = Path(source).name
        self.calls.append((name, list(self._names), options.get("config")))
        if name in self.unreadable:
            raise ImageReadError(f"{source}: not a decodable image")
        rows = [
            (box, 0.9 - 0.05 * rank - 0.001 * k, k)  # descending within each class
            for k, text in enumerate(self._names)
            for rank, box in enumerate(self.answers.get((name, text), []))
        ]
        return [
            Detections(
                boxes=torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
                scores=torch.tensor([r[1] for r in rows], dtype=torch.float32),
                labels=torch.tensor([r[2] for r in rows], dtype=torch.int64),
                names=list(self._names),
                image_size=SIZES[name],
                path=source,
            )
        ]


# ------------------------------------------------------------------------------------ ground truth
def test_odvg_ground_truth_groups_phrases_and_names_bad_input(hand_built: Path, image_dir: Path) -> None:
    truth = read_grounding(hand_built, image_dir)
    assert truth.entries == 10
    assert [(i.path.name, i.caption) for i in truth.items] == [
        (A, CAPTION_A),
        (B, CAPTION_B),
        (C, "a bowl"),
        (D, "a giraffe"),
    ]
    a, b = truth.items[0], truth.items[1]
    assert a.image_size == (426, 640) and a.image_id == "000000000074"
    assert [(p.text, p.spans, p.boxes.tolist()) for p in a.phrases] == [
        ("a dog", ((0, 5),), [DOG]),
        ("two cats", ((14, 22),), [CAT1, CAT2]),
        ("a bird", ((27, 33),), [BIRD]),
    ]
    assert [(p.text, p.query_span) for p in b.phrases] == [
        ("a man", (0, 5)),
        ("a man in a red shirt", (0, 20)),
        ("a red shirt", (9, 20)),
    ]
    assert truth.phrases == 8 and truth.skipped_boxes == 3  # the dog boxes of lines 6-8: no usable span
    problems = "\n".join(f"{f}: {r}" for f, r in truth.problems)
    for expected in (
        "line 5: not valid JSON",
        "line 6 (000000000074.jpg), grounding region 0: tokens_positive span [3, 90] is not within the caption: "
        "needs 0 <= start < end <= 5",
        "line 7 (000000000074.jpg), grounding region 0: tokens_positive span ['0', 5] is not a [start, end] pair",
        "000000999999.jpg: image file not found",
        "image 000000000074.jpg (id 000000000074): 1 box(es) of ['a dog'] have no span into the caption",
        "image 000000000074.jpg (id 000000000074): no grounding caption (a detection entry): not evaluated",
    ):
        assert expected in problems, expected
    assert sum("no box with a span into the caption" in r for _, r in truth.problems) == 3  # lines 6, 7, 8

    # training reads the same file as before: every region's phrase is a box text, spans on the side
    data = read_odvg(hand_built, image_dir)
    first = data.records[0]
    assert first.texts == ["a dog", "two cats", "cats", "a bird"] and first.caption == CAPTION_A
    assert first.spans == [((0, 5),), ((14, 22),), ((14, 22),), ((27, 33),)]
    assert [r.texts for r in data.records[4:7]] == [["a dog"]] * 3 and data.records[4].spans == [()]


def test_mdetr_json_ground_truth(tmp_path: Path, image_dir: Path) -> None:
    """MDETR's layout: an image entry per caption, annotations (xywh) with tokens_positive;
    crowd boxes are no ground truth, a bad span is named."""
    data = {
        "images": [
            {"id": 1, "file_name": A, "height": 426, "width": 640, "caption": "two cats near a dog"},
            {"id": 2, "file_name": A, "height": 426, "width": 640, "caption": "the dog"},
            {"id": 3, "file_name": B, "height": 640, "width": 480},  # no caption: detection data
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [200, 200, 100, 100], "tokens_positive": [[0, 8]]},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [400, 100, 100, 100], "tokens_positive": [[0, 8]]},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "tokens_positive": [[14, 19]]},
            {
                "id": 13,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 300, 300],
                "iscrowd": 1,
                "tokens_positive": [[0, 8]],
            },
            {"id": 14, "image_id": 2, "category_id": 1, "bbox": [0, 0, 100, 100], "tokens_positive": [[0, 70]]},
            {"id": 15, "image_id": 2, "category_id": 1, "bbox": [0, 0, 100, 100], "tokens_positive": [[4, 7]]},
            {"id": 16, "image_id": 3, "category_id": 1, "bbox": [0, 0, 100, 100]},
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    path = tmp_path / "final_flickr_like.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    truth = read_grounding(path, image_dir)
    assert [(i.image_id, [(p.text, p.boxes.tolist()) for p in i.phrases]) for i in truth.items] == [
        (1, [("two cats", [CAT1, CAT2]), ("a dog", [DOG])]),
        (2, [("dog", [DOG])]),
    ]
    assert truth.skipped_boxes == 3  # the crowd box, the box with the bad span, the caption-less image's box
    problems = " | ".join(r for _, r in truth.problems)
    assert (
        "annotation id 14 (image 000000000074.jpg): tokens_positive span [0, 70] is not within the caption" in problems
    )
    assert "image 000000000589.jpg (id 3): no grounding caption" in problems


# ------------------------------------------------------------------------------------ known answers
def test_recall_and_precision_known_by_construction(hand_built: Path, image_dir: Path, tmp_path: Path) -> None:
    """Per phrase, its first matching box's rank is set by construction:

    ============================  ======================  ==========  =====  =====  ======  ===
    phrase (ground-truth boxes)   stub's boxes            first hit   R@1    R@5    R@10    P@1
    ============================  ======================  ==========  =====  =====  ======  ===
    a dog (1)                     IoU 0.4, IoU 0.6         rank 1      no     yes    yes     no
    two cats (2)                  the second cat           rank 0      yes    yes    yes     —
    a bird (1)                    none                     —           no     no     no      no
    a man (1)                     6 far boxes, the man     rank 6      no     no     yes     no
    a man in a red shirt (1)      the box                  rank 0      yes    yes    yes     yes
    a red shirt (1)               the box                  rank 0      yes    yes    yes     yes
    ============================  ======================  ==========  =====  =====  ======  ===

    So R@1 = 3/6, R@5 = 4/6, R@10 = 5/6 and P@1 = 2/5 (the one-box phrases); C (annotated at
    another size) and D (unreadable) are skipped.
    """
    stub = StubDetector(
        {
            (A, "a dog"): [[0.0, 0.0, 100.0, 40.0], [0.0, 0.0, 100.0, 60.0]],
            (A, "two cats"): [CAT2],
            (B, "a man"): [FAR] * 6 + [MAN] + [FAR] * 5,
            (B, "a red shirt"): [SHIRT],
            (B, "a man in a red shirt"): [WHOLE],
            (C, "a bowl"): [DOG],
        },
        unreadable=(D,),
    )
    cfg = EvalConfig(save_dir=str(tmp_path / "out"), progress=False)
    m = evaluate_grounding(stub, read_grounding(hand_built, image_dir), cfg)
    assert (m["R@1"], m["R@5"], m["R@10"], m["P@1"]) == (3 / 6, 4 / 6, 5 / 6, 2 / 5)
    assert (m["images"], m["phrases"], m["one_box_phrases"], m["boxes"], m["entries"]) == (2, 6, 5, 7, 10)
    reasons = {s["source"]: s["reason"] for s in m["skipped"]}
    assert "annotated as 640x640" in reasons[str(image_dir / C)] and "is 480x640" in reasons[str(image_dir / C)]
    assert reasons[str(image_dir / D)].startswith("unreadable image")
    # one predict per image, and one more for B's nested phrase; each asks exactly the ground-truth phrases
    assert [(name, names) for name, names, _ in stub.calls] == [
        (A, ["a dog", "two cats", "a bird"]),
        (B, ["a man", "a red shirt"]),
        (B, ["a man in a red shirt"]),
        (C, ["a bowl"]),
        (D, ["a giraffe"]),
    ]
    assert all(config == cfg.predict and config.conf == 0.001 for _, _, config in stub.calls)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(m)) and written["settings"]["top_k"] == 10
    assert stub._names == [] and stub._embeddings is None  # the vocabulary is put back

    # top_k = max(ks): with k up to 5 the man's hit at rank 6 is never looked at
    short = evaluate_grounding(stub, read_grounding(hand_built, image_dir), EvalConfig(progress=False), ks=(1, 5))
    assert (short["R@1"], short["R@5"], "R@10" in short) == (3 / 6, 4 / 6, False)
    # an IoU threshold above 0.6 loses the dog at rank 1; the exact boxes still match
    strict = evaluate_grounding(
        stub, read_grounding(hand_built, image_dir), EvalConfig(progress=False), iou_threshold=0.7
    )
    assert (strict["R@5"], strict["P@1"]) == (3 / 6, 2 / 5)


def test_nothing_to_evaluate(tmp_path: Path, image_dir: Path) -> None:
    path = tmp_path / "detection.jsonl"
    path.write_text(json.dumps({"filename": A, "height": 426, "width": 640, "detection": {"instances": []}}) + "\n")
    with pytest.raises(
        ValueError, match=r"no image with a grounding caption and spanned boxes to evaluate \(first problem"
    ):
        evaluate_grounding(StubDetector({}), path, EvalConfig(image_dir=str(image_dir), progress=False))
    with pytest.raises(ValueError, match="ks must be positive ints"):
        evaluate_grounding(StubDetector({}), path, EvalConfig(image_dir=str(image_dir), progress=False), ks=(0,))


def test_all_images_unreadable_gives_nan_written_as_null(hand_built: Path, image_dir: Path, tmp_path: Path) -> None:
    m = evaluate_grounding(
        StubDetector({}, unreadable=(A, B, C, D)),
        read_grounding(hand_built, image_dir),
        EvalConfig(save_dir=str(tmp_path), progress=False),
    )
    assert m["images"] == 0 and m["phrases"] == 0 and math.isnan(m["R@1"]) and math.isnan(m["P@1"])
    written = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert written["R@1"] is None and written["P@1"] is None


# ------------------------------------------------------------------------------------ the demo, end to end
@pytest.fixture(scope="module")
def demo() -> Detector:
    """The shipped demo with the offline approximate-CLIP encoder in its own templates (what
    ``--text-family approx_clip`` gives); an in-memory embedding cache."""
    det = Detector.from_pretrained("ovdet-demo", device="cpu")
    det.set_text_encoder(dataclasses.replace(det.cfg.text, family="approx_clip"))
    det.cache = EmbeddingCache()
    return det


@pytest.fixture(scope="module")
def coco128_set(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The first 8 composed coco128 captions, as ODVG (the jsonl and its image folder)."""
    json_path = data_dir / "coco128-coco" / "annotations" / "instances_train2017.json"
    require_data(json_path, "coco128's COCO json")
    composed = compose_grounding(json_path)
    out = write_odvg(composed.lines[:8], tmp_path_factory.mktemp("coco128") / "coco128_8.jsonl")
    return out, composed.image_root


def test_demo_end_to_end_equals_an_independent_recomputation(demo: Detector, coco128_set: tuple[Path, Path]) -> None:
    path, root = coco128_set
    cfg = EvalConfig(imgsz=320, progress=False)
    m = evaluate_grounding(demo, path, dataclasses.replace(cfg, image_dir=str(root)))

    # the same from the raw jsonl: ground() with the spans, then the metric functions
    predictions, truth = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        caption, regions = obj["grounding"]["caption"], obj["grounding"]["regions"]
        spans = sorted({tuple(r["tokens_positive"][0]) for r in regions})
        g = ground(
            demo, str(root / obj["filename"]), caption, spans=spans, conf=0.001, top_k=10, imgsz=320, optimize=False
        )[0]
        predictions.append(g.boxes)
        truth.append([np.array([r["bbox"] for r in regions if tuple(r["tokens_positive"][0]) == s]) for s in spans])
    recall = recall_at_k(predictions, truth)
    one = [(p, t) for pi, ti in zip(predictions, truth) for p, t in zip(pi, ti) if len(t) == 1]
    precision = precision_at_1([p for p, _ in one], [t for _, t in one])

    assert (m["images"], m["phrases"], m["one_box_phrases"], m["boxes"]) == (8, 15, 8, 30)
    assert recall["phrases"] == 15 and precision["expressions"] == 8
    assert (m["R@1"], m["R@5"], m["R@10"], m["P@1"]) == (recall["R@1"], recall["R@5"], recall["R@10"], precision["P@1"])
    assert 0.0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1.0 and 0.0 <= m["P@1"] <= 1.0
    assert m["R@1"] < 1.0 and m["R@10"] > 0.5  # neither trivially perfect nor broken
    assert demo.names and len(demo.names) == 80  # the vocabulary is put back


# ------------------------------------------------------------------------------------ the command
def test_cli_grounding(demo: Detector, coco128_set: tuple[Path, Path], tmp_path: Path) -> None:
    path, root = coco128_set
    small = tmp_path / "three.jsonl"
    small.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:3]), encoding="utf-8")
    argv = ["val", "--task", "grounding", "--data", str(small), "--image-dir", str(root), "--model", "ovdet-demo"]
    argv += ["--device", "cpu", "--text-family", "approx_clip", "--imgsz", "320", "--quiet"]
    assert main([*argv, "--save-dir", str(tmp_path / "run")]) == 0
    written = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    expected = evaluate_grounding(demo, small, EvalConfig(imgsz=320, image_dir=str(root), progress=False))
    for key in ("R@1", "R@5", "R@10", "P@1", "images", "phrases", "one_box_phrases", "boxes"):
        assert written[key] == expected[key], key
    assert written["images"] == 3 and written["settings"]["imgsz"] == 320 and written["settings"]["conf"] == 0.001


def test_cli_grounding_usage_errors(
    hand_built: Path, image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    base = ["val", "--task", "grounding", "--data", str(hand_built), "--save-dir", str(out), "--device", "cpu"]
    for extra, message in (
        (["--model", "ovdet-demo", "--results", str(hand_built)], "--results re-scores saved detections"),
        (["--model", "ovdet-demo", "--lvis"], "--lvis is a detection option"),
        ([], "ovdet val --task grounding needs --model"),
        (["--model", "ovdet-demo", "--conf", "2"], "eval.nms.conf"),
        (["--model", "ovdet-demo", "--image-dir", str(tmp_path / "nowhere")], "image folder for"),
    ):
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    detection = tmp_path / "detection.jsonl"
    detection.write_text(json.dumps({"filename": A, "height": 426, "width": 640}) + "\n", encoding="utf-8")
    argv = ["val", "--task", "grounding", "--data", str(detection), "--image-dir", str(image_dir)]
    assert main([*argv, "--model", "ovdet-demo", "--device", "cpu", "--save-dir", str(out)]) == 1
    assert "no image with a grounding caption" in capsys.readouterr().err
    assert not out.exists()  # nothing written for a command line that cannot work


def test_text_family_option() -> None:
    """``--text-family`` changes the family only (the model's templates stay); a config it cannot
    apply to is a usage error naming the flag."""
    from ovdet.cli.options import UsageError, text_config

    base = TextConfig(templates=("a {}",))
    assert text_config(base, None, None, family="approx_clip") == TextConfig(templates=("a {}",), family="approx_clip")
    assert text_config(base, None, None) is base
    tiny = TextConfig(custom=dict(embed_dim=8, context_length=16, vocab_size=49408, width=8, heads=1, layers=1))
    with pytest.raises(UsageError, match="--text-family / --text-model: text.custom"):
        text_config(tiny, None, None, family="approx_clip")
