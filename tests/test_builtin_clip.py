"""Built-in CLIP ViT-B/32 embeddings of the built-in vocabularies (issue #31 item 1).

The shipped tables are compared with Detic's original ``.npy`` files in the shared data
(``OVDET_DATA/clip-vit-b32-text``, required), and the near-synonym cosines quoted in the issue
prove the space is the real CLIP one. No test here builds a CLIP encoder or touches the network.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import ovdet.api as api_mod
import ovdet.text.openclip as openclip_mod
from ovdet import Detector
from ovdet.config import TextConfig, load_model_config
from ovdet.text import EmbeddingCache, TextEncoderUnavailable, text_encoder_id
from ovdet.text.builtin import (
    BUILTIN_CLIP_TEMPLATES,
    CLIP_TABLES,
    OPENAI_VIT_B32_SHA256,
    builtin_clip_table,
    is_builtin_clip_space,
)
from ovdet.text.vocabulary import BUILTIN_VOCABULARIES, builtin_vocabulary
from tests.helpers import TINY, data_root, require_data

CLIP_A = TextConfig(model="ViT-B-32", pretrained="openai", templates=("a {}",))
MINILM = TextConfig(family="sentence_transformers", model="sentence-transformers/all-MiniLM-L6-v2", pretrained=None)


def _source(table: str) -> tuple[list[str], np.ndarray]:
    """Detic's names and (N, 512) float16 rows, as in the shared data."""
    folder = require_data(data_root() / "clip-vit-b32-text", "Detic's CLIP ViT-B/32 tables")
    names = (folder / f"{table}.txt").read_text(encoding="utf-8").splitlines()
    return names, np.load(folder / f"{table}.npy")  # allow_pickle defaults to False


