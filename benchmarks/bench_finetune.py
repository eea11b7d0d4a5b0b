"""Fine-tuning side by side on real custom data: ovdet vs ultralytics' ``WorldTrainer``, same start.

The start is a real detector: the COCO-trained YOLOv8n int8 ONNX export in ``../shared/weights``,
imported by ovdet (:meth:`Detector.from_onnx`) into a YOLO-World v2-n network with its COCO
classifier carried over through the real CLIP ViT-B/32 embeddings of the 80 COCO names. The same
weights are written into an ultralytics ``WorldModel`` (``yolov8n-worldv2.yaml``, tensor by tensor
through ovdet's name table) so both trainers start from identical numbers.

Data: Raccoon (200 real photos, Pascal VOC xml), its ``train.txt`` (160) / ``val.txt`` (40)
split. ovdet reads the VOC folder directly; ultralytics gets a YOLO-format copy written from the
same records (identical boxes). Both use the real CLIP embedding of "Raccoon" (CLIP's tokenizer
lower-cases, so it is the embedding of "raccoon"), the same image size, batch, epochs and
workers, and each its own default recipe (optimizer, learning rate, warmup, augmentation, EMA,
mosaic off for the last 10 epochs).

Scoring is the same for both: ovdet's validation (pycocotools, conf 0.001, IoU 0.7, max 300) on
the 40 val images, of the zero-shot start, after every epoch (ultralytics' EMA model converted to
ovdet in a callback; the callback's time is not counted as training time) and of the final models.

    python benchmarks/bench_finetune.py --epochs 30 --imgsz 320 --batch 16
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")  # this benchmark process only: no hub or DNS probes by ultralytics
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEFAULT_DATA, write_yolo_copy  # noqa: E402

CLASS = "raccoon"


def clip_table(data: Path) -> dict[str, torch.Tensor]:
    """Lower-cased name → unit CLIP ViT-B/32 embedding, from the shared tables."""
    folder = data / "clip-vit-b32-text"
    table: dict[str, torch.Tensor] = {}
    for part in ("coco", "lvis", "objects365", "openimages"):
        names = (folder / f"{part}.txt").read_text(encoding="utf-8").splitlines()
        emb = torch.nn.functional.normalize(torch.from_numpy(np.load(folder / f"{part}.npy").astype(np.float32)), dim=1)
        for n, e in zip(names, emb):
            table.setdefault(n.lower(), e)
    return table


def to_ultralytics(net, scale: str = "n"):
    """An ultralytics v2 ``WorldModel`` holding exactly ``net``'s weights."""
    from ultralytics.nn.tasks import WorldModel

    from ovdet.weights import ultralytics_name

    model = WorldModel(f"yolov8{scale}-worldv2.yaml", verbose=False)
    theirs = model.state_dict()
    mapped = {ultralytics_name(k, 2): v.detach().clone() for k, v in net.state_dict().items()}
    left = [k for k in theirs if k not in mapped and ".dfl." not in k]
    unknown = [k for k in mapped if k not in theirs]
    if left or unknown:
        raise SystemExit(f"weight transfer to ultralytics failed: unfilled {left[:5]}, unknown {unknown[:5]}")
    model.load_state_dict(mapped, strict=False)
    return model.eval()


