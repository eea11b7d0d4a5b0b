"""Shared parts of the side-by-side benchmarks: one random ultralytics model, converted; interleaved timing.

Every benchmark builds one random ultralytics YOLO-World model (its BatchNorm statistics set on
real coco128 images, so scores depend on the image as a trained model's do), saves it the way
ultralytics saves checkpoints and converts that file to ovdet, so both sides run the same
weights. Rows run interleaved (A B C … A B C …, one call each per round) so a slow spell on a
shared machine hits every row alike, and are compared by their medians.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import torch
import yaml


def write_yolo_copy(splits: dict, out: Path) -> Path:
    """Datasets already read (split name → :class:`~ovdet.data.records.Dataset`, one vocabulary)
    as an ultralytics YOLO dataset: images linked, labels written from the records (ignore regions
    left out, as ultralytics has none), so both tools score identical boxes.

    Returns:
        The data yaml.
    """
    names = next(iter(splits.values())).raw_names
    for split, ds in splits.items():
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for r in ds.records:
            os.symlink(r.path.resolve(), out / "images" / split / r.path.name)
            lines = []
            for (x1, y1, x2, y2), lab, ign in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist()):
                if not ign:
                    cx, cy = (x1 + x2) / 2 / r.width, (y1 + y2) / 2 / r.height
                    w, h = (x2 - x1) / r.width, (y2 - y1) / r.height
                    lines.append(f"{lab} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (out / "labels" / split / f"{r.path.stem}.txt").write_text("".join(f"{x}\n" for x in lines))
    yaml_path = out / "data.yaml"
    body = {"path": str(out), **{s: f"images/{s}" for s in splits}, "names": dict(enumerate(names))}
    yaml_path.write_text(yaml.safe_dump(body))
    return yaml_path


DEFAULT_DATA = os.environ.get("OVDET_DATA", str(Path(__file__).resolve().parents[1] / "../shared/data"))


def coco128_files(data: str | Path) -> list[Path]:
    """The 128 coco128 training images, sorted by name."""
    files = sorted((Path(data) / "coco128" / "images" / "train2017").glob("*.jpg"))
    if not files:
        raise SystemExit(f"no coco128 images under {data}/coco128/images/train2017 (set --data or OVDET_DATA)")
    return files


def class_embeddings(k: int, dim: int = 512, seed: int = 0) -> torch.Tensor:
    """(k, dim) unit-norm random text embeddings (no CLIP weights exist offline)."""
    return torch.nn.functional.normalize(torch.randn(k, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def calibrate_bn(model: torch.nn.Module, images: list[Path], text: torch.Tensor) -> None:
    """Set the BatchNorm statistics of ``model`` (an ultralytics WorldModel) on real images."""
    from ovdet.data.letterbox import letterbox, to_tensor

    x = to_tensor([letterbox(cv2.imread(str(p)), 640, auto=False)[0] for p in images])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model.predict(x, txt_feats=text[None].expand(len(x), -1, -1))
    model.eval()


def ultralytics_pair(data: str | Path, folder: Path, scale: str = "s", version: int = 2, classes: int = 80):
    """One random ultralytics WorldModel, BN-calibrated on coco128, saved as ultralytics saves it.

    Returns:
        (the WorldModel (eval), the checkpoint path, the (classes, 512) text embeddings).
    """
    from ultralytics.nn.tasks import WorldModel

    text = class_embeddings(classes)
    torch.manual_seed(0)
    model = WorldModel(f"yolov8{scale}-world{'v2' if version == 2 else ''}.yaml", verbose=False)
    calibrate_bn(model, coco128_files(data)[64:72], text)
    pt = folder / "m.pt"
    ckpt = {"model": copy.deepcopy(model).half(), "ema": None, "optimizer": None, "epoch": -1, "train_args": {}}
    torch.save(ckpt, pt)
    return model, pt, text


def ultralytics_predictor(pt: Path, text: torch.Tensor):
    """ultralytics' own ``YOLO`` predictor on checkpoint ``pt`` with ``text`` as its vocabulary."""
    from ultralytics import YOLO

    yolo = YOLO(str(pt), task="detect")
    yolo.model.txt_feats = text[None].clone()
    yolo.model.model[-1].nc = len(text)
    yolo.model.names = {i: f"class {i}" for i in range(len(text))}
    return yolo


def ultralytics_predict_network(yolo, probe: Path, device: str = "cpu") -> tuple[torch.nn.Module, str]:
    """The network ``yolo.predict`` runs, as its predictor prepared it, and that network's layout.

    ultralytics' ``AutoBackend`` fuses the model and, since 8.4 on x86 CPUs and on CUDA, converts it
    to channels-last; timing its plain NCHW module instead would time something its users do not
    run. One prediction on ``probe`` sets the predictor up.

    Returns:
        (the fused WorldModel ``YOLO.predict`` calls, ``"channels-last"`` or ``"NCHW"``).
    """
    yolo.predict(str(probe), verbose=False, device=device)
    backend = yolo.predictor.model
    net = getattr(getattr(backend, "backend", None), "model", None) or backend.model  # 8.4+ / 8.3
    # a 3×3 convolution with several input channels: a 1×1 weight is contiguous in both layouts
    conv = next(
        m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1) and m.in_channels > 1
    )
    layout = "channels-last" if conv.weight.is_contiguous(memory_format=torch.channels_last) else "NCHW"
    return net, layout


def ovdet_detector(pt: Path, text: torch.Tensor, device: str = "cpu"):
    """``pt`` converted to an ovdet ``Detector``, BN-fused, with ``text`` as its vocabulary."""
    from ovdet import Detector

    det = Detector.from_ultralytics(pt, trust=True, device=device)
    det.set_class_embeddings([f"class {i}" for i in range(len(text))], text.to(det.device))
    return det.fuse()


@dataclass
class Timing:
    """Seconds per item of one row, one value per round."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        return max(self.seconds) - min(self.seconds)


def interleaved(
    rows: dict[str, Callable[[], object]],
    rounds: int,
    items: int = 1,
    warmup: int = 1,
    threads: int | None = None,
    sync: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Time every row once per round, rows interleaved, after ``warmup`` untimed rounds.

    Args:
        rows: name → a call to time.
        rounds: timed rounds.
        items: what one call processes (the result is seconds per item).
        threads: torch threads set before every call (ultralytics' predictor resets them).
        sync: called before the clock is read (e.g. ``torch.cuda.synchronize``).
    """
    times: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(warmup + rounds):
        for name, fn in rows.items():
            if threads is not None:
                torch.set_num_threads(threads)
            if sync:
                sync()
            t = time.perf_counter()
            fn()
            if sync:
                sync()
            if r >= warmup:
                times[name].append((time.perf_counter() - t) / items)
    return {name: Timing(ts) for name, ts in times.items()}


def machine(device: torch.device | str = "cpu", threads: int | None = None) -> str:
    """One line naming the machine the numbers come from."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, {threads or torch.get_num_threads()} torch threads, torch {torch.__version__}"
