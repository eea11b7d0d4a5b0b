"""Video tracking (issue #16): identities on a synthetic video with known paths
(:mod:`tests.synthetic_video`: real coco128 crops, an occlusion, an exit and a return), vocabulary
changes mid-stream, the outputs (annotated video, MOTChallenge text, JSON), and bad videos.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from ovdet.cli import main
from ovdet.config import ConfigError, TrackConfig
from ovdet.data.images import ImageReadError
from ovdet.inference.track import ObjectTracker, TrackWriter
from ovdet.structures import Detections
from tests.helpers import make_detector
from tests.synthetic_video import DOG_OUT, H, Synthetic, T, W, build_synthetic, identity_scores


@pytest.fixture(scope="module")
def synthetic(data_dir: Path) -> Synthetic:
    return build_synthetic(data_dir)


@pytest.fixture(scope="module")
def video(synthetic: Synthetic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "walk.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (W, H))
    assert writer.isOpened()
    for frame in synthetic.frames[:60]:
        writer.write(frame)
    writer.release()
    return path


def _ids_of(tracked: list[Detections], truth: list[dict[int, np.ndarray]], obj: int, frames: range) -> set[int]:
    """Track ids given to object ``obj``'s box (best IoU ≥ 0.5) in those frames."""
    out = set()
    for t in frames:
        if obj not in truth[t] or not len(tracked[t]):
            continue
        iou = box_iou(torch.as_tensor(truth[t][obj][None], dtype=torch.float32), tracked[t].boxes)[0]
        if float(iou.max()) >= 0.5:
            out.add(int(tracked[t].track_ids[int(iou.argmax())]))
    return out


# ------------------------------------------------------------------------------ identities
def test_bytetrack_keeps_identities_on_the_synthetic_video(synthetic: Synthetic) -> None:
    # the scene does what the test claims: an occlusion, an exit and a return
    assert any(1 not in synthetic.truth[t] for t in range(60, 90)), "person 1 is never hidden"
    assert all(3 not in synthetic.truth[t] for t in DOG_OUT) and 3 in synthetic.truth[DOG_OUT.stop + 5]
    low = sum(float(s) < 0.25 for d in synthetic.detections for s in d.scores)
    assert low >= 3, "no low-score (partly occluded) detections"
    tracker = ObjectTracker(TrackConfig(), fps=25.0)
    tracked = [tracker.update(d) for d in synthetic.detections]
    scores = identity_scores(synthetic.truth, tracked)
    print(
        f"synthetic video: IDF1 {scores['idf1']:.3f}, MOTA {scores['mota']:.3f}, switches {scores['num_switches']:.0f}"
    )
    assert scores["idf1"] >= 0.9
    # the two people keep their own ids through the crossing (the hidden one included)
    before, after = range(0, 55), range(100, T)
    for person in (1, 2):
        assert _ids_of(tracked, synthetic.truth, person, before) == _ids_of(tracked, synthetic.truth, person, after)
        assert len(_ids_of(tracked, synthetic.truth, person, range(T))) == 1
    assert _ids_of(tracked, synthetic.truth, 1, range(T)) != _ids_of(tracked, synthetic.truth, 2, range(T))
    # the dog: one id before it leaves, one id after it comes back (ByteTrack has no appearance
    # re-identification: the return after 23 frames off-picture starts a new track)
    assert len(_ids_of(tracked, synthetic.truth, 3, range(0, DOG_OUT.start))) == 1
    assert len(_ids_of(tracked, synthetic.truth, 3, range(DOG_OUT.stop, T))) == 1
    for d in tracked:  # every returned box is tracked, ids unique within a frame
        assert d.track_ids is not None and len(set(d.track_ids.tolist())) == len(d)
        assert bool((d.track_ids >= 1).all())


