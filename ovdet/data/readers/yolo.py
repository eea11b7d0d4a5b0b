"""ultralytics' YOLO layout (data yaml + ``labels/*.txt``) → :class:`~ovdet.data.records.Dataset`."""

from __future__ import annotations

import glob
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ovdet.data.images import IMAGE_EXTENSIONS
from ovdet.data.readers.common import PathLike, check_image, check_vocabulary, inside, make_record, prompt_names
from ovdet.data.records import DataReport, Dataset, ImageRecord

__all__ = ["label_path", "load_data_yaml", "read_yolo"]


def label_path(image: PathLike) -> str:
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
            raise ValueError(
                f"{yaml_path}: 'names' keys must be 0..{len(keyed) - 1} without gaps, "
                f"got {sorted(keyed)[:10]}{'...' if len(keyed) > 10 else ''}"
            )
        return [keyed[i] for i in range(len(keyed))]
    raise ValueError(f"{yaml_path}: 'names' must be a list or a {{index: name}} mapping, got {raw!r}")


def _split_sources(data: Mapping[str, Any], yaml_path: Path, split: str) -> tuple[Path, list[Path]]:
    """The dataset root and the split's image sources (folders, list files, images), resolved
    like ultralytics does.

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
    return root, out


def _list_images(root: Path, sources: Sequence[Path], report: DataReport) -> tuple[list[Path], list[Path]]:
    """Image files of a split and the folders that were listed (for orphan-label search).

    Folders are searched recursively for files with an image extension; a ``.txt`` file lists one
    image per line (``./x`` and other relative lines are relative to the list's folder). An
    absolute line is taken as it is (ultralytics lists hold absolute paths); a relative one must
    stay inside the dataset root or the list's own folder: one whose ``..`` climbs out of both
    is skipped and reported.
    """
    images: list[Path] = []
    dirs: list[Path] = []
    for src in sources:
        if src.is_dir():
            dirs.append(src)
            images += [
                Path(f)
                for f in glob.glob(os.path.join(glob.escape(str(src)), "**", "*.*"), recursive=True)
                if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(f)
            ]
        elif src.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(src)
        else:
            try:
                lines = src.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"{src}: cannot read the image list ({e})") from e
            for n, line in enumerate(lines, start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                p = Path(line)
                if (
                    not p.is_absolute()
                    and inside(root, str(src.parent / p)) is None
                    and inside(src.parent, line) is None
                ):
                    report.images += 1
                    report.problem(
                        src,
                        f"line {n}: image {line!r} climbs out of the dataset root {root} and the list's "
                        f"folder: skipped (a relative line stays inside them; give an absolute path to mean it)",
                    )
                    continue
                images.append(p if p.is_absolute() else (src.parent / p).resolve())
    return sorted(_drop_repeats(images, sources, report)), dirs


def _drop_repeats(images: list[Path], sources: Sequence[Path], report: DataReport) -> list[Path]:
    """Each image file once: a file listed again (twice in a list, in two listed folders, or by
    another path to the same file) is reported and its repeats dropped, so an epoch never trains
    on it twice and validation never scores it twice."""
    first: dict[str, Path] = {}
    kept: list[Path] = []
    for image in images:
        key = os.path.realpath(image)
        if key in first:
            report.images += 1
            report.problem(
                image,
                f"the same image file as {first[key]} is listed again (split entries "
                f"{', '.join(str(s) for s in sources)}): the repeat is skipped",
            )
            continue
        first[key] = image
        kept.append(image)
    return kept


def _parse_label_file(
    label_file: Path,
    num_classes: int,
    report: DataReport,
) -> tuple[np.ndarray, list[int], list[str], int] | None:
    """Normalised boxes of one YOLO label file, bad lines reported and skipped.

    A line is ``class cx cy w h`` (normalised to [0, 1]) or a polygon ``class x1 y1 x2 y2 x3 y3 ...``
    (three or more points; its bounding box is used, as ultralytics does for segment labels).

    Returns:
        ``(boxes, classes, refs, rejected)`` with ``boxes`` (N, 4) normalised xyxy and ``rejected``
        the lines skipped (each reported and counted in ``report.invalid``), or None when the file
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
    rejected = 0

    def reject(n: int, reason: str) -> None:
        nonlocal rejected
        rejected += 1
        report.invalid += 1
        report.problem(label_file, f"line {n}: {reason}: skipped")

    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        cols = len(parts)
        if cols != 5 and (cols < 7 or cols % 2 == 0):
            reject(
                n,
                f"{cols} columns, expected 5 (class cx cy w h) or a polygon "
                f"(class x1 y1 x2 y2 x3 y3 ...): {line.strip()[:80]!r}",
            )
            continue
        try:
            values = [float(v) for v in parts]
        except ValueError:
            reject(n, f"non-numeric value in {line.strip()[:80]!r}")
            continue
        cls = values[0]
        if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes:
            reject(n, f"class index {parts[0]!r} out of range 0..{num_classes - 1}")
            continue
        if cols == 5:
            cx, cy, w, h = values[1:]
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        else:
            xs, ys = values[1::2], values[2::2]
            boxes.append([min(xs), min(ys), max(xs), max(ys)])
        classes.append(int(cls))
        refs.append(f"line {n}")
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), classes, refs, rejected


