"""The fast training-augmentation path against simple references, on real coco128 images.

* per-tile warp rendering (:func:`warp_layout`) equals ``cv2.warpAffine`` of the painted
  mosaic canvas, away from the seams between tiles;
* the fast and the reference (``exact=True``) :class:`TrainAugment` keep the same boxes;
* the affine map and the box mapping equal albumentations' ``Affine`` (the previous recipe);
* the lookup-table HSV shift equals the per-pixel formula and albumentations' ``shift_hsv``.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from ovdet.config import AugmentConfig
from ovdet.data.images import decode_image
from ovdet.data.readers import read_yolo
from ovdet.data.records import Dataset
from ovdet.data.transforms import (
    AffineParams,
    Sample,
    TrainAugment,
    affine_boxes,
    affine_matrix,
    hsv_shift,
    mosaic_layout,
    warp_layout,
)

IMGSZ = 320


@pytest.fixture(scope="module")
def coco128(data_dir: Path) -> Dataset:
    return read_yolo(data_dir / "coco128" / "coco128.yaml", "train")


def _samples(data: Dataset, indices: list[int], imgsz: int = IMGSZ) -> list[Sample]:
    """Records decoded and resized to longest side ``imgsz``, as the training loader loads them."""
    out = []
    for i in indices:
        image = decode_image(data.records[i].path)
        h, w = image.shape[:2]
        r = imgsz / max(h, w)
        small = cv2.resize(image, (max(round(w * r), 1), max(round(h * r), 1)), interpolation=cv2.INTER_LINEAR)
        out.append(Sample.from_record(data.records[i], small, i, orig_size=(h, w)))
    return out


def _tile_region(rect: tuple[int, int, int, int], m: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """Output pixels (j0, i0, j1, i1) whose centres map into a canvas rect under ``m``."""
    x1, y1, x2, y2 = rect
    j0, j1 = (min(max(math.ceil(m[0, 0] * (v - 0.5) + m[0, 2]), 0), size) for v in (x1, x2))
    i0, i1 = (min(max(math.ceil(m[1, 1] * (v - 0.5) + m[1, 2]), 0), size) for v in (y1, y2))
    return j0, i0, j1, i1


def test_tile_warps_equal_one_warp_of_the_canvas(coco128: Dataset):
    cfg = AugmentConfig()
    compared = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        layout = mosaic_layout(_samples(coco128, list(rng.integers(0, 128, 4))), IMGSZ, rng, cfg)
        params = AffineParams(
            scale=float(rng.uniform(0.5, 1.5)), rotate=0.0, shear=(0.0, 0.0), translate=tuple(rng.uniform(-32, 32, 2))
        )
        matrix = affine_matrix(params, layout.size, IMGSZ)
        fast, maps = warp_layout(layout, matrix, IMGSZ)
        exact, exact_maps = warp_layout(layout, matrix, IMGSZ, exact=True)
        assert fast.shape == exact.shape == (IMGSZ, IMGSZ, 3) and fast.dtype == np.uint8
        assert all(m is matrix for m in exact_maps)
        covered = np.zeros((IMGSZ, IMGSZ), dtype=bool)
        for tile, m in zip(layout.tiles, maps):
            assert np.array_equal(m, matrix)  # every tile went through the layout's own map
            j0, i0, j1, i1 = _tile_region(tile.rect, matrix, IMGSZ)
            covered[i0:i1, j0:j1] = True
            if j1 - j0 <= 4 or i1 - i0 <= 4:  # the tile (nearly) missed the output
                continue
            # Away from the tile's edges (2 px), its pixels are the reference's (OpenCV rounds
            # coordinates to 1/32 pixel from a different origin: a level or two at most).
            inner = (slice(i0 + 2, i1 - 2), slice(j0 + 2, j1 - 2))
            diff = np.abs(fast[inner].astype(int) - exact[inner].astype(int))
            assert diff.max() <= 2, (seed, diff.max())
            assert (diff == 0).mean() > 0.9, seed
            compared += diff.shape[0] * diff.shape[1]
        # Outside every tile: the grey border, as in the reference.
        assert np.all(fast[~covered] == 114)
        far = cv2.dilate(covered.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
        assert np.array_equal(fast[far], exact[far])
    assert compared > 0.7 * 12 * IMGSZ * IMGSZ  # most of 12 images' pixels were checked


def test_fast_and_exact_augmentation_keep_the_same_boxes(coco128: Dataset):
    cfg = AugmentConfig()
    fast_aug = TrainAugment(IMGSZ, cfg, coco128.names)
    exact_aug = TrainAugment(IMGSZ, cfg, coco128.names, exact=True)
    boxes = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        layout = mosaic_layout(_samples(coco128, list(rng.integers(0, 128, 4))), IMGSZ, rng, cfg)
        a, flip_a = fast_aug(layout, 1000 + seed)
        b, flip_b = exact_aug(layout, 1000 + seed)
        assert flip_a == flip_b and a.image.shape == b.image.shape == (IMGSZ, IMGSZ, 3)
        # The same map for every tile: the same boxes, texts and sources, exactly.
        assert a.source.tolist() == b.source.tolist() and a.texts == b.texts
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
        boxes += len(b.boxes)
        # Pixels differ only at the seams between tiles (and by OpenCV's coordinate rounding).
        diff = np.abs(a.image.astype(int) - b.image.astype(int)).max(axis=2)
        assert (diff > 2).mean() < 0.03, seed
    assert boxes > 150

    # A single letterboxed image goes through the same maps.
    for i in (0, 1, 61):
        sample = _samples(coco128, [i])[0]
        a, _ = fast_aug(sample, i)
        b, _ = exact_aug(sample, i)
        assert a.source.tolist() == b.source.tolist()
        assert np.array_equal(a.boxes, b.boxes)


def test_affine_map_and_boxes_equal_albumentations_affine():
    from albumentations.augmentations.geometric import functional as fgeometric

    rng = np.random.default_rng(0)
    boxes = np.array([[10, 20, 200, 150], [300, 310, 330, 400], [0, 0, 640, 640]], dtype=np.float32)
    for _ in range(10):
        p = AffineParams(
            scale=float(rng.uniform(0.5, 1.5)),
            rotate=float(rng.uniform(-10, 10)),
            shear=tuple(float(v) for v in rng.uniform(-5, 5, 2)),
            translate=tuple(float(v) for v in rng.uniform(-64, 64, 2)),
        )
        args = ({"x": p.translate[0], "y": p.translate[1]}, {"x": p.shear[0], "y": p.shear[1]})
        scale = {"x": p.scale, "y": p.scale}
        crop = np.array([[1, 0, -320], [0, 1, -320], [0, 0, 1]], dtype=np.float64)  # CenterCrop(640) of 1280
        image_m = crop @ fgeometric.create_affine_transformation_matrix(*args, scale, p.rotate, (639.5, 639.5))
        bbox_m = crop @ fgeometric.create_affine_transformation_matrix(*args, scale, p.rotate, (640.0, 640.0))
        m = affine_matrix(p, (1280, 1280), 640)
        np.testing.assert_allclose(m, image_m, atol=1e-9)
        np.testing.assert_allclose(
            affine_boxes(boxes, m), fgeometric.bboxes_affine_largest_box(boxes.astype(np.float64), bbox_m), atol=1e-6
        )


def _hsv_formula(image: np.ndarray, hue: float, sat: float, val: float) -> np.ndarray:
    """The HSV shift pixel by pixel in numpy (no lookup tables)."""
    h, s, v = (c.astype(np.float64) for c in cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV)))
    h2 = np.floor(np.mod(h + hue, 180))
    s2 = np.where(s == 0, 0, np.clip(s + int(sat), 0, 255))  # int(): towards zero
    v2 = np.clip(v + int(val), 0, 255)
    hsv = cv2.merge([c.astype(np.uint8) for c in (h2, s2, v2)])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


@pytest.mark.parametrize("shifts", [(2.7, 41.3, -33.2), (-2.2, -48.9, 38.6), (0.4, 0.0, 0.0), (-3.0, 12.5, -0.5)])
def test_lut_hsv_equals_the_formula_and_albumentations(coco128_images: list[Path], shifts):
    from albumentations.augmentations.pixel import functional as fpixel

    hue, sat, val = shifts
    for path in coco128_images[:3]:
        image = decode_image(path)
        out = hsv_shift(image, hue, sat, val)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(out, _hsv_formula(image, hue, sat, val))
        # albumentations' HueSaturationValue (on RGB; BGR2HSV of BGR is RGB2HSV of RGB): the
        # same arithmetic.
        ref = fpixel.shift_hsv(np.ascontiguousarray(image[:, :, ::-1]), hue, sat, val)[:, :, ::-1]
        diff = np.abs(out.astype(int) - np.asarray(ref).astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.001, (path.name, diff.max(), diff.mean())
        if sat or val:
            assert np.abs(out.astype(int) - image.astype(int)).mean() > 2  # the shift did something


def test_augmentation_draws_cover_the_configured_ranges():
    aug = TrainAugment(640, AugmentConfig(degrees=5.0, shear=2.0))
    draws = [aug.draw(np.random.default_rng(i)) for i in range(2000)]
    scale = np.array([p.scale for p, _, _ in draws])
    tx = np.array([p.translate[0] for p, _, _ in draws])
    rot = np.array([p.rotate for p, _, _ in draws])
    hsv = np.array([h for _, h, _ in draws])  # (2000, 3)
    flips = np.array([f for _, _, f in draws])
    assert 0.5 <= scale.min() < 0.52 and 1.48 < scale.max() <= 1.5 and abs(scale.mean() - 1.0) < 0.03
    assert -64 <= tx.min() < -60 and 60 < tx.max() <= 64 and abs(tx.mean()) < 3
    assert -5 <= rot.min() < -4.8 and 4.8 < rot.max() <= 5
    assert np.all(np.abs(hsv) <= [3, 50, 40]) and np.all(np.abs(hsv).max(axis=0) > [2.9, 49, 39])
    assert 0.45 < flips.mean() < 0.55
    assert aug.draw(np.random.default_rng(7)) == aug.draw(np.random.default_rng(7))


def test_lut_fallback_without_stringzilla_gives_the_same_image(coco128_images: list[Path], monkeypatch):
    import ovdet.data.transforms as transforms

    image = decode_image(coco128_images[5])
    fast = hsv_shift(image, 1.7, -23.4, 31.9)
    monkeypatch.setattr(transforms, "_sz", None)
    assert np.array_equal(hsv_shift(image, 1.7, -23.4, 31.9), fast)
