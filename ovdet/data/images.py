"""Image decoding and inference sources.

Everything that reaches the model starts here as an ``(H, W, 3)`` uint8 BGR array, whatever it
was on disk or in memory: EXIF orientation applied, grayscale expanded to three channels, alpha
dropped, 16-bit scaled to 8-bit. :func:`iter_sources` turns any supported ``source`` (a path,
directory, glob, video, array, PIL image, tensor, or a list of those) into a stream of
:class:`SourceItem`; a file that cannot be read becomes an item with ``error`` set, so a batch
job keeps going, while "nothing to do" (missing path, empty directory, empty glob) is an error.

PyTorch is not imported here (the deployment runtime reads images without it): tensors are
recognised without importing torch, which is loaded whenever one exists.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import cv2
import numpy as np
from PIL import Image

from ovdet.structures import is_tensor

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "ImageReadError",
    "SourceItem",
    "count_sources",
    "decode_image",
    "decode_image_bytes",
    "file_truncation_reason",
    "is_capture_source",
    "iter_capture",
    "iter_sources",
    "probe_image_size",
    "to_bgr_array",
    "truncation_reason",
]

#: File extensions read as still images (decoded by OpenCV; a GIF gives its first frame).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".bmp",
        ".dib",
        ".gif",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jp2",
        ".png",
        ".pbm",
        ".pgm",
        ".ppm",
        ".pnm",
        ".tif",
        ".tiff",
        ".webp",
    }
)
#: File extensions streamed frame by frame through ``cv2.VideoCapture``.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".asf", ".avi", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".webm", ".wmv"}
)

_EXIF_ORIENTATION_TAG = 0x0112
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The IEND chunk is always empty, so its type and CRC are fixed bytes.
_PNG_IEND = b"IEND\xaeB`\x82"
# Bytes read from the end of a JPEG/PNG file to find its end marker without reading the whole file.
_TAIL_BYTES = 4096

#: Default limit on the pixels an image file may declare before it is decoded (Pillow's
#: ``Image.MAX_IMAGE_PIXELS``): a 100 kB PNG can declare 30000×30000 pixels and take 6 GB to
#: decode. Override per call (``max_pixels=``), with ``--max-pixels``, or ``$OVDET_MAX_PIXELS``.
DEFAULT_MAX_PIXELS = 89_478_485
MAX_PIXELS_ENV = "OVDET_MAX_PIXELS"
# Start-of-frame markers of a JPEG (baseline, progressive, lossless, arithmetic), which hold its size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})

ImageLike: TypeAlias = "np.ndarray | Image.Image | torch.Tensor"
PathLike = str | os.PathLike


class ImageReadError(ValueError):
    """A file exists but cannot be decoded into an image; the message names the file and why."""


@dataclass
class SourceItem:
    """One image of a source, decoded, or the reason it could not be.

    Attributes:
        name: File path; ``"path/video.mp4:frame12"`` for a video frame; ``"array0"``,
            ``"pil0"`` or ``"tensor0"`` for in-memory inputs (the number is the position in the
            input list, or in the batch of a 4-D tensor).
        image: ``(H, W, 3)`` uint8 BGR array, or None when ``error`` is set.
        error: Why the item could not be read, or None.
        frame: 0-based frame index for video frames, else None.
        fps: frames per second of the video a frame comes from, else None.
        notes: messages native decoders (libpng, ffmpeg) printed while reading the item,
            captured instead of reaching the terminal raw.
    """

    name: str
    image: np.ndarray | None
    error: str | None = None
    frame: int | None = None
    fps: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the item carries an image."""
        return self.error is None


# --------------------------------------------------------------------------------------------
# Decoding files
# --------------------------------------------------------------------------------------------


