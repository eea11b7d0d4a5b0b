"""Text search (issue #15): region embeddings, the faiss index, re-ranking against brute force,
incremental add / remove / save / load, refusal of a mismatched model, and the CLI.

The detector is the tiny config with BatchNorm statistics calibrated on real coco128 images, so
scores depend on the image content; images are real coco128 files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ovdet.cli import main
from ovdet.datatools import Index, IndexMismatchError, exhaustive_search, model_fingerprint
from ovdet.models.regions import region_outputs
from tests.helpers import make_detector

IMGSZ = 320
#: 20 queries: coco class names and free phrases (the tiny text tower maps each to its own direction).
QUERIES = [
    "person", "a dog", "cat", "car", "bus", "train", "airplane", "giraffe", "elephant", "zebra",
    "pizza", "donut", "broccoli", "cup", "bottle", "laptop", "bed", "clock", "umbrella", "a red car",
]  # fmt: skip


@pytest.fixture(scope="module")
def det():
    return make_detector(2)


@pytest.fixture()
def folder(tmp_path: Path, coco128_images: list[Path]) -> Path:
    src = tmp_path / "images"
    src.mkdir()
    for p in coco128_images[:12]:
        shutil.copy(p, src / p.name)
    return src


def _index(det, **kw) -> Index:
    kw.setdefault("vocabulary", "coco")
    return Index(det, imgsz=IMGSZ, **kw)


# ------------------------------------------------------------------------------ region embeddings
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("fused", [False, True])
def test_region_embeddings_give_the_head_logits(version: int, fused: bool, coco128_images: list[Path]) -> None:
    """``<e, t> + bias`` is the head's logit for every class; boxes and scores equal forward's."""
    import cv2

    from ovdet.data.letterbox import letterbox, to_tensor

    model = make_detector(version).model
    if fused:
        model = copy.deepcopy(model).fuse()
    x = to_tensor([letterbox(cv2.imread(str(p)), 256, auto=False)[0] for p in coco128_images[:2]])
    text = torch.nn.functional.normalize(
        torch.randn(6, model.cfg.embed_dim, generator=torch.Generator().manual_seed(3)), dim=-1
    )
    raw = model(x, text)
    boxes, scores = model.decode(raw)
    r = region_outputs(model, x, text)
    assert r.embeddings.shape == (2, raw.cls_logits.shape[2], model.cfg.embed_dim)
    logits = torch.einsum("bad,kd->bka", r.embeddings, text) + r.bias
    torch.testing.assert_close(logits, raw.cls_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(r.scores, scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r.boxes, boxes, rtol=1e-4, atol=1e-2)
    assert scores.std() > 1e-3  # image-dependent scores, not a collapsed random model


# ------------------------------------------------------------------------------ exactness
def test_index_scores_equal_brute_force_when_the_query_is_the_vocabulary(det, folder: Path) -> None:
    """With the query as the indexing vocabulary the neck runs exactly as brute force does, and the
    best anchor is always a kept region: index scores are the detector's, image by image."""
    query = "a dog"
    index = _index(det, vocabulary=[query], regions=8)
    assert index.add(folder).added == 12
    res = index.search(query, k=12, rerank=False)
    want = dict(exhaustive_search(det, sorted(folder.iterdir()), query, IMGSZ))
    assert len(res.hits) == 12 and not any(h.exact for h in res.hits)
    for h in res.hits:
        assert h.index_score == pytest.approx(want[h.path], abs=2e-5), h.path
    assert [h.index_score for h in res.hits] == sorted((h.index_score for h in res.hits), reverse=True)


def test_rerank_returns_the_detectors_scores_and_boxes(det, folder: Path) -> None:
    query = "a bus"
    names = det.names
    index = _index(det)
    index.add(folder)
    res = index.search(query, k=5, candidates=12)
    assert res.candidates == 12 and len(res.hits) == 5 and all(h.exact for h in res.hits)
    assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
    truth = exhaustive_search(det, sorted(folder.iterdir()), query, IMGSZ)
    # every image was a candidate: the re-ranked top 5 is brute force's top 5, scores and all
    assert [h.path for h in res.hits] == [p for p, _ in truth[:5]]
    np.testing.assert_allclose([h.score for h in res.hits], [s for _, s in truth[:5]], atol=1e-5)
    emb = det.encode([query])
    other = copy.copy(det)  # the detector's own predict with the query as its one class
    other.set_class_embeddings([query], emb)
    best = other.predict(res.hits[0].path, conf=0.0, imgsz=IMGSZ, max_det=1)[0]
    np.testing.assert_allclose(res.hits[0].box, best.boxes[0].numpy(), atol=1e-3)
    assert det.names == names  # the user's detector kept its vocabulary