def test_low_score_boxes_keep_tracks_alive_but_start_none(synthetic: Synthetic) -> None:
    """Without ByteTrack's second stage (new_track = high = conf), partly hidden frames are lost."""
    two_stage = ObjectTracker(TrackConfig(), fps=25.0)
    tracked = [two_stage.update(d) for d in synthetic.detections]
    kept_low = sum(float(s) < 0.25 for d in tracked for s in d.scores)
    assert kept_low >= 3  # low-score boxes matched to existing tracks are returned with their ids
    lone = Detections(
        boxes=[[5.0, 5.0, 60.0, 60.0]], scores=[0.2], labels=[0], names=["person"], image_size=(H, W), path="x.jpg"
    )
    fresh = ObjectTracker(TrackConfig(), fps=25.0)
    assert len(fresh.update(lone)) == 0 and fresh.num_tracks == 0  # a low score alone starts nothing


@pytest.mark.parametrize("tracker", ["sort", "ocsort"])
def test_other_trackers_run(synthetic: Synthetic, tracker: str) -> None:
    t = ObjectTracker(TrackConfig(tracker=tracker), fps=25.0)
    tracked = [t.update(d) for d in synthetic.detections]
    assert identity_scores(synthetic.truth, tracked)["idf1"] >= 0.7


def test_vocabulary_change_keeps_tracks_of_classes_that_stay(synthetic: Synthetic) -> None:
    """From frame 60 the vocabulary is ["car", "person"] (dog gone, indices moved): the people and
    the car keep their ids, and no dog box is returned."""
    switch = 60
    tracker = ObjectTracker(TrackConfig(), fps=25.0)
    new_names = ["car", "person"]
    tracked = []
    for t, d in enumerate(synthetic.detections):
        if t >= switch:
            keep = torch.tensor([d.names[int(i)] in new_names for i in d.labels], dtype=torch.bool)
            d = d[keep]
            d = Detections(
                boxes=d.boxes,
                scores=d.scores,
                labels=[new_names.index(d.names[int(i)]) for i in d.labels],
                names=new_names,
                image_size=d.image_size,
                path=d.path,
            )
        tracked.append(tracker.update(d))
    for obj in (1, 2, 4):
        ids = _ids_of(tracked, synthetic.truth, obj, range(T))
        assert len(ids) == 1, (obj, ids)
    after = [tracked[t].names[int(i)] for t in range(switch, T) for i in tracked[t].labels]
    assert "dog" not in after and "person" in after and "car" in after
    # the dog's tracker ended once its lost tracks expired: no state kept for a dropped class
    assert "dog" not in tracker._trackers


