"""Training data loader throughput: ovdet vs ultralytics on coco128, mosaic on, same run.

Both loaders read the 128 coco128 images with mosaic (p=1), affine, HSV and flip at the same
image size, batch size and worker count, and both sample per-image texts (ultralytics through
its YOLO-World multi-modal dataset, ``RandomLoadText``). ultralytics keeps up to
min(n, 8·batch, 1000) decoded images in a per-worker buffer, which holds all of coco128; ovdet
keeps a per-worker LRU of up to ``buffer_mb`` (default 256) MiB of decoded images, which holds it
too. ovdet is measured with its defaults (no cache, the buffer), with ``cache="ram"`` and with
neither (``buffer_mb=0``: every image decoded every time).

Every loader is built once, with persistent workers, and first runs ``--warmup`` untimed epochs
(ultralytics' buffer and ovdet's fill over the first epochs; the figure is the steady state a
training run sees). Then ``--rounds`` rounds each run every loader alone for ``--epochs``
consecutive epochs (one span: epoch boundaries included, so each loader's own prefetching across
epochs counts), the loaders' order reversed every other round, with a pause after each span so
one loader's read-ahead never runs while another is timed. A span's rate counts from the arrival
of its batch 2·workers·2 to its last: the first batches were made ahead (both loaders' workers
keep 2 batches each ready across epochs) or wait for the pipeline to fill. Dataset construction
is not timed. Prints each loader's median images/s over the rounds, the spread, and the
ovdet/ultralytics ratios (> 1: ovdet faster).

    python benchmarks/bench_loader.py --imgsz 640 --batch 16 --workers 2 --warmup 3 --epochs 5 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

_DEFAULT_DATA = Path(__file__).resolve().parents[1] / "../shared/data"


def _ultralytics_loader(coco128: Path, root: Path, imgsz: int, batch: int, workers: int):
    """ultralytics' own YOLO-World training loader over a symlinked copy of coco128.

    The symlinks give ultralytics a writable folder for its ``labels/train2017.cache`` without
    touching the shared (read-only) data.
    """
    import yaml
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader, build_yolo_dataset

    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        link = root / sub / "train2017"
        if not link.exists():
            link.symlink_to(coco128 / sub / "train2017", target_is_directory=True)
    names = yaml.safe_load((coco128 / "coco128.yaml").read_text())["names"]
    data = {"names": names, "nc": len(names), "channels": 3}
    cfg = get_cfg(overrides={"imgsz": imgsz, "mosaic": 1.0, "close_mosaic": 0, "workers": workers, "batch": batch})
    dataset = build_yolo_dataset(cfg, str(root / "images" / "train2017"), batch, data, mode="train", multi_modal=True)
    return build_dataloader(dataset, batch, workers, shuffle=True, rank=-1, pin_memory=False, device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("OVDET_DATA", str(_DEFAULT_DATA)))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3, help="untimed epochs per loader first")
    ap.add_argument("--epochs", type=int, default=5, help="consecutive epochs in one timed span")
    ap.add_argument("--rounds", type=int, default=3, help="timed spans per loader (alternating order)")
    ap.add_argument("--json", type=Path, help="also write the rates here")
    args = ap.parse_args()

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ovdet.data.loader import DetectionDataset, build_loader
    from ovdet.data.readers import read_yolo

    coco128 = Path(args.data).resolve() / "coco128"
    data = read_yolo(coco128 / "coco128.yaml", "train")
    total_epochs = 10_000  # fixed, far from close_mosaic: mosaic stays on
    epoch_of: dict[str, int] = {}

    def span(name: str, loader, epochs: int, skip: int = 0) -> tuple[float, int]:
        """Seconds and images over ``epochs`` consecutive passes over ``loader``, from the
        arrival of batch ``skip`` to the last (the first batches are ready before the span
        starts, made ahead by the workers, or wait for the pipeline to fill)."""
        arrivals: list[tuple[float, int]] = []  # (time, images) per batch
        for _ in range(epochs):
            if hasattr(loader, "set_epoch"):  # ovdet: the epoch travels with the indices
                loader.set_epoch(epoch_of[name], total_epochs)
            epoch_of[name] += 1
            for batch in loader:
                n = len(batch.images) if hasattr(batch, "images") else len(batch["img"])
                arrivals.append((time.perf_counter(), n))
        return arrivals[-1][0] - arrivals[skip][0], sum(n for _, n in arrivals[skip + 1 :])

    loaders: dict[str, object] = {}
    item_ms: dict[str, float] = {}
    for name, cache, buffer_mb in (
        ("ovdet cache=None", None, 256.0),
        ("ovdet cache=ram", "ram", 0.0),
        ("ovdet no buffer", None, 0.0),
    ):
        ds = DetectionDataset(data, imgsz=args.imgsz, seed=0, cache=cache, buffer_mb=buffer_mb)
        if cache:
            ds.fill_cache()  # before the workers fork, so they share it
        ds.set_epoch(0, total_epochs=total_epochs)  # mosaic on
        t = time.perf_counter()
        for i in range(64):  # one item in this process, no workers: the cost a worker pays
            ds[i]
        item_ms[name] = 1e3 * (time.perf_counter() - t) / 64
        print(f"{name}: {item_ms[name]:.1f} ms per item in one process", flush=True)
        loaders[name] = build_loader(ds, args.batch, workers=args.workers, shuffle=True, seed=0, pin_memory=False)

    with tempfile.TemporaryDirectory() as tmp:
        loaders["ultralytics"] = _ultralytics_loader(coco128, Path(tmp), args.imgsz, args.batch, args.workers)
        for name, loader in loaders.items():
            epoch_of[name] = 0
            seconds, images = span(name, loader, args.warmup)
            print(f"{name:<18} warm-up: {args.warmup} epochs, {images / seconds:6.1f} img/s", flush=True)
            time.sleep(1.0)
        spans: dict[str, list[float]] = {name: [] for name in loaders}
        for r in range(args.rounds):
            for name in list(loaders) if r % 2 == 0 else list(loaders)[::-1]:
                seconds, images = span(name, loaders[name], args.epochs, skip=2 * args.workers * 2)
                spans[name].append(images / seconds)
                print(f"{name:<18} round {r}: {images} images in {seconds:6.2f} s ({images / seconds:6.1f} img/s)")
                time.sleep(1.0)  # its workers' read-ahead of the next epoch ends before the next span
        del loaders

    rates = {name: float(np.median(v)) for name, v in spans.items()}
    print(
        f"\nimgsz {args.imgsz}, batch {args.batch}, workers {args.workers}, coco128; after {args.warmup} warm-up "
        f"epochs, {args.rounds} spans of {args.epochs} epochs per loader, mosaic on, {os.cpu_count()} CPUs"
    )
    print(f"{'loader':<18} {'img/s':>8} {'spread':>15} {'ratio':>6}")
    for name, rate in rates.items():
        lo, hi = min(spans[name]), max(spans[name])
        print(f"{name:<18} {rate:8.1f} {f'{lo:.0f}–{hi:.0f}':>15} {rate / rates['ultralytics']:6.2f}")
    if args.json:
        info = {"imgsz": args.imgsz, "batch": args.batch, "workers": args.workers, "warmup": args.warmup}
        info |= {"epochs": args.epochs, "rounds": args.rounds}
        args.json.write_text(json.dumps({**info, "rates": rates, "spans": spans, "item_ms": item_ms}, indent=1))


if __name__ == "__main__":
    main()
