"""ODVG grounding/detection jsonl (Open-GroundingDino, mmdet) → :class:`~ovdet.data.records.Dataset`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ovdet.data.readers.common import (
    ROOT_PROBE,
    PathLike,
    annotated_size,
    as_number,
    check_vocabulary,
    escape_problem,
    image_path,
    load_json,
    make_record,
    parse_spans,
    prompt_names,
    resolve_image_root,
)
from ovdet.data.records import DataReport, Dataset, ImageRecord

__all__ = ["read_odvg"]


def _odvg_label_map(label_map: PathLike | Mapping[Any, str]) -> dict[int, str]:
    """An ODVG label map (``{"0": "person", ...}``; file or mapping) as ``{int: name}``."""
    src = label_map
    if not isinstance(label_map, Mapping):
        label_map = load_json(Path(label_map))
    if not isinstance(label_map, Mapping):
        raise ValueError(f'{src}: a label map must be a JSON object {{"0": "name", ...}}')
    try:
        return {int(k): str(v) for k, v in label_map.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{src}: label map keys must be integers ({e})") from e


def _odvg_boxes(value: Any) -> list[list[float]]:
    """A region's ``bbox``: one ``[x1, y1, x2, y2]`` or a list of them (ValueError otherwise)."""
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        boxes = value
    else:
        boxes = [value]
    out = []
    for b in boxes:
        if not isinstance(b, list) or len(b) != 4:
            raise ValueError(f"bbox must be [x1, y1, x2, y2], got {b!r}")
        out.append([as_number(v) for v in b])
    return out


