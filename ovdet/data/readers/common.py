"""What every dataset reader shares: prompt names, image checks, box checks, records, image folders.

Every reader emits the same :class:`~ovdet.data.records.ImageRecord` (boxes float32 xyxy in
absolute pixels of the image as :func:`~ovdet.data.images.decode_image` returns it, one text per
box) and fills a :class:`~ovdet.data.records.DataReport`. Bad items never stop a dataset: a
missing or unreadable image, a label file without an image, a malformed label line, a box with
a non-finite coordinate, zero or negative size, or lying fully outside the image, an unknown
category or class index are skipped and each one is listed in ``report.problems`` with the file
it concerns. The one change made to data that is kept is clipping: a box partly outside its
image is clipped to it and counted in ``report.clipped`` (overshoots of at most
:data:`CLIP_TOLERANCE` pixels, the rounding of normalised labels, are clipped without being
reported).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovdet.data.images import ImageReadError, check_pixel_limit, probe_image_size
from ovdet.data.records import DataReport, ImageRecord

__all__ = ["CLIP_TOLERANCE", "clean_name", "prompt_names"]

PathLike = str | os.PathLike

#: Pixels a box may overshoot the image before its clipping is reported. Normalised YOLO labels
#: are written with ~6 significant digits, so real boxes touching the border overshoot by
#: ~5e-7 of the image size (coco128 has 42 such boxes); clipping those is rounding, not a change.
CLIP_TOLERANCE: float = 0.01

# How many images are probed to pick an image folder for a json whose folder is not given.
ROOT_PROBE = 16
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
    return [c if counts[c] == 1 else (" ".join(r.replace("_", " ").split()) or c) for c, r in zip(cleaned, raw_names)]


# --------------------------------------------------------------------------------------------
# Shared pieces: images, boxes, records
# --------------------------------------------------------------------------------------------


def check_image(
    path: Path, report: DataReport, verify: bool, expected: tuple[int, int] | None = None
) -> tuple[int, int] | None:
    """Size of an image file, or None (and a problem recorded) when it is missing or unreadable.

    Args:
        path: Image file.
        report: Receives the problem.
        verify: Fully verify the file (see :func:`~ovdet.data.images.probe_image_size`).
        expected: ``(width, height)`` the annotations were made for; a mismatch is a problem.
    """
    if not path.is_file():
        report.problem(path, "image file not found")
        return None
    try:
        size = probe_image_size(path, verify)
    except ImageReadError as e:  # e.g. over the pixel limit: its message says why
        report.problem(path, str(e).removeprefix(f"{path}: "))
        return None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
        report.problem(path, f"unreadable image ({type(e).__name__}: {e})")
        return None
    if expected is not None and size != expected:
        report.problem(
            path,
            f"image is {size[0]}x{size[1]} (w x h) but annotated as "
            f"{expected[0]}x{expected[1]}; boxes would not match its pixels",
        )
        return None
    return size


def annotated_size(
    path: Path, entry: Mapping[str, Any], report: DataReport, verify_images: bool, require_images: bool
) -> tuple[int, int] | None:
    """(width, height) of an image whose annotation (json entry) states its size.

    The stated size is trusted and existence is enough, unless ``verify_images`` is set or the
    size is missing, in which case the file is opened. Returns None (problem recorded) when the
    image cannot be used.
    """
    try:
        expected: tuple[int, int] | None = (int(as_number(entry["width"])), int(as_number(entry["height"])))
    except (KeyError, ValueError):
        expected = None
    if verify_images or expected is None:
        size = check_image(path, report, verify_images, expected)
        return None if size is None else (expected or size)
    try:
        check_pixel_limit(str(path), expected, None)
    except ImageReadError as e:
        report.problem(path, str(e).removeprefix(f"{path}: "))
        return None
    if require_images and not path.is_file():
        report.problem(path, "image file not found")
        return None
    return expected


def sanitize_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
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


def make_record(
    report: DataReport,
    names: Sequence[str],
    *,
    path: Path,
    image_id: int | str,
    width: int,
    height: int,
    boxes: np.ndarray,
    labels: Sequence[int],
    texts: Sequence[str],
    ignore: Sequence[bool],
    refs: Sequence[str],
    problem_file: PathLike,
    neg_category_ids: Iterable[int] = (),
    not_exhaustive_category_ids: Iterable[int] = (),
) -> ImageRecord:
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
    kept_boxes, clipped, reasons = sanitize_boxes(boxes, width, height)
    keep = [i for i, r in enumerate(reasons) if r is None]
    for i, r in enumerate(reasons):
        if r is not None:
            report.problem(problem_file, f"{refs[i]}: {r}: skipped")
    for i in np.flatnonzero(clipped):
        box = ", ".join(f"{v:.6g}" for v in np.asarray(boxes, np.float64).reshape(-1, 4)[i].tolist())
        report.problem(
            problem_file,
            f"{refs[i]}: box [{box}] partly outside the {width}x{height} image: "
            f"clipped to [{', '.join(f'{v:.6g}' for v in kept_boxes[i].tolist())}]",
        )
    report.clipped += int(clipped.sum())
    rec = ImageRecord(
        path=path,
        image_id=image_id,
        height=int(height),
        width=int(width),
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


def load_json(path: Path) -> Any:
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


def as_number(v: Any) -> float:
    """A JSON value as a float; booleans and non-numbers are rejected (ValueError)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"not a number: {v!r}")
    return float(v)


def pick_root(roots: Sequence[Path], rels: Sequence[Sequence[str]]) -> Path | None:
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


def resolve_image_root(
    ann_file: Path,
    image_dir: PathLike | None,
    default_roots: list[Path],
    rels: Sequence[Sequence[str]],
    require_images: bool,
) -> Path:
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
    found = pick_root(default_roots, rels)
    tried = list(dict.fromkeys(default_roots))
    if found is None:
        # Last resort: folders next to and below the json's folder (tiny-coco keeps its images
        # in small_coco/train_2017_small beside instances_train2017_small.json).
        near = [
            p
            for base in (ann_file.parent, ann_file.parent.parent)
            if base.is_dir()
            for p in sorted(base.iterdir())
            if p.is_dir() and p not in tried
        ]
        found = pick_root(near, rels)
        tried += near
    if found is not None:
        return found
    if require_images:
        example = rels[0][0]
        raise FileNotFoundError(
            f"cannot find the images of {ann_file} (e.g. {example!r}); tried "
            f"{', '.join(str(p) for p in tried)}. Pass the image folder explicitly "
            f"(image_dir=..., or --image-dir), or require_images=False (--annotations-only) to read "
            f"annotations only"
        )
    return default_roots[0]


def existing_file(root: Path, options: Sequence[str]) -> Path:
    """The first of ``root / option`` that is a file, else ``root / options[0]``."""
    for rel in options:
        p = root / rel
        if p.is_file():
            return p
    return root / options[0]