#: What a data yaml's optional ``format`` key may say: YOLO label files (default) or Pascal VOC xml.
DATA_YAML_FORMATS = ("yolo", "voc")


def load_data_yaml(data_yaml: PathLike) -> dict[str, Any]:
    """The content of a data yaml, parsed and checked (a mapping; ``names`` required unless
    ``format: voc``, whose names may come from the xml files).

    Parse it once and hand it to :func:`read_yolo` (``content=``) for each split a caller reads.

    Raises:
        ValueError: The yaml cannot be parsed, is not a mapping, or lacks ``names``.
        FileNotFoundError: The yaml does not exist.
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
    fmt = data.get("format", "yolo")
    if fmt not in DATA_YAML_FORMATS:
        raise ValueError(f"{yaml_path}: format {fmt!r} is not one of {', '.join(DATA_YAML_FORMATS)}")
    if "names" not in data and fmt == "yolo":
        raise ValueError(f"{yaml_path}: field 'names' is missing")
    return data


def read_yolo(
    data_yaml: PathLike,
    split: str = "train",
    *,
    verify_images: bool = False,
    content: Mapping[str, Any] | None = None,
) -> Dataset:
    """Read an ultralytics-style YOLO dataset through its data yaml.

    The yaml has ``names`` (list, or mapping 0..K-1), an optional ``path`` (dataset root) and the
    split (``train``/``val``/``test``): a folder, a ``.txt`` list of images, or a list of those.
    Each image's label file is found as ultralytics finds it (last ``/images/`` → ``/labels/``,
    extension → ``.txt``); normalised ``class cx cy w h`` lines become xyxy pixels of the image's
    display size (read from the header, EXIF orientation applied as ``decode_image`` applies it).
    An image without a label file, or with an empty one, is a background image; one whose every
    label line is invalid is skipped (reported), not background; a label file in a split folder's
    labels folder without an image is a problem. Images named by a list file must lie inside the
    dataset root or the list's folder.

    Args:
        data_yaml: The data yaml.
        split: Which split to read.
        verify_images: Also decode every image fully, as training does (decoder warnings are
            problems). Without it each image's header and end are read: its size, and whether it
            is truncated.
        content: The yaml's content from :func:`load_data_yaml` (the file is then not read
            again); None: read the file.

    Returns:
        The dataset; ``names`` are prompt names (:func:`prompt_names`), ``category_ids`` 0..K-1,
        ``image_id`` the file stem (the path without extension when stems repeat).

    Raises:
        ValueError: The yaml cannot be parsed, or lacks the split or valid ``names`` (repeated or
            empty names, or more than :data:`~ovdet.data.readers.common.MAX_CLASSES`).
        FileNotFoundError: The yaml or a split entry does not exist.
    """
    yaml_path = Path(data_yaml)
    data = load_data_yaml(yaml_path) if content is None else content
    if "names" not in data:
        raise ValueError(f"{yaml_path}: field 'names' is missing")
    raw_names = _yolo_names(data["names"], yaml_path)
    names = prompt_names(raw_names)
    check_vocabulary(names, raw_names, yaml_path, "field 'names'")
    report = DataReport()
    root, sources = _split_sources(data, yaml_path, split)
    images, dirs = _list_images(root, sources, report)

    stems = Counter(p.stem for p in images)
    records: list[ImageRecord] = []
    used_labels: set[str] = set()
    for image in images:
        report.images += 1
        label_file = Path(label_path(image))
        used_labels.add(os.path.normpath(label_file))
        size = check_image(image, report, verify_images)
        if size is None:
            continue
        width, height = size
        if label_file.is_file():
            parsed = _parse_label_file(label_file, len(names), report)
            if parsed is None:
                continue
            norm, classes, refs, rejected = parsed
        else:
            norm, classes, refs, rejected = np.zeros((0, 4)), [], [], 0
        boxes = norm * np.array([width, height, width, height], dtype=np.float64)  # (N, 4) pixels
        image_id = image.stem if stems[image.stem] == 1 else image.with_suffix("").as_posix()
        rec = make_record(
            report,
            names,
            path=image,
            image_id=image_id,
            width=width,
            height=height,
            boxes=boxes,
            labels=classes,
            texts=[names[c] for c in classes],
            ignore=[False] * len(classes),
            refs=refs,
            problem_file=label_file,
            rejected=rejected,
        )
        if rec is not None:
            records.append(rec)

    # Label files in the labels folders of the listed image folders that no image claims.
    for d in dirs:
        label_dir = Path(label_path(d / "x.jpg")).parent
        if not label_dir.is_dir():
            continue
        for f in sorted(glob.glob(os.path.join(glob.escape(str(label_dir)), "**", "*.txt"), recursive=True)):
            if os.path.normpath(f) not in used_labels:
                used_labels.add(os.path.normpath(f))
                report.problem(f, "label file without an image: ignored")
    return Dataset(
        records=records, names=names, raw_names=raw_names, category_ids=list(range(len(names))), report=report
    )