class StepClock:
    """An ovdet training hook: seconds spent in training steps (validation excluded) and the
    validation metrics after each epoch."""

    def __init__(self) -> None:
        self.total, self.start, self.last = 0.0, 0.0, 0.0
        self.curve: list[tuple[float, float, float]] = []  # (training seconds so far, AP, AP50)

    def before_train(self, trainer) -> None: ...

    def before_epoch(self, trainer) -> None:
        self.start = self.last = time.perf_counter()

    def before_step(self, trainer) -> None: ...

    def after_step(self, trainer) -> None:
        self.last = time.perf_counter()

    def after_epoch(self, trainer) -> None:
        self.total += self.last - self.start
        m = trainer.metrics
        self.curve.append((self.total, m.get("AP", float("nan")), m.get("AP50", float("nan"))))

    def after_train(self, trainer) -> None: ...


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (raccoon/, clip-vit-b32-text/)")
    ap.add_argument("--weights", default=None, help="the YOLOv8n int8 ONNX (default: <data>/../weights/...)")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0, help="the random seed of both trainers")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both trainers")
    ap.add_argument("--only", choices=("ovdet", "ultralytics"), default=None, help="run one trainer only")
    ap.add_argument(
        "--calibrate",
        type=int,
        default=0,
        help="set the imported BatchNorm statistics on this many training images before both runs (0: identity BN)",
    )
    ap.add_argument(
        "--config", default=None, help="an ovdet training recipe YAML for ovdet's run (default: its defaults)"
    )
    args = ap.parse_args()

    from ultralytics.models.yolo.world.train import WorldTrainer
    from ultralytics.nn.tasks import WorldModel

    torch.set_num_threads(args.threads)  # importing ultralytics sets it to cpu_count - 1; the same for both

    from ovdet import Detector
    from ovdet.config import EvalConfig, load_recipe
    from ovdet.data.readers import read_voc
    from ovdet.engine.train import train
    from ovdet.inference.validate import read_validation_set, validate
    from ovdet.weights import convert_ultralytics_model

    data = Path(args.data).resolve()
    weights = Path(args.weights or data.parent / "weights" / "yolov8n-coco-int8-onnx" / "yolov8n_int8.onnx")
    table = clip_table(data)

    def embed(texts) -> torch.Tensor:
        return torch.stack([table[t.lower()] for t in texts])

    coco_names = (data / "clip-vit-b32-text" / "coco.txt").read_text().splitlines()
    raccoon = data / "raccoon"
    train_set, val_set = read_voc(raccoon, "train"), read_voc(raccoon, "val")

    def start_model() -> Detector:
        det = Detector.from_onnx(weights, device=args.device, class_embeddings=(coco_names, embed(coco_names)))
        if args.calibrate:
            from ovdet.data.images import decode_image
            from ovdet.data.letterbox import letterbox, to_tensor
            from ovdet.weights import calibrate_batchnorm

            paths = [r.path for r in train_set.records[: args.calibrate]]
            x = to_tensor([letterbox(decode_image(p), args.imgsz, auto=False)[0] for p in paths])
            calibrate_batchnorm(det.model, x.to(det.device))
        return det

    start = start_model()
    val = read_validation_set(val_set, name="raccoon [val]")
    eval_cfg = EvalConfig(imgsz=args.imgsz, progress=False, samples=0)
    dev = torch.device(args.device)

    def score(net) -> dict:
        m = validate(net, val, embed, eval_cfg, dev)
        return {"AP": m["AP"], "AP50": m["AP50"]}

    zero = score(start.model)
    print(f"zero-shot start (YOLOv8n COCO, CLIP 'raccoon'): mAP50-95 {zero['AP']:.4f}  mAP50 {zero['AP50']:.4f}")

    work = Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    rows = {}

    if args.only in (None, "ultralytics"):
        yolo_yaml = write_yolo_copy({"train": train_set, "val": val_set}, work / "yolo")
        pt = work / "start.pt"
        ul_start = to_ultralytics(start.model)
        torch.save({"model": copy.deepcopy(ul_start).half(), "ema": None, "optimizer": None, "epoch": -1}, pt)
        WorldModel.get_text_pe = lambda self, texts, batch=80, cache_clip_model=False, without_reprta=False: embed(
            texts
        ).unsqueeze(0)
        WorldTrainer.generate_text_embeddings = lambda self, texts, batch, cache_dir: {t: embed([t])[0] for t in texts}
        curve: list[tuple[float, float, float]] = []  # (training seconds so far, AP, AP50)
        clock = {"t0": 0.0, "excluded": 0.0}

        def on_train_start(trainer) -> None:
            clock["t0"] = time.perf_counter()

        def on_train_epoch_end(trainer) -> None:
            t = time.perf_counter()
            net, _ = convert_ultralytics_model(copy.deepcopy(trainer.ema.ema).float().eval())
            m = score(net)
            curve.append((t - clock["t0"] - clock["excluded"], m["AP"], m["AP50"]))
            clock["excluded"] += time.perf_counter() - t

        trainer = WorldTrainer(
            overrides=dict(
                model=str(pt),
                data=str(yolo_yaml),
                epochs=args.epochs,
                imgsz=args.imgsz,
                batch=args.batch,
                workers=args.workers,
                device=args.device,
                val=False,
                plots=False,
                amp=False,
                project=str(work / "ul"),
                name="run",
                exist_ok=True,
                verbose=False,
                seed=args.seed,
                deterministic=False,
            )
        )
        trainer.add_callback("on_train_start", on_train_start)
        trainer.add_callback("on_train_epoch_end", on_train_epoch_end)
        trainer.train()
        torch.set_num_threads(args.threads)
        seconds = curve[-1][0]
        last = Detector.from_ultralytics(work / "ul" / "run" / "weights" / "last.pt", trust=True, device=args.device)
        rows["ultralytics WorldTrainer"] = (
            len(train_set.records) * args.epochs / seconds,
            seconds,
            score(last.model),
            curve,
        )

    if args.only in (None, "ovdet"):
        det = start_model()
        run = dict(
            data=str(raccoon),
            val_data=str(raccoon),
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            workers=args.workers,
            device=args.device,
            project=str(work / "ov"),
            name="run",
            val_interval=1,
            seed=args.seed,
            amp="off",
        )
        cfg = load_recipe(args.config, run).train
        clock = StepClock()
        train(det.model, cfg, embed, progress=True, hooks=[clock])
        elapsed = clock.curve[-1][0]
        rows["ovdet"] = (len(train_set.records) * args.epochs / elapsed, elapsed, score(det.model), clock.curve)

    print(
        f"\nYOLO-World v2-n from the COCO YOLOv8n (int8 ONNX), Raccoon train {len(train_set.records)} / val "
        f"{len(val_set.records)}, imgsz {args.imgsz}, batch {args.batch}, {args.epochs} epochs, {args.workers} "
        f"workers, {args.device}, torch threads {torch.get_num_threads()}, seed {args.seed}"
    )
    print(f"zero-shot start: mAP50-95 {zero['AP']:.4f}  mAP50 {zero['AP50']:.4f}")
    print(f"{'trainer':<26} {'images/s':>9} {'train s':>8} {'mAP50-95':>9} {'mAP50':>7} {'s to ovdet final':>17}")
    target = rows["ovdet"][2]["AP"] if "ovdet" in rows else None
    for name, (ips, seconds, final, curve) in rows.items():
        reach = next((t for t, a, _ in curve if target is not None and a >= target), None)
        shown = f"{reach:.0f}" if reach is not None else "not reached"
        print(f"{name:<26} {ips:>9.2f} {seconds:>8.1f} {final['AP']:>9.4f} {final['AP50']:>7.4f} {shown:>17}")
        print("  per epoch mAP50-95: " + " ".join(f"{a:.3f}" for _, a, _ in curve))
    if len(rows) == 2:
        print(f"ovdet / ultralytics images/s: {rows['ovdet'][0] / rows['ultralytics WorldTrainer'][0]:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
