"""Letterbox resize-and-pad, and its exact inverse for boxes.

Pixel-identical to ultralytics' predictor preprocessing (``LetterBox`` with centred padding and
value 114) so that converted official weights see exactly the inputs they were validated on.
:func:`unletterbox_boxes` inverts the transform with the per-axis scales the resize really
applied (the rounded size over the original size), as ultralytics' ``scale_boxes`` does.

Importing this module does not import PyTorch (the deployment runtime letterboxes without it);
the tensor functions import it when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import cv2
import numpy as np

from ovdet.config import check_imgsz
from ovdet.structures import is_tensor

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["LetterboxInfo", "letterbox", "letterbox_boxes", "to_tensor", "unletterbox_boxes"]

PAD_VALUE = 114

BoxArray = TypeVar("BoxArray", np.ndarray, "torch.Tensor")


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was letterboxed; enough to map boxes back to the original pixels.

    Attributes:
        orig_shape: ``(height, width)`` of the original image, pixels.
        shape: ``(height, width)`` of the padded output image, pixels.
        ratio: Scale factor ``r`` = min(target_h / h, target_w / w) (capped at 1 when
            ``scaleup=False``).
        pad: ``(left, top)`` padding in pixels of the output image.
        resized_shape: ``(height, width)`` of the resized image before padding:
            ``max(1, round(h * r))``, ``max(1, round(w * r))``.
    """

    orig_shape: tuple[int, int]
    shape: tuple[int, int]
    ratio: float
    pad: tuple[int, int]
    resized_shape: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """``(scale_x, scale_y)``: output pixels per original pixel actually applied per axis.

        Equal to ``ratio`` up to the rounding of the resized size (and the 1-pixel minimum).
        """
        return (self.resized_shape[1] / self.orig_shape[1], self.resized_shape[0] / self.orig_shape[0])


def letterbox(
    image: np.ndarray,
    imgsz: int | tuple[int, int] = 640,
    stride: int = 32,
    auto: bool = True,
    scaleup: bool = True,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize an image keeping its aspect ratio, then pad it to a stride-multiple shape.

    Matches ultralytics ``LetterBox(new_shape=imgsz, auto=auto, stride=stride, scaleup=scaleup)``
    exactly: ``r = min(H / h, W / w)``; resized size ``(max(1, round(w r)), max(1, round(h r)))``
    with ``cv2.INTER_LINEAR`` (skipped when the size is unchanged); padding ``dw = W - w'``,
    ``dh = H - h'`` (with ``auto``, only ``dw % stride`` and ``dh % stride``: the smallest
    stride-multiple canvas), split ``left = round(dw / 2 - 0.1)``, ``right = round(dw / 2 + 0.1)``
    (same for top/bottom), filled with 114.

    Args:
        image: ``(H, W, C)`` (or ``(H, W)``) uint8 image, usually BGR.
        imgsz: Target ``(height, width)``, or one int for a square; each a multiple of ``stride``.
        stride: The model's largest stride, pixels.
        auto: Pad only to the next multiple of ``stride`` instead of to the full ``imgsz``.
        scaleup: Allow enlarging images smaller than ``imgsz``; False caps the scale at 1.

    Returns:
        The padded ``(H', W', C)`` image (same dtype; ``(H', W')`` for a 2-D input) with
        ``H'`` and ``W'`` multiples of ``stride``, and its :class:`LetterboxInfo`.

    Raises:
        ValueError: Empty image, bad ``imgsz`` or ``stride``.
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"letterbox expects a non-empty (H, W, C) numpy image, got {shape}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    size = check_imgsz(imgsz, stride)
    target_h, target_w = (size, size) if isinstance(size, int) else size

    h, w = image.shape[:2]
    r = min(target_h / h, target_w / w)
    if not scaleup:
        r = min(r, 1.0)
    # Python's round() (half to even) as ultralytics uses; thin images keep at least 1 pixel.
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = target_w - new_w, target_h - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    left, right = round(dw / 2 - 0.1), round(dw / 2 + 0.1)
    top, bottom = round(dh / 2 - 0.1), round(dh / 2 + 0.1)

    if (new_h, new_w) != (h, w):
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        if image.ndim == 3 and resized.ndim == 2:  # cv2 drops a trailing channel axis of 1
            resized = resized[:, :, None]
    else:
        resized = image
    out_shape = (new_h + top + bottom, new_w + left + right) + image.shape[2:]
    out = np.full(out_shape, PAD_VALUE, dtype=image.dtype)
    out[top : top + new_h, left : left + new_w] = resized
    info = LetterboxInfo(
        orig_shape=(h, w),
        shape=(out_shape[0], out_shape[1]),
        ratio=r,
        pad=(left, top),
        resized_shape=(new_h, new_w),
    )
    return out, info


