"""What a new user hit on a fresh machine (issue #9): bombs, corrupt videos, tracebacks, offline
text encoders, late validation, help texts, video outputs, lost vocabularies.

Command-line cases run ``ovdet`` as a subprocess, as a user would, and check the exit code and
that stderr holds one ``error:`` line and never a traceback.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ovdet.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    declared_size,
    decode_image,
    iter_sources,
    probe_image_size,
)
from tests.helpers import TINY, make_detector

# ------------------------------------------------------------------------------------------------ helpers


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m ovdet ARGS`` in a fresh interpreter (the user's view: exit code, stdout, stderr)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ovdet", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )


def assert_clean_failure(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """Exit ``code``; stderr's last line is one ``error:`` line naming the problem; no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in last, (needle, last)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A ~100-byte PNG whose header declares ``width × height`` gray pixels (data: one row)."""
    row = zlib.compress(b"\x00" * (width + 1), 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", row) + png_chunk(b"IEND", b"")
    )
    return path


def bomb_jpeg(source: Path, path: Path, width: int = 40000, height: int = 40000) -> Path:
    """A real JPEG whose frame header (SOF) is patched to declare ``width × height``."""
    data = bytearray(source.read_bytes())
    i = 2
    while True:
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 7] = height.to_bytes(2, "big")
            data[i + 7 : i + 9] = width.to_bytes(2, "big")
            break
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    path.write_bytes(bytes(data))
    return path


