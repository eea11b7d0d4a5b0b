"""Parity with ultralytics YOLO-World: a converted checkpoint computes the same function.

ultralytics builds its models from YAML with random weights offline; we save them the way it
saves checkpoints (half-precision module inside a dict), convert, and compare on real images.
Fresh weights give near-constant scores (contrastive bias -10), which proves nothing, so BN
statistics and the contrastive heads' bias and scale are perturbed first.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import cv2
import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")
from ultralytics.nn.tasks import WorldModel  # noqa: E402
from ultralytics.utils.nms import non_max_suppression  # noqa: E402

from ovdet import Detector  # noqa: E402
from ovdet.data.letterbox import letterbox, to_tensor  # noqa: E402
from ovdet.models.detector import NMSConfig  # noqa: E402

YAML = {1: "yolov8{}-world.yaml", 2: "yolov8{}-worldv2.yaml"}
SCALES = os.environ.get("OVDET_PARITY_SCALES", "n,s").split(",")


def calibration_batch(paths: list[Path]) -> torch.Tensor:
    """(B, 3, 320, 320) real coco128 images for setting BatchNorm statistics."""
    return to_tensor([letterbox(cv2.imread(str(p)), 320, stride=32, auto=False)[0] for p in paths])


def perturbed_world_model(version: int, scale: str, calib: torch.Tensor, seed: int = 0) -> WorldModel:
    """A random ultralytics WorldModel that behaves like a trained one: spread-out scores.

    Fresh BatchNorm statistics (mean 0, var 1) do not match the activations, so deep random
    features collapse to near-identical values and scores tie. Running the model in train mode
    over real images sets each BN's statistics to the activations it sees; the contrastive
    heads' bias and scale are then set so a few percent of the anchors pass conf=0.25.
    """
    torch.manual_seed(seed)
    model = WorldModel(YAML[version].format(scale), verbose=False)
    text = torch.nn.functional.normalize(torch.randn(1, 9, 512, generator=torch.Generator().manual_seed(seed)), -1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    model.train()
    model.model[-1].nc = text.shape[1]
    with torch.no_grad():
        model.predict(calib, txt_feats=text.expand(len(calib), -1, -1))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.03
        for head in model.model[-1].cv4:
            head.bias.fill_(-6.0)
            head.logit_scale.fill_(0.0 if version == 2 else 4.0)
    return model.eval()


def save_like_ultralytics(model: WorldModel, path: Path) -> Path:
    """The layout of ultralytics' final checkpoints: the fp16 module under 'model'."""
    torch.save({"model": copy.deepcopy(model).half(), "ema": None, "optimizer": None, "epoch": -1,
                "train_args": {}, "date": "2026-11-23"}, path)
    return path


def assert_same_set(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, ref: torch.Tensor) -> None:
    """One-to-one match of detections to ultralytics' rows (x1, y1, x2, y2, score, class).

    Flat image regions give exactly tied scores at boxes a stride apart, whose order after
    sorting is arbitrary, so the comparison is between sets, not sequences.
    """
    assert len(scores) == len(ref)
    free = torch.ones(len(ref), dtype=torch.bool)
    for b, s, lab in zip(boxes, scores, labels):
        ok = (free & (ref[:, 5].long() == lab) & ((ref[:, 4] - s).abs() <= 1e-5)
              & ((ref[:, :4] - b).abs().amax(1) <= 1e-3))
        assert bool(ok.any()), f"no ultralytics twin for box {b.tolist()} score {float(s)} label {int(lab)}"
        free[int(ok.nonzero()[0])] = False


@pytest.fixture(scope="module")
def images(coco128_images: list[Path]) -> list:
    picks = [coco128_images[i] for i in (0, 1, 4, 7)]  # landscape and portrait letterbox shapes
    return [cv2.imread(str(p)) for p in picks]


@pytest.fixture(scope="module")
def calib(coco128_images: list[Path]) -> torch.Tensor:
    return calibration_batch(coco128_images[10:18])


def converted_pair(version: int, scale: str, tmp_path: Path, calib: torch.Tensor) -> tuple[WorldModel, Detector]:
    src = perturbed_world_model(version, scale, calib)
    pt = save_like_ultralytics(src, tmp_path / f"v{version}{scale}.pt")
    det = Detector.from_ultralytics(pt, trust=True, device="cpu")
    theirs = torch.load(pt, weights_only=False)["model"].float().eval()  # the same fp16-rounded weights
    return theirs, det


