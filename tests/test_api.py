"""End to end through the public API on real coco128 images with the tiny config."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ovdet import Detections, Detector
from ovdet.data.images import ImageReadError
from tests.helpers import (
    NAMES,
    TINY,
    assert_close_scaled,
    assert_same_detections,
    assert_same_set,
    clear_thresholds,
    make_detector,
    nms_ambiguities,
)


class CountingEncoder:
    """Wraps a text encoder and records every text it is asked to encode."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []
        self.id, self.dim, self.context_length = inner.id, inner.dim, inner.context_length

    def encode(self, texts, templates=None):
        self.calls.append(list(texts))
        return self.inner.encode(texts, templates)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture()
def det(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Detector:
    monkeypatch.setenv("OVDET_HOME", str(tmp_path / "home"))
    d = make_detector()
    d.set_classes(NAMES)
    return d


def test_predict_contract_on_real_image(det: Detector, coco128_images: list[Path]) -> None:
    """The invariants are asserted on what post-processing produces, before ``Detections``
    (which sorts, validates and type-converts on construction) could hide a violation."""
    from ovdet.config import NMSConfig
    from ovdet.data.letterbox import letterbox, to_tensor, unletterbox_boxes

    path = coco128_images[0]
    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    arr, info = letterbox(img, 640, stride=32)
    with torch.no_grad():
        raw = det.model(to_tensor([arr]), det.class_embeddings)
    out = det.model.postprocess(raw, NMSConfig(conf=0.05, iou=0.7, max_det=100))[0]
    n = len(out.scores)
    assert 0 < n <= 100
    assert out.boxes.dtype == torch.float32 and out.boxes.shape == (n, 4)
    assert out.scores.dtype == torch.float32 and out.labels.dtype == torch.int64
    assert bool((out.scores[:-1] >= out.scores[1:]).all()), "NMS output must come sorted by score"
    assert bool((out.scores > 0.05).all() & (out.scores <= 1).all())
    assert int(out.labels.min()) >= 0 and int(out.labels.max()) < len(NAMES)
    assert bool((out.boxes[:, 2:] >= out.boxes[:, :2]).all())
    unboxed = unletterbox_boxes(out.boxes, info)
    assert bool((unboxed[:, [0, 2]] >= 0).all() and (unboxed[:, [0, 2]] <= w).all())
    assert bool((unboxed[:, [1, 3]] >= 0).all() and (unboxed[:, [1, 3]] <= h).all())

    # the network as it is: bit-equal (the folded fast path is compared in test_fast_paths.py)
    d = det.predict(str(path), conf=0.05, iou=0.7, imgsz=640, max_det=100, optimize=False)[0]
    assert isinstance(d, Detections) and d.image_size == (h, w) and d.names == NAMES and d.path == str(path)
    assert torch.equal(d.scores, out.scores) and torch.equal(d.labels, out.labels) and torch.equal(d.boxes, unboxed)
    plotted = d.plot()
    assert plotted.shape == (h, w, 3) and plotted.dtype == np.uint8 and not np.array_equal(plotted, img)
    coco = d.to_coco(image_id=9)
    assert len(coco) == n and coco[0]["image_id"] == 9


def manual_predict(det: Detector, img: np.ndarray, conf: float, iou: float, imgsz: int):
    """letterbox → forward → NMS → inverse letterbox, by hand: (boxes, scores, labels)."""
    from ovdet.config import NMSConfig
    from ovdet.data.letterbox import letterbox, to_tensor, unletterbox_boxes

    arr, info = letterbox(img, imgsz, stride=32)
    with torch.no_grad():
        raw = det.model(to_tensor([arr]), det.class_embeddings)
    boxes, scores, labels = det.model.postprocess(raw, NMSConfig(conf=conf, iou=iou))[0]
    return unletterbox_boxes(boxes, info), scores, labels


def test_predict_equals_manual_pipeline(det: Detector, coco128_images: list[Path]) -> None:
    img = cv2.imread(str(coco128_images[3]))
    boxes, scores, labels = manual_predict(det, img, 0.05, 0.6, 320)
    d = det.predict(img, conf=0.05, iou=0.6, imgsz=320, optimize=False)[0]
    assert len(d) > 0 and torch.equal(d.labels, labels) and torch.equal(d.scores, scores)
    assert torch.equal(d.boxes, boxes)


@pytest.mark.parametrize("hw", [(200, 249), (427, 640), (7, 10), (300, 1), (1, 300), (33, 1000)])
def test_odd_sizes_give_boxes_inside_the_image(det: Detector, coco128_images: list[Path], hw) -> None:
    """Odd, tiny and extreme aspect ratios: detections exist, equal the manual pipeline, and the
    letterbox inverse (before any clamping) maps the network's boxes back near the image."""
    from ovdet.data.letterbox import letterbox

    img = cv2.resize(cv2.imread(str(coco128_images[5])), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    d = det.predict(img, conf=0.01, imgsz=320, optimize=False)[0]
    assert d.image_size == hw
    boxes, scores, labels = manual_predict(det, img, 0.01, 0.7, 320)
    assert len(d) > 0 and torch.equal(d.scores, scores) and torch.equal(d.labels, labels)
    assert torch.equal(d.boxes, boxes)
    _, info = letterbox(img, 320, stride=32)
    assert info.orig_shape == hw and info.shape[0] % 32 == 0 and info.shape[1] % 32 == 0
    assert info.resized_shape == (max(1, round(hw[0] * info.ratio)), max(1, round(hw[1] * info.ratio)))


def test_batched_equals_one_by_one(det: Detector, coco128_images: list[Path]) -> None:
    """A batch computes each image's raw logits as a batch of one would (atol 1e-5), and predict
    with batch=4 over mixed shapes returns each image's own detections, in order."""
    from ovdet.data.letterbox import letterbox, to_tensor

    same_shape = [cv2.imread(str(coco128_images[i])) for i in (0, 5, 7, 17)]  # all letterbox to 256×320
    x = to_tensor([letterbox(im, 320, stride=32)[0] for im in same_shape])
    assert x.shape == (4, 3, 256, 320)
    with torch.no_grad():
        together = det.model(x, det.class_embeddings)
        alone = [det.model(x[i : i + 1], det.class_embeddings) for i in range(4)]
    assert_close_scaled(together.box_logits, torch.cat([a.box_logits for a in alone]))  # 1e-5 of the max
    assert_close_scaled(together.cls_logits, torch.cat([a.cls_logits for a in alone]))

    # Six images, landscape and portrait (predict splits a batch by shape), on which no NMS decision
    # is a near-tie: exactly tied overlapping boxes (saturated regions) survive NMS in arbitrary order.
    conf, iou, paths = 0.3, 0.6, []
    for p in coco128_images[:16]:
        with torch.no_grad():
            raw = det.model(to_tensor([letterbox(cv2.imread(str(p)), 320, stride=32)[0]]), det.class_embeddings)
        boxes, scores = det.model.decode(raw)
        if not nms_ambiguities(boxes[0], scores[0], conf, iou, ties=True):
            paths.append(str(p))
    paths = paths[:6]
    assert len(paths) == 6
    batched = det.predict(paths, conf=conf, iou=iou, batch=4, imgsz=320)
    single = [det.predict(p, conf=conf, iou=iou, imgsz=320)[0] for p in paths]
    assert [b.path for b in batched] == paths
    assert sum(len(b) for b in batched) > 0
    for b, s in zip(batched, single):
        assert_same_detections(b, s, box_tol=1e-2, score_tol=1e-5)  # DFL × stride 32 × 2 amplifies 1e-5


def test_vocabulary_changes_results_and_labels_stay_in_range(det: Detector, coco128_images: list[Path]) -> None:
    img = str(coco128_images[1])
    a = det.predict(img, conf=0.05, imgsz=320)[0]
    det.set_classes(["zebra", "kite"])
    b = det.predict(img, conf=0.05, imgsz=320)[0]
    assert b.names == ["zebra", "kite"] and (len(b) == 0 or int(b.labels.max()) < 2)
    assert not (len(a) == len(b) and torch.allclose(a.scores, b.scores))
    det.set_classes(NAMES)
    c = det.predict(img, conf=0.05, imgsz=320)[0]
    assert torch.equal(a.labels, c.labels) and torch.allclose(a.scores, c.scores)


def test_set_classes_copies_input(det: Detector) -> None:
    names = ["cat", "dog"]
    det.set_classes(names)
    names.append("bird")
    assert det.names == ["cat", "dog"] and det.class_embeddings.shape == (2, 32)


def test_embedding_cache_reuse_and_no_stale_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVDET_HOME", str(tmp_path))
    det = make_detector()
    enc = CountingEncoder(det.text_encoder)
    det._encoder = enc
    det.set_classes(["cat", "dog"])
    assert enc.calls == [["cat", "dog"]]
    first = det.class_embeddings
    det.set_classes(["dog", "cat"])
    assert len(enc.calls) == 1  # all known: no encoder call
    assert torch.equal(det.class_embeddings, first.flip(0))
    det.set_classes(["dog", "horse"])
    assert enc.calls[-1] == ["horse"]  # only the new name is encoded
    # a fresh detector reads the on-disk cache: no encoder call at all
    det2 = make_detector()
    enc2 = CountingEncoder(det2.text_encoder)
    det2._encoder = enc2
    det2.set_classes(["cat", "horse"])
    assert enc2.calls == []
    # another text encoder (different seed) must not reuse those entries
    det3 = Detector.from_config(TINY, device="cpu", overrides=["text.seed=1"])
    enc3 = CountingEncoder(det3.text_encoder)
    det3._encoder = enc3
    det3.set_classes(["cat", "horse"])
    assert enc3.calls == [["cat", "horse"]]
    assert not torch.allclose(det3.class_embeddings, det2.class_embeddings)
    # another template must not reuse them either
    det4 = Detector.from_config(TINY, device="cpu", overrides=["text.templates=['a photo of a {}']"])
    enc4 = CountingEncoder(det4.text_encoder)
    det4._encoder = enc4
    det4.set_classes(["cat", "horse"])
    assert enc4.calls == [["cat", "horse"]]


def test_set_class_embeddings_matches_set_classes(det: Detector, coco128_images: list[Path]) -> None:
    emb = det.class_embeddings
    other = make_detector()
    other.set_class_embeddings(NAMES, emb * 3.0)  # rows are renormalised
    img = str(coco128_images[2])
    a, b = det.predict(img, conf=0.05, imgsz=320)[0], other.predict(img, conf=0.05, imgsz=320)[0]
    assert_same_detections(a, b)
    with pytest.raises(ValueError, match=r"\(5, 32\)"):
        other.set_class_embeddings(NAMES, emb[:, :16])
    with pytest.raises(ValueError, match="NaN"):
        other.set_class_embeddings(NAMES, emb * float("nan"))


def test_fused_equals_unfused(det: Detector, coco128_images: list[Path]) -> None:
    """Fusing changes float rounding only: decoded outputs agree to float noise, and NMS keeps
    the same detections at thresholds with no near-tie (tied twins accepted)."""
    from ovdet.config import NMSConfig
    from ovdet.data.letterbox import letterbox, to_tensor

    unfused = copy.deepcopy(det.model)
    det.fuse()
    for path in coco128_images[:3]:
        x = to_tensor([letterbox(cv2.imread(str(path)), 320)[0]])  # (1, 3, H, W) as predict sees it
        with torch.no_grad():
            raw_ref, raw = unfused(x, det.class_embeddings), det.model(x, det.class_embeddings)
        (boxes_ref, scores_ref), (boxes, scores) = unfused.decode(raw_ref), det.model.decode(raw)
        assert_close_scaled(scores, scores_ref, 1e-4)
        assert float((boxes - boxes_ref).abs().max()) < 0.05  # px, boxes up to 320
        conf, iou = clear_thresholds(boxes_ref, scores_ref, confs=(0.05, 0.1, 0.15, 0.2, 0.25))
        nms = NMSConfig(conf=conf, iou=iou)
        a, b = det.model.postprocess(raw, nms)[0], unfused.postprocess(raw_ref, nms)[0]
        ref = torch.cat([b.boxes, b.scores[:, None], b.labels[:, None].float()], 1)  # (N, 6)
        assert len(a.scores) > 0
        assert_same_set(
            a.boxes, a.scores, a.labels, ref, candidates=(boxes_ref[0], scores_ref[0]), box_tol=0.05, score_tol=1e-4
        )


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("version", [1, 2])
def test_save_load_round_trip(
    tmp_path: Path, coco128_images: list[Path], monkeypatch: pytest.MonkeyPatch, version: int, fused: bool
) -> None:
    monkeypatch.setenv("OVDET_HOME", str(tmp_path / "home"))
    det = make_detector(version)
    det.set_classes(NAMES)
    if fused:
        det.fuse()
    img = str(coco128_images[4])
    ref = det.predict(img, conf=0.05, imgsz=320)[0]
    out_dir = det.save(tmp_path / "ckpt")
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "class_embeddings.safetensors",
        "config.json",
        "model.safetensors",
    ]
    loaded = Detector.load(out_dir, device="cpu")
    assert loaded.names == NAMES and loaded.model.is_fused == fused
    state = loaded.model.state_dict()
    assert all(t.device.type == "cpu" for t in state.values())  # nothing left on the meta device
    assert all(torch.equal(t, det.model.state_dict()[k]) for k, t in state.items())
    got = loaded.predict(img, conf=0.05, imgsz=320)[0]
    assert torch.equal(got.boxes, ref.boxes) and torch.equal(got.scores, ref.scores)
    assert torch.equal(got.labels, ref.labels)


def test_load_rejects_bad_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        Detector.load(tmp_path)
    det = make_detector()
    det.save(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="model.safetensors"):
        Detector.load(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        Detector.load(tmp_path / "c")


# ---------------------------------------------------------------------------------- bad input
def test_bad_class_lists(det: Detector) -> None:
    with pytest.raises(ValueError, match="no class names"):
        det.set_classes([])
    with pytest.raises(ValueError, match="dup"):
        det.set_classes(["cat", "dog", "cat"])
    assert det.names == NAMES  # a rejected vocabulary leaves the old one in place


def test_long_and_non_ascii_names(det: Detector, coco128_images: list[Path]) -> None:
    long_name = " ".join(["very"] * 100) + " long name"
    with pytest.warns(UserWarning, match="trunc"):
        det.set_classes(["café", "自転車", "🚲 bicycle", long_name])
    emb = det.class_embeddings
    assert emb.shape == (4, 32) and bool(torch.isfinite(emb).all())
    assert len({tuple(r.tolist()) for r in emb}) == 4
    d = det.predict(str(coco128_images[0]), conf=0.05, imgsz=320)[0]
    assert d.names[1] == "自転車"


def test_predict_without_vocabulary_is_an_error() -> None:
    det = make_detector()
    with pytest.raises(RuntimeError, match="set_classes"):
        det.predict(np.zeros((64, 64, 3), np.uint8))


def test_unreadable_files_are_skipped_and_counted(det: Detector, coco128_images: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in coco128_images[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(coco128_images[3].read_bytes()[:4000])
    (folder / "notes.png").write_text("this is not an image")
    run = det.predict(str(folder), conf=0.05, imgsz=320, stream=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stream reports skipped items once, in run.skipped, not as warnings
        results = list(run)
    assert len(results) == 3 and run.seen == 3
    assert sorted(Path(s).name for s, _ in run.skipped) == ["notes.png", "truncated.jpg", "zero.jpg"]
    assert all(Path(s).name in r for s, r in run.skipped)  # each reason names its file
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable source\(s\)") as caught:
        assert len(det.predict(str(folder), conf=0.05, imgsz=320)) == 3  # the list API warns once
    assert len(caught) == 1 and all(n in str(caught[0].message) for n in ("zero.jpg", "truncated.jpg", "notes.png"))
    with pytest.raises(ImageReadError, match="zero.jpg"):
        det.predict(str(folder / "zero.jpg"))


def test_gray_rgba_16bit_and_exif_images(det: Detector, coco128_images: list[Path], tmp_path: Path) -> None:
    from PIL import Image

    bgr = cv2.imread(str(coco128_images[6]))
    ref = det.predict(bgr, conf=0.05, imgsz=320)[0]
    # RGBA PNG and 16-bit PNG decode to the same pixels → the same detections
    rgba = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257)
    for name in ("rgba.png", "deep.png"):
        d = det.predict(str(tmp_path / name), conf=0.05, imgsz=320)[0]
        assert torch.equal(d.labels, ref.labels) and torch.allclose(d.scores, ref.scores), name
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    d = det.predict(str(tmp_path / "gray.png"), conf=0.05, imgsz=320)[0]
    assert d.image_size == gray.shape
    g3 = det.predict(np.repeat(gray[..., None], 3, 2), conf=0.05, imgsz=320)[0]
    assert torch.equal(d.labels, g3.labels) and torch.allclose(d.scores, g3.scores)
    # EXIF orientation 6 (rotate 90° clockwise to display): boxes live in the displayed frame
    img = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.png", exif=exif.tobytes())
    d = det.predict(str(tmp_path / "rot.png"), conf=0.05, imgsz=320)[0]
    assert d.image_size == (bgr.shape[1], bgr.shape[0])
    rotated = det.predict(np.ascontiguousarray(np.rot90(bgr, -1)), conf=0.05, imgsz=320)[0]
    assert torch.equal(d.labels, rotated.labels) and torch.allclose(d.scores, rotated.scores)


def test_cli_predict_writes_outputs_and_summary(
    det: Detector, coco128_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ovdet.cli import main

    ckpt = det.save(tmp_path / "ckpt")
    folder = tmp_path / "src"
    folder.mkdir()
    for p in coco128_images[:4]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--model",
            str(ckpt),
            "--classes",
            "person,bus,dog",
            "--source",
            str(folder),
            "--save-dir",
            str(out),
            "--conf",
            "0.05",
            "--imgsz",
            "320",
            "--quiet",
        ]
    )
    assert code == 0
    report = json.loads((out / "predictions.json").read_text())
    assert report["names"] == ["person", "bus", "dog"] and len(report["images"]) == 4
    assert [Path(s["source"]).name for s in report["skipped"]] == ["broken.jpg"]
    for rec in report["images"]:
        assert (out / rec["annotated"]).is_file()
        assert cv2.imread(str(out / rec["annotated"])).shape[:2] == tuple(rec["image_size"])
    total = sum(len(r["detections"]) for r in report["images"])
    text = capsys.readouterr().out
    assert f"4 images, {total} detections, 1 skipped" in text and "images/s" in text
    assert main(["predict", "--model", str(tmp_path / "missing.yaml"), "--classes", "a", "--source", str(folder)]) == 2


def test_cli_embed_then_predict_without_text_encoder(det: Detector, coco128_images: list[Path], tmp_path: Path) -> None:
    from ovdet.cli import main
    from ovdet.text import load_embeddings

    classes = tmp_path / "classes.txt"
    classes.write_text("person\n# a comment\nbus\n\ndog\n")
    emb_file = tmp_path / "emb.safetensors"
    assert main(["embed", "--classes", str(classes), "-o", str(emb_file), "--model", str(TINY)]) == 0
    names, emb, meta = load_embeddings(emb_file)
    assert names == ["person", "bus", "dog"] and emb.shape == (3, 32)
    det.set_classes(names)
    assert torch.allclose(emb, det.class_embeddings, atol=1e-6)  # same encoder, same vectors
    ckpt = det.save(tmp_path / "ckpt")
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--model",
                str(ckpt),
                "--embeddings",
                str(emb_file),
                "--classes",
                "dog,person",
                "--source",
                str(coco128_images[0]),
                "--save-dir",
                str(out),
                "--conf",
                "0.05",
                "--imgsz",
                "320",
                "--quiet",
                "--no-save-images",
            ]
        )
        == 0
    )
    report = json.loads((out / "predictions.json").read_text())
    assert report["names"] == ["dog", "person"] and len(report["images"]) == 1


