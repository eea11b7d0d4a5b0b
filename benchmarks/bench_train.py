"""Training side by side: ovdet's trainer vs ultralytics' ``WorldTrainer``, same start, data and settings.

Both start from the same random YOLO-World v2 model (built by ultralytics from its yaml and
saved as ultralytics saves checkpoints), train on a copy of coco128 with the same image size,
batch, epochs and workers, each with its own default recipe (optimizer, warmup, augmentation),
and the same text embeddings (no CLIP weights exist offline: every text gets a fixed random unit
vector derived from its string, and ultralytics' ``get_text_pe`` and text-embedding cache are
replaced by that lookup). Reported: training images/s of each, and both final models' mAP50-95
and mAP50 on coco128, scored the same way (ovdet's validation with pycocotools).

    python benchmarks/bench_train.py --data ../shared/data --scale n --imgsz 256 --batch 16 --epochs 3
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("YOLO_OFFLINE", "1")  # this benchmark process only: no hub or DNS probes by ultralytics


def text_vector(text: str, dim: int = 512) -> torch.Tensor:
    """A fixed random unit vector per string (the same in both trainers)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def embed(texts) -> torch.Tensor:
    return torch.stack([text_vector(t) for t in texts])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("OVDET_DATA", "../shared/data"), help="shared data folder")
    ap.add_argument("--scale", default="n", help="model scale")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both trainers")
    ap.add_argument(
        "--init",
        default=None,
        help="a YOLOv8 .pt whose matching weights both trainers start from (default: random init)",
    )
    args = ap.parse_args()

    from ultralytics.models.yolo.world.train import WorldTrainer
    from ultralytics.nn.tasks import WorldModel

    torch.set_num_threads(args.threads)  # importing ultralytics sets it to cpu_count - 1; the same for both

    from ovdet import Detector
    from ovdet.config import EvalConfig, TrainConfig
    from ovdet.engine.train import train
    from ovdet.inference.validate import validate

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    shutil.copytree(Path(args.data) / "coco128", work / "coco128")  # ultralytics writes label caches beside labels
    yaml_path = work / "coco128" / "coco128.yaml"
    text = yaml_path.read_text().replace("path: ", "# path: ")
    yaml_path.write_text(f"path: {work / 'coco128'}\n" + text)

    torch.manual_seed(0)
    start = WorldModel(f"yolov8{args.scale}-worldv2.yaml", verbose=False)
    if args.init:  # both start from the weights of a real YOLOv8 wherever names and shapes match
        source = torch.load(args.init, map_location="cpu", weights_only=False)["model"].float().state_dict()
        own = start.state_dict()
        matched = {k: v for k, v in source.items() if k in own and v.shape == own[k].shape}
        start.load_state_dict(matched, strict=False)
        print(f"initialised {len(matched)}/{len(own)} tensors from {args.init}")
    pt = work / "init.pt"
    torch.save(
        {
            "model": copy.deepcopy(start).half(),
            "ema": None,
            "optimizer": None,
            "epoch": -1,
            "train_args": {},
            "date": "2026-11-23",
        },
        pt,
    )

    # --- ultralytics
    WorldModel.get_text_pe = lambda self, texts, batch=80, cache_clip_model=False, without_reprta=False: embed(
        texts
    ).unsqueeze(0)
    WorldTrainer.generate_text_embeddings = lambda self, texts, batch, cache_dir: {t: text_vector(t) for t in texts}
    ul_project = work / "ul"
    trainer = WorldTrainer(
        overrides=dict(
            model=str(pt),
            data=str(yaml_path),
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            workers=args.workers,
            device=args.device,
            val=False,
            plots=False,
            amp=False,
            project=str(ul_project),
            name="run",
            exist_ok=True,
            verbose=False,
            seed=0,
            deterministic=False,
        )
    )
    t0 = time.perf_counter()
    trainer.train()
    ul_time = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    ul_last = ul_project / "run" / "weights" / "last.pt"

    # --- ovdet
    det = Detector.from_ultralytics(pt, trust=True, device=args.device)
    cfg = TrainConfig(
        data=str(yaml_path),
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        workers=args.workers,
        device=args.device,
        project=str(work / "ov"),
        name="run",
        val_interval=10**6,
        seed=0,
        amp="off",
    )
    t0 = time.perf_counter()
    train(det.model, cfg, embed, progress=True)
    ov_time = time.perf_counter() - t0

    # --- the same scoring for both
    n_images = len(list((work / "coco128" / "images" / "train2017").glob("*.jpg")))
    eval_cfg = EvalConfig(split="train", imgsz=args.imgsz, progress=False, samples=0)
    ul_model = Detector.from_ultralytics(ul_last, trust=True, device=args.device).model
    rows = []
    for name, model, seconds in (("ultralytics WorldTrainer", ul_model, ul_time), ("ovdet", det.model, ov_time)):
        m = validate(model, yaml_path, embed, eval_cfg, torch.device(args.device))
        rows.append((name, n_images * args.epochs / seconds, seconds, m["AP"], m["AP50"]))
    init = f"init from {Path(args.init).name}" if args.init else "random init"
    print(
        f"\nyolov8{args.scale}-worldv2 {init}, coco128 ({n_images} images), imgsz {args.imgsz}, batch "
        f"{args.batch}, {args.epochs} epochs, {args.workers} workers, {args.device}, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(f"{'trainer':<26} {'images/s':>9} {'time s':>8} {'mAP50-95':>9} {'mAP50':>7}")
    for name, ips, seconds, ap, ap50 in rows:
        print(f"{name:<26} {ips:>9.2f} {seconds:>8.1f} {ap:>9.4f} {ap50:>7.4f}")
    print(f"ovdet / ultralytics images/s: {rows[1][1] / rows[0][1]:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