def test_class_aware_never_links_across_classes() -> None:
    """The same box labelled person then dog: two ids when class-aware, one id otherwise."""
    names = ["person", "dog"]
    frames = [
        Detections(
            boxes=[[100.0, 100.0, 200.0, 220.0]], scores=[0.8], labels=[t // 5], names=names, image_size=(H, W),
            path=f"v.mp4:frame{t}",
        )
        for t in range(10)
    ]  # fmt: skip
    aware = ObjectTracker(TrackConfig(), fps=30.0)
    out = [aware.update(d) for d in frames]
    # a new track's id comes with its second frame (frames 0 and 5 start a track)
    assert [d.track_ids.tolist() for d in out] == [[]] + [[1]] * 4 + [[]] + [[2]] * 4
    agnostic = ObjectTracker(TrackConfig(class_aware=False), fps=30.0)
    out = [agnostic.update(d) for d in frames]
    assert [d.track_ids.tolist() for d in out] == [[]] + [[1]] * 9
    assert out[-1].names[int(out[-1].labels[0])] == "dog"


def test_track_config_and_detections_validation() -> None:
    with pytest.raises(ConfigError, match="track.tracker"):
        TrackConfig(tracker="deepsort")
    with pytest.raises(ConfigError, match="track.high"):
        TrackConfig(conf=0.5, high=0.3)
    with pytest.raises(ValueError, match="track_ids must be"):
        Detections(
            boxes=[[0.0, 0.0, 1.0, 1.0]], scores=[0.5], labels=[0], names=["a"], image_size=(4, 4), track_ids=[1, 2]
        )
    d = Detections(
        boxes=[[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0]], scores=[0.2, 0.9], labels=[0, 0], names=["a"],
        image_size=(4, 4), track_ids=[7, 3],
    )  # fmt: skip
    assert d.track_ids.tolist() == [3, 7]  # reordered with the scores
    assert [r["track_id"] for r in d.to_dict()["detections"]] == [3, 7]
    assert d[1:].track_ids.tolist() == [7]


# ------------------------------------------------------------------------------ outputs
def test_writer_outputs_match_the_tracks(synthetic: Synthetic, tmp_path: Path) -> None:
    tracker = ObjectTracker(TrackConfig(), fps=25.0)
    writer = TrackWriter(tmp_path / "out", fps={"synthetic.mp4": 25.0})
    tracked = []
    for frame, d in zip(synthetic.frames, synthetic.detections):
        d = Detections(d.boxes, d.scores, d.labels, d.names, d.image_size, d.path, image=frame)
        tracked.append(tracker.update(d))
        writer.add(tracked[-1])
    writer.close()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["synthetic.json", "synthetic.mp4", "synthetic.txt"]
    rows = np.loadtxt(out / "synthetic.txt", delimiter=",", ndmin=2)
    assert len(rows) == sum(len(d) for d in tracked)
    assert rows[:, 0].min() >= 1 and rows[:, 0].max() <= T and (rows[:, 7:] == -1).all()
    first = tracked[10]
    mine = rows[rows[:, 0] == 11]
    want = {int(i): b for i, b in zip(first.track_ids.tolist(), first.boxes.numpy())}
    for r in mine:  # MOT x, y, w, h equal the tracked box
        b = want[int(r[1])]
        np.testing.assert_allclose(r[2:6], [b[0], b[1], b[2] - b[0], b[3] - b[1]], atol=0.01)
    doc = json.loads((out / "synthetic.json").read_text())
    assert doc["source"] == "synthetic.mp4" and len(doc["frames"]) == T
    assert {t["id"] for t in doc["tracks"]} == {int(i) for d in tracked for i in d.track_ids}
    person = next(t for t in doc["tracks"] if t["id"] == int(tracked[5].track_ids[0]))
    assert person["frames"] == sum(int(person["id"]) in d.track_ids.tolist() for d in tracked)
    cap = cv2.VideoCapture(str(out / "synthetic.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == T and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == W
    cap.set(cv2.CAP_PROP_POS_FRAMES, 40)
    ok, shown = cap.read()
    cap.release()
    assert ok
    # the annotated frame differs from the raw one where the boxes are drawn, and only a little elsewhere
    diff = np.abs(shown.astype(int) - synthetic.frames[40].astype(int)).sum(2)
    b = tracked[40].boxes[0].round().int().tolist()
    assert diff[b[1] : b[1] + 3, b[0] : b[2]].mean() > 60  # the box's top edge is drawn
    assert np.median(diff) < 12  # mp4v compression noise elsewhere
    assert writer.summaries[0]["frames"] == T and writer.summaries[0]["tracks"] == len(doc["tracks"])


# ------------------------------------------------------------------------------ end to end
def test_detector_track_end_to_end_and_mid_stream_vocabulary(video: Path) -> None:
    det = make_detector(2)
    stream = det.track(video, classes=["person", "dog"], imgsz=320, conf=0.05, stream=True, keep_images=False)
    names_seen = []
    for i, d in enumerate(stream):
        names_seen.append(tuple(d.names))
        assert d.track_ids is not None and d.path == f"{video}:frame{i}"
        if i == 29:
            tracker = stream.tracker
            det.set_classes(["person", "car"])  # takes effect from the next frame
    assert stream.seen == 60 and not stream.skipped and stream.sequences == [str(video)]
    assert names_seen[:30] == [("person", "dog")] * 30 and names_seen[30:] == [("person", "car")] * 30
    assert stream.tracker is tracker  # the change did not restart tracking
    assert stream.fps[str(video)] == pytest.approx(25.0)
    assert det.names == ["person", "car"]


def test_cli_track_writes_every_output(video: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = make_detector(2).save(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["track", "--model", str(model), "--classes", "person,dog,car", "--source", str(video)]
    code = main([*argv, "--save-dir", str(out), "--imgsz", "320", "--conf", "0.05", "--device", "cpu", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "60 frames" in text and "walk.mp4" in text
    assert sorted(p.name for p in out.iterdir()) == ["walk.json", "walk.mp4", "walk.txt"]
    doc = json.loads((out / "walk.json").read_text())
    assert [f["frame"] for f in doc["frames"]] == list(range(60))
    rows = (
        np.loadtxt(out / "walk.txt", delimiter=",", ndmin=2) if (out / "walk.txt").stat().st_size else np.zeros((0, 10))
    )
    assert len(rows) == sum(len(f["detections"]) for f in doc["frames"])
    assert {int(i) for i in rows[:, 1]} == {t["id"] for t in doc["tracks"]}
    cap = cv2.VideoCapture(str(out / "walk.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 60
    cap.release()


def test_bad_videos_give_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    det = make_detector(2)
    det.set_classes(["person"])
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match="corrupt.mp4: cannot open video"):
        det.track(corrupt)
    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    writer.release()
    with pytest.raises(ImageReadError, match="empty.avi: video has no decodable frames"):
        det.track(empty)
    model = det.save(tmp_path / "model")
    for bad in (corrupt, empty):
        code = main(["track", "--model", str(model), "--classes", "person", "--source", str(bad), "--device", "cpu"])
        assert code == 1
        assert bad.name in capsys.readouterr().err
    code = main(["track", "--model", str(model), "--classes", "person", "--source", str(tmp_path / "nope.mp4")])
    assert code == 2 and "--source" in capsys.readouterr().err
    with pytest.raises(TypeError, match="unknown argument"):
        det.track(corrupt, frame_rate=30)


def test_camera_and_stream_sources(synthetic: Synthetic, tmp_path: Path) -> None:
    """A network stream (the test video over HTTP on loopback) tracks like the file; a missing
    camera or an unreachable stream is one clear error."""
    import functools
    import http.server
    import threading

    from ovdet.data.images import is_capture_source, iter_capture

    assert is_capture_source(0) and is_capture_source("1") and is_capture_source("rtsp://cam/1")
    # MJPG in AVI reads front to back (an mp4 keeps its index at the end, which needs HTTP ranges)
    video = tmp_path / "walk.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (W, H))
    for frame in synthetic.frames[:60]:
        writer.write(frame)
    writer.release()
    assert not is_capture_source(str(video)) and not is_capture_source(True)
    assert [i.error for i in iter_capture(9)] == ["camera9: cannot open the camera (no such device, or in use)"]
    det = make_detector(2)
    det.set_classes(["person", "dog"])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(video.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{video.name}"
        remote = det.track(url, imgsz=320, conf=0.05, keep_images=False, video_stride=6)
    finally:
        server.shutdown()
    local = det.track(video, imgsz=320, conf=0.05, keep_images=False, video_stride=6)
    assert len(remote) == len(local) == 10 and sum(len(d) for d in local) >= 10
    for a, b in zip(remote, local):
        assert a.path == b.path.replace(str(video), url)
        assert torch.equal(a.track_ids, b.track_ids) and torch.allclose(a.boxes, b.boxes)
    with pytest.raises(ImageReadError, match="cannot open the stream"):
        det.track("rtsp://127.0.0.1:1/none")


def test_persist_continues_tracks_across_calls(synthetic: Synthetic) -> None:
    """``track(frame, persist=True)`` frame by frame (a user's own capture loop) equals tracking the
    frames in one call; without persist every call starts over (a new track needs two frames)."""
    det = make_detector(2)
    det.set_classes(["person", "dog", "car"])
    frames = synthetic.frames[:12]
    whole = det.track(frames, imgsz=320, conf=0.05, keep_images=False)
    assert sum(len(d) for d in whole) >= 10
    one_by_one = [det.track(f, imgsz=320, conf=0.05, keep_images=False, persist=True)[0] for f in frames]
    for a, b in zip(one_by_one, whole):
        assert torch.equal(a.track_ids, b.track_ids) and torch.allclose(a.boxes, b.boxes)
    fresh = [det.track(f, imgsz=320, conf=0.05, keep_images=False)[0] for f in frames[:3]]
    assert [len(d) for d in fresh] == [0, 0, 0]
    again = det.track(frames[0], imgsz=320, conf=0.05, persist=True)[0]  # persist=False forgot the old tracks
    assert len(again) == 0
