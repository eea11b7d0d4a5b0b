"""Auto-labelling: a folder of images + text prompts → a dataset ovdet and ultralytics both read.

:class:`DatasetWriter` receives one :class:`~ovdet.structures.Detections` per image (from any
detector run) and writes either ultralytics' YOLO layout (``images/{train,val}/`` links or
copies, ``labels/{train,val}/*.txt``, ``data.yaml``) or COCO (``images/{train,val}/`` and
``annotations/instances_{train,val}.json``), a contact sheet of sampled images with their boxes,
and a summary. It is resumable: every finished image is appended to ``.ovdet-label.jsonl`` in
the output folder, and a rerun skips the sources listed there. An image's split is a hash of its
source name, so it does not change between runs or with the order images arrive in.

Prompts map to output class names with ``"prompt=name"`` (``"person wearing a hard hat=worker"``);
several prompts may share one name.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ovdet.data.images import IMAGE_EXTENSIONS
from ovdet.io import atomic_write_text
from ovdet.structures import Detections, xyxy_to_xywh

__all__ = ["ClassMap", "DatasetWriter", "LabelSummary", "list_images", "parse_class_map"]

STATE_FILE = ".ovdet-label.jsonl"


@dataclass(frozen=True)
class ClassMap:
    """Prompts the detector is queried with and the dataset class each one becomes.

    Attributes:
        prompts: P texts for ``set_classes``.
        names: the dataset's K class names (first-seen order).
        index: P output indices, ``names[index[p]]`` is the class of prompt ``p``.
    """

    prompts: list[str]
    names: list[str]
    index: list[int]


def parse_class_map(specs: Sequence[str]) -> ClassMap:
    """``["hard hat", "person wearing a hard hat=worker", "man=person", "woman=person"]`` → ClassMap.

    Raises:
        ValueError: an empty prompt or name, or a prompt given twice (named).
    """
    prompts: list[str] = []
    names: list[str] = []
    index: list[int] = []
    for spec in specs:
        prompt, sep, name = spec.partition("=")
        prompt, name = prompt.strip(), (name.strip() if sep else prompt.strip())
        if not prompt or not name:
            raise ValueError(f"class {spec!r}: expected 'prompt' or 'prompt=name' with neither part empty")
        if prompt in prompts:
            raise ValueError(f"prompt {prompt!r} is given twice")
        if name not in names:
            names.append(name)
        prompts.append(prompt)
        index.append(names.index(name))
    if not prompts:
        raise ValueError("no classes: give at least one prompt")
    return ClassMap(prompts, names, index)


def list_images(source: str | Path) -> list[Path]:
    """The image files of ``source``: one file, a folder (its images, sorted; not recursive, as
    ``predict``), or a glob (``**`` recurses).

    Raises:
        FileNotFoundError: nothing matches, or the folder holds no image.
    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    elif any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_EXTENSIONS)
    else:
        raise FileNotFoundError(f"source not found: {text}")
    if not files:
        raise FileNotFoundError(f"no image files in {text} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def split_of(source: str, val_split: float) -> str:
    """``"val"`` for a stable ``val_split`` share of sources (by a hash of the name), else ``"train"``."""
    h = int.from_bytes(hashlib.sha1(source.encode("utf-8")).digest()[:8], "big") / 2**64
    return "val" if h < val_split else "train"


@dataclass
class LabelSummary:
    """What a labelling run wrote.

    Attributes:
        images: labelled images per split (this run and earlier ones together).
        new: images labelled by this run; resumed: those found done already.
        boxes: boxes per class name (all runs).
        skipped: (source, reason) of unreadable images (all runs).
        files: the dataset's entry files (``data.yaml`` or the instances jsons) and the contact sheet.
    """

    images: dict[str, int]
    new: int
    resumed: int
    boxes: Counter
    skipped: list[tuple[str, str]]
    files: list[Path]

    def text(self) -> str:
        per_class = ", ".join(f"{n} {c}" for n, c in self.boxes.most_common()) or "no boxes"
        lines = [
            f"{sum(self.images.values())} images ({', '.join(f'{k} {v}' for k, v in sorted(self.images.items()))}); "
            f"{self.new} labelled now, {self.resumed} already done; {sum(self.boxes.values())} boxes: {per_class}",
        ]
        if self.skipped:
            lines.append(f"{len(self.skipped)} skipped: " + "; ".join(r for _, r in self.skipped[:5]))
        lines += [f"wrote {f}" for f in self.files]
        return "\n".join(lines)


class DatasetWriter:
    """Writes a labelled dataset into ``out`` as images arrive (see the module docstring).

    Args:
        out: the dataset folder (created).
        classes: prompts → dataset names.
        format: ``"yolo"`` or ``"coco"``.
        val_split: share of images put in ``val`` (0 ≤ val_split < 1).
        copy: copy images instead of symlinking them (a symlink that cannot be made is a copy).
        sheet: images in the contact sheet (0: none).

    Raises:
        ValueError: a bad format or split, or ``out`` was labelled with other classes or format.
    """

    def __init__(
        self,
        out: str | Path,
        classes: ClassMap,
        format: str = "yolo",
        val_split: float = 0.1,
        copy: bool = False,
        sheet: int = 16,
    ) -> None:
        if format not in ("yolo", "coco"):
            raise ValueError(f"format must be 'yolo' or 'coco', got {format!r}")
        if not 0 <= val_split < 1:
            raise ValueError(f"val_split must be in [0, 1), got {val_split}")
        self.out, self.classes, self.format = Path(out), classes, format
        self.val_split, self.copy, self.sheet = val_split, copy, sheet
        self.state_path = self.out / STATE_FILE
        self.entries: dict[str, dict[str, Any]] = {}  # source → what was written for it
        self._names_used: set[str] = set()
        self.new = 0
        if self.state_path.is_file():
            self._load_state()
        self.resumed = len(self.entries)
        self.out.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ state
    def _load_state(self) -> None:
        for i, line in enumerate(self.state_path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interrupted run: that image is redone
                continue
            if i == 0 and "header" in entry:
                head = entry["header"]
                if head.get("names") != self.classes.names or head.get("prompts") != self.classes.prompts:
                    raise ValueError(
                        f"{self.out} was labelled with classes {head.get('prompts')} → {head.get('names')}; "
                        f"use the same --classes to resume, or another --out"
                    )
                if head.get("format") != self.format:
                    raise ValueError(
                        f"{self.out} holds a {head.get('format')} dataset; use --format {head.get('format')}"
                    )
                continue
            self.entries[entry["source"]] = entry
            if "file" in entry:
                self._names_used.add(entry["file"])

    def _append(self, entry: dict[str, Any]) -> None:
        if not self.state_path.is_file():
            head = {"header": {"format": self.format, "prompts": self.classes.prompts, "names": self.classes.names}}
            self.state_path.write_text(json.dumps(head) + "\n", encoding="utf-8")
        with self.state_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[entry["source"]] = entry

    def done(self, source: str | Path) -> bool:
        """True when ``source`` was labelled (or found unreadable) by this or an earlier run."""
        return os.fspath(Path(source).resolve()) in self.entries

    def pending(self, sources: Sequence[str | Path]) -> list[Path]:
        """The sources not done yet, in order."""
        return [Path(s) for s in sources if not self.done(s)]

    # ------------------------------------------------------------------ writing
    def _file_name(self, source: Path) -> str:
        """A unique dataset file name for ``source`` (``a.jpg``, then ``a_1.jpg``, … on a clash)."""
        name, k = source.name, 0
        while name in self._names_used:
            k += 1
            name = f"{source.stem}_{k}{source.suffix}"
        self._names_used.add(name)
        return name

    def _place(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if not self.copy:
            try:
                target.symlink_to(source.resolve())
                return
            except OSError:  # no symlinks here (e.g. some Windows or network filesystems)
                pass
        shutil.copy2(source, target)

    def add(self, det: Detections) -> None:
        """Write one image's labels (``det.path`` is its source file; labels index the prompts)."""
        if det.path is None:
            raise ValueError("Detections.path must name the source image file")
        source = Path(det.path).resolve()
        key = os.fspath(source)
        split = split_of(key, self.val_split)
        name = self.entries.get(key, {}).get("file") or self._file_name(source)
        h, w = det.image_size
        labels = [self.classes.index[i] for i in det.labels.tolist()]
        boxes = det.boxes.numpy().astype(np.float64)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        rows = [
            [*(round(float(v), 3) for v in b), lab, round(float(s), 5)]
            for b, lab, s, k in zip(boxes, labels, det.scores.tolist(), keep)
            if k
        ]
        image = self.out / "images" / split / name
        self._place(source, image)
        if self.format == "yolo":
            lines = [
                f"{r[4]} {(r[0] + r[2]) / 2 / w:.6f} {(r[1] + r[3]) / 2 / h:.6f} {(r[2] - r[0]) / w:.6f} {(r[3] - r[1]) / h:.6f}"
                for r in rows
            ]
            label = self.out / "labels" / split / (Path(name).stem + ".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(label, "".join(ln + "\n" for ln in lines))
        self._append({"source": key, "split": split, "file": name, "size": [h, w], "boxes": rows})
        self.new += 1

    def skip(self, source: str, reason: str) -> None:
        """Record an unreadable source (reported in the summary; not retried on resume)."""
        self._append({"source": os.fspath(Path(source).resolve()), "error": reason})

    # ------------------------------------------------------------------ finishing
    def finish(self) -> LabelSummary:
        """Write ``data.yaml`` or the COCO jsons (from every run's entries) and the contact sheet."""
        labelled = [e for e in self.entries.values() if "file" in e]
        splits = Counter(e["split"] for e in labelled)
        boxes = Counter(self.classes.names[r[4]] for e in labelled for r in e["boxes"])
        files: list[Path] = []
        if self.format == "yolo":
            for split in ("train", "val"):
                (self.out / "images" / split).mkdir(parents=True, exist_ok=True)
                (self.out / "labels" / split).mkdir(parents=True, exist_ok=True)
            lines = [f"path: {self.out.resolve()}", "train: images/train", "val: images/val", "names:"]
            lines += [f"  {i}: {json.dumps(n)}" for i, n in enumerate(self.classes.names)]
            data = self.out / "data.yaml"
            atomic_write_text(data, "\n".join(lines) + "\n")
            files.append(data)
        else:
            for split in ("train", "val"):
                files.append(self._write_coco(split, [e for e in labelled if e["split"] == split]))
        if self.sheet and labelled:
            files.append(self._contact_sheet(labelled))
        skipped = [(e["source"], e["error"]) for e in self.entries.values() if "error" in e]
        return LabelSummary(dict(splits), self.new, self.resumed, boxes, skipped, files)

    def _write_coco(self, split: str, entries: list[dict[str, Any]]) -> Path:
        images, annotations = [], []
        for image_id, e in enumerate(sorted(entries, key=lambda e: e["file"]), start=1):
            h, w = e["size"]
            images.append({"id": image_id, "file_name": e["file"], "height": h, "width": w})
            for r in e["boxes"]:
                box = xyxy_to_xywh(np.array([r[:4]], dtype=np.float64))[0]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": r[4] + 1,
                        "bbox": [round(float(v), 3) for v in box],
                        "area": round(float(box[2] * box[3]), 3),
                        "iscrowd": 0,
                        "score": r[5],
                    }
                )
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.classes.names)]
        path = self.out / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        (self.out / "images" / split).mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        return path

    def _contact_sheet(self, entries: list[dict[str, Any]], tile: int = 320, columns: int = 4) -> Path:
        """A grid PNG of up to ``sheet`` images (spread over the dataset) with their boxes."""
        chosen = sorted(entries, key=lambda e: e["file"])
        step = max(1, len(chosen) // self.sheet)
        chosen = chosen[::step][: self.sheet]
        tiles = []
        for e in chosen:
            image = cv2.imread(os.fspath(self.out / "images" / e["split"] / e["file"]))
            if image is None:
                continue
            rows = np.array(e["boxes"], dtype=np.float64).reshape(-1, 6)
            det = Detections(
                boxes=rows[:, :4], scores=rows[:, 5], labels=rows[:, 4].astype(np.int64),
                names=self.classes.names, image_size=image.shape[:2],
            )  # fmt: skip
            canvas = det.plot(image)
            scale = tile / max(canvas.shape[:2])
            canvas = cv2.resize(canvas, (round(canvas.shape[1] * scale), round(canvas.shape[0] * scale)))
            framed = np.full((tile + 18, tile, 3), 255, np.uint8)  # the image, and its file name below
            framed[: canvas.shape[0], : canvas.shape[1]] = canvas
            cv2.putText(framed, e["file"][:48], (4, tile + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (40, 40, 40), 1)
            tiles.append(framed)
        columns = min(columns, len(tiles))
        blank = np.full((tile + 18, tile, 3), 255, np.uint8)
        grid_rows = [
            np.hstack(tiles[i : i + columns] + [blank] * (columns - len(tiles[i : i + columns])))
            for i in range(0, len(tiles), columns)
        ]
        path = self.out / "contact_sheet.png"
        cv2.imwrite(os.fspath(path), np.vstack(grid_rows))
        return path
