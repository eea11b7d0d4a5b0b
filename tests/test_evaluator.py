"""COCO/LVIS evaluator: reference numbers, perfect/shifted detections, Fixed AP, bad input, files, CLI."""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from ovdet.evaluation import COCOEvaluator, LVISEvaluator, evaluate_results_file, plot_pr_curves, save_results
from ovdet.structures import Detections

BACKENDS = ["pycocotools", "faster_coco_eval"]
STAT_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


# ---------------------------------------------------------------------------------------------
# data


@pytest.fixture(scope="module")
def vectors(data_dir: Path) -> dict:
    d = data_dir / "coco-eval-vectors" / "cocoapi_val2014_100"
    return {
        "gt_path": d / "instances_val2014_100.json",
        "results_path": d / "instances_val2014_fakebbox100_results.json",
        "gt": json.loads((d / "instances_val2014_100.json").read_text()),
        "results": json.loads((d / "instances_val2014_fakebbox100_results.json").read_text()),
        "expected": json.loads((d / "expected_stats_pycocotools.json").read_text())["bbox"],
    }


@pytest.fixture(scope="module")
def coco128(data_dir: Path) -> dict:
    path = data_dir / "coco128-coco" / "annotations" / "instances_train2017.json"
    return {"path": path, "gt": json.loads(path.read_text())}


@pytest.fixture(scope="module")
def lvis_gt(data_dir: Path) -> dict:
    pytest.importorskip("lvis", reason="LVIS evaluation needs the lvis package (pip install 'ovdet[eval]')")
    path = data_dir / "coco-eval-vectors" / "lvis_val_100" / "lvis_val_100.json"
    return {"path": path, "gt": json.loads(path.read_text())}


def _by_image(results: list[dict]) -> dict:
    out = defaultdict(list)
    for r in results:
        out[r["image_id"]].append(r)
    return out


def _perfect_detections(gt: dict, names: list[str], cat_ids: list[int], shift_x: float = 0.0):
    """Per GT image: Detections with every non-crowd GT box (xyxy float32, score 1), x shifted by ``shift_x``."""
    label = {c: i for i, c in enumerate(cat_ids)}
    anns = defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            anns[a["image_id"]].append(a)
    ids, dets = [], []
    for img in gt["images"]:
        rows = anns[img["id"]]
        xyxy = np.array([a["bbox"] for a in rows], np.float64).reshape(-1, 4)  # (N, 4) xywh for now
        xyxy[:, 2:] += xyxy[:, :2]
        xyxy[:, [0, 2]] += shift_x
        ids.append(img["id"])
        dets.append(
            Detections(
                xyxy, np.ones(len(rows)), [label[a["category_id"]] for a in rows], names, (img["height"], img["width"])
            )
        )
    return ids, dets


