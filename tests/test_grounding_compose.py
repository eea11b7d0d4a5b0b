"""The real grounding set composed from coco128's COCO boxes (issue #32, item 5): English phrases
(articles, number words, plurals), exact spans, every region a COCO annotation of its category,
every instance of a mentioned category counted, the selection rules, determinism, the ODVG file
read back as ground truth, and the tool.

The expectations are recomputed here from the raw json (``json.load``, not ovdet's reader), so a
reader or composer bug cannot hide behind itself.
"""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ovdet.grounding.compose import (
    MAX_CATEGORIES,
    MIN_BOX_AREA,
    compose_grounding,
    count_phrase,
    indefinite_article,
    plural,
    write_odvg,
)
from ovdet.grounding.truth import read_grounding
from tests.helpers import require_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coco_json(data_dir: Path) -> Path:
    path = data_dir / "coco128-coco" / "annotations" / "instances_train2017.json"
    return require_data(path, "coco128's COCO json")


@pytest.fixture(scope="module")
def raw(coco_json: Path) -> dict:
    """The json as json.load reads it: per image id its annotations, and the category names."""
    data = json.loads(coco_json.read_text(encoding="utf-8"))
    anns: dict[int, list[dict]] = defaultdict(list)
    for a in data["annotations"]:
        anns[a["image_id"]].append(a)
    return {
        "images": {i["id"]: i for i in data["images"]},
        "anns": anns,
        "names": {c["id"]: c["name"] for c in data["categories"]},
    }


@pytest.fixture(scope="module")
def composed(coco_json: Path):
    return compose_grounding(coco_json)


# ------------------------------------------------------------------------------------ English
@pytest.mark.parametrize(
    ("name", "count", "phrase"),
    [
        ("dog", 1, "a dog"),
        ("umbrella", 1, "an umbrella"),
        ("orange", 1, "an orange"),
        ("airplane", 1, "an airplane"),
        ("hot dog", 1, "a hot dog"),
        ("person", 1, "a person"),
        ("person", 2, "two people"),
        ("bus", 3, "three buses"),
        ("wine glass", 2, "two wine glasses"),
        ("couch", 2, "two couches"),
        ("toothbrush", 4, "four toothbrushes"),
        ("knife", 2, "two knives"),
        ("mouse", 5, "five mice"),
        ("sheep", 6, "six sheep"),
        ("teddy bear", 12, "twelve teddy bears"),
        ("kite", 13, "13 kites"),
        ("skis", 1, "a pair of skis"),
        ("scissors", 2, "two pairs of scissors"),
        ("broccoli", 1, "some broccoli"),
        ("broccoli", 4, "some broccoli"),
        ("strawberry", 2, "two strawberries"),
        ("toy", 2, "two toys"),
    ],
)
def test_count_phrase(name: str, count: int, phrase: str) -> None:
    assert count_phrase(name, count) == phrase


def test_articles_and_plurals() -> None:
    assert [indefinite_article(w) for w in ("elephant", "oven", "hour", "unicorn", "one-way sign", "tv", "Apple")] == [
        "an",
        "an",
        "an",
        "a",
        "a",
        "a",
        "an",
    ]
    assert [plural(w) for w in ("box", "dish", "dining table", "cell phone", "day", "leaf")] == [
        "boxes",
        "dishes",
        "dining tables",
        "cell phones",
        "days",
        "leaves",
    ]
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        count_phrase("dog", 0)


# ------------------------------------------------------------------------------------ the set
def test_spans_point_exactly_at_the_phrases(composed) -> None:
    assert len(composed.lines) == 124 and composed.images == 128
    for line in composed.lines:
        caption = line["grounding"]["caption"]
        spans = []
        for region in line["grounding"]["regions"]:
            ((start, end),) = region["tokens_positive"]
            assert caption[start:end] == region["phrase"], line["filename"]
            spans.append((start, end))
        distinct = sorted(set(spans))
        assert 1 <= len(distinct) <= MAX_CATEGORIES
        assert all(a[1] < b[0] for a, b in zip(distinct, distinct[1:]))  # disjoint, in caption order
        glue = [caption[a[1] : b[0]] for a, b in zip(distinct, distinct[1:])]
        assert glue == [" next to ", " and "][: len(glue)]
        assert distinct[0][0] == 0 and distinct[-1][1] == len(caption)  # nothing else in the caption


