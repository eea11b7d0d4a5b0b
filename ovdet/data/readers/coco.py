"""COCO and LVIS instances json → :class:`~ovdet.data.records.Dataset`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
from ovdet.structures import xywh_to_xyxy

__all__ = ["read_coco", "read_instances", "read_lvis"]


def read_coco(
    json_path: PathLike,
    image_dir: PathLike | None = None,
    *,
    verify_images: bool = False,
    require_images: bool = True,
    probe_images: bool = False,
) -> Dataset:
    """Read a COCO instances json.

    ``bbox`` ``[x, y, w, h]`` becomes xyxy pixels; ``iscrowd=1`` regions are kept with
    ``ignore=True`` (neither positive nor negative); labels index into the categories sorted by
    id; images without annotations are background records. An MDETR-style grounding json (each
    image a ``caption``, each annotation ``tokens_positive`` character spans into it) keeps both
    on the record (``caption``, ``spans``); a malformed span is reported and dropped.

    Args:
        json_path: The instances json (``images``, ``categories``, optional ``annotations``).
        image_dir: Folder the ``file_name`` of each image is relative to. Default: the first of
            ``<json dir>/../<split>``, ``<json dir>/../images/<split>``, ``<json dir>/<split>``,
            ``<json dir>/images/<split>``, ``<json dir>/..``, ``<json dir>`` (``<split>`` from the
            file name: ``instances_train2017.json`` → ``train2017``), then any folder beside or
            below the json's folder, holding the images.
        verify_images: Decode every image fully (as training does, decoder warnings reported)
            and compare its size with the json's; failures are problems. Without it, and without
            ``probe_images``, only the image files' existence is checked (the json has the sizes).
        require_images: When False, records are made from the json alone (``path`` may not
            exist; ``height``/``width`` from the json): ground truth for evaluation.
        probe_images: Read every image's header and the end of its file (no pixels decoded):
            its size is compared with the json's and truncated files are found (``ovdet
            check-data`` and training do this).

    Returns:
        The dataset; ``names`` are prompt names, ``raw_names`` the json's, ``category_ids`` the
        json's ids in the same (sorted) order.

    Raises:
        ValueError: The json cannot be parsed, lacks ``images``/``categories``, or its categories
            are no usable vocabulary (:func:`~ovdet.data.readers.common.check_vocabulary`).
        FileNotFoundError: The json, or (with ``require_images``) its image folder, is missing.
    """
    path = Path(json_path)
    return read_instances(
        load_json(path),
        path,
        image_dir,
        lvis=False,
        verify_images=verify_images,
        require_images=require_images,
        probe_images=probe_images,
    )


def read_lvis(
    json_path: PathLike,
    image_dir: PathLike | None = None,
    *,
    verify_images: bool = False,
    require_images: bool = True,
    probe_images: bool = False,
) -> Dataset:
    """Read an LVIS (v0.5 or v1) json.

    Names come from each category's ``synonyms[0]`` (else ``name``) through :func:`prompt_names`;
    ``raw_names`` are the ``name`` fields. Each record copies the image's ``neg_category_ids`` and
    ``not_exhaustive_category_ids`` (category ids, not label indices).

    Args:
        json_path: The LVIS json.
        image_dir: Folder holding the images, found as ``<basename of coco_url>``,
            ``<split of coco_url>/<basename>`` or ``file_name`` under it. Default: the first of
            ``<json dir>/..``, ``<json dir>/../images``, ``<json dir>/../coco``, ``<json dir>``,
            ``<json dir>/images`` holding them.
        verify_images: As in :func:`read_coco`.
        require_images: When False (e.g. the image-less ``lvis_val_100``), records are made from
            the json alone (``path`` may not exist).
        probe_images: As in :func:`read_coco`.

    Returns:
        The dataset.

    Raises:
        ValueError: The json cannot be parsed, lacks ``images``/``categories``, or its categories
            are no usable vocabulary (:func:`~ovdet.data.readers.common.check_vocabulary`).
        FileNotFoundError: The json, or (with ``require_images``) its image folder, is missing.
    """
    path = Path(json_path)
    return read_instances(
        load_json(path),
        path,
        image_dir,
        lvis=True,
        verify_images=verify_images,
        require_images=require_images,
        probe_images=probe_images,
    )


def _image_rels(img: Mapping[str, Any], lvis: bool) -> list[str]:
    """Candidate paths of an image relative to the image folder (empty when there are none)."""
    out: list[str] = []
    url = img.get("coco_url")
    if lvis and isinstance(url, str) and url:
        parts = url.rstrip("/").split("/")
        out.append(parts[-1])
        if len(parts) >= 2:
            out.append(f"{parts[-2]}/{parts[-1]}")
    name = img.get("file_name")
    if isinstance(name, str) and name:
        out.append(name)
    return out


def read_instances(
    data: Any,
    json_path: Path,
    image_dir: PathLike | None,
    *,
    lvis: bool,
    verify_images: bool,
    require_images: bool,
    probe_images: bool = False,
) -> Dataset:
    """COCO/LVIS json body → Dataset (see :func:`read_coco`, :func:`read_lvis`)."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{json_path}: expected a JSON object with 'images' and 'categories', got {type(data).__name__}"
        )
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{json_path}: field {key!r} is missing or not a list")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise ValueError(f"{json_path}: field 'annotations' is not a list")

    cats = []
    for c in data["categories"]:
        if (
            not isinstance(c, dict)
            or isinstance(c.get("id"), bool)
            or not isinstance(c.get("id"), int)
            or not isinstance(c.get("name"), str)
        ):
            raise ValueError(f"{json_path}: category {c!r} needs an integer 'id' and a string 'name'")
        cats.append(c)
    cats.sort(key=lambda c: c["id"])
    category_ids = [c["id"] for c in cats]
    if len(set(category_ids)) != len(category_ids):
        dup = [k for k, n in Counter(category_ids).items() if n > 1]
        raise ValueError(f"{json_path}: duplicate category ids {dup}")
    raw_names = [c["name"] for c in cats]

    def prompt_source(c: Mapping[str, Any]) -> str:
        syn = c.get("synonyms")
        if lvis and isinstance(syn, list) and syn and isinstance(syn[0], str) and syn[0].strip():
            return syn[0]
        return c["name"]

    names = prompt_names([prompt_source(c) for c in cats])
    check_vocabulary(names, raw_names, json_path, "field 'categories'")
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    report = DataReport()

    images = data["images"]
    split = json_path.stem.removeprefix("instances_")
    jd = json_path.parent
    if lvis:
        roots = [jd.parent, jd.parent / "images", jd.parent / "coco", jd, jd / "images"]
    else:
        roots = [
            jd.parent / split,
            jd.parent / "images" / split,
            jd / split,
            jd / "images" / split,
            jd.parent,
            jd.parent / "images",
            jd,
            jd / "images",
        ]
    probe = [r for r in (_image_rels(i, lvis) for i in images[:ROOT_PROBE] if isinstance(i, dict)) if r]
    root = resolve_image_root(json_path, image_dir, roots, probe, require_images)

    # Annotations grouped by image, in file order; bad ones reported here.
    by_image: dict[Any, list[tuple[dict, list[float]]]] = {}  # image id -> (annotation, xywh)
    rejected: Counter = Counter()  # image id -> its annotations skipped here
    image_ids = {i.get("id") for i in images if isinstance(i, dict)}
    for a in anns:
        if not isinstance(a, dict):
            report.problem(json_path, f"annotation {a!r} is not an object: skipped")
            report.invalid += 1
            continue
        ref = f"annotation id {a.get('id')}"
        if a.get("image_id") not in image_ids:
            report.problem(json_path, f"{ref}: image_id {a.get('image_id')!r} is not in 'images': skipped")
            report.invalid += 1
            continue
        bbox = a.get("bbox")
        try:
            if a.get("category_id") not in label_of:
                raise ValueError(f"unknown category_id {a.get('category_id')!r}")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
            xywh = [as_number(v) for v in bbox]
        except ValueError as e:
            report.problem(json_path, f"{ref} (image id {a['image_id']}): {e}: skipped")
            report.invalid += 1
            rejected[a["image_id"]] += 1
            continue
        by_image.setdefault(a["image_id"], []).append((a, xywh))

    records: list[ImageRecord] = []
    seen: set = set()
    for img in images:
        report.images += 1
        if not isinstance(img, dict) or isinstance(img.get("id"), bool) or not isinstance(img.get("id"), (int, str)):
            report.problem(json_path, f"image entry {str(img)[:120]} has no integer or string 'id': skipped")
            continue
        iid = img["id"]
        if iid in seen:
            report.problem(json_path, f"image id {iid!r} appears twice in 'images': the second is skipped")
            continue
        seen.add(iid)
        rels = _image_rels(img, lvis)
        if not rels:
            report.problem(
                json_path, f"image id {iid!r} has no 'file_name'" + (" or 'coco_url'" if lvis else "") + ": skipped"
            )
            continue
        path = image_path(root, rels)
        if path is None:
            report.problem(json_path, f"image id {iid!r}: " + escape_problem("file_name", rels[-1], root))
            continue
        size = annotated_size(path, img, report, verify_images, require_images, probe_images)
        if size is None:
            continue
        width, height = size
        pairs = by_image.get(iid, [])
        group = [a for a, _ in pairs]
        caption, spans = _grounding(img, group, rels[-1], json_path, report)
        boxes = xywh_to_xyxy([xywh for _, xywh in pairs])  # (N, 4) float64
        labels = [label_of[a["category_id"]] for a in group]
        rec = make_record(
            report,
            names,
            path=path,
            image_id=iid,
            width=width,
            height=height,
            boxes=boxes,
            labels=labels,
            texts=[names[k] for k in labels],
            ignore=[bool(a.get("iscrowd", 0)) for a in group],
            refs=[f"annotation id {a.get('id')} (image {rels[-1]})" for a in group],
            problem_file=json_path,
            neg_category_ids=img.get("neg_category_ids") or (),
            not_exhaustive_category_ids=img.get("not_exhaustive_category_ids") or (),
            rejected=rejected[iid],
            caption=caption,
            spans=spans,
        )
        if rec is not None:
            records.append(rec)
    return Dataset(records=records, names=names, raw_names=raw_names, category_ids=category_ids, report=report)


def _grounding(
    img: Mapping[str, Any], group: list[dict], name: str, json_path: Path, report: DataReport
) -> tuple[str | None, list[tuple[tuple[int, int], ...]] | None]:
    """(caption, per-annotation spans) of an MDETR-style grounding image (``caption`` on the image,
    ``tokens_positive`` on its annotations), or (None, None) for detection data; a malformed
    ``tokens_positive`` is reported and dropped (the box is kept without a span)."""
    caption = img.get("caption")
    if caption is None:
        return None, None
    if not isinstance(caption, str) or not caption.strip():
        report.problem(json_path, f"image id {img.get('id')!r} ({name}): caption {str(caption)[:40]!r} is not a string")
        return None, None
    spans: list[tuple[tuple[int, int], ...]] = []
    for a in group:
        found: tuple[tuple[int, int], ...] = ()
        if "tokens_positive" in a:
            try:
                found = parse_spans(a["tokens_positive"], caption)
            except ValueError as e:
                report.problem(
                    json_path,
                    f"annotation id {a.get('id')} (image {name}): tokens_positive {e}: dropped (the box is kept "
                    f"without a span)",
                )
        spans.append(found)
    return caption, spans
