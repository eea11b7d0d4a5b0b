"""Dataset readers: COCO json, YOLO txt + data yaml, LVIS json, ODVG jsonl and Pascal VOC xml →
:class:`~ovdet.data.records.Dataset`.

One module per format (:mod:`.coco` for COCO and LVIS, :mod:`.yolo`, :mod:`.odvg`, :mod:`.voc`) over a common
part (:mod:`.common`: prompt names, image and box checks, records). Whole-dataset errors
(unparsable JSON/YAML, a missing split, a vocabulary that is not 0..K-1, repeated or empty class
names, more than :data:`MAX_CLASSES` classes) raise ``ValueError`` or ``FileNotFoundError``
naming the file, before any image is looked at; bad items (an image path leaving the image
folder, a truncated image, an image whose every box is invalid, ...) are skipped, counted and
named in the report.
"""

from __future__ import annotations

from pathlib import Path

from ovdet.data.readers.coco import read_coco, read_instances, read_lvis
from ovdet.data.readers.common import (
    CLIP_TOLERANCE,
    MAX_CLASSES,
    PathLike,
    check_vocabulary,
    clean_name,
    load_json,
    prompt_names,
    resolve_max_classes,
)
from ovdet.data.readers.odvg import read_odvg
from ovdet.data.readers.voc import is_voc_dir, read_voc, voc_yaml_args
from ovdet.data.readers.yolo import load_data_yaml, read_yolo
from ovdet.data.records import DataReport, Dataset

__all__ = [
    "CLIP_TOLERANCE",
    "MAX_CLASSES",
    "check_data",
    "check_vocabulary",
    "clean_name",
    "load_data_yaml",
    "prompt_names",
    "read_coco",
    "read_dataset",
    "read_lvis",
    "read_odvg",
    "read_voc",
    "read_yolo",
    "read_yaml_split",
    "resolve_max_classes",
]


def read_dataset(
    spec: PathLike,
    split: str = "train",
    *,
    image_dir: PathLike | None = None,
    verify_images: bool = False,
    require_images: bool = True,
    probe_images: bool = False,
) -> Dataset:
    """Read any supported dataset, chosen by the spec's file type.

    ``.yaml``/``.yml`` → :func:`read_yolo`, or :func:`read_voc` when it says ``format: voc``
    (``split`` picks the split); ``.json`` → :func:`read_lvis` when its images carry
    ``neg_category_ids``, else :func:`read_coco`; ``.jsonl`` → :func:`read_odvg`; a folder of
    Pascal VOC xml files (or a VOCdevkit year folder) → :func:`read_voc`.

    Args:
        spec: The data yaml, instances json or ODVG jsonl.
        split: YOLO split to read (ignored for json/jsonl, whose file is the split).
        image_dir: Image folder for json/jsonl/VOC (default: found next to the file); not for a yaml.
        verify_images: Decode every image file fully (see :func:`read_coco`).
        require_images: json/jsonl only: False reads annotations without looking for images.
        probe_images: json/jsonl only: read every image's header and end (size checked,
            truncation found; see :func:`read_coco`). YOLO images are always probed.

    Raises:
        ValueError: Unsupported file type, ``image_dir`` given for a YOLO yaml, or an unreadable file.
        FileNotFoundError: The spec does not exist.
    """
    path = Path(spec)
    suffix = path.suffix.lower()
    if path.is_dir():
        if not is_voc_dir(path):
            raise ValueError(
                f"{path}: a folder is read as a Pascal VOC dataset, but it holds no xml annotations; "
                "for other formats give the data yaml, instances json or ODVG jsonl"
            )
        return read_voc(path, split, image_dir=image_dir, verify_images=verify_images)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    if suffix in {".yaml", ".yml"}:
        if image_dir is not None:
            raise ValueError(f"{path}: image_dir does not apply to a data yaml (its splits name the images)")
        return read_yaml_split(path, split, load_data_yaml(path), verify_images=verify_images)
    if suffix == ".json":
        data = load_json(path)
        images = data.get("images") if isinstance(data, dict) else None
        lvis = isinstance(images, list) and any(isinstance(i, dict) and "neg_category_ids" in i for i in images)
        return read_instances(
            data,
            path,
            image_dir,
            lvis=lvis,
            verify_images=verify_images,
            require_images=require_images,
            probe_images=probe_images,
        )
    if suffix == ".jsonl":
        return read_odvg(
            path, image_dir, verify_images=verify_images, require_images=require_images, probe_images=probe_images
        )
    raise ValueError(
        f"{path}: unsupported dataset file type {suffix!r}; expected a data .yaml (YOLO), "
        f"an instances .json (COCO/LVIS) or an ODVG .jsonl"
    )


def read_yaml_split(data_yaml: PathLike, split: str, content: dict, *, verify_images: bool = False) -> Dataset:
    """One split of a data yaml already parsed by :func:`load_data_yaml`: YOLO labels, or Pascal
    VOC xml when the yaml says ``format: voc``."""
    if content.get("format", "yolo") == "voc":
        return read_voc(**voc_yaml_args(content, Path(data_yaml), split), verify_images=verify_images)
    return read_yolo(data_yaml, split, verify_images=verify_images, content=content)


def check_data(
    spec: PathLike,
    split: str = "train",
    *,
    image_dir: PathLike | None = None,
    verify_images: bool = False,
    require_images: bool = True,
) -> DataReport:
    """Read a dataset as ``ovdet check-data`` does and return what the reader found.

    Every image is probed (header and end of file, :func:`read_dataset` ``probe_images``), so
    truncated files and wrong sizes are found without decoding pixels; ``verify_images`` decodes
    them fully.

    Args:
        spec: As in :func:`read_dataset`.
        split: As in :func:`read_dataset`.
        image_dir: As in :func:`read_dataset`.
        verify_images: As in :func:`read_dataset`.
        require_images: As in :func:`read_dataset`.

    Returns:
        The dataset's report: counts, per-class positives and every problem with its file.
    """
    return read_dataset(
        spec,
        split,
        image_dir=image_dir,
        verify_images=verify_images,
        require_images=require_images,
        probe_images=True,
    ).report
