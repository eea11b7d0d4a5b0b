"""Training augmentation (4-image mosaic, affine, HSV, flip) and the validation letterbox.

Every step works on a :class:`Sample`: a BGR image and its boxes with per-box text, vocabulary
label, ignore flag and source (which record and which of its boxes), so crowd/ignore regions
follow exactly the same geometry as positives and every surviving box can be traced back.

Training (:class:`TrainAugment`), per image::

    mosaic (probability ``mosaic``):  4 images, longest side = imgsz, around a centre drawn in
                                      [0.5, 1.5]·imgsz on a 2·imgsz canvas → filter
                                      → Affine (albumentations) on the canvas → CenterCrop imgsz
    otherwise:                        letterbox to imgsz×imgsz (auto=False, no upscaling)
                                      → Affine
    then:                             HueSaturationValue → HorizontalFlip ("left" ↔ "right" in texts)

Boxes are filtered after every geometric step (min area, min visible fraction, min side, max
aspect ratio). Randomness comes only from the per-item seed the caller passes, so an item is the
same whichever process or order produces it. Validation (:func:`letterbox_sample`) is the
inference letterbox with ``auto=False``: pixel-identical to :func:`ovdet.data.letterbox.letterbox`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# albumentations asks PyPI for a newer version when imported unless told not to, and ovdet makes
# no network calls at import. A user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

from ovdet.config import AugmentConfig
from ovdet.data.letterbox import PAD_VALUE, LetterboxInfo, letterbox
from ovdet.data.records import ImageRecord

__all__ = [
    "Sample",
    "AffineCenterCrop",
    "TrainAugment",
    "letterbox_sample",
    "mosaic4",
    "swap_left_right",
]


@dataclass
class Sample:
    """One image with its boxes on the way through the augmentation steps.

    Attributes:
        image: (H, W, 3) uint8 BGR.
        boxes: (N, 4) float32 xyxy pixels of ``image``, 0 <= x1 < x2 <= W, 0 <= y1 < y2 <= H.
        texts: N per-box texts.
        labels: (N,) int64 index into the dataset vocabulary, -1 for free phrases.
        ignore: (N,) bool, crowd / ignore regions.
        source: (N, 2) int64 (record index, box index within that record) of every box.
    """

    image: np.ndarray
    boxes: np.ndarray
    texts: list[str]
    labels: np.ndarray
    ignore: np.ndarray
    source: np.ndarray

    @classmethod
    def from_record(
        cls, record: ImageRecord, image: np.ndarray, index: int, orig_size: tuple[int, int] | None = None
    ) -> Sample:
        """Pair a decoded image with a copy of its record's annotations.

        Args:
            record: the annotations, in pixels of the original image.
            image: (H, W, 3) uint8 BGR: the original, or a resized copy of it.
            index: the record's position in the dataset (stored in ``source``).
            orig_size: (height, width) of the original image when ``image`` was resized; the
                boxes are then scaled by the per-axis size ratio, clipped, and emptied ones dropped.
        """
        n = len(record.texts)
        source = np.stack([np.full(n, index, dtype=np.int64), np.arange(n, dtype=np.int64)], axis=1)  # (N, 2)
        sample = cls(image, record.boxes.copy(), list(record.texts), record.labels.copy(), record.ignore.copy(), source)
        h, w = image.shape[:2]
        if orig_size is None or tuple(orig_size) == (h, w):
            return sample
        oh, ow = orig_size
        boxes = sample.boxes * np.array([w / ow, h / oh, w / ow, h / oh], dtype=np.float32)  # (N, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        sample.boxes = boxes.astype(np.float32)
        return sample.take((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))

    def take(self, keep: np.ndarray) -> Sample:
        """The same image with only the boxes selected by ``keep`` ((N,) bool or int indices)."""
        idx = np.arange(len(self.texts))[keep]
        return Sample(
            self.image,
            self.boxes[idx],
            [self.texts[i] for i in idx],
            self.labels[idx],
            self.ignore[idx],
            self.source[idx],
        )


def _box_filter(raw: np.ndarray, clipped: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """Which boxes survive a geometric step.

    Args:
        raw: (N, 4) boxes after the step, before clipping to the visible region.
        clipped: (N, 4) the same boxes clipped to it.
        cfg: thresholds.

    Returns:
        (N,) bool keep mask.
    """
    w = clipped[:, 2] - clipped[:, 0]  # (N,)
    h = clipped[:, 3] - clipped[:, 1]  # (N,)
    area = w * h
    raw_area = (raw[:, 2] - raw[:, 0]) * (raw[:, 3] - raw[:, 1])
    ratio = np.maximum(w / np.maximum(h, 1e-9), h / np.maximum(w, 1e-9))
    return (
        (w >= cfg.min_size)
        & (h >= cfg.min_size)
        & (area >= cfg.min_area)
        & (area >= cfg.min_visibility * np.maximum(raw_area, 1e-9))
        & (ratio <= cfg.max_aspect_ratio)
        & (w > 0)
        & (h > 0)
    )


def letterbox_sample(sample: Sample, imgsz: int, scaleup: bool = True) -> tuple[Sample, LetterboxInfo]:
    """Letterbox to exactly ``imgsz``×``imgsz`` (``auto=False``) and map the boxes.

    The image is pixel-identical to ``letterbox(image, imgsz, auto=False, scaleup=scaleup)``;
    boxes become ``x * scale_x + left``, ``y * scale_y + top``, clipped to the output.

    Args:
        sample: image and boxes in original pixels.
        imgsz: output side, pixels (a multiple of 32).
        scaleup: allow enlarging (validation: True, as at inference; training: False,
            as ultralytics letterboxes its already-resized training images).

    Returns:
        The letterboxed sample (boxes that became empty are dropped) and its LetterboxInfo.
    """
    image, info = letterbox(sample.image, imgsz, stride=32, auto=False, scaleup=scaleup)
    sx, sy = info.scale
    left, top = info.pad
    gain = np.array([sx, sy, sx, sy], dtype=np.float32)  # (4,)
    offset = np.array([left, top, left, top], dtype=np.float32)  # (4,)
    boxes = sample.boxes * gain + offset  # (N, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, info.shape[1])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, info.shape[0])
    out = Sample(image, boxes.astype(np.float32), sample.texts, sample.labels, sample.ignore, sample.source)
    return out.take((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])), info


def mosaic4(samples: Sequence[Sample], imgsz: int, rng: np.random.Generator, cfg: AugmentConfig) -> Sample:
    """Tile four images around a random centre of a 2·imgsz square canvas.

    The centre (xc, yc) is drawn uniformly in [0.5, 1.5]·imgsz on each axis. Image 0 ends at the
    centre from the top-left, image 1 starts there towards the top-right, image 2 towards the
    bottom-left, image 3 towards the bottom-right; what falls outside the canvas is cut off.
    Boxes are shifted, clipped to the part of their image that landed on the canvas and filtered
    with ``cfg``'s thresholds. Uncovered canvas is grey (114).

    Args:
        samples: 4 samples, each already resized so its longest side is ``imgsz``.
        imgsz: output side s of the final crop; the canvas is 2s × 2s.
        rng: draws the centre.
        cfg: box filter thresholds.

    Returns:
        The (2s, 2s, 3) canvas with the boxes of all four images, in sample order.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic4 needs exactly 4 samples, got {len(samples)}")
    s = imgsz
    size = 2 * s
    xc = int(rng.uniform(0.5 * s, 1.5 * s))
    yc = int(rng.uniform(0.5 * s, 1.5 * s))
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    parts: list[Sample] = []
    for k, smp in enumerate(samples):
        h, w = smp.image.shape[:2]
        # Destination rectangle on the canvas (x1a..x2a, y1a..y2a) next to the centre.
        x1a, x2a = (max(xc - w, 0), xc) if k in (0, 2) else (xc, min(xc + w, size))
        y1a, y2a = (max(yc - h, 0), yc) if k in (0, 1) else (yc, min(yc + h, size))
        # Source rectangle: the image's corner that touches the centre.
        x1b = w - (x2a - x1a) if k in (0, 2) else 0
        y1b = h - (y2a - y1a) if k in (0, 1) else 0
        canvas[y1a:y2a, x1a:x2a] = smp.image[y1b : y1b + (y2a - y1a), x1b : x1b + (x2a - x1a)]
        shift = np.array([x1a - x1b, y1a - y1b] * 2, dtype=np.float32)  # (4,)
        raw = smp.boxes + shift  # (N, 4)
        clipped = raw.copy()
        clipped[:, 0::2] = clipped[:, 0::2].clip(x1a, x2a)
        clipped[:, 1::2] = clipped[:, 1::2].clip(y1a, y2a)
        keep = _box_filter(raw, clipped, cfg)
        part = smp.take(keep)
        part.boxes = clipped[keep].astype(np.float32)
        parts.append(part)
    return Sample(
        image=canvas,
        boxes=np.concatenate([p.boxes for p in parts]).reshape(-1, 4),
        texts=[t for p in parts for t in p.texts],
        labels=np.concatenate([p.labels for p in parts]),
        ignore=np.concatenate([p.ignore for p in parts]),
        source=np.concatenate([p.source for p in parts]).reshape(-1, 2),
    )


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """Swap the whole words "left" and "right" (case kept), as a horizontal flip requires.

    ``"left hand"`` → ``"right hand"``, ``"Right-side door"`` → ``"Left-side door"``;
    ``"bright"`` and ``"leftover"`` are unchanged.
    """

    def repl(m: re.Match) -> str:
        word = m.group(0)
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _LEFT_RIGHT.sub(repl, text)


