"""The command line's shared option groups, and the checks that turn them into typed options.

Every flag that more than one command takes is declared here, once (``tests/test_cli.py`` checks
that no command module declares one of them itself): the model (``--model``), the vocabulary
(``--classes``, ``--embeddings``), the text encoder (``--text-model``, ``--text-weights``,
``--text-family``), the image folder of an annotation file (``--image-dir``), the
detection options (``--conf``, ``--iou``, ``--max-det``, ``--imgsz``, ``--batch``,
``--precision``, ``--max-pixels``, ``--video-stride``), the device and the progress bar. A
command passes its own defaults and help where they differ.

The second half turns parsed flags into what the lower layers take, before anything is loaded:
:func:`predict_config` builds the :class:`~ovdet.config.PredictConfig` once, :func:`read_classes`
parses a class spec with :func:`~ovdet.text.vocabulary.parse_class_spec`; every problem becomes a
:class:`UsageError` naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ovdet.config import TEXT_FAMILIES, ConfigError, PredictConfig

__all__ = [
    "SHARED_FLAGS",
    "Formatter",
    "UsageError",
    "add_batch",
    "add_detection",
    "add_device",
    "add_image_dir",
    "add_imgsz",
    "add_max_pixels",
    "add_model",
    "add_precision",
    "add_quiet",
    "add_stream",
    "add_text_options",
    "add_vocabulary",
    "apply_text_options",
    "build",
    "command",
    "check_device",
    "check_file",
    "check_model_spec",
    "open_detector",
    "positive",
    "predict_config",
    "read_classes",
    "set_vocabulary",
    "text_config",
]


class UsageError(Exception):
    """The command line cannot work as given (exit code 2); the message says what to change."""


#: Each shared flag and the group (function below) that declares it.
SHARED_FLAGS: dict[str, str] = {
    "--model": "add_model",
    "--classes": "add_vocabulary",
    "--embeddings": "add_vocabulary",
    "--allow-other-encoder": "add_vocabulary",
    "--text-model": "add_text_options",
    "--text-weights": "add_text_options",
    "--text-family": "add_text_options",
    "--conf": "add_detection",
    "--iou": "add_detection",
    "--max-det": "add_detection",
    "--imgsz": "add_imgsz",
    "--batch": "add_batch",
    "--precision": "add_precision",
    "--max-pixels": "add_max_pixels",
    "--video-stride": "add_stream",
    "--device": "add_device",
    "--quiet": "add_quiet",
    "--image-dir": "add_image_dir",
}

MODEL_HELP = "ovdet checkpoint folder, model YAML or pretrained name"
CLASSES_HELP = "comma-separated names, a built-in vocabulary (coco, lvis, objects365) or a .txt file"
EMBEDDINGS_HELP = "precomputed embeddings from `ovdet embed` (no text encoder needed)"
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def _shared(parser: argparse.ArgumentParser, group: str, *flags: str, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument`` for a shared flag, marked with the group that declared it."""
    action = parser.add_argument(*flags, **kwargs)
    action.ovdet_group = group  # type: ignore[attr-defined]
    return action


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help line shows its default."""


def command(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-command's parser (its help shows defaults; it takes ``--debug`` as ``ovdet`` does)."""
    parser = sub.add_parser(name, help=help, description=help, formatter_class=Formatter)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="as ovdet --debug")
    return parser


# ------------------------------------------------------------------------------------------ groups
def add_model(parser: argparse.ArgumentParser, help: str = MODEL_HELP, required: bool = True) -> None:
    """``--model``: what to load (a checkpoint folder, a model YAML or a pretrained name)."""
    _shared(parser, "add_model", "--model", required=required, help=help)