def decode_image(path: PathLike, max_pixels: int | None = None, notes: list[str] | None = None) -> np.ndarray:
    """Read an image file as a 3-channel 8-bit BGR array.

    The size the file declares is checked against ``max_pixels`` before any pixel is decoded.
    The file is decoded with ``cv2.IMREAD_UNCHANGED`` so bit depth and alpha are visible, then
    EXIF orientation is applied (all 8 orientations), grayscale is expanded to 3 channels,
    alpha is dropped (not composited) and 16-bit values are scaled to 8-bit with
    ``round(x / 257)``, mapping the full 16-bit range onto 0..255.

    Args:
        path: Image file path.
        max_pixels: Largest width × height accepted (see :func:`resolve_max_pixels`; None:
            ``$OVDET_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`; 0: no limit).
        notes: When given, receives what the native decoder printed (e.g. libpng warnings),
            which is kept off the terminal.

    Returns:
        ``(H, W, 3)`` uint8 BGR array, C-contiguous, in display orientation.

    Raises:
        FileNotFoundError: The file does not exist.
        ImageReadError: The file is empty, truncated, corrupt, not an image, over the pixel
            limit, or has an unsupported pixel type (float, signed, more than 4 channels).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path}")
    if os.path.isdir(path):
        raise ImageReadError(f"{path}: is a directory, not an image file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read file ({e})") from e
    return decode_image_bytes(data, path, max_pixels, notes)


def decode_image_bytes(
    data: np.ndarray | bytes,
    name: str,
    max_pixels: int | None = None,
    notes: list[str] | None = None,
    capture: bool = True,
) -> np.ndarray:
    """Decode an encoded image held in memory (an upload, a database blob) exactly as
    :func:`decode_image` decodes a file: same checks, same conversions, same errors.

    Args:
        data: the encoded bytes (``(L,)`` uint8 array or bytes).
        name: what error messages call the image (a file name, ``"upload 2"``).
        max_pixels: see :func:`decode_image`.
        notes: receives what the native decoder printed (only with ``capture``).
        capture: keep native decoder messages off the terminal by redirecting file descriptor 2
            during the decode. That redirect is process-wide, so threads decoding concurrently
            (a server) pass False.

    Returns:
        ``(H, W, 3)`` uint8 BGR array, C-contiguous, in display orientation.

    Raises:
        ImageReadError: empty, truncated, corrupt, not an image, over the pixel limit, or an
            unsupported pixel type; the message starts with ``name``.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = np.frombuffer(data, dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"{name}: empty file (0 bytes)")

    head = data[:8].tobytes()
    reason = truncation_reason(data, head)
    if reason is not None:
        raise ImageReadError(f"{name}: {reason}")
    check_pixel_limit(name, declared_size(data), max_pixels)
    with capture_native_stderr() if capture else contextlib.nullcontext([]) as printed:
        try:
            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except cv2.error as e:  # e.g. an image over OpenCV's own pixel limit
            raise ImageReadError(f"{name}: OpenCV cannot decode it ({str(e).strip()})") from e
    if notes is not None:
        notes.extend(printed)
    if image is None or image.size == 0:
        if head.startswith(_JPEG_MAGIC):
            raise ImageReadError(f"{name}: corrupt JPEG data")
        if head.startswith(_PNG_MAGIC):
            raise ImageReadError(f"{name}: corrupt PNG data")
        raise ImageReadError(f"{name}: not a decodable image (unrecognised or unsupported format)")

    try:
        image = _to_bgr_uint8(image)
    except ValueError as e:
        raise ImageReadError(f"{name}: {e}") from e
    return np.ascontiguousarray(_apply_orientation(image, _exif_orientation(data, head)))


def resolve_max_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels``, else ``$OVDET_MAX_PIXELS``, else the default; 0 = none.

    Raises:
        ValueError: a negative value, or an environment value that is not an integer (named).
    """
    if max_pixels is None:
        return env_limit(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS, "pixel count")
    if max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0 (0 = no limit), got {max_pixels}")
    return int(max_pixels)


def env_limit(name: str, default: int, unit: str) -> int:
    """A limit from the environment variable ``name`` (``default`` when unset or blank; 0 = none).

    Args:
        name: the variable, e.g. ``"OVDET_MAX_PIXELS"``.
        default: the limit when it is not set.
        unit: what it counts, for the message (``"pixel count"``).

    Raises:
        ValueError: the value is not an integer >= 0 (the variable and value named).
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        limit = int(raw)
    except ValueError as e:
        raise ValueError(f"${name}={raw!r} is not an integer {unit} (0 = no limit)") from e
    if limit < 0:
        raise ValueError(f"${name}={raw!r} must be >= 0 (0 = no limit)")
    return limit


def check_pixel_limit(name: str, size: tuple[int, int] | None, max_pixels: int | None) -> None:
    """Raise :class:`ImageReadError` when a declared ``(width, height)`` exceeds the pixel limit."""
    limit = resolve_max_pixels(max_pixels)
    if size is None or limit == 0:
        return
    w, h = size
    if w * h > limit:
        raise ImageReadError(
            f"{name}: declares {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} (a decompression bomb?); "
            f"not decoded. If the image is genuine, raise the limit (max_pixels=, --max-pixels, "
            f"${MAX_PIXELS_ENV}; 0 = no limit)"
        )


