"""Post-training static int8 quantization of an exported detector (onnxruntime's tools).

Calibration reads real images from a folder the user names, letterboxed exactly as the runtime
will see them; the convolutions (where the time goes) are quantized per channel in QDQ form,
while the box decode, the sigmoid scores and NMS stay float, so boxes keep their precision.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ovdet.data.images import iter_sources
from ovdet.data.letterbox import letterbox
from ovdet.deploy.runtime import images_to_array
from ovdet.io import atomic_write

__all__ = ["SENSITIVE", "calibration_images", "quantize_int8"]

#: Convolutions kept in float by default (node-name fragments). Measured on the previous
#: ovdet-demo (v2-s, MiniLM space; coco128: calibration on images 0-63, 231 fp32 boxes scoring > 0.25 on images 64-127, match at IoU 0.9):
#: quantizing one block alone keeps 77% (stages.0), 89% (stem), 92% (stages.1), 94% (contrast),
#: 95% (stages.3) of them, every other block >= 96%; the attention similarities and box_branches.*.2
#: feed a max over classes and the box distributions directly. With these float (and mean-of-image
#: ranges, see ``moving_average``) 220/231 = 95.2% match (all-int8: 151/231); without stages.1,
#: 213/231. The current demo (YOLOv8n in CLIP space): 125/131 = 95.4%. The float convs are ~20%
#: of the MACs: 0.062-0.070 s per 640x480 image on 2 threads
#: (without stages.1: 0.060-0.072 s in the same runs; fp32 0.125-0.165 s, the host was shared).
SENSITIVE: tuple[str, ...] = (
    "/stem/",
    "/stages.0/",
    "/stages.1/",
    "attn/sim/",
    "box_branches.0.2/",
    "box_branches.1.2/",
    "box_branches.2.2/",
    "/contrast.",
)


def calibration_images(folder: str | Path, limit: int) -> tuple[list[np.ndarray], list[str], list[tuple[str, str]]]:
    """Up to ``limit`` decoded images of ``folder`` (sorted by name), skipping unreadable ones.

    Returns:
        (BGR uint8 images, their names, (name, reason) of each skipped item).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no readable image in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration folder not found: {folder}")
    images, names, skipped = [], [], []
    for item in iter_sources(folder):
        if item.error is not None or item.image is None:
            skipped.append((item.name, item.error or "no image"))
            continue
        images.append(item.image)
        names.append(item.name)
        if len(images) >= limit:
            break
    if not images:
        raise ValueError(f"no readable calibration image in {folder} ({len(skipped)} skipped)")
    return images, names, skipped


class _Reader:
    """onnxruntime ``CalibrationDataReader``: one letterboxed image (and the vocabulary) per step."""

    def __init__(
        self, images: list[np.ndarray], imgsz: tuple[int, int], stride: int, embeddings: np.ndarray | None
    ) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = (
            {"images": images_to_array([letterbox(im, imgsz, stride=stride, auto=False)[0]])}
            | ({} if embeddings is None else {"class_embeddings": embeddings})
            for im in images
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8(
    model: str | Path,
    output: str | Path,
    images: list[np.ndarray],
    imgsz: tuple[int, int],
    stride: int,
    embeddings: np.ndarray | None = None,
    exclude: Sequence[str] = SENSITIVE,
    method: str = "minmax",
    moving_average: bool = True,
) -> Path:
    """Write an int8 (QDQ, per-channel weights, uint8 activations) copy of an fp32 detector graph.

    Args:
        model: the fp32 ``.onnx`` from :func:`~ovdet.export.onnx.export_detector` (its metadata is kept).
        output: the int8 file to write.
        images: calibration images (BGR uint8), e.g. from :func:`calibration_images`.
        imgsz: (h, w) calibration size (images are letterboxed to exactly this).
        stride: the model's largest stride.
        embeddings: (K, D) the vocabulary fed while calibrating (dynamic-vocabulary graphs).
        exclude: convolutions whose node name contains one of these stay float
            (default :data:`SENSITIVE`).
        method: activation range calibration, ``"minmax"``, ``"percentile"`` or ``"entropy"``.
        moving_average: with ``"minmax"``, each activation's range is the mean over the images of
            their own min and max (onnxruntime's ``CalibMovingAverage`` with one collection pass)
            instead of the extremes over all images: 220/231 vs 209/231 boxes matched on the
            previous ovdet-demo (v2-s) (64 calibration images; with 32 it falls to 206-215/231, so give it >= 64).

    Raises:
        ImportError: onnxruntime is missing (the extra is named).
    """
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise ImportError('int8 quantization needs onnxruntime: pip install "ovdet[export]"') from e

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {sorted(methods)}")
    import onnx

    convs = [n.name for n in onnx.load(str(model), load_external_data=False).graph.node if n.op_type == "Conv"]
    keep_float = [name for name in convs if any(pat in name for pat in exclude)]
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="ovdet-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)

        def write(path: Path) -> None:
            quantize_static(
                str(prepared),
                str(path),
                _Reader(images, imgsz, stride, embeddings),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["Conv"],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=keep_float,
                extra_options={
                    "ActivationSymmetric": False,
                    "WeightSymmetric": True,
                    "CalibMovingAverage": moving_average and method == "minmax",
                },
            )

        atomic_write(output, write)
    return output