def _unit(rows: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(rows.astype(np.float32))
    return torch.nn.functional.normalize(t, dim=-1)


def _detector(text: TextConfig, embed_dim: int = 512) -> Detector:
    """The tiny architecture with ``text`` as its encoder; an in-memory cache."""
    cfg = dataclasses.replace(load_model_config(TINY), embed_dim=embed_dim, text=text)
    det = Detector.from_config(cfg, device="cpu")
    det.cache = EmbeddingCache(None)
    return det


@pytest.fixture
def no_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building any text encoder is a test failure."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the text encoder must not be built")

    monkeypatch.setattr(api_mod, "build_text_encoder", refuse)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The realistic offline machine: no cached CLIP weights, no host reachable, no download."""
    import open_clip.pretrained

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the download must not be attempted")

    monkeypatch.setattr(openclip_mod, "_find_cached_pretrained", lambda pcfg, cache_dir: None)
    monkeypatch.setattr(openclip_mod, "can_reach", lambda url, timeout=3.0: False)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", no_download)


# --------------------------------------------------------------------------------- shipped data
@pytest.mark.parametrize("table", CLIP_TABLES)
def test_shipped_tables_equal_detic_sources(table: str) -> None:
    names, rows = _source(table)
    shipped_names, shipped = builtin_clip_table(table)
    assert shipped_names == names
    assert shipped.dtype == torch.float16 and tuple(shipped.shape) == rows.shape == (len(names), 512)
    assert np.array_equal(shipped.numpy(), rows)  # bit for bit: fp16 stored as fp16
    norms = np.linalg.norm(rows.astype(np.float32), axis=1)
    assert norms.min() > 7.5, "Detic's rows are not normalised (norms 8 to 12); the shipped ones must not be either"


def test_openimages_vocabulary_and_counts() -> None:
    assert BUILTIN_VOCABULARIES == ("coco", "lvis", "objects365", "openimages")
    counts = {v: len(builtin_vocabulary(v)) for v in BUILTIN_VOCABULARIES}
    # Detic's OpenImages list names Bench and Mouse twice: one text is one class, 498 remain.
    assert counts == {"coco": 80, "lvis": 1203, "objects365": 365, "openimages": 498}
    oi = builtin_vocabulary("openimages")
    assert len(set(oi)) == 498 and oi[:3] == ["Infant bed", "Rose", "Flag"] and "Raccoon" in oi


def test_openai_hash_is_open_clips() -> None:
    import open_clip

    assert OPENAI_VIT_B32_SHA256 in open_clip.get_pretrained_cfg("ViT-B-32", "openai")["url"]


# --------------------------------------------------------------------------------- which models
def test_the_one_rule_for_which_encoders_get_the_tables() -> None:
    h = OPENAI_VIT_B32_SHA256[:16]
    a = BUILTIN_CLIP_TEMPLATES
    assert a == ("a {}",)
    assert is_builtin_clip_space(text_encoder_id(CLIP_A), a)
    assert is_builtin_clip_space("open_clip:ViT-B-32-quickgelu:openai", a)
    assert is_builtin_clip_space(f"open_clip:ViT-B-32:file:{h}:quickgelu", a)  # OpenAI's own file
    assert is_builtin_clip_space(f"open_clip:ViT-B-32-quickgelu:file:{h}", a)
    for eid in (
        f"open_clip:ViT-B-32:file:{h}",  # OpenAI's weights run with GELU: another space
        "open_clip:ViT-B-32:file:0123456789abcdef:quickgelu",  # some other file
        "open_clip:ViT-B-32:laion2b_s34b_b79k",
        "open_clip:ViT-B-16:openai",
        text_encoder_id(dataclasses.replace(CLIP_A, pretrained=None)),  # random ViT-B-32 weights
        text_encoder_id(MINILM),
        text_encoder_id(load_model_config(TINY).text),  # the tiny random tower
    ):
        assert not is_builtin_clip_space(eid, a), eid
    # "{}" (YOLO-World's setting) is another prompt: other embeddings, never substituted.
    for templates in (("{}",), ("a {}", "a photo of a {}."), ("A {}",)):
        assert not is_builtin_clip_space(text_encoder_id(CLIP_A), templates), templates


@pytest.mark.parametrize(
    "text",
    [
        dataclasses.replace(CLIP_A, templates=("{}",)),
        dataclasses.replace(CLIP_A, pretrained=None),
        dataclasses.replace(CLIP_A, pretrained="laion2b_s34b_b79k"),
    ],
    ids=["openai-template-{}", "random-vit-b32", "laion"],
)
def test_other_512d_encoders_never_receive_them(text: TextConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(*args: object, **kwargs: object) -> None:
        raise TextEncoderUnavailable("no encoder on this test machine")

    monkeypatch.setattr(api_mod, "build_text_encoder", unavailable)
    det = _detector(text)
    with pytest.raises(TextEncoderUnavailable):
        det.set_classes("coco")
    assert len(det.cache) == 0 and det.names == []


def test_minilm_and_random_tower_encode_themselves() -> None:
    minilm = _detector(MINILM, embed_dim=384).set_classes(["person", "raccoon"])
    assert minilm.class_embeddings.shape == (2, 384)
    assert len(minilm.cache) == 2 and (text_encoder_id(MINILM), ("{}",), "raccoon") in minilm.cache
    tiny_text = load_model_config(TINY).text
    tiny = _detector(tiny_text, embed_dim=32).set_classes("coco")
    assert tiny.class_embeddings.shape == (80, 32) and len(tiny.cache) == 80
    assert (text_encoder_id(tiny_text), ("{}",), "person") in tiny.cache


# ------------------------------------------------------------------------------- set_classes offline
@pytest.fixture(scope="module")
def sources() -> dict[str, tuple[list[str], np.ndarray]]:
    return {t: _source(t) for t in CLIP_TABLES}


@pytest.mark.parametrize(
    ("vocabulary", "own"), [("coco", 80), ("lvis", 1093), ("objects365", 169), ("openimages", 234)]
)
def test_set_classes_builtin_uses_the_tables_without_an_encoder(
    vocabulary: str, own: int, sources: dict[str, tuple[list[str], np.ndarray]], no_encoder: None
) -> None:
    det = _detector(CLIP_A).set_classes(vocabulary)
    names = builtin_vocabulary(vocabulary)
    assert det.names == names
    emb = det.class_embeddings  # (K, 512)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(names)))
    # The documented rule, on Detic's own files: a name that is the same CLIP text (case and spaces
    # ignored) as a table name takes the first such row, tables in order; else a loose match (case,
    # spaces, "_", "-"), its own table's row but for four Objects365 names an earlier table spells so.
    first: dict[str, tuple[str, int]] = {}
    for table in CLIP_TABLES:
        for i, n in enumerate(sources[table][0]):
            first.setdefault(" ".join(n.lower().split()), (table, i))
    loose_elsewhere = {"Monitor": 697, "Hot-air balloon": 570, "Router": 894, "Tape Measure": 1061}
    lvis_names = sources["lvis"][0]
    assert [lvis_names[r] for r in loose_elsewhere.values()] == [
        "monitor_(computer_equipment) computer_monitor",
        "hot-air_balloon",
        "router_(computer_equipment)",
        "tape_measure",
    ]
    from_own = 0
    for i, name in enumerate(names):
        table, row = first.get(" ".join(name.lower().split()), (vocabulary, i))
        if vocabulary == "objects365" and name in loose_elsewhere:
            table, row = "lvis", loose_elsewhere[name]
        assert torch.equal(emb[i], _unit(sources[table][1][row : row + 1])[0]), (i, name, table, row)
        from_own += table == vocabulary
    assert from_own == own  # e.g. LVIS "air conditioner" is Objects365's "Air Conditioner", word for word
    assert len(det.cache) == len(names)


def test_tables_load_sealed(sealed: None, no_encoder: None) -> None:
    """With sockets and every unpickling entry point made to raise, a CLIP-space model still gets
    all four vocabularies from the shipped files."""
    det = _detector(CLIP_A)
    for vocabulary, k in (("coco", 80), ("lvis", 1203), ("objects365", 365), ("openimages", 498)):
        assert det.set_classes(vocabulary).class_embeddings.shape == (k, 512)


def test_single_names_resolve(no_encoder: None) -> None:
    det = _detector(CLIP_A)
    oi_names, oi = _source("openimages")
    coco_names, coco = _source("coco")
    lvis_names, lvis = _source("lvis")
    raccoon = _unit(oi[[oi_names.index("Raccoon")]])[0]
    emb = det.encode(["raccoon", "Raccoon", "person", " aerosol  can", "horned cow", "Bench"])
    torch.testing.assert_close(emb[0], raccoon, rtol=0, atol=0)
    torch.testing.assert_close(emb[1], raccoon, rtol=0, atol=0)
    torch.testing.assert_close(emb[2], _unit(coco[[coco_names.index("person")]])[0], rtol=0, atol=0)
    torch.testing.assert_close(emb[3], _unit(lvis[[lvis_names.index("aerosol_can")]])[0], rtol=0, atol=0)
    torch.testing.assert_close(emb[4], _unit(lvis[[lvis_names.index("bull")]])[0], rtol=0, atol=0)  # ovdet's name
    # "Bench" is in COCO, LVIS, Objects365 and twice in OpenImages: the first table, first row.
    torch.testing.assert_close(emb[5], _unit(coco[[coco_names.index("bench")]])[0], rtol=0, atol=0)
    # Keys are the exact texts (or, for loose spellings, the table's own spelling): never a false key.
    eid = text_encoder_id(CLIP_A)
    assert len(det.cache) == 6
    for text in ("raccoon", "Raccoon", "person", "aerosol_can", "bull", "Bench"):
        assert (eid, ("a {}",), text) in det.cache, text
    assert (eid, ("a {}",), " aerosol  can") not in det.cache


def test_near_synonyms_prove_the_real_clip_space(no_encoder: None) -> None:
    emb = _detector(CLIP_A).encode(["person", "Man", "cup", "mug", "couch", "sofa"])
    cos = [round(float(emb[i] @ emb[i + 1]), 2) for i in (0, 2, 4)]
    assert cos == [0.91, 0.93, 0.95]
    assert round(float(emb[0] @ emb[2]), 2) == 0.86  # person-cup: CLIP's text space is narrow, but ordered


def test_unknown_name_offline_names_the_nearest_and_the_fix(offline: None) -> None:
    det = _detector(CLIP_A)
    with pytest.raises(TextEncoderUnavailable) as info:
        det.set_classes(["person", "racoon", "red backpack"])
    msg = str(info.value)
    for part in (
        "'racoon'",
        "'red backpack'",
        "Raccoon",
        "backpack",
        "ovdet embed",
        "set_class_embeddings",
        "--embeddings",
        "offline",
    ):
        assert part in msg, part
    assert "'person'" not in msg.split("nearest")[0]  # the table answers person
    assert det.names == []


def test_other_template_offline_says_which_template_has_tables(offline: None) -> None:
    det = _detector(dataclasses.replace(CLIP_A, templates=("{}",)))
    with pytest.raises(TextEncoderUnavailable) as info:
        det.set_classes("coco")
    msg = str(info.value)
    assert "['a {}']" in msg and "text.templates" in msg