def declared_size(data: np.ndarray | bytes) -> tuple[int, int] | None:
    """``(width, height)`` an encoded image declares in its header, without decoding pixels.

    PNG and JPEG headers are read here; other formats through Pillow's lazy open. None when the
    header says nothing readable (decoding then decides).

    Args:
        data: the file's bytes (``(L,)`` uint8 array or bytes).
    """
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if raw.startswith(_PNG_MAGIC) and len(raw) >= 24 and raw[12:16] == b"IHDR":
        return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    if raw.startswith(_JPEG_MAGIC):
        i = 2
        while i + 9 < len(raw):
            if raw[i] != 0xFF:
                return None
            marker = raw[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in _JPEG_SOF:
                return int.from_bytes(raw[i + 7 : i + 9], "big"), int.from_bytes(raw[i + 5 : i + 7], "big")
            if marker == 0xDA:  # start of scan: no frame header before it
                return None
            if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
                i += 2
                continue
            i += 2 + int.from_bytes(raw[i + 2 : i + 4], "big")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(raw)) as im:
                return im.size
        except Image.DecompressionBombError:  # over twice Pillow's limit: certainly over ours
            return (2 * DEFAULT_MAX_PIXELS + 1, 1)
        except Exception:  # noqa: BLE001 - not a format Pillow reads; OpenCV may still decode it
            return None


@contextlib.contextmanager
def capture_native_stderr() -> Iterator[list[str]]:
    """Keep what native libraries (libpng, libjpeg, ffmpeg) print on file descriptor 2 off the terminal.

    Yields a list that, after the block, holds the captured lines. Python's own ``sys.stderr``
    writes inside the block are captured too, so keep the block around the native call only.
    """
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (closed, or an unusual embedding)
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(ln.strip() for ln in sink.read().decode(errors="replace").splitlines() if ln.strip())


def truncation_reason(data: np.ndarray, head: bytes) -> str | None:
    """Detect truncated JPEG/PNG files, which OpenCV may silently decode into a partial image.

    Args:
        data: ``(L,)`` uint8 raw file bytes.
        head: The first 8 bytes of ``data``.

    Returns:
        A reason string when the file is truncated, else None.
    """
    if head.startswith(_JPEG_MAGIC):
        raw = data.tobytes()
        # Entropy-coded data never contains FFD9 (0xFF bytes are stuffed), so the image is whole
        # only if an EOI marker follows the last start-of-scan. Searching from the end skips EOIs
        # of EXIF thumbnails, which sit before the main image's scans.
        last_sos = raw.rfind(b"\xff\xda")
        last_eoi = raw.rfind(b"\xff\xd9")
        if last_sos < 0:
            return "truncated JPEG (no image data: start-of-scan marker missing)"
        if last_eoi < last_sos:
            return "truncated JPEG (end-of-image marker 0xFFD9 missing)"
    elif head == _PNG_MAGIC and data.tobytes().rfind(_PNG_IEND) < 0:
        return "truncated PNG (IEND chunk missing)"
    return None


