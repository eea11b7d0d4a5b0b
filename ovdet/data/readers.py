"""Dataset readers: COCO json, YOLO txt + data yaml, LVIS json and ODVG jsonl → :class:`Dataset`.

Every reader emits the same :class:`ImageRecord` (boxes float32 xyxy in absolute pixels of the
image as :func:`~ovdet.data.images.decode_image` returns it, one text per box) and fills a
:class:`DataReport`. Bad items never stop a dataset: a missing or unreadable image, a label file
without an image, a malformed label line, a box with a non-finite coordinate, zero or negative
size, or lying fully outside the image, an unknown category or class index are skipped and each
one is listed in ``report.problems`` with the file it concerns. The one change made to data that
is kept is clipping: a box partly outside its image is clipped to it and counted in
``report.clipped`` (overshoots of at most :data:`CLIP_TOLERANCE` pixels, the rounding of
normalised labels, are clipped without being reported). Whole-dataset errors (unparsable
JSON/YAML, a missing split, a vocabulary that is not 0..K-1) raise ``ValueError`` or
``FileNotFoundError`` naming the file.

Public entry points: :func:`read_dataset` (dispatch on the file type), :func:`read_coco`,
:func:`read_yolo`, :func:`read_lvis`, :func:`read_odvg`, :func:`check_data`, :func:`clean_name`.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import yaml
from PIL import Image

from ovdet.data.images import IMAGE_EXTENSIONS, _truncation_reason
from ovdet.data.records import DataReport, Dataset, ImageRecord

__all__ = [
    "CLIP_TOLERANCE",
    "check_data",
    "clean_name",
    "prompt_names",
    "read_coco",
    "read_dataset",
    "read_lvis",
    "read_odvg",
    "read_yolo",
]

PathLike = Union[str, os.PathLike]

#: Pixels a box may overshoot the image before its clipping is reported. Normalised YOLO labels
#: are written with ~6 significant digits, so real boxes touching the border overshoot by
#: ~5e-7 of the image size (coco128 has 42 such boxes); clipping those is rounding, not a change.
CLIP_TOLERANCE: float = 0.01

_EXIF_ORIENTATION_TAG = 0x0112
# How many images are probed to pick an image folder for a json whose folder is not given.
_ROOT_PROBE = 16
_PAREN = re.compile(r"\([^()]*\)")


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def clean_name(name: str) -> str:
    """Turn a dataset class name into a prompt: LVIS qualifiers and underscores removed.

    ``"bolt_(for_a_door)"`` → ``"bolt"``, ``"tape_(sticky_cloth_or_paper)"`` → ``"tape"``,
    ``"traffic_light"`` → ``"traffic light"``, ``"  hot   dog "`` → ``"hot dog"``. A name that is
    only a parenthesised qualifier keeps its words (``"(x)"`` → ``"x"``) rather than becoming empty.

    Args:
        name: The raw class name.

    Returns:
        The cleaned name: no parenthesised groups, underscores as spaces, single spaces, stripped.
    """
    out = " ".join(_PAREN.sub(" ", name).replace("_", " ").split())
    if out:
        return out
    return " ".join(name.replace("(", " ").replace(")", " ").replace("_", " ").split())


def prompt_names(raw_names: Sequence[str]) -> list[str]:
    """Cleaned, distinct prompt names for a vocabulary.

    Names are cleaned with :func:`clean_name`; where two cleaned names collide (LVIS
    ``bow_(weapon)`` and ``bow_(decorative_ribbons)`` both give ``"bow"``) the colliding names keep
    their qualifier as words (``"bow (weapon)"``, ``"bow (decorative ribbons)"``), because two
    classes with one prompt would get one embedding and could never be told apart.

    Args:
        raw_names: K raw class names.

    Returns:
        K prompt names in the same order (still equal only if the raw names are).
    """
    cleaned = [clean_name(n) for n in raw_names]
    counts = Counter(cleaned)
    return [c if counts[c] == 1 else (" ".join(r.replace("_", " ").split()) or c)
            for c, r in zip(cleaned, raw_names)]


# --------------------------------------------------------------------------------------------
# Shared pieces: images, boxes, records
# --------------------------------------------------------------------------------------------


def _image_size(path: Path, verify: bool) -> tuple[int, int]:
    """Display-orientation ``(width, height)`` of an image file, from its header.

    EXIF orientations 5-8 swap width and height, as :func:`~ovdet.data.images.decode_image`
    rotates those images (ultralytics ``exif_size`` does the same).

    Args:
        path: Image file.
        verify: Also run PIL ``Image.verify()`` and the truncation check of ``decode_image``.

    Returns:
        ``(width, height)`` in pixels.

    Raises:
        OSError / ValueError / SyntaxError: the file is not a readable image (message says why).
    """
    with Image.open(path) as im:
        w, h = im.size
        orientation = 1
        # A PNG's exif is only in info when its eXIf chunk precedes the pixels; asking PNG for
        # getexif() otherwise decodes the whole image, which a size probe must not do.
        if im.format != "PNG" or "exif" in im.info:
            try:
                orientation = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            except Exception:  # noqa: BLE001 - bad metadata must not make a good image unreadable
                orientation = 1
        if verify:
            im.verify()
    if verify:
        data = np.fromfile(path, dtype=np.uint8)
        reason = _truncation_reason(data, data[:8].tobytes())
        if reason is not None:
            raise ValueError(reason)
    if w <= 0 or h <= 0:
        raise ValueError(f"image has no pixels ({w}x{h})")
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return int(w), int(h)


def _check_image(path: Path, report: DataReport, verify: bool,
                 expected: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """Size of an image file, or None (and a problem recorded) when it is missing or unreadable.

    Args:
        path: Image file.
        report: Receives the problem.
        verify: Fully verify the file (see :func:`_image_size`).
        expected: ``(width, height)`` the annotations were made for; a mismatch is a problem.
    """
    if not path.is_file():
        report.problem(path, "image file not found")
        return None
    try:
        size = _image_size(path, verify)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
        report.problem(path, f"unreadable image ({type(e).__name__}: {e})")
        return None
    if expected is not None and size != expected:
        report.problem(path, f"image is {size[0]}x{size[1]} (w x h) but annotated as "
                             f"{expected[0]}x{expected[1]}; boxes would not match its pixels")
        return None
    return size



def _annotated_size(path: Path, entry: Mapping[str, Any], report: DataReport, verify_images: bool,
                    require_images: bool) -> tuple[int, int] | None:
    """(width, height) of an image whose annotation (json entry) states its size.

    The stated size is trusted and existence is enough, unless ``verify_images`` is set or the
    size is missing, in which case the file is opened. Returns None (problem recorded) when the
    image cannot be used.
    """
    try:
        expected: tuple[int, int] | None = (int(_as_number(entry["width"])), int(_as_number(entry["height"])))
    except (KeyError, ValueError):
        expected = None
    if verify_images or expected is None:
        size = _check_image(path, report, verify_images, expected)
        return None if size is None else (expected or size)
    if require_images and not path.is_file():
        report.problem(path, "image file not found")
        return None
    return expected

def _sanitize_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Check and clip boxes to an image.

    Args:
        boxes: (N, 4) float xyxy in pixels.
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        ``(boxes, clipped, reasons)``: (N, 4) float32 clipped boxes; (N,) bool, True where the
        clipping moved a side by more than :data:`CLIP_TOLERANCE`; N reasons, None for kept boxes
        and the reason a box is dropped otherwise.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).astype(np.float32)  # (N, 4)
    reasons: list[str | None] = [None] * len(b)
    if len(b) == 0:
        return b, np.zeros(0, bool), reasons
    finite = np.isfinite(b).all(1)  # (N,)
    with np.errstate(invalid="ignore"):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]  # (N,)
        sized = finite & (w > 0) & (h > 0)
        limits = np.array([width, height, width, height], dtype=np.float32)
        c = np.clip(b, 0, limits)  # (N, 4)
        inside = sized & (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
        moved = np.abs(c - b).max(1) > CLIP_TOLERANCE  # (N,)
    for i in np.flatnonzero(~inside):
        box = "[" + ", ".join(f"{v:.6g}" for v in b[i].tolist()) + "]"
        if not finite[i]:
            reasons[i] = f"box {box} has a non-finite coordinate"
        elif not sized[i]:
            reasons[i] = f"box {box} has zero or negative size (w={w[i]:.6g}, h={h[i]:.6g})"
        else:
            reasons[i] = f"box {box} lies fully outside the {width}x{height} image"
    return c, inside & moved, reasons


def _make_record(report: DataReport, names: Sequence[str], *, path: Path, image_id: int | str,
                 width: int, height: int, boxes: np.ndarray, labels: Sequence[int], texts: Sequence[str],
                 ignore: Sequence[bool], refs: Sequence[str], problem_file: PathLike,
                 neg_category_ids: Iterable[int] = (), not_exhaustive_category_ids: Iterable[int] = ()) -> ImageRecord:
    """Check boxes, record what was dropped or clipped, count, and build the image's record.

    Args:
        report: Receives counts and problems.
        names: The vocabulary (``labels`` index into it; -1 = free phrase).
        path: Image file.
        image_id: Dataset id of the image.
        width: Image width in pixels.
        height: Image height in pixels.
        boxes: (N, 4) xyxy pixels, unchecked.
        labels: N label indices.
        texts: N per-box texts.
        ignore: N flags, True for crowd/ignore regions.
        refs: N locations for problem messages (``"line 3"``, ``"annotation id 42"``).
        problem_file: The file problems are reported against (label file, json).
        neg_category_ids: LVIS negative category ids of the image.
        not_exhaustive_category_ids: LVIS not-exhaustive category ids of the image.
    """
    kept_boxes, clipped, reasons = _sanitize_boxes(boxes, width, height)
    keep = [i for i, r in enumerate(reasons) if r is None]
    for i, r in enumerate(reasons):
        if r is not None:
            report.problem(problem_file, f"{refs[i]}: {r}: skipped")
    for i in np.flatnonzero(clipped):
        box = ", ".join(f"{v:.6g}" for v in np.asarray(boxes, np.float64).reshape(-1, 4)[i].tolist())
        report.problem(problem_file, f"{refs[i]}: box [{box}] partly outside the {width}x{height} image: "
                                     f"clipped to [{', '.join(f'{v:.6g}' for v in kept_boxes[i].tolist())}]")
    report.clipped += int(clipped.sum())
    rec = ImageRecord(
        path=path, image_id=image_id, height=int(height), width=int(width),
        boxes=kept_boxes[keep] if keep else np.zeros((0, 4), np.float32),
        texts=[texts[i] for i in keep],
        labels=np.asarray([labels[i] for i in keep], dtype=np.int64),
        ignore=np.asarray([bool(ignore[i]) for i in keep], dtype=bool),
        neg_category_ids=[int(c) for c in neg_category_ids],
        not_exhaustive_category_ids=[int(c) for c in not_exhaustive_category_ids],
    )
    positives = ~rec.ignore
    report.boxes += int(positives.sum())
    report.ignored += int(rec.ignore.sum())
    for lab in rec.labels[positives].tolist():
        if lab >= 0:
            report.per_class[names[lab]] += 1
    if rec.num_boxes:
        report.labelled += 1
    else:
        report.background += 1
    return rec


def _load_json(path: Path) -> Any:
    """Parse a JSON file; a whole-dataset error (ValueError naming the file) if it cannot be."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    except (UnicodeDecodeError, OSError) as e:
        raise ValueError(f"{path}: cannot read the file as UTF-8 JSON ({e})") from e


