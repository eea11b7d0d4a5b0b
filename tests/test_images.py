"""Decoding real images and their hard variants; source iteration over files, dirs, globs, videos."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ovdet.data.images import (
    ImageReadError,
    SourceItem,
    count_sources,
    decode_image,
    iter_sources,
    to_bgr_array,
)


@pytest.fixture(scope="module")
def jpg(coco128_images: list[Path]) -> Path:
    """A real 640x480 (w x h) landscape JPEG."""
    path = coco128_images[0]
    assert cv2.imread(str(path)).shape == (480, 640, 3)
    return path


@pytest.fixture(scope="module")
def bgr(jpg: Path) -> np.ndarray:
    return cv2.imread(str(jpg))


# ------------------------------------------------------------------------------------------
# decode_image
# ------------------------------------------------------------------------------------------


def test_decode_matches_cv2_imread_on_real_jpegs(coco128_images: list[Path]) -> None:
    for path in coco128_images[:12]:
        out = decode_image(path)
        ref = cv2.imread(str(path))
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        assert out.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg_matches_opencv_exif_reader(tmp_path: Path, jpg: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.open(jpg).save(path, exif=exif, quality=95)

    out = decode_image(path)
    expected_shape = (640, 480, 3) if orientation >= 5 else (480, 640, 3)
    assert out.shape == expected_shape
    # cv2.imread (IMREAD_COLOR) applies EXIF orientation itself: same decoder, so exact.
    np.testing.assert_array_equal(out, cv2.imread(str(path)))
    # Independent check against PIL's exif_transpose, within JPEG-decoder tolerance.
    pil = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))[:, :, ::-1]
    assert pil.shape == out.shape
    assert np.abs(pil.astype(int) - out.astype(int)).mean() < 2.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png_is_lossless_exact(tmp_path: Path, bgr: np.ndarray, orientation: int) -> None:
    small = np.ascontiguousarray(bgr[100:160, 200:290])  # 60 x 90, non-square so transposes show
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(small[:, :, ::-1]).save(path, exif=exif)

    out = decode_image(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))[:, :, ::-1]
    assert out.shape == ((90, 60, 3) if orientation >= 5 else (60, 90, 3))
    np.testing.assert_array_equal(out, expected)
    if orientation == 1:
        np.testing.assert_array_equal(out, small)
    if orientation == 6:  # stored image must be rotated 90 degrees clockwise for display
        np.testing.assert_array_equal(out, np.rot90(small, k=-1))


def test_grayscale_jpeg_becomes_three_equal_channels(tmp_path: Path, bgr: np.ndarray) -> None:
    path = tmp_path / "gray.jpg"
    assert cv2.imwrite(str(path), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    out = decode_image(path)
    assert out.shape == (480, 640, 3) and out.dtype == np.uint8
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_png_drops_alpha(tmp_path: Path, bgr: np.ndarray) -> None:
    alpha = np.random.default_rng(0).integers(0, 256, bgr.shape[:2], dtype=np.uint8)
    path = tmp_path / "rgba.png"
    assert cv2.imwrite(str(path), np.dstack([bgr, alpha]))
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == (480, 640, 4)
    out = decode_image(path)
    np.testing.assert_array_equal(out, bgr)


def test_16bit_png_scaled_to_full_8bit_range(tmp_path: Path, bgr: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    x = bgr.astype(np.uint16) * 257 + rng.integers(0, 257, bgr.shape).astype(np.uint16)  # noise in low byte
    x[0, 0] = (0, 65535, 128)
    x[0, 1] = (129, 384, 385)  # 384 / 257 = 1.494 -> 1, 385 / 257 = 1.498 -> 1
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), x)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16

    out = decode_image(path)
    assert out.shape == (480, 640, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.round(x / 257.0).astype(np.uint8))
    assert out[0, 0].tolist() == [0, 255, 0]
    assert out[0, 1].tolist() == [1, 1, 1]
    # OpenCV's own 16 -> 8 bit conversion keeps the high byte: at most 1 apart.
    assert np.abs(out.astype(int) - cv2.imread(str(path)).astype(int)).max() <= 1


def test_16bit_grayscale_png(tmp_path: Path) -> None:
    x = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    path = tmp_path / "g16.png"
    assert cv2.imwrite(str(path), x)
    out = decode_image(path)
    assert out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[:, :, 1], np.round(x / 257.0).astype(np.uint8))
    assert out.max() == 255 and out.min() == 0


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        decode_image(tmp_path / "nope.jpg")


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg.*empty file"):
        decode_image(path)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_jpeg_is_detected(tmp_path: Path, jpg: Path, keep: float) -> None:
    # Some OpenCV builds return a partially grey image for these; the EOI check catches both.
    data = jpg.read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageReadError, match=r"half\.jpg.*truncated JPEG"):
        decode_image(path)


def test_jpeg_with_trailing_bytes_after_eoi_is_fine(tmp_path: Path, jpg: Path, bgr: np.ndarray) -> None:
    path = tmp_path / "trailer.jpg"
    path.write_bytes(jpg.read_bytes() + b"\x00" * 64 + b"some trailer")
    np.testing.assert_array_equal(decode_image(path), bgr)


def test_truncated_png_is_detected(tmp_path: Path, bgr: np.ndarray) -> None:
    ok, enc = cv2.imencode(".png", bgr)
    assert ok
    path = tmp_path / "cut.png"
    path.write_bytes(enc.tobytes()[: enc.size * 2 // 3])
    with pytest.raises(ImageReadError, match=r"cut\.png.*truncated PNG"):
        decode_image(path)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(ImageReadError, match=r"notes\.jpg.*not a decodable image"):
        decode_image(path)


def test_corrupt_jpeg_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50 + b"\xff\xda" + b"\x13" * 50 + b"\xff\xd9")
    with pytest.raises(ImageReadError, match=r"bad\.jpg"):
        decode_image(path)


def test_image_read_error_is_value_error() -> None:
    assert issubclass(ImageReadError, ValueError)


# ------------------------------------------------------------------------------------------
# to_bgr_array
# ------------------------------------------------------------------------------------------


def test_numpy_bgr_passes_through(bgr: np.ndarray) -> None:
    out = to_bgr_array(bgr)
    assert out is bgr or np.shares_memory(out, bgr)
    np.testing.assert_array_equal(out, bgr)


def test_numpy_gray_bgra_and_16bit(bgr: np.ndarray) -> None:
    gray = bgr[:, :, 1]
    out = to_bgr_array(gray)
    assert out.shape == (480, 640, 3)
    np.testing.assert_array_equal(out[:, :, 2], gray)
    np.testing.assert_array_equal(to_bgr_array(gray[:, :, None]), out)

    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(to_bgr_array(bgra), bgr)

    deep = bgr.astype(np.uint16) * 257
    np.testing.assert_array_equal(to_bgr_array(deep), bgr)


def test_numpy_bad_inputs(bgr: np.ndarray) -> None:
    with pytest.raises(TypeError, match="float32"):
        to_bgr_array(bgr.astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"\(3, 480, 640\)"):  # CHW numpy is not OpenCV layout
        to_bgr_array(np.ascontiguousarray(bgr.transpose(2, 0, 1)))
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        to_bgr_array(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="no pixels"):
        to_bgr_array(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(TypeError, match="list"):
        to_bgr_array([[1, 2, 3]])  # type: ignore[arg-type]


def test_pil_modes(bgr: np.ndarray) -> None:
    rgb = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    np.testing.assert_array_equal(to_bgr_array(rgb), bgr)

    gray = rgb.convert("L")
    out = to_bgr_array(gray)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], np.asarray(gray))

    np.testing.assert_array_equal(to_bgr_array(rgb.convert("RGBA")), bgr)
    np.testing.assert_array_equal(to_bgr_array(gray.convert("LA"))[:, :, 0], np.asarray(gray))

    pal = rgb.quantize(64)
    assert pal.mode == "P"
    np.testing.assert_array_equal(to_bgr_array(pal), np.asarray(pal.convert("RGB"))[:, :, ::-1])

    deep = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    assert deep.mode.startswith("I;16")
    np.testing.assert_array_equal(to_bgr_array(deep)[:, :, 0], np.asarray(gray))

    with pytest.raises(TypeError, match="'F'"):
        to_bgr_array(gray.convert("F"))


def test_tensor_inputs(bgr: np.ndarray) -> None:
    rgb_chw = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1)))  # (3, H, W) uint8
    np.testing.assert_array_equal(to_bgr_array(rgb_chw), bgr)
    np.testing.assert_array_equal(to_bgr_array(rgb_chw.float() / 255), bgr)
    np.testing.assert_array_equal(to_bgr_array(rgb_chw[None].double() / 255), bgr)
    gray = to_bgr_array(rgb_chw[:1])
    np.testing.assert_array_equal(gray[:, :, 0], bgr[:, :, 2])

    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_bgr_array(rgb_chw.float())  # 0..255 floats
    with pytest.raises(TypeError, match="int32"):
        to_bgr_array(rgb_chw.int())
    with pytest.raises(ValueError, match=r"\(480, 640, 3\)"):
        to_bgr_array(torch.from_numpy(bgr))  # HWC tensor is not the tensor layout


# ------------------------------------------------------------------------------------------
# iter_sources / count_sources
# ------------------------------------------------------------------------------------------


def test_single_file_source(jpg: Path, bgr: np.ndarray) -> None:
    items = list(iter_sources(jpg))
    assert len(items) == 1 and count_sources(str(jpg)) == 1
    assert items[0].name == str(jpg) and items[0].error is None and items[0].frame is None
    np.testing.assert_array_equal(items[0].image, bgr)


def test_directory_source_real_images(coco128_images: list[Path]) -> None:
    folder = coco128_images[0].parent
    assert count_sources(folder) == 128
    names = []
    for item in iter_sources(folder):
        assert item.ok and item.image is not None and item.image.dtype == np.uint8
        assert max(item.image.shape[:2]) <= 640
        names.append(item.name)
    assert names == [str(p) for p in coco128_images]


def test_directory_skips_non_images_and_reports_bad_files(tmp_path: Path, coco128_images: list[Path]) -> None:
    for p in coco128_images[:3]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "000000000000_broken.jpg").write_bytes(b"garbage")
    (tmp_path / "sub").mkdir()
    shutil.copy(coco128_images[3], tmp_path / "sub" / "x.jpg")  # non-recursive: ignored

    assert count_sources(tmp_path) == 4
    items = list(iter_sources(tmp_path))
    assert [Path(i.name).name for i in items] == ["000000000000_broken.jpg"] + [p.name for p in coco128_images[:3]]
    assert items[0].image is None and "000000000000_broken.jpg" in (items[0].error or "")
    assert all(i.ok for i in items[1:])


def test_glob_source(coco128_images: list[Path]) -> None:
    folder = coco128_images[0].parent
    pattern = str(folder / "00000000003*.jpg")
    expected = [str(p) for p in coco128_images if p.name.startswith("00000000003")]
    assert len(expected) >= 2
    assert [i.name for i in iter_sources(pattern)] == expected
    assert count_sources(pattern) == len(expected)


def test_nothing_to_do_raises_naming_the_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        iter_sources(tmp_path / "missing_dir")  # raises at the call, not at first next()
    with pytest.raises(FileNotFoundError, match="no image or video files"):
        iter_sources(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\*\.jpg"):
        iter_sources(str(tmp_path / "*.jpg"))
    with pytest.raises(FileNotFoundError, match="empty list"):
        iter_sources([])
    with pytest.raises(TypeError, match="int"):
        iter_sources(42)
    with pytest.raises(ValueError, match="video_stride"):
        iter_sources(tmp_path, video_stride=0)


def test_mixed_list_source(jpg: Path, bgr: np.ndarray) -> None:
    rgb_t = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1)))
    pil = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    source = [str(jpg), bgr, pil, rgb_t]
    assert count_sources(source) == 4
    items = list(iter_sources(source))
    assert [i.name for i in items] == [str(jpg), "array1", "pil2", "tensor3"]
    for item in items:
        np.testing.assert_array_equal(item.image, bgr)


def test_batched_tensor_source(bgr: np.ndarray) -> None:
    small = cv2.resize(bgr, (64, 48))
    t = torch.from_numpy(np.ascontiguousarray(small[:, :, ::-1].transpose(2, 0, 1))).float() / 255
    batch = torch.stack([t, t.flip(2)])  # (2, 3, 48, 64)
    items = list(iter_sources(batch))
    assert [i.name for i in items] == ["tensor0", "tensor1"]
    np.testing.assert_array_equal(items[0].image, small)
    np.testing.assert_array_equal(items[1].image, small[:, ::-1])
    with pytest.raises(ValueError, match="batched tensor"):
        iter_sources([batch])


def _write_video(path: Path, frames: list[np.ndarray], fourcc: str = "MJPG") -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 5.0, (w, h))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV build cannot write {fourcc} video")
    for f in frames:
        writer.write(f)
    writer.release()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, coco128_images: list[Path]) -> tuple[Path, list[np.ndarray]]:
    frames = [cv2.resize(cv2.imread(str(p)), (160, 120), interpolation=cv2.INTER_AREA) for p in coco128_images[:7]]
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    _write_video(path, frames)
    return path, frames


def test_video_streams_every_frame(video: tuple[Path, list[np.ndarray]]) -> None:
    path, frames = video
    assert count_sources(path) == 7
    it = iter_sources(path)
    first = next(it)
    assert isinstance(first, SourceItem) and first.frame == 0 and first.name == f"{path}:frame0"
    items = [first, *it]
    assert [i.frame for i in items] == list(range(7))
    for item, ref in zip(items, frames):
        assert item.image is not None and item.image.shape == (120, 160, 3) and item.image.dtype == np.uint8
        assert np.abs(item.image.astype(int) - ref.astype(int)).mean() < 8  # MJPG is lossy
    # Frames are distinct photos: each decoded frame is closest to its own source image.
    for k, item in enumerate(items):
        errs = [np.abs(item.image.astype(int) - f.astype(int)).mean() for f in frames]
        assert int(np.argmin(errs)) == k


@pytest.mark.parametrize(("stride", "expected"), [(2, [0, 2, 4, 6]), (3, [0, 3, 6]), (10, [0])])
def test_video_stride(video: tuple[Path, list[np.ndarray]], stride: int, expected: list[int]) -> None:
    path, frames = video
    items = list(iter_sources(path, video_stride=stride))
    assert [i.frame for i in items] == expected
    assert count_sources(path, video_stride=stride) == len(expected)
    for item in items:
        assert np.abs(item.image.astype(int) - frames[item.frame].astype(int)).mean() < 8


def test_video_and_images_in_one_directory(tmp_path: Path, video: tuple[Path, list[np.ndarray]], jpg: Path) -> None:
    shutil.copy(video[0], tmp_path / "b_clip.avi")
    shutil.copy(jpg, tmp_path / "a.jpg")
    items = list(iter_sources(tmp_path))
    assert [i.frame for i in items] == [None] + list(range(7))
    assert count_sources(tmp_path) == 8


def test_unreadable_video_gives_error_item(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    path.write_text("not a video")
    items = list(iter_sources(path))
    assert len(items) == 1 and items[0].image is None and "broken.mp4" in (items[0].error or "")
    assert count_sources(path) is None
