"""Video tracking side by side with ultralytics, and end to end with ovdet-demo.

Speed: the synthetic tracking video of ``tests/synthetic_video.py`` (real coco128 crops on known
paths, 150 frames, 640x384) tracked with ByteTrack by ultralytics' ``YOLO.track`` and by
``Detector.track``, on the same converted random v2-s weights (BatchNorm statistics set on
coco128), the same 80-class embeddings, 640, nothing written; rows interleaved, medians of the
rounds. A random model's scores are low, so both start tracks at 0.15 and keep them with boxes
down to 0.05 (ultralytics: a tracker yaml with those thresholds; ovdet: ``high`` / ``new_track`` /
``conf``), and ultralytics matches at IoU >= 0.1 without multiplying IoU by the score (ovdet's
``match_iou``; with ``fuse_score`` a random model's low scores confirm no track at all). Only
boxes with a track id are counted (ultralytics returns a frame's raw detections,
without ids, when its tracker outputs nothing).

Quality: ``ovdet-demo`` tracks the same video with ``person, dog, car`` and its identities are
scored against the known boxes (motmetrics IDF1 / MOTA / switches, IoU >= 0.5). A random model's
identities mean nothing, so this row has no ultralytics peer.

    python benchmarks/bench_track.py --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    DEFAULT_DATA,
    interleaved,
    machine,
    ovdet_detector,
    ultralytics_pair,
    ultralytics_predictor,
)
from tests.synthetic_video import H, W, build_synthetic, identity_scores  # noqa: E402


def write_video(frames: list, path: Path, fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data).resolve()
    scene = build_synthetic(data)
    frames = len(scene.frames)
    print(machine("cpu", args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(scene.frames, Path(tmp) / "walk.mp4")
        _, pt, text = ultralytics_pair(data, Path(tmp))
        yolo = ultralytics_predictor(pt, text)
        det = ovdet_detector(pt, text)
        boxes: dict[str, int] = {}
        cfg = Path(tmp) / "bytetrack.yaml"
        cfg.write_text(
            "tracker_type: bytetrack\ntrack_high_thresh: 0.15\ntrack_low_thresh: 0.05\nnew_track_thresh: 0.15\n"
            "track_buffer: 30\nmatch_thresh: 0.9\nfuse_score: False\n"
        )

        def run_ultralytics() -> None:
            n = 0
            for r in yolo.track(str(video), tracker=str(cfg), conf=0.05, imgsz=args.imgsz, stream=True, verbose=False):
                n += len(r.boxes) if r.boxes.is_track else 0
            boxes["ultralytics"] = n

        def run_ovdet() -> None:
            n = 0
            stream = det.track(
                video, conf=0.05, high=0.15, new_track=0.15, imgsz=args.imgsz, stream=True, keep_images=False
            )
            for d in stream:
                n += len(d)
            boxes["ovdet"] = n

        rows = interleaved(
            {"ultralytics": run_ultralytics, "ovdet": run_ovdet},
            rounds=args.rounds,
            items=frames,
            threads=args.threads,
        )
        print(f"ByteTrack on {frames} frames ({W}x{H}, v2-s random weights, 80 classes, imgsz {args.imgsz}):")
        for name, label in (("ultralytics", "ultralytics YOLO.track"), ("ovdet", "ovdet Detector.track")):
            t = rows[name]
            print(
                f"  {label:<22} {1000 * t.median:7.1f} ms/frame (±{500 * t.spread:.1f}), "
                f"{1 / t.median:5.2f} fps, {boxes[name]} tracked boxes"
            )
        print(f"  ovdet / ultralytics time: {rows['ovdet'].median / rows['ultralytics'].median:.2f}")

        if not args.skip_quality:
            from ovdet import Detector

            demo = Detector.from_pretrained("ovdet-demo", device="cpu")
            demo.set_classes(["person", "dog", "car"])
            t0 = time.perf_counter()
            tracked = demo.track(video, imgsz=args.imgsz, keep_images=False)
            seconds = time.perf_counter() - t0
            s = identity_scores(scene.truth, tracked)
            print(
                f"ovdet-demo end to end ({frames / seconds:.1f} fps): IDF1 {s['idf1']:.3f}, MOTA {s['mota']:.3f}, "
                f"{s['num_switches']:.0f} identity switches"
            )
            perfect = identity_scores(scene.truth, _tracked_truth(scene))
            print(
                f"ByteTrack on detections from the known boxes: IDF1 {perfect['idf1']:.3f}, MOTA {perfect['mota']:.3f}"
            )


def _tracked_truth(scene) -> list:
    from ovdet.config import TrackConfig
    from ovdet.inference.track import ObjectTracker

    tracker = ObjectTracker(TrackConfig(), fps=25.0)
    return [tracker.update(d) for d in scene.detections]


if __name__ == "__main__":
    main()
