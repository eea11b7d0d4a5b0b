"""What every dataset reader shares: prompt names, image checks, box checks, records, image folders.

Every reader emits the same :class:`~ovdet.data.records.ImageRecord` (boxes float32 xyxy in
absolute pixels of the image as :func:`~ovdet.data.images.decode_image` returns it, one text per
box) and fills a :class:`~ovdet.data.records.DataReport`. Bad items never stop a dataset: a
missing or unreadable image, a label file without an image, a malformed label line, a box with
a non-finite coordinate, zero or negative size, or lying fully outside the image, an unknown
category or class index are skipped and each one is listed in ``report.problems`` with the file
it concerns (the boxes are counted in ``report.invalid``). An image whose every box is invalid is
skipped too: kept as a background image its objects would be trained as negatives (a truly empty
label file, or an image without annotations, is a background image). An image path of an
annotation file must stay inside the image folder: an absolute path or ``..`` leaving it is
skipped and named (:func:`inside`). The vocabulary is checked before anything else
(:func:`check_vocabulary`: distinct, non-empty names, at most :data:`MAX_CLASSES` of them); a
bad one is a whole-dataset error. The one change made to data that is kept is clipping: a box
partly outside its image is clipped to it and counted in ``report.clipped`` (overshoots of at
most :data:`CLIP_TOLERANCE` pixels, the rounding of normalised labels, are clipped without being
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

from ovdet.data.images import ImageReadError, check_pixel_limit, decode_image, env_limit, probe_image_size
from ovdet.data.records import DataReport, ImageRecord

__all__ = [
    "CLIP_TOLERANCE",
    "MAX_CLASSES",
    "check_vocabulary",
    "clean_name",
    "parse_spans",
    "prompt_names",
    "resolve_max_classes",
]

PathLike = str | os.PathLike
Span = tuple[int, int]

#: Pixels a box may overshoot the image before its clipping is reported. Normalised YOLO labels
#: are written with ~6 significant digits, so real boxes touching the border overshoot by
#: ~5e-7 of the image size (coco128 has 42 such boxes); clipping those is rounding, not a change.
CLIP_TOLERANCE: float = 0.01

#: Most classes a dataset may have (``$OVDET_MAX_CLASSES`` overrides it; 0 = no limit). The largest
#: detection vocabularies in use are V3Det (13,204 classes), LVIS (1,203), OpenImages (601) and
#: Objects365 (365); every class is embedded by the text encoder before the first step and scored
#: at every anchor, so a vocabulary far beyond those is almost always a mistake (a category per
#: annotation, a caption per category) that would spend minutes embedding before failing.
MAX_CLASSES: int = 20_000
MAX_CLASSES_ENV = "OVDET_MAX_CLASSES"

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


def resolve_max_classes() -> int:
    """The class limit in force: ``$OVDET_MAX_CLASSES`` when set, else :data:`MAX_CLASSES`; 0 = none.

    Raises:
        ValueError: the environment value is not an integer >= 0 (named).
    """
    return env_limit(MAX_CLASSES_ENV, MAX_CLASSES, "class count")


def check_vocabulary(names: Sequence[str], raw_names: Sequence[str], file: PathLike, field: str) -> None:
    """Refuse a vocabulary training could not finish with, before any image is read or text embedded.

    A checkpoint, and the detector after training, need distinct non-empty names (two classes with
    one prompt get one embedding and can never be told apart), and every name is embedded before
    the first step, so more than :func:`resolve_max_classes` names are refused too. An empty
    vocabulary passes (grounding data has phrases, not classes).

    Args:
        names: K prompt names (:func:`prompt_names`), the ones that are embedded.
        raw_names: the K names as the file spells them (for the message).
        file: the file holding them.
        field: where in it (``"field 'names'"``, ``"field 'categories'"``).

    Raises:
        ValueError: too many names, an empty name, or repeated names; the file, the field, the
            names and their indices are named.
    """
    limit = resolve_max_classes()
    if limit and len(names) > limit:
        raise ValueError(
            f"{file}: {field}: {len(names):,} classes, over the limit of {limit:,}. The largest detection "
            f"vocabularies in use have 13,204 (V3Det), 1,203 (LVIS), 601 (OpenImages) and 365 (Objects365) "
            f"classes, and every class is embedded by the text encoder before training starts; check that "
            f"the file has one category per class. If it is meant, raise the limit with "
            f"${MAX_CLASSES_ENV}={len(names)} (0 = no limit)"
        )
    # The rule of ovdet.text.validate_class_names (which checkpoints apply), checked here with
    # the file, the field and the indices (ovdet.text is a part of this layer: not imported).
    empty = [i for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise ValueError(
            f"{file}: {field}: class name at index {empty[0]} ({raw_names[empty[0]]!r}) is empty as a prompt; "
            f"every class needs a name"
        )
    at: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        at.setdefault(n, []).append(i)
    repeated = [
        f"{n!r} at indices {', '.join(map(str, idx))}"
        + (f" (written {', '.join(repr(raw_names[i]) for i in idx)})" if len({raw_names[i] for i in idx}) > 1 else "")
        for n, idx in at.items()
        if len(idx) > 1
    ]
    if repeated:
        shown = "; ".join(repeated[:10]) + ("; ..." if len(repeated) > 10 else "")
        raise ValueError(
            f"{file}: {field}: duplicate class names: {shown}. "
            f"Every class needs a name of its own (two classes with one name get one text embedding and cannot "
            f"be told apart): rename or merge them"
        )


# --------------------------------------------------------------------------------------------
# Shared pieces: images, boxes, records
# --------------------------------------------------------------------------------------------


def check_image(
    path: Path, report: DataReport, verify: bool, expected: tuple[int, int] | None = None
) -> tuple[int, int] | None:
    """Size of an image file, or None (and a problem recorded) when it is missing or unreadable.

    The header and the end of the file are read (:func:`~ovdet.data.images.probe_image_size`:
    truncated JPEG/PNG files are found without decoding them).

    Args:
        path: Image file.
        report: Receives the problem.
        verify: Also decode the file fully, as training does; what the decoder prints while
            decoding it (libjpeg's "Corrupt JPEG data", ...) becomes a problem too (the image is kept).
        expected: ``(width, height)`` the annotations were made for; a mismatch is a problem.
    """
    if not path.is_file():
        report.problem(path, "image file not found")
        return None
    notes: list[str] = []
    try:
        size = probe_image_size(path, verify)
        if verify:  # the decode training does, with what the native decoder prints kept
            decode_image(path, notes=notes)
    except ImageReadError as e:  # truncated, over the pixel limit, ...: its message says why
        report.problem(path, str(e).removeprefix(f"{path}: "))
        return None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
        report.problem(path, f"unreadable image ({type(e).__name__}: {e})")
        return None
    if notes:
        report.problem(path, f"the decoder warned ({'; '.join(notes[:3])}): kept")
    if expected is not None and size != expected:
        report.problem(
            path,
            f"image is {size[0]}x{size[1]} (w x h) but annotated as "
            f"{expected[0]}x{expected[1]}; boxes would not match its pixels",
        )
        return None
    return size


def annotated_size(
    path: Path,
    entry: Mapping[str, Any],
    report: DataReport,
    verify_images: bool,
    require_images: bool,
    probe_images: bool = False,
) -> tuple[int, int] | None:
    """(width, height) of an image whose annotation (json entry) states its size.

    The stated size is trusted and existence is enough, unless ``verify_images`` or
    ``probe_images`` (with ``require_images``) is set or the size is missing, in which case the
    file is opened (:func:`check_image`). Returns None (problem recorded) when the image cannot
    be used.
    """
    try:
        expected: tuple[int, int] | None = (int(as_number(entry["width"])), int(as_number(entry["height"])))
    except (KeyError, ValueError):
        expected = None
    if verify_images or (probe_images and require_images) or expected is None:
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
    rejected: int = 0,
    caption: str | None = None,
    spans: Sequence[tuple[Span, ...]] | None = None,
) -> ImageRecord | None:
    """Check boxes, record what was dropped or clipped, count, and build the image's record.

    Returns None (the image skipped, a problem recorded) when the image had boxes but none is
    valid: as a background image its objects would be trained as negatives.

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
        rejected: boxes of this image the caller already dropped as invalid (reported and
            counted there): with them, an image left without a box is skipped, not background.
        caption: the grounding caption the spans point into (ODVG, MDETR-style json), if any.
        spans: N per-box span tuples into ``caption`` (:func:`parse_spans`; ``()`` for none),
            or None for no spans at all.
    """
    kept_boxes, clipped, reasons = sanitize_boxes(boxes, width, height)
    keep = [i for i, r in enumerate(reasons) if r is None]
    for i, r in enumerate(reasons):
        if r is not None:
            report.problem(problem_file, f"{refs[i]}: {r}: skipped")
    invalid = len(reasons) - len(keep)
    report.invalid += invalid
    if not keep and invalid + rejected:
        report.problem(
            problem_file,
            f"image {path}: none of its {invalid + rejected} boxes is valid (see above): image skipped "
            f"(as a background image its objects would be trained as negatives)",
        )
        return None
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
        caption=caption,
        spans=[spans[i] for i in keep] if spans is not None and keep else [],
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


def parse_spans(value: Any, caption: str | None) -> tuple[Span, ...]:
    """A ``tokens_positive`` field (ODVG regions, MDETR-style annotations): ``[[start, end], ...]``
    character offsets into ``caption`` (``end`` exclusive), checked.

    Returns:
        The spans as ``(start, end)`` tuples, sorted and distinct.

    Raises:
        ValueError: there is no caption, the value is not a non-empty list of ``[start, end]``
            int pairs, or a span is empty, reversed, outside the caption or only whitespace (the
            span and the caption's length are named).
    """
    if caption is None:
        raise ValueError("there is no caption for it to point into")
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of [start, end] pairs, got {str(value)[:80]}")
    out: set[Span] = set()
    for pair in value:
        if not (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        ):
            raise ValueError(f"span {str(pair)[:40]} is not a [start, end] pair of ints")
        start, end = pair
        if not 0 <= start < end <= len(caption):
            raise ValueError(
                f"span [{start}, {end}] is not within the caption: needs 0 <= start < end <= {len(caption)} "
                f"(the caption's length)"
            )
        if not caption[start:end].strip():
            raise ValueError(f"span [{start}, {end}] covers only whitespace ({caption[start:end]!r})")
        out.add((start, end))
    return tuple(sorted(out))


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
        rels: Per probed image, its candidate paths relative to an image folder (paths leaving
            the folder count for none).
    """
    best, best_hits = None, 0
    for root in roots:
        if not root.is_dir():
            continue
        hits = sum((p := image_path(root, options)) is not None and p.is_file() for options in rels)
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


def inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` when that path lies inside ``root``, else None.

    Compared on the normalised paths, not the resolved ones: an absolute ``rel`` or ``..``
    components that leave ``root`` are refused, while links inside ``root`` (a folder of
    symlinked images) are followed as the user made them.
    """
    base = os.path.abspath(root)
    target = os.path.abspath(os.path.join(base, rel))
    if target == base or os.path.commonpath([base, target]) != base:
        return None
    return root / rel


def image_path(root: Path, options: Sequence[str]) -> Path | None:
    """The first of ``root / option`` inside ``root`` that is a file, else the first inside ``root``;
    None when every option leaves ``root`` (see :func:`inside`)."""
    allowed = [p for p in (inside(root, rel) for rel in options) if p is not None]
    return next((p for p in allowed if p.is_file()), allowed[0] if allowed else None)


def escape_problem(what: str, rel: str, root: Path) -> str:
    """The problem of an image path that leaves its image folder."""
    return (
        f"{what} {rel!r} lies outside the image folder {root} (an absolute path or '..' leaving it): "
        f"skipped; image paths are relative to the image folder and stay inside it"
    )
