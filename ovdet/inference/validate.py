"""Zero-shot validation: dataset → vocabulary → predictions → COCO/LVIS metrics and artefacts.

:func:`validate` works on a network and a way to embed class names; it changes neither (the
network's train/eval mode is restored), so a :class:`~ovdet.api.Detector` keeps its vocabulary
and a trainer can validate its EMA weights mid-run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ovdet.config import EvalConfig, NMSConfig
from ovdet.data.images import decode_image
from ovdet.data.readers import read_dataset
from ovdet.data.records import Dataset
from ovdet.evaluation import build_evaluator, save_results, write_report
from ovdet.inference.predict import PredictionStream, Predictor
from ovdet.models.detector import OVDetector
from ovdet.structures import xyxy_to_xywh

__all__ = ["dataset_to_coco", "validate"]


def dataset_to_coco(dataset: Dataset) -> tuple[dict[str, Any], list[int]]:
    """COCO-format ground truth for any dataset (YOLO data becomes COCO here, at the boundary).

    Returns:
        (the GT dict, the integer image id given to each record, in record order).
    """
    images, annotations, ids = [], [], []
    for i, rec in enumerate(dataset.records):
        image_id = rec.image_id if isinstance(rec.image_id, int) else i + 1
        ids.append(image_id)
        images.append({"id": image_id, "file_name": Path(rec.path).name, "height": rec.height, "width": rec.width})
        keep = rec.labels >= 0  # free grounding phrases have no category to score
        for xywh, label, ignore in zip(
            xyxy_to_xywh(rec.boxes[keep].astype("float64")).tolist(),
            rec.labels[keep].tolist(),
            rec.ignore[keep].tolist(),
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": dataset.category_ids[label],
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": int(ignore),
                }
            )
    categories = [{"id": c, "name": n} for c, n in zip(dataset.category_ids, dataset.raw_names)]
    return {"images": images, "annotations": annotations, "categories": categories}, ids


def validate(
    model: OVDetector,
    data: str | Path | Dataset,
    embed: Callable[[Sequence[str]], torch.Tensor],
    cfg: EvalConfig | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` zero-shot on a dataset: its vocabulary is the dataset's class names.

    Args:
        model: the network; it runs in eval mode and is left in the mode it was in.
        data: COCO/LVIS instances json, an ultralytics data yaml (``cfg.split``), an ODVG jsonl,
            or a dataset already read.
        embed: K names → (K, D) float32 embeddings (e.g. ``Detector.encode``; a trainer passes
            its precomputed vocabulary); called once, with the dataset's prompt names.
        cfg: thresholds, image size, scorer, output folder (default :class:`~ovdet.config.EvalConfig`).
        device: where to run (default: the model's device).

    Returns:
        The metrics dict (AP, AP50, …, per_class, dropped, plus ``images``, ``skipped``,
        ``images_per_s``). With ``cfg.save_dir``: ``metrics.json``, ``results.json`` (COCO
        results, re-scorable with ``ovdet val --results``), ``pr_curve.png`` and ``samples/``.

    Raises:
        ValueError: the dataset has no usable image.
    """
    from tqdm import tqdm

    cfg = cfg if cfg is not None else EvalConfig()
    dataset = data if isinstance(data, Dataset) else read_dataset(data, split=cfg.split, image_dir=cfg.image_dir)
    if not dataset.records:
        raise ValueError(f"{data}: empty dataset (no usable images); run `ovdet check-data {data}` for details")
    is_lvis = any(r.neg_category_ids or r.not_exhaustive_category_ids for r in dataset.records)
    lvis = is_lvis if cfg.lvis is None else cfg.lvis
    if isinstance(data, (str, Path)) and str(data).endswith(".json"):
        gt: Any = data  # the official GT file: crowd regions and ids exactly as published
        ids = [r.image_id for r in dataset.records]
    else:
        gt, ids = dataset_to_coco(dataset)
    evaluator = build_evaluator(
        gt, lvis=lvis or cfg.fixed_ap, fixed_ap=cfg.fixed_ap, backend=cfg.backend, category_ids=dataset.category_ids
    )

    device = torch.device(device) if device is not None else next(model.parameters()).device
    emb = embed(dataset.names).to(device, torch.float32)  # (K, D)
    nms = NMSConfig(conf=cfg.conf, iou=cfg.iou, max_det=cfg.max_detections)
    run = PredictionStream(
        Predictor(model, dataset.names, emb, nms, cfg.imgsz),
        [str(r.path) for r in dataset.records],
        batch=cfg.batch,
        keep_images=False,
    )
    id_of = {str(r.path): i for r, i in zip(dataset.records, ids)}
    sample_dir = Path(cfg.save_dir) / "samples" if cfg.save_dir is not None and cfg.samples > 0 else None
    start, n = time.perf_counter(), 0
    with tqdm(total=len(dataset.records), unit="img", desc="val", disable=not cfg.progress) as bar:
        for d in run:
            evaluator.process([id_of[str(d.path)]], [d])
            if sample_dir is not None and n < cfg.samples:
                sample_dir.mkdir(parents=True, exist_ok=True)
                d.save(sample_dir / (Path(str(d.path)).stem + ".jpg"), image=decode_image(d.path))
            n += 1
            bar.update(1)
    elapsed = time.perf_counter() - start
    metrics = evaluator.evaluate()
    metrics.update(
        images=n,
        skipped=[{"source": s, "reason": r} for s, r in run.skipped],
        images_per_s=n / elapsed if elapsed > 0 else 0.0,
    )
    if cfg.save_dir is not None:
        save_results(Path(cfg.save_dir) / "results.json", evaluator.results)
        write_report(metrics, cfg.save_dir, evaluator.precision, evaluator.names)
    return metrics
