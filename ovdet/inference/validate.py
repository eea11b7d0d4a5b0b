"""Zero-shot validation: dataset → vocabulary → predictions → COCO/LVIS metrics and artefacts.

:func:`validate` works on a network and a way to embed class names; it changes neither (the
network's train/eval mode is restored), so a :class:`~ovdet.api.Detector` keeps its vocabulary
and a trainer can validate its EMA weights mid-run. A caller that validates repeatedly (a
training run) reads the set once with :func:`read_validation_set` and passes that to each call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ovdet.config import EvalConfig
from ovdet.data.images import decode_image
from ovdet.data.readers import read_dataset
from ovdet.data.records import Dataset
from ovdet.evaluation import build_evaluator, save_results, write_report
from ovdet.inference.predict import PredictionStream, Predictor
from ovdet.models.detector import OVDetector
from ovdet.structures import xyxy_to_xywh

__all__ = ["ValidationSet", "dataset_to_coco", "read_validation_set", "validate"]


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


@dataclass(frozen=True)
class ValidationSet:
    """A validation set read and prepared once, for any number of :func:`validate` calls.

    Attributes:
        source: what it was read from (a path, or ``"<dataset>"`` for a dataset passed in), for messages.
        dataset: the records and vocabulary.
        gt: the evaluator's ground truth: the official instances json path for COCO/LVIS json
            (crowd regions and ids exactly as published), else the COCO dict built from ``dataset``.
        ids: the evaluator's image id of each record, in record order.
    """

    source: str
    dataset: Dataset
    gt: Any
    ids: list[Any]


def read_validation_set(
    data: str | Path | Dataset,
    split: str = "val",
    image_dir: str | Path | None = None,
    *,
    name: str | None = None,
) -> ValidationSet:
    """Read a validation set once (the dataset and its ground truth for the evaluator).

    Args:
        data: COCO/LVIS instances json, an ultralytics data yaml (``split``), an ODVG jsonl, or a
            dataset already read.
        split: the YOLO split to read.
        image_dir: image folder of a json/jsonl (default: found next to the file).
        name: what messages call the set (default: ``data``'s path, ``"<dataset>"`` for a dataset).

    Raises:
        ValueError: the dataset has no usable image.
    """
    dataset = data if isinstance(data, Dataset) else read_dataset(data, split=split, image_dir=image_dir)
    source = name if name is not None else "<dataset>" if isinstance(data, Dataset) else str(data)
    if not dataset.records:
        raise ValueError(f"{source}: empty dataset (no usable images); run `ovdet check-data {source}` for details")
    if isinstance(data, (str, Path)) and str(data).endswith(".json"):
        return ValidationSet(source, dataset, data, [r.image_id for r in dataset.records])
    gt, ids = dataset_to_coco(dataset)
    return ValidationSet(source, dataset, gt, ids)


def validate(
    model: OVDetector,
    data: str | Path | Dataset | ValidationSet,
    embed: Callable[[Sequence[str]], torch.Tensor],
    cfg: EvalConfig | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` zero-shot on a dataset: its vocabulary is the dataset's class names.

    Args:
        model: the network; it runs in eval mode and is left in the mode it was in.
        data: COCO/LVIS instances json, an ultralytics data yaml (``cfg.split``), an ODVG jsonl,
            a dataset already read, or a :class:`ValidationSet` (read once; ``cfg.split`` and
            ``cfg.image_dir`` then do not apply).
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
    prepared = data if isinstance(data, ValidationSet) else read_validation_set(data, cfg.split, cfg.image_dir)
    dataset, gt, ids = prepared.dataset, prepared.gt, prepared.ids
    is_lvis = any(r.neg_category_ids or r.not_exhaustive_category_ids for r in dataset.records)
    lvis = is_lvis if cfg.lvis is None else cfg.lvis
    evaluator = build_evaluator(
        gt, lvis=lvis or cfg.fixed_ap, fixed_ap=cfg.fixed_ap, backend=cfg.backend, category_ids=dataset.category_ids
    )

    device = torch.device(device) if device is not None else next(model.parameters()).device
    emb = embed(dataset.names).to(device, torch.float32)  # (K, D)
    options = cfg.predict
    run = PredictionStream(
        Predictor(model, dataset.names, emb, options.nms, options.imgsz),
        [str(r.path) for r in dataset.records],
        batch=options.batch,
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
