"""Ray Data batch inference (issue #16): results equal single-process ``predict``, unreadable images
become error rows, parquet sources of paths, the CLI, actor planning and the missing-Ray message.

The detector is the tiny config with BatchNorm statistics calibrated on real coco128 images, saved
to a folder that every actor loads; images are real coco128 files. One local Ray with 2 CPUs
serves the module (the CLI test runs first and starts and stops its own when none is running).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ovdet import Detections, Detector
from ovdet.cli import main
from ovdet.data.letterbox import letterbox, to_tensor
from ovdet.distributed import (
    RAY_MISSING,
    ActorPlan,
    RayPredictConfig,
    decode_batch,
    import_ray,
    plan_actors,
    predict_dataset,
    result_schema,
    results_table,
    run_ray_predict,
    source_paths,
)
from ovdet.distributed.raydata import SUMMARY_FILE
from ovdet.text import EmbeddingCache
from tests.helpers import NAMES, assert_same_detections, make_detector, nms_ambiguities

IMGSZ = 320
COLUMNS = ["path", "height", "width", "boxes", "scores", "labels", "names", "error"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The calibrated tiny detector with NAMES as its vocabulary, saved for the actors to load."""
    det = make_detector(2, cache=EmbeddingCache())  # in memory: never the user's embedding cache
    det.set_classes(NAMES)
    return det.save(tmp_path_factory.mktemp("ray") / "model")


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory):
    """A local Ray with 2 CPUs for the module (an already running one is used and left running)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        home = str(tmp_path_factory.mktemp("ray_home"))
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"OVDET_HOME": home}})
    yield ray
    if started:
        ray.shutdown()


def _reference(model_dir: Path) -> Detector:
    """The single-process detector, holding its vocabulary exactly as each actor does."""
    det = Detector.load(model_dir, device="cpu")
    return det.set_class_embeddings(det.names, det.class_embeddings)


def _copy(paths: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for p in paths:
        shutil.copy(p, folder / p.name)
    return folder


def _read(out: Path) -> dict[str, dict]:
    """Rows of the parquet results in ``out``, by path (the schema checked on the way)."""
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.schema.names == COLUMNS
    assert table.schema.equals(result_schema()) or [f.type for f in table.schema] == [f.type for f in result_schema()]
    return {r["path"]: r for r in table.to_pylist()}


def _detections(row: dict, names: list[str]) -> Detections:
    """A parquet row as Detections (its ``names`` column checked against the labels)."""
    assert row["names"] == [names[i] for i in row["labels"]]
    boxes = np.asarray(row["boxes"], np.float32).reshape(-1, 4)
    return Detections(boxes, row["scores"], row["labels"], names, (row["height"], row["width"]), row["path"])


def _assert_rows_equal(rows: dict[str, dict], want: list[Detections], box_tol: float, score_tol: float) -> None:
    for d in want:
        got = _detections(rows[d.path], d.names)
        assert got.image_size == d.image_size and rows[d.path]["error"] is None
        assert_same_detections(got, d, box_tol=box_tol, score_tol=score_tol)


# ------------------------------------------------------------------------------ command line
def test_cli_predict_engine_ray_end_to_end(
    model_dir: Path, coco128_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``ovdet predict --engine ray`` writes the documented parquet columns and a summary, with
    ``--classes`` embedded once on the driver; Ray is left as it was found (started and stopped
    by the command when none was running)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    was_running = ray.is_initialized()
    folder = _copy(coco128_images[:4], tmp_path / "images")
    out = tmp_path / "results"
    argv = ["predict", "--engine", "ray", "--model", str(model_dir), "--source", str(folder), "--out", str(out)]
    argv += ["--classes", "person,bus", "--imgsz", str(IMGSZ), "--conf", "0.3", "--actors", "1", "--batch", "2"]
    assert main([*argv, *([] if was_running else ["--ray-cpus", "2"]), "--quiet"]) == 0
    assert ray.is_initialized() == was_running
    text = capsys.readouterr().out
    rows = _read(out)
    assert sorted(rows) == sorted(str(p) for p in folder.iterdir())
    assert all(r["error"] is None and r["height"] > 0 and set(r["names"]) <= {"person", "bus"} for r in rows.values())
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["images"] == 4 and summary["names"] == ["person", "bus"] and summary["errors"] == []
    assert summary["detections"] == sum(len(r["scores"]) for r in rows.values()) > 0
    assert "4 images, 0 unreadable" in text and f"results: 1 parquet file(s) in {out}" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "pass --out DIR"),
        (["--out", "{tmp}/o", "--actors", "0"], "--actors must be >= 1, got 0"),
        (["--out", "{tmp}/o", "--device", "cuda:1"], "--device cuda:1: with --engine ray use auto"),
        (["--out", "{tmp}/o", "--imgsz", "100"], "imgsz must be a positive multiple of 32"),
        (["--out", "{tmp}/o", "--ray-address", "auto", "--ray-cpus", "2"], "--ray-cpus sizes a local Ray"),
        (["--out", "{tmp}/o", "--video-stride", "2"], "--engine ray reads still images"),
        (["--out", "{tmp}/o", "--source", "{tmp}/missing"], "--source: source not found"),
        (["--out", "{tmp}/o", "--source", "{tmp}/cols.parquet"], "has no 'path' column"),
    ],
)
def test_cli_engine_ray_usage_errors(
    extra: list[str], message: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Every bad ray command line exits 2 with one message, before any model or Ray is started."""
    pytest.importorskip("ray.data")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"file": ["a.jpg"]}), tmp_path / "cols.parquet")
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    source = [] if "--source" in extra else ["--source", str(tmp_path)]
    assert main(["predict", "--engine", "ray", "--model", str(model_dir), *source, *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_ray_options_need_engine_ray(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["predict", "--model", str(model_dir), "--source", str(tmp_path), "--out", "o", "--actors", "2"]
    assert main(argv) == 2
    assert "--out, --actors: only with --engine ray" in capsys.readouterr().err


def test_missing_ray_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'ovdet\[ray\]'"):
        import_ray()
    argv = ["predict", "--engine", "ray", "--model", str(model_dir), "--source", str(tmp_path), "--out", "o"]
    assert main(argv) == 2
    assert RAY_MISSING in capsys.readouterr().err


# ------------------------------------------------------------------------------ equality
def test_results_equal_single_process_predict(
    ray_local, model_dir: Path, coco128_images: list[Path], tmp_path: Path
) -> None:
    """Two actors over 16 coco128 images and a corrupt one: every readable image's row holds what
    single-process ``Detector.predict`` returns at the same settings (one image per call, so the
    arithmetic is the same); the corrupt file is an error row naming it; Ray keeps running."""
    folder = _copy(coco128_images[:16], tmp_path / "images")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    det = _reference(model_dir)
    config = RayPredictConfig(conf=0.3, iou=0.6, imgsz=IMGSZ, batch=1, actors=2)
    summary = run_ray_predict(folder, tmp_path / "out", model_dir, det.names, det.class_embeddings, config)
    assert ray_local.is_initialized()  # not started here, so not stopped either
    rows = _read(tmp_path / "out")
    want = det.predict([str(p) for p in sorted(folder.glob("0*.jpg"))], conf=0.3, iou=0.6, imgsz=IMGSZ)
    assert sorted(rows) == sorted(str(p) for p in folder.iterdir()) and sum(len(d) for d in want) > 50
    _assert_rows_equal(rows, want, box_tol=1e-3, score_tol=1e-5)

    bad = rows[str(folder / "corrupt.jpg")]
    assert bad["error"].startswith(f"{folder / 'corrupt.jpg'}: ") and "JPEG" in bad["error"]
    assert (bad["height"], bad["width"], bad["boxes"], bad["scores"]) == (0, 0, [], [])
    assert summary.images == 17 and summary.errors == [(str(folder / "corrupt.jpg"), bad["error"])]
    assert summary.plan == ActorPlan(actors=2, num_cpus=1.0, num_gpus=0.0, threads=1)
    per_class = {n: sum(d.names[i] == n for d in want for i in d.labels.tolist()) for n in det.names}
    assert summary.per_class == {n: c for n, c in per_class.items() if c}
    assert summary.detections == sum(len(d) for d in want)
    with pytest.raises(FileExistsError, match="holds results of an earlier run"):
        run_ray_predict(folder, tmp_path / "out", model_dir, det.names, det.class_embeddings, config)


def test_parquet_source_batches_and_separate_decode(
    ray_local, model_dir: Path, coco128_images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parquet of relative paths (one missing, one null), batches of 4 over mixed shapes, and
    decoding in tasks of its own: rows equal single-process predict up to the float noise of
    batching, at thresholds where no NMS decision is a near-tie; bad rows name their reason."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    conf, iou = 0.5, 0.5
    det = _reference(model_dir)
    clear = []
    for p in coco128_images[20:32]:  # images with a clear margin at every NMS decision
        x = to_tensor([letterbox(cv2.imread(str(p)), IMGSZ)[0]])  # (1, 3, H, W) as predict sees it
        with torch.no_grad():
            boxes, scores = det.model.decode(det.model(x, det.class_embeddings))
        if not nms_ambiguities(boxes[0], scores[0], conf, iou, score_tol=2e-4, ties=True):
            clear.append(p)
    assert len(clear) >= 6
    _copy(clear[:6], tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    paths = [f"images/{p.name}" for p in clear[:6]] + ["images/missing.jpg", None]
    pq.write_table(pa.table({"path": pa.array(paths, pa.string()), "id": list(range(8))}), tmp_path / "list.parquet")
    assert source_paths("list.parquet") == paths

    ds = ray_local.data.from_items([{"path": p, "id": i} for i, p in enumerate(source_paths("list.parquet"))])
    plan = ActorPlan(actors=1, num_cpus=1.0, num_gpus=0.0, threads=1, separate_decode=True)
    config = RayPredictConfig(conf=conf, iou=iou, imgsz=IMGSZ, batch=4)
    results = predict_dataset(ds, model_dir, det.names, det.class_embeddings, config, plan)
    table = pa.concat_tables(ray_local.get(results.materialize().to_arrow_refs()))
    assert table.schema.equals(result_schema())
    rows = {r["path"]: r for r in table.to_pylist()}
    assert len(rows) == 8
    want = det.predict([str(tmp_path / p) for p in paths[:6]], conf=conf, iou=iou, imgsz=IMGSZ)
    for d, p in zip(want, paths[:6]):
        d.path = p  # the row keeps the path as the parquet gave it
    _assert_rows_equal(rows, want, box_tol=1e-2, score_tol=1e-5)  # DFL x stride 32 amplifies 1e-6 logits
    assert rows["images/missing.jpg"]["error"] == f"image file not found: {tmp_path / 'images/missing.jpg'}"
    assert rows[None]["error"] == "row has no path (null or empty)"


# ------------------------------------------------------------------------------ sources and stages
def test_sources(tmp_path: Path, coco128_images: list[Path]) -> None:
    """Folders, globs, single images and parquet files of paths; clear errors for everything else."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = _copy(coco128_images[:3], tmp_path / "images")
    files = [str(p) for p in sorted(folder.iterdir())]
    assert source_paths(folder) == files
    assert source_paths(str(folder / "*.jpg")) == files
    assert source_paths(files[0]) == files[:1]
    (tmp_path / "lists").mkdir()
    pq.write_table(pa.table({"path": files[:2]}), tmp_path / "lists" / "a.parquet")
    pq.write_table(pa.table({"path": files[2:]}), tmp_path / "lists" / "b.parquet")
    assert sorted(source_paths(tmp_path / "lists")) == files  # a folder of parquet files

    pq.write_table(pa.table({"file": files}), tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match=r"cols\.parquet: the parquet source has no 'path' column \(columns: file\)"):
        source_paths(tmp_path / "cols.parquet")
    pq.write_table(pa.table({"path": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(ValueError, match="'path' column must hold strings, not int64"):
        source_paths(tmp_path / "ints.parquet")
    with pytest.raises(FileNotFoundError, match="parquet source not found"):
        source_paths(tmp_path / "none.parquet")
    with pytest.raises(FileNotFoundError, match="source not found"):
        source_paths(tmp_path / "missing")
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="clip.mp4 is a video"):
        source_paths(tmp_path / "clip.mp4")


def test_decode_batch_turns_bad_files_into_error_rows(tmp_path: Path, coco128_images: list[Path]) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    batch = {"path": np.array([str(coco128_images[0]), "empty.jpg", "gone.jpg", None], dtype=object)}
    out = decode_batch(batch, str(tmp_path), max_pixels=0)
    assert np.array_equal(out["image"][0], cv2.imread(str(coco128_images[0])))
    assert [im.shape for im in out["image"][1:]] == [(0, 0, 3)] * 3
    assert list(out["error"]) == [
        "",
        f"{tmp_path / 'empty.jpg'}: empty file (0 bytes)",
        f"image file not found: {tmp_path / 'gone.jpg'}",
        "row has no path (null or empty)",
    ]
    limited = decode_batch({"path": np.array([str(coco128_images[0])], dtype=object)}, "/", max_pixels=100)
    assert "over the limit of 100" in limited["error"][0]


def test_results_table_holds_the_detections_exactly() -> None:
    import pyarrow as pa

    names = ["cat", "dog", "bus"]
    d = Detections(
        torch.tensor([[1.5, 2.25, 30.0, 40.0], [0.0, 0.0, 5.0, 6.0]]), torch.tensor([0.9, 0.3]), torch.tensor([2, 0]),
        names, (48, 64), "a.jpg",
    )  # fmt: skip
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), names, (10, 12), "b.jpg")
    table = results_table(
        ["a.jpg", "b.jpg", "c.jpg"], [(48, 64), (10, 12), (0, 0)], [d, empty, None], [None, None, "c"]
    )
    assert table.schema.equals(result_schema())
    assert table.to_pylist() == [
        {
            "path": "a.jpg", "height": 48, "width": 64, "boxes": [[1.5, 2.25, 30.0, 40.0], [0.0, 0.0, 5.0, 6.0]],
            "scores": [pytest.approx(0.9), pytest.approx(0.3)], "labels": [2, 0], "names": ["bus", "cat"], "error": None,
        },
        {"path": "b.jpg", "height": 10, "width": 12, "boxes": [], "scores": [], "labels": [], "names": [], "error": None},
        {"path": "c.jpg", "height": 0, "width": 0, "boxes": [], "scores": [], "labels": [], "names": [], "error": "c"},
    ]  # fmt: skip
    scores = table.column("scores").combine_chunks().flatten()
    assert scores.type == pa.float32() and scores.to_numpy().tolist() == d.scores.numpy().tolist()


# ------------------------------------------------------------------------------ actor planning
@pytest.mark.parametrize(
    ("resources", "kwargs", "plan"),
    [
        ({"CPU": 2.0}, {}, ActorPlan(2, 1.0, 0.0, 1)),
        ({"CPU": 8.0}, {}, ActorPlan(2, 4.0, 0.0, 4)),
        ({"CPU": 8.0}, {"actors": 4}, ActorPlan(4, 2.0, 0.0, 2)),
        ({"CPU": 1.0}, {}, ActorPlan(1, 1.0, 0.0, 1)),
        ({"CPU": 16.0, "GPU": 2.0}, {}, ActorPlan(2, 1.0, 1.0, 1, separate_decode=True)),
        ({"CPU": 1.0, "GPU": 1.0}, {}, ActorPlan(1, 1.0, 1.0, 1, separate_decode=False)),
        ({"CPU": 8.0, "GPU": 1.0}, {"gpus_per_actor": 0.5}, ActorPlan(2, 1.0, 0.5, 1, separate_decode=True)),
        ({"CPU": 8.0, "GPU": 1.0}, {"gpus_per_actor": 0.0, "actors": 1}, ActorPlan(1, 8.0, 0.0, 8)),
    ],
)
def test_plan_actors(resources: dict[str, float], kwargs: dict, plan: ActorPlan) -> None:
    assert plan_actors(RayPredictConfig(**kwargs), resources) == plan


def test_plan_actors_refuses_what_the_cluster_cannot_hold() -> None:
    with pytest.raises(
        ValueError, match=r"3 actor\(s\) x \(1 CPU, 0 GPU\) need 3 CPUs and 0 GPUs, but the Ray cluster"
    ):
        plan_actors(RayPredictConfig(actors=3), {"CPU": 2.0})
    with pytest.raises(ValueError, match="need 2 CPUs and 2 GPUs, but the Ray cluster has 8 CPUs and 1 GPUs"):
        plan_actors(RayPredictConfig(actors=2), {"CPU": 8.0, "GPU": 1.0})
    with pytest.raises(ValueError, match="fp16"):
        plan_actors(RayPredictConfig(precision="fp16"), {"CPU": 2.0})
    with pytest.raises(ValueError, match="imgsz must be a positive multiple of 32"):
        RayPredictConfig(imgsz=100)
    with pytest.raises(ValueError, match="nms.conf must be in"):
        RayPredictConfig(conf=2.0)


def test_batch_detector_records_a_failing_image_and_predicts_the_rest(
    model_dir: Path, coco128_images: list[Path]
) -> None:
    """The actor's own code, run in this process: an image that fails in ``predict`` becomes an
    error row naming it, the rest of its batch still equals single-process predict."""
    from ovdet.distributed import BatchDetector

    threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    det = _reference(model_dir)
    try:
        actor = BatchDetector(
            str(model_dir), det.names, det.class_embeddings.numpy(), RayPredictConfig(imgsz=IMGSZ), "cpu", 1
        )
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv2_threads)
    paths = [str(p) for p in coco128_images[:2]]
    decoded = decode_batch({"path": np.array([paths[0], "bad", paths[1]], dtype=object)}, "/", max_pixels=0)
    decoded["image"][1] = np.zeros((8, 8, 3), np.float64)  # decodes, then predict refuses the dtype
    decoded["error"][1] = ""
    rows = {r["path"]: r for r in actor(decoded).to_pylist()}
    assert rows["bad"]["error"].startswith("bad: prediction failed (TypeError: ")
    _assert_rows_equal(rows, det.predict(paths, imgsz=IMGSZ), box_tol=1e-3, score_tol=1e-5)
