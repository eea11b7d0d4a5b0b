"""What ``ovdet predict`` leaves on disk: annotated images, annotated videos, frame images, predictions.json.

Nothing is created until there is something to write, so a run that fails before its first
result leaves no empty folder behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2

from ovdet.evaluation.predictions import write_predictions
from ovdet.structures import Detections

__all__ = ["PredictionWriter", "split_frame_name"]

#: digits of frame numbers in frame-image names: ``clip_frame000012.jpg`` sorts correctly
FRAME_DIGITS = 6


def split_frame_name(source: str) -> tuple[str, int | None]:
    """``"path/clip.mp4:frame12"`` → ``("path/clip.mp4", 12)``; an image path → ``(path, None)``."""
    path, sep, frame = source.rpartition(":frame")
    if sep and frame.isdigit():
        return path, int(frame)
    return source, None


class PredictionWriter:
    """Writes one run's results into a folder.

    Args:
        save_dir: the folder (created on the first write).
        images: write one annotated image per still image.
        videos: write one annotated video per video source (same size and frame rate).
        frames: also write every video frame as an annotated image (zero-padded frame numbers).
        fps: frames per second of each video source, by path (looked up when a video starts;
            default 30 when unknown).

    Attributes:
        records: one ``Detections.to_dict()`` per image or frame, with ``annotated`` (the file
            showing it) and ``frame`` (video frames).
        written: every file written.
    """

    def __init__(
        self,
        save_dir: str | Path,
        images: bool = True,
        videos: bool = True,
        frames: bool = False,
        fps: Mapping[str, float] | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.images, self.videos, self.frames = images, videos, frames
        self.fps = fps if fps is not None else {}
        self.records: list[dict[str, Any]] = []
        self.written: list[Path] = []
        self._names: dict[str, Path] = {}  # source (image path or video path) → output path
        self._writers: dict[str, cv2.VideoWriter] = {}

    def add(self, d: Detections) -> dict[str, Any]:
        """Record (and draw) one image's or frame's detections; returns its record."""
        rec = d.to_dict()
        source, frame = split_frame_name(str(d.path))
        if frame is None:
            if self.images and d.image is not None:
                rec["annotated"] = self._save_image(d, self._output(source, ".jpg")).name
        else:
            rec["frame"] = frame
            if self.videos and d.image is not None:
                rec["annotated"] = self._video_frame(source, d).name
            if self.frames and d.image is not None:
                stem = self._output(source, ".mp4").stem
                name = self.save_dir / f"{stem}_frame{frame:0{FRAME_DIGITS}d}.jpg"
                path = self._save_image(d, name)
                rec.setdefault("annotated", path.name)
        self.records.append(rec)
        return rec

    def close(self, names: list[str], skipped: list[tuple[str, str]]) -> Path:
        """Finish every video and write ``predictions.json``; returns its path."""
        for writer in self._writers.values():
            writer.release()
        self._writers.clear()
        path = write_predictions(self.save_dir / "predictions.json", names, self.records, skipped)
        self.written.append(path)
        return path

    def _output(self, source: str, suffix: str) -> Path:
        """A distinct output path per source: ``<stem><suffix>``, ``<stem>_1<suffix>``, …"""
        if source not in self._names:
            stem, taken, i = Path(source).stem, {p.stem for p in self._names.values()}, 1
            name = stem
            while name in taken:
                name, i = f"{stem}_{i}", i + 1
            self._names[source] = self.save_dir / name
        return self._names[source].with_suffix(suffix)

    def _save_image(self, d: Detections, path: Path) -> Path:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        d.save(path)
        self.written.append(path)
        return path

    def _video_frame(self, source: str, d: Detections) -> Path:
        path = self._output(source, ".mp4")
        writer = self._writers.get(source)
        if writer is None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            h, w = d.image_size
            fps = float(self.fps.get(source) or 30.0)
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise OSError(f"cannot write video {path} (OpenCV has no mp4v encoder here)")
            self._writers[source] = writer
            self.written.append(path)
        writer.write(d.plot())
        return path
