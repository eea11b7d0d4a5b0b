"""Where predict's forward time goes, against what this machine's cores can do at all.

Profiles the network ``Detector.predict`` runs (vocabulary folded, channels-last) on one
letterboxed 640×640 coco128 image with torch.profiler, counts its convolution FLOPs, and compares
the convolutions' rate with a 2048² fp32 matrix product on the same threads — the practical
fp32 peak. Also prints the profiled forward of the network as it is (``optimize=False``: NCHW,
text attention per image); ``ONEDNN_VERBOSE=1`` shows the reorders into and out of oneDNN's
blocked layout around each of its convolutions, which channels-last removes.

    python benchmarks/profile_predict.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, coco128_files, machine, ovdet_detector, ultralytics_pair  # noqa: E402


def conv_flops(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-add FLOPs (2 per MAC) of every Conv2d in one forward of ``net`` on ``x``."""
    total = 0

    def hook(m: torch.nn.Conv2d, _, out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1] * out.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ovdet.data.letterbox import letterbox, to_tensor

    _, pt, text = ultralytics_pair(args.data, Path(tempfile.mkdtemp(prefix="ovdet-profile-")))
    det = ovdet_detector(pt, text)
    net = det.folded_network()
    x = to_tensor([letterbox(cv2.imread(str(coco128_files(args.data)[0])), 640, auto=False)[0]])
    x = x.contiguous(memory_format=torch.channels_last)
    flops = conv_flops(net, x)
    runs = []
    with torch.inference_mode():
        for _ in range(2):
            net(x)
        for _ in range(args.reps):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                net(x)
            ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
            runs.append((sum(v for k, v in ops.items() if "conv" in k), sum(ops.values()), ops))
    conv, total, ops = sorted(runs, key=lambda r: r[1])[len(runs) // 2]
    peak = matmul_gflops()
    print(f"{machine('cpu', args.threads)}; v2-s folded channels-last, 1×3×640×640")
    print(f"convolutions: {flops / 1e9:.1f} GFLOP in {1e3 * conv:.1f} ms = {flops / conv / 1e9:.0f} GFLOP/s")
    print(f"2048² fp32 matmul on the same threads: {peak:.0f} GFLOP/s")
    print(f"forward (profiled) {1e3 * total:.1f} ms: convolutions {100 * conv / total:.0f}%; the rest:")
    for name, t in sorted(((k, v) for k, v in ops.items() if "conv" not in k), key=lambda kv: -kv[1])[:6]:
        print(f"  {name:<34} {1e3 * t:7.1f} ms ({100 * t / total:.0f}%)")

    # The same network as it is, NCHW: oneDNN reorders activations into its blocked layout and back.
    plain = x.contiguous()
    with torch.inference_mode():
        det.model(plain, det.class_embeddings)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            det.model(plain, det.class_embeddings)
    nchw = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
    print(f"optimize=False (NCHW, text attention per image): {nchw:.1f} ms profiled")


if __name__ == "__main__":
    main()
