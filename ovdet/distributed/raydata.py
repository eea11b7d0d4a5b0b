"""Ray Data batch inference: a pool of detector actors turns a dataset of image paths into parquet rows.

The pipeline, one Ray Data stage per arrow::

    paths (a ``path`` column)         read_source: a folder, glob, image, list or parquet of paths
      → decode_batch                  ovdet's decoder (EXIF, gray/16-bit, max_pixels); an
                                      unreadable file becomes a row with ``error`` set
      → BatchDetector (actor pool)    each actor loads the detector once, takes the vocabulary
                                      embedded once on the driver (no text encoder on the actors)
                                      and runs ``Detector.predict`` on the decoded batch
      → write_parquet                 one row per input row, in the schema of result_schema()

Every image is independent, so results equal single-process ``Detector.predict`` (up to float
rounding: the same folded network, images grouped by letterbox shape) however the rows are split
between actors and machines. Rows come out in no particular order; join or sort on ``path``.

Ray and pyarrow are imported only inside the functions that need them (the ``[ray]`` extra).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ovdet.api import load_detector as load_model
from ovdet.api import portable_model_spec
from ovdet.config import PredictConfig
from ovdet.data.images import VIDEO_EXTENSIONS, decode_image, resolve_max_pixels
from ovdet.datatools.label import list_images
from ovdet.io import atomic_write_text
from ovdet.structures import Detections
from ovdet.text import validate_class_names

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import ray.data

__all__ = [
    "RAY_MISSING",
    "SUMMARY_FILE",
    "ActorPlan",
    "BatchDetector",
    "RayPredictConfig",
    "RayPredictSummary",
    "decode_batch",
    "import_ray",
    "load_model",
    "plan_actors",
    "predict_dataset",
    "read_source",
    "result_schema",
    "results_table",
    "run_ray_predict",
    "source_paths",
]

#: The message of the ImportError raised when Ray Data or pyarrow is missing.
RAY_MISSING = "ovdet predict --engine ray needs Ray: pip install 'ovdet[ray]'"
#: What :func:`run_ray_predict` writes beside the parquet files (``_``: parquet readers skip it).
SUMMARY_FILE = "_summary.json"
#: CPU actors a cluster without GPUs gets when ``actors`` is not given (at most one per CPU).
DEFAULT_CPU_ACTORS = 2
#: Images per actor call and forward pass unless told otherwise.
DEFAULT_BATCH = 8


def import_ray() -> Any:
    """The ``ray`` module with Ray Data and pyarrow importable.

    Raises:
        ImportError: Ray Data or pyarrow is not installed; the message names the ``[ray]`` extra.
    """
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{RAY_MISSING} ({e})") from e
    return ray


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class RayPredictConfig:
    """What every actor runs (a :class:`~ovdet.config.PredictConfig`) and how many actors.

    Give the prediction options as ``predict`` (built once at the edge, e.g. by the command line)
    or as keywords (``conf``, ``iou``, ``imgsz``, ``max_det``, ``agnostic_nms``, ``batch``,
    ``precision``, ``max_pixels``; they override ``predict``'s fields). Afterwards ``predict``
    holds the options every actor passes to :meth:`Detector.predict` and the keyword fields read
    its values.

    Attributes:
        predict: the prediction options; None: PredictConfig's defaults with ``batch=8``. Its
            ``batch`` is also the images per actor call (split by letterbox shape, so a batch
            predicts what one-by-one does); ``precision="fp16"`` needs GPU actors;
            ``max_pixels`` applies where images are decoded, resolved on the driver, so every
            node applies the same limit (the actors' own arrays are never limited).
        actors: actor-pool size (None: one per GPU when actors use GPUs, else
            ``min(2, CPUs)`` — see :func:`plan_actors`).
        gpus_per_actor: GPUs each actor holds (None: 1 when the cluster has a GPU, else 0;
            a fraction shares a GPU between actors).
        cpus_per_actor: CPUs each actor holds, also its torch threads (None: 1 with GPUs, else
            the cluster's CPUs divided among the actors).
    """

    conf: float | None = None
    iou: float | None = None
    imgsz: int | tuple[int, int] | None = None
    max_det: int | None = None
    agnostic_nms: bool | None = None
    batch: int | None = None
    precision: str | None = None
    max_pixels: int | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    predict: PredictConfig | None = None

    def __post_init__(self) -> None:
        names = ("conf", "iou", "imgsz", "max_det", "agnostic_nms", "batch", "precision", "max_pixels")
        base = self.predict if self.predict is not None else PredictConfig(batch=DEFAULT_BATCH)
        options = base.replace(**{n: getattr(self, n) for n in names})  # raises ConfigError naming the field
        object.__setattr__(self, "predict", options)
        for n in names:
            object.__setattr__(self, n, getattr(options, n))
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor must be >= 0, got {self.gpus_per_actor}")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise ValueError(f"cpus_per_actor must be > 0, got {self.cpus_per_actor}")


@dataclass(frozen=True)
class ActorPlan:
    """The actor pool as Ray will schedule it (see :func:`plan_actors`).

    Attributes:
        actors: pool size. num_cpus / num_gpus: what each actor holds for the whole run.
        threads: torch (and OpenCV) threads per actor.
        separate_decode: decode in tasks of their own on the CPUs the actors leave free (GPU
            actors then never wait for a JPEG decoder); False fuses decoding into the actors.
    """

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int
    separate_decode: bool = False

    @property
    def device(self) -> str:
        """``"cuda"`` for GPU actors (Ray makes the actor's GPU its ``cuda:0``), else ``"cpu"``."""
        return "cuda" if self.num_gpus > 0 else "cpu"


def plan_actors(config: RayPredictConfig, resources: Mapping[str, float]) -> ActorPlan:
    """Size the actor pool for a cluster's resources.

    GPU actors (the default when the cluster has a GPU): one per GPU, 1 CPU each; decoding runs
    in separate tasks when at least one CPU is left over. CPU actors: ``min(2, CPUs)``, the
    CPUs split evenly between them, decoding fused into the actors (a fixed pool that holds
    every CPU would leave none for separate tasks).

    Args:
        config: the requested sizes (None fields are filled in here).
        resources: the cluster's totals, as ``ray.cluster_resources()`` reports them
            (``{"CPU": 16.0, "GPU": 2.0, ...}``).

    Raises:
        ValueError: the pool does not fit the cluster (numbers named), or fp16 without GPUs.
    """
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    per_gpu = config.gpus_per_actor if config.gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    if per_gpu > 0:
        actors = config.actors or max(1, int(gpus / per_gpu + 1e-9))
        per_cpu = config.cpus_per_actor or 1.0
    else:
        if config.precision == "fp16":
            raise ValueError("precision='fp16' needs GPU actors, and they get none; use 'fp32' or 'bf16'")
        actors = config.actors or max(1, min(DEFAULT_CPU_ACTORS, int(cpus)))
        per_cpu = config.cpus_per_actor or float(max(1, int(cpus) // actors))
    need_cpus, need_gpus = actors * per_cpu, actors * per_gpu
    if need_cpus > cpus + 1e-9 or need_gpus > gpus + 1e-9:
        raise ValueError(
            f"{actors} actor(s) x ({per_cpu:g} CPU, {per_gpu:g} GPU) need {need_cpus:g} CPUs and {need_gpus:g} GPUs, "
            f"but the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs; use fewer actors (--actors) or add nodes"
        )
    return ActorPlan(
        actors=actors,
        num_cpus=per_cpu,
        num_gpus=per_gpu,
        threads=max(1, int(per_cpu)),
        separate_decode=per_gpu > 0 and cpus - need_cpus >= 1.0,
    )


# ------------------------------------------------------------------------------------------ stages
def decode_batch(batch: Mapping[str, Any], base_dir: str, max_pixels: int) -> dict[str, Any]:
    """Ray Data stage: decode the files a batch of rows names; never raises for a bad file.

    Args:
        batch: a numpy batch with a ``path`` column (B,) of str; other columns are dropped.
        base_dir: what relative paths are relative to (the driver's working directory: actors
            run elsewhere).
        max_pixels: the pixel limit (resolved, 0 = none).

    Returns:
        ``path`` (B,) as given; ``image``: B ``(H, W, 3)`` uint8 BGR arrays (``(0, 0, 3)`` where
        unreadable); ``error`` (B,) str, ``""`` where the image was read, else the reason
        (starting with the file's path).
    """
    paths = list(batch["path"])
    images: list[np.ndarray] = []
    errors: list[str] = []
    for p in paths:
        image, error = np.zeros((0, 0, 3), np.uint8), ""
        if p is None or str(p) == "":
            error = "row has no path (null or empty)"
        else:
            full = os.path.join(base_dir, os.fspath(p))  # an absolute path stays as it is
            try:
                image = decode_image(full, max_pixels)
            except Exception as e:  # noqa: BLE001 - one bad file becomes an error row, never a failed job
                error = str(e) if full in str(e) else f"{full}: {type(e).__name__}: {e}"
        images.append(image)
        errors.append(error)
    return {"path": np.array(paths, dtype=object), "image": images, "error": np.array(errors, dtype=object)}


def result_schema() -> pa.Schema:
    """The parquet schema of the results: one row per input row.

    ========  ==================================  ==============================================
    path      string                              the input path, as given
    height    int32                               original image height, px (0: unreadable)
    width     int32                               original image width, px (0: unreadable)
    boxes     list<fixed_size_list<float32, 4>>   (N, 4) xyxy, pixels of the original image
    scores    list<float32>                       (N,) descending
    labels    list<int64>                         (N,) index into the vocabulary
    names     list<string>                        (N,) class name of each box
    error     string                              null when read and predicted; else the reason,
                                                  starting with the file's path (N = 0)
    ========  ==================================  ==============================================
    """
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("path", pa.string()),
            pa.field("height", pa.int32()),
            pa.field("width", pa.int32()),
            pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4))),
            pa.field("scores", pa.list_(pa.float32())),
            pa.field("labels", pa.list_(pa.int64())),
            pa.field("names", pa.list_(pa.string())),
            pa.field("error", pa.string()),
        ]
    )


def results_table(
    paths: Sequence[str | None],
    sizes: Sequence[tuple[int, int]],
    detections: Sequence[Detections | None],
    errors: Sequence[str | None],
) -> pa.Table:
    """Rows in :func:`result_schema` (the values are float32/int64 as ``Detections`` holds them).

    Args:
        paths: B input paths. sizes: B ``(height, width)`` (``(0, 0)`` when unreadable).
        detections: B detections, None for a failed row. errors: B reasons, None when fine.
    """
    import pyarrow as pa

    counts = [0 if d is None else len(d.scores) for d in detections]
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))  # (B + 1,)
    done = [d for d in detections if d is not None]
    boxes = np.concatenate([d.boxes.numpy() for d in done] + [np.zeros((0, 4), np.float32)])  # (ΣN, 4)
    scores = np.concatenate([d.scores.numpy() for d in done] + [np.zeros(0, np.float32)])  # (ΣN,)
    labels = np.concatenate([d.labels.numpy() for d in done] + [np.zeros(0, np.int64)])  # (ΣN,)
    names = [d.names[i] for d in done for i in d.labels.tolist()]  # (ΣN,)
    columns = [
        pa.array(paths, pa.string()),
        pa.array([h for h, _ in sizes], pa.int32()),
        pa.array([w for _, w in sizes], pa.int32()),
        pa.ListArray.from_arrays(
            offsets, pa.FixedSizeListArray.from_arrays(pa.array(boxes.astype(np.float32).reshape(-1)), 4)
        ),
        pa.ListArray.from_arrays(offsets, pa.array(scores.astype(np.float32))),
        pa.ListArray.from_arrays(offsets, pa.array(labels.astype(np.int64))),
        pa.ListArray.from_arrays(offsets, pa.array(names, pa.string())),
        pa.array(list(errors), pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=result_schema())


class BatchDetector:
    """Ray Data actor: loads the detector once, then predicts each batch of decoded images.

    Args:
        model: checkpoint folder, model YAML or pretrained name (see :func:`load_model`); a
            path must be readable on every node.
        names: K class names. embeddings: (K, D) float32 class embeddings (computed once, on
            the driver).
        config: the prediction settings.
        device: ``"cpu"`` or ``"cuda"`` (the GPU Ray assigned to this actor).
        threads: torch and OpenCV threads of this actor's process (the CPUs it holds).
    """

    def __init__(
        self,
        model: str,
        names: Sequence[str],
        embeddings: np.ndarray,
        config: RayPredictConfig,
        device: str,
        threads: int,
    ) -> None:
        import cv2

        # The actor owns its process: size its thread pools to the CPUs Ray reserved for it.
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.config = config
        self.detector = load_model(model, device).set_class_embeddings(names, torch.tensor(embeddings))
        self.detector.folded_network()  # build the network predict runs now, not in the first batch

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections of B ``(H, W, 3)`` uint8 BGR images, in order (as :meth:`Detector.predict`)."""
        out = self.detector.predict(list(images), config=self.config.predict, keep_images=False)
        if not isinstance(out, list) or len(out) != len(images):  # arrays are never skipped
            raise RuntimeError(f"predict returned {len(out)} results for {len(images)} images")
        return out

    def __call__(self, batch: Mapping[str, Any]) -> pa.Table:
        """One output row per row of ``batch`` (the output of :func:`decode_batch`), in order."""
        paths = [None if p is None else str(p) for p in batch["path"]]
        errors: list[str | None] = [str(e) if e else None for e in batch["error"]]
        images = batch["image"]
        sizes = [(0, 0) if e else (int(images[i].shape[0]), int(images[i].shape[1])) for i, e in enumerate(errors)]
        detections: list[Detections | None] = [None] * len(paths)
        ok = [i for i, e in enumerate(errors) if e is None]
        if ok:
            try:
                for i, d in zip(ok, self.predict([images[i] for i in ok])):
                    detections[i] = d
            except Exception:  # noqa: BLE001 - find the image that fails; the others still get their rows
                for i in ok:
                    try:
                        detections[i] = self.predict([images[i]])[0]
                    except Exception as e:  # noqa: BLE001 - recorded in the row, never kills the job
                        errors[i] = f"{paths[i]}: prediction failed ({type(e).__name__}: {e})"
        return results_table(paths, sizes, detections, errors)


# ------------------------------------------------------------------------------------------ pipeline
def source_paths(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str | None]:
    """The image paths ``source`` names, one per output row (nothing is decoded; no Ray needed).

    Args:
        source: an image file, a folder (its images, sorted, not recursive), a glob (``**``
            recurses), a list of paths, or a ``.parquet`` file — or a folder of them (a folder
            holding no image) — with a string ``path`` column (other columns are ignored; a null
            path becomes an error row). Paths are kept as given; relative ones are read relative
            to the current directory.

    Raises:
        FileNotFoundError: nothing matches, or a folder holds no image and no parquet file.
        ValueError: a parquet source without a string ``path`` column, or with no rows; a video
            file (the Ray engine reads still images).
    """
    if isinstance(source, (list, tuple)):
        if not source:
            raise FileNotFoundError("source is an empty list: nothing to read")
        return [os.fspath(p) for p in source]
    text = os.fspath(source)
    path = Path(text)
    if path.suffix == ".parquet" or (path.is_dir() and not _has_images(path) and any(path.rglob("*.parquet"))):
        return _parquet_paths(path)
    if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        raise ValueError(f"{text} is a video: the Ray engine reads still images (use ovdet predict --engine local)")
    return [str(p) for p in list_images(text)]


def read_source(source: str | os.PathLike | Sequence[str | os.PathLike]) -> ray.data.Dataset:
    """A dataset with one ``path`` row per image of ``source`` (see :func:`source_paths`), held in
    memory: it needs no read tasks, which actors holding every CPU could starve.

    Raises:
        FileNotFoundError / ValueError: see :func:`source_paths`.
        ImportError: Ray is not installed.
    """
    ray = import_ray()
    return ray.data.from_items([{"path": p} for p in source_paths(source)])


def _has_images(folder: Path) -> bool:
    try:
        return bool(list_images(folder))
    except FileNotFoundError:
        return False


def _parquet_paths(path: Path) -> list[str | None]:
    """The ``path`` column of a parquet file or folder (of ``.parquet`` files at any depth).

    Raises:
        FileNotFoundError / ValueError: see :func:`source_paths`.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    if not path.exists():
        raise FileNotFoundError(f"parquet source not found: {path}")
    try:
        data = pads.dataset(str(path), format="parquet")
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file or folder ({e})") from e
    schema = data.schema
    if "path" not in schema.names:
        raise ValueError(
            f"{path}: the parquet source has no 'path' column (columns: {', '.join(schema.names) or 'none'}); "
            f"it needs a string column named 'path' with one image file per row"
        )
    kind = schema.field("path").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"{path}: the 'path' column must hold strings, not {kind}")
    paths = data.to_table(columns=["path"]).column("path").to_pylist()
    if not paths:
        raise ValueError(f"{path}: the parquet source has no rows")
    return paths


