"""Phrase-grounding evaluation of a detector: Flickr30k Entities Recall@k and RefCOCO precision@1.

:func:`evaluate_grounding` asks :func:`~ovdet.grounding.ground.ground` for exactly the
ground-truth phrases of each image (``spans=`` their spans, so the evaluated phrases are the
annotated ones, never the chunker's), keeps each phrase's best ``max(ks)`` boxes at a low
``conf`` (0.001, as detection AP does), and scores them with :mod:`ovdet.grounding.metrics`:

* ``R@k`` (ANY-BOX): over every phrase with at least one ground-truth box, the share found in its
  first ``k`` boxes (any ground-truth box at IoU ≥ 0.5 with any of them);
* ``P@1`` (RefCOCO): over the phrases with exactly ONE ground-truth box (referring expressions),
  the share whose top box has IoU ≥ 0.5 with it.

One ``ground`` call (one prediction) per image and caption, on the network as it is
(``predict(optimize=False)``: a vocabulary folded into a copy of the network would be used for one
image only); ground-truth phrases whose spans overlap (nested mentions) are asked in separate
calls, since one call's spans must not overlap.
An image that cannot be read, or whose decoded size differs from the annotated one (its boxes
would be in other pixels), is skipped and named; so are the entries the reader left out
(:class:`~ovdet.grounding.truth.GroundingSet`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ovdet.config import EvalConfig
from ovdet.data.images import ImageReadError
from ovdet.data.readers.common import PathLike
from ovdet.evaluation.report import write_metrics
from ovdet.grounding.ground import GroundingDetector, ground
from ovdet.grounding.metrics import IOU_THRESHOLD, check_ks, precision_at_1, recall_at_k
from ovdet.grounding.truth import GroundingItem, GroundingSet, read_grounding

__all__ = ["METRICS_FILE", "evaluate_grounding", "format_grounding"]

#: What :func:`evaluate_grounding` writes in ``config.save_dir`` (``ovdet val`` writes the same name).
METRICS_FILE = "metrics.json"


def evaluate_grounding(
    detector: GroundingDetector,
    data: PathLike | GroundingSet,
    config: EvalConfig | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, Any]:
    """Recall@k (ANY-BOX) and precision@1 of ``detector`` on grounding ground truth.

    Args:
        detector: what :func:`~ovdet.grounding.ground.ground` drives (``ovdet.Detector``); its
            vocabulary is unchanged afterwards. Free phrases need its text encoder (offline:
            ``set_text_encoder(TextConfig(family="approx_clip"))``).
        data: an ODVG ``.jsonl`` / MDETR-style ``.json`` file (read with ``config.image_dir``),
            or a set already read (:func:`~ovdet.grounding.truth.read_grounding`).
        config: ``conf`` (default 0.001), ``iou``, ``imgsz``, ``max_det``, ``batch``, ``image_dir``,
            ``save_dir`` (``metrics.json`` written there; None writes nothing), ``progress``
            (a tqdm bar); the detection-only fields (``lvis``, ``backend``, ...) do not apply.
            The summary (:func:`format_grounding`) is printed.
        ks: the ``k`` of ``R@k``; each phrase keeps its best ``max(ks)`` boxes.
        iou_threshold: a box matches a ground-truth box at this IoU or more.

    Returns:
        ``{"R@1", "R@5", "R@10", "P@1"}`` (floats in [0, 1]; NaN, written as null, when nothing is
        counted), ``images`` (evaluated), ``phrases`` (counted in R@k), ``one_box_phrases``
        (counted in P@1), ``boxes`` (ground-truth boxes), ``entries`` (in the file),
        ``skipped_boxes``, ``skipped`` (``[{"source", "reason"}]``: everything left out, the
        reader's problems included), ``images_per_s`` and ``settings``. Plain Python values.

    Raises:
        ValueError: the data has no evaluable item (the first problem is named), a bad ``k``.
        FileNotFoundError: the file or its image folder is missing.
        TextEncoderUnavailable: a phrase needs the text encoder and it cannot be built (offline).
    """
    from tqdm import tqdm

    cfg = config if config is not None else EvalConfig()
    gset = data if isinstance(data, GroundingSet) else read_grounding(data, cfg.image_dir)
    ks = check_ks(ks)  # before any image is grounded
    if not gset.items:
        first = f" (first problem: {gset.problems[0][0]}: {gset.problems[0][1]})" if gset.problems else ""
        raise ValueError(
            f"{gset.source}: no image with a grounding caption and spanned boxes to evaluate{first}; grounding "
            f"ground truth is ODVG jsonl with 'grounding' regions or an MDETR-style json (caption, tokens_positive)"
        )
    top_k = max(ks)
    skipped = [{"source": f, "reason": r} for f, r in gset.problems]
    predictions: list[list[torch.Tensor]] = []  # [image][phrase] (K, 4), K <= top_k
    truth: list[list[Any]] = []  # [image][phrase] (G, 4)
    start = time.perf_counter()
    with tqdm(total=len(gset.items), unit="img", desc="grounding", disable=not cfg.progress) as bar:
        for item in gset.items:
            boxes, reason = _ground_item(detector, item, top_k, cfg)
            bar.update(1)
            if boxes is None:
                skipped.append({"source": str(item.path), "reason": reason})
                continue
            predictions.append(boxes)
            truth.append([p.boxes for p in item.phrases])
    elapsed = time.perf_counter() - start

    recall = recall_at_k(predictions, truth, ks, iou_threshold)
    one = [(p, t) for pi, ti in zip(predictions, truth) for p, t in zip(pi, ti) if len(t) == 1]
    precision = precision_at_1([p for p, _ in one], [t for _, t in one], iou_threshold)
    metrics: dict[str, Any] = {f"R@{k}": float(recall[f"R@{k}"]) for k in ks}
    metrics["P@1"] = float(precision["P@1"])
    metrics.update(
        images=len(predictions),
        phrases=int(recall["phrases"]),
        one_box_phrases=int(precision["expressions"]),
        boxes=sum(len(t) for ti in truth for t in ti),
        entries=gset.entries,
        skipped_boxes=gset.skipped_boxes,
        skipped=skipped,
        images_per_s=len(predictions) / elapsed if elapsed > 0 else 0.0,
        settings={
            "data": gset.source,
            "conf": cfg.conf,
            "iou": cfg.iou,
            "imgsz": cfg.imgsz,
            "max_det": cfg.max_detections,
            "top_k": top_k,
            "iou_threshold": iou_threshold,
        },
    )
    print(format_grounding(metrics))
    if cfg.save_dir is not None:
        print(f"results: {write_metrics(Path(cfg.save_dir) / METRICS_FILE, metrics)}")
    return metrics


def _ground_item(
    detector: GroundingDetector, item: GroundingItem, top_k: int, cfg: EvalConfig
) -> tuple[list[torch.Tensor] | None, str]:
    """(each ground-truth phrase's best ``top_k`` boxes ``(K, 4)``, in the item's phrase order, or
    None; the reason when None)."""
    spans = [p.query_span for p in item.phrases]
    out: list[torch.Tensor] = [torch.zeros(0, 4)] * len(spans)
    for group in _disjoint_groups(spans):
        try:
            found = ground(
                detector,
                str(item.path),
                item.caption,
                spans=[spans[j] for j in group],
                top_k=top_k,
                keep_images=False,
                config=cfg.predict,
                optimize=False,  # a vocabulary of one image: folding it into a network copy costs more than it saves
            )
        except ImageReadError as e:
            return None, f"unreadable image ({e}): not evaluated"
        if not found:
            return None, "no image could be read: not evaluated"
        if found[0].image_size != item.image_size:
            h, w = found[0].image_size
            return None, (
                f"the image is {h}x{w} (h x w) but annotated as {item.image_size[0]}x{item.image_size[1]}: its boxes "
                f"would be in other pixels; not evaluated"
            )
        for j, boxes in zip(group, found[0].boxes):
            out[j] = boxes
    return out, ""


def _disjoint_groups(spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Indices of ``spans`` in groups whose spans do not overlap, first fit in order (nested
    phrases such as ``"a man"`` inside ``"a man in a red shirt"`` land in different groups)."""
    groups: list[list[int]] = []
    for i, (start, end) in enumerate(spans):
        for group in groups:
            if all(end <= spans[j][0] or spans[j][1] <= start for j in group):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def format_grounding(metrics: dict[str, Any]) -> str:
    """The summary :func:`evaluate_grounding` prints: counts, then one line of the scores."""
    recalls = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("R@"))
    lines = [
        f"grounding: {metrics['images']} images, {metrics['phrases']} phrases ({metrics['one_box_phrases']} with one "
        f"box), {metrics['boxes']} boxes; {len(metrics['skipped'])} skipped, {metrics['skipped_boxes']} boxes left out",
        f"{recalls}  P@1 {metrics['P@1']:.4f}  (ANY-BOX, IoU >= {metrics['settings']['iou_threshold']:g})",
    ]
    lines += [f"  skipped: {s['source']}: {s['reason']}" for s in metrics["skipped"][:10]]
    if len(metrics["skipped"]) > 10:
        lines.append(f"  ... and {len(metrics['skipped']) - 10} more in {METRICS_FILE}")
    return "\n".join(lines)
