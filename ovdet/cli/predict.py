"""``ovdet predict``: detect text-named classes in images, folders, globs or videos, in this process
or on Ray (``--engine ray``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

HELP = "detect text-named classes in images, folders, globs or videos"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "predict", HELP)
    opt.add_model(
        p,
        help="ovdet checkpoint folder, model YAML (random init), or pretrained name (e.g. yolo-world-v2-s; "
        "downloaded and converted once)",
    )
    opt.add_vocabulary(p)
    p.add_argument("--source", required=True, help="image, folder, glob, or video file")
    p.add_argument("--save-dir", default="runs/predict", help="output folder (created when there is output)")
    opt.add_detection(p)
    opt.add_imgsz(p)
    opt.add_batch(p)
    opt.add_device(p, help="auto, cpu, cuda or cuda:N (auto: the first GPU if any)")
    opt.add_precision(p, help="numeric precision (fp16: CUDA only)")
    p.add_argument("--agnostic-nms", action="store_true", help="suppress overlapping boxes across classes")
    opt.add_stream(p)
    p.add_argument("--save-frames", action="store_true", help="also write each annotated video frame as an image")
    p.add_argument(
        "--no-save-images", action="store_true", help="write only predictions.json (no annotated images or videos)"
    )
    opt.add_quiet(p)
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: Ray Data with a pool of detector actors, results as parquet in --out "
        "(the [ray] extra)",
    )
    p.add_argument(
        "--out", help="--engine ray: results folder (*.parquet, one row per image, and _summary.json); required"
    )
    p.add_argument(
        "--ray-address",
        help="--engine ray: the Ray cluster to join ('auto' on a node of it, or ray://host:10001); None: "
        "$RAY_ADDRESS, else a local Ray started and stopped by this command",
    )
    p.add_argument(
        "--actors", type=int, help="--engine ray: detector actors (None: one per GPU; without GPUs min(2, CPUs))"
    )
    p.add_argument("--ray-cpus", type=int, help="--engine ray: CPUs of a local Ray (None: all of this machine's)")
    opt.add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        return run_ray(args)
    from tqdm import tqdm

    from ovdet.data.images import count_sources
    from ovdet.inference.outputs import PredictionWriter

    ray_only = {
        "--out": args.out,
        "--ray-address": args.ray_address,
        "--actors": args.actors,
        "--ray-cpus": args.ray_cpus,
    }
    given = [flag for flag, value in ray_only.items() if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: only with --engine ray (--engine local writes to --save-dir)")
    # Everything the command line says is checked before the model is loaded.
    options = opt.predict_config(args)
    opt.positive("--video-stride", args.video_stride)
    classes = opt.read_classes(args.classes) if args.classes else None
    opt.check_file("--embeddings", args.embeddings)
    try:
        total = count_sources(args.source, video_stride=args.video_stride)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise UsageError(f"--source: {e}") from e
    opt.check_model_spec(args.model)

    det = opt.open_detector(args, classes, require_vocabulary=True)
    save = not args.no_save_images
    run = det.predict(args.source, config=options, stream=True, keep_images=save, video_stride=args.video_stride)
    writer = PredictionWriter(args.save_dir, images=save, videos=save, frames=save and args.save_frames, fps=run.fps)
    per_class: Counter[str] = Counter()
    start = time.perf_counter()
    with tqdm(total=total, unit="img", desc="predict", disable=args.quiet) as bar:
        for d in run:
            per_class.update(d.names[i] for i in d.labels.tolist())
            writer.add(d)
            bar.update(1)
    elapsed = time.perf_counter() - start
    n = len(writer.records)
    if n == 0:
        for _, reason in run.skipped:
            print(f"  skipped: {reason}", file=sys.stderr)
        raise RuntimeError(f"no image could be read from {args.source} ({len(run.skipped)} skipped)")
    out_json = writer.close(det.names, run.skipped)
    print(
        f"\n{n} images, {sum(per_class.values())} detections, {len(run.skipped)} skipped, "
        f"{n / elapsed if elapsed > 0 else 0:.1f} images/s ({det.device})"
    )
    for name in det.names:
        if per_class[name]:
            print(f"  {name:<30} {per_class[name]}")
    for _, reason in run.skipped:
        print(f"  skipped: {reason}")
    if run.notes:
        sources = len({s for s, _ in run.notes})
        print(f"  {len(run.notes)} decoder message(s) from {sources} file(s) (corrupt data); --debug shows them")
        if args.debug:
            for source, message in run.notes:
                print(f"    {source}: {message}")
    videos = sorted({p.name for p in writer.written if p.suffix == ".mp4"})
    print(f"results: {out_json}" + (f", annotated files in {args.save_dir}" if save else ""))
    if videos:
        print(f"annotated video(s): {', '.join(videos)}")
    return 0


def run_ray(args: argparse.Namespace) -> int:
    """``ovdet predict --engine ray``: Ray Data actors over a folder, glob, image or parquet of paths;
    one parquet row per image in ``--out`` (see :mod:`ovdet.distributed.raydata`)."""
    from ovdet.distributed import SUMMARY_FILE, RayPredictConfig, import_ray, run_ray_predict, source_paths

    try:
        import_ray()
    except ImportError as e:
        raise UsageError(str(e)) from e
    if not args.out:
        raise UsageError("--engine ray writes its results as parquet: pass --out DIR")
    if args.video_stride != 1 or args.save_frames:
        raise UsageError("--engine ray reads still images: --video-stride and --save-frames need --engine local")
    if args.ray_cpus is not None and args.ray_address:
        raise UsageError("--ray-cpus sizes a local Ray; the cluster of --ray-address has its own CPUs")
    for flag, value in (("--actors", args.actors), ("--ray-cpus", args.ray_cpus)):
        if value is not None:
            opt.positive(flag, value)
    gpus = {"auto": None, "cpu": 0.0, "cuda": 1.0}.get(args.device, -1.0)
    if gpus is not None and gpus < 0:
        raise UsageError(
            f"--device {args.device}: with --engine ray use auto (a GPU per actor when the cluster has GPUs), "
            "cpu or cuda (Ray gives each actor its own GPU)"
        )
    options = opt.predict_config(args, on_this_machine=False)  # fp16 needs GPU actors: plan_actors checks it
    config = RayPredictConfig(predict=options, actors=args.actors, gpus_per_actor=gpus)
    if any(Path(args.out).glob("*.parquet")):
        raise UsageError(f"--out {args.out} holds results of an earlier run: choose another folder or remove them")
    classes = opt.read_classes(args.classes) if args.classes else None
    opt.check_file("--embeddings", args.embeddings)
    try:
        paths = source_paths(args.source)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--source: {e}") from e
    opt.check_model_spec(args.model)

    # The vocabulary is embedded once, here; the actors load their own detector.
    det = opt.open_detector(args, classes, require_vocabulary=True, device="cpu")
    s = run_ray_predict(
        paths,
        args.out,
        args.model,
        det.names,
        det.class_embeddings,
        config,
        ray_address=args.ray_address,
        num_cpus=args.ray_cpus,
        progress=not args.quiet,
    )
    print(
        f"\n{s.images} images, {len(s.errors)} unreadable, {s.detections} detections, {s.images_per_second:.1f} "
        f"images/s with {s.plan.actors} {s.plan.device} actor(s) ({s.seconds:.1f} s; Ray start-up {s.startup_seconds:.1f} s)"
    )
    for name, n in s.per_class.items():
        print(f"  {name:<30} {n}")
    for _, reason in s.errors[:20]:
        print(f"  error: {reason}")
    if len(s.errors) > 20:
        print(f"  ... {len(s.errors) - 20} more errors in {s.out_dir / SUMMARY_FILE}")
    print(f"results: {len(s.files)} parquet file(s) in {s.out_dir}, summary {s.out_dir / SUMMARY_FILE}")
    if s.errors and len(s.errors) == s.images:
        raise RuntimeError(f"no image could be read from {args.source} ({len(s.errors)} errors)")
    return 0