def _direct_cocoeval(gt: dict, results: list[dict]) -> list[float]:
    """pycocotools called directly, as a user would, without the evaluator."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        e = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [float(s) for s in e.stats]


# ---------------------------------------------------------------------------------------------
# COCO reference numbers (cocoapi fake detections)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vectors_through_process_result_dicts(vectors, backend):
    ev = COCOEvaluator(vectors["gt"], backend=backend)
    by_image = _by_image(vectors["results"])
    ids = [img["id"] for img in vectors["gt"]["images"]]  # images without detections included
    for start in range(0, len(ids), 16):  # batches, as a loader would give them
        batch = ids[start : start + 16]
        ev.process(batch, [by_image[i] for i in batch])
    m = ev.evaluate()
    assert [k for k in m if k in STAT_KEYS] == STAT_KEYS
    for k in STAT_KEYS:
        assert m[k] == pytest.approx(vectors["expected"][k], abs=1e-6), k
    assert m["detections"] == len(vectors["results"])
    assert m["dropped"]["total"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_vectors_through_process_xyxy_arrays(vectors, backend):
    """Detections-like mappings: xyxy float64 boxes and class indices into category_ids."""
    ev = COCOEvaluator(vectors["gt_path"], backend=backend)
    label = {c: i for i, c in enumerate(ev.category_ids)}
    by_image = _by_image(vectors["results"])
    ids, items = [], []
    for img in vectors["gt"]["images"]:
        rows = by_image[img["id"]]
        xyxy = np.array([r["bbox"] for r in rows], np.float64).reshape(-1, 4)  # (N, 4)
        xyxy[:, 2:] += xyxy[:, :2]
        ids.append(img["id"])
        items.append(
            {
                "boxes": xyxy,
                "scores": np.array([r["score"] for r in rows]),
                "labels": np.array([label[r["category_id"]] for r in rows], np.int64),
            }
        )
    ev.process(ids, items)
    m = ev.evaluate()
    for k in STAT_KEYS:
        assert m[k] == pytest.approx(vectors["expected"][k], abs=1e-6), k


@pytest.mark.parametrize("backend", BACKENDS)
def test_vectors_through_results_file(vectors, backend):
    m = evaluate_results_file(vectors["results_path"], vectors["gt_path"], backend=backend)
    for k in STAT_KEYS:
        assert m[k] == pytest.approx(vectors["expected"][k], abs=1e-6), k


def test_backends_agree_per_class(vectors):
    a = evaluate_results_file(vectors["results_path"], vectors["gt"], backend="pycocotools")["per_class"]
    b = evaluate_results_file(vectors["results_path"], vectors["gt"], backend="faster_coco_eval")["per_class"]
    assert [r[:2] for r in a] == [r[:2] for r in b]
    assert len(a) == len(vectors["gt"]["categories"]) == 80
    ap_a, ap_b = np.array([r[2] for r in a]), np.array([r[2] for r in b])
    present = {ann["category_id"] for ann in vectors["gt"]["annotations"]}
    # NaN exactly for the categories without ground truth (pycocotools' -1), excluded from the mean.
    absent = sorted({c["id"] for c in vectors["gt"]["categories"]} - present)
    assert [cid for cid, _, ap in a if math.isnan(ap)] == absent
    np.testing.assert_allclose(ap_a, ap_b, atol=1e-12, equal_nan=True)
    assert np.nanmean(ap_a) == pytest.approx(vectors["expected"]["AP"], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# COCO: perfect and shifted detections on coco128


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_give_ap_one(coco128, backend):
    ev = COCOEvaluator(coco128["path"], backend=backend)
    ids, dets = _perfect_detections(coco128["gt"], ev.names, ev.category_ids)
    ev.process(ids[:64], dets[:64])
    ev.process(ids[64:], dets[64:])
    m = ev.evaluate()
    for k in ("AP", "AP50", "AP75"):
        assert m[k] == pytest.approx(1.0, abs=1e-9), k
    assert m["detections"] == sum(not a.get("iscrowd", 0) for a in coco128["gt"]["annotations"]) == 929


@pytest.mark.parametrize("shift", [2.0, 10.0])
def test_shifted_detections_match_direct_pycocotools(coco128, shift):
    ev = COCOEvaluator(coco128["gt"])
    ids, dets = _perfect_detections(coco128["gt"], ev.names, ev.category_ids, shift_x=shift)
    ev.process(ids, dets)
    m = ev.evaluate()
    # The same float32 boxes converted to xywh independently of the evaluator.
    direct_results = []
    for image_id, d in zip(ids, dets):
        xyxy = d.boxes.numpy().astype(np.float64)
        for box, score, label in zip(xyxy, d.scores.tolist(), d.labels.tolist()):
            x1, y1, x2, y2 = box.tolist()
            direct_results.append(
                {
                    "image_id": image_id,
                    "category_id": ev.category_ids[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    direct = _direct_cocoeval(coco128["gt"], direct_results)
    assert [m[k] for k in STAT_KEYS] == pytest.approx(direct, abs=1e-12)
    assert m["AP"] < 1.0
    assert m["AP50"] > 0.0


def test_larger_shift_scores_lower(coco128):
    aps = []
    for shift in (0.0, 2.0, 10.0):
        ev = COCOEvaluator(coco128["gt"], backend="faster_coco_eval")
        ev.process(*_perfect_detections(coco128["gt"], ev.names, ev.category_ids, shift_x=shift))
        aps.append(ev.evaluate()["AP"])
    assert aps[0] > aps[1] > aps[2]


# ---------------------------------------------------------------------------------------------
# LVIS


def _lvis_perfect(gt: dict, score: float = 1.0) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
        for a in gt["annotations"]
    ]


def test_lvis_perfect_detections(lvis_gt):
    ev = LVISEvaluator(lvis_gt["path"])
    ev.process_results(_lvis_perfect(lvis_gt["gt"]))
    m = ev.evaluate()
    for k in ("AP", "AP50", "AP75", "APr", "APc", "APf", "AR@300"):
        assert m[k] == pytest.approx(1.0, abs=1e-9), k
    present = {a["category_id"] for a in lvis_gt["gt"]["annotations"]}
    scored = [(cid, ap) for cid, _, ap in m["per_class"] if not math.isnan(ap)]
    assert {cid for cid, _ in scored} == present  # AP over the categories present, NaN elsewhere
    assert all(ap == pytest.approx(1.0, abs=1e-9) for _, ap in scored)
    assert len(m["per_class"]) == 1230
    assert m["capped"] == 0


def _cap_binding_case(gt: dict) -> tuple[list[dict], int, int]:
    """Perfect detections, except one image also gets 400 high-scoring misses of one of its categories.

    Returns (results, image id, number of true detections in that image). In that image the true
    boxes score 0.5 and the misses 0.9, so the 300-per-image cap keeps only misses.
    """
    counts = defaultdict(int)
    for a in gt["annotations"]:
        counts[a["image_id"]] += 1
    image_id = max(counts, key=counts.get)
    results = _lvis_perfect(gt)
    for r in results:
        if r["image_id"] == image_id:
            r["score"] = 0.5
    # A category exhaustively annotated in that image: LVIS ignores unmatched detections of the
    # image's not_exhaustive_category_ids, which would make the misses free.
    img = next(i for i in gt["images"] if i["id"] == image_id)
    cat = next(
        a["category_id"]
        for a in gt["annotations"]
        if a["image_id"] == image_id and a["category_id"] not in img["not_exhaustive_category_ids"]
    )
    # 1x1 boxes along the top-left: IoU with any real box is far below 0.5, so all are false positives.
    results += [
        {"image_id": image_id, "category_id": cat, "bbox": [float(i % 20), float(i // 20), 1.0, 1.0], "score": 0.9}
        for i in range(400)
    ]
    return results, image_id, counts[image_id]


def test_lvis_fixed_ap_differs_where_the_image_cap_binds(lvis_gt):
    results, image_id, n_true = _cap_binding_case(lvis_gt["gt"])
    std = LVISEvaluator(lvis_gt["gt"])
    std.process_results(results)
    m_std = std.evaluate()
    fixed = LVISEvaluator(lvis_gt["gt"], fixed_ap=True)
    fixed.process_results(results)
    m_fixed = fixed.evaluate()
    # Standard AP keeps that image's top 300 (all misses) and loses its true boxes: recall < 1.
    # Fixed AP keeps everything (< 10,000 per class): full recall, precision hurt only by the misses.
    assert m_std["capped"] == 400 + n_true - 300
    assert m_fixed["capped"] == 0
    assert m_std["AR@300"] < 1.0
    assert m_fixed["AR@all"] == pytest.approx(1.0, abs=1e-9)
    assert m_std["AP"] < m_fixed["AP"] < 1.0
    # A per-class budget below the 400 misses + true boxes binds in Fixed AP too.
    small = LVISEvaluator(lvis_gt["gt"], fixed_ap=True, topk_per_class=100)
    small.process_results(results)
    assert small.evaluate()["capped"] > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # lvis calls the deprecated Logger.warn
def test_lvis_matches_the_unmodified_lvis_pipeline(lvis_gt, monkeypatch):
    """Our result construction, per-image cap and numpy-2 accumulate vs lvis' own LVISResults/LVISEval."""
    from lvis import LVIS, LVISEval, LVISResults

    results, _, _ = _cap_binding_case(lvis_gt["gt"])
    rng = np.random.default_rng(0)
    for r in results:  # jitter so IoUs spread over the thresholds
        r["bbox"] = [v + float(rng.normal(0, 2)) for v in r["bbox"][:2]] + r["bbox"][2:]
        r["score"] = r["score"] * float(rng.uniform(0.5, 1.0))
    ev = LVISEvaluator(lvis_gt["path"])
    ev.process_results(results)
    mine = ev.evaluate()

    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 accumulate() predates numpy 1.24
    gt = LVIS(str(lvis_gt["path"]))
    ref = LVISEval(gt, LVISResults(gt, copy.deepcopy(results), max_dets=300), iou_type="bbox")
    ref.run()
    for k, v in ref.results.items():
        assert mine[k] == pytest.approx(float(v), abs=1e-12), k
    np.testing.assert_array_equal(ev.precision, ref.eval["precision"])
    assert 0.1 < mine["AP"] < 0.9