def _as_number(v: Any) -> float:
    """A JSON value as a float; booleans and non-numbers are rejected (ValueError)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"not a number: {v!r}")
    return float(v)


def _pick_root(roots: Sequence[Path], rels: Sequence[Sequence[str]]) -> Path | None:
    """The candidate folder holding the most of the first probed images (None if it holds none).

    Args:
        roots: Candidate image folders, in preference order.
        rels: Per probed image, its candidate paths relative to an image folder.
    """
    best, best_hits = None, 0
    for root in roots:
        if not root.is_dir():
            continue
        hits = sum(any((root / r).is_file() for r in options) for options in rels)
        if hits > best_hits:
            best, best_hits = root, hits
            if hits == len(rels):
                break
    return best


def _resolve_image_root(ann_file: Path, image_dir: PathLike | None, default_roots: list[Path],
                        rels: Sequence[Sequence[str]], require_images: bool) -> Path:
    """The folder image paths of an annotation file are relative to.

    Args:
        ann_file: The annotation file (for messages).
        image_dir: The folder the user gave, or None to search ``default_roots`` and then every
            folder beside and below the annotation file's folder.
        default_roots: Candidate folders in preference order.
        rels: Per probed image, its candidate paths relative to the image folder.
        require_images: Raise when no candidate folder holds any image.

    Raises:
        FileNotFoundError: ``image_dir`` does not exist, or no folder holds the images (naming
            every folder tried).
    """
    if image_dir is not None:
        root = Path(image_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder for {ann_file} not found: {root}")
        return root
    if not rels:
        return default_roots[0]
    found = _pick_root(default_roots, rels)
    tried = list(dict.fromkeys(default_roots))
    if found is None:
        # Last resort: folders next to and below the json's folder (tiny-coco keeps its images
        # in small_coco/train_2017_small beside instances_train2017_small.json).
        near = [p for base in (ann_file.parent, ann_file.parent.parent) if base.is_dir()
                for p in sorted(base.iterdir()) if p.is_dir() and p not in tried]
        found = _pick_root(near, rels)
        tried += near
    if found is not None:
        return found
    if require_images:
        example = rels[0][0]
        raise FileNotFoundError(
            f"cannot find the images of {ann_file} (e.g. {example!r}); tried "
            f"{', '.join(str(p) for p in tried)}. Pass the image folder explicitly "
            f"(image_dir=..., or --image-dir), or require_images=False (--annotations-only) to read "
            f"annotations only")
    return default_roots[0]


def _existing(root: Path, options: Sequence[str]) -> Path:
    """The first of ``root / option`` that is a file, else ``root / options[0]``."""
    for rel in options:
        p = root / rel
        if p.is_file():
            return p
    return root / options[0]


# --------------------------------------------------------------------------------------------
# COCO and LVIS json
# --------------------------------------------------------------------------------------------


def read_coco(json_path: PathLike, image_dir: PathLike | None = None, *, verify_images: bool = False,
              require_images: bool = True) -> Dataset:
    """Read a COCO instances json.

    ``bbox`` ``[x, y, w, h]`` becomes xyxy pixels; ``iscrowd=1`` regions are kept with
    ``ignore=True`` (neither positive nor negative); labels index into the categories sorted by
    id; images without annotations are background records.

    Args:
        json_path: The instances json (``images``, ``categories``, optional ``annotations``).
        image_dir: Folder the ``file_name`` of each image is relative to. Default: the first of
            ``<json dir>/../<split>``, ``<json dir>/../images/<split>``, ``<json dir>/<split>``,
            ``<json dir>/images/<split>``, ``<json dir>/..``, ``<json dir>`` (``<split>`` from the
            file name: ``instances_train2017.json`` → ``train2017``), then any folder beside or
            below the json's folder, holding the images.
        verify_images: Open every image with PIL (``Image.verify()`` plus a truncation check) and
            compare its size with the json's; failures are problems. Without it only the image
            files' existence is checked (the json has the sizes).
        require_images: When False, records are made from the json alone (``path`` may not
            exist; ``height``/``width`` from the json): ground truth for evaluation.

    Returns:
        The dataset; ``names`` are prompt names, ``raw_names`` the json's, ``category_ids`` the
        json's ids in the same (sorted) order.

    Raises:
        ValueError: The json cannot be parsed or lacks ``images``/``categories``.
        FileNotFoundError: The json, or (with ``require_images``) its image folder, is missing.
    """
    path = Path(json_path)
    return _read_instances(_load_json(path), path, image_dir, lvis=False, verify_images=verify_images,
                           require_images=require_images)


def read_lvis(json_path: PathLike, image_dir: PathLike | None = None, *, verify_images: bool = False,
              require_images: bool = True) -> Dataset:
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

    Returns:
        The dataset.

    Raises:
        ValueError: The json cannot be parsed or lacks ``images``/``categories``.
        FileNotFoundError: The json, or (with ``require_images``) its image folder, is missing.
    """
    path = Path(json_path)
    return _read_instances(_load_json(path), path, image_dir, lvis=True, verify_images=verify_images,
                           require_images=require_images)


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


