"""Video tracking: per-frame detections → persistent track identities, and what ``ovdet track`` writes.

* :class:`ObjectTracker` links one sequence's detections across frames with a well-kept
  multi-object tracker (ByteTrack, SORT or OC-SORT from the ``trackers`` package; ovdet does not
  implement association itself). With ``class_aware`` (default) every class *name* has its own
  tracker, so boxes of different classes never swap identities and a vocabulary change mid-stream
  leaves the tracks of the classes that stay exactly as they were; ids are unique across classes.
* :class:`TrackingStream` runs the detector frame by frame over a video, a folder of frames, a
  camera or a network stream, asking for the current predictor at every frame (so
  ``set_classes`` between frames takes effect at the next one), and tracks the results with
  bounded memory (one frame at a time).
* :class:`TrackWriter` writes an annotated video (boxes, class, track id, short trails), a
  MOTChallenge text file and a JSON file per sequence, streaming (nothing accumulates per frame).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ovdet.config import TrackConfig
from ovdet.data.images import ImageReadError, is_capture_source, iter_capture, iter_sources
from ovdet.inference.outputs import split_frame_name
from ovdet.inference.predict import BatchPredictor
from ovdet.structures import Detections, label_color

__all__ = ["ObjectTracker", "TrackWriter", "TrackingStream", "collect_tracks", "sequence_name"]


def _trackers() -> Any:
    try:
        import trackers
    except ImportError as e:
        raise ImportError("tracking needs the 'trackers' package (not installed): pip install 'ovdet[track]'") from e
    return trackers


def sequence_name(source: str) -> str:
    """The sequence a frame belongs to: its video (``clip.mp4:frame3`` → ``clip.mp4``), or the
    folder of a still image (a folder of frames is one sequence)."""
    path, frame = split_frame_name(source)
    if frame is not None:
        return path
    return str(Path(path).parent) if os.sep in path or "/" in path else "images"


class ObjectTracker:
    """Assigns persistent ids to the detections of one frame sequence.

    Args:
        cfg: thresholds and the algorithm (:class:`~ovdet.config.TrackConfig`).
        fps: frames per second the sequence is sampled at (scales the lost-track buffer).

    Ids start at 1 and are never reused within the tracker. Only detections that belong to a
    confirmed track are returned (see ``TrackConfig.min_hits``).
    """

    def __init__(self, cfg: TrackConfig | None = None, fps: float = 30.0) -> None:
        self.cfg = cfg if cfg is not None else TrackConfig()
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = float(fps)
        self._lib = _trackers()
        self._trackers: dict[str, Any] = {}  # class name ("" when not class-aware) → tracker
        self._ids: dict[str, dict[int, int]] = {}  # key → {the tracker's own id → global id}, live tracks only
        self._next_id = 1

    def _new_tracker(self) -> Any:
        c, lib = self.cfg, self._lib
        common = {
            "lost_track_buffer": c.buffer,
            "frame_rate": self.fps,
            "minimum_consecutive_frames": c.min_hits,
            "minimum_iou_threshold": c.match_iou,
        }
        if c.tracker == "bytetrack":
            return lib.ByteTrackTracker(
                track_activation_threshold=c.new_track, high_conf_det_threshold=c.high, **common
            )
        if c.tracker == "sort":
            return lib.SORTTracker(track_activation_threshold=c.new_track, **common)
        return lib.OCSORTTracker(high_conf_det_threshold=c.high, **common)

    @property
    def num_tracks(self) -> int:
        """Ids handed out so far."""
        return self._next_id - 1

    def reset(self) -> None:
        """Forget every track (a new sequence); ids continue from where they were."""
        self._trackers.clear()
        self._ids.clear()

    def update(self, detections: Detections) -> Detections:
        """Track one frame.

        Args:
            detections: the frame's detections (any vocabulary; names are what tracks are keyed by).

        Returns:
            The detections that belong to a confirmed track, with ``track_ids`` (N,) set, sorted
            by score; boxes, scores and labels are the detector's (not smoothed).
        """
        import supervision as sv  # a dependency of the trackers package

        keep = detections.scores >= self.cfg.conf
        d = detections[keep] if not bool(keep.all()) else detections
        boxes = d.boxes.numpy().astype(np.float64)
        scores = d.scores.numpy().astype(np.float64)
        labels = d.labels.numpy()
        keys = [d.names[int(i)] for i in labels] if self.cfg.class_aware else [""] * len(d)
        present = set(keys)
        for key in present - set(self._trackers):
            self._trackers[key], self._ids[key] = self._new_tracker(), {}
        rows_out: list[int] = []
        ids_out: list[int] = []
        for key in list(self._trackers):
            rows = np.array([i for i, k in enumerate(keys) if k == key], dtype=np.int64)
            frame = sv.Detections(
                xyxy=boxes[rows].reshape(-1, 4), confidence=scores[rows], class_id=rows.astype(int)
            )  # class_id carries each box's row in ``d``
            tracker, ids = self._trackers[key], self._ids[key]
            result = tracker.update(frame)
            for row, local in zip(np.asarray(result.class_id).tolist(), np.asarray(result.tracker_id).tolist()):
                if local < 0:  # a detection not (yet) in a confirmed track
                    continue
                if local not in ids:
                    ids[local] = self._next_id
                    self._next_id += 1
                rows_out.append(int(row))
                ids_out.append(ids[local])
            live = {t.tracker_id for t in tracker.tracks}
            for local in [i for i in ids if i not in live]:  # ended tracks: memory follows live tracks only
                del ids[local]
            if key not in present and not tracker.tracks:
                # a class that left the vocabulary (or the frame) and whose tracks all ended
                del self._trackers[key], self._ids[key]
        # rows of ``d`` in ascending order keep its descending scores, so the ids stay aligned
        order = np.argsort(np.asarray(rows_out, dtype=np.int64), kind="stable")
        rows = torch.as_tensor(np.asarray(rows_out, dtype=np.int64)[order])
        return dataclasses.replace(d[rows], track_ids=torch.as_tensor(np.asarray(ids_out, dtype=np.int64)[order]))


class TrackingStream(Iterable[Detections]):
    """Lazy tracked detections over a source, one frame at a time.

    Args:
        predictor: called before every frame for the predictor to run (so a vocabulary changed
            between frames is used from the next frame on).
        source: a video file, a folder or glob of frames (sorted by name: one sequence), a list
            of those, a camera index (``0``) or a stream URL (``rtsp://…``).
        cfg: tracking settings.
        keep_images: keep each frame on its Detections (for plotting and the annotated video).
        video_stride: use every n-th frame (the tracker's frame rate is divided by n).
        max_pixels: largest frame decoded (see :func:`~ovdet.data.images.resolve_max_pixels`).
        tracker: continue this tracker's tracks in the first sequence (frames fed one call at a
            time, ``Detector.track(frame, persist=True)``); later sequences get new trackers.

    Attributes:
        skipped: (source, reason) of every frame or file that could not be read.
        notes: (source, message) native decoders printed.
        fps: frames per second of each video sequence, by path.
        seen: frames tracked so far.
        sequences: sequences started so far, in order.
        tracker: the current sequence's :class:`ObjectTracker` (a new one for every sequence).
    """

    def __init__(
        self,
        predictor: Callable[[], BatchPredictor],
        source: Any,
        cfg: TrackConfig | None = None,
        keep_images: bool = True,
        video_stride: int = 1,
        max_pixels: int | None = None,
        tracker: ObjectTracker | None = None,
    ) -> None:
        self.predictor, self.cfg, self.keep_images = predictor, cfg or TrackConfig(), keep_images
        self.video_stride = video_stride
        if is_capture_source(source):
            self.items = iter_capture(source, video_stride=video_stride, max_pixels=max_pixels)
        else:
            self.items = iter_sources(source, video_stride=video_stride, max_pixels=max_pixels)
        _trackers()  # fail now, not at the first frame, when the tracker package is missing
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[tuple[str, str]] = []
        self.fps: dict[str, float] = {}
        self.seen = 0
        self.sequences: list[str] = []
        self.tracker: ObjectTracker | None = None
        self._continue = tracker

    def __iter__(self) -> Iterator[Detections]:
        for item in self.items:
            self.notes.extend((item.name, n) for n in item.notes)
            seq = sequence_name(item.name)
            if item.fps is not None:
                self.fps[seq] = item.fps
            if item.error is not None or item.image is None:
                self.skipped.append((item.name, item.error or f"{item.name}: no image"))
                continue
            if not self.sequences or seq != self.sequences[-1]:
                self.sequences.append(seq)
                if self._continue is not None:
                    self.tracker, self._continue = self._continue, None
                else:
                    self.tracker = ObjectTracker(self.cfg, fps=(item.fps or 30.0) / self.video_stride)
            det = self.predictor()([item.image], [item.name], self.keep_images)[0]
            self.seen += 1
            yield self.tracker.update(det)  # type: ignore[union-attr]


def collect_tracks(run: TrackingStream) -> list[Detections]:
    """Run a tracking stream to the end.

    Raises:
        ImageReadError: no frame could be read (the reasons are named).
    """
    results = list(run)
    if not results and run.skipped:
        reasons = "; ".join(r for _, r in run.skipped[:3])
        raise ImageReadError(f"no frame could be read: {reasons}")
    return results


class _Sequence:
    """The open output files of one sequence."""

    def __init__(self, stem: str, save_dir: Path) -> None:
        self.stem = stem
        self.mot_path = save_dir / f"{stem}.txt"
        self.json_path = save_dir / f"{stem}.json"
        self.video_path = save_dir / f"{stem}.mp4"
        self.mot = open(self.mot_path.with_suffix(".txt.part"), "w", encoding="utf-8")  # noqa: SIM115
        self.json = open(self.json_path.with_suffix(".json.part"), "w", encoding="utf-8")  # noqa: SIM115
        self.video: cv2.VideoWriter | None = None
        self.frames = 0
        self.boxes = 0
        self.tracks: dict[int, dict[str, Any]] = {}  # id → {name, first, last, frames}
        self.trails: dict[int, deque] = {}
        self.last_seen: dict[int, int] = {}


class TrackWriter:
    """Writes tracked frames: per sequence ``<name>.mp4`` (annotated), ``<name>.txt``
    (MOTChallenge: ``frame,id,x,y,w,h,score,-1,-1,-1``, frames from 1) and ``<name>.json``
    (every frame's tracked boxes, then one summary row per track).

    Files are written as frames arrive (no per-frame state is kept beyond the trails of live
    tracks) and appear under their final names when the sequence is finished.

    Args:
        save_dir: output folder (created at the first frame).
        video: write the annotated video (needs frames kept on the Detections).
        trail: centre points drawn behind each box (0: none).
        fps: frames per second of the output video, by sequence (default 30).
    """

    def __init__(self, save_dir: str | Path, video: bool = True, trail: int = 30, fps: dict[str, float] | None = None):
        self.save_dir = Path(save_dir)
        self.video, self.trail = video, trail
        self.fps = fps if fps is not None else {}
        self.written: list[Path] = []
        self.summaries: list[dict[str, Any]] = []
        self._current: _Sequence | None = None
        self._sequence: str | None = None
        self._stems: set[str] = set()

    def _start(self, sequence: str) -> _Sequence:
        self.finish()
        self.save_dir.mkdir(parents=True, exist_ok=True)
        base = Path(sequence).stem or "sequence"
        stem, i = base, 1
        while stem in self._stems:
            stem, i = f"{base}_{i}", i + 1
        self._stems.add(stem)
        seq = _Sequence(stem, self.save_dir)
        seq.json.write('{"source": ' + json.dumps(sequence) + ', "frames": [\n')
        self._current, self._sequence = seq, sequence
        return seq

    def add(self, d: Detections) -> None:
        """Record one tracked frame (``d.track_ids`` must be set)."""
        if d.track_ids is None:
            raise ValueError(f"TrackWriter.add needs tracked detections (track_ids is None) for {d.path}")
        sequence = sequence_name(str(d.path))
        seq = self._current if sequence == self._sequence and self._current is not None else self._start(sequence)
        _, frame = split_frame_name(str(d.path))
        index = frame if frame is not None else seq.frames  # 0-based
        seq.frames += 1
        seq.boxes += len(d)
        rec = d.to_dict()
        rec.pop("names")
        rec["frame"] = index
        seq.json.write(("" if seq.frames == 1 else ",\n") + json.dumps(rec))
        for box, score, label, tid in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), d.track_ids.tolist()):
            x1, y1, x2, y2 = box
            seq.mot.write(f"{index + 1},{tid},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.5f},-1,-1,-1\n")
            t = seq.tracks.setdefault(tid, {"id": tid, "name": d.names[label], "first_frame": index, "frames": 0})
            t["last_frame"], t["frames"] = index, t["frames"] + 1
            if self.trail:
                seq.trails.setdefault(tid, deque(maxlen=self.trail)).append(((x1 + x2) / 2, (y1 + y2) / 2, label))
                seq.last_seen[tid] = index
        if self.video and d.image is not None:
            self._draw(seq, d, index)

    def _draw(self, seq: _Sequence, d: Detections, index: int) -> None:
        canvas = d.plot()
        # trails of tracks seen recently; older ones are dropped (bounded memory)
        for tid in [t for t, last in seq.last_seen.items() if index - last > self.trail]:
            seq.last_seen.pop(tid)
            seq.trails.pop(tid, None)
        lw = max(1, round(0.002 * sum(d.image_size)))
        for points in seq.trails.values():
            if len(points) > 1:
                xy = np.array([(x, y) for x, y, _ in points], np.int32).reshape(-1, 1, 2)
                cv2.polylines(canvas, [xy], False, label_color(points[-1][2]), lw, cv2.LINE_AA)
        if seq.video is None:
            h, w = d.image_size
            fps = float(self.fps.get(self._sequence or "") or 30.0)
            seq.video = cv2.VideoWriter(str(seq.video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not seq.video.isOpened():
                raise OSError(f"cannot write video {seq.video_path} (OpenCV has no mp4v encoder here)")
        seq.video.write(canvas)

    def finish(self) -> None:
        """Close the current sequence's files (called for you when a new sequence starts)."""
        seq, self._current, self._sequence = self._current, None, None
        if seq is None:
            return
        tracks = sorted(seq.tracks.values(), key=lambda t: t["id"])
        seq.json.write('\n], "tracks": ' + json.dumps(tracks) + "}\n")
        for f, path in ((seq.mot, seq.mot_path), (seq.json, seq.json_path)):
            f.close()
            os.replace(path.with_suffix(path.suffix + ".part"), path)
            self.written.append(path)
        if seq.video is not None:
            seq.video.release()
            self.written.append(seq.video_path)
        self.summaries.append(
            {
                "sequence": seq.stem,
                "frames": seq.frames,
                "boxes": seq.boxes,
                "tracks": len(tracks),
                "per_class": _count(t["name"] for t in tracks),
            }
        )

    close = finish


def _count(names: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return out
