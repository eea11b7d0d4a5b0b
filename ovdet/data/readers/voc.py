"""Pascal VOC xml → :class:`~ovdet.data.records.Dataset` (LabelImg, CVAT and Roboflow exports).

Two layouts, told apart by what is on disk:

- **VOCdevkit**: ``<root>/Annotations/*.xml``, ``<root>/JPEGImages/``, and the splits as
  ``<root>/ImageSets/Main/{train,val,trainval,test}.txt`` (one image stem a line).
- **a folder of xml files**: beside the images, or apart from them (``annotations/`` and
  ``images/``, as LabelImg users keep them); a split is ``<root>/<split>.txt`` when present,
  else every xml file is read.

Chosen by pointing at the folder (``read_dataset("VOC2012/")``, ``ovdet train --data raccoon/``)
or by a data yaml with ``format: voc`` (``path``: the root; ``train``/``val``/``test``: a split
name or a ``.txt`` list of stems; optional ``names``: the vocabulary and its order, otherwise the
sorted object names found in every xml of the dataset, so that all splits share one vocabulary).

What is trusted, and what is not:

- the image is found as ``<filename>`` in the image folder (or, failing that, the xml's own stem
  with a common image extension); the annotator's absolute ``<path>`` is never used, and a
  ``<filename>`` that would leave the image folder (``../``, an absolute path) is skipped and named;
- the image's real size (read from its header) wins over a ``<size>`` that disagrees, which is
  reported; boxes are then checked against the real size;
- VOC's 1-based inclusive pixel indices become 0-based xyxy by moving ``xmin``/``ymin`` down one
  (a box ``xmin=1 … xmax=W`` covers the image: ``[0, W]``), as detectron2 reads them;
- ``<difficult>1</difficult>`` objects are ignore regions (as COCO crowd boxes are): neither
  positives nor negatives in training, and not counted against a detector in evaluation;
- a malformed or truncated xml, an xml with a DTD or entity declarations (never expanded), an
  object without a name or a numeric ``<bndbox>``, and a name outside a given vocabulary are
  skipped, counted and named in the report.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ovdet.data.readers.common import PathLike, check_image, check_vocabulary, make_record, prompt_names
from ovdet.data.records import DataReport, Dataset, ImageRecord

#: Extensions tried for an image whose ``<filename>`` is missing or wrong, in order.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".JPG", ".JPEG", ".PNG")
#: Largest xml file read (a VOC annotation is a few KB; a bigger one is not an annotation).
MAX_XML_BYTES = 8 * 1024 * 1024
#: Image folder names tried beside the annotation folder, in order.
IMAGE_DIRS = ("JPEGImages", "images", "Images", "imgs")
#: Annotation folder names tried under the root, in order.
ANNOTATION_DIRS = ("Annotations", "annotations", "labels", "xml")


@dataclass
class VocObject:
    """One ``<object>`` as written (pixel indices as in the file)."""

    name: str
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax: VOC's 1-based inclusive indices
    difficult: bool
    ref: str


@dataclass
class VocFile:
    """One parsed xml: what the image is called and its objects; ``problems`` for bad objects."""

    xml: Path
    filename: str | None
    size: tuple[int, int] | None  # (width, height) from <size>, when it holds two positive integers
    objects: list[VocObject] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class VocLayout:
    """Where a VOC dataset keeps its parts."""

    root: Path
    annotations: Path
    images: Path
    split_files: dict[str, Path]


def is_voc_dir(path: PathLike) -> bool:
    """True when ``path`` is a folder holding VOC xml files (directly or in an annotation folder)."""
    p = Path(path)
    if not p.is_dir():
        return False
    return any(_xml_files(d) for d in [p, *(p / a for a in ANNOTATION_DIRS)] if d.is_dir())


def _xml_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.glob("*.xml") if f.is_file())


def find_layout(root: PathLike) -> VocLayout:
    """The annotation folder, image folder and split files of a VOC dataset rooted at ``root``.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds no xml files.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VOC dataset folder not found: {root}")
    annotations = next((root / a for a in ANNOTATION_DIRS if (root / a).is_dir() and _xml_files(root / a)), None)
    if annotations is None:
        if not _xml_files(root):
            raise FileNotFoundError(
                f"{root}: no Pascal VOC xml files (looked in {root} and {', '.join(ANNOTATION_DIRS)} below it)"
            )
        annotations = root
    images = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), annotations)
    splits: dict[str, Path] = {}
    for folder in (root / "ImageSets" / "Main", root):
        if folder.is_dir():
            for f in sorted(folder.glob("*.txt")):
                splits.setdefault(f.stem, f)
    return VocLayout(root, annotations, images, splits)