def write_video(path: Path, images: list[Path], fps: float = 10.0, size: tuple[int, int] = (320, 240)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened(), "this OpenCV build cannot write mp4v"
    for p in images:
        writer.write(cv2.resize(cv2.imread(str(p)), size))
    writer.release()
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The calibrated tiny detector saved as an ovdet checkpoint (loads in a subprocess in < 1 s)."""
    return make_detector().save(tmp_path_factory.mktemp("ckpt") / "tiny")


# ------------------------------------------------------------------------------------- 1. decompression bombs


def test_bomb_png_is_refused_from_its_header(tmp_path: Path) -> None:
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 1000
    assert declared_size(path.read_bytes()) == (30000, 30000)
    with pytest.raises(
        ImageReadError, match=r"bomb\.png: declares 30000x30000 = 900,000,000 pixels, over the limit of 89,478,485"
    ):
        decode_image(path)
    with pytest.raises(ImageReadError, match="over the limit"):
        probe_image_size(path)
    # the limit is configurable: argument, environment (0 = none is not tried: it would decode 900 MB)
    small = bomb_png(tmp_path / "small.png", 100, 50)
    with pytest.raises(ImageReadError, match="5,000 pixels, over the limit of 4,999"):
        decode_image(small, max_pixels=4999)
    assert declared_size(small.read_bytes()) == (100, 50)


def test_bomb_jpeg_header_and_environment_limit(
    tmp_path: Path, coco128_images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = bomb_jpeg(coco128_images[0], tmp_path / "bomb.jpg")
    assert declared_size(path.read_bytes()) == (40000, 40000)
    with pytest.raises(ImageReadError, match="1,600,000,000 pixels"):
        decode_image(path)
    real = coco128_images[0]  # 640x480 = 307,200 pixels
    assert declared_size(real.read_bytes()) == (640, 480)
    monkeypatch.setenv("OVDET_MAX_PIXELS", "300000")
    with pytest.raises(ImageReadError, match="over the limit of 300,000"):
        decode_image(real)
    monkeypatch.setenv("OVDET_MAX_PIXELS", "0")  # no limit
    assert decode_image(real).shape == (480, 640, 3)
    monkeypatch.setenv("OVDET_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="OVDET_MAX_PIXELS='lots' is not an integer"):
        decode_image(real)


def test_cli_predict_skips_a_bomb_and_keeps_going(tmp_path: Path, coco128_images: list[Path], tiny_ckpt: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for p in coco128_images[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    bomb_png(src / "bomb.png")
    out = tmp_path / "out"
    result = run_cli(
        "predict",
        "--model",
        str(tiny_ckpt),
        "--classes",
        "person",
        "--source",
        str(src),
        "--save-dir",
        str(out),
        "--imgsz",
        "256",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "2 images" in result.stdout and "1 skipped" in result.stdout
    assert result.stdout.count("bomb.png") == 1 and "decompression bomb" in result.stdout  # reported once
    assert "Warning" not in result.stderr and "Traceback" not in result.stderr
    assert not (out / "bomb.jpg").exists() and len(list(out.glob("*.jpg"))) == 2
    skipped = json.loads((out / "predictions.json").read_text())["skipped"]
    assert [Path(s["source"]).name for s in skipped] == ["bomb.png"]
    # a lower limit from the command line skips the real images too
    result = run_cli(
        "predict",
        "--model",
        str(tiny_ckpt),
        "--classes",
        "person",
        "--source",
        str(src),
        "--save-dir",
        str(tmp_path / "out2"),
        "--max-pixels",
        "1000",
        "--quiet",
    )
    assert_clean_failure(result, 1, "no image could be read")


def test_readers_report_bombs_as_problems(tmp_path: Path, coco128_images: list[Path]) -> None:
    from ovdet.data.readers import read_yolo

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    (images / "ok.jpg").write_bytes(coco128_images[0].read_bytes())
    bomb_png(images / "bomb.png")
    (labels / "bomb.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\ntrain: images\nnames: ['person']\n")
    ds = read_yolo(tmp_path / "data.yaml")
    assert [r.path.name for r in ds.records] == ["ok.jpg"]
    assert any("bomb.png" in str(f) and "30000x30000" in why for f, why in ds.report.problems)
    assert DEFAULT_MAX_PIXELS == 89_478_485


# ------------------------------------------------------------------------------------- 2. corrupt videos


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory, coco128_images: list[Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    good = write_video(root / "clip.mp4", coco128_images[:20])
    data = bytearray(good.read_bytes())
    n = len(data)
    noise = np.random.default_rng(0).integers(0, 256, n // 3, dtype=np.uint8).tobytes()
    data[n // 3 : n // 3 + len(noise)] = noise  # the middle third garbled; the container index is intact
    garbled = root / "garbled.mp4"
    garbled.write_bytes(bytes(data))
    junk = root / "junk.mp4"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return {"good": good, "garbled": garbled, "junk": junk}


def test_video_ending_early_is_reported_with_frame_counts(videos: dict[str, Path]) -> None:
    items = list(iter_sources(str(videos["garbled"])))
    frames = [it for it in items if it.error is None]
    assert 0 < len(frames) < 20
    last = items[-1]
    assert last.image is None and f"ended after {len(frames)} of 20 declared frames" in last.error
    good = list(iter_sources(str(videos["good"])))
    assert len(good) == 20 and all(it.error is None for it in good) and good[0].fps == pytest.approx(10.0)


def test_cli_corrupt_video_counts_and_silences_native_noise(
    videos: dict[str, Path], tiny_ckpt: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "predict",
        "--model",
        str(tiny_ckpt),
        "--classes",
        "person",
        "--source",
        str(videos["garbled"]),
        "--save-dir",
        str(tmp_path / "out"),
        "--imgsz",
        "256",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "1 skipped" in result.stdout and "of 20 declared frames" in result.stdout
    assert "[mpeg4" not in result.stderr and "header damaged" not in result.stderr  # ffmpeg's noise stays off
    debug = run_cli(
        "--debug",
        "predict",
        "--model",
        str(tiny_ckpt),
        "--classes",
        "person",
        "--source",
        str(videos["garbled"]),
        "--save-dir",
        str(tmp_path / "dbg"),
        "--imgsz",
        "256",
        "--quiet",
    )
    assert "damaged" in debug.stdout + debug.stderr  # with --debug the decoders' messages are shown
    # A video with no readable frame is an error, not an empty success.
    result = run_cli(
        "predict",
        "--model",
        str(tiny_ckpt),
        "--classes",
        "person",
        "--source",
        str(videos["junk"]),
        "--save-dir",
        str(tmp_path / "junk"),
        "--quiet",
    )
    assert_clean_failure(result, 1, "no image could be read")
    assert "junk.mp4" in result.stderr and not (tmp_path / "junk").exists()


# ------------------------------------------------------------------------------------- 3. clean errors


def test_long_inline_classes_are_names_not_paths(tiny_ckpt: Path, coco128_images: list[Path], tmp_path: Path) -> None:
    classes = ",".join(f"a rather long class name number {i}" for i in range(16))  # > 500 characters
    assert len(classes) > 500
    result = run_cli(
        "predict",
        "--model",
        str(tiny_ckpt),
        "--classes",
        classes,
        "--source",
        str(coco128_images[0]),
        "--save-dir",
        str(tmp_path / "out"),
        "--imgsz",
        "256",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["names"][15].endswith("number 15")


def test_cli_failures_are_one_error_line_with_consistent_codes(
    tiny_ckpt: Path, coco128_images: list[Path], tmp_path: Path
) -> None:
    image = str(coco128_images[0])
    base = ["predict", "--model", str(tiny_ckpt), "--classes", "person", "--save-dir", str(tmp_path / "never")]
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a torch checkpoint" * 10)
    assert_clean_failure(
        run_cli("convert", str(corrupt), str(tmp_path / "c"), "--trust"),
        1,
        "corrupt.pt: not a readable PyTorch checkpoint",
    )
    assert_clean_failure(run_cli("convert", str(corrupt), str(tmp_path / "c")), 2, "--trust")
    assert_clean_failure(
        run_cli(*base, "--source", image, "--device", "gpu"), 2, "unknown device 'gpu'", "'auto', 'cpu', 'cuda'"
    )
    assert_clean_failure(run_cli(*base, "--source", image, "--conf", "1.5"), 2, "conf must be in [0, 1]")
    assert_clean_failure(run_cli(*base, "--source", image, "--imgsz", "300"), 2, "multiple of 32")
    assert_clean_failure(run_cli(*base, "--source", str(tmp_path / "nowhere")), 2, "source not found")
    assert_clean_failure(run_cli(*base, "--source", image, "--classes", "missing.txt"), 2, "class file not found")
    assert_clean_failure(
        run_cli("predict", "--model", "yolo-world-v2s", "--classes", "a", "--source", image),
        2,
        "did you mean the pretrained model 'yolo-world-v2-s'",
    )
    assert_clean_failure(run_cli("check-data", str(tmp_path / "nothing.yaml")), 2, "not found")
    assert not (tmp_path / "never").exists()  # no output folder for a command that did not run
    usage = run_cli("predict", "--model")  # argparse's own usage error
    assert usage.returncode == 2 and "Traceback" not in usage.stderr and "error:" in usage.stderr
    debug = run_cli("--debug", "convert", str(corrupt), str(tmp_path / "c"), "--trust")
    assert debug.returncode == 1 and "Traceback" in debug.stderr  # --debug shows it


def test_validation_happens_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coco128_images: list[Path]
) -> None:
    import ovdet.api
    import ovdet.cli as cli

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not be loaded for a command line that cannot work")

    monkeypatch.setattr(ovdet.api, "load_detector", no_load)
    save = tmp_path / "out"
    for bad in (
        ["--source", str(tmp_path / "missing.jpg")],
        ["--source", str(coco128_images[0]), "--batch", "0"],
        ["--source", str(coco128_images[0]), "--video-stride", "0"],
        ["--source", str(coco128_images[0]), "--embeddings", str(tmp_path / "none.safetensors")],
        ["--source", str(coco128_images[0]), "--precision", "fp16", "--device", "cpu"],
    ):
        assert cli.main(["predict", "--model", str(TINY), "--classes", "a", "--save-dir", str(save), *bad]) == 2
    assert not save.exists()


# ------------------------------------------------------------------------------------- 4. QuickGELU trap


@pytest.fixture(scope="module")
def openai_like_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT-B-32 text tower's random weights saved where OpenAI weights live in the HF cache."""
    from safetensors.torch import save_file

    from ovdet.config import TextConfig
    from ovdet.text import build_text_encoder

    enc = build_text_encoder(TextConfig(model="ViT-B-32", pretrained=None, seed=3))
    folder = tmp_path_factory.mktemp("hf") / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "x"
    folder.mkdir(parents=True)
    path = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in enc._tower.state_dict().items()}, str(path))
    return path