def test_predict_streams_a_video(det: Detector, coco128_images: list[Path], tmp_path: Path) -> None:
    from ovdet.cli import main

    frames = [cv2.resize(cv2.imread(str(p)), (160, 128)) for p in coco128_images[:5]]
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (160, 128))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for f in frames:
        writer.write(f)
    writer.release()
    run = det.predict(str(path), conf=0.05, imgsz=160, stream=True, keep_images=False)
    results = list(run)
    assert [r.path for r in results] == [f"{path}:frame{i}" for i in range(5)]
    assert all(r.image_size == (128, 160) for r in results) and run.skipped == []
    ckpt = det.save(tmp_path / "ckpt")
    out = tmp_path / "out"
    args = ["predict", "--model", str(ckpt), "--classes", "person", "--source", str(path), "--imgsz", "160", "--quiet"]
    assert main([*args, "--save-dir", str(out)]) == 0
    # An annotated video with the source's size, frame rate and frame count; no frame images by default.
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "predictions.json"]
    video = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 5 and video.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    ok, first = video.read()
    video.release()
    assert ok and first.shape == (128, 160, 3)
    records = json.loads((out / "predictions.json").read_text())["images"]
    assert [r["frame"] for r in records] == list(range(5)) and all(r["annotated"] == "clip.mp4" for r in records)
    # Frame images on request, zero-padded so they sort in frame order.
    assert main([*args, "--save-dir", str(tmp_path / "frames"), "--save-frames", "--video-stride", "2"]) == 0
    names = sorted(p.name for p in (tmp_path / "frames").glob("*.jpg"))
    assert names == ["clip_frame000000.jpg", "clip_frame000002.jpg", "clip_frame000004.jpg"]


@pytest.mark.parametrize(
    "tool,command",
    [
        ("predict", "predict"),
        ("embed", "embed"),
        ("convert", "convert"),
        ("val", "val"),
        ("check_data", "check-data"),
        ("export", "export"),
    ],
)
def test_tools_are_thin_wrappers(tool: str, command: str) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "tools" / f"{tool}.py"
    assert len(script.read_text().splitlines()) < 100
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"ovdet {command}" in out.stdout
