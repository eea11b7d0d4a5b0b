"""Where predict's forward time goes, against what this machine's cores can do at all.

Profiles, with torch.profiler on one letterboxed 640×640 coco128 image, the network
``Detector.predict`` runs (vocabulary folded, channels-last) and the one ``YOLO.predict`` runs
(ultralytics' fused WorldModel in the layout its predictor gives it: channels-last on x86 CPUs
since ultralytics 8.4), counts each one's convolution FLOPs, and compares the convolutions' rate
with a 2048² fp32 matrix product on the same threads — the practical fp32 peak. Also prints the
profiled forward of ovdet's network as it is (``optimize=False``: NCHW, text attention per
image); ``ONEDNN_VERBOSE=1`` shows the reorders into and out of oneDNN's blocked layout around
each of its convolutions, which channels-last removes.

    python benchmarks/profile_predict.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_DATA,
    coco128_files,
    machine,
    ovdet_detector,
    ultralytics_pair,
    ultralytics_predict_network,
    ultralytics_predictor,
)


def conv_flops(net: Callable[[torch.Tensor], object], modules: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-add FLOPs (2 per MAC) of every Conv2d of ``modules`` in one call ``net(x)``."""
    total = 0

    def hook(m: torch.nn.Conv2d, _, out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1] * out.numel()

    handles = [m.register_forward_hook(hook) for m in modules.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        net(x)
    for h in handles:
        h.remove()
    return total


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    """Median GFLOP/s of an n×n fp32 matrix product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def profiled(net: Callable[[torch.Tensor], object], x: torch.Tensor, reps: int) -> tuple[float, float, dict]:
    """Median-by-total profile of ``net(x)``: (convolution seconds, total seconds, op → self seconds)."""
    runs = []
    with torch.inference_mode():
        for _ in range(2):
            net(x)
        for _ in range(reps):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                net(x)
            ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
            runs.append((sum(v for k, v in ops.items() if "conv" in k), sum(ops.values()), ops))
    return sorted(runs, key=lambda r: r[1])[len(runs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ovdet.data.letterbox import letterbox, to_tensor

    files = coco128_files(args.data)
    _, pt, text = ultralytics_pair(args.data, Path(tempfile.mkdtemp(prefix="ovdet-profile-")))
    det = ovdet_detector(pt, text)
    theirs, layout = ultralytics_predict_network(ultralytics_predictor(pt, text), files[0])
    torch.set_num_threads(args.threads)  # ultralytics' predictor set its own count
    net = det.folded_network()
    x = to_tensor([letterbox(cv2.imread(str(files[0])), 640, auto=False)[0]])

    def ours(im: torch.Tensor) -> object:
        return net(im.contiguous(memory_format=torch.channels_last))

    def ultralytics(im: torch.Tensor) -> object:
        return theirs.predict(im, txt_feats=text[None])

    peak = matmul_gflops()
    print(f"{machine('cpu', args.threads)}; v2-s, 1×3×640×640; 2048² fp32 matmul: {peak:.0f} GFLOP/s")
    for name, fn, modules in (
        ("ovdet predict's network (folded, channels-last)", ours, net),
        (f"ultralytics YOLO.predict's network ({layout})", ultralytics, theirs),
    ):
        flops = conv_flops(fn, modules, x)
        conv, total, ops = profiled(fn, x, args.reps)
        print(
            f"{name}: forward (profiled) {1e3 * total:.1f} ms; convolutions {flops / 1e9:.2f} GFLOP in "
            f"{1e3 * conv:.1f} ms = {flops / conv / 1e9:.0f} GFLOP/s ({100 * conv / total:.0f}% of the time); the rest:"
        )
        for op, t in sorted(((k, v) for k, v in ops.items() if "conv" not in k), key=lambda kv: -kv[1])[:6]:
            print(f"  {op:<34} {1e3 * t:7.1f} ms ({100 * t / total:.0f}%)")

    # The same network as it is, NCHW: oneDNN reorders activations into its blocked layout and back.
    plain = x.contiguous()
    with torch.inference_mode():
        det.model(plain, det.class_embeddings)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            det.model(plain, det.class_embeddings)
    nchw = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
    print(f"ovdet optimize=False (NCHW, text attention per image): {nchw:.1f} ms profiled")


if __name__ == "__main__":
    main()
