"""Letterbox: pixel-identical to ultralytics' predictor preprocessing, and an exact box inverse."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ovdet.data.letterbox import LetterboxInfo, letterbox, letterbox_boxes, to_tensor, unletterbox_boxes

ODD_SIZES = [(249, 200), (427, 640), (640, 427), (10, 7), (7, 10), (1, 300), (300, 1), (1000, 3), (3, 1000), (1, 1)]


@pytest.fixture(scope="module")
def ul_letterbox():
    """ultralytics' LetterBox class (reference implementation)."""
    augment = pytest.importorskip("ultralytics.data.augment", reason="ultralytics is the reference for letterbox")
    return augment.LetterBox


@pytest.fixture(scope="module")
def real_images(coco128_images: list[Path]) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in coco128_images]


def _odd_image(real: np.ndarray, h: int, w: int) -> np.ndarray:
    """Real photo content squeezed into an (h, w) image."""
    return cv2.resize(real, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, 3)


def test_identical_to_ultralytics_on_all_coco128(ul_letterbox, real_images: list[np.ndarray]) -> None:
    shapes = set()
    for im in real_images:
        ref = ul_letterbox(new_shape=(640, 640), auto=True, stride=32)(image=im.copy())
        out, info = letterbox(im, 640, stride=32, auto=True)
        assert out.shape == ref.shape
        np.testing.assert_array_equal(out, ref)
        assert info.shape == out.shape[:2] and info.orig_shape == im.shape[:2]
        shapes.add(out.shape)
    assert len(shapes) > 5  # the set has many aspect ratios, so auto padding is exercised


def test_identical_to_ultralytics_fixed_size(ul_letterbox, real_images: list[np.ndarray]) -> None:
    for im in real_images[:16]:
        for imgsz in (640, 320, (320, 640)):
            ref = ul_letterbox(new_shape=imgsz, auto=False, stride=32)(image=im.copy())
            out, _ = letterbox(im, imgsz, stride=32, auto=False)
            np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize(("h", "w"), ODD_SIZES)
@pytest.mark.parametrize("auto", [True, False])
@pytest.mark.parametrize("scaleup", [True, False])
def test_identical_to_ultralytics_odd_sizes(
    ul_letterbox, real_images: list[np.ndarray], h: int, w: int, auto: bool, scaleup: bool
) -> None:
    im = _odd_image(real_images[1], h, w)
    ref = ul_letterbox(new_shape=(640, 640), auto=auto, stride=32, scaleup=scaleup)(image=im.copy())
    out, info = letterbox(im, 640, stride=32, auto=auto, scaleup=scaleup)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)
    # Invariants: stride-multiple canvas of at least one stride, thin sides kept >= 1 pixel.
    assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0
    assert out.shape[0] >= 32 and out.shape[1] >= 32
    assert min(info.resized_shape) >= 1
    if not scaleup:
        assert info.ratio <= 1.0


def test_padding_is_centred_114_and_content_is_resized_image(real_images: list[np.ndarray]) -> None:
    im = real_images[0]  # 480 x 640
    out, info = letterbox(im, 640, auto=False)
    assert info == LetterboxInfo(
        orig_shape=(480, 640), shape=(640, 640), ratio=1.0, pad=(0, 80), resized_shape=(480, 640)
    )
    assert (out[:80] == 114).all() and (out[560:] == 114).all()
    np.testing.assert_array_equal(out[80:560], im)  # no resize when the size does not change

    out, info = letterbox(im, 320, auto=False)
    assert info.ratio == 0.5 and info.pad == (0, 40) and info.resized_shape == (240, 320)
    np.testing.assert_array_equal(out[40:280], cv2.resize(im, (320, 240), interpolation=cv2.INTER_LINEAR))

    out, info = letterbox(im, 640, auto=True)  # minimal padding: 480 is already a multiple of 32
    assert out.shape == (480, 640, 3) and info.pad == (0, 0)


def test_odd_padding_split_rounding() -> None:
    im = np.zeros((10, 7, 3), np.uint8)
    _, info = letterbox(im, 32, stride=32, auto=False, scaleup=False)
    # dw = 25 -> left round(12.4) = 12, right round(12.6) = 13; dh = 22 -> 11 / 11.
    assert info.pad == (12, 11) and info.shape == (32, 32) and info.resized_shape == (10, 7)


def test_channel_layouts_kept() -> None:
    gray = np.full((50, 70), 9, np.uint8)
    out, _ = letterbox(gray, 64)
    assert out.ndim == 2 and out.shape == (64, 64) and (out == 9).sum() > 0
    one = np.full((50, 70, 1), 9, np.uint8)
    out, _ = letterbox(one, 64)
    assert out.shape == (64, 64, 1)


def test_bad_arguments() -> None:
    im = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="positive multiple of 32"):
        letterbox(im, 650)
    with pytest.raises(ValueError, match="non-empty"):
        letterbox(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="stride"):
        letterbox(im, 640, stride=0)