# ---------------------------------------------------------------------------------------------
# bad input


def _vector_items(vectors) -> tuple[list[int], list[list[dict]]]:
    by_image = _by_image(vectors["results"])
    ids = [img["id"] for img in vectors["gt"]["images"]]
    return ids, [copy.deepcopy(by_image[i]) for i in ids]


def _as_xyxy_mapping(rows: list[dict], category_ids: list[int]) -> dict:
    """COCO result dicts of one image → {"boxes" (N, 4) xyxy, "scores", "labels"}; category None → label 80."""
    label = {c: i for i, c in enumerate(category_ids)}
    xyxy = np.array([r["bbox"] for r in rows], np.float64).reshape(-1, 4)  # (N, 4) xywh for now
    xyxy[:, 2:] += xyxy[:, :2]
    return {
        "boxes": xyxy,
        "scores": [r["score"] for r in rows],
        "labels": [label.get(r["category_id"], len(category_ids)) for r in rows],
    }


def test_unknown_ids_dropped_counted_and_warned(vectors):
    ids, items = _vector_items(vectors)
    ev = COCOEvaluator(vectors["gt"])
    # One image as an xyxy mapping with an extra label 80: category_ids has 80 entries (0..79).
    items[1] = _as_xyxy_mapping(items[1] + [{"bbox": [0, 0, 5, 5], "score": 0.5, "category_id": None}], ev.category_ids)
    ev.process(ids, items)
    ev.process([999999999], [[{"bbox": [1, 2, 3, 4], "score": 0.9, "category_id": 1}] * 2])  # unknown image
    ev.process_results([{"image_id": ids[0], "category_id": 12345, "bbox": [1, 2, 3, 4], "score": 0.9}])
    with pytest.warns(UserWarning, match="dropped 4 of") as record:
        m = ev.evaluate()
    message = str(record[0].message)
    assert "999999999" in message and "12345" in message and "label 80" in message and "strict=True" in message
    assert m["dropped"]["unknown_image_id"] == 2
    assert m["dropped"]["unknown_category_id"] == 2
    assert m["dropped"]["total"] == 4
    for k in STAT_KEYS:  # the dropped ones do not touch the scored ones
        assert m[k] == pytest.approx(vectors["expected"][k], abs=1e-6), k


