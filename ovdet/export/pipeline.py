"""The whole export: detector graph, text encoder and tokenizer, vocabulary file, int8 copy, checks.

:func:`export_model` is what ``Detector.export`` and ``ovdet export`` run. Files for
``model.onnx``: ``model.text.onnx`` + tokenizer file (dynamic vocabulary with a text encoder),
``model.vocab.safetensors`` (dynamic vocabulary: the vocabulary set at export, loaded by
default), ``model.int8.onnx`` (``int8``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ovdet.config import ExportConfig, NMSConfig
from ovdet.deploy.runtime import OnnxDetector
from ovdet.export.check import MatchReport, match_detections
from ovdet.export.onnx import ExportResult, export_detector, export_files, set_metadata
from ovdet.export.quantize import calibration_images, quantize_int8
from ovdet.export.text import export_text_encoder
from ovdet.inference.predict import Predictor
from ovdet.models.detector import OVDetector
from ovdet.structures import Detections
from ovdet.text.base import TextEncoder
from ovdet.text.files import save_embeddings

__all__ = ["HELD_OUT", "check_against_pytorch", "export_model"]

#: images of the calibration folder (after the calibration ones) the int8 report is measured on.
HELD_OUT = 64


def export_model(
    model: OVDetector,
    path: str | Path,
    cfg: ExportConfig,
    names: Sequence[str],
    embeddings: torch.Tensor | None,
    encoder_id: str,
    text_encoder: TextEncoder | None = None,
) -> ExportResult:
    """Export ``model`` (and what a deployment needs beside it) to ``path``.

    Args:
        model: the network (unchanged).
        path: the detector ``.onnx`` to write.
        cfg: export settings.
        names / embeddings: the current vocabulary ((K, D), or None when unset).
        encoder_id: the text encoder the embeddings came from.
        text_encoder: exported beside the model when ``cfg.dynamic_vocab and cfg.text_encoder``.

    Returns:
        :class:`ExportResult`; with ``cfg.int8``, ``checks["int8"]`` holds the fp32-vs-int8
        :class:`~ovdet.export.check.MatchReport` (as a dict) on held-out images of the
        calibration folder (up to :data:`HELD_OUT` images after the calibration ones, by name),
        ``checks["int8_images"]`` says which images were used and ``checks["calib_skipped"]``
        lists the unreadable files of the folder that were skipped.
    """
    path = Path(path)
    files = export_files(path)
    extra: dict[str, str] = {}
    written: list[Path] = []
    if cfg.dynamic_vocab:  # the files beside the model first: the model's metadata names them
        if cfg.text_encoder and text_encoder is not None:
            text_meta, text_files = export_text_encoder(text_encoder, path, cfg.opset)
            extra["text_model"] = text_meta["file"]
            written += text_files
        if embeddings is not None:
            templates = model.cfg.text.templates
            written.append(save_embeddings(files["vocab"], names, embeddings.cpu(), encoder_id, templates))
            extra["vocab_file"] = files["vocab"].name
    result = export_detector(model, path, cfg, list(names), embeddings, encoder_id, extra)
    result.files += written
    meta = result.metadata
    if cfg.int8:
        assert cfg.calib is not None  # ExportConfig checks it
        images, _, skipped = calibration_images(cfg.calib, cfg.calib_images + HELD_OUT)
        result.checks["calib_skipped"] = [reason for _, reason in skipped]  # each reason names its file
        calib, held_out = images[: cfg.calib_images], images[cfg.calib_images :]
        emb = None if embeddings is None or not cfg.dynamic_vocab else embeddings.float().cpu().numpy()
        q = quantize_int8(path, files["int8"], calib, cfg.imgsz, meta["stride"], emb)
        set_metadata(q, {**meta, "precision": "int8"})
        result.files.append(q)
        report_images = held_out or calib
        fp32 = OnnxDetector(path).predict(report_images, imgsz=cfg.imgsz, keep_images=False)
        int8 = OnnxDetector(q).predict(report_images, imgsz=cfg.imgsz, keep_images=False)
        result.checks["int8"] = match_detections(fp32, int8, iou=0.9, min_score=cfg.conf).as_dict()
        result.checks["int8_images"] = "held-out" if held_out else "calibration (the folder has no others)"
    return result


def check_against_pytorch(
    model: OVDetector,
    onnx: OnnxDetector,
    names: Sequence[str],
    embeddings: torch.Tensor,
    images: list[np.ndarray],
    imgsz: int | tuple[int, int] = 640,
    conf: float = 0.25,
) -> MatchReport:
    """Detections of an exported file against PyTorch's on the same images.

    Both sides run the same vocabulary, thresholds and letterbox; the report counts PyTorch's
    boxes (score > ``conf``) the export reproduces at IoU ≥ 0.99 with the same label.
    """
    fixed = bool(onnx.metadata.get("fixed_size"))
    size = tuple(onnx.metadata["imgsz"]) if fixed else imgsz
    nms = onnx.metadata["nms"] or {"iou": 0.7, "max_det": 300, "agnostic": False}
    predictor = Predictor(
        model,
        list(names),
        embeddings.to(next(model.parameters()).device),
        NMSConfig(conf=conf, iou=nms["iou"], max_det=nms["max_det"], agnostic=nms["agnostic"]),
        size,
        auto=not fixed,
    )
    ref: list[Detections] = predictor(images, [None] * len(images), keep_images=False)
    got = onnx.predict(
        images,
        conf=conf,
        iou=nms["iou"],
        imgsz=size,
        max_det=nms["max_det"],
        agnostic_nms=nms["agnostic"],
        keep_images=False,
    )
    return match_detections(ref, got, iou=0.99, min_score=conf)
