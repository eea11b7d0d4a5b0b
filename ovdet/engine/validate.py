"""Zero-shot validation: dataset → vocabulary → predictions → COCO/LVIS metrics and artefacts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovdet.data.images import decode_image
from ovdet.data.readers import read_dataset
from ovdet.data.records import Dataset
from ovdet.evaluation import build_evaluator, save_results, write_report

if TYPE_CHECKING:  # pragma: no cover
    from ovdet.api import Detector


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
        for box, label, ignore in zip(rec.boxes.tolist(), rec.labels.tolist(), rec.ignore.tolist()):
            if label < 0:
                continue  # free grounding phrases have no category to score
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": dataset.category_ids[label], "bbox": [box[0], box[1], w, h],
                                "area": w * h, "iscrowd": int(ignore)})
    categories = [{"id": c, "name": n} for c, n in zip(dataset.category_ids, dataset.raw_names)]
    return {"images": images, "annotations": annotations, "categories": categories}, ids


def validate(det: "Detector", data: str | Path, *, split: str = "val", imgsz: int = 640, conf: float = 0.001,
             iou: float = 0.7, max_det: int | None = None, batch: int = 8, lvis: bool | None = None,
             fixed_ap: bool = False, backend: str = "pycocotools", image_dir: str | Path | None = None,
             save_dir: str | Path | None = None, samples: int = 4, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``det`` zero-shot on a dataset: its vocabulary is the dataset's class names.

    Args:
        det: the detector; its vocabulary is replaced by the dataset's (cleaned) class names,
            whose embeddings are computed once and cached.
        data: COCO/LVIS instances json or an ultralytics data yaml (``split`` selects train/val).
        lvis: score with LVIS metrics (APr/APc/APf); default: when the json is LVIS.
        fixed_ap: LVIS Fixed AP (no per-image cap; top 10,000 per class).
        max_det: boxes kept per image; default 300 (1000 for Fixed AP).
        save_dir: when set, writes ``metrics.json``, ``results.json`` (COCO results, re-scorable
            with ``ovdet val --results``), ``pr_curve.png`` and ``samples/`` annotated images.

    Returns:
        The metrics dict (AP, AP50, …, per_class, dropped, plus ``images``, ``skipped``,
        ``images_per_s``).

    Raises:
        ValueError: the dataset has no usable image.
    """
    from tqdm import tqdm

    dataset = read_dataset(data, split=split, image_dir=image_dir)
    if not dataset.records:
        raise ValueError(f"{data}: empty dataset (no usable images); run `ovdet check-data {data}` for details")
    is_lvis = any(r.neg_category_ids or r.not_exhaustive_category_ids for r in dataset.records)
    lvis = is_lvis if lvis is None else lvis
    if max_det is None:
        max_det = 1000 if fixed_ap else 300
    if str(data).endswith(".json"):  # the official GT file: crowd regions and ids exactly as published
        gt: Any = data
        ids = [r.image_id for r in dataset.records]
    else:
        gt, ids = dataset_to_coco(dataset)
    evaluator = build_evaluator(gt, lvis=lvis or fixed_ap, fixed_ap=fixed_ap, backend=backend,
                                category_ids=dataset.category_ids)

    det.set_classes(dataset.names)
    id_of = {str(r.path): i for r, i in zip(dataset.records, ids)}
    run = det.predict([str(r.path) for r in dataset.records], conf=conf, iou=iou, imgsz=imgsz, max_det=max_det,
                      batch=batch, stream=True, keep_images=False)
    sample_dir = Path(save_dir) / "samples" if save_dir is not None and samples > 0 else None
    start, n = time.perf_counter(), 0
    with tqdm(total=len(dataset.records), unit="img", desc="val", disable=not progress) as bar:
        for d in run:
            evaluator.process([id_of[str(d.path)]], [d])
            if sample_dir is not None and n < samples:
                sample_dir.mkdir(parents=True, exist_ok=True)
                d.save(sample_dir / (Path(str(d.path)).stem + ".jpg"), image=decode_image(d.path))
            n += 1
            bar.update(1)
    elapsed = time.perf_counter() - start
    metrics = evaluator.evaluate()
    metrics.update(images=n, skipped=[{"source": s, "reason": r} for s, r in run.skipped],
                   images_per_s=n / elapsed if elapsed > 0 else 0.0)
    if save_dir is not None:
        save_results(Path(save_dir) / "results.json", evaluator.results)
        write_report(metrics, save_dir, evaluator.precision, evaluator.names)
    return metrics
