"""The ``ovdet`` command line: ``ovdet predict|embed|convert|check-data|val|train|export|serve|label|index|search|track``.

Each sub-command validates its arguments first (nothing is loaded or created for a command
line that cannot work), then runs through :class:`~ovdet.api.Detector` and prints a summary.
Every failure ends with one ``error: ...`` line and no traceback (``--debug`` shows it): exit
code 2 for a wrong command line (bad values, missing files, a missing flag), 1 for work that
failed. ``tools/*.py`` and ``python -m ovdet`` call :func:`main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ovdet.config import ConfigError

#: Exit codes.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """The command line cannot work as given (exit code 2); the message says what to change."""


# ------------------------------------------------------------------------------------------------ helpers
def read_classes(spec: str) -> list[str]:
    """Class names from ``"a,b,c"``, a built-in vocabulary (``coco``, ``lvis``, ``objects365``) or a
    text file with one name per line (``#`` comments).

    A spec is a file when it names an existing file or ends in ``.txt``/``.names``; else a
    built-in vocabulary's name; anything else (a long inline list included) is split on commas.

    Raises:
        UsageError: a ``.txt``/``.names`` file that does not exist, or no names at all.
    """
    path = Path(spec)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # a value too long or odd to be a path is an inline list
        is_file = False
    if is_file or path.suffix in {".txt", ".names"}:
        if not is_file:
            raise UsageError(f"class file not found: {path}")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in lines if n and not n.startswith("#")]
    else:
        from ovdet.text.vocabulary import parse_classes

        names = parse_classes(spec)
    if not names:
        raise UsageError(f"--classes {spec!r} holds no class name")
    return names


def check_model_spec(model: str) -> None:
    """Fail fast when ``--model`` names nothing usable (before anything is loaded).

    Raises:
        UsageError: not a checkpoint folder, model YAML or pretrained name (the closest name is
            suggested), or an ultralytics ``.pt`` (which must be converted first).
    """
    import difflib

    from ovdet.checkpoint import is_checkpoint_dir
    from ovdet.weights import model_names

    path = Path(model)
    if path.is_dir():
        if not is_checkpoint_dir(path):
            raise UsageError(
                f"--model {model}: the folder is not an ovdet checkpoint (no config.json + model.safetensors)"
            )
        return
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise UsageError(f"--model {model}: model config not found")
        return
    if path.suffix == ".pt":
        raise UsageError(
            f"--model {model} is an ultralytics checkpoint (a pickle): convert it first with "
            f"`ovdet convert {model} <out_dir> --trust`, then pass --model <out_dir>"
        )
    if model not in model_names():
        close = difflib.get_close_matches(model, model_names(), n=1, cutoff=0.5)
        hint = f" (did you mean the pretrained model {close[0]!r}?)" if close else ""
        raise UsageError(
            f"--model must be an ovdet checkpoint folder, a model YAML or a pretrained name "
            f"({', '.join(model_names())}); got {model!r}{hint}"
        )


def load_detector(model: str, device: str = "auto"):
    """A Detector from an ovdet checkpoint folder, a model YAML (random init) or a pretrained name.

    A local folder wins over a pretrained name of the same spelling.

    Raises:
        UsageError: ``model`` names nothing usable (see :func:`check_model_spec`).
    """
    from ovdet.api import load_detector as load

    check_model_spec(model)
    return load(model, device)


def _check_device(device: str) -> str:
    from ovdet.device import resolve_device

    try:
        resolve_device(device)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from e
    return device


def _text_config(base, text_model: str | None, text_weights: str | None, templates: list[str] | None = None):
    """``base`` (a TextConfig) with the command line's text-encoder options applied."""
    changes: dict[str, Any] = {}
    if text_model:
        changes.update(model=text_model, custom=None)
    if text_weights:
        if not Path(text_weights).exists():
            raise UsageError(f"--text-weights {text_weights}: not found")
        changes.update(pretrained=text_weights, custom=None)
    if templates:
        changes.update(templates=tuple(templates))
    return dataclasses.replace(base, **changes) if changes else base


def _apply_text_options(det, args: argparse.Namespace) -> None:
    """Switch ``det`` to the text encoder ``--text-model`` / ``--text-weights`` name, when given."""
    if args.text_model or args.text_weights:
        det.set_text_encoder(_text_config(det.cfg.text, args.text_model, args.text_weights))


def _set_vocabulary(det, classes: list[str] | None, embeddings: str | None) -> None:
    if embeddings:
        from ovdet.text import load_embeddings

        names, emb, _ = load_embeddings(embeddings)
        if classes:
            missing = [n for n in classes if n not in names]
            if missing:
                raise UsageError(f"classes {missing} are not in {embeddings} (it holds {len(names)} names)")
            idx = [names.index(n) for n in classes]
            names, emb = classes, emb[idx]
        det.set_class_embeddings(names, emb)
    elif classes:
        det.set_classes(classes)
    elif not det.names:
        raise UsageError("no vocabulary: pass --classes 'a,b,c' (or a .txt file) or --embeddings FILE")


def _check_detection_options(args: argparse.Namespace) -> None:
    """``--device``, ``--conf``/``--iou``/``--max-det``, ``--imgsz`` and ``--batch`` of a command that
    runs ``Detector.predict`` (``predict``, ``label``), checked before anything is loaded."""
    from ovdet.config import NMSConfig

    _check_device(args.device)
    try:
        NMSConfig(conf=args.conf, iou=args.iou, max_det=args.max_det)
    except (ValueError, ConfigError) as e:
        raise UsageError(str(e)) from e
    if args.imgsz < 32 or args.imgsz % 32:
        raise UsageError(f"--imgsz must be a positive multiple of 32, got {args.imgsz}")
    _positive("--batch", args.batch)


def _check_stream_options(args: argparse.Namespace) -> list[str] | None:
    """``--precision``, ``--max-pixels``, ``--video-stride``, ``--classes`` and ``--embeddings`` of a
    command that streams a source through the detector (``predict``, ``track``), checked before
    anything is loaded; returns the class names (None: not given)."""
    from ovdet.data.images import resolve_max_pixels
    from ovdet.device import resolve_device, resolve_precision

    try:
        resolve_precision(args.precision, resolve_device(args.device))
        resolve_max_pixels(args.max_pixels)
    except (ValueError, ConfigError) as e:
        raise UsageError(str(e)) from e
    _positive("--video-stride", args.video_stride)
    classes = read_classes(args.classes) if args.classes else None
    if args.embeddings and not Path(args.embeddings).is_file():
        raise UsageError(f"--embeddings {args.embeddings}: file not found")
    return classes


def _detector_with_vocabulary(args: argparse.Namespace, classes: list[str] | None):
    """The ``--model`` detector on ``--device`` with the text options and the vocabulary applied."""
    check_model_spec(args.model)
    det = load_detector(args.model, args.device)
    _apply_text_options(det, args)
    _set_vocabulary(det, classes, args.embeddings)
    return det


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")


# ------------------------------------------------------------------------------------------------ commands
def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ovdet.data.images import count_sources
    from ovdet.inference.outputs import PredictionWriter

    if args.engine == "ray":
        return _predict_ray(args)
    ray_only = {
        "--out": args.out,
        "--ray-address": args.ray_address,
        "--actors": args.actors,
        "--ray-cpus": args.ray_cpus,
    }
    given = [flag for flag, value in ray_only.items() if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: only with --engine ray (--engine local writes to --save-dir)")
    # Everything the command line says is checked before the model is loaded.
    _check_detection_options(args)
    classes = _check_stream_options(args)
    try:
        total = count_sources(args.source, video_stride=args.video_stride)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise UsageError(f"--source: {e}") from e

    det = _detector_with_vocabulary(args, classes)
    run = det.predict(
        args.source,
        **_predict_options(args),
        stream=True,
        keep_images=not args.no_save_images,
        video_stride=args.video_stride,
    )
    save = not args.no_save_images
    writer = PredictionWriter(args.save_dir, images=save, videos=save, frames=save and args.save_frames, fps=run.fps)
    per_class: Counter[str] = Counter()
    start = time.perf_counter()
    with tqdm(total=total, unit="img", desc="predict", disable=args.quiet) as bar:
        for d in run:
            per_class.update(d.names[i] for i in d.labels.tolist())
            writer.add(d)
            bar.update(1)
    elapsed = time.perf_counter() - start
    n = len(writer.records)
    if n == 0:
        for _, reason in run.skipped:
            print(f"  skipped: {reason}", file=sys.stderr)
        raise RuntimeError(f"no image could be read from {args.source} ({len(run.skipped)} skipped)")
    out_json = writer.close(det.names, run.skipped)
    print(
        f"\n{n} images, {sum(per_class.values())} detections, {len(run.skipped)} skipped, "
        f"{n / elapsed if elapsed > 0 else 0:.1f} images/s ({det.device})"
    )
    for name in det.names:
        if per_class[name]:
            print(f"  {name:<30} {per_class[name]}")
    for _, reason in run.skipped:
        print(f"  skipped: {reason}")
    if run.notes:
        sources = len({s for s, _ in run.notes})
        print(f"  {len(run.notes)} decoder message(s) from {sources} file(s) (corrupt data); --debug shows them")
        if args.debug:
            for source, message in run.notes:
                print(f"    {source}: {message}")
    videos = sorted({p.name for p in writer.written if p.suffix == ".mp4"})
    print(f"results: {out_json}" + (f", annotated files in {args.save_dir}" if save else ""))
    if videos:
        print(f"annotated video(s): {', '.join(videos)}")
    return EXIT_OK


def _predict_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Detector.predict`` arguments ``ovdet predict`` takes from its flags, for either engine
    (the local one passes them to ``predict``, Ray's to every actor through ``RayPredictConfig``)."""
    return {
        "conf": args.conf,
        "iou": args.iou,
        "imgsz": args.imgsz,
        "max_det": args.max_det,
        "agnostic_nms": args.agnostic_nms,
        "batch": args.batch,
        "precision": args.precision,
        "max_pixels": args.max_pixels,
    }


def _predict_ray(args: argparse.Namespace) -> int:
    """``ovdet predict --engine ray``: Ray Data actors over a folder, glob, image or parquet of paths;
    one parquet row per image in ``--out`` (see :mod:`ovdet.distributed.raydata`)."""
    from ovdet.distributed import SUMMARY_FILE, RayPredictConfig, import_ray, run_ray_predict, source_paths

    try:
        import_ray()
    except ImportError as e:
        raise UsageError(str(e)) from e
    if not args.out:
        raise UsageError("--engine ray writes its results as parquet: pass --out DIR")
    if args.video_stride != 1 or args.save_frames:
        raise UsageError("--engine ray reads still images: --video-stride and --save-frames need --engine local")
    if args.ray_cpus is not None and args.ray_address:
        raise UsageError("--ray-cpus sizes a local Ray; the cluster of --ray-address has its own CPUs")
    for flag, value in (("--actors", args.actors), ("--ray-cpus", args.ray_cpus)):
        if value is not None:
            _positive(flag, value)
    gpus = {"auto": None, "cpu": 0.0, "cuda": 1.0}.get(args.device, -1.0)
    if gpus is not None and gpus < 0:
        raise UsageError(
            f"--device {args.device}: with --engine ray use auto (a GPU per actor when the cluster has GPUs), "
            "cpu or cuda (Ray gives each actor its own GPU)"
        )
    try:
        config = RayPredictConfig(**_predict_options(args), actors=args.actors, gpus_per_actor=gpus)
    except (ValueError, ConfigError) as e:
        raise UsageError(str(e)) from e
    if any(Path(args.out).glob("*.parquet")):
        raise UsageError(f"--out {args.out} holds results of an earlier run: choose another folder or remove them")
    classes = read_classes(args.classes) if args.classes else None
    if args.embeddings and not Path(args.embeddings).is_file():
        raise UsageError(f"--embeddings {args.embeddings}: file not found")
    try:
        paths = source_paths(args.source)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--source: {e}") from e
    check_model_spec(args.model)

    det = load_detector(args.model, "cpu")  # the vocabulary is embedded once, here; actors load their own
    _apply_text_options(det, args)
    _set_vocabulary(det, classes, args.embeddings)
    s = run_ray_predict(
        paths,
        args.out,
        args.model,
        det.names,
        det.class_embeddings,
        config,
        ray_address=args.ray_address,
        num_cpus=args.ray_cpus,
        progress=not args.quiet,
    )
    print(
        f"\n{s.images} images, {len(s.errors)} unreadable, {s.detections} detections, {s.images_per_second:.1f} "
        f"images/s with {s.plan.actors} {s.plan.device} actor(s) ({s.seconds:.1f} s; Ray start-up {s.startup_seconds:.1f} s)"
    )
    for name, n in s.per_class.items():
        print(f"  {name:<30} {n}")
    for _, reason in s.errors[:20]:
        print(f"  error: {reason}")
    if len(s.errors) > 20:
        print(f"  ... {len(s.errors) - 20} more errors in {s.out_dir / SUMMARY_FILE}")
    print(f"results: {len(s.files)} parquet file(s) in {s.out_dir}, summary {s.out_dir / SUMMARY_FILE}")
    if s.errors and len(s.errors) == s.images:
        raise RuntimeError(f"no image could be read from {args.source} ({len(s.errors)} errors)")
    return EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    from ovdet.config import TextConfig, load_model_config
    from ovdet.text import EmbeddingCache, build_text_encoder, save_embeddings, validate_class_names

    _check_device(args.device)
    names = validate_class_names(read_classes(args.classes))
    if args.model and not Path(args.model).is_file():
        raise UsageError(f"--model {args.model}: model config not found")
    base = load_model_config(args.model).text if args.model else TextConfig()
    text_cfg = _text_config(base, args.text_model, args.text_weights, args.template)
    encoder = build_text_encoder(text_cfg, device=args.device if args.device != "auto" else "cpu")
    emb = EmbeddingCache(None).get_or_encode(encoder, names, text_cfg.templates)
    save_embeddings(args.output, names, emb, encoder.id, text_cfg.templates)
    print(f"{len(names)} embeddings of dim {emb.shape[1]} from {encoder.id} -> {args.output}")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from ovdet.api import Detector
    from ovdet.config import ModelConfig
    from ovdet.weights import UntrustedCheckpointError

    _check_device(args.device)
    if not Path(args.checkpoint).is_file():
        raise UsageError(f"checkpoint not found: {args.checkpoint}")
    try:
        det = Detector.from_ultralytics(args.checkpoint, trust=args.trust, device=args.device)
    except UntrustedCheckpointError as e:
        raise UsageError(str(e)) from e
    out = det.save(args.out_dir)
    report, cfg = det.conversion_report, det.cfg
    total = len(report.loaded) + len(report.missing)
    scale = next((s for s in "nsmlx" if ModelConfig.scaled(cfg.version, s, cfg.text) == cfg), "custom")
    print(
        f"{args.checkpoint}: YOLO-World v{cfg.version} scale {scale}, "
        f"loaded {len(report.loaded)}/{total} tensors -> {out}"
    )
    if report.missing:
        print(f"left at random initialisation ({len(report.missing)} tensors; train before use):")
        everything = report.loaded + report.missing
        for mod in report.missing_modules():
            n_missing = sum(k.startswith(mod + ".") for k in report.missing)
            n_all = sum(k.startswith(mod + ".") for k in everything)
            print(f"  {mod:<24} {n_missing}/{n_all} tensors" + ("" if n_missing < n_all else " (all)"))
    if report.unused:
        print(f"checkpoint tensors with no counterpart (dropped): {len(report.unused)}")
    if det.names:
        shown = ", ".join(det.names[:8]) + (" ..." if len(det.names) > 8 else "")
        print(f"vocabulary kept from the checkpoint: {len(det.names)} classes ({shown})")
    print(f"load it with Detector.load({str(out)!r}) or `ovdet predict --model {out} ...`")
    return EXIT_OK


def cmd_check_data(args: argparse.Namespace) -> int:
    from ovdet.data.readers import read_dataset

    if not Path(args.data).is_file():
        raise UsageError(f"dataset file not found: {args.data}")
    ds = read_dataset(
        args.data,
        args.split,
        image_dir=args.image_dir,
        verify_images=args.verify_images,
        require_images=not args.annotations_only,
    )
    report = ds.report
    split = f" [{args.split}]" if Path(args.data).suffix.lower() in {".yaml", ".yml"} else ""
    print(f"{args.data}{split}: {len(ds.names)} classes, {len(ds.records)} usable images")
    print(report.summary())
    if not ds.records:
        raise RuntimeError(f"{args.data}: the dataset has no usable image (see the problems above)")
    return EXIT_OK


def cmd_val(args: argparse.Namespace) -> int:
    from ovdet.evaluation import build_evaluator, write_report

    if not Path(args.data).is_file():
        raise UsageError(f"--data {args.data}: file not found")
    if args.results:  # re-score saved results; no model involved
        if not Path(args.results).is_file():
            raise UsageError(f"--results {args.results}: file not found")
        try:
            evaluator = build_evaluator(
                args.data,
                lvis=args.lvis or args.fixed_ap,
                fixed_ap=args.fixed_ap,
                backend=args.backend,
                strict=args.strict,
            )
        except ValueError as e:  # e.g. --lvis with COCO ground truth: the flags do not fit the data
            raise UsageError(str(e)) from e
        evaluator.process_results_file(args.results)
        metrics = evaluator.evaluate()
        write_report(metrics, args.save_dir, evaluator.precision, evaluator.names)
        return EXIT_OK
    if not args.model:
        raise UsageError("ovdet val needs --model (config, checkpoint or pretrained name) or --results FILE")
    _check_device(args.device)
    if args.imgsz < 32 or args.imgsz % 32:
        raise UsageError(f"--imgsz must be a positive multiple of 32, got {args.imgsz}")
    check_model_spec(args.model)
    det = load_detector(args.model, args.device)
    _apply_text_options(det, args)
    metrics = det.val(
        args.data,
        split=args.split,
        imgsz=args.imgsz,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        batch=args.batch,
        lvis=True if args.lvis else None,
        fixed_ap=args.fixed_ap,
        backend=args.backend,
        save_dir=args.save_dir,
        progress=not args.quiet,
    )
    print(f"{metrics['images']} images, {len(metrics['skipped'])} skipped, {metrics['images_per_s']:.1f} images/s")
    return EXIT_OK


def init_detector(model: str, device: str, trust: bool):
    """The detector a training run starts from: an ovdet checkpoint, a model YAML (random init),
    a pretrained name, or an ultralytics YOLO-World / YOLOv8 ``.pt`` (converted; needs ``trust``)."""
    from ovdet.api import Detector

    if Path(model).suffix == ".pt":
        if not Path(model).is_file():
            raise UsageError(f"--model {model}: checkpoint not found")
        from ovdet.weights import UntrustedCheckpointError

        try:
            det = Detector.from_ultralytics(model, trust=trust, device=device)
        except UntrustedCheckpointError as e:
            raise UsageError(f"{e} (ovdet train --trust)") from e
        report = det.conversion_report
        if report is not None and report.missing:
            print(
                f"initialised from {model}: {len(report.loaded)} tensors loaded, {len(report.missing)} left random "
                f"({', '.join(report.missing_modules()[:6])}{' ...' if len(report.missing_modules()) > 6 else ''})"
            )
        return det
    return load_detector(model, device)


def cmd_train(args: argparse.Namespace) -> int:
    from ovdet.config import read_yaml, train_config

    recipe: dict[str, Any] = read_yaml(args.config) if args.config else {}
    model_spec = args.model or recipe.pop("model", None)
    recipe.pop("model", None)
    flags = {
        k: getattr(args, k)
        for k in (
            "data",
            "val_data",
            "epochs",
            "imgsz",
            "batch",
            "workers",
            "device",
            "mode",
            "optimizer",
            "lr0",
            "amp",
            "project",
            "name",
            "seed",
            "cache",
            "buffer_mb",
            "keep_vocab",
            "text_lr_mult",
        )
        if getattr(args, k) is not None
    }
    if args.deterministic:
        flags["deterministic"] = True
    if args.resume:
        if not Path(args.resume).exists():
            raise UsageError(f"--resume {args.resume}: not found (give a run folder or its weights/last)")
    else:
        if not model_spec:
            raise UsageError("ovdet train needs --model (a model YAML, checkpoint, pretrained name or .pt) or --resume")
        try:
            cfg = train_config({**recipe, **flags}, args.set, where=args.config or "")
        except ConfigError as e:
            raise UsageError(str(e)) from e
        if not cfg.data:
            raise UsageError("ovdet train needs --data (a data yaml, instances json or ODVG jsonl)")
        if not Path(cfg.data).is_file():
            raise UsageError(f"--data {cfg.data}: file not found")
        if cfg.val_data and not Path(cfg.val_data).is_file():
            raise UsageError(f"--val-data {cfg.val_data}: file not found")
        _check_device(cfg.device)
        if Path(model_spec).suffix != ".pt":
            check_model_spec(model_spec)

    if args.resume:
        from ovdet.checkpoint import load_checkpoint
        from ovdet.engine.state import find_state_dir, read_train_state

        folder = find_state_dir(args.resume)
        _, meta = read_train_state(folder)
        from ovdet.api import Detector

        det = Detector(load_checkpoint(folder).model, device=meta["config"].get("device", "auto"))
        result = det.train(resume=folder, progress=not args.quiet)
    else:
        if args.embeddings and not Path(args.embeddings).is_file():
            raise UsageError(f"--embeddings {args.embeddings}: file not found")
        det = init_detector(model_spec, cfg.device, args.trust)
        _apply_text_options(det, args)
        if args.embeddings:  # offline: the run's texts come from this file (names it lacks need the encoder)
            _set_vocabulary(det, None, args.embeddings)
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        values["loss"] = dataclasses.asdict(cfg.loss)
        values["augment"] = dataclasses.asdict(cfg.augment)
        data = values.pop("data")
        result = det.train(data=data, progress=not args.quiet, **values)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return EXIT_OK
    metrics = result["metrics"]
    summary = f"{result['epochs']} epochs done -> {result['run_dir']}"
    if metrics:
        summary += (
            f"; validation AP50 {metrics.get('AP50', float('nan')):.4f}, AP {metrics.get('AP', float('nan')):.4f}"
        )
    print(summary)
    print(f"weights: {result['last']}" + (f" (best: {result['best']})" if result["best"] else ""))
    return EXIT_OK


def cmd_label(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ovdet.datatools import DatasetWriter, list_images, parse_class_map

    _check_detection_options(args)
    try:
        classes = parse_class_map(read_classes(args.classes))
        files = list_images(args.source)
        writer = DatasetWriter(args.out, classes, args.format, args.val_split, args.copy, args.sheet)
    except FileNotFoundError as e:
        raise UsageError(f"--source: {e}") from e
    except ValueError as e:
        raise UsageError(str(e)) from e
    check_model_spec(args.model)

    pending = writer.pending(files)
    print(f"{len(files)} images in {args.source}: {len(files) - len(pending)} already labelled, {len(pending)} to do")
    if pending:
        det = load_detector(args.model, args.device)
        _apply_text_options(det, args)
        det.set_classes(classes.prompts)
        run = det.predict(
            [str(p) for p in pending],
            conf=args.conf,
            iou=args.iou,
            imgsz=args.imgsz,
            max_det=args.max_det,
            batch=args.batch,
            stream=True,
            keep_images=False,
        )
        with tqdm(total=len(pending), unit="img", desc="label", disable=args.quiet) as bar:
            for d in run:
                writer.add(d)
                bar.update(1)
            for name, reason in run.skipped:
                writer.skip(name, reason)
                bar.update(1)
    summary = writer.finish()
    print(summary.text())
    return EXIT_OK


def cmd_track(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ovdet.config import NMSConfig, TrackConfig
    from ovdet.data.images import count_sources, is_capture_source
    from ovdet.inference.track import TrackWriter

    # Everything the command line says is checked before the model is loaded.
    _check_device(args.device)
    options = {
        "high": args.high,
        "new_track": args.new_track,
        "match_iou": args.match_iou,
        "buffer": args.buffer,
        "min_hits": args.min_hits,
        "class_aware": not args.class_agnostic,
        "trail": args.trail,
    }
    try:
        TrackConfig(tracker=args.tracker, conf=args.conf, **options)
        NMSConfig(conf=args.conf, iou=args.iou, max_det=args.max_det)
    except (ValueError, ConfigError) as e:
        raise UsageError(str(e)) from e
    if args.imgsz < 32 or args.imgsz % 32:
        raise UsageError(f"--imgsz must be a positive multiple of 32, got {args.imgsz}")
    classes = _check_stream_options(args)
    live = is_capture_source(args.source)
    try:
        total = None if live else count_sources(args.source, video_stride=args.video_stride)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise UsageError(f"--source: {e}") from e

    det = _detector_with_vocabulary(args, classes)
    save_video = not args.no_save_video
    stream = det.track(
        int(args.source) if live and args.source.isdigit() else args.source,
        tracker=args.tracker,
        conf=args.conf,
        iou=args.iou,
        imgsz=args.imgsz,
        max_det=args.max_det,
        precision=args.precision,
        stream=True,
        keep_images=save_video,
        video_stride=args.video_stride,
        max_pixels=args.max_pixels,
        **options,
    )
    writer = TrackWriter(args.save_dir, video=save_video, trail=args.trail, fps=stream.fps)
    start = time.perf_counter()
    try:
        with tqdm(total=total, unit="frame", desc="track", disable=args.quiet) as bar:
            for d in stream:
                writer.add(d)
                bar.update(1)
    finally:  # Ctrl-C on a camera stream still leaves complete files
        writer.close()
    elapsed = time.perf_counter() - start
    if stream.seen == 0:
        for _, reason in stream.skipped:
            print(f"  skipped: {reason}", file=sys.stderr)
        first = stream.skipped[0][1] if stream.skipped else "no frames"
        raise RuntimeError(f"no frame could be read from {args.source}: {first}")
    tracks = sum(s["tracks"] for s in writer.summaries)
    boxes = sum(s["boxes"] for s in writer.summaries)
    print(
        f"\n{stream.seen} frames, {tracks} tracks, {boxes} tracked boxes, {len(stream.skipped)} skipped, "
        f"{stream.seen / elapsed if elapsed > 0 else 0:.1f} frames/s ({det.device}, {args.tracker})"
    )
    for summary in writer.summaries:
        per_class = ", ".join(f"{n} {c}" for n, c in summary["per_class"].items()) or "no tracks"
        print(f"  {summary['sequence']}: {summary['frames']} frames, {summary['tracks']} tracks ({per_class})")
    for _, reason in stream.skipped:
        print(f"  skipped: {reason}")
    print(f"results in {args.save_dir}: " + ", ".join(p.name for p in writer.written))
    return EXIT_OK


def cmd_index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ovdet.api import portable_model_spec
    from ovdet.datatools import Index, IndexMismatchError, list_images

    _check_device(args.device)
    try:
        files = list_images(args.source)
    except FileNotFoundError as e:
        raise UsageError(f"--source: {e}") from e
    settings = {"imgsz": args.imgsz, "regions": args.regions, "region_iou": args.region_iou, "faiss_index": args.faiss}
    existing = None
    if (Path(args.out) / "index.json").is_file():
        try:
            existing = Index.read_manifest(args.out)
        except ValueError as e:
            raise UsageError(f"--out: {e}") from e
        given = {k: v for k, v in settings.items() if v is not None and v != existing[k]}
        if given or args.vocabulary:
            changed = ", ".join(f"{k}={v!r} (index: {existing[k]!r})" for k, v in given.items())
            raise UsageError(
                f"{args.out} already holds an index built with other settings ({changed or 'vocabulary'}); "
                "drop those options to add to it, or choose a new --out"
            )
    else:
        for name, value in (("--imgsz", args.imgsz), ("--regions", args.regions), ("--batch", args.batch)):
            if value is not None and value < (32 if name == "--imgsz" else 1):
                raise UsageError(f"{name} must be >= {32 if name == '--imgsz' else 1}, got {value}")
        if args.imgsz is not None and args.imgsz % 32:
            raise UsageError(f"--imgsz must be a multiple of 32, got {args.imgsz}")
    model = args.model or (existing or {}).get("model", {}).get("spec")
    if not model:
        raise UsageError("--model is required to build a new index")
    check_model_spec(model)
    det = load_detector(model, args.device)
    _apply_text_options(det, args)
    try:
        if existing is not None:
            index = Index.load(args.out, det)
            print(f"{args.out}: {len(index)} images indexed; adding new or changed files")
        else:
            vocabulary = read_classes(args.vocabulary) if args.vocabulary else "lvis"
            index = Index(
                det, vocabulary, **{k: v for k, v in settings.items() if v is not None}, batch=args.batch or 8
            )
            index.model_spec = portable_model_spec(model)
    except IndexMismatchError as e:
        raise UsageError(str(e)) from e
    except ValueError as e:
        raise UsageError(str(e)) from e
    if args.batch:
        index.batch = args.batch
    with tqdm(total=len(files), unit="img", desc="index", disable=args.quiet) as bar:
        report = index.add(files, progress=bar.update)
    index.save(args.out)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir() if f.is_file())
    print(report.text())
    print(
        f"index {args.out}: {len(index)} images, {index.num_regions} regions "
        f"({size / 2**20:.1f} MiB on disk, {size / max(len(index), 1) / 1024:.1f} KiB per image)"
    )
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    import json

    from ovdet.datatools import Index, IndexMismatchError

    _check_device(args.device)
    _positive("-k", args.k)
    if args.candidates is not None:
        _positive("--candidates", args.candidates)
    try:
        manifest = Index.read_manifest(args.index)
    except ValueError as e:
        raise UsageError(str(e)) from e
    model = args.model or manifest["model"].get("spec")
    if not model:
        raise UsageError(f"{args.index} does not record its model: pass --model")
    check_model_spec(model)
    det = load_detector(model, args.device)
    _apply_text_options(det, args)
    try:
        index = Index.load(args.index, det)
    except IndexMismatchError as e:
        raise UsageError(str(e)) from e
    results = []
    for query in args.queries:
        try:
            res = index.search(query, k=args.k, rerank=not args.no_rerank, candidates=args.candidates)
        except ValueError as e:
            raise UsageError(str(e)) from e
        results.append(res)
        how = f"re-ranked {res.candidates}" if res.candidates else "index scores"
        ms = " + ".join(f"{k} {v * 1000:.0f} ms" for k, v in res.timings.items())
        print(f"{query!r}: {len(res.hits)} of {len(index)} images ({how}; {ms})")
        for rank, hit in enumerate(res.hits, 1):
            box = " ".join(f"{v:.0f}" for v in hit.box)
            mark = "" if hit.exact else "~"
            print(f"  {rank:3d}  {mark}{hit.score:.3f}  {hit.path}  [{box}]")
        for path, reason in res.skipped:
            print(f"  could not re-read {path}: {reason}")
    if args.html:
        from ovdet.datatools.gallery import search_page

        print(f"page: {search_page(results, args.html, title=f'ovdet search: {args.index}')}")
    if args.json:
        from ovdet.io import atomic_write_text

        atomic_write_text(args.json, json.dumps([r.to_dict() for r in results], indent=1))
        print(f"json: {args.json}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util

    from ovdet.config import ServeConfig
    from ovdet.device import resolve_device, resolve_precision

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"`ovdet serve` needs {', '.join(missing)} (not installed): pip install 'ovdet[serve]'")
    _check_device(args.device)
    try:
        resolve_precision(args.precision, resolve_device(args.device))
        cfg = ServeConfig(
            host=args.host,
            port=args.port,
            api_key=args.api_key or os.environ.get("OVDET_API_KEY") or None,
            batch_window_ms=args.batch_window_ms,
            max_batch=args.max_batch,
            queue_size=args.queue_size,
            timeout_s=args.timeout,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            max_pixels=args.max_pixels,
            max_images=args.max_images,
            max_classes=args.max_classes,
            cors_origins=tuple(args.cors),
            max_connections=args.max_connections,
        )
    except (ValueError, ConfigError) as e:
        raise UsageError(str(e)) from e
    classes = read_classes(args.classes) if args.classes else None
    if args.embeddings and not Path(args.embeddings).is_file():
        raise UsageError(f"--embeddings {args.embeddings}: file not found")
    check_model_spec(args.model)

    import uvicorn

    from ovdet.serve.app import create_app, public_bind_warning

    det = load_detector(args.model, args.device)
    _apply_text_options(det, args)
    if classes or args.embeddings:
        _set_vocabulary(det, classes, args.embeddings)
    warning = public_bind_warning(cfg)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    app = create_app(det, cfg, model_name=args.model, precision=args.precision)
    if det.names and not args.no_warmup:
        start = time.perf_counter()
        app.state.engine.warmup(args.imgsz_warmup)
        print(f"warmed up in {time.perf_counter() - start:.1f} s ({len(det.names)} default classes)")
    shown = f"{len(det.names)} default classes" if det.names else "no default classes (requests must send classes)"
    print(
        f"ovdet serve: {args.model} on {det.device}, {shown}; page http://{_url_host(cfg.host)}:{cfg.port}/ , API docs /docs"
    )
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=args.log_level,
        limit_concurrency=cfg.max_connections,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return EXIT_OK


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ------------------------------------------------------------------------------------------------ parser
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help line shows its default."""


def cmd_export(args: argparse.Namespace) -> int:
    from ovdet.config import ExportConfig
    from ovdet.data.images import iter_sources

    _check_device(args.device)
    if args.imgsz < 32 or args.imgsz % 32:
        raise UsageError(f"--imgsz must be a positive multiple of 32, got {args.imgsz}")
    if args.calib and not Path(args.calib).is_dir():
        raise UsageError(f"--calib {args.calib}: not a folder of images")
    if args.int8 and not args.calib:
        raise UsageError("--int8 needs --calib DIR: a folder of real images to calibrate on")
    if args.embeddings and not Path(args.embeddings).is_file():
        raise UsageError(f"--embeddings {args.embeddings}: file not found")
    if args.source and not Path(args.source).exists():
        raise UsageError(f"--source {args.source}: not found")
    try:
        cfg = ExportConfig(
            dynamic_vocab=args.dynamic_vocab,
            text_encoder=not args.no_text_encoder,
            nms=args.nms,
            conf=args.conf,
            iou=args.iou,
            max_det=args.max_det,
            imgsz=args.imgsz,
            opset=args.opset,
            half=args.half,
            int8=args.int8,
            calib=args.calib,
            calib_images=args.calib_images,
        )
    except ConfigError as e:
        raise UsageError(str(e)) from e
    classes = read_classes(args.classes) if args.classes else None
    output = Path(args.output)
    if output.suffix != ".onnx":
        raise UsageError(f"--output {output}: the exported file must end in .onnx")
    check_model_spec(args.model)

    det = load_detector(args.model, args.device)
    _apply_text_options(det, args)
    if classes or args.embeddings or not args.dynamic_vocab:
        _set_vocabulary(det, classes, args.embeddings)
    start = time.perf_counter()
    result = det.export(output, **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    print(
        f"exported {args.model} (YOLO-World v{det.cfg.version}) with a {result.metadata['vocab']} vocabulary "
        f"({len(det.names)} classes) in {time.perf_counter() - start:.1f} s:"
    )
    for f in result.files:
        print(f"  {f}  ({f.stat().st_size / 2**20:.1f} MiB)")
    for title, entries in (("inputs", result.inputs), ("outputs", result.outputs)):
        print(f"  {title}: " + ", ".join(f"{n} {dims} {t}" for n, dims, t in entries))
    if "int8" in result.checks:
        r = result.checks["int8"]
        print(
            f"  int8 keeps {r['matched']}/{r['reference_boxes']} fp32 boxes ({100 * r['fraction']:.1f}%, score > "
            f"{r['min_score']}, IoU >= {r['iou']}, same label) on {r['images']} {result.checks['int8_images']} images"
        )
    for reason in result.checks.get("calib_skipped", []):
        print(f"  skipped calibration file: {reason}")
    if args.format == "engine":
        from ovdet.export.tensorrt import build_engine

        engine = build_engine(output, output.with_suffix(".engine"), cfg.imgsz, half=True)
        print(f"  TensorRT engine: {engine}")
    check_source = args.source or args.calib
    if det.names and check_source:
        from ovdet.deploy import OnnxDetector
        from ovdet.export.pipeline import check_against_pytorch

        readable = (it.image for it in iter_sources(check_source) if it.image is not None)
        images = list(itertools.islice(readable, args.check_images))  # decode only what the check uses
        onnx = OnnxDetector(output)
        if onnx.dynamic:
            onnx.set_class_embeddings(det.names, det.class_embeddings)
        report = check_against_pytorch(det.model, onnx, det.names, det.class_embeddings, images, cfg.imgsz, args.conf)
        print(f"parity with PyTorch: {report}")
        if report.fraction < 0.99:
            raise RuntimeError(f"the export does not reproduce PyTorch: {report}")
    else:
        print("parity check skipped: pass --source IMAGES (or --calib DIR) to compare with PyTorch on real images")
    return EXIT_OK


def _add_text_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--text-model",
        help="open_clip model of the text encoder, overriding the model config's (e.g. ViT-B-32-quickgelu for "
        "OpenAI CLIP weights)",
    )
    p.add_argument(
        "--text-weights",
        help="local text-encoder weights (offline use), overriding the config's pretrained tag: an open_clip "
        "checkpoint file, or a sentence-transformers model folder",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ovdet", description="Open-vocabulary object detection.", formatter_class=_Formatter
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and native decoder messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str):
        sp = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="as ovdet --debug")
        return sp

    pr = command("predict", "detect text-named classes in images, folders, globs or videos")
    pr.add_argument(
        "--model",
        required=True,
        help="ovdet checkpoint folder, model YAML (random init), or pretrained name (e.g. yolo-world-v2-s; "
        "downloaded and converted once)",
    )
    pr.add_argument(
        "--classes", help="comma-separated names, a built-in vocabulary (coco, lvis, objects365) or a .txt file"
    )
    pr.add_argument("--embeddings", help="precomputed embeddings from `ovdet embed` (no text encoder needed)")
    pr.add_argument("--source", required=True, help="image, folder, glob, or video file")
    pr.add_argument("--save-dir", default="runs/predict", help="output folder (created when there is output)")
    pr.add_argument("--conf", type=float, default=0.25, help="minimum score of a detection, in [0, 1]")
    pr.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold, in [0, 1]")
    pr.add_argument("--imgsz", type=int, default=640, help="letterbox size in pixels (a multiple of 32)")
    pr.add_argument("--max-det", type=int, default=300, help="detections kept per image")
    pr.add_argument("--batch", type=int, default=1, help="images per forward pass")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto: the first GPU if any)")
    pr.add_argument(
        "--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="numeric precision (fp16: CUDA only)"
    )
    pr.add_argument("--agnostic-nms", action="store_true", help="suppress overlapping boxes across classes")
    pr.add_argument("--video-stride", type=int, default=1, help="use every n-th video frame")
    pr.add_argument("--save-frames", action="store_true", help="also write each annotated video frame as an image")
    pr.add_argument(
        "--no-save-images", action="store_true", help="write only predictions.json (no annotated images or videos)"
    )
    pr.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="skip images declaring more pixels than this (decompression bombs); default $OVDET_MAX_PIXELS or "
        "89478485, 0 = no limit",
    )
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: Ray Data with a pool of detector actors, results as parquet in --out "
        "(the [ray] extra)",
    )
    pr.add_argument(
        "--out", help="--engine ray: results folder (*.parquet, one row per image, and _summary.json); required"
    )
    pr.add_argument(
        "--ray-address",
        help="--engine ray: the Ray cluster to join ('auto' on a node of it, or ray://host:10001); None: "
        "$RAY_ADDRESS, else a local Ray started and stopped by this command",
    )
    pr.add_argument(
        "--actors", type=int, help="--engine ray: detector actors (None: one per GPU; without GPUs min(2, CPUs))"
    )
    pr.add_argument("--ray-cpus", type=int, help="--engine ray: CPUs of a local Ray (None: all of this machine's)")
    _add_text_options(pr)
    pr.set_defaults(func=cmd_predict)

    em = command("embed", "precompute class-name embeddings to a safetensors file")
    em.add_argument("--classes", required=True, help="comma-separated names, coco / lvis / objects365, or a .txt file")
    em.add_argument("-o", "--output", required=True, help="output .safetensors file")
    em.add_argument("--model", help="model YAML whose text encoder to use (default: open_clip ViT-B-32 openai)")
    em.add_argument("--template", action="append", help="prompt template with {} (repeatable; averaged)")
    em.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _add_text_options(em)
    em.set_defaults(func=cmd_embed)

    cv = command("convert", "convert an ultralytics YOLO-World/YOLOv8 .pt to ovdet's safe format")
    cv.add_argument("checkpoint", help="ultralytics .pt file (a pickle: read only with --trust)")
    cv.add_argument("out_dir", help="output folder (model.safetensors + config.json)")
    cv.add_argument(
        "--trust",
        action="store_true",
        help="allow unpickling the checkpoint, which can run code inside it; only for trusted files",
    )
    cv.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    cv.set_defaults(func=cmd_convert)

    cd = command("check-data", "read a dataset and report counts, per-class boxes and problems")
    cd.add_argument("data", help="YOLO data .yaml, COCO/LVIS instances .json, or ODVG .jsonl")
    cd.add_argument("--split", default="train", help="split of a YOLO data yaml")
    cd.add_argument("--image-dir", help="image folder of a .json/.jsonl (default: found next to the file)")
    cd.add_argument(
        "--verify-images",
        action="store_true",
        help="open and verify every image file (slower); unreadable ones are problems",
    )
    cd.add_argument(
        "--annotations-only",
        action="store_true",
        help=".json/.jsonl: check annotations without looking for images (e.g. image-less LVIS ground truth)",
    )
    cd.set_defaults(func=cmd_check_data)

    va = command("val", "zero-shot COCO/LVIS box AP of a model, or of saved detections")
    va.add_argument("--model", help="model YAML, ovdet checkpoint folder or pretrained name to evaluate")
    va.add_argument(
        "--results",
        help="COCO results json (list of image_id/category_id/bbox xywh/score) or an `ovdet predict` "
        "predictions.json (matched by file name and class name)",
    )
    va.add_argument(
        "--data",
        required=True,
        help="ground truth: COCO or LVIS instances .json, or (with --model) an ultralytics data yaml",
    )
    va.add_argument("--split", default="val", help="data yaml split to evaluate (with --model)")
    va.add_argument("--imgsz", type=int, default=640, help="letterbox size in pixels (a multiple of 32)")
    va.add_argument("--conf", type=float, default=0.001, help="minimum score kept")
    va.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    va.add_argument("--max-det", type=int, default=None, help="boxes per image (default 300; 1000 with --fixed-ap)")
    va.add_argument("--batch", type=int, default=8, help="images per forward pass")
    va.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    va.add_argument("--quiet", action="store_true", help="no progress bar")
    va.add_argument("--lvis", action="store_true", help="LVIS evaluation (lvis package): APr/APc/APf, 300 dets/image")
    va.add_argument(
        "--fixed-ap",
        action="store_true",
        help="LVIS Fixed AP (implies --lvis): no per-image cap, top 10,000 detections per class",
    )
    va.add_argument(
        "--backend",
        default="pycocotools",
        choices=["pycocotools", "faster_coco_eval"],
        help="COCO scoring backend (same numbers; faster_coco_eval needs pip install faster-coco-eval)",
    )
    va.add_argument(
        "--strict",
        action="store_true",
        help="fail on detections with unknown image/category ids or invalid boxes instead of dropping them",
    )
    va.add_argument(
        "--save-dir",
        default="runs/val",
        help="where metrics.json, pr_curve.png (and with --model results.json, samples/) go",
    )
    _add_text_options(va)
    va.set_defaults(func=cmd_val)
    tr = command("train", "fine-tune or train a detector on box data (resumable; torchrun for several GPUs/machines)")
    tr.add_argument(
        "--model",
        help="what to start from: model YAML (random init), ovdet checkpoint folder, pretrained name, or an "
        "ultralytics YOLO-World / YOLOv8 .pt (with --trust)",
    )
    tr.add_argument("--data", help="training data: ultralytics data yaml, COCO/LVIS instances json, or ODVG jsonl")
    tr.add_argument("--val-data", help="validation data (default: the data yaml's val split, none for json)")
    tr.add_argument("--config", help="a training recipe YAML (TrainConfig fields, optional model:); flags win over it")
    tr.add_argument("--epochs", type=int, default=None, help="passes over the data (default 100)")
    tr.add_argument("--imgsz", type=int, default=None, help="training image size, a multiple of 32 (default 640)")
    tr.add_argument("--batch", type=int, default=None, help="images per step per process (default 16)")
    tr.add_argument("--workers", type=int, default=None, help="data-loading processes per training process (default 2)")
    tr.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto)")
    tr.add_argument(
        "--mode",
        default=None,
        choices=["full", "freeze_backbone", "prompt_tuning", "linear_probe"],
        help="what trains (default full)",
    )
    tr.add_argument("--optimizer", default=None, choices=["AdamW", "SGD"], help="optimizer (default AdamW)")
    tr.add_argument("--lr0", type=float, default=None, help="initial learning rate (default 2e-3 AdamW, 1e-2 SGD)")
    tr.add_argument(
        "--amp", default=None, choices=["auto", "off", "bf16", "fp16"], help="mixed precision (default auto)"
    )
    tr.add_argument(
        "--keep-vocab",
        default=None,
        help="mix a general vocabulary (lvis, coco, objects365 or a .txt) into "
        "negative sampling, to keep the open vocabulary",
    )
    tr.add_argument(
        "--embeddings",
        help="text embeddings from `ovdet embed` covering the dataset's names (train offline without a text encoder)",
    )
    tr.add_argument("--text-lr-mult", type=float, default=None, help="> 0 fine-tunes the text encoder at lr0 × this")
    tr.add_argument("--cache", default=None, choices=["ram"], help="keep decoded images in memory")
    tr.add_argument(
        "--buffer-mb",
        type=float,
        default=None,
        help="without --cache: MiB of recently decoded images each loader worker keeps (default 256; 0: none)",
    )
    tr.add_argument("--project", default=None, help="runs folder (default runs/train)")
    tr.add_argument("--name", default=None, help="run name (default exp; exp2, exp3… when taken)")
    tr.add_argument("--seed", type=int, default=None, help="seed of initialisation order, sampling and augmentation")
    tr.add_argument(
        "--deterministic", action="store_true", help="deterministic kernels: a resumed run equals an uninterrupted one"
    )
    tr.add_argument("--resume", help="a run folder or its weights/last: continue it exactly (its saved settings apply)")
    tr.add_argument("--trust", action="store_true", help="allow unpickling an ultralytics .pt given as --model")
    tr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any TrainConfig field, e.g. --set loss.cls=1.0 --set augment.mosaic=0 (repeatable)",
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_text_options(tr)
    tr.set_defaults(func=cmd_train)
    ex = command("export", "export for deployment: ONNX with baked or dynamic vocabulary, int8, fp16, TensorRT")
    ex.add_argument("--model", required=True, help="ovdet checkpoint folder, model YAML or pretrained name")
    ex.add_argument("--classes", help="vocabulary to bake in (or, with --dynamic-vocab, the default one)")
    ex.add_argument("--embeddings", help="vocabulary from `ovdet embed` instead of --classes")
    ex.add_argument(
        "-o", "--output", default="model.onnx", help="the .onnx file (text encoder etc. are written beside it)"
    )
    ex.add_argument(
        "--format", default="onnx", choices=["onnx", "engine"], help="onnx, or engine (TensorRT, built from the ONNX)"
    )
    ex.add_argument(
        "--dynamic-vocab",
        action="store_true",
        help="class embeddings are an input (any number at run time); the text encoder and tokenizer are exported too",
    )
    ex.add_argument("--no-text-encoder", action="store_true", help="with --dynamic-vocab: export no text encoder")
    ex.add_argument("--nms", action="store_true", help="NMS inside the graph (--conf/--iou/--max-det fixed at export)")
    ex.add_argument("--conf", type=float, default=0.25, help="in-graph NMS score threshold; also the parity check's")
    ex.add_argument("--iou", type=float, default=0.7, help="in-graph NMS IoU threshold")
    ex.add_argument("--max-det", type=int, default=300, help="in-graph NMS boxes per image")
    ex.add_argument("--imgsz", type=int, default=640, help="example input size (v1: the fixed input size)")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset")
    ex.add_argument(
        "--half", action="store_true", help="float16 weights (for GPU runtimes); inputs/outputs stay float32"
    )
    ex.add_argument("--int8", action="store_true", help="also write an int8 model (static quantization, needs --calib)")
    ex.add_argument("--calib", help="folder of real images for int8 calibration (and the parity check)")
    ex.add_argument("--calib-images", type=int, default=64, help="calibration images used")
    ex.add_argument("--source", help="images (folder or file) for the parity check against PyTorch")
    ex.add_argument("--check-images", type=int, default=16, help="images the parity check uses")
    ex.add_argument("--device", default="cpu", help="where the model is traced: cpu, cuda or cuda:N")
    _add_text_options(ex)
    ex.set_defaults(func=cmd_export)
    lb = command("label", "auto-label a folder of images from text prompts into a YOLO or COCO dataset")
    lb.add_argument("--model", required=True, help="ovdet checkpoint folder, model YAML or pretrained name")
    lb.add_argument(
        "--classes",
        required=True,
        help="prompts, comma-separated ('hard hat,person wearing a hard hat=worker': prompt=dataset name), "
        "a built-in vocabulary or a .txt file",
    )
    lb.add_argument("--source", required=True, help="image file, folder or glob")
    lb.add_argument("--out", required=True, help="dataset folder (rerun with the same one to resume)")
    lb.add_argument("--format", default="yolo", choices=["yolo", "coco"], help="dataset layout")
    lb.add_argument("--conf", type=float, default=0.3, help="minimum score of a kept box")
    lb.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    lb.add_argument("--max-det", type=int, default=300, help="boxes per image at most")
    lb.add_argument("--imgsz", type=int, default=640, help="letterbox size (a multiple of 32)")
    lb.add_argument("--batch", type=int, default=1, help="images per forward pass")
    lb.add_argument("--val-split", type=float, default=0.1, help="share of images in the val split")
    lb.add_argument("--copy", action="store_true", help="copy images instead of symlinking them")
    lb.add_argument("--sheet", type=int, default=16, help="images in contact_sheet.png (0: none)")
    lb.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    lb.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_text_options(lb)
    lb.set_defaults(func=cmd_label)
    tr = command("track", "detect and track text-named classes through a video, frames, a camera or a stream")
    tr.add_argument("--model", required=True, help="ovdet checkpoint folder, model YAML or pretrained name")
    tr.add_argument(
        "--classes", help="comma-separated names, a built-in vocabulary (coco, lvis, objects365) or a .txt file"
    )
    tr.add_argument("--embeddings", help="precomputed embeddings from `ovdet embed` (no text encoder needed)")
    tr.add_argument(
        "--source",
        required=True,
        help="video file, folder or glob of frames (one sequence), camera index (0) or stream URL (rtsp://...)",
    )
    tr.add_argument("--save-dir", default="runs/track", help="output folder: <name>.mp4, <name>.txt (MOT), <name>.json")
    tr.add_argument("--tracker", default="bytetrack", choices=["bytetrack", "sort", "ocsort"], help="algorithm")
    tr.add_argument("--conf", type=float, default=0.1, help="detection threshold (low: ByteTrack uses low scores)")
    tr.add_argument("--high", type=float, default=0.25, help="scores at or above it are matched first")
    tr.add_argument("--new-track", type=float, default=0.25, help="score needed to start a track")
    tr.add_argument("--match-iou", type=float, default=0.1, help="IoU with a track's predicted box to match it")
    tr.add_argument("--buffer", type=int, default=30, help="frames (at 30 fps) a lost track waits to be found")
    tr.add_argument("--min-hits", type=int, default=2, help="frames an object is seen before its track gets an id")
    tr.add_argument(
        "--class-agnostic", action="store_true", help="one tracker for all classes (ids survive label flips)"
    )
    tr.add_argument("--trail", type=int, default=30, help="trail length drawn behind each box, in frames (0: none)")
    tr.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold, in [0, 1]")
    tr.add_argument("--imgsz", type=int, default=640, help="letterbox size in pixels (a multiple of 32)")
    tr.add_argument("--max-det", type=int, default=300, help="detections kept per frame")
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    tr.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="numeric precision")
    tr.add_argument("--video-stride", type=int, default=1, help="use every n-th frame")
    tr.add_argument("--no-save-video", action="store_true", help="write only the MOT and JSON files")
    tr.add_argument("--max-pixels", type=int, default=None, help="skip frames with more pixels than this")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_text_options(tr)
    tr.set_defaults(func=cmd_track)
    ix = command("index", "index a folder of images for text search (region embeddings in a faiss index)")
    ix.add_argument("--model", help="ovdet checkpoint folder, model YAML or pretrained name (default: the index's)")
    ix.add_argument("--source", required=True, help="image file, folder or glob")
    ix.add_argument("--out", required=True, help="index folder (an existing index is added to: new and changed files)")
    ix.add_argument(
        "--vocabulary",
        help="indexing vocabulary that guides the neck and picks salient regions: lvis (default), coco, "
        "objects365, comma-separated names or a .txt file",
    )
    ix.add_argument("--imgsz", type=int, help="letterbox size (a multiple of 32; default 640)")
    ix.add_argument("--regions", type=int, help="regions kept per image (default 64)")
    ix.add_argument("--region-iou", type=float, help="NMS IoU among an image's regions (default 0.5)")
    ix.add_argument(
        "--faiss", help="faiss index_factory string: Flat (exact, default), SQ8 (4x smaller), IVF1024,Flat (sub-linear)"
    )
    ix.add_argument("--batch", type=int, help="images per forward pass (default 8)")
    ix.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ix.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_text_options(ix)
    ix.set_defaults(func=cmd_index)
    se = command("search", "find the images (and boxes) of an index that match a text query")
    se.add_argument("index", help="index folder written by `ovdet index`")
    se.add_argument("queries", nargs="+", metavar="QUERY", help="text to search for (several: one search each)")
    se.add_argument("-k", type=int, default=10, help="images returned per query")
    se.add_argument("--model", help="the model the index was built with (default: the one it records)")
    se.add_argument("--no-rerank", action="store_true", help="index scores only (no detector pass over candidates)")
    se.add_argument("--candidates", type=int, help="images re-ranked by the detector (default max(3k, 30))")
    se.add_argument("--html", help="write an HTML page of thumbnails with the boxes drawn")
    se.add_argument("--json", help="write the results as JSON")
    se.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _add_text_options(se)
    se.set_defaults(func=cmd_search)
    sv = command("serve", "HTTP API with micro-batching and a web page (needs the [serve] extra)")
    sv.add_argument("--model", required=True, help="ovdet checkpoint folder, model YAML or pretrained name")
    sv.add_argument(
        "--classes", help="default vocabulary for requests that send none: names, coco / lvis / objects365, or a .txt"
    )
    sv.add_argument("--embeddings", help="default vocabulary from `ovdet embed` instead of --classes")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless told otherwise)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port")
    sv.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    sv.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="inference precision")
    sv.add_argument(
        "--api-key", help="require this key in the X-API-Key header (better: set $OVDET_API_KEY, not visible in ps)"
    )
    sv.add_argument("--batch-window-ms", type=float, default=10.0, help="how long a request waits for batch mates")
    sv.add_argument("--max-batch", type=int, default=8, help="images per forward pass at most")
    sv.add_argument("--queue-size", type=int, default=64, help="requests waiting or running at most (503 beyond)")
    sv.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take (504 beyond)")
    sv.add_argument("--max-upload-mb", type=float, default=32.0, help="largest request body, MiB (413 beyond)")
    sv.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height (413 beyond)")
    sv.add_argument("--max-images", type=int, default=16, help="images per request at most")
    sv.add_argument("--max-classes", type=int, default=2000, help="class names per request at most")
    sv.add_argument("--max-connections", type=int, default=256, help="concurrent connections (503 beyond)")
    sv.add_argument(
        "--cors", action="append", default=[], metavar="ORIGIN", help="allow browser calls from ORIGIN (repeatable)"
    )
    sv.add_argument("--imgsz-warmup", type=int, default=640, help="image size of the warm-up pass")
    sv.add_argument("--no-warmup", action="store_true", help="skip the warm-up pass at start")
    sv.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="server log"
    )
    _add_text_options(sv)
    sv.set_defaults(func=cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ovdet`` console script; returns the exit code.

    argparse reports malformed command lines itself (exit 2). Afterwards a :class:`UsageError`,
    a missing file, a refused pickle or an invalid config value exits with 2, anything else
    that fails with 1, each as one ``error:`` line on stderr (a traceback only with ``--debug``
    or ``OVDET_DEBUG=1``).
    """
    from ovdet.weights import UntrustedCheckpointError

    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("OVDET_DEBUG", "") not in ("", "0")
    args.debug = debug
    if debug:  # the process entry point: lower layers read it (e.g. to leave ffmpeg's logging on)
        os.environ["OVDET_DEBUG"] = "1"
    try:
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place every failure becomes a message
        if debug:
            traceback.print_exc()
        usage = isinstance(e, (UsageError, FileNotFoundError, UntrustedCheckpointError, ConfigError))
        message = str(e) or type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in message:
            message = f"{message}: {e.filename}"
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE if usage else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