def _read_instances(data: Any, json_path: Path, image_dir: PathLike | None, *, lvis: bool,
                    verify_images: bool, require_images: bool) -> Dataset:
    """COCO/LVIS json body → Dataset (see :func:`read_coco`, :func:`read_lvis`)."""
    if not isinstance(data, dict):
        raise ValueError(f"{json_path}: expected a JSON object with 'images' and 'categories', "
                         f"got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{json_path}: field {key!r} is missing or not a list")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise ValueError(f"{json_path}: field 'annotations' is not a list")

    cats = []
    for c in data["categories"]:
        if not isinstance(c, dict) or isinstance(c.get("id"), bool) or not isinstance(c.get("id"), int) \
                or not isinstance(c.get("name"), str):
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
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    report = DataReport()

    images = data["images"]
    split = json_path.stem.removeprefix("instances_")
    jd = json_path.parent
    if lvis:
        roots = [jd.parent, jd.parent / "images", jd.parent / "coco", jd, jd / "images"]
    else:
        roots = [jd.parent / split, jd.parent / "images" / split, jd / split, jd / "images" / split,
                 jd.parent, jd.parent / "images", jd, jd / "images"]
    probe = [r for r in (_image_rels(i, lvis) for i in images[:_ROOT_PROBE] if isinstance(i, dict)) if r]
    root = _resolve_image_root(json_path, image_dir, roots, probe, require_images)

    # Annotations grouped by image, in file order; bad ones reported here.
    by_image: dict[Any, list[tuple[dict, list[float]]]] = {}  # image id -> (annotation, xywh)
    image_ids = {i.get("id") for i in images if isinstance(i, dict)}
    for a in anns:
        if not isinstance(a, dict):
            report.problem(json_path, f"annotation {a!r} is not an object: skipped")
            continue
        ref = f"annotation id {a.get('id')}"
        if a.get("image_id") not in image_ids:
            report.problem(json_path, f"{ref}: image_id {a.get('image_id')!r} is not in 'images': skipped")
            continue
        if a.get("category_id") not in label_of:
            report.problem(json_path, f"{ref} (image id {a['image_id']}): unknown category_id "
                                      f"{a.get('category_id')!r}: skipped")
            continue
        bbox = a.get("bbox")
        try:
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
            xywh = [_as_number(v) for v in bbox]
        except ValueError as e:
            report.problem(json_path, f"{ref} (image id {a['image_id']}): {e}: skipped")
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
            report.problem(json_path, f"image id {iid!r} has no 'file_name'" + (" or 'coco_url'" if lvis else "")
                           + ": skipped")
            continue
        path = _existing(root, rels)
        size = _annotated_size(path, img, report, verify_images, require_images)
        if size is None:
            continue
        width, height = size
        pairs = by_image.get(iid, [])
        group = [a for a, _ in pairs]
        boxes = np.array([[x, y, x + w, y + h] for _, (x, y, w, h) in pairs], dtype=np.float64).reshape(-1, 4)
        labels = [label_of[a["category_id"]] for a in group]
        records.append(_make_record(
            report, names, path=path, image_id=iid, width=width, height=height, boxes=boxes, labels=labels,
            texts=[names[k] for k in labels], ignore=[bool(a.get("iscrowd", 0)) for a in group],
            refs=[f"annotation id {a.get('id')} (image {rels[-1]})" for a in group], problem_file=json_path,
            neg_category_ids=img.get("neg_category_ids") or (),
            not_exhaustive_category_ids=img.get("not_exhaustive_category_ids") or ()))
    return Dataset(records=records, names=names, raw_names=raw_names, category_ids=category_ids, report=report)