def read_odvg(
    jsonl_path: PathLike,
    image_root: PathLike | None = None,
    *,
    label_map: PathLike | Mapping[Any, str] | None = None,
    verify_images: bool = False,
    require_images: bool = True,
    probe_images: bool = False,
) -> Dataset:
    """Read an ODVG jsonl file (Open-GroundingDino ``data_format.md``), one image per line.

    A line is ``{"filename", "height", "width", ...}`` with either or both of:

    - ``"grounding": {"caption", "regions": [{"bbox": [x1, y1, x2, y2], "phrase", "tokens_positive"}]}``:
      each region's phrase becomes the text of its box(es) (``bbox`` may also be a list of
      boxes), with label -1 (free phrase, not in the vocabulary);
    - ``"detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label", "category"}]}``: the
      vocabulary is ``label_map`` when given (``label`` indexes it), else the distinct
      ``category`` names ordered by their ``label``; labels index into ``names``.

    Boxes are xyxy pixels. The caption is kept as the record's ``caption`` and each region's
    ``tokens_positive`` (``[[start, end], ...]`` character spans into it) as its boxes' ``spans``
    (:func:`~ovdet.data.readers.common.parse_spans`), for grounding evaluation
    (:mod:`ovdet.grounding.truth`); training reads the phrase texts. A ``tokens_positive`` that
    is malformed or points outside the caption is reported and dropped (the region is kept, with
    no span). A ``filename`` must stay inside the image folder (an absolute path or ``..``
    leaving it is skipped and reported).

    Args:
        jsonl_path: The jsonl file.
        image_root: Folder ``filename`` is relative to (default: the jsonl's folder, or an
            ``images`` folder beside or above it, whichever holds the images).
        label_map: ``{"0": "person", ...}`` (a json file or a mapping) for detection lines.
        verify_images: As in :func:`read_coco`.
        require_images: When False, records are made from the jsonl alone.
        probe_images: As in :func:`read_coco`.

    Returns:
        The dataset; ``category_ids`` are the ODVG ``label`` values.

    Raises:
        ValueError: No line of the file is valid JSON, the label map is malformed, or the
            vocabulary is unusable (:func:`~ovdet.data.readers.common.check_vocabulary`).
        FileNotFoundError: The file, or (with ``require_images``) its image folder, is missing.
    """
    path = Path(jsonl_path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    report = DataReport()
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the file as UTF-8 JSON lines ({e})") from e
    entries: list[tuple[int, dict]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            report.images += 1
            report.problem(path, f"line {n}: not valid JSON ({e}): skipped")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("filename"), str) or not obj["filename"]:
            report.images += 1
            report.problem(path, f"line {n}: expected an object with a 'filename': skipped")
            continue
        entries.append((n, obj))
    if not entries and report.problems:
        raise ValueError(f"{path}: no line is a valid ODVG JSON object (first problem: {report.problems[0][1]})")

    def instances(obj: dict) -> list:
        det = obj.get("detection")
        return det.get("instances", []) if isinstance(det, dict) and isinstance(det.get("instances"), list) else []

    # Vocabulary of the detection lines.
    if label_map is not None:
        by_label = _odvg_label_map(label_map)
    else:
        by_label = {}
        for n, obj in entries:
            for inst in instances(obj):
                if not (
                    isinstance(inst, dict)
                    and isinstance(inst.get("label"), int)
                    and isinstance(inst.get("category"), str)
                ):
                    continue
                name = by_label.setdefault(inst["label"], inst["category"])
                if name != inst["category"]:
                    report.problem(
                        path,
                        f"line {n}: label {inst['label']} is named {inst['category']!r} here "
                        f"but {name!r} earlier; the first name is used (pass a label_map)",
                    )
    category_ids = sorted(by_label)
    raw_names = [by_label[k] for k in category_ids]
    names = prompt_names(raw_names)
    check_vocabulary(names, raw_names, path, "label map" if label_map is not None else "detection categories")
    label_of = {cid: i for i, cid in enumerate(category_ids)}

    roots = [path.parent, path.parent / "images", path.parent.parent / "images", path.parent.parent]
    probe = [[obj["filename"]] for _, obj in entries[:ROOT_PROBE]]
    root = resolve_image_root(path, image_root, roots, probe, require_images)

    records: list[ImageRecord] = []
    for n, obj in entries:
        report.images += 1
        image = image_path(root, [obj["filename"]])
        if image is None:
            report.problem(path, f"line {n}: " + escape_problem("filename", obj["filename"], root))
            continue
        expected = annotated_size(image, obj, report, verify_images, require_images, probe_images)
        if expected is None:
            continue
        rejected = 0
        boxes: list[list[float]] = []
        labels: list[int] = []
        texts: list[str] = []
        refs: list[str] = []
        spans: list[tuple[tuple[int, int], ...]] = []
        for k, inst in enumerate(instances(obj)):
            ref = f"line {n} ({obj['filename']}), detection instance {k}"
            try:
                if not isinstance(inst, dict):
                    raise ValueError("not an object")
                box = _odvg_boxes(inst.get("bbox"))[0]
                lab = inst.get("label")
                if lab not in label_of:
                    raise ValueError(
                        f"label {lab!r} is not in the vocabulary "
                        f"({'label map' if label_map is not None else 'no category name given for it'})"
                    )
            except ValueError as e:
                report.problem(path, f"{ref}: {e}: skipped")
                report.invalid += 1
                rejected += 1
                continue
            boxes.append(box)
            labels.append(label_of[lab])
            texts.append(names[label_of[lab]])
            refs.append(ref)
            spans.append(())
        grounding = obj.get("grounding")
        regions = grounding.get("regions", []) if isinstance(grounding, dict) else []
        caption = grounding.get("caption") if isinstance(grounding, dict) else None
        if caption is not None and (not isinstance(caption, str) or not caption.strip()):
            report.problem(
                path, f"line {n} ({obj['filename']}): grounding caption {str(caption)[:40]!r} is not a non-empty string"
            )
            caption = None
        for k, reg in enumerate(regions if isinstance(regions, list) else []):
            ref = f"line {n} ({obj['filename']}), grounding region {k}"
            try:
                if not isinstance(reg, dict):
                    raise ValueError("not an object")
                phrase = reg.get("phrase")
                if not isinstance(phrase, str) or not phrase.strip():
                    raise ValueError(f"phrase must be a non-empty string, got {phrase!r}")
                region_boxes = _odvg_boxes(reg.get("bbox"))
            except ValueError as e:
                report.problem(path, f"{ref}: {e}: skipped")
                report.invalid += 1
                rejected += 1
                continue
            region_spans: tuple[tuple[int, int], ...] = ()
            if "tokens_positive" in reg:
                try:
                    region_spans = parse_spans(reg["tokens_positive"], caption)
                except ValueError as e:
                    report.problem(path, f"{ref}: tokens_positive {e}: dropped (the region is kept without a span)")
            for box in region_boxes:
                boxes.append(box)
                labels.append(-1)
                texts.append(" ".join(phrase.split()))
                refs.append(ref)
                spans.append(region_spans)
        image_id = obj["image_id"] if isinstance(obj.get("image_id"), (int, str)) else Path(obj["filename"]).stem
        rec = make_record(
            report,
            names,
            path=image,
            image_id=image_id,
            width=expected[0],
            height=expected[1],
            boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
            labels=labels,
            texts=texts,
            ignore=[False] * len(boxes),
            refs=refs,
            problem_file=path,
            rejected=rejected,
            caption=caption,
            spans=spans,
        )
        if rec is not None:
            records.append(rec)
    return Dataset(records=records, names=names, raw_names=raw_names, category_ids=category_ids, report=report)