def _as_embeddings(embeddings: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """(K, D) finite float32 numpy copy of the class embeddings.

    Raises:
        ValueError: wrong shape for ``k`` names, or non-finite values.
    """
    emb = torch.as_tensor(embeddings).detach().to("cpu", torch.float32).numpy().copy()
    if emb.ndim != 2 or emb.shape[0] != k:
        raise ValueError(f"embeddings must be ({k}, D) for {k} names, got {tuple(emb.shape)}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return emb


def predict_dataset(
    ds: ray.data.Dataset,
    model: str | os.PathLike,
    names: Sequence[str],
    embeddings: np.ndarray | torch.Tensor,
    config: RayPredictConfig | None = None,
    plan: ActorPlan | None = None,
) -> ray.data.Dataset:
    """Detections of every image a dataset names: a lazy dataset in :func:`result_schema`.

    The input's ``path`` rows are materialised here (spread over blocks of about one batch,
    before any actor holds a CPU, so reading them never waits for one). Decoding and prediction
    run when the result is consumed (``write_parquet``, ``take_all``, ``iter_batches`` …):
    decoding in Ray tasks or inside the actors (see :class:`ActorPlan`), prediction in a pool of
    :class:`BatchDetector` actors.

    Args:
        ds: a dataset with a string ``path`` column (other columns are dropped).
        model: checkpoint folder, model YAML or pretrained name, loaded once by each actor; a
            path must be readable on every node.
        names: the K class names. embeddings: their (K, D) embeddings (``Detector.encode``,
            ``det.class_embeddings`` or an ``ovdet embed`` file), so actors need no text encoder.
        config: prediction settings and pool size.
        plan: the actor pool (default :func:`plan_actors` on ``ray.cluster_resources()``).

    Raises:
        ValueError: no ``path`` column, an invalid vocabulary, or a pool the cluster cannot hold.
        ImportError: Ray is not installed.
    """
    ray = import_ray()
    config = config or RayPredictConfig()
    columns = ds.schema().names if ds.schema() is not None else []
    if "path" not in columns:
        raise ValueError(f"the dataset needs a 'path' column of image paths; it has {columns}")
    names = validate_class_names(names)
    emb = _as_embeddings(embeddings, len(names))
    plan = plan or plan_actors(config, ray.cluster_resources())
    paths = ds.select_columns(["path"]).materialize()
    rows = paths.count()
    # about a batch per block, so every actor gets work (Ray hands an actor whole blocks), capped
    # so a long run does not hold millions of tiny blocks; at least one block per actor
    blocks = max(1, min(rows, max(plan.actors, min(math.ceil(rows / config.batch), max(200, 8 * plan.actors)))))
    paths = paths.repartition(blocks).materialize()
    if plan.separate_decode:
        decode_resources: dict[str, float] = {"num_cpus": 1.0}
    else:  # the same resources as the actors: Ray fuses the two stages into the actor processes
        decode_resources = {"num_cpus": plan.num_cpus, "num_gpus": plan.num_gpus}
    decoded = paths.map_batches(
        decode_batch,
        batch_size=config.batch,
        batch_format="numpy",
        fn_kwargs={"base_dir": os.getcwd(), "max_pixels": resolve_max_pixels(config.max_pixels)},
        **decode_resources,
    )
    return decoded.map_batches(
        BatchDetector,
        batch_size=config.batch,
        batch_format="numpy",
        fn_constructor_kwargs={
            "model": portable_model_spec(model),  # actors run in other directories
            "names": names,
            "embeddings": emb,
            "config": config,
            "device": plan.device,
            "threads": plan.threads,
        },
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
    )


@dataclass
class RayPredictSummary:
    """What :func:`run_ray_predict` did.

    Attributes:
        out_dir: the results folder. files: its parquet files.
        images: rows written (one per input path, readable or not).
        errors: (path, reason) of every row whose image could not be read or predicted.
        detections: boxes in all rows. per_class: boxes per class name (vocabulary order,
            classes without boxes left out).
        names: the vocabulary.
        seconds: the pipeline's wall time (actor start-up with the model load, read, decode,
            predict, write); startup_seconds: ``ray.init`` (0 when Ray was running already).
        plan: the actor pool.
    """

    out_dir: Path
    files: list[Path]
    images: int
    errors: list[tuple[str, str]]
    detections: int
    per_class: dict[str, int]
    names: list[str]
    seconds: float
    startup_seconds: float
    plan: ActorPlan
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        """Rows per second of pipeline time."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-able values (what ``_summary.json`` holds)."""
        return {
            "images": self.images,
            "errors": [{"path": p, "error": e} for p, e in self.errors],
            "detections": self.detections,
            "per_class": self.per_class,
            "names": self.names,
            "seconds": round(self.seconds, 3),
            "startup_seconds": round(self.startup_seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "actors": asdict(self.plan),
            "settings": self.settings,
            "files": [p.name for p in self.files],
        }


def run_ray_predict(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: str | os.PathLike,
    names: Sequence[str] | str | None = None,
    embeddings: np.ndarray | torch.Tensor | None = None,
    config: RayPredictConfig | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    rows_per_file: int = 100_000,
    overwrite: bool = False,
    progress: bool = True,
) -> RayPredictSummary:
    """Predict every image of ``source`` on Ray and write the rows as parquet into ``out_dir``.

    Layout of ``out_dir``: ``*.parquet`` (Ray names the files; ``pandas.read_parquet(out_dir)``
    or ``pyarrow.parquet.read_table(out_dir)`` read them as one table in :func:`result_schema`)
    and ``_summary.json`` (:meth:`RayPredictSummary.to_json`: vocabulary, settings, counts,
    errors, timing). On a cluster ``out_dir``, the model and the images must be on a filesystem
    every node sees.

    Ray: the running one when this process is connected already (left running); else
    ``ray.init(address=ray_address)`` — ``"auto"`` or ``"ray://host:10001"`` joins a cluster,
    None (and no ``$RAY_ADDRESS``) starts a local Ray with ``num_cpus`` CPUs (default: all),
    shut down again at the end.

    Args:
        source: see :func:`read_source`.
        out_dir: the results folder (created).
        model: checkpoint folder, model YAML or pretrained name.
        names: the vocabulary: with ``embeddings``, used as given; alone (or a built-in name
            such as ``"coco"``), embedded once here with the model's text encoder; None: the
            vocabulary stored in the checkpoint.
        embeddings: (K, D) embeddings of ``names``.
        config: prediction settings and pool size.
        ray_address: the cluster to join (see above).
        num_cpus: CPUs of a local Ray started here (not with ``ray_address``).
        rows_per_file: rows Ray gathers into one parquet file (a hint; fewer files for large runs).
        overwrite: replace parquet files and a summary already in ``out_dir`` (else refused).
        progress: show Ray Data's progress bars.

    Raises:
        FileExistsError: ``out_dir`` holds earlier results and ``overwrite`` is False.
        FileNotFoundError / ValueError: see :func:`read_source` and :func:`predict_dataset`; no
            vocabulary; ``num_cpus`` with ``ray_address``.
        ImportError: Ray is not installed.
    """
    ray = import_ray()
    config = config or RayPredictConfig()
    if num_cpus is not None and ray_address is not None:
        raise ValueError("num_cpus sizes a local Ray; it cannot be given with ray_address (the cluster has its own)")
    if num_cpus is not None and num_cpus < 1:
        raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    out = Path(out_dir)
    earlier = sorted(out.glob("*.parquet")) + ([out / SUMMARY_FILE] if (out / SUMMARY_FILE).exists() else [])
    if earlier and not overwrite:
        raise FileExistsError(
            f"{out} holds results of an earlier run ({len(earlier)} file(s)); choose another folder or overwrite"
        )
    paths = source_paths(source)  # a missing source fails here, before anything starts
    names, emb = _vocabulary(model, names, embeddings)
    started = not ray.is_initialized()
    t0 = time.perf_counter()
    if started:
        init: dict[str, Any] = {"address": ray_address, "include_dashboard": False}
        if num_cpus is not None:
            init["num_cpus"] = num_cpus
        ray.init(**init)
    startup = time.perf_counter() - t0 if started else 0.0
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    try:
        context.enable_progress_bars = progress
        plan = plan_actors(config, ray.cluster_resources())
        for p in earlier:
            p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        t1 = time.perf_counter()
        ds = ray.data.from_items([{"path": p} for p in paths])
        results = predict_dataset(ds, model, names, emb, config, plan)
        _write_parquet(results, out, rows_per_file)
        seconds = time.perf_counter() - t1
    finally:
        context.enable_progress_bars = bars
        if started:
            ray.shutdown()
    summary = _summarize(out, names, seconds, startup, plan)
    summary.settings = {
        "model": os.fspath(model),
        **asdict(config),
        "max_pixels": resolve_max_pixels(config.max_pixels),
    }
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary.to_json(), indent=1) + "\n")
    return summary


def _vocabulary(
    model: str | os.PathLike, names: Sequence[str] | str | None, embeddings: np.ndarray | torch.Tensor | None
) -> tuple[list[str], np.ndarray]:
    """(names, (K, D) embeddings): as given, embedded once here, or the checkpoint's own.

    Raises:
        ValueError: embeddings without names, or no vocabulary anywhere.
    """
    if embeddings is not None:
        if names is None or isinstance(names, str):
            raise ValueError("embeddings need their class names (a list of K names)")
        checked = validate_class_names(names)
        return checked, _as_embeddings(embeddings, len(checked))
    det = load_model(model, "cpu")
    if names is not None:
        det.set_classes(names)
    vocabulary = det.class_embeddings
    if vocabulary is None:
        raise ValueError(f"no vocabulary: {model} stores none; pass class names (and optionally their embeddings)")
    return det.names, vocabulary.numpy()


def _write_parquet(results: ray.data.Dataset, out: Path, rows_per_file: int) -> None:
    """``results.write_parquet(out)`` with about ``rows_per_file`` rows per file.

    Writing is light I/O and CPU actors may hold every CPU, so write tasks reserve none.
    """
    rows_arg = "min_rows_per_file"  # Ray >= 2.43 (older releases: num_rows_per_file)
    if rows_arg not in inspect.signature(results.write_parquet).parameters:
        rows_arg = "num_rows_per_file"
    results.write_parquet(str(out), ray_remote_args={"num_cpus": 0}, **{rows_arg: rows_per_file})


def _summarize(out: Path, names: list[str], seconds: float, startup: float, plan: ActorPlan) -> RayPredictSummary:
    """Counts read back from the parquet files just written."""
    import pyarrow.dataset as pads

    files = sorted(out.glob("*.parquet"))
    table = pads.dataset([str(f) for f in files], format="parquet").to_table(columns=["path", "names", "error"])
    errors = [
        (p or "", e)
        for p, e in zip(table.column("path").to_pylist(), table.column("error").to_pylist())
        if e is not None
    ]
    counts = Counter(n for row in table.column("names").to_pylist() for n in row)
    return RayPredictSummary(
        out_dir=out,
        files=files,
        images=table.num_rows,
        errors=errors,
        detections=sum(counts.values()),
        per_class={n: counts[n] for n in names if counts[n]},
        names=list(names),
        seconds=seconds,
        startup_seconds=startup,
        plan=plan,
    )