def _random_boxes(gen: torch.Generator, n: int, h: float, w: float) -> torch.Tensor:
    """(n, 4) xyxy boxes inside [0, w] x [0, h]."""
    xy = torch.rand(n, 2, 2, generator=gen, dtype=torch.float64) * torch.tensor([w, h], dtype=torch.float64)
    lo, hi = xy.min(dim=1).values, xy.max(dim=1).values  # (n, 2)
    return torch.cat([lo, hi], dim=1)


@pytest.mark.parametrize(("h", "w"), ODD_SIZES + [(480, 640), (612, 612)])
@pytest.mark.parametrize("auto", [True, False])
@pytest.mark.parametrize("scaleup", [True, False])
def test_box_round_trip(h: int, w: int, auto: bool, scaleup: bool) -> None:
    _, info = letterbox(np.zeros((h, w, 3), np.uint8), 640, auto=auto, scaleup=scaleup)
    gen = torch.Generator().manual_seed(h * 10007 + w)
    boxes = _random_boxes(gen, 50, h, w).float()
    boxes[0] = torch.tensor([0, 0, w, h])
    lb = letterbox_boxes(boxes, info)
    # The full image maps onto exactly the resized content region.
    left, top = info.pad
    content = [left, top, left + info.resized_shape[1], top + info.resized_shape[0]]
    assert torch.allclose(lb[0], torch.tensor(content, dtype=torch.float32))
    back = unletterbox_boxes(lb, info)
    assert (back - boxes).abs().max().item() < 1e-4
    assert back.dtype == torch.float32


@pytest.mark.parametrize(("h", "w"), ODD_SIZES + [(480, 640)])
def test_unletterboxed_boxes_stay_inside_original(h: int, w: int) -> None:
    out, info = letterbox(np.zeros((h, w, 3), np.uint8), 640, auto=False)
    H, W = out.shape[:2]
    gen = torch.Generator().manual_seed(7)
    # Boxes anywhere: inside the content, in the padding, and outside the canvas.
    anywhere = _random_boxes(gen, 200, H * 1.5, W * 1.5) - torch.tensor([W, H, W, H]) * 0.25
    back = unletterbox_boxes(anywhere, info)
    assert (back[:, 0::2] >= 0).all() and (back[:, 0::2] <= w).all()
    assert (back[:, 1::2] >= 0).all() and (back[:, 1::2] <= h).all()
    assert (back[:, 2] >= back[:, 0]).all() and (back[:, 3] >= back[:, 1]).all()


def test_unletterbox_matches_ultralytics_scale_boxes(real_images: list[np.ndarray]) -> None:
    ops = pytest.importorskip("ultralytics.utils.ops")
    gen = torch.Generator().manual_seed(0)
    sizes = [im.shape[:2] for im in real_images[:20]] + [(249, 200), (10, 7), (300, 1), (1000, 3)]
    for h, w in sizes:
        for auto in (True, False):
            out, info = letterbox(np.zeros((h, w, 3), np.uint8), 640, auto=auto)
            pred = _random_boxes(gen, 30, out.shape[0], out.shape[1]).float()  # (30, 4) letterboxed pixels
            ref = ops.scale_boxes(out.shape[:2], pred.clone(), (h, w))
            assert (unletterbox_boxes(pred, info) - ref).abs().max().item() < 1e-3


def test_unletterbox_does_not_modify_input() -> None:
    _, info = letterbox(np.zeros((100, 200, 3), np.uint8), 640)
    boxes = torch.tensor([[10.0, 20.0, 600.0, 300.0]])
    before = boxes.clone()
    unletterbox_boxes(boxes, info)
    assert torch.equal(boxes, before)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        unletterbox_boxes(torch.zeros(3, 5), info)
    empty = unletterbox_boxes(torch.zeros(0, 4), info)
    assert empty.shape == (0, 4)


def test_to_tensor(real_images: list[np.ndarray]) -> None:
    a, _ = letterbox(real_images[0], 640, auto=False)
    b, _ = letterbox(real_images[1], 640, auto=False)
    t = to_tensor([a, b])
    assert t.shape == (2, 3, 640, 640) and t.dtype == torch.float32 and t.is_contiguous()
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    # Channel 0 is red: the last BGR channel.
    torch.testing.assert_close(t[1, 0], torch.from_numpy(b[:, :, 2]).float() / 255, rtol=0, atol=0)
    torch.testing.assert_close(t[0, 2], torch.from_numpy(a[:, :, 0]).float() / 255, rtol=0, atol=0)
    assert to_tensor([a], dtype=torch.float16).dtype == torch.float16

    with pytest.raises(ValueError, match="share one shape"):
        to_tensor([a, b[:320]])
    with pytest.raises(TypeError, match="uint8"):
        to_tensor([a.astype(np.float32)])
    with pytest.raises(ValueError, match="at least one"):
        to_tensor([])
