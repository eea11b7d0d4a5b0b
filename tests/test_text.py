"""Text encoders, the embedding cache and embedding files (CPU, tiny random towers, no network)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import ovdet.text.openclip as text_mod
from ovdet.config import TextConfig
from ovdet.text import (
    EmbeddingCache,
    OpenCLIPTextEncoder,
    TextEncoder,
    TextEncoderUnavailable,
    build_text_encoder,
    load_embeddings,
    save_embeddings,
    text_encoder_id,
    validate_class_names,
    validate_templates,
)

TINY = dict(embed_dim=32, context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
NAMES = ["person", "red backpack", "dog", "person wearing a hat"]


def tiny_cfg(seed: int = 0, **kw) -> TextConfig:
    return TextConfig(custom=dict(TINY), seed=seed, **kw)


@pytest.fixture(scope="module")
def enc() -> OpenCLIPTextEncoder:
    return OpenCLIPTextEncoder.from_config(tiny_cfg())


class CountingEncoder:
    """Proxy recording every ``encode`` call; ``id`` can be overridden."""

    def __init__(self, inner: TextEncoder, id: str | None = None) -> None:
        self.inner = inner
        self.id = id or inner.id
        self.dim = inner.dim
        self.context_length = inner.context_length
        self.templates = inner.templates
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        self.calls.append(list(texts))
        return self.inner.encode(texts, templates)


def assert_unit_rows(e: torch.Tensor, k: int, d: int = 32) -> None:
    assert e.shape == (k, d)
    assert e.dtype == torch.float32
    assert e.device.type == "cpu"
    assert torch.isfinite(e).all()
    torch.testing.assert_close(e.norm(dim=1), torch.ones(k), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- encoder
def test_encode_shape_dtype_norm(enc: OpenCLIPTextEncoder) -> None:
    assert isinstance(enc, TextEncoder)
    assert (enc.dim, enc.context_length, enc.templates) == (32, 77, ("{}",))
    assert enc.id.startswith("open_clip:custom:")
    assert_unit_rows(enc.encode(NAMES), len(NAMES))
    assert enc.encode([]).shape == (0, 32)


def test_deterministic_and_global_rng_untouched() -> None:
    before = torch.random.get_rng_state()
    a = build_text_encoder(tiny_cfg(seed=3)).encode(NAMES)
    b = build_text_encoder(tiny_cfg(seed=3)).encode(NAMES)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, b)


def test_different_seeds_different_embeddings(enc: OpenCLIPTextEncoder) -> None:
    other = build_text_encoder(tiny_cfg(seed=1))
    assert other.id != enc.id
    diff = (other.encode(NAMES) - enc.encode(NAMES)).abs().max()
    assert diff > 1e-2


def test_distinct_texts_distinct_rows(enc: OpenCLIPTextEncoder) -> None:
    e = enc.encode(NAMES)
    cos = e @ e.T  # (K, K)
    off = cos[~torch.eye(len(NAMES), dtype=torch.bool)]
    assert off.max() < 1 - 1e-4
    # the same text twice gives the same row, independent of its batch neighbours
    e2 = enc.encode(["dog", "zebra", "dog"])
    torch.testing.assert_close(e2[0], e2[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(e2[0], e[2], atol=1e-6, rtol=0)


def test_batching_does_not_change_results(enc: OpenCLIPTextEncoder) -> None:
    small = OpenCLIPTextEncoder.from_config(tiny_cfg(), batch_size=3)
    names = [f"thing {i}" for i in range(8)]
    torch.testing.assert_close(small.encode(names), enc.encode(names), atol=1e-6, rtol=0)


def test_templates_and_their_average(enc: OpenCLIPTextEncoder) -> None:
    t1, t2 = "a photo of a {}", "a drawing of the {}."
    plain = enc.encode(NAMES)
    e1 = enc.encode(NAMES, templates=[t1])
    e2 = enc.encode(NAMES, templates=[t2])
    assert (e1 - plain).abs().max() > 1e-3
    assert (e2 - e1).abs().max() > 1e-3
    both = enc.encode(NAMES, templates=(t1, t2))
    assert_unit_rows(both, len(NAMES))
    torch.testing.assert_close(both, F.normalize((e1 + e2) / 2, dim=-1), atol=1e-6, rtol=0)
    # the encoder's own default templates come from the config
    enc2 = build_text_encoder(tiny_cfg(templates=(t1, t2)))
    assert enc2.templates == (t1, t2)
    torch.testing.assert_close(enc2.encode(NAMES), both, atol=1e-6, rtol=0)


@pytest.mark.parametrize("templates", [[], ["a photo"], ["{} and {}"], "a {}"])
def test_bad_templates(templates, enc: OpenCLIPTextEncoder) -> None:
    with pytest.raises((ValueError, TypeError), match="template"):
        enc.encode(["dog"], templates=templates)


def test_bad_template_in_config() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        build_text_encoder(tiny_cfg(templates=("photo",)))
    assert validate_templates(["a {}", "{}"]) == ("a {}", "{}")


def test_long_name_warns_and_truncates(enc: OpenCLIPTextEncoder) -> None:
    fits = " ".join(["a"] * 75)  # 75 BPE tokens + start + end = 77
    assert enc.token_count(fits) == 77
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode([fits])
    long1 = " ".join(["a"] * 90) + " cat"
    long2 = " ".join(["a"] * 90) + " dog"
    with pytest.warns(UserWarning, match=r"needs 93 tokens .* reads 77 .*truncated"):
        e = enc.encode([long1, long2])
    assert_unit_rows(e, 2)
    # both are cut before their last word, so they embed the same
    torch.testing.assert_close(e[0], e[1], atol=1e-6, rtol=0)
    # the template counts towards the limit
    with pytest.warns(UserWarning, match="truncated"):
        enc.encode([fits], templates=["a photo of a {}"])


def test_non_ascii_names(enc: OpenCLIPTextEncoder) -> None:
    names = ["café", "自転車", "🚲", "Straßenbahn", "кошка", "cafe"]
    e = enc.encode(names)
    assert_unit_rows(e, len(names))
    cos = e @ e.T
    assert cos[~torch.eye(len(names), dtype=torch.bool)].max() < 1 - 1e-4


@pytest.mark.parametrize(
    "custom, match",
    [
        (dict(TINY, vocab_size=1000), "49408"),
        ({k: v for k, v in TINY.items() if k != "heads"}, r"missing \['heads'\]"),
        (dict(TINY, dropout=1), r"unknown \['dropout'\]"),
        (dict(TINY, heads=3), "must divide"),
        (dict(TINY, width=0), "positive integer"),
    ],
)
def test_bad_custom_config(custom, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_text_encoder(TextConfig(custom=custom))


def test_encoder_ids() -> None:
    assert text_encoder_id(tiny_cfg(seed=0)) == text_encoder_id(TextConfig(custom=dict(reversed(TINY.items()))))
    assert text_encoder_id(tiny_cfg(seed=0)) != text_encoder_id(tiny_cfg(seed=1))
    assert text_encoder_id(tiny_cfg()) != text_encoder_id(TextConfig(custom=dict(TINY, layers=2)))
    assert text_encoder_id(TextConfig()) == "open_clip:ViT-B-32:openai"
    assert text_encoder_id(TextConfig(pretrained=None, seed=0)).startswith("open_clip:ViT-B-32:random:")


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "names, exc, match",
    [
        ([], ValueError, "no class names"),
        (["dog", "  "], ValueError, "index 1"),
        (["dog", ""], ValueError, "index 1"),
        (["dog", "cat", "dog", "cat", "cow"], ValueError, r"duplicate class names \['dog', 'cat'\]"),
        (["dog", 3], TypeError, "index 1 .*int"),
        (["dog", None], TypeError, "index 1"),
        ("dog", TypeError, "single string"),
    ],
)
def test_validate_class_names_errors(names, exc, match) -> None:
    with pytest.raises(exc, match=match):
        validate_class_names(names)


def test_validate_class_names_copies() -> None:
    src = ("dog", "Dog", "自転車")
    out = validate_class_names(src)
    assert out == list(src) and isinstance(out, list)


# --------------------------------------------------------------------------- cache
def test_cache_only_encodes_missing(enc: OpenCLIPTextEncoder) -> None:
    cache, counting = EmbeddingCache(), CountingEncoder(enc)
    first = cache.get_or_encode(counting, NAMES)
    assert counting.calls == [NAMES]
    assert len(cache) == len(NAMES) and (enc.id, ("{}",), "dog") in cache
    torch.testing.assert_close(first, enc.encode(NAMES), atol=0, rtol=0)

    again = cache.get_or_encode(counting, list(reversed(NAMES)))
    assert len(counting.calls) == 1
    assert torch.equal(again, first.flip(0))

    mixed = cache.get_or_encode(counting, ["dog", "zebra", "person", "zebra"])
    assert counting.calls[1:] == [["zebra"]]
    assert torch.equal(mixed[0], first[2]) and torch.equal(mixed[1], mixed[3])
    torch.testing.assert_close(mixed[1], enc.encode(["zebra"])[0], atol=1e-6, rtol=0)

    mixed[0].zero_()  # results are copies
    assert torch.equal(cache.get_or_encode(counting, ["dog"])[0], first[2])
    assert cache.get_or_encode(counting, []).shape == (0, 32)
    assert len(counting.calls) == 2


def test_cache_keys_on_encoder_and_templates(enc: OpenCLIPTextEncoder) -> None:
    cache = EmbeddingCache()
    a = CountingEncoder(enc)
    base = cache.get_or_encode(a, NAMES)
    # same weights under another id: must not reuse
    renamed = CountingEncoder(enc, id="open_clip:other")
    cache.get_or_encode(renamed, NAMES)
    assert renamed.calls == [NAMES]
    # different weights: different values
    other = CountingEncoder(build_text_encoder(tiny_cfg(seed=5)))
    e_other = cache.get_or_encode(other, NAMES)
    assert other.calls == [NAMES] and (e_other - base).abs().max() > 1e-2
    # different templates: encoded again, with those templates
    e_tpl = cache.get_or_encode(a, NAMES, ("a photo of a {}",))
    assert a.calls == [NAMES, NAMES]
    torch.testing.assert_close(e_tpl, enc.encode(NAMES, templates=["a photo of a {}"]), atol=0, rtol=0)
    assert (e_tpl - base).abs().max() > 1e-3
    assert len(cache) == 4 * len(NAMES)
    assert torch.equal(cache.get_or_encode(a, NAMES, ["{}"]), base) and len(a.calls) == 2


def test_cache_lookup_never_encodes(enc: OpenCLIPTextEncoder) -> None:
    cache = EmbeddingCache()
    assert cache.lookup(enc.id, ["dog"], ("{}",)) is None
    e = cache.get_or_encode(enc, ["dog", "cat"])
    assert torch.equal(cache.lookup(enc.id, ["cat", "dog"], ["{}"]), e.flip(0))
    assert cache.lookup(enc.id, ["cat", "cow"], ("{}",)) is None
    assert cache.lookup("open_clip:other", ["cat"], ("{}",)) is None
    assert cache.lookup(enc.id, ["cat"], ("a {}",)) is None
    assert cache.lookup(text_encoder_id(tiny_cfg()), ["cat"], ("{}",)) is not None


def test_cache_disk_round_trip(tmp_path: Path, enc: OpenCLIPTextEncoder) -> None:
    path = tmp_path / "sub" / "cache.safetensors"
    cache = EmbeddingCache(path)
    assert cache.load() == 0  # missing file: empty, no error
    names = NAMES + ["自転車", "🚲"]
    e = cache.get_or_encode(enc, names)
    e_tpl = cache.get_or_encode(enc, ["dog"], ("a {}", "the {}"))
    assert cache.save() == path and path.is_file()
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp files left

    assert EmbeddingCache(path).load() == len(names) + 1
    fresh = EmbeddingCache(path)  # read lazily, on first use
    counting = CountingEncoder(enc)
    assert torch.equal(fresh.get_or_encode(counting, names), e)
    assert torch.equal(fresh.get_or_encode(counting, ["dog"], ("a {}", "the {}")), e_tpl)
    assert counting.calls == []

    # the file is inspectable: readable keys in the metadata
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = json.loads(f.metadata()["keys"])
    assert [enc.id, ["{}"], "自転車"] in keys.values()


def test_cache_save_keeps_other_writers_entries(tmp_path: Path, enc: OpenCLIPTextEncoder) -> None:
    path = tmp_path / "cache.safetensors"
    a, b = EmbeddingCache(path), EmbeddingCache(path)
    b.get_or_encode(enc, ["cat"])  # b reads the (still missing) file now
    a.get_or_encode(enc, ["dog"])
    a.save()
    b.save()  # b never saw a's entry, but it survives
    assert "dog" not in [k[2] for k in b._entries]
    merged = EmbeddingCache(path)
    assert merged.load() == 2


def test_cache_corrupt_file_warns_and_recovers(tmp_path: Path, enc: OpenCLIPTextEncoder) -> None:
    path = tmp_path / "cache.safetensors"
    path.write_bytes(b"\x00garbage, not safetensors" * 10)
    cache = EmbeddingCache(path)
    with pytest.warns(UserWarning, match=f"embedding cache {path}.*unreadable"):
        cache.get_or_encode(enc, ["dog"])  # first use reads the file
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.load() == 0
    assert len(cache) == 1  # in-memory entries survive
    e = cache.get_or_encode(enc, ["cat"])
    cache.save()
    fresh = EmbeddingCache(path)
    assert fresh.load() == 2
    assert torch.equal(fresh.lookup(enc.id, ["cat"], ("{}",)), e)


def test_cache_inconsistent_file_is_rejected(tmp_path: Path) -> None:
    # a valid safetensors file whose key metadata does not match the tensor name
    path = tmp_path / "cache.safetensors"
    keys = {"0" * 64: ["enc", ["{}"], "dog"]}
    save_file(
        {"0" * 64: torch.ones(4)},
        str(path),
        metadata={"format": "ovdet-embedding-cache", "version": "1", "keys": json.dumps(keys)},
    )
    cache = EmbeddingCache(path)
    with pytest.warns(UserWarning, match="does not match its key"):
        assert cache.load() == 0
    assert len(cache) == 0


def test_cache_without_path_cannot_save() -> None:
    with pytest.raises(ValueError, match="no path"):
        EmbeddingCache().save()


# --------------------------------------------------------------------------- embedding files
def test_embeddings_file_round_trip(tmp_path: Path, enc: OpenCLIPTextEncoder) -> None:
    names = ["dog", "自転車", "person wearing a hat"]
    e = enc.encode(names, templates=["a {}"])
    path = save_embeddings(tmp_path / "emb.safetensors", names, e, enc.id, ["a {}"])
    names2, e2, meta = load_embeddings(path)
    assert names2 == names and torch.equal(e2, e)
    assert meta["encoder_id"] == enc.id and meta["templates"] == ("a {}",)


def test_embeddings_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_embeddings(missing)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        load_embeddings(corrupt)
    rows = tmp_path / "rows.safetensors"
    save_file({"embeddings": torch.ones(2, 4)}, str(rows), metadata={"names": json.dumps(["a", "b", "c"])})
    with pytest.raises(ValueError, match=r"rows.safetensors: 3 names but 2 embedding rows"):
        load_embeddings(rows)
    nonames = tmp_path / "nonames.safetensors"
    save_file({"embeddings": torch.ones(2, 4)}, str(nonames))
    with pytest.raises(ValueError, match="nonames.safetensors: no 'names'"):
        load_embeddings(nonames)
    dup = tmp_path / "dup.safetensors"
    save_file({"embeddings": torch.ones(2, 4)}, str(dup), metadata={"names": json.dumps(["a", "a"])})
    with pytest.raises(ValueError, match="dup.safetensors.*duplicate"):
        load_embeddings(dup)
    with pytest.raises(ValueError, match=r"K = 3 names"):
        save_embeddings(tmp_path / "x.safetensors", ["a", "b", "c"], torch.ones(2, 4), "enc", ["{}"])
    with pytest.raises(ValueError, match="NaN"):
        save_embeddings(tmp_path / "x.safetensors", ["a"], torch.full((1, 4), float("nan")), "enc", ["{}"])
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------- pretrained weights
def _no_download(*args, **kwargs):  # pragma: no cover - called only on failure
    raise AssertionError("the download must not be attempted")


def test_offline_fails_fast_with_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.pretrained

    monkeypatch.setattr(text_mod, "_find_cached_pretrained", lambda pcfg, cache_dir: None)
    monkeypatch.setattr(text_mod, "can_reach", lambda url, timeout=3.0: False)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", _no_download)
    with pytest.raises(TextEncoderUnavailable) as info:
        build_text_encoder(TextConfig(model="ViT-B-32", pretrained="openai"))
    msg = str(info.value)
    for part in (
        "'ViT-B-32'",
        "pretrained='openai'",
        "offline",
        "local path",
        "--text-weights",
        "ovdet embed",
        "set_class_embeddings",
        "timm/vit_base_patch32_clip_224.openai",
        "'ViT-B-32-quickgelu'",
    ):
        assert part in msg, part
    assert isinstance(info.value, RuntimeError)


def test_failed_download_becomes_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.pretrained

    def fail(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(text_mod, "_find_cached_pretrained", lambda pcfg, cache_dir: None)
    monkeypatch.setattr(text_mod, "can_reach", lambda url, timeout=3.0: True)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", fail)
    with pytest.raises(TextEncoderUnavailable, match="Name or service not known") as info:
        build_text_encoder(TextConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert isinstance(info.value.__cause__, OSError)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in str(info.value)


def test_unknown_model_or_tag() -> None:
    with pytest.raises(ValueError, match="known tags: .*openai"):
        build_text_encoder(TextConfig(model="ViT-B-32", pretrained="no-such-tag"))
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Nope'"):
        build_text_encoder(TextConfig(model="ViT-Nope"))


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory: pytest.TempPathFactory):
    """A random full open_clip ViT-S-32-alt (smallest built-in text tower) and its checkpoints."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-S-32-alt").eval()
    d = tmp_path_factory.mktemp("clip")
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    full = d / "full.safetensors"
    save_file(sd, str(full))
    text_only = d / "text_only.pt"  # a torch.save file, read with weights_only=True
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("visual.")}}, text_only)
    return model, open_clip.get_tokenizer("ViT-S-32-alt"), full, text_only


