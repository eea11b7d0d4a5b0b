"""``ovdet serve``: the HTTP API with micro-batching and a web page (the [serve] extra)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

HELP = "HTTP API with micro-batching and a web page (needs the [serve] extra)"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "serve", HELP)
    opt.add_model(p)
    opt.add_vocabulary(
        p,
        classes_help="default vocabulary for requests that send none: names, coco / lvis / objects365, or a .txt",
        embeddings_help="default vocabulary from `ovdet embed` instead of --classes",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless told otherwise)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    opt.add_device(p)
    opt.add_precision(p, help="inference precision")
    p.add_argument(
        "--api-key", help="require this key in the X-API-Key header (better: set $OVDET_API_KEY, not visible in ps)"
    )
    p.add_argument("--batch-window-ms", type=float, default=10.0, help="how long a request waits for batch mates")
    p.add_argument("--max-batch", type=int, default=8, help="images per forward pass at most")
    p.add_argument("--queue-size", type=int, default=64, help="requests waiting or running at most (503 beyond)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take (504 beyond)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest request body, MiB (413 beyond)")
    opt.add_max_pixels(p, default=40_000_000, help="largest image, width x height (413 beyond)")
    p.add_argument("--max-images", type=int, default=16, help="images per request at most")
    p.add_argument("--max-classes", type=int, default=2000, help="class names per request at most")
    p.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open connections at most; at the limit the longest-waiting idle or half-sent one is closed "
        "(503 when all are busy); must exceed --queue-size",
    )
    p.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds a client has to send a request's headers"
    )
    p.add_argument("--keep-alive", type=float, default=5.0, help="seconds an idle keep-alive connection stays open")
    p.add_argument(
        "--max-request-decoded-mb",
        type=float,
        default=1024.0,
        help="memory one request's images may decode to, MiB: 3 bytes/pixel each + 8 for the largest (413 beyond)",
    )
    p.add_argument(
        "--memory-budget-mb",
        type=float,
        default=4096.0,
        help="request bodies and decoded images in flight across the server, MiB (503 beyond)",
    )
    p.add_argument(
        "--cors", action="append", default=[], metavar="ORIGIN", help="allow browser calls from ORIGIN (repeatable)"
    )
    p.add_argument("--imgsz-warmup", type=int, default=640, help="image size of the warm-up pass")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up pass at start")
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="server log"
    )
    opt.add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from ovdet.config import ServeConfig
    from ovdet.device import resolve_device, resolve_precision

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"`ovdet serve` needs {', '.join(missing)} (not installed): pip install 'ovdet[serve]'")
    opt.check_device(args.device)
    opt.build(resolve_precision, args.precision, resolve_device(args.device))
    cfg = opt.build(
        ServeConfig,
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("OVDET_API_KEY") or None,
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
        queue_size=args.queue_size,
        timeout_s=args.timeout,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        max_images=args.max_images,
        max_classes=args.max_classes,
        cors_origins=tuple(args.cors),
        max_connections=args.max_connections,
        header_timeout_s=args.header_timeout,
        keep_alive_s=args.keep_alive,
        max_request_decoded_bytes=int(args.max_request_decoded_mb * 1024 * 1024),
        memory_budget_bytes=int(args.memory_budget_mb * 1024 * 1024),
    )
    classes = opt.read_classes(args.classes) if args.classes else None
    opt.check_file("--embeddings", args.embeddings)
    opt.check_model_spec(args.model)

    import uvicorn

    from ovdet.serve.app import create_app, public_bind_warning
    from ovdet.serve.connections import guarded_protocol

    det = opt.open_detector(args, classes)
    warning = public_bind_warning(cfg)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    app = create_app(det, cfg, model_name=args.model, precision=args.precision)
    if det.names and not args.no_warmup:
        start = time.perf_counter()
        app.state.engine.warmup(args.imgsz_warmup)
        print(f"warmed up in {time.perf_counter() - start:.1f} s ({len(det.names)} default classes)")
    shown = f"{len(det.names)} default classes" if det.names else "no default classes (requests must send classes)"
    print(
        f"ovdet serve: {args.model} on {det.device}, {shown}; page http://{_url_host(cfg.host)}:{cfg.port}/ , API docs /docs"
    )
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=args.log_level,
        http=guarded_protocol(cfg),  # header deadline, connection cap with JSON answers
        timeout_keep_alive=cfg.keep_alive_s,  # type: ignore[arg-type]  # seconds; uvicorn takes a float
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
