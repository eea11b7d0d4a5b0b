"""``ovdet index`` and ``ovdet search``: text search over an image collection (region embeddings
in a faiss index, re-ranked by the detector)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError
from ovdet.config import check_imgsz

INDEX_HELP = "index a folder of images for text search (region embeddings in a faiss index)"
SEARCH_HELP = "find the images (and boxes) of an index that match a text query"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "index", INDEX_HELP)
    opt.add_model(
        p, help="ovdet checkpoint folder, model YAML or pretrained name (default: the index's)", required=False
    )
    p.add_argument("--source", required=True, help="image file, folder or glob")
    p.add_argument("--out", required=True, help="index folder (an existing index is added to: new and changed files)")
    p.add_argument(
        "--vocabulary",
        help="indexing vocabulary that guides the neck and picks salient regions: lvis (default), coco, "
        "objects365, comma-separated names or a .txt file",
    )
    opt.add_imgsz(p, default=None, help="letterbox size (a multiple of 32; default 640)")
    p.add_argument("--regions", type=int, help="regions kept per image (default 64)")
    p.add_argument("--region-iou", type=float, help="NMS IoU among an image's regions (default 0.5)")
    p.add_argument(
        "--faiss", help="faiss index_factory string: Flat (exact, default), SQ8 (4x smaller), IVF1024,Flat (sub-linear)"
    )
    opt.add_batch(p, default=None, help="images per forward pass (default 8)")
    p.add_argument(
        "--save-every",
        type=float,
        default=120.0,
        help="seconds between saves of the index during the run (a killed run is continued by running the same "
        "command again); 0: after every batch",
    )
    opt.add_device(p)
    opt.add_quiet(p)
    opt.add_text_options(p)
    p.set_defaults(func=run_index)
    p = opt.command(sub, "search", SEARCH_HELP)
    p.add_argument("index", help="index folder written by `ovdet index`")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="text to search for (several: one search each)")
    p.add_argument("-k", type=int, default=10, help="images returned per query")
    opt.add_model(p, help="the model the index was built with (default: the one it records)", required=False)
    p.add_argument("--no-rerank", action="store_true", help="index scores only (no detector pass over candidates)")
    p.add_argument("--candidates", type=int, help="images re-ranked by the detector (default max(3k, 30))")
    p.add_argument("--html", help="write an HTML page of thumbnails with the boxes drawn")
    p.add_argument("--json", help="write the results as JSON")
    opt.add_device(p)
    opt.add_text_options(p)
    p.set_defaults(func=run_search)


def run_index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ovdet.api import portable_model_spec
    from ovdet.datatools import Index, IndexMismatchError, list_images

    opt.check_device(args.device)
    if args.save_every < 0:
        raise UsageError(f"--save-every must be >= 0 seconds, got {args.save_every}")
    try:
        files = list_images(args.source)
    except FileNotFoundError as e:
        raise UsageError(f"--source: {e}") from e
    settings = {"imgsz": args.imgsz, "regions": args.regions, "region_iou": args.region_iou, "faiss_index": args.faiss}
    vocabulary = opt.read_classes(args.vocabulary) if args.vocabulary else None
    existing = None
    if (Path(args.out) / "index.json").is_file():
        try:
            existing = Index.read_manifest(args.out)
        except ValueError as e:
            raise UsageError(f"--out: {e}") from e
        changed = [f"{k}={v!r} (index: {existing[k]!r})" for k, v in settings.items() if v not in (None, existing[k])]
        if vocabulary is not None and vocabulary != existing["vocabulary"]:  # names against names
            changed.append(
                f"vocabulary {args.vocabulary!r} ({_names(vocabulary)}; index: {_names(existing['vocabulary'])})"
            )
        if changed:
            raise UsageError(
                f"{args.out} already holds an index built with other settings ({', '.join(changed)}); "
                "drop those options (or give the index's) to add to it, or choose a new --out"
            )
    else:
        if args.imgsz is not None:
            opt.build(check_imgsz, args.imgsz, name="--imgsz", square=True)
        for name, value in (("--regions", args.regions), ("--batch", args.batch)):
            if value is not None:
                opt.positive(name, value)
    model = args.model or (existing or {}).get("model", {}).get("spec")
    if not model:
        raise UsageError("--model is required to build a new index")
    opt.check_model_spec(model)
    det = opt.open_detector(args, model=model)
    try:
        if existing is not None:
            index = Index.load(args.out, det)
            print(f"{args.out}: {len(index)} images indexed; adding new or changed files")
        else:
            index = Index(
                det, vocabulary or "lvis", **{k: v for k, v in settings.items() if v is not None}, batch=args.batch or 8
            )
            index.model_spec = portable_model_spec(model)
    except IndexMismatchError as e:
        raise UsageError(str(e)) from e
    except ValueError as e:
        raise UsageError(str(e)) from e
    if args.batch:
        index.batch = args.batch
    with tqdm(total=len(files), unit="img", desc="index", disable=args.quiet) as bar:
        report = index.add(files, progress=bar.update, save_to=args.out, save_every=args.save_every)
    index.save(args.out)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir() if f.is_file())
    print(report.text())
    print(
        f"index {args.out}: {len(index)} images, {index.num_regions} regions "
        f"({size / 2**20:.1f} MiB on disk, {size / max(len(index), 1) / 1024:.1f} KiB per image)"
    )
    return 0


def _names(names: list[str], shown: int = 3) -> str:
    """``"80 names: 'person', 'bicycle', 'car', ..."``: a vocabulary in a message."""
    head = ", ".join(repr(n) for n in names[:shown])
    return f"{len(names)} name{'s' if len(names) != 1 else ''}: {head}{', ...' if len(names) > shown else ''}"


def run_search(args: argparse.Namespace) -> int:
    import json

    from ovdet.datatools import Index, IndexMismatchError

    opt.check_device(args.device)
    opt.positive("-k", args.k)
    if args.candidates is not None:
        opt.positive("--candidates", args.candidates)
    try:
        manifest = Index.read_manifest(args.index)
    except ValueError as e:
        raise UsageError(str(e)) from e
    model = args.model or manifest["model"].get("spec")
    if not model:
        raise UsageError(f"{args.index} does not record its model: pass --model")
    opt.check_model_spec(model)
    det = opt.open_detector(args, model=model)
    try:
        index = Index.load(args.index, det)
    except IndexMismatchError as e:
        raise UsageError(str(e)) from e
    results = []
    for query in args.queries:
        try:
            res = index.search(query, k=args.k, rerank=not args.no_rerank, candidates=args.candidates)
        except ValueError as e:
            raise UsageError(str(e)) from e
        results.append(res)
        how = f"re-ranked {res.candidates}" if res.candidates else "index scores"
        ms = " + ".join(f"{k} {v * 1000:.0f} ms" for k, v in res.timings.items())
        print(f"{query!r}: {len(res.hits)} of {len(index)} images ({how}; {ms})")
        for rank, hit in enumerate(res.hits, 1):
            box = " ".join(f"{v:.0f}" for v in hit.box)
            mark = "" if hit.exact else "~"
            print(f"  {rank:3d}  {mark}{hit.score:.3f}  {hit.path}  [{box}]")
        for path, reason in res.skipped:
            print(f"  could not re-read {path}: {reason}")
    if args.html:
        from ovdet.datatools.gallery import search_page

        print(f"page: {search_page(results, args.html, title=f'ovdet search: {args.index}')}")
    if args.json:
        from ovdet.io import atomic_write_text

        atomic_write_text(args.json, json.dumps([r.to_dict() for r in results], indent=1))
        print(f"json: {args.json}")
    return 0