def test_openai_weights_under_a_gelu_name_run_with_quickgelu(openai_like_weights: Path) -> None:
    from ovdet.config import TextConfig
    from ovdet.text import build_text_encoder, text_encoder_id

    names = ["person", "red backpack"]
    with pytest.warns(UserWarning, match="OpenAI CLIP weights, trained with QuickGELU.*ViT-B-32-quickgelu"):
        plain = build_text_encoder(TextConfig(model="ViT-B-32", pretrained=str(openai_like_weights)))
    quick = build_text_encoder(TextConfig(model="ViT-B-32-quickgelu", pretrained=str(openai_like_weights)))
    torch.testing.assert_close(plain.encode(names), quick.encode(names))  # the activation the weights need
    assert plain.id.endswith(":quickgelu") and plain.id == text_encoder_id(
        TextConfig(model="ViT-B-32", pretrained=str(openai_like_weights))
    )
    # The same weights under another path are not recognised: GELU, as named (and a different id).
    other = openai_like_weights.parent.parent.parent.parent / "renamed.safetensors"
    other.write_bytes(openai_like_weights.read_bytes())
    gelu = build_text_encoder(TextConfig(model="ViT-B-32", pretrained=str(other)))
    assert not gelu.id.endswith(":quickgelu")
    assert (gelu.encode(names) - quick.encode(names)).abs().max() > 1e-3