def test_strict_mode_raises_naming_the_ids(vectors):
    ev = COCOEvaluator(vectors["gt"], strict=True)
    with pytest.raises(ValueError, match="999999999"):
        ev.process([999999999], [[{"bbox": [1, 2, 3, 4], "score": 0.9, "category_id": 1}]])
    with pytest.raises(ValueError, match="12345"):
        ev.process_results(
            [{"image_id": vectors["gt"]["images"][0]["id"], "category_id": 12345, "bbox": [1, 2, 3, 4], "score": 0.9}]
        )
    with pytest.raises(ValueError, match="NaN"):
        ev.process_results(
            [
                {
                    "image_id": vectors["gt"]["images"][0]["id"],
                    "category_id": 1,
                    "bbox": [1, 2, 3, 4],
                    "score": float("nan"),
                }
            ]
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_inf_and_negative_boxes_dropped_and_counted(vectors, backend):
    ids, items = _vector_items(vectors)
    bad = [
        {"bbox": [10, 10, 20, 20], "score": float("nan"), "category_id": 1},
        {"bbox": [10, float("inf"), 20, 20], "score": 0.99, "category_id": 1},
        {"bbox": [10, 10, -5, 20], "score": 0.99, "category_id": 1},
        {"bbox": [10, 10, 20, -0.5], "score": 0.99, "category_id": 1},
    ]
    items[3] = items[3] + bad
    ev = COCOEvaluator(vectors["gt"], backend=backend)
    # One image as an xyxy mapping, with an extra box of x2 < x1.
    items[5] = _as_xyxy_mapping(
        items[5] + [{"bbox": [50, 50, -10, 30], "score": 0.9, "category_id": 1}], ev.category_ids
    )
    ev.process(ids, items)
    with pytest.warns(UserWarning, match="dropped 5 of"):
        m = ev.evaluate()
    assert m["dropped"]["non_finite"] == 2
    assert m["dropped"]["negative_size"] == 3
    assert m["detections"] == len(vectors["results"])
    assert m["AP"] == pytest.approx(vectors["expected"]["AP"], abs=1e-6)


def test_duplicate_image_counted_once(vectors):
    ids, items = _vector_items(vectors)
    ev = COCOEvaluator(vectors["gt"])
    ev.process(ids, items)
    ev.process(ids[:2], copy.deepcopy(items[:2]))  # e.g. a distributed sampler's padding
    with pytest.warns(UserWarning, match="already processed"):
        m = ev.evaluate()
    assert m["dropped"]["duplicate_image"] == len(items[0]) + len(items[1]) > 0
    assert m["AP"] == pytest.approx(vectors["expected"]["AP"], abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_results_give_zero(coco128, backend):
    ev = COCOEvaluator(coco128["gt"], backend=backend)
    ids = [img["id"] for img in coco128["gt"]["images"]]
    ev.process(ids, [[] for _ in ids])
    m = ev.evaluate()
    assert [m[k] for k in STAT_KEYS] == [0.0] * 12
    assert m["detections"] == 0
    assert all(ap == 0.0 or math.isnan(ap) for _, _, ap in m["per_class"])


def test_lvis_empty_results_give_zero(lvis_gt):
    ev = LVISEvaluator(lvis_gt["gt"])
    m = ev.evaluate()
    assert m["AP"] == m["AP50"] == m["APf"] == m["AR@300"] == 0.0


def test_empty_ground_truth_raises(coco128, tmp_path):
    empty = {"images": [], "annotations": [], "categories": coco128["gt"]["categories"]}
    with pytest.raises(ValueError, match="no images"):
        COCOEvaluator(empty)
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(empty))
    with pytest.raises(ValueError, match="no images"):
        evaluate_results_file(path, path)
    with pytest.raises(ValueError, match="no categories"):
        COCOEvaluator({**coco128["gt"], "categories": []})
    with pytest.raises(FileNotFoundError):
        COCOEvaluator(tmp_path / "missing.json")


def test_lvis_evaluator_rejects_coco_json(coco128):
    pytest.importorskip("lvis")
    with pytest.raises(ValueError, match="not an LVIS annotation set"):
        LVISEvaluator(coco128["gt"])


def test_ground_truth_dict_not_mutated_and_reset(coco128):
    gt = copy.deepcopy(coco128["gt"])
    ev = COCOEvaluator(gt)
    ev.process(*_perfect_detections(gt, ev.names, ev.category_ids, shift_x=2.0))
    first = ev.evaluate()
    assert gt == coco128["gt"]  # pycocotools adds 'ignore' to annotations; ours are copies
    assert ev.evaluate()["AP"] == first["AP"]  # evaluate() keeps the accumulated state
    ev.reset()
    assert ev.results == [] and ev.precision is None
    assert ev.evaluate()["AP"] == 0.0


# ---------------------------------------------------------------------------------------------
# files, plots, CLI


def test_save_results_round_trip(coco128, tmp_path):
    ev = COCOEvaluator(coco128["gt"])
    ev.process(*_perfect_detections(coco128["gt"], ev.names, ev.category_ids, shift_x=10.0))
    m = ev.evaluate()
    path = save_results(tmp_path / "sub" / "results.json", ev.results)
    assert json.loads(path.read_text()) == ev.results
    m2 = evaluate_results_file(path, coco128["path"])
    assert [m2[k] for k in STAT_KEYS] == [m[k] for k in STAT_KEYS]


def test_predictions_json_matched_by_file_and_class_name(coco128, tmp_path):
    gt = coco128["gt"]
    ev = COCOEvaluator(gt)
    ids, dets = _perfect_detections(gt, ev.names, ev.category_ids)
    file_of = {img["id"]: img["file_name"] for img in gt["images"]}
    records = []
    for image_id, d in zip(ids, dets):
        d.path = f"/some/where/images/{file_of[image_id]}"
        records.append(d.to_dict())
    # prompt-style spelling of one class must still match its category by name
    for rec in records:
        for det in rec["detections"]:
            det["name"] = det["name"].replace(" ", "_").upper() if det["name"] == "traffic light" else det["name"]
    records.append(
        {
            "path": "not_in_gt.jpg",
            "image_size": [10, 10],
            "names": ev.names,
            "detections": [{"box": [0, 0, 5, 5], "score": 0.5, "label": 0, "name": "person"}],
        }
    )
    records[0]["detections"].append({"box": [0, 0, 5, 5], "score": 0.5, "label": 0, "name": "unicorn"})
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps({"names": ev.names, "skipped": [], "images": records}))
    with pytest.warns(UserWarning, match="not_in_gt.jpg.*unicorn"):
        m = evaluate_results_file(path, coco128["path"])
    assert m["AP"] == pytest.approx(1.0, abs=1e-9)  # boxes rounded to 4 decimals still match at IoU 0.95
    assert m["dropped"]["unknown_image_id"] == 1
    assert m["dropped"]["unknown_category_id"] == 1
    assert m["detections"] == 929


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 0 and image.shape[1] > 0


