"""The network itself: configs, shapes, fusion, text masking, forward contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ovdet.config import ConfigError, ModelConfig, NMSConfig, load_model_config, save_model_config
from ovdet.models.detector import OVDetector
from tests.helpers import CONFIGS, TINY, assert_close_scaled, calibrate, calibration_batch


def tiny(version: int = 2) -> OVDetector:
    torch.manual_seed(0)
    return calibrate(OVDetector(load_model_config(TINY, [f"version={version}"])))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("yolo-world-v*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_equal_the_scaling_rules(path: Path) -> None:
    version, scale = int(path.stem.split("-")[2][1]), path.stem.split("-")[3]
    assert load_model_config(path) == ModelConfig.scaled(version, scale)


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 3\n")
    with pytest.raises(ConfigError, match="version"):
        load_model_config(bad)
    bad.write_text("chanels: [1, 2]\n")
    with pytest.raises(ConfigError, match="chanels"):
        load_model_config(bad)
    bad.write_text("neck_heads: [3, 1, 2, 2]\n")
    with pytest.raises(ConfigError, match="neck_heads"):
        load_model_config(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_model_config(tmp_path / "nope.yaml")
    cfg = load_model_config(TINY, ["text.templates=['a photo of a {}']", "version=1"])
    assert cfg.text.templates == ("a photo of a {}",) and cfg.version == 1
    out = tmp_path / "round.yaml"
    save_model_config(cfg, out)
    assert load_model_config(out) == cfg


@pytest.mark.parametrize("version", [1, 2])
def test_forward_shapes_and_anchor_layout(version: int) -> None:
    model = tiny(version)
    x = torch.rand(2, 3, 96, 160)
    text = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    raw = model(x, text)
    a = (12 * 20) + (6 * 10) + (3 * 5)
    assert raw.box_logits.shape == (2, 64, a)
    assert raw.cls_logits.shape == (2, 5, a)
    assert raw.anchors.shape == (a, 2) and raw.strides.shape == (a, 1)
    assert raw.anchors[0].tolist() == [0.5, 0.5] and raw.anchors[12 * 20].tolist() == [0.5, 0.5]
    assert raw.strides[:, 0].unique().tolist() == [8.0, 16.0, 32.0]
    boxes, scores = model.decode(raw)
    assert boxes.shape == (2, a, 4) and scores.shape == (2, a, 5)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    # x2 >= x1 and every box contains its anchor centre (distances are non-negative)
    assert bool((boxes[..., 2:] >= boxes[..., :2]).all())
    centres = raw.anchors * raw.strides
    assert bool((boxes[..., :2] <= centres + 1e-4).all() and (boxes[..., 2:] >= centres - 1e-4).all())
    # shared (K, D) text equals the same text expanded per image
    raw_b = model(x, text.expand(2, -1, -1))
    assert torch.equal(raw.cls_logits, raw_b.cls_logits)


def test_forward_rejects_bad_inputs() -> None:
    model = tiny()
    text = torch.randn(3, 32)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 100, 96), text)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 96, 96), text)
    with pytest.raises(ValueError, match="text must be"):
        model(torch.rand(1, 3, 96, 96), torch.randn(3, 16))


@pytest.mark.parametrize("version", [1, 2])
def test_fused_equals_unfused(version: int, coco128_images: list[Path]) -> None:
    model = tiny(version)
    x = calibration_batch(coco128_images[:2], 256)
    text = torch.nn.functional.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        ref = model(x, text)
        model.fuse()
        assert model.is_fused
        out = model(x, text)
    assert_close_scaled(out.box_logits, ref.box_logits, rel=3e-5)  # folded weights are rounded anew
    assert_close_scaled(out.cls_logits, ref.cls_logits, rel=3e-5)


@pytest.mark.parametrize("version", [1, 2])
def test_text_mask_makes_padding_inert(version: int) -> None:
    """Padded (masked) texts must not change the logits of the real texts."""
    model = tiny(version)
    x = torch.rand(1, 3, 64, 64)
    real = torch.nn.functional.normalize(torch.randn(1, 3, 32), dim=-1)
    pad = torch.nn.functional.normalize(torch.randn(1, 2, 32), dim=-1) * 5
    mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        ref = model(x, real)
        out = model(x, torch.cat((real, pad), 1), mask)
        unmasked = model(x, torch.cat((real, pad), 1))
    if version == 2:  # v1's image-pooling attention mixes texts only through their own queries
        assert torch.allclose(ref.cls_logits, out.cls_logits[:, :3], atol=1e-5)
        assert not torch.allclose(ref.cls_logits, unmasked.cls_logits[:, :3], atol=1e-5)
    else:
        assert torch.allclose(ref.cls_logits, out.cls_logits[:, :3], atol=1e-5)


def test_postprocess_invariants() -> None:
    model = tiny()
    x = torch.rand(2, 3, 128, 128)
    text = torch.nn.functional.normalize(torch.randn(6, 32), dim=-1)
    with torch.no_grad():
        raw = model(x, text)
    for nms in (NMSConfig(conf=0.01, iou=0.5, max_det=50), NMSConfig(conf=0.01, iou=0.5, agnostic=True)):
        results = model.postprocess(raw, nms)
        assert len(results) == 2
        for boxes, scores, labels in results:
            assert 0 < len(scores) <= nms.max_det
            assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
            assert bool((scores[:-1] >= scores[1:]).all()) and bool((scores > nms.conf).all())
            assert int(labels.max()) < 6
            from torchvision.ops import box_iou

            iou = box_iou(boxes, boxes)
            same = labels[:, None] == labels[None] if not nms.agnostic else torch.ones_like(iou, dtype=torch.bool)
            off_diag = ~torch.eye(len(boxes), dtype=torch.bool)
            assert float((iou * (same & off_diag)).max()) <= nms.iou + 1e-6
    high = model.postprocess(raw, NMSConfig(conf=1.0))
    assert all(len(s) == 0 for _, s, _ in high)
    with pytest.raises(ValueError, match="conf"):
        NMSConfig(conf=1.5)
