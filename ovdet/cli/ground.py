"""``ovdet ground``: boxes for the phrases of a caption (phrase grounding), one annotated picture per
image (the boxes above the caption, each phrase in its colour) and one ``grounding.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

HELP = "find the phrases of a caption in images (phrase grounding)"
JSON_FILE = "grounding.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "ground", HELP)
    opt.add_model(p)
    p.add_argument(
        "--caption",
        required=True,
        help="the text, e.g. 'a man in a red shirt holding an umbrella' (its noun phrases are grounded) "
        "or a category list 'person. dog. red backpack.'",
    )
    p.add_argument("--source", required=True, help="image, folder, glob, or video file")
    p.add_argument(
        "--phrases",
        nargs="+",
        help="ground these phrases instead of the caption's noun phrases (each found in the caption, in order)",
    )
    p.add_argument(
        "--top-k", type=int, default=None, help="boxes per phrase, best first (None: every box above --conf)"
    )
    p.add_argument(
        "--head-fallback",
        action="store_true",
        help="ask again by its head noun for a phrase that finds no box ('a furry brown dog' -> 'dog')",
    )
    p.add_argument("--save-dir", default="runs/ground", help=f"output folder: one picture per image and {JSON_FILE}")
    opt.add_detection(p)
    opt.add_imgsz(p)
    opt.add_batch(p)
    opt.add_device(p)
    opt.add_precision(p, help="numeric precision (fp16: CUDA only)")
    opt.add_stream(p)
    opt.add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ovdet.data.images import count_sources
    from ovdet.grounding.phrases import extract_phrases

    # Everything the command line says is checked before the model is loaded.
    options = opt.predict_config(args)
    opt.positive("--video-stride", args.video_stride)
    if args.top_k is not None:
        opt.positive("--top-k", args.top_k)
    try:
        phrases = extract_phrases(args.caption, args.phrases)
    except ValueError as e:
        raise UsageError(f"--caption / --phrases: {e}") from e
    try:
        count_sources(args.source, video_stride=args.video_stride)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise UsageError(f"--source: {e}") from e
    opt.check_model_spec(args.model)

    det = opt.open_detector(args)
    results = det.ground(
        args.source,
        args.caption,
        args.phrases,
        top_k=args.top_k,
        head_fallback=args.head_fallback,
        config=options,
        video_stride=args.video_stride,
    )
    if not results:
        raise RuntimeError(f"no image could be read from {args.source}")
    out = Path(args.save_dir)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    records = []
    for g in results:
        record = g.to_dict()
        record["annotated"] = g.save(out / _picture_name(g.path, taken)).name
        records.append(record)
    json_path = out / JSON_FILE
    json_path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    print(f"\n{len(results)} image(s), {len(phrases)} phrase(s):")
    for j, p in enumerate(phrases):
        boxes = sum(len(g.entries[j]) for g in results)
        via = sum(g.entries[j].fallback for g in results)
        note = f" ({via} image(s) by its head noun {p.head.text!r})" if via and p.head is not None else ""
        print(f"  {p.text!r:<40} {boxes} box(es){note}")
    truncated = [p.text for p, e in zip(phrases, results[0].entries) if e.truncated]
    if truncated:
        print(f"  truncated by the text encoder: {truncated}")
    print(f"results: {json_path}, annotated pictures in {out}")
    return 0


def _picture_name(path: str | None, taken: set[str]) -> str:
    """``<stem>.jpg`` of the source (``<stem>_frame000012.jpg`` for a video frame), made distinct."""
    from ovdet.inference.outputs import FRAME_DIGITS, split_frame_name

    source, frame = split_frame_name(str(path or "image"))
    stem = (Path(source).stem or "image") + ("" if frame is None else f"_frame{frame:0{FRAME_DIGITS}d}")
    name, i = stem, 1
    while name in taken:
        name, i = f"{stem}_{i}", i + 1
    taken.add(name)
    return f"{name}.jpg"