def add_vocabulary(
    parser: argparse.ArgumentParser,
    classes_help: str | None = CLASSES_HELP,
    embeddings_help: str | None = EMBEDDINGS_HELP,
    required: bool = False,
) -> None:
    """``--classes`` (a class spec) and ``--embeddings`` (a file of ``ovdet embed``, with
    ``--allow-other-encoder``); a help of None leaves that flag out."""
    if classes_help is not None:
        _shared(parser, "add_vocabulary", "--classes", required=required, help=classes_help)
    if embeddings_help is not None:
        _shared(parser, "add_vocabulary", "--embeddings", help=embeddings_help)
        _shared(
            parser,
            "add_vocabulary",
            "--allow-other-encoder",
            action="store_true",
            help="use an --embeddings file written by another text encoder than the model's (with a warning; "
            "refused otherwise)",
        )


def add_text_options(parser: argparse.ArgumentParser) -> None:
    """``--text-model`` / ``--text-weights`` / ``--text-family``: another text encoder than the model config's."""
    _shared(
        parser,
        "add_text_options",
        "--text-model",
        help="open_clip model of the text encoder, overriding the model config's (e.g. ViT-B-32-quickgelu for "
        "OpenAI CLIP weights)",
    )
    _shared(
        parser,
        "add_text_options",
        "--text-weights",
        help="local text-encoder weights (offline use), overriding the config's pretrained tag: an open_clip "
        "checkpoint file, or a sentence-transformers model folder",
    )
    _shared(
        parser,
        "add_text_options",
        "--text-family",
        choices=list(TEXT_FAMILIES),
        help="text-encoder family, overriding the model config's: approx_clip maps the shipped MiniLM into CLIP "
        "ViT-B/32 space (offline, approximate; for names in no shipped CLIP table, e.g. free phrases)",
    )


def add_detection(
    parser: argparse.ArgumentParser,
    conf: float = 0.25,
    conf_help: str = "minimum score of a detection, in [0, 1]",
    iou_help: str = "NMS IoU threshold, in [0, 1]",
    max_det: int | None = 300,
    max_det_help: str = "detections kept per image",
    with_conf: bool = True,
) -> None:
    """``--conf`` (unless ``with_conf`` is False), ``--iou``, ``--max-det``: the NMS settings."""
    if with_conf:
        _shared(parser, "add_detection", "--conf", type=float, default=conf, help=conf_help)
    _shared(parser, "add_detection", "--iou", type=float, default=0.7, help=iou_help)
    _shared(parser, "add_detection", "--max-det", type=int, default=max_det, help=max_det_help)


def add_imgsz(
    parser: argparse.ArgumentParser,
    default: int | None = 640,
    help: str = "letterbox size in pixels (a multiple of 32)",
) -> None:
    """``--imgsz``: the letterbox (or training) image size."""
    _shared(parser, "add_imgsz", "--imgsz", type=int, default=default, help=help)


def add_batch(parser: argparse.ArgumentParser, default: int | None = 1, help: str = "images per forward pass") -> None:
    """``--batch``: images per forward pass (per training step for ``train``)."""
    _shared(parser, "add_batch", "--batch", type=int, default=default, help=help)


