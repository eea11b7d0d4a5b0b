"""The "approximate CLIP text" encoder (issue #31 item 3): MiniLM + an affine adapter into CLIP ViT-B/32.

The adapter in ``ovdet/text/approx_clip/`` is written by ``tools/fit_text_adapter.py --write``; these
tests refit it with that script on the real CLIP tables of ``$OVDET_DATA/clip-vit-b32-text`` and
check it against the held-out numbers in its provenance file.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from ovdet.config import TextConfig
from ovdet.text import build_text_encoder, text_encoder_id
from ovdet.text.adapter import ADAPTER_DIR, ADAPTER_FILE, PROVENANCE_FILE, ApproxCLIPTextEncoder
from tests.helpers import data_root, require_data

ROOT = Path(__file__).resolve().parents[1]
APPROX = TextConfig(family="approx_clip")


def _script() -> ModuleType:
    """``tools/fit_text_adapter.py`` as a module (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("fit_text_adapter", ROOT / "tools" / "fit_text_adapter.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tables() -> Path:
    return require_data(data_root() / "clip-vit-b32-text", "the CLIP ViT-B/32 text tables")


@pytest.fixture(scope="module")
def approx() -> ApproxCLIPTextEncoder:
    enc = build_text_encoder(APPROX)
    assert isinstance(enc, ApproxCLIPTextEncoder)
    return enc


def test_refit_reproduces_the_shipped_adapter_and_its_held_out_numbers(tables: Path) -> None:
    fit = _script()
    provenance = json.loads((ADAPTER_DIR / PROVENANCE_FILE).read_text(encoding="utf-8"))
    names = fit.load_names(tables)
    assert len(names.keys) == 1619
    template = provenance["minilm_prompt"]
    x = fit.encode_minilm(names.keys, template)  # (1619, 384)
    tr, te = fit.split(len(names.keys), fit.SEEDS[0])
    assert (len(tr), len(te)) == (1295, 324) and not set(tr) & set(te)
    lam, a = fit.ridge_inner_cv(x[tr], names.clip[tr], fit.SEEDS[0])["spread"]
    w, xm, ym = fit.fit_ridge_lambda(x[tr], names.clip[tr], lam)
    top1, top5, cos = fit.metrics(a * (x[te] - xm) @ w + ym, te, names.clip)
    recorded = next(r for r in provenance["held_out"] if r["seed"] == fit.SEEDS[0])
    assert abs(top5 - recorded["top5"]) <= 0.015 and abs(top1 - recorded["top1"]) <= 0.015
    assert abs(cos - recorded["mean_cos"]) <= 0.002
    assert top5 >= fit.SHIP_TOP5  # the bar
    assert cos >= provenance["held_out_floor_mean_vector_cos"][0]  # closer to the truth than a constant
    weight, bias, _, _ = fit.fit_all(names, template, x)  # what --write ships, refitted on all names
    from safetensors.numpy import load_file

    shipped = load_file(str(ADAPTER_DIR / ADAPTER_FILE))
    assert shipped["weight"].dtype == np.float16 and shipped["weight"].shape == (512, 384)
    np.testing.assert_allclose(shipped["weight"].astype(np.float32), weight, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(shipped["bias"].astype(np.float32), bias, atol=2e-3, rtol=2e-3)


def test_approx_encoder_is_512d_unit_norm_and_never_shares_clips_id(
    approx: ApproxCLIPTextEncoder, tables: Path
) -> None:
    emb = approx.encode(["dog", "traffic light", "a name in no table: zorbled widget"])  # (3, 512)
    assert emb.shape == (3, 512) and emb.dtype == torch.float32 and approx.dim == 512
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert approx.id.startswith("approx_clip:") and approx.id == text_encoder_id(APPROX)
    assert approx.id != text_encoder_id(TextConfig())  # the real open_clip ViT-B-32 openai id
    assert approx.encode([]).shape == (0, 512)
    # "dog" (a fitted coco name): closer to its real CLIP vector than to every other coco name's
    coco = np.load(tables / "coco.npy").astype(np.float32)
    coco = torch.from_numpy(coco / np.linalg.norm(coco, axis=1, keepdims=True))  # (80, 512)
    names = (tables / "coco.txt").read_text(encoding="utf-8").splitlines()
    assert int((emb[0] @ coco.T).argmax()) == names.index("dog")
    two = approx.encode(["dog"], templates=["{}", "a photo of a {}"])  # pooled in CLIP space
    assert two.shape == (1, 512) and abs(float(two.norm()) - 1) < 1e-5 and float(two[0] @ emb[0]) > 0.9


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        (TextConfig(family="approx_clip", model="ViT-L-14"), "text.model"),
        (TextConfig(family="approx_clip", pretrained="laion2b_s34b_b79k"), "text.pretrained"),
    ],
)
def test_approx_clip_only_approximates_vit_b32_openai(cfg: TextConfig, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        text_encoder_id(cfg)