def file_truncation_reason(path: PathLike) -> str | None:
    """:func:`truncation_reason` of an image file, usually from its first and last few KB only.

    A whole JPEG ends with its end-of-image marker after the last scan and a whole PNG with its
    IEND chunk, give or take trailing bytes; when the last :data:`_TAIL_BYTES` show it, the file
    is whole. Otherwise (a truncated file, or a long trailer after the image) the whole file is
    read and :func:`truncation_reason` decides. Other formats are not checked (None).

    Args:
        path: Image file.

    Returns:
        A reason string when the file is a truncated JPEG/PNG, else None.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        jpeg = head.startswith(_JPEG_MAGIC)
        if not jpeg and head != _PNG_MAGIC:
            return None
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - _TAIL_BYTES, 0))
        tail = f.read()
    if size > _TAIL_BYTES:
        if jpeg:
            # entropy-coded data never holds FFD9, so an EOI here is a marker, and whole when no scan follows it
            eoi = tail.rfind(b"\xff\xd9")
            if eoi >= 0 and tail.rfind(b"\xff\xda") < eoi:
                return None
        elif tail.rfind(_PNG_IEND) >= 0:
            return None
    return truncation_reason(np.fromfile(path, dtype=np.uint8), head)


def probe_image_size(path: PathLike, verify: bool = False, max_pixels: int | None = None) -> tuple[int, int]:
    """Display-orientation ``(width, height)`` of an image file, from its header.

    Only the header and the end of the file are read (no pixels are decoded): the end finds
    truncated JPEG/PNG files (:func:`file_truncation_reason`), which :func:`decode_image`
    refuses. EXIF orientations 5-8 swap width and height, as :func:`decode_image` rotates those
    images (ultralytics ``exif_size`` does the same).

    Args:
        path: Image file.
        verify: Also run PIL ``Image.verify()``.
        max_pixels: The pixel limit of :func:`decode_image`; an image over it is refused here.

    Returns:
        ``(width, height)`` in pixels.

    Raises:
        ImageReadError: a truncated JPEG/PNG, or over the pixel limit (the message says why).
        OSError / ValueError / SyntaxError: the file is not a readable image (message says why).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is ours, checked below
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as e:  # over twice Pillow's limit: name the size ourselves
            check_pixel_limit(os.fspath(path), declared_size(np.fromfile(path, dtype=np.uint8)), max_pixels)
            raise ImageReadError(f"{os.fspath(path)}: Pillow refuses to open it ({e})") from e
    with im:
        w, h = im.size
        orientation = 1
        # A PNG's exif is only in info when its eXIf chunk precedes the pixels; asking PNG for
        # getexif() otherwise decodes the whole image, which a size probe must not do.
        if im.format != "PNG" or "exif" in im.info:
            try:
                orientation = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            except Exception:  # noqa: BLE001 - bad metadata must not make a good image unreadable
                orientation = 1
        if verify:
            im.verify()
    reason = file_truncation_reason(path)
    if reason is not None:
        raise ImageReadError(f"{os.fspath(path)}: {reason}")
    if w <= 0 or h <= 0:
        raise ValueError(f"image has no pixels ({w}x{h})")
    check_pixel_limit(os.fspath(path), (w, h), max_pixels)
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return int(w), int(h)