def test_every_region_is_a_coco_annotation_and_every_instance_is_counted(composed, raw) -> None:
    """Each region's box is a non-crowd annotation of the image (within the 1e-3 the file rounds
    to); the phrase is ``count_phrase(its category, the image's non-crowd boxes of it)``, and every
    one of those boxes is a region of that phrase."""
    for line in composed.lines:
        anns = raw["anns"][line["image_id"]]
        by_phrase: dict[str, list[dict]] = defaultdict(list)
        for region in line["grounding"]["regions"]:
            x1, y1, x2, y2 = region["bbox"]
            match = [
                a
                for a in anns
                if not a["iscrowd"]
                and np.allclose(
                    [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                    [x1, y1, x2, y2],
                    atol=1e-3,
                )
            ]
            assert len(match) >= 1, (line["filename"], region)
            by_phrase[region["phrase"]].append(match[0])
        for phrase, matched in by_phrase.items():
            (category,) = {a["category_id"] for a in matched}
            same = [a for a in anns if a["category_id"] == category]
            assert not any(a["iscrowd"] for a in same)  # a category with a crowd region is never mentioned
            assert len({a["id"] for a in matched}) == len(matched) == len(same), (line["filename"], phrase)
            assert phrase == count_phrase(raw["names"][category], len(same))


def test_selection_rules(composed, raw) -> None:
    """The mentioned categories are, from the raw json: those with a non-crowd box of >= 16² px²
    and no crowd region, by largest box (ties: category id), at most three; images without any
    are the skipped ones."""
    lines = {line["image_id"]: line for line in composed.lines}
    skipped = []
    for image_id, image in sorted(raw["images"].items(), key=lambda kv: kv[1]["file_name"]):
        anns = raw["anns"][image_id]
        crowd = {a["category_id"] for a in anns if a["iscrowd"]}
        largest: dict[int, float] = {}
        for a in anns:
            if not a["iscrowd"] and a["category_id"] not in crowd:
                largest[a["category_id"]] = max(largest.get(a["category_id"], 0.0), a["bbox"][2] * a["bbox"][3])
        chosen = sorted((c for c, v in largest.items() if v >= MIN_BOX_AREA), key=lambda c: (-largest[c], c))[:3]
        if not chosen:
            skipped.append(image["file_name"])
            assert image_id not in lines
            continue
        expected = [count_phrase(raw["names"][c], sum(a["category_id"] == c for a in anns)) for c in chosen]
        got = list(dict.fromkeys(r["phrase"] for r in lines[image_id]["grounding"]["regions"]))
        assert got == expected, image["file_name"]
        assert lines[image_id]["filename"] == image["file_name"]
        assert (lines[image_id]["height"], lines[image_id]["width"]) == (image["height"], image["width"])
    assert (
        [name for name, _ in composed.skipped]
        == skipped
        == [
            "000000000250.jpg",
            "000000000357.jpg",
            "000000000438.jpg",
            "000000000508.jpg",
        ]
    )
    captions = {line["filename"]: line["grounding"]["caption"] for line in composed.lines}
    assert captions["000000000009.jpg"] == "three bowls next to some broccoli and four oranges"
    assert captions["000000000074.jpg"] == "a bicycle next to a dog and six people"


def test_options(coco_json: Path, composed) -> None:
    one = compose_grounding(coco_json, max_categories=1)
    assert len(one.lines) == len(composed.lines)
    for a, b in zip(one.lines, composed.lines):
        assert a["grounding"]["caption"] == b["grounding"]["regions"][0]["phrase"]  # the biggest category alone
    strict = compose_grounding(coco_json, min_box_area=100_000)  # only very large objects are mentioned
    assert 0 < len(strict.lines) < len(composed.lines)
    with pytest.raises(ValueError, match="max_categories must be >= 1, got 0"):
        compose_grounding(coco_json, max_categories=0)


def test_deterministic_and_read_back(coco_json: Path, composed, tmp_path: Path) -> None:
    a = write_odvg(composed.lines, tmp_path / "a.jsonl")
    b = write_odvg(compose_grounding(coco_json).lines, tmp_path / "b.jsonl")
    assert a.read_bytes() == b.read_bytes()
    assert len(a.read_text(encoding="utf-8").splitlines()) == 124

    truth = read_grounding(a, composed.image_root)
    assert len(truth.items) == 124 and truth.entries == 124 and truth.skipped_boxes == 0 and not truth.problems
    assert truth.phrases == 271 and sum(len(p.boxes) for i in truth.items for p in i.phrases) == 596
    for item, line in zip(truth.items, composed.lines):
        assert item.caption == line["grounding"]["caption"] and item.path == composed.image_root / line["filename"]
        for phrase in item.phrases:
            regions = [r for r in line["grounding"]["regions"] if r["tokens_positive"] == [list(phrase.spans[0])]]
            assert phrase.text == regions[0]["phrase"] and len(phrase.spans) == 1
            np.testing.assert_allclose(phrase.boxes, [r["bbox"] for r in regions], atol=1e-4)


def test_tool_writes_the_set(coco_json: Path, composed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("build_grounding_set", REPO / "tools" / "build_grounding_set.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "set.jsonl"
    assert tool.main(["--coco", str(coco_json), "--out", str(out)]) == 0
    assert out.read_bytes() == write_odvg(composed.lines, tmp_path / "ref.jsonl").read_bytes()
    printed = capsys.readouterr().out
    assert "128 images: 124 captions, 271 phrases, 596 boxes" in printed
    assert "skipped: 000000000357.jpg: no non-crowd category with a box of >= 256 px²" in printed
