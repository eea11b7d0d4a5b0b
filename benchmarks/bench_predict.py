"""Inference speed and memory: ovdet vs ultralytics on the same YOLO-World weights, one run.

One random ultralytics v2 model (BatchNorm statistics set on coco128) is saved as ultralytics
saves checkpoints and converted to ovdet; both get the same text embeddings. Rows (interleaved,
medians; ratio = ovdet time / ultralytics time, lower is better):

- forward: the same letterboxed 640×640 coco128 batch through the network ``YOLO.predict`` runs
  (ultralytics' fused WorldModel in the memory layout its predictor gives it: channels-last on
  x86 CPUs since ultralytics 8.4; the ratios are against this row), the same WorldModel in NCHW
  when that differs, the network ovdet's ``predict`` runs (vocabulary folded, channels-last) and
  ovdet's fused network as it is;
- end to end: ``YOLO.predict(folder, batch=b)`` vs ``Detector.predict(folder, batch=b)`` over
  coco128 files (decode + letterbox + network + NMS + results in original pixels);
- ``set_classes`` with the 1203 LVIS names, embeddings already cached (ovdet-demo's encoder);
- peak RSS while streaming video frames through ``predict(..., stream=True)``.

    python benchmarks/bench_predict.py --threads 2
    python benchmarks/bench_predict.py --device cuda:0 --precision fp16 --batches 1,64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_DATA,
    coco128_files,
    interleaved,
    machine,
    ovdet_detector,
    ultralytics_pair,
    ultralytics_predict_network,
    ultralytics_predictor,
)


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_video(path: Path, files: list[Path], frames: int, size: tuple[int, int] = (640, 480)) -> Path:
    """An MJPG .avi of ``frames`` frames cycling through ``files`` (resized to ``size`` w×h)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, size)
    images = [cv2.resize(cv2.imread(str(p)), size) for p in files[:32]]
    for i in range(frames):
        writer.write(images[i % len(images)])
    writer.release()
    return path


def forward_rows(
    det,
    theirs: dict[str, torch.nn.Module],
    text: torch.Tensor,
    files: list[Path],
    batch: int,
    dtype,
    device: torch.device,
    compiled: bool = False,
):
    """Callables for the forward rows at one batch size (same input for all).

    Args:
        theirs: row name → an ultralytics WorldModel (the first is the baseline).
        compiled: add the folded network through ``torch.compile(options={"freezing": True})``.
    """
    from ovdet.data.letterbox import letterbox, to_tensor

    x = to_tensor([letterbox(cv2.imread(str(p)), 640, auto=False)[0] for p in files[:batch]]).to(device)
    folded = det.folded_network()
    layout = next(folded.parameters()).is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if layout else torch.contiguous_format
    txt = text.to(device)

    def ctx():
        return (
            torch.autocast(device.type, dtype=dtype)
            if dtype is not None
            else torch.autocast(device.type, enabled=False)
        )

    def ul(net: torch.nn.Module):
        with torch.inference_mode(), ctx():  # NCHW input, as ultralytics' preprocessing gives it
            return net.predict(x, txt_feats=txt[None].expand(batch, -1, -1))

    def ov_folded():
        with torch.inference_mode(), ctx():
            return folded(x.contiguous(memory_format=fmt))

    def ov_plain():
        with torch.inference_mode(), ctx():
            return det.model(x, txt)

    rows = {name: partial(ul, net) for name, net in theirs.items()}
    rows |= {"ovdet (predict's network)": ov_folded, "ovdet (network as is)": ov_plain}
    if compiled:
        frozen = torch.compile(folded, options={"freezing": True})

        def ov_compiled():
            with torch.no_grad(), ctx():  # inductor's freezing needs no_grad, not inference_mode
                return frozen(x.contiguous(memory_format=fmt))

        rows["ovdet (folded, torch.compile freezing)"] = ov_compiled
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--scale", default="s")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for every row (CPU)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--batches", default="1,4", help="forward batch sizes")
    ap.add_argument("--e2e-batches", default="1,8", help="end-to-end batch sizes")
    ap.add_argument("--files", type=int, default=16, help="coco128 files per end-to-end round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--video-frames", type=int, default=1000, help="0: skip the video memory row")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: forward,e2e,set_classes,video")
    ap.add_argument("--compile", action="store_true", help="add a torch.compile(freezing) forward row (slow start)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    threads = args.threads if device.type == "cpu" else None

    files = coco128_files(args.data)
    tmp = Path(tempfile.mkdtemp(prefix="ovdet-bench-predict-"))
    theirs, pt, text = ultralytics_pair(args.data, tmp, args.scale)
    det = ovdet_detector(pt, text, device=str(device))
    theirs = theirs.float().to(device).fuse(verbose=False)
    theirs.model[-1].nc = len(text)
    yolo = ultralytics_predictor(pt, text)
    predict_net, layout = ultralytics_predict_network(yolo, files[0], str(device))
    networks = {"ultralytics": predict_net}  # the baseline: what YOLO.predict runs
    if layout != "NCHW":
        networks["ultralytics (NCHW module)"] = theirs
    where = machine(device, threads)
    print(f"v2-{args.scale}, 80 classes, 640, {args.precision}; {where}; YOLO.predict runs {layout}", flush=True)
    rows: list[dict] = []

    def report(figure: str, batch: int | str, timings, base: str = "ultralytics", extra: dict | None = None):
        ref = timings[base].median
        for name, t in timings.items():
            row = {
                "figure": figure,
                "batch": batch,
                "row": name,
                "ms": 1e3 * t.median,
                "spread_ms": 1e3 * t.spread,
                "ratio": t.median / ref,
                **(extra or {}).get(name, {}),
            }
            rows.append(row)
            print(
                f"{figure:<10} b{batch:<3} {name:<30} {row['ms']:8.1f} ms/img  spread {row['spread_ms']:6.1f}  "
                f"ratio {row['ratio']:.3f}",
                flush=True,
            )

    if "forward" not in skip:
        for b in [int(v) for v in args.batches.split(",")]:
            fns = forward_rows(det, networks, text, files, b, dtype, device, compiled=args.compile)
            report("forward", b, interleaved(fns, args.rounds, items=b, warmup=2, threads=threads, sync=sync))

    if "e2e" not in skip:
        folder = tmp / "images"
        folder.mkdir()
        for p in files[: args.files]:
            (folder / p.name).symlink_to(p.resolve())
        half = dtype is not None
        for b in [int(v) for v in args.e2e_batches.split(",")]:
            kw = dict(conf=0.25, iou=0.7, imgsz=640, batch=b)
            fns = {
                "ultralytics": lambda kw=kw: yolo.predict(
                    str(folder), verbose=False, device=str(device), **({"half": True} if half else {}), **kw
                ),
                "ovdet": lambda kw=kw: det.predict(str(folder), keep_images=False, precision=args.precision, **kw),
                "ovdet (optimize=False)": lambda kw=kw: det.predict(
                    str(folder), keep_images=False, precision=args.precision, optimize=False, **kw
                ),
            }
            boxes = {name: {"boxes": sum(len(r) for r in fn())} for name, fn in fns.items()}
            timings = interleaved(fns, args.rounds, items=args.files, warmup=0, threads=threads, sync=sync)
            report("e2e", b, timings, extra=boxes)

    if "set_classes" not in skip:
        rows.extend(bench_set_classes(tmp, device))

    if "video" not in skip and args.video_frames:
        rows.append(bench_video(tmp, files, args.video_frames, device))

    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": where, "precision": args.precision, "ultralytics_layout": layout, "rows": rows}, indent=1
            )
        )
    return rows