def test_recall_at_10_against_brute_force_on_coco128(det, coco128_images: list[Path]) -> None:
    """The issue's quality bar: recall@10 of re-ranked search vs brute force, 20 queries, coco128."""
    index = _index(det, vocabulary="lvis")
    report = index.add(coco128_images)
    assert report.added == 128 and not report.skipped
    counts = [len(index.image_regions(i)) for i in range(128)]
    assert sum(counts) == index.num_regions and max(counts) == 64 and min(counts) >= 16
    recalls, raw = [], []
    for q in QUERIES:
        truth = {p for p, _ in exhaustive_search(det, coco128_images, q, IMGSZ)[:10]}
        recalls.append(len(truth & {h.path for h in index.search(q, k=10).hits}) / 10)
        raw.append(len(truth & {h.path for h in index.search(q, k=10, rerank=False).hits}) / 10)
    print(f"recall@10 re-ranked {np.mean(recalls):.3f} (min {min(recalls):.1f}), index only {np.mean(raw):.3f}")
    assert np.mean(recalls) >= 0.9
    assert np.mean(recalls) >= np.mean(raw)


# ------------------------------------------------------------------------------ incremental
def test_incremental_add_save_load_remove(det, folder: Path, tmp_path: Path) -> None:
    files = sorted(folder.iterdir())
    full = _index(det)
    full.add(files)
    part = _index(det)
    assert part.add(files[:6]).added == 6
    part.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix", det)
    assert len(loaded) == 6 and loaded.num_regions == part.num_regions
    report = loaded.add(folder)  # the old 6 are not redone
    assert (report.added, report.updated, report.unchanged) == (6, 0, 6)
    for q in ("person", "a red car"):
        a, b = full.search(q, k=12, rerank=False), loaded.search(q, k=12, rerank=False)
        assert [h.path for h in a.hits] == [h.path for h in b.hits]
        np.testing.assert_allclose([h.index_score for h in a.hits], [h.index_score for h in b.hits], atol=2e-5)
    # a changed file is re-embedded, under a new id
    old_id = loaded.image_id(files[0])
    shutil.copy(files[1], files[0])
    report = loaded.add(files[0])
    assert (report.added, report.updated) == (0, 1)
    assert loaded.image_id(files[0]) not in (None, old_id) and len(loaded) == 12
    # remove by id and by path; removed images never come back from a search
    before = loaded.num_regions
    gone = sum(len(loaded.image_regions(loaded.image_id(f))) for f in files[2:4])
    assert loaded.remove([loaded.image_id(files[2]), str(files[3]), 10_000]) == 2
    assert len(loaded) == 10 and loaded.num_regions == before - gone
    loaded.save(tmp_path / "ix")
    again = Index.load(tmp_path / "ix", det)
    found = {h.path for h in again.search("person", k=12, rerank=False).hits}
    assert len(found) == 10 and str(files[2].resolve()) not in found and str(files[3].resolve()) not in found


def test_unreadable_files_are_counted_and_missing_candidates_reported(det, folder: Path) -> None:
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    index = _index(det)
    report = index.add(folder)
    assert report.added == 12 and len(report.skipped) == 1 and "broken.jpg" in report.skipped[0][1]
    assert "1 skipped" in report.text()
    top = index.search("person", k=3, rerank=False).hits[0]
    os.remove(top.path)
    res = index.search("person", k=3, candidates=12)
    assert [p for p, _ in res.skipped] == [top.path]
    assert top.path not in {h.path for h in res.hits}  # not re-scored: after every re-ranked one
    assert len(res.hits) == 3 and all(h.exact for h in res.hits)


