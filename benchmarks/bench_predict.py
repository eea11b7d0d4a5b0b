"""Inference throughput: ovdet vs ultralytics on the same YOLO-World weights, same run.

Both models are built from the same random ultralytics WorldModel (converted for ovdet), fed the
same letterboxed coco128 batch and the same text embeddings; the network forward (plus decode
and NMS for the end-to-end rows) is timed with CUDA synchronisation. Prints a table with the
ovdet/ultralytics speed ratio (> 1: ovdet faster).

    python benchmarks/bench_predict.py --data ../shared/data --scale s --device cuda:0
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import cv2
import torch


def timeit(fn, device: torch.device, warmup: int = 5, iters: int = 30) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--scale", default="s")
    ap.add_argument("--version", type=int, default=2)
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()

    from ultralytics.nn.tasks import WorldModel
    from ultralytics.utils.nms import non_max_suppression

    from ovdet import Detector
    from ovdet.config import NMSConfig
    from ovdet.data.letterbox import letterbox, to_tensor

    device = torch.device(args.device)
    yaml = f"yolov8{args.scale}-world{'v2' if args.version == 2 else ''}.yaml"
    torch.manual_seed(0)
    theirs = WorldModel(yaml, verbose=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        pt = Path(tmp) / "m.pt"
        torch.save({"model": copy.deepcopy(theirs).half()}, pt)
        det = Detector.from_ultralytics(pt, trust=True, device=device)
    theirs = theirs.float().to(device).fuse(verbose=False)
    det.fuse()
    imgs = sorted((Path(args.data) / "coco128/images/train2017").glob("*.jpg"))
    text = torch.nn.functional.normalize(torch.randn(args.classes, 512), dim=-1).to(device)
    theirs.model[-1].nc = args.classes
    print(f"device={device} model={yaml} classes={args.classes} imgsz=640")
    print(f"{'batch':>5} {'precision':>9} {'what':>10} {'ovdet ms':>9} {'ultra ms':>9} {'ratio':>6}")
    for bs in [int(b) for b in args.batches.split(",")]:
        x = to_tensor([letterbox(cv2.imread(str(p)), 640, stride=32, auto=False)[0] for p in imgs[:bs]]).to(device)
        for prec in ["fp32", "fp16"] if device.type == "cuda" else ["fp32"]:
            dtype = torch.float16 if prec == "fp16" else None
            ctx = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype else torch.no_grad

            def ours_fwd():
                with torch.inference_mode(), ctx():
                    return det.model(x, text)

            def theirs_fwd():
                with torch.inference_mode(), ctx():
                    return theirs.predict(x, txt_feats=text[None].expand(bs, -1, -1))

            def ours_e2e():
                with torch.inference_mode(), ctx():
                    return det.model.postprocess(det.model(x, text), NMSConfig(conf=0.001, iou=0.7))

            def theirs_e2e():
                with torch.inference_mode(), ctx():
                    y = theirs.predict(x, txt_feats=text[None].expand(bs, -1, -1))[0]
                    return non_max_suppression(y.float(), conf_thres=0.001, iou_thres=0.7)

            for what, a, b in (("forward", ours_fwd, theirs_fwd), ("+NMS", ours_e2e, theirs_e2e)):
                ta, tb = timeit(a, device, iters=args.iters), timeit(b, device, iters=args.iters)
                print(f"{bs:>5} {prec:>9} {what:>10} {ta * 1e3:>9.2f} {tb * 1e3:>9.2f} {tb / ta:>6.2f}")


if __name__ == "__main__":
    main()
