"""The optimised inference paths give the simple paths' outputs (not timings: those are benchmarks).

``Detector.predict`` runs a vocabulary-folded, channels-last copy of the network, cached until
the weights or the vocabulary change; ``optimize=False`` runs the network as it is. These tests
pin equality on real coco128 images at thresholds with no near-tie, and that the cache is never
stale (weights edited in place, a new vocabulary, a new model, ``load_state_dict``).
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import cv2
import pytest
import torch

from ovdet import Detector
from ovdet.data.letterbox import letterbox, to_tensor
from tests.helpers import NAMES, assert_close_scaled, assert_same_detections, make_detector, nms_ambiguities


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OVDET_HOME", str(tmp_path / "home"))
    return tmp_path


def _clear_images(det: Detector, paths: list[Path], conf: float, iou: float, imgsz: int, n: int) -> list[str]:
    """The first ``n`` images whose NMS decisions have a clear margin at (conf, iou)."""
    out = []
    for p in paths:
        with torch.no_grad():
            x = to_tensor([letterbox(cv2.imread(str(p)), imgsz, stride=32)[0]])
            boxes, scores = det.model.decode(det.model(x, det.class_embeddings))
        if not nms_ambiguities(boxes[0], scores[0], conf, iou, score_tol=2e-4, ties=True):
            out.append(str(p))
        if len(out) == n:
            break
    assert len(out) == n, "not enough images without near-ties"
    return out


@pytest.mark.parametrize("version", [1, 2])
def test_optimized_predict_equals_simple(version: int, home: Path, coco128_images: list[Path]) -> None:
    det = make_detector(version)
    det.set_classes(NAMES)
    conf, iou = 0.3, 0.6
    paths = _clear_images(det, coco128_images[:24], conf, iou, 320, 6)
    fast = det.predict(paths, conf=conf, iou=iou, imgsz=320, batch=3)
    simple = det.predict(paths, conf=conf, iou=iou, imgsz=320, batch=3, optimize=False)
    assert sum(len(d) for d in simple) >= 6, "the comparison needs boxes"
    for a, b in zip(fast, simple):
        assert a.path == b.path and a.names == b.names
        assert_same_detections(a, b, box_tol=5e-2, score_tol=2e-4)


@pytest.mark.parametrize("version", [1, 2])
def test_folded_channels_last_network_equals_model(version: int, home: Path, coco128_images: list[Path]) -> None:
    det = make_detector(version)
    det.set_classes(NAMES)
    net = det.folded_network()
    assert next(net.parameters()).is_contiguous(memory_format=torch.channels_last)
    x = to_tensor([letterbox(cv2.imread(str(p)), 320, auto=False)[0] for p in coco128_images[:2]])
    with torch.inference_mode():
        ref = det.model(x, det.class_embeddings)
        got = net(x.contiguous(memory_format=torch.channels_last))
    assert got.cls_logits.shape == ref.cls_logits.shape == (2, len(NAMES), 2100)
    assert_close_scaled(got.cls_logits, ref.cls_logits, rel=1e-4)
    assert_close_scaled(got.box_logits, ref.box_logits, rel=1e-4)
    assert torch.equal(got.anchors, ref.anchors) and torch.equal(got.strides, ref.strides)
    assert not any(p.requires_grad for p in net.parameters())
    # the copy's SiLUs run in place (each on a fresh convolution output); the model's are untouched
    acts = [m for m in net.modules() if isinstance(m, torch.nn.SiLU)]
    assert len(acts) >= 50 and all(m.inplace for m in acts)
    assert not any(m.inplace for m in det.model.modules() if isinstance(m, torch.nn.SiLU))
    with torch.inference_mode():  # in-place activations never touch the caller's input
        xc = x.contiguous(memory_format=torch.channels_last)
        before = xc.clone()
        again = net(xc)
    assert torch.equal(xc, before) and torch.equal(again.cls_logits, got.cls_logits)


def test_folded_network_is_cached_and_never_stale(home: Path, coco128_images: list[Path]) -> None:
    det = make_detector()
    det.set_classes(NAMES)
    img = str(coco128_images[3])
    first = det.folded_network()
    det.predict(img, conf=0.05, imgsz=320)
    assert det.folded_network() is first, "unchanged weights and vocabulary must reuse the copy"

    def agrees() -> None:
        # on images whose NMS decisions have a clear margin for the weights as they are now
        boxes = 0
        for clear in _clear_images(det, coco128_images[:32], 0.3, 0.6, 320, 3):
            a = det.predict(clear, conf=0.3, iou=0.6, imgsz=320)[0]
            b = det.predict(clear, conf=0.3, iou=0.6, imgsz=320, optimize=False)[0]
            assert_same_detections(a, b, box_tol=5e-2, score_tol=2e-4)
            boxes += len(b)
        assert boxes > 0, "the comparison needs boxes"

    # a new vocabulary of the same size (a new tensor that may reuse the old one's memory)
    det.set_classes(list(reversed(NAMES)))
    second = det.folded_network()
    assert second is not first
    agrees()
    # weights edited in place, as an optimizer step does
    with torch.no_grad():
        det.model.head.box_branches[0][-1].bias.add_(0.5)
    third = det.folded_network()
    assert third is not second
    agrees()
    # load_state_dict of other weights
    other = make_detector()
    with torch.no_grad():  # other weights that still detect: the box branches' last biases moved
        for branch in other.model.head.box_branches:
            branch[-1].bias.add_(0.3)
    det.model.load_state_dict(other.model.state_dict())
    assert det.folded_network() is not third
    agrees()
    # a different model object
    det.model = other.model
    assert det.folded_network() is not third
    agrees()


def test_cache_does_not_keep_replaced_model_alive(home: Path) -> None:
    det = make_detector()
    det.set_classes(NAMES)
    det.folded_network()
    old = weakref.ref(det.model)
    det.model = make_detector().model
    gc.collect()
    assert old() is None, "the folded-network cache must hold its sources weakly"


def test_compiled_and_unoptimized_predict_do_not_build_a_copy(home: Path, coco128_images: list[Path]) -> None:
    det = make_detector()
    det.set_classes(NAMES)
    det.predict(str(coco128_images[0]), conf=0.05, imgsz=320, optimize=False)
    assert det._folded._net is None


def test_set_classes_from_cache_does_not_rewrite_the_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the encoder is built, known names are still served from memory with no file write."""
    det = make_detector()
    det.set_classes(NAMES)  # encodes and saves
    saves = []
    original = det.cache.save
    monkeypatch.setattr(det.cache, "save", lambda: saves.append(1) or original())
    det.set_classes(NAMES[:2])
    det.set_classes(NAMES)
    assert saves == []
    det.set_classes(["a brand new name"])
    assert saves == [1] and det.cache.unsaved == 0


def test_predict_restores_every_module_mode(home: Path, coco128_images: list[Path]) -> None:
    """Mixed modes (training with a frozen, eval-mode backbone) come back exactly, on both paths."""
    det = make_detector()
    det.set_classes(NAMES)
    img = str(coco128_images[0])
    refs = {opt: det.predict(img, conf=0.05, imgsz=320, optimize=opt)[0] for opt in (False, True)}
    det.model.train()
    det.model.backbone.eval()
    before = [m.training for m in det.model.modules()]
    assert any(before) and not all(before)
    for optimize in (False, True):
        got = det.predict(img, conf=0.05, imgsz=320, optimize=optimize)[0]
        assert [m.training for m in det.model.modules()] == before
        # ran in eval mode: train-mode BatchNorm (batch statistics) would change the scores
        assert len(got) > 0 and torch.equal(got.scores, refs[optimize].scores)