class AffineCenterCrop(A.Affine):
    """``Affine`` followed by ``CenterCrop(size, size)``, computed as one warp into the crop.

    Equal to ``A.Compose([A.Affine(...), A.CenterCrop(size, size)])`` (same parameters and random
    draws; pixels within 1 grey level, from OpenCV's fixed-point interpolation; boxes within
    float rounding) but warps only the ``size``×``size`` output window: on a 2s mosaic canvas
    that is a quarter of the pixels.

    Args:
        size: side of the centre crop, pixels.
        **kwargs: ``A.Affine`` arguments.
    """

    def __init__(self, size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        out = super().get_params_dependent_on_data(params, data)
        h, w = params["shape"][:2]
        if h < self.size or w < self.size:
            raise ValueError(f"AffineCenterCrop: image {h}x{w} is smaller than the {self.size}px crop")
        # CenterCrop's window starts at ((w - size) // 2, (h - size) // 2): shift the output there.
        crop = np.array([[1, 0, -((w - self.size) // 2)], [0, 1, -((h - self.size) // 2)], [0, 0, 1]], dtype=np.float64)
        out["matrix"] = crop @ out["matrix"]
        out["bbox_matrix"] = crop @ out["bbox_matrix"]
        out["output_shape"] = (self.size, self.size)
        return out


class TrainAugment:
    """The per-image training augmentation after loading (and mosaic composition).

    Two albumentations pipelines share the same steps: for a mosaic canvas,
    ``Affine → CenterCrop(imgsz)`` (fused: :class:`AffineCenterCrop`)
    ``→ HueSaturationValue → HorizontalFlip``; for a single image
    already letterboxed to imgsz×imgsz, the same without the crop. Box filtering runs after each
    transform (``BboxParams(check_each_transform=True)``).

    Args:
        imgsz: output side, pixels.
        cfg: augmentation settings.
        names: the dataset vocabulary; texts changed by a flip ("left" ↔ "right") are relabelled
            to their index here, or -1 when absent.
    """

    def __init__(self, imgsz: int, cfg: AugmentConfig, names: Sequence[str] = ()) -> None:
        self.imgsz = imgsz
        self.cfg = cfg
        self._name_to_index = {n: i for i, n in reversed(list(enumerate(names)))}
        self._mosaic = self._compose(mosaic=True)
        self._plain = self._compose(mosaic=False)

    def _compose(self, mosaic: bool) -> A.Compose:
        cfg = self.cfg
        # The affine runs on the 2s mosaic canvas, so its shift limit is halved there to move the
        # content by up to ``translate`` of the s×s output.
        t = cfg.translate / 2 if mosaic else cfg.translate
        affine = dict(
            scale=tuple(cfg.scale),
            keep_ratio=True,
            translate_percent=(-t, t),
            rotate=(-cfg.degrees, cfg.degrees),
            shear=(-cfg.shear, cfg.shear),
            interpolation=cv2.INTER_LINEAR,
            border_mode=cv2.BORDER_CONSTANT,
            fill=PAD_VALUE,
            p=1.0,
        )
        steps: list[A.BasicTransform] = [AffineCenterCrop(self.imgsz, **affine) if mosaic else A.Affine(**affine)]
        if cfg.hsv_h or cfg.hsv_s or cfg.hsv_v:
            # Applied to BGR as if RGB: the hue axis runs backwards, which symmetric limits make
            # identical in distribution; saturation and value do not depend on channel order.
            steps.append(
                A.HueSaturationValue(
                    hue_shift_limit=cfg.hsv_h, sat_shift_limit=cfg.hsv_s, val_shift_limit=cfg.hsv_v, p=1.0
                )
            )
        steps.append(A.HorizontalFlip(p=cfg.fliplr))
        bbox_params = A.BboxParams(
            format="pascal_voc",
            label_fields=["box_ids"],
            min_area=cfg.min_area,
            min_visibility=cfg.min_visibility,
            min_width=cfg.min_size,
            min_height=cfg.min_size,
            max_accept_ratio=cfg.max_aspect_ratio,
            clip=True,
            check_each_transform=True,
        )
        return A.Compose(steps, bbox_params=bbox_params, save_applied_params=True, seed=0)

    def __call__(self, sample: Sample, seed: int, mosaic: bool) -> tuple[Sample, bool]:
        """Augment one image.

        Args:
            sample: a (2s, 2s) mosaic canvas from :func:`mosaic4` when ``mosaic``, else one
                image resized so its longest side is at most imgsz (it is letterboxed here).
            seed: the only source of randomness (the same seed gives the same output).
            mosaic: which of the two pipelines applies.

        Returns:
            The imgsz×imgsz sample, and whether it was flipped horizontally (texts are then
            already left/right-swapped and relabelled).
        """
        if not mosaic:
            sample, _ = letterbox_sample(sample, self.imgsz, scaleup=False)
        pipeline = self._mosaic if mosaic else self._plain
        pipeline.set_random_seed(int(seed))
        out = pipeline(
            image=sample.image, bboxes=sample.boxes.reshape(-1, 4), box_ids=np.arange(len(sample.texts), dtype=np.int64)
        )
        ids = np.asarray(out["box_ids"], dtype=np.int64).reshape(-1)
        result = sample.take(ids)
        boxes = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
        image = np.ascontiguousarray(out["image"])
        h, w = image.shape[:2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        result.image, result.boxes = image, boxes.astype(np.float32)
        result = result.take((result.boxes[:, 2] > result.boxes[:, 0]) & (result.boxes[:, 3] > result.boxes[:, 1]))

        flipped = any(name == "HorizontalFlip" for name, _ in out["applied_transforms"])
        if flipped:
            result = self._swap_texts(result)
        if result.image.shape[:2] != (self.imgsz, self.imgsz):  # guarantee the batchable size
            result, _ = letterbox_sample(result, self.imgsz, scaleup=True)
        return result, flipped

    def _swap_texts(self, sample: Sample) -> Sample:
        texts, labels = list(sample.texts), sample.labels.copy()
        for i, text in enumerate(texts):
            new = swap_left_right(text)
            if new != text:
                texts[i], labels[i] = new, self._name_to_index.get(new, -1)
        return Sample(sample.image, sample.boxes, texts, labels, sample.ignore, sample.source)