def bench_set_classes(tmp: Path, device: torch.device) -> list[dict]:
    """``set_classes`` with the 1203 LVIS names through ovdet-demo's encoder, cache already warm."""
    from ovdet import Detector
    from ovdet.text import EmbeddingCache
    from ovdet.text.vocabulary import builtin_vocabulary

    names = builtin_vocabulary("lvis")
    det = Detector.from_pretrained("ovdet-demo", device=str(device))
    det.cache = EmbeddingCache(tmp / "emb.safetensors")
    t = time.perf_counter()
    det.set_classes(names)  # encodes once and fills the cache
    first = time.perf_counter() - t
    times = []
    for _ in range(20):
        t = time.perf_counter()
        det.set_classes(names)
        times.append(time.perf_counter() - t)
    # a fresh detector reading the cache file from disk (another process's view)
    fresh = Detector.from_pretrained("ovdet-demo", device=str(device))
    fresh.cache = EmbeddingCache(tmp / "emb.safetensors")
    t = time.perf_counter()
    fresh.set_classes(names)
    from_disk = time.perf_counter() - t
    med = statistics.median(times)
    print(
        f"set_classes {len(names)} LVIS names: {1e3 * med:.2f} ms cached in memory (spread "
        f"{1e3 * (max(times) - min(times)):.2f}), {1e3 * from_disk:.1f} ms from the cache file, "
        f"{first:.1f} s uncached (encoding)",
        flush=True,
    )
    return [
        {
            "figure": "set_classes",
            "row": "cached (memory)",
            "ms": 1e3 * med,
            "spread_ms": 1e3 * (max(times) - min(times)),
        },
        {"figure": "set_classes", "row": "cached (file)", "ms": 1e3 * from_disk},
        {"figure": "set_classes", "row": "uncached (encode)", "ms": 1e3 * first},
    ]


def bench_video(tmp: Path, files: list[Path], frames: int, device: torch.device) -> dict:
    """Peak RSS growth while streaming ``frames`` 640×480 video frames through ovdet-demo at 320."""
    from ovdet import Detector
    from ovdet.text.vocabulary import builtin_vocabulary

    video = write_video(tmp / "frames.avi", files, frames)
    det = Detector.from_pretrained("ovdet-demo", device=str(device))
    det.set_classes(builtin_vocabulary("coco"))
    rss, n, boxes = [], 0, 0
    t = time.perf_counter()
    for d in det.predict(str(video), conf=0.25, imgsz=320, stream=True, keep_images=False):
        n += 1
        boxes += len(d)
        rss.append(rss_mb())
    seconds = time.perf_counter() - t
    after100 = rss[min(99, len(rss) - 1)]
    growth = max(rss[100:] or rss) - after100
    print(
        f"video: {n} frames streamed in {seconds:.1f} s ({n / seconds:.1f} fps, {boxes} boxes); RSS at frame 100 "
        f"{after100:.0f} MiB, peak after it {max(rss):.0f} MiB, growth {growth:.1f} MiB (target <= 50)",
        flush=True,
    )
    return {
        "figure": "video",
        "row": f"{n} frames, ovdet-demo at 320",
        "frames": n,
        "rss_at_100_mb": after100,
        "peak_rss_mb": max(rss),
        "growth_mb": growth,
        "fps": n / seconds,
    }


if __name__ == "__main__":
    main()