def test_pr_curve_png(vectors, lvis_gt, tmp_path):
    ev = COCOEvaluator(vectors["gt"])
    ev.process_results(vectors["results"])
    ev.evaluate()
    _check_png(plot_pr_curves(ev, ev.names, tmp_path / "coco" / "pr.png"))
    _check_png(plot_pr_curves(ev.precision, ev.names, tmp_path / "coco_075.png", iou=0.75))
    with pytest.raises(ValueError, match="IoU 0.42"):
        plot_pr_curves(ev, ev.names, tmp_path / "x.png", iou=0.42)
    lv = LVISEvaluator(lvis_gt["gt"])
    lv.process_results(_lvis_perfect(lvis_gt["gt"]))
    lv.evaluate()
    assert lv.precision.ndim == 4
    _check_png(plot_pr_curves(lv.precision, lv.names, tmp_path / "lvis.png"))


def test_cli_val_writes_metrics_and_curve(vectors, tmp_path, capsys):
    from ovdet.cli import main

    out = tmp_path / "val"
    rc = main(
        ["val", "--results", str(vectors["results_path"]), "--data", str(vectors["gt_path"]), "--save-dir", str(out)]
    )
    assert rc == 0
    metrics = json.loads(
        (out / "metrics.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"metrics.json is not strict JSON: {c}"),
    )
    assert metrics["AP"] == pytest.approx(0.5045806987249628, abs=1e-6)
    assert len(metrics["per_class"]) == 80
    assert sum(ap is None for _, _, ap in metrics["per_class"]) == 10  # categories without ground truth
    _check_png(out / "pr_curve.png")
    printed = capsys.readouterr().out
    assert "AP50" in printed and "0.6970" in printed


def test_cli_val_bad_combinations(vectors, tmp_path, capsys):
    from ovdet.cli import main

    args = [
        "val",
        "--results",
        str(vectors["results_path"]),
        "--data",
        str(vectors["gt_path"]),
        "--save-dir",
        str(tmp_path),
    ]
    assert main(args + ["--lvis"]) == 2  # a COCO json is not LVIS
    assert "not an LVIS annotation set" in capsys.readouterr().err
    assert main(["val", "--data", str(vectors["gt_path"])]) == 2  # neither --model nor --results
    assert "needs --model" in capsys.readouterr().err
