"""Training data loader throughput: ovdet vs ultralytics on coco128, mosaic on, same run.

Both loaders read the 128 coco128 images with mosaic (p=1), affine, HSV and flip at the same
image size, batch size and worker count, and both sample per-image texts (ultralytics through
its YOLO-World multi-modal dataset, ``RandomLoadText``). Each loader runs ``--epochs`` passes
back to back, alone (no loader's workers run while another is timed); a pass is timed from
``iter(loader)`` to its last batch (both keep persistent workers, so worker start-up counts in
the first epoch only). Dataset construction is not timed. ultralytics keeps up
to min(n, 8·batch, 1000) decoded images in a per-worker buffer, which holds all of coco128; ovdet
keeps a per-worker LRU of up to ``buffer_mb`` (default 256) MiB of decoded images, which holds it
too. ovdet is measured with its defaults (no cache, the buffer), with ``cache="ram"`` and with
neither (``buffer_mb=0``: every image decoded every time). Prints images/s and the
ovdet/ultralytics ratios (> 1: ovdet faster).

    python benchmarks/bench_loader.py --imgsz 640 --batch 16 --workers 2 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

_DEFAULT_DATA = Path(__file__).resolve().parents[1] / "../shared/data"


def _epoch(loader) -> tuple[float, int]:
    """Seconds and images for one pass over ``loader``."""
    t = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch.images) if hasattr(batch, "images") else len(batch["img"])
    return time.perf_counter() - t, n


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
    ap.add_argument("--epochs", type=int, default=3, help="timed passes per loader (alternating)")
    ap.add_argument("--json", type=Path, help="also write the rates here")
    args = ap.parse_args()

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ovdet.data.loader import DetectionDataset, build_loader
    from ovdet.data.readers import read_yolo

    coco128 = Path(args.data).resolve() / "coco128"
    data = read_yolo(coco128 / "coco128.yaml", "train")
    rates: dict[str, float] = {}

    def run(name: str, loader, before_epoch=None) -> None:
        seconds, images = 0.0, 0
        for epoch in range(args.epochs):
            if before_epoch is not None:
                before_epoch(epoch)
            t, n = _epoch(loader)
            seconds += t
            images += n
            print(f"{name:<18} epoch {epoch}: {n} images in {t:6.2f} s ({n / t:6.1f} img/s)", flush=True)
        rates[name] = images / seconds

    item_ms: dict[str, float] = {}
    for name, cache, buffer_mb in (
        ("ovdet cache=None", None, 256.0),
        ("ovdet cache=ram", "ram", 0.0),
        ("ovdet no buffer", None, 0.0),
    ):
        ds = DetectionDataset(data, imgsz=args.imgsz, seed=0, cache=cache, buffer_mb=buffer_mb)
        if cache:
            ds.fill_cache()  # before the workers fork, so they share it
        ds.set_epoch(0, total_epochs=100)  # mosaic on
        t = time.perf_counter()
        for i in range(64):  # one item in this process, no workers: the cost a worker pays
            ds[i]
        item_ms[name] = 1e3 * (time.perf_counter() - t) / 64
        print(f"{name}: {item_ms[name]:.1f} ms per item in one process", flush=True)
        loader = build_loader(ds, args.batch, workers=args.workers, shuffle=True, seed=0, pin_memory=False)
        # Far from close_mosaic: mosaic stays on.
        run(name, loader, lambda e, loader=loader: loader.set_epoch(e, total_epochs=e + 100))
        del loader, ds

    with tempfile.TemporaryDirectory() as tmp:
        theirs = _ultralytics_loader(coco128, Path(tmp), args.imgsz, args.batch, args.workers)
        run("ultralytics", theirs)
        del theirs

    print(
        f"\nimgsz {args.imgsz}, batch {args.batch}, workers {args.workers}, {args.epochs} epochs of coco128 "
        f"each, mosaic on, {os.cpu_count()} CPUs"
    )
    print(f"{'loader':<18} {'img/s':>8} {'ratio':>6}")
    for name, rate in rates.items():
        print(f"{name:<18} {rate:8.1f} {rate / rates['ultralytics']:6.2f}")
    if args.json:
        info = {"imgsz": args.imgsz, "batch": args.batch, "workers": args.workers, "epochs": args.epochs}
        args.json.write_text(json.dumps({**info, "rates": rates, "item_ms": item_ms}, indent=1))


if __name__ == "__main__":
    main()
