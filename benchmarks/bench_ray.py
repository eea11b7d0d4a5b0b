"""Ray Data batch inference (``ovdet predict --engine ray``) against single-process ``predict``.

On coco128: images/s of single-process ``Detector.predict`` (all CPUs to torch), then of the Ray
pipeline (decode + actors + parquet write) with 1 and 2 CPU actors on a local Ray started once.
Ray's start-up is timed apart; each pipeline run also pays its actors' start-up (a fresh process
imports torch and loads the model), so a second run on one batch per actor estimates it,
and the steady rate is what the remaining images took. The results are checked
against single-process ``predict`` (same rows and boxes per image).

    python benchmarks/bench_ray.py                      # ovdet-demo, imgsz 640, batch 8
    python benchmarks/bench_ray.py --model path/to/ckpt --images 64 --actors 1 2 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEFAULT_DATA, coco128_files, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--model", default="ovdet-demo", help="pretrained name or checkpoint folder")
    ap.add_argument("--classes", default=None, help="comma-separated vocabulary (default: the model's own)")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians are printed)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import ray

    from ovdet.distributed import RayPredictConfig, load_model, run_ray_predict

    files = [str(p) for p in coco128_files(args.data)[: args.images]]
    det = load_model(args.model, "cpu")
    if args.classes:
        det.set_classes(args.classes.split(","))
    settings = dict(conf=args.conf, imgsz=args.imgsz, batch=args.batch)
    print(machine("cpu"))
    print(
        f"model {args.model}, {len(det.names)} classes, {len(files)} coco128 images, imgsz {args.imgsz}, batch {args.batch}"
    )

    det.predict(files[:2], **settings, keep_images=False)  # warm-up: folded network, allocator
    t = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    print(f"Ray start-up (local, {args.cpus} CPUs): {time.perf_counter() - t:.1f} s")
    vocabulary = (det.names, det.class_embeddings)
    local: list[float] = []
    runs: dict[int, list[tuple[float, float, float]]] = {a: [] for a in args.actors}  # (pipeline s, start-up s, steady)
    same: dict[int, bool] = dict.fromkeys(args.actors, True)
    threads: dict[int, int] = {}
    try:
        for _ in range(args.rounds):  # rows interleaved: a slow spell on a shared machine hits each alike
            t = time.perf_counter()
            single = det.predict(files, **settings, keep_images=False)
            local.append(len(files) / (time.perf_counter() - t))
            want = {d.path: len(d) for d in single}
            for actors in args.actors:
                config = RayPredictConfig(**settings, actors=actors)
                small = files[: actors * args.batch]  # one batch per actor: actor start-up plus one batch
                with tempfile.TemporaryDirectory() as tmp:
                    warm = run_ray_predict(small, Path(tmp) / "s", args.model, *vocabulary, config, progress=False)
                    full = run_ray_predict(files, Path(tmp) / "f", args.model, *vocabulary, config, progress=False)
                    rows = pq.read_table(Path(tmp) / "f", columns=["path", "scores", "error"]).to_pylist()
                counts = {r["path"]: len(r["scores"]) for r in rows}
                same[actors] &= counts == want and not any(r["error"] for r in rows)
                steady = (len(files) - len(small)) / max(full.seconds - warm.seconds, 1e-9)
                runs[actors].append((full.seconds, warm.seconds, steady))
                threads[actors] = full.plan.threads
    finally:
        ray.shutdown()

    single_rate = statistics.median(local)
    print(
        f"single-process predict: {single_rate:.2f} images/s ({torch.get_num_threads()} torch threads; median of {args.rounds})"
    )
    print(
        f"{'actors':>6} {'threads':>7} {'pipeline s':>10} {'images/s':>8} {'start-up s':>10} {'steady img/s':>12} "
        f"{'vs single':>9} {'vs 1st row':>10} {'same rows':>9}"
    )
    first = None
    for actors, values in runs.items():
        pipeline, startup, steady = (statistics.median(v) for v in zip(*values))
        first = first or steady
        print(
            f"{actors:>6} {threads[actors]:>7} {pipeline:>10.1f} {len(files) / pipeline:>8.2f} {startup:>10.1f} "
            f"{steady:>12.2f} {steady / single_rate:>8.2f}x {steady / first:>9.2f}x {str(same[actors]):>9}"
        )


if __name__ == "__main__":
    main()
