"""Devices and numeric precisions, resolved from the strings users type (``"auto"``, ``"cuda:0"``, ``"bf16"``)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from ovdet.config import PRECISIONS as PRECISION_NAMES

__all__ = ["PRECISIONS", "autocast", "resolve_device", "resolve_precision"]

#: precision name (:data:`ovdet.config.PRECISIONS`) → autocast dtype (None: plain float32).
PRECISIONS: dict[str, torch.dtype | None] = dict(zip(PRECISION_NAMES, (None, torch.float16, torch.bfloat16)))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → the first CUDA device when available, else CPU; anything else as given.

    Raises:
        ValueError: an unknown device string (the accepted forms are listed), or a CUDA device
            asked for when CUDA is not available.
    """
    if str(device) == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"unknown device {str(device)!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N' (N = GPU index), or 'mps'"
        ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use device='cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} requested but only {torch.cuda.device_count()} CUDA "
                f"device(s) exist (cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} requested but MPS is not available; use 'cpu' or 'auto'")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision name on ``device`` (None for fp32).

    Raises:
        ValueError: unknown name, or fp16 off CUDA (CPU autocast supports bf16 only).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device; use 'fp32' or 'bf16' on CPU")
    return PRECISIONS[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op for None (fp32)."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
