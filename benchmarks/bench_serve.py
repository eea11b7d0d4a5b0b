"""``ovdet serve`` under load: requests/s and latency from C concurrent clients over loopback, with
V vocabularies, against the same model's in-process ``Detector.predict`` throughput measured in
the same run (the server's overhead and what micro-batching gives back).

ultralytics ships no HTTP server, so the peer here is ovdet itself in process. Prints
requests/s, p50/p99 latency, the mean batch size the server formed, server RSS before and after,
and the ratios server images/s ÷ in-process images/s (batch 1, one image at a time; with one
vocabulary, and switching among the V vocabularies each call as the server's clients do).

    python benchmarks/bench_serve.py --requests 300 --concurrency 8 --imgsz 320
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

_DEFAULT_DATA = Path(__file__).resolve().parents[1] / "../shared/data"
VOCABULARIES = ["person, car, bus, bicycle", "dog, cat, bowl, cup, pizza", "coco"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("OVDET_DATA", str(_DEFAULT_DATA)))
    ap.add_argument("--model", default="ovdet-demo")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--images", type=int, default=12, help="distinct coco128 images cycled through")
    ap.add_argument("--batch-window-ms", type=float, default=15.0)
    ap.add_argument("--max-batch", type=int, default=8)
    args = ap.parse_args()

    import psutil

    from ovdet import Detector
    from ovdet.data.images import decode_image
    from ovdet.serve.load import Payload, run_load

    paths = sorted((Path(args.data) / "coco128" / "images" / "train2017").glob("*.jpg"))[: args.images]
    payloads = [
        Payload(p.name, p.read_bytes(), {"classes": v, "imgsz": str(args.imgsz)}) for p in paths for v in VOCABULARIES
    ]

    # in process: the same images and vocabularies, one image per call
    det = Detector.from_pretrained(args.model, device="cpu")
    images = [decode_image(p) for p in paths]
    for v in VOCABULARIES:
        det.set_classes(v if v == "coco" else [n.strip() for n in v.split(",")])
        det.predict(images[0], imgsz=args.imgsz)
    n_local = min(args.requests, 60)
    start = time.perf_counter()
    for i in range(n_local):
        v = VOCABULARIES[i % len(VOCABULARIES)]
        det.set_classes(v if v == "coco" else [n.strip() for n in v.split(",")])
        det.predict(images[(i // len(VOCABULARIES)) % len(images)], imgsz=args.imgsz)
    switching_ips = n_local / (time.perf_counter() - start)
    det.set_classes([n.strip() for n in VOCABULARIES[0].split(",")])
    start = time.perf_counter()
    for i in range(n_local):
        det.predict(images[i % len(images)], imgsz=args.imgsz)
    local_ips = n_local / (time.perf_counter() - start)
    del det

    port = _port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "ovdet", "serve", "--model", args.model, "--device", "cpu", "--port", str(port)]
    cmd += ["--batch-window-ms", str(args.batch_window_ms), "--max-batch", str(args.max_batch)]
    cmd += ["--imgsz-warmup", str(args.imgsz), "--log-level", "warning"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(720):
                try:
                    if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.25)
            else:
                raise SystemExit("the server did not start")
            run_load(url, payloads[: len(VOCABULARIES)], len(VOCABULARIES), 1)  # encode each vocabulary
            run_load(url, payloads, 2 * args.concurrency, args.concurrency)
            server = psutil.Process(proc.pid)
            rss0 = server.memory_info().rss
            report = run_load(url, payloads, args.requests, args.concurrency, timeout=300)
            rss1 = server.memory_info().rss
            stats = httpx.get(url + "/v1/stats").json()
        finally:
            proc.terminate()
            proc.wait(30)

    print(f"machine: {os.cpu_count()} CPUs; model {args.model} at imgsz {args.imgsz}; {len(VOCABULARIES)} vocabularies")
    print(
        f"in process (Detector.predict, one image per call): {local_ips:.2f} images/s with one vocabulary, "
        f"{switching_ips:.2f} switching vocabulary every call (the folded copy is rebuilt)"
    )
    print(f"server, {args.concurrency} clients: {report.summary()}")
    print(
        f"server mean batch: {stats['mean_batch_requests']:.2f} requests; RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB"
    )
    print(
        f"ratio server / in process: {report.rps / local_ips:.2f}x (one vocabulary), "
        f"{report.rps / switching_ips:.2f}x (switching)"
    )


if __name__ == "__main__":
    main()