def _exif_orientation(data: np.ndarray, head: bytes) -> int:
    """Read the EXIF Orientation tag (1..8) from encoded image bytes; 1 when absent or unreadable.

    Args:
        data: ``(L,)`` uint8 raw file bytes.
        head: The first 8 bytes of ``data``.
    """
    raw = data.tobytes()
    # PIL fully decodes a PNG to look for a late eXIf chunk; skip that work when there is none.
    if head == _PNG_MAGIC and b"eXIf" not in raw:
        return 1
    try:
        with Image.open(io.BytesIO(raw)) as im:
            value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - malformed metadata must not make a decodable image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Transform a stored image into display orientation (same mapping as PIL's exif_transpose).

    Args:
        image: ``(H, W, C)`` array as stored in the file.
        orientation: EXIF Orientation value, 1..8.

    Returns:
        ``(H, W, C)`` for orientations 1-4, ``(W, H, C)`` for 5-8 (a view, not a copy).
    """
    if orientation == 2:  # mirrored horizontally
        return image[:, ::-1]
    if orientation == 3:  # rotated 180
        return image[::-1, ::-1]
    if orientation == 4:  # mirrored vertically
        return image[::-1]
    if orientation == 5:  # transpose (mirror across the main diagonal)
        return image.transpose(1, 0, 2)
    if orientation == 6:  # stored rotated 90 CCW: rotate 90 clockwise
        return np.rot90(image, k=-1)
    if orientation == 7:  # transverse (mirror across the anti-diagonal)
        return image[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:  # stored rotated 90 CW: rotate 90 counter-clockwise
        return np.rot90(image, k=1)
    return image


def _to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """Normalise a decoded/in-memory BGR(A)/gray array of 8 or 16 bits to ``(H, W, 3)`` uint8.

    Args:
        image: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 2)`` (gray + alpha), ``(H, W, 3)`` BGR or
            ``(H, W, 4)`` BGRA; uint8 or uint16.

    Returns:
        ``(H, W, 3)`` uint8 BGR; the input itself when it already is one.

    Raises:
        ValueError: Unsupported shape, channel count or dtype (message names it).
    """
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has no pixels, shape {tuple(image.shape)}")
    if image.dtype == np.uint16:
        # round(x / 257) maps 0..65535 exactly onto 0..255; x / 257 never ends in .5 for integers.
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(
            f"unsupported pixel type {image.dtype}; expected uint8 or uint16 "
            f"(convert floats with (x * 255).round().astype(np.uint8))"
        )
    channels = image.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        return np.repeat(image[:, :, :1], 3, axis=2)
    if channels == 3:
        return image
    if channels == 4:  # BGRA: drop alpha
        return image[:, :, :3]
    raise ValueError(f"unsupported channel count {channels} (shape {tuple(image.shape)}); expected 1, 3 or 4")


# --------------------------------------------------------------------------------------------
# In-memory images
# --------------------------------------------------------------------------------------------


def to_bgr_array(image: ImageLike) -> np.ndarray:
    """Convert an in-memory image to a 3-channel uint8 BGR array.

    Accepted inputs (used as given: no EXIF orientation is applied to in-memory images):

    - ``np.ndarray`` in OpenCV convention: ``(H, W, 3)`` BGR (returned as-is when uint8 and
      contiguous), ``(H, W)`` / ``(H, W, 1)`` gray, ``(H, W, 4)`` BGRA (alpha dropped);
      dtype uint8, or uint16 (scaled with ``round(x / 257)``).
    - ``PIL.Image.Image`` of any mode: RGB is swapped to BGR; L, LA, RGBA, P, CMYK, ... are
      converted; 16-bit modes (``I;16*``, and ``I`` with values in 0..65535) are scaled.
    - ``torch.Tensor`` in PyTorch convention: ``(3, H, W)`` RGB (or ``(1, H, W)`` gray, or a
      leading batch dimension of 1), either floating point in [0, 1] or uint8 in [0, 255].

    Args:
        image: The image.

    Returns:
        ``(H, W, 3)`` uint8 BGR, C-contiguous.

    Raises:
        TypeError: Unsupported type or dtype.
        ValueError: Unsupported shape, or a float tensor outside [0, 1].
    """
    if isinstance(image, np.ndarray):
        if image.dtype not in (np.uint8, np.uint16):
            raise TypeError(
                f"numpy image must be uint8 (or uint16) BGR, got dtype {image.dtype} with shape "
                f"{tuple(image.shape)}; convert floats in [0, 1] with (x * 255).round().astype(np.uint8)"
            )
        try:
            return np.ascontiguousarray(_to_bgr_uint8(image))
        except ValueError as e:
            raise ValueError(f"numpy image: {e}; expected (H, W), (H, W, 3) BGR or (H, W, 4) BGRA") from e
    if isinstance(image, Image.Image):
        return _pil_to_bgr(image)
    if is_tensor(image):
        return _tensor_to_bgr(image)
    raise TypeError(
        f"unsupported image type {type(image).__name__}; expected numpy.ndarray, PIL.Image.Image or torch.Tensor"
    )


def _pil_to_bgr(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to ``(H, W, 3)`` uint8 BGR."""
    mode = image.mode
    if mode.startswith("I;16"):
        array = np.asarray(image).astype(np.uint16)
    elif mode == "I":
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(
                f"PIL image of mode 'I' has values in [{array.min()}, {array.max()}], outside the "
                f"16-bit range 0..65535; convert it to 'L' or 'RGB' first"
            )
        array = array.astype(np.uint16)
    elif mode in ("L", "RGB", "RGBA"):
        array = np.asarray(image)
    elif mode == "LA":
        array = np.asarray(image)[:, :, 0]
    elif mode == "F":
        raise TypeError("PIL image of mode 'F' (float) is not supported; convert it to 'L' or 'RGB' first")
    else:  # 1, P, PA, CMYK, YCbCr, LAB, HSV, RGBX, ...
        array = np.asarray(image.convert("RGB"))
    if array.ndim == 3:
        array = array[:, :, 2::-1] if array.shape[2] == 3 else array[:, :, [2, 1, 0, 3]]  # RGB(A) -> BGR(A)
    try:
        return np.ascontiguousarray(_to_bgr_uint8(array))
    except ValueError as e:
        raise ValueError(f"PIL image (mode {mode!r}, size {image.size}): {e}") from e