def letterbox_boxes(boxes: torch.Tensor, info: LetterboxInfo) -> torch.Tensor:
    """Map boxes from original-image pixels to letterboxed-image pixels.

    Args:
        boxes: ``(N, 4)`` xyxy boxes in original-image pixels (any float dtype).
        info: From :func:`letterbox`.

    Returns:
        ``(N, 4)`` xyxy boxes in letterboxed pixels: ``x * scale_x + left``, ``y * scale_y + top``.
    """
    _check_boxes(boxes)
    sx, sy = info.scale
    left, top = info.pad
    gain = boxes.new_tensor([sx, sy, sx, sy])  # (4,)
    offset = boxes.new_tensor([left, top, left, top])  # (4,)
    return boxes * gain + offset  # (N, 4)


def unletterbox_boxes(boxes: BoxArray, info: LetterboxInfo) -> BoxArray:
    """Map boxes from letterboxed-image pixels back to original-image pixels (exact inverse).

    Args:
        boxes: ``(N, 4)`` xyxy boxes in letterboxed pixels (any float dtype; a tensor or, for
            runtimes without PyTorch, a numpy array).
        info: From :func:`letterbox`.

    Returns:
        ``(N, 4)`` xyxy boxes in original pixels, clipped to ``[0, w] x [0, h]``; a new tensor
        (or array) of the input's type and dtype.
    """
    sx, sy = info.scale
    left, top = info.pad
    h, w = info.orig_shape
    if isinstance(boxes, np.ndarray):
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.floating):
            raise ValueError(f"boxes must be an (N, 4) float xyxy array, got {boxes.shape} {boxes.dtype}")
        gain_np = np.array([sx, sy, sx, sy], dtype=boxes.dtype)  # (4,)
        offset_np = np.array([left, top, left, top], dtype=boxes.dtype)  # (4,)
        out_np = (boxes - offset_np) / gain_np  # (N, 4)
        out_np[:, 0::2] = out_np[:, 0::2].clip(0, w)
        out_np[:, 1::2] = out_np[:, 1::2].clip(0, h)
        return out_np
    _check_boxes(boxes)
    gain = boxes.new_tensor([sx, sy, sx, sy])  # (4,)
    offset = boxes.new_tensor([left, top, left, top])  # (4,)
    out = (boxes - offset) / gain  # (N, 4)
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


def _check_boxes(boxes: torch.Tensor) -> None:
    if not is_tensor(boxes) or boxes.ndim != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if is_tensor(boxes) else type(boxes).__name__
        raise ValueError(f"boxes must be an (N, 4) xyxy tensor, got {shape}")
    if not boxes.is_floating_point():
        raise TypeError(f"boxes must be a floating-point tensor, got {boxes.dtype}")


def to_tensor(images: Sequence[np.ndarray], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stack same-shape BGR uint8 images into a model-ready RGB batch.

    Args:
        images: B arrays of shape ``(H, W, 3)``, uint8 BGR, all the same shape (letterbox
            them first).
        dtype: Floating dtype of the result (None: ``torch.float32``).

    Returns:
        ``(B, 3, H, W)`` tensor, RGB, values in [0, 1], on CPU.

    Raises:
        ValueError: Empty list, wrong shapes, or mismatched shapes.
        TypeError: Non-uint8 images.
    """
    if len(images) == 0:
        raise ValueError("to_tensor needs at least one image")
    first = images[0].shape
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3:
            shape = getattr(im, "shape", type(im).__name__)
            raise ValueError(f"image {i} must be an (H, W, 3) BGR array, got {shape}")
        if im.dtype != np.uint8:
            raise TypeError(f"image {i} must be uint8, got {im.dtype}")
        if im.shape != first:
            raise ValueError(f"all images must share one shape to batch: image 0 is {first}, image {i} is {im.shape}")
    import torch

    batch = torch.from_numpy(np.stack(images))  # (B, H, W, 3) uint8 BGR
    batch = batch.permute(0, 3, 1, 2).flip(1)  # (B, 3, H, W) RGB
    return batch.to(torch.float32 if dtype is None else dtype).div_(255.0).contiguous()