# --------------------------------------------------------------------------------------------
# YOLO txt + data yaml
# --------------------------------------------------------------------------------------------


def _label_path(image: PathLike) -> str:
    """The label file of an image, found the way ultralytics finds it.

    The last ``/images/`` component becomes ``/labels/`` and the extension becomes ``.txt``
    (``ultralytics.data.utils.img2label_paths``).
    """
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return sb.join(os.fspath(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt"


def _yolo_names(raw: Any, yaml_path: Path) -> list[str]:
    """``names`` of a data yaml (list, or dict with keys 0..K-1) as a list."""
    if isinstance(raw, list) and all(isinstance(n, (str, int, float)) for n in raw):
        return [str(n) for n in raw]
    if isinstance(raw, dict):
        try:
            keyed = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"{yaml_path}: 'names' keys must be class indices 0..K-1 ({e})") from e
        if sorted(keyed) != list(range(len(keyed))):
            raise ValueError(f"{yaml_path}: 'names' keys must be 0..{len(keyed) - 1} without gaps, "
                             f"got {sorted(keyed)[:10]}{'...' if len(keyed) > 10 else ''}")
        return [keyed[i] for i in range(len(keyed))]
    raise ValueError(f"{yaml_path}: 'names' must be a list or a {{index: name}} mapping, got {raw!r}")


def _split_sources(data: Mapping[str, Any], yaml_path: Path, split: str) -> list[Path]:
    """The split's image sources (folders, list files, images) resolved like ultralytics does.

    The dataset root is ``path`` (absolute, else relative to the yaml's folder; if that does not
    exist but the path exists relative to the working directory, as ultralytics resolves it, that
    one), or the yaml's folder when ``path`` is absent. Each split entry is relative to the root;
    a missing ``../x`` entry falls back to ``root/x`` (ultralytics does the same).
    """
    base = data.get("path")
    if base:
        p = Path(str(base)).expanduser()
        if p.is_absolute():
            root = p
        else:
            root = yaml_path.parent / p
            if not root.exists() and p.exists():
                root = p
    else:
        root = yaml_path.parent
    entry = data.get(split)
    if not entry:
        keys = [k for k in ("train", "val", "test", "minival") if data.get(k)]
        raise ValueError(f"{yaml_path}: no {split!r} split (splits present: {keys or 'none'})")
    out = []
    for e in entry if isinstance(entry, list) else [entry]:
        p = (root / str(e)).resolve()
        if not p.exists() and str(e).startswith("../"):
            p = (root / str(e)[3:]).resolve()
        if not p.exists():
            raise FileNotFoundError(f"{yaml_path}: split {split!r} entry {e!r} not found at {p}")
        out.append(p)
    return out


def _list_images(sources: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Image files of a split and the folders that were listed (for orphan-label search).

    Folders are searched recursively for files with an image extension; a ``.txt`` file lists one
    image per line (``./x`` and other relative lines are relative to the list's folder).
    """
    images: list[Path] = []
    dirs: list[Path] = []
    for src in sources:
        if src.is_dir():
            dirs.append(src)
            images += [Path(f) for f in glob.glob(os.path.join(glob.escape(str(src)), "**", "*.*"), recursive=True)
                       if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(f)]
        elif src.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(src)
        else:
            try:
                lines = src.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"{src}: cannot read the image list ({e})") from e
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line)
                    images.append(p if p.is_absolute() else (src.parent / p).resolve())
    return sorted(images), dirs


def _parse_label_file(label_file: Path, num_classes: int, report: DataReport,
                      ) -> tuple[np.ndarray, list[int], list[str]] | None:
    """Normalised boxes of one YOLO label file, bad lines reported and skipped.

    A line is ``class cx cy w h`` (normalised to [0, 1]) or a polygon ``class x1 y1 x2 y2 x3 y3 ...``
    (three or more points; its bounding box is used, as ultralytics does for segment labels).

    Returns:
        ``(boxes, classes, refs)`` with ``boxes`` (N, 4) normalised xyxy, or None when the file
        cannot be read at all (reported; the image is then skipped, not taken as background).
    """
    try:
        text = label_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        report.problem(label_file, f"cannot read the label file ({e}): image skipped")
        return None
    boxes: list[list[float]] = []
    classes: list[int] = []
    refs: list[str] = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        cols = len(parts)
        if cols != 5 and (cols < 7 or cols % 2 == 0):
            report.problem(label_file, f"line {n}: {cols} columns, expected 5 (class cx cy w h) or a polygon "
                                       f"(class x1 y1 x2 y2 x3 y3 ...): {line.strip()[:80]!r}: skipped")
            continue
        try:
            values = [float(v) for v in parts]
        except ValueError:
            report.problem(label_file, f"line {n}: non-numeric value in {line.strip()[:80]!r}: skipped")
            continue
        cls = values[0]
        if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes:
            report.problem(label_file, f"line {n}: class index {parts[0]!r} out of range 0..{num_classes - 1}: skipped")
            continue
        if cols == 5:
            cx, cy, w, h = values[1:]
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        else:
            xs, ys = values[1::2], values[2::2]
            boxes.append([min(xs), min(ys), max(xs), max(ys)])
        classes.append(int(cls))
        refs.append(f"line {n}")
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), classes, refs


def read_yolo(data_yaml: PathLike, split: str = "train", *, verify_images: bool = False) -> Dataset:
    """Read an ultralytics-style YOLO dataset through its data yaml.

    The yaml has ``names`` (list, or mapping 0..K-1), an optional ``path`` (dataset root) and the
    split (``train``/``val``/``test``): a folder, a ``.txt`` list of images, or a list of those.
    Each image's label file is found as ultralytics finds it (last ``/images/`` → ``/labels/``,
    extension → ``.txt``); normalised ``class cx cy w h`` lines become xyxy pixels of the image's
    display size (read from the header, EXIF orientation applied as ``decode_image`` applies it).
    An image without a label file, or with an empty one, is a background image; a label file in
    a split folder's labels folder without an image is a problem.

    Args:
        data_yaml: The data yaml.
        split: Which split to read.
        verify_images: Also run PIL ``Image.verify()`` and a truncation check on every image.

    Returns:
        The dataset; ``names`` are prompt names (:func:`prompt_names`), ``category_ids`` 0..K-1,
        ``image_id`` the file stem (the path without extension when stems repeat).

    Raises:
        ValueError: The yaml cannot be parsed, or lacks the split or valid ``names``.
        FileNotFoundError: The yaml or a split entry does not exist.
    """
    yaml_path = Path(data_yaml)
    if not yaml_path.is_file():
        raise FileNotFoundError(f"data yaml not found: {yaml_path}")
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{yaml_path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{yaml_path}: expected a mapping with 'names' and splits, got {type(data).__name__}")
    if "names" not in data:
        raise ValueError(f"{yaml_path}: field 'names' is missing")
    raw_names = _yolo_names(data["names"], yaml_path)
    names = prompt_names(raw_names)
    images, dirs = _list_images(_split_sources(data, yaml_path, split))
    report = DataReport()

    stems = Counter(p.stem for p in images)
    records: list[ImageRecord] = []
    used_labels: set[str] = set()
    for image in images:
        report.images += 1
        label_file = Path(_label_path(image))
        used_labels.add(os.path.normpath(label_file))
        size = _check_image(image, report, verify_images)
        if size is None:
            continue
        width, height = size
        if label_file.is_file():
            parsed = _parse_label_file(label_file, len(names), report)
            if parsed is None:
                continue
            norm, classes, refs = parsed
        else:
            norm, classes, refs = np.zeros((0, 4)), [], []
        boxes = norm * np.array([width, height, width, height], dtype=np.float64)  # (N, 4) pixels
        image_id = image.stem if stems[image.stem] == 1 else image.with_suffix("").as_posix()
        records.append(_make_record(
            report, names, path=image, image_id=image_id, width=width, height=height, boxes=boxes,
            labels=classes, texts=[names[c] for c in classes], ignore=[False] * len(classes), refs=refs,
            problem_file=label_file))

    # Label files in the labels folders of the listed image folders that no image claims.
    for d in dirs:
        label_dir = Path(_label_path(d / "x.jpg")).parent
        if not label_dir.is_dir():
            continue
        for f in sorted(glob.glob(os.path.join(glob.escape(str(label_dir)), "**", "*.txt"), recursive=True)):
            if os.path.normpath(f) not in used_labels:
                used_labels.add(os.path.normpath(f))
                report.problem(f, "label file without an image: ignored")
    return Dataset(records=records, names=names, raw_names=raw_names,
                   category_ids=list(range(len(names))), report=report)


# --------------------------------------------------------------------------------------------
# ODVG jsonl (Open-GroundingDino / mmdet grounding layout)
# --------------------------------------------------------------------------------------------


def _odvg_label_map(label_map: PathLike | Mapping[Any, str]) -> dict[int, str]:
    """An ODVG label map (``{"0": "person", ...}``; file or mapping) as ``{int: name}``."""
    src = label_map
    if not isinstance(label_map, Mapping):
        label_map = _load_json(Path(label_map))
    if not isinstance(label_map, Mapping):
        raise ValueError(f"{src}: a label map must be a JSON object {{\"0\": \"name\", ...}}")
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
        out.append([_as_number(v) for v in b])
    return out


def read_odvg(jsonl_path: PathLike, image_root: PathLike | None = None, *,
              label_map: PathLike | Mapping[Any, str] | None = None, verify_images: bool = False,
              require_images: bool = True) -> Dataset:
    """Read an ODVG jsonl file (Open-GroundingDino ``data_format.md``), one image per line.

    A line is ``{"filename", "height", "width", ...}`` with either or both of:

    - ``"grounding": {"caption", "regions": [{"bbox": [x1, y1, x2, y2], "phrase", "tokens_positive"}]}``:
      each region's phrase becomes the text of its box(es) (``bbox`` may also be a list of
      boxes), with label -1 (free phrase, not in the vocabulary);
    - ``"detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label", "category"}]}``: the
      vocabulary is ``label_map`` when given (``label`` indexes it), else the distinct
      ``category`` names ordered by their ``label``; labels index into ``names``.

    Boxes are xyxy pixels. ``caption`` and ``tokens_positive`` are not kept (texts are phrases).

    Args:
        jsonl_path: The jsonl file.
        image_root: Folder ``filename`` is relative to (default: the jsonl's folder, or an
            ``images`` folder beside or above it, whichever holds the images).
        label_map: ``{"0": "person", ...}`` (a json file or a mapping) for detection lines.
        verify_images: As in :func:`read_coco`.
        require_images: When False, records are made from the jsonl alone.

    Returns:
        The dataset; ``category_ids`` are the ODVG ``label`` values.

    Raises:
        ValueError: No line of the file is valid JSON, or the label map is malformed.
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
                if not (isinstance(inst, dict) and isinstance(inst.get("label"), int)
                        and isinstance(inst.get("category"), str)):
                    continue
                name = by_label.setdefault(inst["label"], inst["category"])
                if name != inst["category"]:
                    report.problem(path, f"line {n}: label {inst['label']} is named {inst['category']!r} here "
                                         f"but {name!r} earlier; the first name is used (pass a label_map)")
    category_ids = sorted(by_label)
    raw_names = [by_label[k] for k in category_ids]
    names = prompt_names(raw_names)
    label_of = {cid: i for i, cid in enumerate(category_ids)}

    roots = [path.parent, path.parent / "images", path.parent.parent / "images", path.parent.parent]
    probe = [[obj["filename"]] for _, obj in entries[:_ROOT_PROBE]]
    root = _resolve_image_root(path, image_root, roots, probe, require_images)

    records: list[ImageRecord] = []
    for n, obj in entries:
        report.images += 1
        image = root / obj["filename"]
        expected = _annotated_size(image, obj, report, verify_images, require_images)
        if expected is None:
            continue
        boxes: list[list[float]] = []
        labels: list[int] = []
        texts: list[str] = []
        refs: list[str] = []
        for k, inst in enumerate(instances(obj)):
            ref = f"line {n} ({obj['filename']}), detection instance {k}"
            try:
                if not isinstance(inst, dict):
                    raise ValueError("not an object")
                box = _odvg_boxes(inst.get("bbox"))[0]
                lab = inst.get("label")
                if lab not in label_of:
                    raise ValueError(f"label {lab!r} is not in the vocabulary "
                                     f"({'label map' if label_map is not None else 'no category name given for it'})")
            except ValueError as e:
                report.problem(path, f"{ref}: {e}: skipped")
                continue
            boxes.append(box)
            labels.append(label_of[lab])
            texts.append(names[label_of[lab]])
            refs.append(ref)
        grounding = obj.get("grounding")
        regions = grounding.get("regions", []) if isinstance(grounding, dict) else []
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
                continue
            for box in region_boxes:
                boxes.append(box)
                labels.append(-1)
                texts.append(" ".join(phrase.split()))
                refs.append(ref)
        image_id = obj["image_id"] if isinstance(obj.get("image_id"), (int, str)) else Path(obj["filename"]).stem
        records.append(_make_record(
            report, names, path=image, image_id=image_id,
            width=expected[0], height=expected[1], boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
            labels=labels, texts=texts, ignore=[False] * len(boxes), refs=refs, problem_file=path))
    return Dataset(records=records, names=names, raw_names=raw_names, category_ids=category_ids, report=report)


