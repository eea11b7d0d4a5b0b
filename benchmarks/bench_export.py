"""Deployment speed: ultralytics PyTorch predict vs ovdet PyTorch vs ovdet's exports, same weights, one run.

One random ultralytics YOLO-World v2 model (its BatchNorm statistics set on real coco128 images,
so scores look like a trained model's) is saved as ultralytics saves checkpoints and converted
to ovdet; the same 80-class text embeddings go to both. Every row predicts the same coco128
image files end to end (decode + letterbox + network + NMS) at 640, batch 1, with the same
conf/iou; rows run interleaved (A B C … A B C …) and the medians over rounds are compared with
ultralytics' (ratio = time / ultralytics' time, lower is better).

    python benchmarks/bench_export.py --data ../shared/data --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import coco128_files, interleaved, ovdet_detector, ultralytics_pair, ultralytics_predictor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("OVDET_DATA", "../shared/data"))
    ap.add_argument("--scale", default="s")
    ap.add_argument("--images", type=int, default=16, help="coco128 files predicted per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO rows (pip install openvino for them)")
    ap.add_argument("--static-shapes", type=int, default=4, help="OpenVINO: input shapes compiled static")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ovdet.deploy import OnnxDetector

    files = coco128_files(args.data)
    tmp = Path(tempfile.mkdtemp(prefix="ovdet-bench-export-"))
    # every row reads the same folder: ultralytics turns a *list* of paths into one padded batch
    folder = tmp / "images"
    folder.mkdir()
    for p in files[: args.images]:
        (folder / p.name).symlink_to(p.resolve())
    paths = [str(p) for p in sorted(folder.iterdir())]
    _, pt, text = ultralytics_pair(args.data, tmp, args.scale, classes=args.classes)
    names = [f"class {i}" for i in range(args.classes)]
    det = ovdet_detector(pt, text)
    yolo = ultralytics_predictor(pt, text)

    t0 = time.perf_counter()
    baked = det.export(
        tmp / "baked.onnx", int8=True, calib=str(Path(args.data) / "coco128/images/train2017"), calib_images=32
    )
    dynamic = det.export(tmp / "dynamic.onnx", dynamic_vocab=True, text_encoder=False)
    export_s = time.perf_counter() - t0
    int8 = baked.files[-1]

    rows: dict[str, object] = {
        "ultralytics PyTorch": lambda: yolo.predict(
            str(folder), conf=args.conf, iou=0.7, imgsz=640, verbose=False, device="cpu", batch=1
        ),
        "ovdet PyTorch": lambda: det.predict(str(folder), conf=args.conf, iou=0.7, imgsz=640, keep_images=False),
        "ovdet PyTorch bf16 (CPU autocast)": lambda: det.predict(
            str(folder), conf=args.conf, iou=0.7, imgsz=640, keep_images=False, precision="bf16"
        ),
    }
    runners = {
        "ovdet onnxruntime fp32": OnnxDetector(baked.path, threads=args.threads),
        "ovdet onnxruntime fp32, dynamic vocab": OnnxDetector(dynamic.path, threads=args.threads),
        "ovdet onnxruntime int8": OnnxDetector(int8, threads=args.threads),
    }
    if not args.no_openvino:
        ov_args = dict(threads=args.threads, backend="openvino", static_shapes=args.static_shapes)
        runners["ovdet OpenVINO fp32"] = OnnxDetector(baked.path, **ov_args)
        try:
            runners["ovdet OpenVINO bf16"] = OnnxDetector(baked.path, precision="bf16", **ov_args)
        except ValueError as e:  # a CPU without bfloat16 instructions
            print(f"no OpenVINO bf16 row: {e}")
        runners["ovdet int8 export on OpenVINO"] = OnnxDetector(int8, **ov_args)
    runners["ovdet onnxruntime fp32, dynamic vocab"].set_class_embeddings(names, text.numpy())
    for name, runner in runners.items():
        rows[name] = lambda r=runner: r.predict(str(folder), conf=args.conf, iou=0.7, imgsz=640, keep_images=False)

    counts = {name: sum(len(d) for d in fn()) for name, fn in rows.items()}  # warm-up (every shape) + box counts
    # ultralytics' predictor setup calls torch.set_num_threads(cpu_count - 1); every row gets --threads
    timings = interleaved(rows, args.rounds, items=len(paths), warmup=0, threads=args.threads)
    base = timings["ultralytics PyTorch"].median
    print(
        f"v2-{args.scale}, 640, CPU {platform.processor() or platform.machine()} x{os.cpu_count()} cores, "
        f"{args.threads} threads, {len(paths)} coco128 files x {args.rounds} interleaved rounds, "
        f"{args.classes} classes, conf {args.conf}; exports took {export_s:.0f} s; int8 kept "
        f"{100 * baked.checks['int8']['fraction']:.1f}% of fp32 boxes on held-out images"
    )
    print(f"{'':40} {'ms/image':>9} {'spread':>8} {'ratio':>6} {'boxes':>6}")
    for name, t in timings.items():
        print(f"{name:40} {1e3 * t.median:9.1f} {1e3 * t.spread:8.1f} {t.median / base:6.2f} {counts[name]:6d}")
    print(
        "ratio = time / ultralytics PyTorch time (lower is better); targets: onnxruntime fp32 <= 0.5, int8 <= 0.3; "
        "box counts differ where the arithmetic does (bf16, int8: a random network's near-threshold scores move)"
    )


if __name__ == "__main__":
    main()
