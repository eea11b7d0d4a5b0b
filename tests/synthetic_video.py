"""A synthetic tracking scene with known identities, shared by ``tests/test_track.py`` and
``benchmarks/bench_track.py``.

Real coco128 object crops move on known paths over a blurred coco128 background: two people
cross (one passes behind the other: occlusion), a dog leaves the picture through the top edge and
comes back, a car drives slowly across. Detections "from the known boxes" are the visible boxes
jittered by a seeded random walk, with the partly occluded ones scored low (ByteTrack's second
matching stage) and the mostly hidden ones dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from ovdet.structures import Detections

W, H, T = 640, 384, 150
#: (object id, coco128 image stem, class name)
OBJECTS = [(1, "000000000036", "person"), (2, "000000000086", "person"), (3, "000000000074", "dog"), (4, "000000000064", "car")]  # fmt: skip
SIZES = {1: (70, 150), 2: (70, 150), 3: (100, 80), 4: (120, 70)}  # (w, h) of each pasted crop
DOG_OUT = range(92, 115)  # frames the dog is out of the picture


def _position(obj: int, t: int) -> tuple[float, float] | None:
    """Top-left corner of an object at frame t (None: outside the picture)."""
    if obj == 1:  # walks right; passes behind person 2 around frame 75
        return 20 + 3.6 * t, 120.0
    if obj == 2:  # walks left, in front
        return 560 - 3.4 * t, 128.0
    if obj == 3:  # runs up and out of the top edge, comes back down
        if t in DOG_OUT:
            return None
        y = 220 - 2.8 * t if t < DOG_OUT.start else -40 + 3.0 * (t - DOG_OUT.stop)
        return 480.0, y
    return 30 + 1.2 * t, 300.0  # the car


@dataclass
class Synthetic:
    frames: list[np.ndarray]  # T (H, W, 3) BGR
    truth: list[dict[int, np.ndarray]]  # per frame: object id → visible xyxy box (≥ half visible)
    detections: list[Detections]  # per frame: jittered truth, occluded boxes scored low
    names: list[str]


def _crop(data_dir: Path, stem: str, name: str) -> np.ndarray:
    """The largest labelled box of that class in a coco128 image."""
    classes = (data_dir / "coco128" / "coco128.yaml").read_text()
    index = next(int(line.split(":")[0]) for line in classes.splitlines() if line.strip().endswith(f": {name}"))
    image = cv2.imread(str(data_dir / "coco128" / "images" / "train2017" / f"{stem}.jpg"))
    rows = np.loadtxt(data_dir / "coco128" / "labels" / "train2017" / f"{stem}.txt", ndmin=2)
    rows = rows[rows[:, 0] == index]
    assert len(rows), f"{stem} has no {name}"
    c, x, y, w, h = rows[np.argmax(rows[:, 3] * rows[:, 4])]
    ih, iw = image.shape[:2]
    x1, y1, x2, y2 = int((x - w / 2) * iw), int((y - h / 2) * ih), int((x + w / 2) * iw), int((y + h / 2) * ih)
    return image[max(y1, 0) : y2, max(x1, 0) : x2]


def build_synthetic(data_dir: Path, seed: int = 0) -> Synthetic:
    rng = np.random.default_rng(seed)
    background = cv2.imread(str(data_dir / "coco128" / "images" / "train2017" / "000000000049.jpg"))
    background = cv2.GaussianBlur(cv2.resize(background, (W, H)), (0, 0), 3)
    crops = {i: cv2.resize(_crop(data_dir, stem, name), SIZES[i]) for i, stem, name in OBJECTS}
    names = ["person", "dog", "car"]
    label = {i: names.index(name) for i, _, name in OBJECTS}
    order = [4, 3, 1, 2]  # painting order: person 2 is in front of person 1
    frames, truth, detections = [], [], []
    jitter = {i: np.zeros(4) for i in crops}
    for t in range(T):
        frame = background.copy()
        owner = np.zeros((H, W), np.int32)  # which object each pixel shows
        boxes = {}
        for i in order:
            pos = _position(i, t)
            if pos is None:
                continue
            w, h = SIZES[i]
            x1, y1 = round(pos[0]), round(pos[1])
            ax1, ay1, ax2, ay2 = max(x1, 0), max(y1, 0), min(x1 + w, W), min(y1 + h, H)
            if ax2 - ax1 < 8 or ay2 - ay1 < 8:
                continue
            frame[ay1:ay2, ax1:ax2] = crops[i][ay1 - y1 : ay2 - y1, ax1 - x1 : ax2 - x1]
            owner[ay1:ay2, ax1:ax2] = i
            boxes[i] = np.array([ax1, ay1, ax2, ay2], np.float64)
        seen, det_boxes, det_scores, det_labels = {}, [], [], []
        for i, box in boxes.items():
            x1, y1, x2, y2 = box.astype(int)
            visible = float((owner[y1:y2, x1:x2] == i).mean())  # share of the in-picture box not covered
            full = SIZES[i][0] * SIZES[i][1]
            if visible < 0.5 or (x2 - x1) * (y2 - y1) < 0.4 * full:
                continue  # mostly hidden or mostly outside: not a ground-truth box, not detected
            seen[i] = box
            jitter[i] = 0.7 * jitter[i] + rng.normal(0, 1.5, 4)
            det_boxes.append(np.clip(box + jitter[i], 0, [W, H, W, H]))
            det_scores.append(rng.uniform(0.6, 0.9) if visible > 0.85 else rng.uniform(0.15, 0.22))
            det_labels.append(label[i])
        frames.append(frame)
        truth.append(seen)
        detections.append(
            Detections(
                boxes=np.array(det_boxes).reshape(-1, 4),
                scores=np.array(det_scores),
                labels=np.array(det_labels, np.int64),
                names=names,
                image_size=(H, W),
                path=f"synthetic.mp4:frame{t}",
            )
        )
    return Synthetic(frames, truth, detections, names)


def identity_scores(truth: list[dict[int, np.ndarray]], tracked: list[Detections]) -> dict[str, float]:
    """IDF1, MOTA and identity switches (motmetrics), matching at IoU ≥ 0.5."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for gt, d in zip(truth, tracked):
        gt_ids = list(gt)
        gt_boxes = torch.as_tensor(np.array([gt[i] for i in gt_ids]).reshape(-1, 4), dtype=torch.float32)
        iou = box_iou(gt_boxes, d.boxes).numpy() if len(gt_ids) and len(d) else np.zeros((len(gt_ids), len(d)))
        dist = np.where(iou >= 0.5, 1.0 - iou, np.nan)
        acc.update(gt_ids, d.track_ids.tolist(), dist)
    summary = mm.metrics.create().compute(acc, metrics=["idf1", "mota", "num_switches"], name="synthetic")
    return {k: float(summary[k].iloc[0]) for k in ("idf1", "mota", "num_switches")}