def test_local_checkpoint_matches_open_clip(small_clip) -> None:
    model, tokenizer, full, text_only = small_clip
    texts = ["a dog", "red backpack", "自転車"]
    with torch.no_grad():
        ref = model.encode_text(tokenizer(texts), normalize=True)  # (3, 256)
    for path in (full, text_only):
        cfg = TextConfig(model="ViT-S-32-alt", pretrained=str(path))
        enc = build_text_encoder(cfg)
        assert enc.id == text_encoder_id(cfg) and enc.id.startswith("open_clip:ViT-S-32-alt:file:")
        assert not hasattr(enc._tower, "visual")
        torch.testing.assert_close(enc.encode(texts), ref, atol=1e-5, rtol=0)
    assert text_encoder_id(TextConfig(model="ViT-S-32-alt", pretrained=str(full))) != text_encoder_id(
        TextConfig(model="ViT-S-32-alt", pretrained=str(text_only))
    )


def test_bad_local_checkpoints(tmp_path: Path, enc: OpenCLIPTextEncoder) -> None:
    wrong = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in enc._tower.state_dict().items()}, str(wrong))
    with pytest.raises(ValueError, match="tiny.safetensors does not fit the text tower of open_clip model"):
        build_text_encoder(TextConfig(model="ViT-S-32-alt", pretrained=str(wrong)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*junk.pt"):
        build_text_encoder(TextConfig(model="ViT-S-32-alt", pretrained=str(junk)))


def test_torchscript_checkpoint_is_read_without_pickle(tmp_path: Path) -> None:
    # OpenAI's original CLIP files are TorchScript archives, which torch.load(weights_only=True) refuses
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        lin = torch.nn.Linear(3, 2)
        torch.jit.save(torch.jit.script(lin), str(tmp_path / "ts.pt"))
    torch.save(lin.state_dict(), tmp_path / "plain.pt")
    for name in ("ts.pt", "plain.pt"):
        sd, is_openai = text_mod._read_state_dict(str(tmp_path / name))
        assert sorted(sd) == ["bias", "weight"] and not is_openai
        assert torch.equal(sd["weight"], lin.weight.detach())


def test_random_named_model_is_deterministic() -> None:
    cfg = TextConfig(model="ViT-S-32-alt", pretrained=None, seed=7)
    before = torch.random.get_rng_state()
    a, b = build_text_encoder(cfg), build_text_encoder(cfg)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert a.id == b.id == text_encoder_id(cfg) and ":random:" in a.id
    assert a.dim == 256
    assert torch.equal(a.encode(["dog", "cat"]), b.encode(["dog", "cat"]))


def test_select_embeddings_matches_case_and_spacing_once_and_unambiguously() -> None:
    """A dataset's "raccoon" finds an embeddings table's "Raccoon" (issue #30, item 4), with a warning;
    a key two rows share is never guessed."""

    from ovdet.text.vocabulary import select_embeddings

    emb = torch.arange(12.0).view(4, 3)
    own = ["Raccoon", "traffic_light", "Dog", "dog "]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = select_embeddings(["raccoon", "Traffic Light"], None, own, emb)
    torch.testing.assert_close(got, emb[[0, 1]])
    assert len(caught) == 1 and "'raccoon' ← 'Raccoon'" in str(caught[0].message)
    with pytest.raises(KeyError, match="'dog'"):  # "Dog" and "dog " share a key: ambiguous
        select_embeddings(["dog"], None, own, emb)
    torch.testing.assert_close(select_embeddings(["Dog"], None, own, emb), emb[[2]])  # exact wins