@pytest.mark.parametrize("spec", ["IVF4,Flat", "SQ8"])
def test_other_faiss_indexes(det, folder: Path, tmp_path: Path, spec: str) -> None:
    flat, other = _index(det), _index(det, faiss_index=spec)
    flat.add(folder)
    other.add(folder)
    other.nprobe = 4  # every list: an exhaustive search, so the ranking is the flat one
    q = "giraffe"
    a, b = flat.search(q, k=5, rerank=False), other.search(q, k=5, rerank=False)
    assert [h.path for h in a.hits][:3] == [h.path for h in b.hits][:3]
    other.remove([b.hits[0].image_id])
    other.save(tmp_path / "ix")
    again = Index.load(tmp_path / "ix", det)
    assert len(again) == 11 and b.hits[0].path not in {h.path for h in again.search(q, k=11, rerank=False).hits}


# ------------------------------------------------------------------------------ refusals
def test_a_mismatched_model_or_text_encoder_is_refused(det, folder: Path, tmp_path: Path) -> None:
    index = _index(det)
    index.add(sorted(folder.iterdir())[:2])
    index.save(tmp_path / "ix")
    other = make_detector(2)
    with torch.no_grad():
        other.model.head.contrast[0].bias.add_(0.5)
    with pytest.raises(IndexMismatchError, match="other model weights"):
        Index.load(tmp_path / "ix", other)
    fused = copy.deepcopy(det)
    fused.model = copy.deepcopy(det.model).fuse()
    assert model_fingerprint(fused.model) == index.fingerprint  # fusing changes nothing
    assert len(Index.load(tmp_path / "ix", fused)) == 2
    text = make_detector(2)
    text.set_text_encoder(dataclasses.replace(det.cfg.text, seed=1))
    with pytest.raises(IndexMismatchError, match="text encoder"):
        Index.load(tmp_path / "ix", text)


def test_bad_index_files_and_arguments(det, folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no index"):
        Index.load(tmp_path, det)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Index.load(tmp_path, det)
    index = _index(det)
    index.add(sorted(folder.iterdir())[:2])
    index.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "index.json").read_text())
    manifest["counts"]["regions"] += 1
    (tmp_path / "ix" / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="disagree"):
        Index.load(tmp_path / "ix", det)
    with pytest.raises(ValueError, match="non-empty"):
        index.search("  ")
    with pytest.raises(ValueError, match="regions"):
        _index(det, regions=0)
    with pytest.raises(ValueError, match="faiss index 'NoSuchIndex'"):
        _index(det, faiss_index="NoSuchIndex")
    with pytest.raises(ValueError, match="trained"):
        _index(det, faiss_index="IVF4096,Flat").add(sorted(folder.iterdir())[:1])


# ------------------------------------------------------------------------------ command line
def test_cli_index_and_search(det, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = det.save(tmp_path / "model")
    out = tmp_path / "ix"
    base = ["index", "--model", str(model), "--out", str(out), "--device", "cpu", "--quiet", "--imgsz", str(IMGSZ)]
    files = sorted(folder.iterdir())
    part = tmp_path / "part"
    part.mkdir()
    for f in files[:4]:
        shutil.copy(f, part / f.name)
    assert main([*base, "--source", str(part), "--vocabulary", "coco", "--regions", "16"]) == 0
    text = capsys.readouterr().out
    assert "4 added, 0 updated, 0 unchanged, 0 skipped" in text and "4 images, 64 regions" in text
    # adding to it: the model comes from the index, settings must not change
    assert main(["index", "--source", str(folder), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert "12 added" in capsys.readouterr().out
    assert main([*base, "--source", str(folder), "--regions", "8"]) == 2
    assert "other settings" in capsys.readouterr().err

    page, js = tmp_path / "hits.html", tmp_path / "hits.json"
    argv = ["search", str(out), "person", "a red car", "-k", "3", "--html", str(page), "--json", str(js)]
    assert main([*argv, "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "'person': 3 of 16 images" in text and "'a red car': 3 of 16 images" in text
    results = json.loads(js.read_text())
    assert [len(r["hits"]) for r in results] == [3, 3] and all(h["exact"] for r in results for h in r["hits"])
    assert page.read_text().count("data:image/jpeg;base64,") == 6
    # a model the index was not built with is refused, with the reason
    other = make_detector(2)
    with torch.no_grad():
        other.model.head.contrast[1].logit_scale.add_(0.1)
    assert main(["search", str(out), "person", "--model", str(other.save(tmp_path / "other")), "--device", "cpu"]) == 2
    assert "other model weights" in capsys.readouterr().err