def test_offline_advice_names_existing_flags() -> None:
    from ovdet.cli import build_parser
    from ovdet.text.openclip import _offline_message

    message = _offline_message("ViT-B-32", "openai", {"hf_hub": "timm/x/", "quick_gelu": True}, "offline")
    assert "--text-weights" in message and "--text-model ViT-B-32-quickgelu" in message
    parser = build_parser()
    for command in ("predict", "val", "embed"):
        sub = parser._subparsers._group_actions[0].choices[command]
        options = {o for a in sub._actions for o in a.option_strings}
        assert {"--text-weights", "--text-model"} <= options, command


# ------------------------------------------------------------------------------------- 6. help


def test_every_option_has_help_with_its_default() -> None:
    from ovdet.cli import build_parser

    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        text = " ".join(sub.format_help().split())  # help lines wrap
        for action in sub._actions:
            if not action.option_strings or action.help == "==SUPPRESS==":
                continue
            assert action.help, f"ovdet {name} {action.option_strings[0]} has no help"
            if action.default not in (None, False, "==SUPPRESS==") and action.required is False:
                assert f"(default: {action.default})" in text, f"ovdet {name} {action.option_strings[0]}"
    predict = parser._subparsers._group_actions[0].choices["predict"].format_help()
    for flag in ("--conf", "--iou", "--imgsz", "--batch", "--device", "--save-dir", "--video-stride"):
        assert flag in predict


# ------------------------------------------------------------------------------------- 8. vocabulary kept


def test_converted_world_checkpoint_keeps_its_classes(tmp_path: Path, coco128_images: list[Path]) -> None:
    from ultralytics.nn.tasks import WorldModel

    from ovdet import Detector
    from tests.helpers import save_like_ultralytics

    torch.manual_seed(0)
    model = WorldModel("yolov8n-worldv2.yaml", verbose=False).eval()
    fresh = save_like_ultralytics(model, tmp_path / "fresh.pt")  # placeholder text features: no vocabulary
    assert Detector.from_ultralytics(fresh, trust=True, device="cpu").names == []
    feats = torch.nn.functional.normalize(torch.randn(1, 3, 512, generator=torch.Generator().manual_seed(1)), dim=-1)
    model.txt_feats = feats  # what ultralytics' set_classes stores, with the names
    model.names = {0: "person", 1: "bus", 2: "red backpack"}
    pt = save_like_ultralytics(model, tmp_path / "world.pt")
    det = Detector.from_ultralytics(pt, trust=True, device="cpu")
    assert det.names == ["person", "bus", "red backpack"]
    torch.testing.assert_close(det.class_embeddings, feats[0].half().float(), atol=1e-3, rtol=0)
    out = tmp_path / "converted"
    result = run_cli("convert", str(pt), str(out), "--trust")
    assert result.returncode == 0 and "vocabulary kept from the checkpoint: 3 classes" in result.stdout
    result = run_cli(
        "predict",
        "--model",
        str(out),
        "--source",
        str(coco128_images[0]),
        "--save-dir",
        str(tmp_path / "pred"),
        "--imgsz",
        "256",
        "--conf",
        "0.0",
        "--max-det",
        "5",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr  # no --classes: the checkpoint's classes
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text())["names"] == [
        "person",
        "bus",
        "red backpack",
    ]


# ------------------------------------------------------------------------------------- 10. repository hygiene


def test_ci_script_uses_its_own_venv_and_the_readme_commands() -> None:
    root = Path(__file__).resolve().parents[1]
    ci = (root / ".ci" / "run").read_text()
    readme = (root / "README.md").read_text()
    assert "rm -rf .venv" not in ci and "mktemp" in ci
    blocks = readme.split("```bash\n")
    install = next(b.split("\n```")[0] for b in blocks if "pip install" in b and "ovdet predict" in b)
    test_cmd = next(b.split("\n```")[0] for b in blocks if "pytest" in b)
    assert test_cmd.split("&& ", 1)[1] in ci.splitlines(), "CI must run the README's test command verbatim"
    for step in install.split(" && "):
        if step.startswith("pip install"):
            assert f"python -m {step}".replace("pip install", "pip install -q", 1) in ci, step
    setup = (root / "setup.cfg").read_text()
    assert "opencv-python-headless" in setup and "opencv-python>=" not in setup
