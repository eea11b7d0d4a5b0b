"""The result type: :class:`Detections`, one per image.

Boxes are float32 xyxy in pixels of the ORIGINAL image. Format conversion happens only at the
edges: :meth:`Detections.to_coco` writes COCO ``[x, y, w, h]``, :meth:`Detections.to_dict` the
CLI's JSON.

PyTorch is optional here: results hold torch tensors when it is installed and numpy arrays (same
dtypes, same checks and ordering) where it is not, as in the deployment runtime
(:mod:`ovdet.deploy`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Detections", "xywh_to_xyxy", "xyxy_to_xywh"]

BoxArray = TypeVar("BoxArray", np.ndarray, "torch.Tensor")


# PyTorch is optional below the models: these two are shared with ovdet.data and ovdet.text,
# whose modules the deployment runtime imports where torch is not installed.
@cache
def optional_torch() -> ModuleType | None:
    """The ``torch`` module if it can be imported, else None (looked up once per process)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a ``torch.Tensor``, without importing torch (a tensor means torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def xyxy_to_xywh(boxes: BoxArray | Sequence[Sequence[float]]) -> BoxArray:
    """Corner boxes ``(N, 4)`` x1, y1, x2, y2 → COCO boxes x, y, w, h (a new array or tensor).

    Lists become float64 numpy arrays; arrays and tensors keep their type and dtype. Boxes are
    xyxy everywhere inside ovdet: this is for the edges (COCO json, results files).
    """
    out = boxes.clone() if is_tensor(boxes) else np.array(boxes, dtype=np.float64, copy=True)
    out = out.reshape(-1, 4)
    out[:, 2:] -= out[:, :2]
    return out


def xywh_to_xyxy(boxes: BoxArray | Sequence[Sequence[float]]) -> BoxArray:
    """COCO boxes ``(N, 4)`` x, y, w, h → corner boxes x1, y1, x2, y2 (a new array or tensor)."""
    out = boxes.clone() if is_tensor(boxes) else np.array(boxes, dtype=np.float64, copy=True)
    out = out.reshape(-1, 4)
    out[:, 2:] += out[:, :2]
    return out


# A fixed palette of 20 well-separated colours, RGB hex; label i uses entry i % 20.
_PALETTE_HEX = (
    "E6194B",
    "3CB44B",
    "FFE119",
    "4363D8",
    "F58231",
    "911EB4",
    "46F0F0",
    "F032E6",
    "BCF60C",
    "FABEBE",
    "008080",
    "9A6324",
    "800000",
    "AAFFC3",
    "808000",
    "000075",
    "E6BEFF",
    "FFD8B1",
    "808080",
    "00A0FF",
)
_PALETTE_BGR: tuple[tuple[int, int, int], ...] = tuple(
    (int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in _PALETTE_HEX
)


def label_color(label: int) -> tuple[int, int, int]:
    """The BGR plotting colour of a class index (deterministic, cycles through 20 colours)."""
    return _PALETTE_BGR[label % len(_PALETTE_BGR)]


def text_color_on(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on a BGR background ``color``."""
    luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def save_image(path: str | os.PathLike, canvas: np.ndarray, what: str) -> Path:
    """Write a BGR image to ``path`` (format from its extension; parent dirs created).

    Args:
        path: the file, e.g. ``runs/predict/bus.jpg``.
        canvas: ``(H, W, 3)`` uint8 BGR.
        what: what is saved, for the error messages (``"detections"``).

    Returns:
        The written path.

    Raises:
        ValueError: no file extension, or OpenCV cannot encode to it.
        OSError: the file cannot be written.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if not ext:
        raise ValueError(f"cannot save {what} to {path}: no file extension (use e.g. .jpg or .png)")
    try:
        ok, encoded = cv2.imencode(ext, canvas)
    except cv2.error as e:
        raise ValueError(f"cannot save {what} to {path}: OpenCV cannot encode {ext!r} ({str(e).strip()})") from e
    if not ok:
        raise ValueError(f"cannot save {what} to {path}: OpenCV failed to encode {ext!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded.tobytes())
    except OSError as e:
        raise OSError(f"cannot save {what} to {path}: {e}") from e
    return path


def _as_numpy(x: Any, float32: bool = False) -> np.ndarray:
    """A tensor (any device) or array-like as a CPU numpy array, sharing memory where it can.

    Args:
        x: a ``torch.Tensor``, numpy array or nested sequence, any shape.
        float32: cast to float32 (else the dtype is kept; bfloat16, which numpy lacks, becomes
            float32 exactly).

    Returns:
        An array of ``x``'s shape.
    """
    if is_tensor(x):
        x = x.detach().cpu()
        if float32 or str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    arr = np.asarray(x)
    return arr.astype(np.float32, copy=False) if float32 else arr


def _is_int(x: np.ndarray) -> bool:
    """Integer dtype (bool is not)."""
    return bool(np.issubdtype(x.dtype, np.integer))


def _is_float(x: np.ndarray) -> bool:
    """Floating-point dtype."""
    return bool(np.issubdtype(x.dtype, np.floating))


def _dtype(x: Any) -> str:
    """The dtype of a tensor or array-like as its library prints it (``torch.bool``, ``bool``)."""
    return str(x.dtype) if hasattr(x, "dtype") else str(np.asarray(x).dtype)


def _as_result(x: np.ndarray) -> torch.Tensor | np.ndarray:
    """A validated field in its stored form: a contiguous CPU tensor sharing ``x``'s memory, or
    (where PyTorch is not installed) ``x`` itself made contiguous."""
    x = np.ascontiguousarray(x)
    torch = optional_torch()
    return x if torch is None else torch.from_numpy(x)


@dataclass(eq=False)
class Detections:
    """Detections of one image.

    Attributes:
        boxes: ``(N, 4)`` float32 xyxy boxes in pixels of the original image.
        scores: ``(N,)`` float32 confidences, sorted descending.
        labels: ``(N,)`` int64 indices into ``names``.
        names: Class names (the vocabulary the detector was queried with).
        image_size: ``(height, width)`` of the original image, pixels.
        path: Source name (file path, ``"video.mp4:frame3"``, ``"array0"``), if any.
        image: The original ``(H, W, 3)`` uint8 BGR image, kept for plotting; never modified.
        track_ids: ``(N,)`` int64 track identities (video tracking, :meth:`ovdet.Detector.track`),
            or None for plain detections.

    On construction, tensors (or array-likes) are moved to CPU and coerced to float32/int64,
    and rows are reordered by descending score (stable) if they are not already. The fields are
    torch tensors when PyTorch is installed; where it is not (the deployment runtime,
    :mod:`ovdet.deploy`), numpy arrays of the same shapes and dtypes.
    """

    boxes: torch.Tensor | np.ndarray
    scores: torch.Tensor | np.ndarray
    labels: torch.Tensor | np.ndarray
    names: list[str]
    image_size: tuple[int, int]
    path: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    track_ids: torch.Tensor | np.ndarray | None = None

    def __post_init__(self) -> None:
        # checked and sorted as numpy arrays (views of CPU tensors), stored back as tensors
        boxes = _as_numpy(self.boxes, float32=True)  # (N, 4)
        scores = _as_numpy(self.scores, float32=True)  # (N,)
        labels = _as_numpy(self.labels)  # (N,)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"Detections.boxes must have shape (N, 4), got {tuple(boxes.shape)}")
        n = boxes.shape[0]
        if scores.shape != (n,):
            raise ValueError(
                f"Detections.scores must have shape ({n},) to match boxes {tuple(boxes.shape)}, "
                f"got {tuple(scores.shape)}"
            )
        if labels.shape != (n,):
            raise ValueError(
                f"Detections.labels must have shape ({n},) to match boxes {tuple(boxes.shape)}, "
                f"got {tuple(labels.shape)}"
            )
        if _is_float(labels) and not np.array_equal(labels, np.round(labels)):
            raise ValueError("Detections.labels must be integer class indices, got non-integer values")
        if not (_is_int(labels) or _is_float(labels)):
            raise TypeError(f"Detections.labels must be integer class indices, got dtype {_dtype(self.labels)}")
        labels = labels.astype(np.int64, copy=False)

        if isinstance(self.names, str) or not all(isinstance(s, str) for s in self.names):
            raise TypeError(f"Detections.names must be a list of str, got {self.names!r}")
        names = list(self.names)
        if n and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
            raise ValueError(
                f"Detections.labels must lie in [0, {len(names)}) (len(names) = {len(names)}), "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        if not bool(np.isfinite(boxes).all()) or not bool(np.isfinite(scores).all()):
            raise ValueError("Detections.boxes and Detections.scores must be finite (found NaN or inf)")
        bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"Detections.boxes must be xyxy with x2 >= x1 and y2 >= y1; box {i} is {boxes[i].tolist()}"
            )

        size = tuple(int(v) for v in self.image_size)
        if len(size) != 2 or size[0] < 1 or size[1] < 1:
            raise ValueError(
                f"Detections.image_size must be (height, width) with positive ints, got {self.image_size!r}"
            )
        if self.image is not None:
            im = self.image
            if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                desc = f"{tuple(im.shape)} {im.dtype}" if isinstance(im, np.ndarray) else type(im).__name__
                raise ValueError(f"Detections.image must be an (H, W, 3) uint8 BGR array, got {desc}")
            if tuple(im.shape[:2]) != size:
                raise ValueError(f"Detections.image has shape {tuple(im.shape[:2])} but image_size is {size}")

        track_ids = None
        if self.track_ids is not None:
            track_ids = _as_numpy(self.track_ids)  # (N,)
            integral = _is_int(track_ids) or (_is_float(track_ids) and np.array_equal(track_ids, np.round(track_ids)))
            if track_ids.shape != (n,) or not integral:
                raise ValueError(
                    f"Detections.track_ids must be ({n},) integers to match boxes {tuple(boxes.shape)}, "
                    f"got {tuple(track_ids.shape)} {_dtype(self.track_ids)}"
                )
            track_ids = track_ids.astype(np.int64, copy=False)

        if n > 1 and bool((scores[1:] > scores[:-1]).any()):
            order = np.argsort(-scores, kind="stable")  # (N,) descending; ties keep their order
            boxes, scores, labels = boxes[order], scores[order], labels[order]
            if track_ids is not None:
                track_ids = track_ids[order]
        self.boxes, self.scores, self.labels = _as_result(boxes), _as_result(scores), _as_result(labels)
        self.track_ids = None if track_ids is None else _as_result(track_ids)
        self.names = names
        self.image_size = (size[0], size[1])

    # ----------------------------------------------------------------------------------------

    @classmethod
    def empty(
        cls,
        names: Sequence[str],
        image_size: tuple[int, int],
        path: str | None = None,
        image: np.ndarray | None = None,
    ) -> Detections:
        """Detections with no boxes (an image where nothing was found)."""
        return cls(
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros((0,), dtype=np.float32),
            labels=np.zeros((0,), dtype=np.int64),
            names=list(names),
            image_size=image_size,
            path=path,
            image=image,
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: int | slice | torch.Tensor | np.ndarray | Sequence[int]) -> Detections:
        """Select detections, e.g. ``dets[dets.scores > 0.5]``; returns new Detections."""
        if isinstance(index, int):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"detection index {index} out of range for {n} detections")
            index = slice(index % n, index % n + 1)
        return Detections(
            boxes=self.boxes[index],
            scores=self.scores[index],
            labels=self.labels[index],
            names=self.names,
            image_size=self.image_size,
            path=self.path,
            image=self.image,
            track_ids=None if self.track_ids is None else self.track_ids[index],
        )

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, image_size={self.image_size}, path={self.path!r}, names={self.names!r})"

    def cpu(self) -> Detections:
        """Return self: Detections always hold CPU tensors or arrays (moved there on construction)."""
        return self

    # ----------------------------------------------------------------------------------------

    def plot(
        self,
        image: np.ndarray | None = None,
        line_width: int | None = None,
        font_scale: float | None = None,
        show_scores: bool = True,
    ) -> np.ndarray:
        """Draw the boxes and labels on a copy of the image.

        Args:
            image: ``(H, W, 3)`` uint8 BGR image matching ``image_size``; defaults to the
                stored ``image``.
            line_width: Box line width, pixels; default scales with the image size.
            font_scale: OpenCV font scale; default ``line_width / 3``.
            show_scores: Append the score to each label (``"person 0.87"``).

        Returns:
            A new ``(H, W, 3)`` uint8 BGR array; the input image is not modified.

        Raises:
            ValueError: No image given or stored, or its shape does not match ``image_size``.
        """
        if image is None:
            image = self.image
        if image is None:
            raise ValueError(
                f"Detections.plot needs an image: none is stored (path={self.path!r}); pass plot(image=...)"
            )
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            desc = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"plot image must be an (H, W, 3) uint8 BGR array, got {desc}")
        h, w = self.image_size
        if tuple(image.shape[:2]) != (h, w):
            raise ValueError(
                f"plot image has shape {tuple(image.shape[:2])} but the detections are for image_size {(h, w)}"
            )

        canvas = np.ascontiguousarray(image).copy()
        lw = line_width if line_width is not None else max(2, round(0.002 * (h + w)))
        fs = font_scale if font_scale is not None else lw / 3
        thickness = max(1, lw - 1)
        font = cv2.FONT_HERSHEY_SIMPLEX
        # Draw lowest scores first so the most confident boxes end up on top.
        for i in reversed(range(len(self))):
            x1, y1, x2, y2 = (int(round(v)) for v in self.boxes[i].tolist())
            label = int(self.labels[i])
            color = label_color(label)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
            text = self.names[label] + (f" {float(self.scores[i]):.2f}" if show_scores else "")
            if self.track_ids is not None:
                text = f"#{int(self.track_ids[i])} {text}"
            (tw, th), baseline = cv2.getTextSize(text, font, fs, thickness)
            box_h = th + baseline + 2
            # Above the box when there is room, else just inside its top edge.
            ty = y1 - box_h if y1 - box_h >= 0 else y1
            tx = min(max(x1, 0), max(w - tw - 2, 0))
            cv2.rectangle(canvas, (tx, ty), (tx + tw + 2, ty + box_h), color, -1, cv2.LINE_AA)
            cv2.putText(canvas, text, (tx + 1, ty + th + 1), font, fs, text_color_on(color), thickness, cv2.LINE_AA)
        return canvas

    def save(self, path: str | os.PathLike, image: np.ndarray | None = None, **plot_kwargs: Any) -> Path:
        """Write the plotted image to ``path`` (format from its extension; parent dirs created).

        Args:
            path: Output file, e.g. ``runs/predict/bus.jpg``.
            image: As in :meth:`plot`.
            **plot_kwargs: Passed to :meth:`plot`.

        Returns:
            The written path.

        Raises:
            ValueError: No image to plot, or OpenCV cannot encode to the extension.
            OSError: The file cannot be written.
        """
        return save_image(path, self.plot(image=image, **plot_kwargs), "detections")

    def to_coco(self, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """COCO results-format dicts, one per detection.

        Args:
            image_id: The COCO image id.
            category_ids: COCO category id of each class in ``names`` (same length); default:
                the label index itself.

        Returns:
            ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` with ``bbox``
            in original-image pixels rounded to 4 decimals and ``score`` to 5 decimals.

        Raises:
            ValueError: ``category_ids`` length differs from ``len(names)``.
        """
        if category_ids is not None and len(category_ids) != len(self.names):
            raise ValueError(
                f"category_ids has {len(category_ids)} entries but there are {len(self.names)} names; "
                f"give one COCO category id per class"
            )
        xywh = xyxy_to_xywh(_as_numpy(self.boxes).astype(np.float64))  # (N, 4)
        results = []
        for box, score, label in zip(xywh.tolist(), self.scores.tolist(), self.labels.tolist()):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_ids[label]) if category_ids is not None else int(label),
                    "bbox": [round(v, 4) for v in box],
                    "score": round(score, 5),
                }
            )
        return results

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: path, image_size, names and each detection's box/score/label/name
        (and ``track_id`` when the detections are tracked)."""
        dets = [
            {
                "box": [round(v, 4) for v in box],
                "score": round(score, 5),
                "label": int(label),
                "name": self.names[label],
            }
            for box, score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())
        ]
        if self.track_ids is not None:
            for d, tid in zip(dets, self.track_ids.tolist()):
                d["track_id"] = int(tid)
        return {
            "path": self.path,
            "image_size": [self.image_size[0], self.image_size[1]],
            "names": list(self.names),
            "detections": dets,
        }