def run_both(theirs: WorldModel, det: Detector, x: torch.Tensor, text: torch.Tensor):
    theirs.model[-1].nc = text.shape[1]
    with torch.no_grad():
        y, preds = theirs.predict(x, txt_feats=text)
        raw = det.model(x, text)
    return y, preds, raw


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("version", [1, 2])
def test_raw_outputs_and_nms_match(version: int, scale: str, images, calib, tmp_path: Path) -> None:
    theirs, det = converted_pair(version, scale, tmp_path, calib)
    g = torch.Generator().manual_seed(3)
    compared_boxes = 0
    for k, batch in ((1, [0]), (7, [0, 1]), (80, [1]), (200, [2, 3])):
        arrs = [letterbox(images[i], 320, stride=32)[0] for i in batch]
        if len({a.shape for a in arrs}) > 1:
            arrs = arrs[:1]
        x = to_tensor(arrs)
        text = torch.nn.functional.normalize(torch.randn(len(arrs), k, 512, generator=g), dim=-1)
        y, preds, raw = run_both(theirs, det, x, text)
        assert (preds["boxes"] - raw.box_logits).abs().max() <= 1e-4
        assert (preds["scores"] - raw.cls_logits).abs().max() <= 1e-4
        ours = det.model.postprocess(raw, NMSConfig(conf=0.25, iou=0.7, max_det=300))
        ref = non_max_suppression(y, conf_thres=0.25, iou_thres=0.7, max_det=300)
        for (b, s, lab), r in zip(ours, ref):
            assert len(s) == len(r)
            compared_boxes += len(s)
            assert_same_set(b, s, lab, r)
    assert compared_boxes >= 20, "the comparison must have boxes to compare"


@pytest.mark.parametrize("version", [1, 2])
def test_fused_parity(version: int, images, calib, tmp_path: Path) -> None:
    theirs, det = converted_pair(version, SCALES[0], tmp_path, calib)
    theirs.fuse(verbose=False)
    det.fuse()
    x = to_tensor([letterbox(images[0], 320, stride=32)[0]])
    text = torch.nn.functional.normalize(torch.randn(1, 80, 512, generator=torch.Generator().manual_seed(5)), dim=-1)
    y, preds, raw = run_both(theirs, det, x, text)
    # folding BN reorders float operations on both sides: equal to 1e-4 relative
    torch.testing.assert_close(raw.box_logits, preds["boxes"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(raw.cls_logits, preds["scores"], atol=1e-4, rtol=1e-4)
    ref = non_max_suppression(y, conf_thres=0.05, iou_thres=0.7)[0]
    boxes, scores, labels = det.model.postprocess(raw, NMSConfig(conf=0.05, iou=0.7))[0]
    assert len(ref) >= 5, "the comparison must have boxes to compare"
    assert_same_set(boxes, scores, labels, ref)


@pytest.mark.parametrize("version", [1, 2])
def test_predict_matches_ultralytics_predict(version: int, coco128_images: list[Path], calib,
                                             tmp_path: Path) -> None:
    """Public API vs ultralytics' own predictor on the same weights, vocabulary, conf, iou, imgsz."""
    from ultralytics import YOLO
    from torchvision.ops import box_iou

    src = perturbed_world_model(version, SCALES[0], calib)
    pt = save_like_ultralytics(src, tmp_path / "m.pt")
    det = Detector.from_ultralytics(pt, trust=True, device="cpu")
    names = [f"class {i}" for i in range(9)]
    emb = torch.nn.functional.normalize(torch.randn(9, 512, generator=torch.Generator().manual_seed(11)), dim=-1)
    det.set_class_embeddings(names, emb)
    yolo = YOLO(str(pt), task="detect")
    yolo.model.txt_feats = emb[None].clone()
    yolo.model.model[-1].nc = len(names)
    yolo.model.names = dict(enumerate(names))
    matched = 0
    for path in coco128_images[:4]:
        ref = yolo.predict(str(path), conf=0.25, iou=0.7, imgsz=640, verbose=False, device="cpu")[0].boxes
        got = det.predict(str(path), conf=0.25, iou=0.7, imgsz=640)[0]
        assert len(got) == len(ref)
        if not len(got):
            continue
        iou = box_iou(got.boxes, ref.xyxy.float())
        best, j = iou.max(1)
        assert bool((best > 0.99).all())
        assert torch.equal(got.labels, ref.cls.long()[j])
        assert float((got.scores - ref.conf[j]).abs().max()) <= 1e-3
        matched += len(got)
    assert matched >= 10, "the comparison must have boxes to compare"
