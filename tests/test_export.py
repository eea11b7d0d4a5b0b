"""Export and deployment: folded vocabulary, ONNX (baked / dynamic, NMS in or out of the graph),
exported text encoders, ``OnnxDetector`` on onnxruntime, fp16, int8, the CLI.

Parity is asserted against PyTorch on real coco128 images. NMS-level comparisons run at
thresholds with no near-tie (:func:`tests.helpers.clear_thresholds`), so float reassociation
(onnxruntime vs PyTorch kernels) can never flip a decision.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ovdet import Detector
from ovdet.config import ConfigError, ExportConfig, NMSConfig
from ovdet.data.letterbox import letterbox, to_tensor
from ovdet.deploy import OnnxDetector, OnnxTextEncoder
from ovdet.deploy.postprocess import nms as nms_numpy
from ovdet.export.check import match_detections
from ovdet.export.onnx import SlicedAdaptiveMaxPool2d
from ovdet.inference.predict import Predictor
from ovdet.models.folded import fold_vocabulary
from tests.helpers import (
    MINILM,
    NAMES,
    assert_close_scaled,
    assert_same_predictions,
    clear_nms,
    clear_thresholds,
    decoded_outputs,
    make_detector,
    minilm_yolov8n,
    v2s_detector,
)

ROOT = Path(__file__).resolve().parents[1]
LVIS = (ROOT / "ovdet" / "text" / "vocab" / "lvis.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def images(coco128_images: list[Path]) -> list[np.ndarray]:
    """Six real coco128 photos (BGR), of several sizes."""
    return [cv2.imread(str(p)) for p in coco128_images[:6]]


def _predict_both(det: Detector, onnx: OnnxDetector, ims: list[np.ndarray], size: int = 320, **kw):
    """PyTorch's and the export's predictions of each image at its clear thresholds."""
    ref, got = [], []
    for im, nms in zip(ims, clear_nms(det, ims, size)):
        args = dict(conf=nms.conf, iou=nms.iou, imgsz=size, keep_images=False, **kw)
        ref += det.predict(im, **args)
        got += onnx.predict(im, **args)
    return ref, got


def _near(boxes: torch.Tensor, scores: torch.Tensor, conf: float, iou: float) -> bool:
    from tests.helpers import nms_ambiguities

    return bool(nms_ambiguities(boxes, scores, conf, iou))


# ----------------------------------------------------------------------------------- folding
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("k", [1, 7])
def test_folded_equals_unfolded(version: int, k: int, images: list[np.ndarray]) -> None:
    det = make_detector(version)
    text = torch.nn.functional.normalize(
        torch.randn(k, det.cfg.embed_dim, generator=torch.Generator().manual_seed(k)), dim=-1
    )
    before = {n: p.clone() for n, p in det.model.state_dict().items()}
    folded = fold_vocabulary(det.model, text)
    fused = copy.deepcopy(det.model).fuse()
    x = to_tensor([letterbox(im, 320, auto=False)[0] for im in images[:2]])
    with torch.no_grad():
        ref, out = fused(x, text), folded(x)
    assert out.cls_logits.shape == (2, k, ref.cls_logits.shape[2])
    assert_close_scaled(out.cls_logits, ref.cls_logits, 1e-5)
    assert_close_scaled(out.box_logits, ref.box_logits, 1e-5)
    # the source network is untouched (not fused, same weights)
    assert not det.model.is_fused
    assert all(torch.equal(before[n], p) for n, p in det.model.state_dict().items())
    if version == 2:  # v2 folds every text attention and merges the contrastive head into one conv
        assert sum(isinstance(m, torch.nn.Linear) for m in folded.modules()) == 0
    with pytest.raises(ValueError, match=r"\(K, 32\)"):
        fold_vocabulary(det.model, torch.randn(3, 16))


@pytest.mark.parametrize("size", [(80, 60), (40, 30), (13, 7), (3, 3), (2, 5)])
def test_sliced_adaptive_max_pool_equals_adaptive(size: tuple[int, int]) -> None:
    x = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(SlicedAdaptiveMaxPool2d(3)(x), torch.nn.AdaptiveMaxPool2d(3)(x))


def test_numpy_nms_equals_torchvision() -> None:
    import torchvision

    g = torch.Generator().manual_seed(3)
    xy = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 20 + torch.rand(300, 2, generator=g) * 60], 1).double()
    scores = torch.rand(300, generator=g).double()  # distinct: no ties
    labels = torch.randint(0, 4, (300,), generator=g)
    for thr in (0.3, 0.5, 0.7):
        ref = torchvision.ops.batched_nms(boxes, scores, labels, thr).numpy()
        got = nms_numpy(boxes.numpy(), scores.numpy(), thr, labels.numpy())
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(
            nms_numpy(boxes.numpy(), scores.numpy(), thr), torchvision.ops.nms(boxes, scores, thr)
        )


# ----------------------------------------------------------------------------------- baked / dynamic ONNX
@pytest.mark.parametrize("which", ["tiny", "v2-s"])
def test_baked_onnx_equals_pytorch(which: str, images: list[np.ndarray], tmp_path: Path) -> None:
    if which == "tiny":
        det = make_detector(2)
        det.set_classes(NAMES)
    else:
        det = v2s_detector()
    result = det.export(tmp_path / "m.onnx", imgsz=320)
    assert [n for n, _, _ in result.inputs] == ["images"]
    assert [(n, d) for n, d, _ in result.outputs] == [
        ("boxes", ["batch", "anchors", 4]),
        ("scores", ["batch", "anchors", "num_classes"]),
    ]
    onnx = OnnxDetector(result.path)
    assert onnx.names == det.names and not onnx.dynamic
    # raw decoded outputs on real images, several shapes (height and width are dynamic)
    for x, boxes, scores in decoded_outputs(det.model, images[:3], det.class_embeddings):
        b, s = onnx.session.run({"images": x.numpy()})
        np.testing.assert_allclose(s[0], scores.numpy(), rtol=0, atol=1e-4)
        assert np.abs(b[0] - boxes.numpy()).max() < 0.05  # px
    assert_same_predictions(*_predict_both(det, onnx, images[:4]))


@pytest.mark.parametrize("dynamic", [False, True])
def test_in_graph_nms_equals_pytorch(dynamic: bool, images: list[np.ndarray], tmp_path: Path) -> None:
    det = make_detector(2)
    det.set_classes(NAMES)
    ims = images[:4]
    per = clear_nms(det, ims)
    nms = NMSConfig(conf=max(n.conf for n in per), iou=per[0].iou)
    ims = [
        im
        for im, n in zip(ims, decoded_outputs(det.model, ims, det.class_embeddings))
        if not _near(n[1], n[2], nms.conf, nms.iou)
    ]
    assert len(ims) >= 2
    result = det.export(tmp_path / "m.onnx", dynamic_vocab=dynamic, nms=True, conf=nms.conf, iou=nms.iou, imgsz=320)
    assert [n for n, _, _ in result.outputs] == ["boxes", "scores", "labels", "batch_index"]
    onnx = OnnxDetector(result.path)
    kw = dict(conf=nms.conf, iou=nms.iou, imgsz=320, keep_images=False)
    ref = det.predict(ims, **kw)
    assert_same_predictions(ref, onnx.predict(ims, **kw))
    same = [letterbox(im, 320, auto=False)[0] for im in ims]  # one shape: one batch through the graph's NMS
    assert_same_predictions(det.predict(same, **kw), onnx.predict(same, batch=len(same), **kw))
    with pytest.raises(ValueError, match="conf may only be raised"):
        onnx.predict(images[0], conf=nms.conf / 2, iou=nms.iou)
    with pytest.raises(ValueError, match="cannot be honoured"):
        onnx.predict(images[0], conf=nms.conf, iou=0.3)


@pytest.fixture(scope="module")
def people(coco128_images: list[Path]) -> list[np.ndarray]:
    """Four coco128 photos with people, umbrellas and handbags in them (the demo finds them)."""
    chosen = ("000000000036.jpg", "000000000049.jpg", "000000000086.jpg", "000000000110.jpg")
    return [cv2.imread(str(p)) for p in coco128_images if p.name in chosen]


@pytest.fixture(scope="module")
def demo() -> Detector:
    """A real COCO detector (YOLOv8n in MiniLM text space: its encoder exports offline) with a
    5-class vocabulary."""
    return minilm_yolov8n().set_classes(["person", "bus", "dog", "car", "chair"])


@pytest.fixture(scope="module")
def demo_dynamic(demo: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.export(tmp_path_factory.mktemp("demo") / "demo.onnx", dynamic_vocab=True).path


def test_dynamic_vocab_export_files(demo_dynamic: Path) -> None:
    names = {p.name for p in demo_dynamic.parent.iterdir()}
    assert {"demo.onnx", "demo.text.onnx", "demo.text.tokenizer.json", "demo.vocab.safetensors"} <= names
    onnx = OnnxDetector(demo_dynamic)
    assert onnx.dynamic and onnx.names == ["person", "bus", "dog", "car", "chair"]  # the vocabulary at export


@pytest.mark.parametrize("k", [5, 100])
def test_dynamic_vocab_takes_unseen_vocabularies(
    k: int, demo: Detector, demo_dynamic: Path, people: list[np.ndarray]
) -> None:
    """Vocabularies the export never saw (LVIS names, the demo trained on COCO's 80), from the
    exported MiniLM and tokenizer, equal PyTorch after ``set_classes`` with them."""
    det = copy.copy(demo)  # shares the network; its own vocabulary
    vocab = ["person", "umbrella", "backpack", "traffic light", "handbag"] if k == 5 else LVIS[:k]
    onnx = OnnxDetector(demo_dynamic)
    onnx.set_classes(vocab)
    det.set_classes(vocab)
    np.testing.assert_allclose(onnx.class_embeddings, det.class_embeddings.numpy(), rtol=0, atol=1e-5)
    ref, got = _predict_both(det, onnx, people)
    assert_same_predictions(ref, got)


def test_v1_exports_at_a_fixed_size(images: list[np.ndarray], tmp_path: Path) -> None:
    det = make_detector(1)
    det.set_classes(NAMES)
    result = det.export(tmp_path / "v1.onnx", imgsz=256)
    assert result.inputs[0][1] == ["batch", 3, 256, 256] and result.metadata["fixed_size"]
    onnx = OnnxDetector(result.path)
    ref, got = [], []
    for im in images:
        x = to_tensor([letterbox(im, 256, auto=False)[0]])  # exactly 256x256, as the export takes
        with torch.no_grad():
            b, s = det.model.decode(det.model(x, det.class_embeddings))
        ob, os_ = onnx.session.run({"images": x.numpy()})
        np.testing.assert_allclose(os_[0], s[0].numpy(), rtol=0, atol=1e-4)
        assert np.abs(ob[0] - b[0].numpy()).max() < 0.05
        conf, iou = clear_thresholds(b[0], s[0], confs=(0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7))
        predictor = Predictor(
            det.model, det.names, det.class_embeddings, NMSConfig(conf=conf, iou=iou), 256, auto=False
        )
        ref += predictor([im], [None])
        got += onnx.predict(im, conf=conf, iou=iou, imgsz=None)
    assert_same_predictions(ref, got)
    with pytest.raises(ValueError, match="256x256 inputs only"):
        onnx.predict(images[0], imgsz=320)


# ----------------------------------------------------------------------------------- text encoders
def test_exported_clip_text_encoder_equals_pytorch(tmp_path: Path) -> None:
    from ovdet.export.text import export_text_encoder

    det = make_detector(2)
    meta, files = export_text_encoder(det.text_encoder, tmp_path / "m.onnx")
    enc = OnnxTextEncoder(files[0])
    assert enc.id == det.text_encoder.id and enc.dim == 32
    texts = ["person", "red backpack", "a dog's ball", "Café au lait", "traffic light"] + LVIS[:40]
    templates = ["{}", "a photo of a {}."]
    ref = det.text_encoder.encode(texts, templates).numpy()
    np.testing.assert_allclose(enc.encode(texts, templates), ref, rtol=0, atol=1e-5)
    assert enc.encode([]).shape == (0, 32)


def test_exported_sentence_encoder_equals_pytorch(tmp_path: Path) -> None:
    from ovdet.export.text import export_text_encoder
    from ovdet.text import build_text_encoder

    minilm = build_text_encoder(MINILM)  # the shipped MiniLM, offline
    meta, files = export_text_encoder(minilm, tmp_path / "demo.onnx")
    assert meta["tokenizer"] == "hf_tokenizers" and files[1].name == "demo.text.tokenizer.json"
    enc = OnnxTextEncoder(files[0])
    texts = ["person", "a red backpack on a chair", "Café au lait", "motorbike"] + LVIS[100:140]
    np.testing.assert_allclose(enc.encode(texts), minilm.encode(texts).numpy(), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------- precision
def test_half_export_keeps_the_detections(demo: Detector, coco128_images: list[Path], tmp_path: Path) -> None:
    import onnx

    fp32 = OnnxDetector(demo.export(tmp_path / "f.onnx").path)
    half = demo.export(tmp_path / "h.onnx", half=True)
    weights = onnx.load(str(half.path)).graph.initializer
    assert sum(w.data_type == onnx.TensorProto.FLOAT16 for w in weights) > 0.9 * len(weights)
    assert half.path.stat().st_size < 0.6 * fp32.path.stat().st_size
    paths = [str(p) for p in coco128_images[:16]]
    report = match_detections(fp32.predict(paths), OnnxDetector(half.path).predict(paths), iou=0.9, min_score=0.25)
    assert report.reference >= 20 and report.fraction >= 0.95, str(report)  # measured: 33/33


def test_int8_keeps_fp32_boxes_on_held_out_images(demo: Detector, data_dir: Path, tmp_path: Path) -> None:
    """Calibrated on coco128's first 64 images (by name), measured on the other 64: int8 keeps
    the fp32 boxes (score > 0.25) at IoU >= 0.9 with the same label. Measured 125/131 (95.4%,
    the issue's target is 95%); the assertion leaves room for kernels of other CPUs."""
    calib = data_dir / "coco128" / "images" / "train2017"
    result = demo.export(tmp_path / "m.onnx", int8=True, calib=str(calib), calib_images=64)
    q = result.files[-1]
    assert q.name == "m.int8.onnx" and q.stat().st_size < 0.45 * result.path.stat().st_size
    report = result.checks["int8"]
    assert result.checks["int8_images"] == "held-out" and report["images"] == 64
    assert result.checks["calib_skipped"] == []
    assert report["reference_boxes"] >= 120
    assert report["fraction"] >= INT8_KEEPS, report
    assert report["min_iou"] >= 0.9


#: lower bound on the fraction of fp32 boxes int8 keeps in the test above (measured: 0.954).
INT8_KEEPS = 0.92


# ----------------------------------------------------------------------------------- runtime behaviour
def test_deploy_runs_no_pytorch(tmp_path: Path, images: list[np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """set_classes and predict of an exported model call no PyTorch module or convolution."""
    det = make_detector(2)
    det.set_classes(NAMES)
    path = det.export(tmp_path / "m.onnx", dynamic_vocab=True, imgsz=320).path
    onnx = OnnxDetector(path)
    onnx.predict(images[0])  # loads lazily what it needs first

    def forbidden(*args, **kwargs):
        raise AssertionError("PyTorch ran during deployment")

    monkeypatch.setattr(torch.nn.Module, "__call__", forbidden)
    monkeypatch.setattr(torch.nn.functional, "conv2d", forbidden)
    monkeypatch.setattr(torch, "matmul", forbidden)
    onnx2 = OnnxDetector(path)
    onnx2.set_classes(["umbrella", "kite"])
    assert len(onnx2.predict(images, conf=0.05, imgsz=320)) == len(images)


def test_export_leaves_the_detector_as_it_was(tmp_path: Path) -> None:
    det = make_detector(2)
    det.set_classes(NAMES)
    det.model.train()
    state = {n: p.clone() for n, p in det.model.state_dict().items()}
    det.export(tmp_path / "m.onnx", imgsz=256)
    assert det.model.training and not det.model.is_fused and det.names == NAMES
    assert all(torch.equal(state[n], p) for n, p in det.model.state_dict().items())


def test_bad_input_errors(tmp_path: Path, images: list[np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    det = make_detector(2)
    with pytest.raises(RuntimeError, match="no vocabulary to bake"):
        det.export(tmp_path / "none.onnx")
    with pytest.raises(TypeError, match="unknown argument"):
        det.export(tmp_path / "x.onnx", dynamic_vocab=True, colour="red")
    with pytest.raises(ConfigError, match="calibration images"):
        ExportConfig(int8=True)
    det.set_classes(NAMES)
    baked = OnnxDetector(det.export(tmp_path / "baked.onnx", imgsz=256).path)
    with pytest.raises(RuntimeError, match="baked into the model"):
        baked.set_classes(["a"])
    dyn = OnnxDetector(det.export(tmp_path / "dyn.onnx", dynamic_vocab=True, text_encoder=False, imgsz=256).path)
    with pytest.raises(ValueError, match=r"must be \(2, 32\)"):
        dyn.set_class_embeddings(["a", "b"], np.zeros((2, 16), np.float32))
    with pytest.raises(TypeError, match="floating point"):
        dyn.set_class_embeddings(["a", "b"], np.ones((2, 32), np.int64))
    with pytest.raises(RuntimeError, match="without a text encoder"):
        dyn.set_classes(["a"])
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="corrupt.onnx: onnxruntime cannot load"):
        OnnxDetector(corrupt)
    jpeg = tmp_path / "photo.onnx"
    cv2.imwrite(str(tmp_path / "p.jpg"), images[0])
    jpeg.write_bytes((tmp_path / "p.jpg").read_bytes())
    with pytest.raises(ValueError, match="photo.onnx"):
        OnnxDetector(jpeg)
    import onnx as onnx_lib

    proto = onnx_lib.load(str(tmp_path / "dyn.onnx"))
    del proto.metadata_props[:]
    onnx_lib.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="without ovdet detector metadata"):
        OnnxDetector(tmp_path / "plain.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxDetector(tmp_path / "missing.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"ovdet\[deploy\]"):
        OnnxDetector(tmp_path / "baked.onnx")


def test_tensorrt_missing_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ovdet.export.tensorrt import TensorRTUnavailable, build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailable, match="pip install tensorrt"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", (640, 640))


def test_compiled_predict_equals_eager(coco128_images: list[Path]) -> None:
    """compile() wraps the network predict runs: the folded copy (recompiled after a vocabulary
    change) or, with optimize=False, the model as it is; both equal their eager runs."""
    det = make_detector(2)
    det.set_classes(NAMES)
    path = str(coco128_images[0])
    refs = {opt: det.predict(path, conf=0.1, imgsz=256, optimize=opt)[0] for opt in (True, False)}
    det.compile(backend="eager")
    for opt, ref in refs.items():
        out = det.predict(path, conf=0.1, imgsz=256, optimize=opt)[0]
        assert len(ref) > 0 and torch.equal(out.boxes, ref.boxes) and torch.equal(out.scores, ref.scores)
    first = det._compiled
    assert first is not None and first[0] is det.folded_network()
    det.set_classes(NAMES[:2])
    out = det.predict(path, conf=0.1, imgsz=256)[0]
    assert det._compiled is not first and det._compiled[0] is det.folded_network()
    assert out.names == NAMES[:2] and (len(out) == 0 or int(out.labels.max()) < 2)


def test_cli_export_checks_parity(tmp_path: Path, coco128_images: list[Path]) -> None:
    det = make_detector(2)
    det.set_classes(NAMES)
    ckpt = det.save(tmp_path / "ckpt")
    src = tmp_path / "imgs"
    src.mkdir()
    for p in coco128_images[:4]:
        (src / p.name).symlink_to(p)
    cmd = [sys.executable, "-m", "ovdet", "export", "--model", str(ckpt), "--dynamic-vocab", "--imgsz", "320"]
    run = subprocess.run([*cmd, "-o", str(tmp_path / "m.onnx"), "--source", str(src)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "class_embeddings ['num_classes', 32] float" in run.stdout
    assert "parity with PyTorch:" in run.stdout and "(100.0%)" in run.stdout
    assert (tmp_path / "m.text.onnx").is_file() and (tmp_path / "m.vocab.safetensors").is_file()
    bad = subprocess.run([*cmd, "-o", str(tmp_path / "q.onnx"), "--int8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--int8 needs --calib" in bad.stderr
    assert not (tmp_path / "q.onnx").exists()
