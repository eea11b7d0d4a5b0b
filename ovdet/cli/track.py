"""``ovdet track``: detect and track text-named classes through a video, frames, a camera or a stream."""

from __future__ import annotations

import argparse
import sys
import time

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

HELP = "detect and track text-named classes through a video, frames, a camera or a stream"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "track", HELP)
    opt.add_model(p)
    opt.add_vocabulary(p)
    p.add_argument(
        "--source",
        required=True,
        help="video file, folder or glob of frames (one sequence), camera index (0) or stream URL (rtsp://...)",
    )
    p.add_argument("--save-dir", default="runs/track", help="output folder: <name>.mp4, <name>.txt (MOT), <name>.json")
    p.add_argument("--tracker", default="bytetrack", choices=["bytetrack", "sort", "ocsort"], help="algorithm")
    opt.add_detection(
        p,
        conf=0.1,
        conf_help="detection threshold (low: ByteTrack uses low scores)",
        max_det_help="detections kept per frame",
    )
    p.add_argument("--high", type=float, default=0.25, help="scores at or above it are matched first")
    p.add_argument("--new-track", type=float, default=0.25, help="score needed to start a track")
    p.add_argument("--match-iou", type=float, default=0.1, help="IoU with a track's predicted box to match it")
    p.add_argument("--buffer", type=int, default=30, help="frames (at 30 fps) a lost track waits to be found")
    p.add_argument("--min-hits", type=int, default=2, help="frames an object is seen before its track gets an id")
    p.add_argument(
        "--class-agnostic", action="store_true", help="one tracker for all classes (ids survive label flips)"
    )
    p.add_argument("--trail", type=int, default=30, help="trail length drawn behind each box, in frames (0: none)")
    opt.add_imgsz(p)
    opt.add_device(p)
    opt.add_precision(p)
    opt.add_stream(
        p, video_stride_help="use every n-th frame", max_pixels_help="skip frames with more pixels than this"
    )
    p.add_argument("--no-save-video", action="store_true", help="write only the MOT and JSON files")
    opt.add_quiet(p)
    opt.add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ovdet.config import TrackConfig
    from ovdet.data.images import count_sources, is_capture_source
    from ovdet.inference.track import TrackWriter

    # Everything the command line says is checked before the model is loaded.
    track = opt.build(
        TrackConfig,
        tracker=args.tracker,
        conf=args.conf,
        high=args.high,
        new_track=args.new_track,
        match_iou=args.match_iou,
        buffer=args.buffer,
        min_hits=args.min_hits,
        class_aware=not args.class_agnostic,
        trail=args.trail,
    )
    options = opt.predict_config(args)
    opt.positive("--video-stride", args.video_stride)
    classes = opt.read_classes(args.classes) if args.classes else None
    opt.check_file("--embeddings", args.embeddings)
    live = is_capture_source(args.source)
    try:
        total = None if live else count_sources(args.source, video_stride=args.video_stride)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise UsageError(f"--source: {e}") from e
    opt.check_model_spec(args.model)

    det = opt.open_detector(args, classes, require_vocabulary=True)
    save_video = not args.no_save_video
    stream = det.track(
        int(args.source) if live and args.source.isdigit() else args.source,
        tracker=track,
        config=options,
        stream=True,
        keep_images=save_video,
        video_stride=args.video_stride,
    )
    writer = TrackWriter(args.save_dir, video=save_video, trail=args.trail, fps=stream.fps)
    start = time.perf_counter()
    try:
        with tqdm(total=total, unit="frame", desc="track", disable=args.quiet) as bar:
            for d in stream:
                writer.add(d)
                bar.update(1)
    finally:  # Ctrl-C on a camera stream still leaves complete files
        writer.close()
    elapsed = time.perf_counter() - start
    if stream.seen == 0:
        for _, reason in stream.skipped:
            print(f"  skipped: {reason}", file=sys.stderr)
        first = stream.skipped[0][1] if stream.skipped else "no frames"
        raise RuntimeError(f"no frame could be read from {args.source}: {first}")
    tracks = sum(s["tracks"] for s in writer.summaries)
    boxes = sum(s["boxes"] for s in writer.summaries)
    print(
        f"\n{stream.seen} frames, {tracks} tracks, {boxes} tracked boxes, {len(stream.skipped)} skipped, "
        f"{stream.seen / elapsed if elapsed > 0 else 0:.1f} frames/s ({det.device}, {args.tracker})"
    )
    for summary in writer.summaries:
        per_class = ", ".join(f"{n} {c}" for n, c in summary["per_class"].items()) or "no tracks"
        print(f"  {summary['sequence']}: {summary['frames']} frames, {summary['tracks']} tracks ({per_class})")
    for _, reason in stream.skipped:
        print(f"  skipped: {reason}")
    print(f"results in {args.save_dir}: " + ", ".join(p.name for p in writer.written))
    return 0