# --------------------------------------------------------------------------------------------
# Dispatch and check
# --------------------------------------------------------------------------------------------


def read_dataset(spec: PathLike, split: str = "train", *, image_dir: PathLike | None = None,
                 verify_images: bool = False, require_images: bool = True) -> Dataset:
    """Read any supported dataset, chosen by the spec's file type.

    ``.yaml``/``.yml`` → :func:`read_yolo` (``split`` picks the split); ``.json`` → :func:`read_lvis`
    when its images carry ``neg_category_ids``, else :func:`read_coco`; ``.jsonl`` →
    :func:`read_odvg`.

    Args:
        spec: The data yaml, instances json or ODVG jsonl.
        split: YOLO split to read (ignored for json/jsonl, whose file is the split).
        image_dir: Image folder for json/jsonl (default: found next to the file); not for YOLO.
        verify_images: Verify every image file (see :func:`read_coco`).
        require_images: json/jsonl only: False reads annotations without looking for images.

    Raises:
        ValueError: Unsupported file type, ``image_dir`` given for a YOLO yaml, or an unreadable file.
        FileNotFoundError: The spec does not exist.
    """
    path = Path(spec)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    if suffix in {".yaml", ".yml"}:
        if image_dir is not None:
            raise ValueError(f"{path}: image_dir does not apply to a YOLO data yaml (its splits name the images)")
        return read_yolo(path, split, verify_images=verify_images)
    if suffix == ".json":
        data = _load_json(path)
        images = data.get("images") if isinstance(data, dict) else None
        lvis = isinstance(images, list) and any(isinstance(i, dict) and "neg_category_ids" in i for i in images)
        return _read_instances(data, path, image_dir, lvis=lvis, verify_images=verify_images,
                               require_images=require_images)
    if suffix == ".jsonl":
        return read_odvg(path, image_dir, verify_images=verify_images, require_images=require_images)
    raise ValueError(f"{path}: unsupported dataset file type {suffix!r}; expected a data .yaml (YOLO), "
                     f"an instances .json (COCO/LVIS) or an ODVG .jsonl")


def check_data(spec: PathLike, split: str = "train", *, image_dir: PathLike | None = None,
               verify_images: bool = False, require_images: bool = True) -> DataReport:
    """Read a dataset and return what the reader found (the body of ``ovdet check-data``).

    Args:
        spec: As in :func:`read_dataset`.
        split: As in :func:`read_dataset`.
        image_dir: As in :func:`read_dataset`.
        verify_images: As in :func:`read_dataset`.
        require_images: As in :func:`read_dataset`.

    Returns:
        The dataset's report: counts, per-class positives and every problem with its file.
    """
    return read_dataset(spec, split, image_dir=image_dir, verify_images=verify_images,
                        require_images=require_images).report