def _tensor_to_bgr(image: torch.Tensor) -> np.ndarray:
    """Convert a ``(3, H, W)`` / ``(1, H, W)`` RGB tensor (float in [0, 1] or uint8) to BGR uint8."""
    shape = tuple(image.shape)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"tensor image must be (3, H, W) RGB or (1, H, W) gray (optionally with a batch "
            f"dimension of 1), got shape {shape}"
        )
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"tensor image has no pixels, shape {shape}")
    import torch  # loaded already: ``image`` is a tensor

    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        array = image.numpy()
    elif image.is_floating_point():
        image = image.float()
        lo, hi = float(image.min()), float(image.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ValueError(
                f"float tensor image must have values in [0, 1], got [{lo:.4g}, {hi:.4g}] "
                f"(shape {shape}); divide 0..255 values by 255"
            )
        array = (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    else:
        raise TypeError(f"tensor image must be floating point in [0, 1] or uint8, got {image.dtype} (shape {shape})")
    array = array.transpose(1, 2, 0)  # (H, W, C) RGB
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, ::-1])


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One resolved unit of a source: an image file, a video file, or an in-memory image."""

    kind: str  # "image" | "video" | "memory"
    name: str
    obj: Any = None  # the in-memory image for kind == "memory"


def iter_sources(source: Any, *, video_stride: int = 1, max_pixels: int | None = None) -> Iterator[SourceItem]:
    """Stream the images of a source one at a time.

    The source is resolved eagerly (so a missing path raises at the call, not at the first
    ``next``); images are decoded lazily, and videos are read one frame at a time, so memory
    stays bounded whatever the source size.

    Args:
        source: One of

            - a path (``str`` or ``os.PathLike``) to an image file (any extension is tried) or
              to a video file (extension in :data:`VIDEO_EXTENSIONS`);
            - a directory: its image and video files (by extension, non-recursive), sorted by
              name; other files are ignored;
            - a glob pattern (a string containing ``*``, ``?`` or ``[``; ``**`` recurses):
              matching image and video files, sorted;
            - an in-memory image: ``np.ndarray``, ``PIL.Image.Image`` or ``torch.Tensor``
              (see :func:`to_bgr_array`); a ``(B, 3, H, W)`` tensor yields B items;
            - a list or tuple of the above (not nested).
        video_stride: Yield every ``video_stride``-th video frame (frames 0, s, 2s, ...).
        max_pixels: Pixel limit per image or video frame (see :func:`resolve_max_pixels`).

    Returns:
        Iterator of :class:`SourceItem`, in source order. Files that cannot be decoded, videos
        that cannot be opened and videos that end before their declared frame count give items
        with ``error`` set (after the frames that could be read) instead of raising.

    Raises:
        FileNotFoundError: A path does not exist, a directory holds no image or video files,
            a glob matches none, or the source is an empty list.
        TypeError: An unsupported source type.
        ValueError: ``video_stride < 1``, or a URL source.
    """
    if not isinstance(video_stride, int) or isinstance(video_stride, bool) or video_stride < 1:
        raise ValueError(f"video_stride must be an integer >= 1, got {video_stride!r}")
    limit = resolve_max_pixels(max_pixels)
    entries = _resolve(source)
    return _iterate(entries, video_stride, limit)


def count_sources(source: Any, *, video_stride: int = 1) -> int | None:
    """Number of items :func:`iter_sources` will yield, when cheaply known (for progress bars).

    Videos are counted from ``CAP_PROP_FRAME_COUNT`` (container metadata, which may be
    approximate); a video whose frame count is unknown, or that cannot be opened, makes the
    total unknown.

    Args:
        source: Anything :func:`iter_sources` accepts.
        video_stride: As in :func:`iter_sources`.

    Returns:
        The item count, or None when unknown.

    Raises:
        Same as :func:`iter_sources`.
    """
    if not isinstance(video_stride, int) or isinstance(video_stride, bool) or video_stride < 1:
        raise ValueError(f"video_stride must be an integer >= 1, got {video_stride!r}")
    total = 0
    for entry in _resolve(source):
        if entry.kind != "video":
            total += 1
            continue
        with capture_native_stderr():  # opening probes the stream: ffmpeg may complain about corrupt data
            capture = open_video(entry.name)
            try:
                frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
            finally:
                capture.release()
        if frames <= 0:
            return None
        total += -(-frames // video_stride)  # ceil: frames 0, s, 2s, ... < frames
    return total


def _resolve(source: Any) -> list[_Entry]:
    """Expand a source into entries without decoding anything."""
    if isinstance(source, (list, tuple)):
        if len(source) == 0:
            raise FileNotFoundError("source is an empty list: nothing to read")
        entries: list[_Entry] = []
        for i, item in enumerate(source):
            if isinstance(item, (list, tuple)):
                raise TypeError(f"source list element {i} is a {type(item).__name__}; nested lists are not supported")
            entries.extend(_resolve_one(item, index=i, in_list=True))
        return entries
    return _resolve_one(source, index=0, in_list=False)


def _resolve_one(source: Any, *, index: int, in_list: bool) -> list[_Entry]:
    """Expand one non-list source; ``index`` names in-memory images."""
    if isinstance(source, np.ndarray):
        return [_Entry("memory", f"array{index}", source)]
    if isinstance(source, Image.Image):
        return [_Entry("memory", f"pil{index}", source)]
    if is_tensor(source):
        if source.ndim == 4 and source.shape[0] != 1:
            if in_list:
                raise ValueError(
                    f"source list element {index} is a batched tensor of shape {tuple(source.shape)}; "
                    f"pass the batch on its own or split it into (3, H, W) tensors"
                )
            return [_Entry("memory", f"tensor{b}", source[b]) for b in range(source.shape[0])]
        return [_Entry("memory", f"tensor{index}", source)]
    if isinstance(source, (str, os.PathLike)):
        return _resolve_path(os.fspath(source))
    raise TypeError(
        f"unsupported source type {type(source).__name__}; expected a path, directory, glob, video, "
        f"numpy array, PIL image, torch tensor, or a list of these"
    )


def _resolve_path(path: str) -> list[_Entry]:
    """Expand a file, directory or glob pattern into sorted file entries."""
    if path.lower().startswith(("http://", "https://", "rtsp://", "rtmp://")):
        raise ValueError(f"URL sources are not supported: {path}; download the file first")
    if os.path.isdir(path):
        files = sorted(str(p) for p in Path(path).iterdir() if p.is_file() and _is_media(str(p)))
        if not files:
            raise FileNotFoundError(
                f"no image or video files in directory {path} (looked for extensions "
                f"{', '.join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))})"
            )
        return [_file_entry(f) for f in files]
    if os.path.exists(path):
        return [_file_entry(path)]
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f) and _is_media(f))
        if not files:
            raise FileNotFoundError(f"glob pattern matched no image or video files: {path}")
        return [_file_entry(f) for f in files]
    raise FileNotFoundError(f"source not found: {path}")


def _is_media(path: str) -> bool:
    ext = os.path.splitext(path)[1].lower()
    return ext in IMAGE_EXTENSIONS or ext in VIDEO_EXTENSIONS


def _file_entry(path: str) -> _Entry:
    kind = "video" if os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS else "image"
    return _Entry(kind, path)


def _iterate(entries: Sequence[_Entry], video_stride: int, max_pixels: int) -> Iterator[SourceItem]:
    """Decode entries lazily, turning per-file failures into error items."""
    for entry in entries:
        if entry.kind == "memory":
            yield SourceItem(entry.name, to_bgr_array(entry.obj))
        elif entry.kind == "video":
            yield from _iter_video(entry.name, video_stride, max_pixels)
        else:
            notes: list[str] = []
            try:
                yield SourceItem(entry.name, decode_image(entry.name, max_pixels, notes), notes=notes)
            except (ImageReadError, OSError) as e:
                # OSError covers a file removed or made unreadable after the source was listed.
                yield SourceItem(entry.name, None, error=str(e), notes=notes)


def open_video(path: str | int) -> cv2.VideoCapture:
    """``cv2.VideoCapture(path)`` (a file, a stream URL or a camera index) with ffmpeg's own logging off.

    ffmpeg's decoder threads report corrupt data asynchronously, straight to the terminal, while
    Python prints progress there; OpenCV reads ``OPENCV_FFMPEG_LOGLEVEL`` once, when it first
    loads ffmpeg, so it is set (to quiet) for that moment only. A user's own
    ``OPENCV_FFMPEG_LOGLEVEL``/``OPENCV_FFMPEG_DEBUG``, or ``OVDET_DEBUG=1`` (``ovdet --debug``),
    leaves ffmpeg's messages on. A truncated or corrupt video is still reported: by its frame count.
    """
    keys = ("OPENCV_FFMPEG_LOGLEVEL", "OPENCV_FFMPEG_DEBUG")
    if any(k in os.environ for k in keys) or os.environ.get("OVDET_DEBUG", "") not in ("", "0"):
        return cv2.VideoCapture(path)
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"  # AV_LOG_QUIET
    try:
        return cv2.VideoCapture(path)
    finally:
        del os.environ["OPENCV_FFMPEG_LOGLEVEL"]


#: URL schemes :func:`iter_capture` opens as live streams (through OpenCV's ffmpeg backend).
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


def is_capture_source(source: Any) -> bool:
    """True for what :func:`iter_capture` reads: a camera index (``0``, ``"0"``) or a stream URL."""
    if isinstance(source, int) and not isinstance(source, bool):
        return source >= 0
    return isinstance(source, str) and (source.isdigit() or source.lower().startswith(STREAM_SCHEMES))


def iter_capture(source: int | str, *, video_stride: int = 1, max_pixels: int | None = None) -> Iterator[SourceItem]:
    """Stream the frames of a camera (index ``0``, ``1``, … or ``"0"``) or of a network stream
    (``rtsp://…``, ``http://…``) through ``cv2.VideoCapture``, one frame in memory at a time.

    Frames are named ``camera0:frame12`` / ``rtsp://host/path:frame12``. A source that cannot be
    opened yields one error item; a live stream ends when the capture stops delivering frames.

    Raises:
        ValueError: not a camera index or a stream URL, or ``video_stride < 1``.
    """
    if not is_capture_source(source):
        raise ValueError(f"not a camera index or stream URL: {source!r}")
    if not isinstance(video_stride, int) or isinstance(video_stride, bool) or video_stride < 1:
        raise ValueError(f"video_stride must be an integer >= 1, got {video_stride!r}")
    limit = resolve_max_pixels(max_pixels)
    if isinstance(source, str) and source.isdigit():
        source = int(source)
    name = f"camera{source}" if isinstance(source, int) else source
    return _iter_video(source, video_stride, limit, name=name)


def _iter_video(target: str | int, stride: int, max_pixels: int, name: str | None = None) -> Iterator[SourceItem]:
    """Yield every ``stride``-th frame of a video, holding one frame in memory at a time.

    A video whose frames stop before the count its container declares ends with an error item
    saying how many frames were read; native decoder messages are captured into ``notes``.
    ``target`` is a file, or a camera index or stream URL with ``name`` naming it in items.
    """
    path = name if name is not None else str(target)
    with capture_native_stderr() as notes:
        capture = open_video(target)
    try:
        if not capture.isOpened():
            if name is None:
                why = "cannot open video (unsupported codec, corrupt file, or no frames)"
            elif isinstance(target, int):
                why = "cannot open the camera (no such device, or in use)"
            else:
                why = "cannot open the stream (unreachable, refused, or an unsupported codec)"
            yield SourceItem(path, None, error=f"{path}: {why}", notes=notes)
            return
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # container metadata; 0 when unknown
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or None
        size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        try:
            check_pixel_limit(path, size if min(size) > 0 else None, max_pixels)
        except ImageReadError as e:
            yield SourceItem(path, None, error=str(e), notes=notes)
            return
        index = 0
        yielded = 0
        while True:
            pending: list[str] = []
            if index % stride == 0:
                with capture_native_stderr() as pending:
                    ok, frame = capture.read()
                if not ok or frame is None:
                    notes.extend(pending)
                    break
                name = f"{path}:frame{index}"
                try:
                    image = np.ascontiguousarray(_to_bgr_uint8(frame))
                except ValueError as e:
                    yield SourceItem(
                        name, None, error=f"{path}: frame {index}: {e}", frame=index, fps=fps, notes=pending
                    )
                else:
                    yield SourceItem(name, image, frame=index, fps=fps, notes=pending)
                yielded += 1
            else:
                with capture_native_stderr() as pending:
                    ok = capture.grab()  # skipped frames are demuxed but not converted
                notes.extend(pending)
                if not ok:
                    break
            index += 1
        if yielded == 0:
            yield SourceItem(path, None, error=f"{path}: video has no decodable frames", notes=notes)
        elif declared > 0 and index < declared:
            yield SourceItem(
                path,
                None,
                notes=notes,
                fps=fps,
                error=f"{path}: video ended after {index} of {declared} declared frames "
                f"(corrupt or truncated); the frames read were used",
            )
    finally:
        with capture_native_stderr() as closing:  # decoder threads may still report while closing
            capture.release()
        notes.extend(closing)