def add_precision(parser: argparse.ArgumentParser, help: str = "numeric precision") -> None:
    """``--precision``: fp32, fp16 (CUDA only) or bf16."""
    _shared(parser, "add_precision", "--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help=help)


def add_stream(
    parser: argparse.ArgumentParser,
    video_stride_help: str = "use every n-th video frame",
    max_pixels_help: str = "skip images declaring more pixels than this (decompression bombs); default "
    "$OVDET_MAX_PIXELS or 89478485, 0 = no limit",
) -> None:
    """``--video-stride`` and ``--max-pixels``: how a streamed source is read."""
    _shared(parser, "add_stream", "--video-stride", type=int, default=1, help=video_stride_help)
    add_max_pixels(parser, help=max_pixels_help)


def add_max_pixels(parser: argparse.ArgumentParser, default: int | None = None, help: str = "") -> None:
    """``--max-pixels``: the largest image (width × height) read."""
    _shared(parser, "add_max_pixels", "--max-pixels", type=int, default=default, help=help)


def add_image_dir(
    parser: argparse.ArgumentParser, help: str = "image folder of a .json/.jsonl (default: found next to the file)"
) -> None:
    """``--image-dir``: the folder an annotation file's image paths are relative to."""
    _shared(parser, "add_image_dir", "--image-dir", help=help)


def add_device(parser: argparse.ArgumentParser, default: str | None = "auto", help: str = DEVICE_HELP) -> None:
    """``--device``: auto, cpu, cuda or cuda:N."""
    _shared(parser, "add_device", "--device", default=default, help=help)


def add_quiet(parser: argparse.ArgumentParser, help: str = "no progress bar") -> None:
    """``--quiet``: no progress bars."""
    _shared(parser, "add_quiet", "--quiet", action="store_true", help=help)


# ------------------------------------------------------------------------------------------ checks
T = TypeVar("T")


def build(make: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``make(*args, **kwargs)`` (a typed config, a check), an invalid value a :class:`UsageError`.

    Raises:
        UsageError: ``make`` raised ValueError (ConfigError included), with its message.
    """
    try:
        return make(*args, **kwargs)
    except ValueError as e:
        raise UsageError(str(e)) from e


def positive(name: str, value: int, minimum: int = 1) -> None:
    """Raises UsageError when ``value`` (of flag ``name``) is below ``minimum``."""
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")


def check_file(flag: str, path: str | None, what: str = "file not found") -> None:
    """Raises UsageError when a given ``path`` (of ``flag``) is not a file."""
    if path and not Path(path).is_file():
        raise UsageError(f"{flag} {path}: {what}")


def check_dataset(flag: str, path: str | None) -> None:
    """Raises UsageError when a given dataset ``path`` (of ``flag``) is neither a file (yaml, json,
    jsonl) nor a folder (Pascal VOC)."""
    if path and not (Path(path).is_file() or Path(path).is_dir()):
        raise UsageError(f"{flag} {path}: dataset not found (a data yaml, instances json, ODVG jsonl or VOC folder)")


def check_device(device: str) -> str:
    """``device`` when it names a usable device.

    Raises:
        UsageError: an unknown device, or CUDA asked for where there is none.
    """
    from ovdet.device import resolve_device

    try:
        resolve_device(device)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from e
    return device


def predict_config(args: argparse.Namespace, on_this_machine: bool = True, **fixed: Any) -> PredictConfig:
    """The :class:`~ovdet.config.PredictConfig` of a command's flags, built once and passed down.

    The flags a command has among ``--conf``, ``--iou``, ``--imgsz``, ``--max-det``,
    ``--agnostic-nms``, ``--batch``, ``--precision`` and ``--max-pixels`` are read; ``fixed``
    gives the others (e.g. the tracker's ``conf``). The precision is checked against
    ``--device`` (unless ``on_this_machine`` is False: Ray actors run elsewhere, and
    :func:`~ovdet.distributed.plan_actors` checks theirs) and ``$OVDET_MAX_PIXELS`` is read, so a
    command line that cannot work fails here, before the model loads; the image size is checked
    against the model's own stride again where the model runs.

    Raises:
        UsageError: an invalid value, named.
    """
    from ovdet.data.images import resolve_max_pixels
    from ovdet.device import resolve_device, resolve_precision

    names = [f.name for f in dataclasses.fields(PredictConfig) if f.init]
    values = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    values.update(fixed)
    try:
        cfg = PredictConfig(**values)
        if on_this_machine and getattr(args, "device", None) is not None:
            resolve_precision(cfg.precision, resolve_device(check_device(args.device)))
        resolve_max_pixels(cfg.max_pixels)
    except (ValueError, ConfigError) as e:
        raise UsageError(str(e)) from e
    return cfg


def read_classes(spec: str) -> list[str]:
    """Class names of a ``--classes``-style spec (:func:`~ovdet.text.vocabulary.parse_class_spec`:
    ``"a,b,c"``, a built-in vocabulary's name, or a text file with one name per line).

    Raises:
        UsageError: a ``.txt``/``.names`` file that does not exist, or no names at all.
    """
    from ovdet.text.vocabulary import parse_class_spec

    try:
        names = parse_class_spec(spec)
    except ValueError as e:
        raise UsageError(str(e)) from e
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


def text_config(
    base: Any,
    text_model: str | None,
    text_weights: str | None,
    templates: list[str] | None = None,
    family: str | None = None,
):
    """``base`` (a TextConfig) with the command line's text-encoder options applied.

    Raises:
        UsageError: ``--text-weights`` names nothing, or the result is no valid text config (named).
    """
    changes: dict[str, Any] = {}
    if family:
        changes.update(family=family)
    if text_model:
        changes.update(model=text_model, custom=None)
    if text_weights:
        if not Path(text_weights).exists():
            raise UsageError(f"--text-weights {text_weights}: not found")
        changes.update(pretrained=text_weights, custom=None)
    if templates:
        changes.update(templates=tuple(templates))
    if not changes:
        return base
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as e:
        raise UsageError(f"--text-family / --text-model: {e}") from e


def apply_text_options(det: Any, args: argparse.Namespace) -> None:
    """Switch ``det`` to the text encoder ``--text-model`` / ``--text-weights`` / ``--text-family`` name, when given."""
    family = getattr(args, "text_family", None)
    if args.text_model or args.text_weights or family:
        det.set_text_encoder(text_config(det.cfg.text, args.text_model, args.text_weights, family=family))


def set_vocabulary(
    det: Any, classes: list[str] | None, embeddings: str | None, allow_other_encoder: bool = False
) -> None:
    """Give ``det`` the vocabulary of ``--classes`` and/or ``--embeddings``.

    With both, the file's rows of the named classes (:func:`~ovdet.text.vocabulary.select_embeddings`);
    with a file only, all of it; with classes only, the text encoder's (through the cache). The
    file's text encoder must be the model's (:func:`~ovdet.text.files.check_encoder`), unless
    ``allow_other_encoder`` (``--allow-other-encoder``).

    Raises:
        UsageError: classes the file lacks, a file of another text encoder, or no vocabulary at
            all (and the model has none).
    """
    if embeddings:
        from ovdet.text import load_embeddings, text_encoder_id
        from ovdet.text.vocabulary import select_embeddings

        try:
            names, emb, _ = load_embeddings(embeddings, text_encoder_id(det.cfg.text), allow_other_encoder)
        except ValueError as e:
            raise UsageError(f"--embeddings {e}") from e
        if classes:
            try:
                emb = select_embeddings(classes, None, names, emb)
            except KeyError:
                missing = [n for n in classes if n not in names]
                raise UsageError(f"classes {missing} are not in {embeddings} (it holds {len(names)} names)") from None
            names = classes
        det.set_class_embeddings(names, emb)
    elif classes:
        det.set_classes(classes)
    elif not det.names:
        raise UsageError("no vocabulary: pass --classes 'a,b,c' (or a .txt file) or --embeddings FILE")


def open_detector(
    args: argparse.Namespace,
    classes: list[str] | None = None,
    require_vocabulary: bool = False,
    model: str | None = None,
    device: str | None = None,
) -> Any:
    """The detector of ``model`` (default ``--model``; already checked by :func:`check_model_spec`)
    on ``device`` (default ``--device``), with the text options applied and the vocabulary of
    ``classes`` / ``--embeddings`` set (see :func:`set_vocabulary`; with ``require_vocabulary``
    also when neither is given, which then needs the model's own).
    """
    from ovdet.api import load_detector

    det = load_detector(model or args.model, device or args.device)
    apply_text_options(det, args)
    embeddings = getattr(args, "embeddings", None)
    if classes or embeddings or require_vocabulary:
        set_vocabulary(det, classes, embeddings, getattr(args, "allow_other_encoder", False))
    return det