def parse_voc_xml(path: Path) -> VocFile:
    """Parse one annotation file.

    Raises:
        ValueError: the file cannot be used at all (unreadable, too large, not well-formed, a
            DTD or entity declaration, or its root is not ``<annotation>``); the message says which.
    """
    try:
        size = path.stat().st_size
        if size > MAX_XML_BYTES:
            raise ValueError(f"{size:,} bytes: larger than any VOC annotation (limit {MAX_XML_BYTES:,})")
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the file ({e.strerror or e})") from e
    head = raw[:4096].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in raw.upper():
        raise ValueError("holds a DTD or entity declarations, which a VOC annotation never has: not expanded")
    try:
        tree = ET.fromstring(raw)
    except ET.ParseError as e:
        raise ValueError(f"not well-formed XML ({e}); is it truncated?") from e
    if tree.tag != "annotation":
        raise ValueError(f"root element is <{tree.tag}>, not <annotation>")
    filename = (tree.findtext("filename") or "").strip() or None
    out = VocFile(path, filename, _size(tree))
    for n, obj in enumerate(tree.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        ref = f"object {n}" + (f" ({name!r})" if name else "")
        if not name:
            out.problems.append(f"{ref}: no <name>: skipped")
            continue
        box = obj.find("bndbox")
        try:
            if box is None:
                raise ValueError("no <bndbox>")
            coords = tuple(_number(box, k) for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as e:
            out.problems.append(f"{ref}: {e}: skipped")
            continue
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
        out.objects.append(VocObject(name, coords, difficult, ref))  # type: ignore[arg-type]
    return out


def _number(box: ET.Element, key: str) -> float:
    text = box.findtext(key)
    if text is None or not text.strip():
        raise ValueError(f"<bndbox> has no <{key}>")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"<{key}> is {text.strip()[:40]!r}, not a number") from None


def _size(tree: ET.Element) -> tuple[int, int] | None:
    try:
        w, h = int(float(tree.findtext("size/width") or "")), int(float(tree.findtext("size/height") or ""))
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 else None


def _inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` when that stays inside ``folder`` (no ``..``, no absolute path), else None."""
    if not name or os.path.isabs(name) or Path(name).drive:
        return None
    candidate = folder / name
    try:
        candidate.resolve().relative_to(folder.resolve())
    except ValueError:
        return None
    return candidate


def _image_for(parsed: VocFile, images: Path) -> tuple[Path | None, str | None]:
    """(the image file, None) or (None, why not) for one annotation."""
    if parsed.filename is not None:
        named = _inside(images, parsed.filename)
        if named is None:
            return None, f"<filename> {parsed.filename!r} points outside the image folder {images}: skipped"
        if named.is_file():
            return named, None
    stem = parsed.xml.stem
    for suffix in IMAGE_SUFFIXES:
        p = images / f"{stem}{suffix}"
        if p.is_file():
            return p, None
    shown = parsed.filename or f"{stem}.*"
    return None, f"image {shown!r} not found in {images}: skipped"


def _split_stems(layout: VocLayout, split: str | Path | None, report: DataReport) -> list[str] | None:
    """Stems listed by a split (None: every xml file); duplicates reported and dropped."""
    if split is None:
        return None
    path = Path(split) if str(split).endswith(".txt") else layout.split_files.get(str(split))
    if path is not None and not path.is_absolute() and not path.is_file():
        path = layout.root / path
    if path is None or not path.is_file():
        if not layout.split_files and str(split) in ("train", "trainval"):
            return None  # a folder without split files is one training set
        known = ", ".join(sorted(layout.split_files)) or "none"
        raise FileNotFoundError(
            f"{layout.root}: no split {str(split)!r} (looked for ImageSets/Main/{split}.txt and {split}.txt; "
            f"splits found: {known})"
        )
    stems: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        stem = Path(parts[0]).stem if parts[0].endswith(".xml") else parts[0]
        if stem in seen:
            report.problem(path, f"line {n}: {stem!r} is listed twice: the second is skipped")
            continue
        seen.add(stem)
        stems.append(stem)
    return stems


def read_voc(
    root: PathLike,
    split: str | Path | None = "train",
    *,
    names: Sequence[str] | None = None,
    image_dir: PathLike | None = None,
    verify_images: bool = False,
) -> Dataset:
    """Read a Pascal VOC dataset (see the module docstring for layouts and rules).

    Args:
        root: the dataset folder (VOCdevkit year folder, or a folder of xml files / with an
            ``annotations`` folder).
        split: a split name (``train``, ``val``, ...), a ``.txt`` list of stems, or None for every
            xml file. ``train`` on a folder without split files reads every file.
        names: the vocabulary in label order; None: the sorted object names of every xml file of
            the dataset (all splits), so train and val agree.
        image_dir: the image folder, when it is neither beside the xml files nor ``JPEGImages``/``images``.
        verify_images: fully verify each image (see :func:`~ovdet.data.images.probe_image_size`).

    Returns:
        The dataset: ``image_id`` the xml stem, ``names`` prompt names, ``raw_names`` as written,
        ``category_ids`` 1..K (VOC has none; 1-based as COCO's).

    Raises:
        FileNotFoundError: no such folder, no xml files, no such split or image folder.
        ValueError: ``names`` empty or with duplicates.
    """
    layout = find_layout(root)
    if image_dir is not None:
        if not Path(image_dir).is_dir():
            raise FileNotFoundError(f"image folder for {layout.root} not found: {image_dir}")
        layout.images = Path(image_dir)
    report = DataReport()
    stems = _split_stems(layout, split, report)
    all_xml = {f.stem: f for f in _xml_files(layout.annotations)}
    parsed: dict[str, VocFile | str] = {}

    def parse(stem: str) -> VocFile | str:
        if stem not in parsed:
            try:
                parsed[stem] = parse_voc_xml(all_xml[stem])
            except ValueError as e:
                parsed[stem] = str(e)
        return parsed[stem]

    if names is None:
        found = Counter(o.name for s in all_xml if isinstance(v := parse(s), VocFile) for o in v.objects)
        raw_names = sorted(found)
        if not raw_names:
            raise ValueError(f"{layout.annotations}: no xml file holds a named object: no vocabulary to train on")
    else:
        raw_names = [str(n) for n in names]
        if not raw_names or len(set(raw_names)) != len(raw_names):
            dup = [n for n, c in Counter(raw_names).items() if c > 1]
            raise ValueError(f"{layout.root}: names must be non-empty and distinct (duplicates: {dup})")
    label_of = {n: i for i, n in enumerate(raw_names)}
    prompts = prompt_names(raw_names)
    check_vocabulary(prompts, raw_names, layout.root, "names" if names is not None else "object names")

    records: list[ImageRecord] = []
    for stem in sorted(all_xml) if stems is None else stems:
        report.images += 1
        xml = all_xml.get(stem, layout.annotations / f"{stem}.xml")
        if stem not in all_xml:
            report.problem(xml, "listed in the split but the annotation file does not exist: skipped")
            continue
        item = parse(stem)
        if isinstance(item, str):
            report.problem(xml, f"{item}: skipped")
            continue
        record = _record(item, layout.images, label_of, prompts, report, verify_images)
        if record is not None:
            records.append(record)
    return Dataset(
        records=records,
        names=prompts,
        raw_names=raw_names,
        category_ids=list(range(1, len(raw_names) + 1)),
        report=report,
    )


def _record(
    item: VocFile,
    images: Path,
    label_of: Mapping[str, int],
    prompts: Sequence[str],
    report: DataReport,
    verify_images: bool,
) -> ImageRecord | None:
    """One image's record, or None (problem recorded) when its image cannot be used."""
    image, why = _image_for(item, images)
    if image is None:
        report.problem(item.xml, str(why))
        return None
    real = check_image(image, report, verify_images)
    if real is None:
        return None
    if item.size is not None and item.size != real:
        report.problem(
            item.xml,
            f"<size> says {item.size[0]}x{item.size[1]} but {image.name} is {real[0]}x{real[1]}: used the image's size",
        )
    for p in item.problems:
        report.problem(item.xml, p)
    report.invalid += len(item.problems)
    kept: list[VocObject] = []
    for obj in item.objects:
        if obj.name not in label_of:
            report.problem(item.xml, f"{obj.ref}: class {obj.name!r} is not in the vocabulary: skipped")
            continue
        kept.append(obj)
    boxes = np.array([o.box for o in kept], dtype=np.float64).reshape(-1, 4)  # (N, 4) VOC indices
    boxes[:, :2] -= 1.0  # 1-based inclusive → 0-based xyxy
    labels = [label_of[o.name] for o in kept]
    return make_record(
        report,
        prompts,
        path=image,
        image_id=item.xml.stem,
        width=real[0],
        height=real[1],
        boxes=boxes,
        labels=labels,
        texts=[prompts[k] for k in labels],
        ignore=[o.difficult for o in kept],
        refs=[o.ref for o in kept],
        problem_file=item.xml,
        rejected=len(item.problems),  # objects without a name or a numeric box: never background
    )


def voc_yaml_args(data: Mapping[str, Any], yaml_path: Path, split: str) -> dict[str, Any]:
    """``read_voc`` arguments from a data yaml with ``format: voc`` (see the module docstring).

    Raises:
        ValueError: the split is not in the yaml, or ``names`` is not a list/mapping of strings.
    """
    root = Path(str(data.get("path") or "."))
    root = root if root.is_absolute() else yaml_path.parent / root
    if split not in data:
        raise ValueError(f"{yaml_path}: no {split!r} split (VOC data yaml keys: path, train, val, test, names)")
    names = data.get("names")
    if isinstance(names, Mapping):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise ValueError(f"{yaml_path}: 'names' keys must be 0..K-1, got {keys[:10]}")
        names = [names[k] for k in keys]
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"{yaml_path}: 'names' must be a list of class names")
    entry = data[split]
    split_arg: str | Path = str(entry)
    if str(entry).endswith(".txt"):
        split_arg = Path(str(entry)) if Path(str(entry)).is_absolute() else root / str(entry)
    image_dir = data.get("images")
    if image_dir is not None:
        image_dir = Path(str(image_dir)) if Path(str(image_dir)).is_absolute() else root / str(image_dir)
    return {"root": root, "split": split_arg, "names": names, "image_dir": image_dir}
