"""The torch-free CLIP tokenizer (ovdet.deploy.tokenizer) against open_clip's SimpleTokenizer: exact ids."""

from __future__ import annotations

import functools
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from open_clip.tokenizer import SimpleTokenizer

import ovdet.deploy.tokenizer as tok_mod
from ovdet.deploy.tokenizer import CLIPTokenizer
from tests.helpers import data_root, require_data

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "ovdet" / "text" / "vocab"

HARD = [
    "café au lait",
    "naïve",
    "日本語のテキスト",
    "🚗 car",
    "a &amp; b",
    "&amp;amp; twice &lt;b&gt;",
    "the dog's ball",
    "I'll",
    "don't",
    "THE DOG'S BALL, WE'RE HERE",
    "3d printer 2024",
    "a.b,c!?",
    "  two   spaces\n\tnewline ",
    "UPPER Case MiXeD",
    "",
    "   ",
    "Straße İstanbul ǅ",
    "mojibake cafÃ©",
    "curly ‘quotes’ and “double”",
    "a <start_of_text> b <END_OF_TEXT>c",
    "under_score snake-case/slash (paren) #hash",
    "non\u00a0breaking\u200bzero width",
    "tab\x00null\x7fdel",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "ﬁne 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ①②③ ٣٤٥",
]
LONG = "a photo of a very large red double decker bus parked next to a small yellow taxi " * 8


@functools.cache
def ours(context_length: int = 77) -> CLIPTokenizer:
    return CLIPTokenizer.from_open_clip(context_length=context_length)


@functools.cache
def reference(context_length: int = 77) -> SimpleTokenizer:
    return SimpleTokenizer(context_length=context_length)


def assert_same_ids(texts: list[str], context_length: int = 77) -> np.ndarray:
    """Our (N, context_length) ids equal open_clip's exactly; returns ours."""
    got = ours(context_length)(texts)
    want = reference(context_length)(texts).numpy()
    assert got.dtype == np.int64 and got.shape == (len(texts), context_length)
    bad = [t for t, a, b in zip(texts, got, want) if not np.array_equal(a, b)]
    assert not bad, f"{len(bad)} texts tokenize differently, e.g. {bad[:3]!r}"
    assert np.array_equal(got, want)
    return got


def vocab_names(name: str) -> list[str]:
    return [line.strip() for line in (VOCAB / f"{name}.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ parity
def test_coco128_names() -> None:
    cfg = yaml.safe_load(require_data(data_root() / "coco128" / "coco128.yaml", "coco128.yaml").read_text())
    names = [cfg["names"][i] for i in sorted(cfg["names"])]
    assert len(names) == 80
    assert_same_ids(names)
    assert_same_ids([f"a photo of a {n}." for n in names])


@pytest.mark.parametrize("vocab", ["coco", "lvis", "objects365"])
def test_bundled_vocabularies(vocab: str) -> None:
    names = vocab_names(vocab)
    assert len(names) in (80, 1203, 365)
    assert_same_ids(names)


@pytest.mark.parametrize("text", HARD)
def test_hard_cases(text: str) -> None:
    assert_same_ids([text])
    assert ours().encode(text) == reference().encode(text)


def test_batch_of_hard_cases_and_single_string() -> None:
    assert_same_ids(HARD)
    assert np.array_equal(ours()("a dog"), reference()("a dog").numpy())  # a str is one text, as in open_clip
    assert ours()([]).shape == (0, 77)


def test_special_token_strings_are_special_tokens() -> None:
    tok = ours()
    assert (tok.sot_token, tok.eot_token, tok.vocab_size) == (49406, 49407, 49408)
    assert tok.encode("<start_of_text>x") == [tok.sot_token, *tok.encode("x")]


@pytest.mark.parametrize("context_length", [77, 16, 2])
def test_truncation(context_length: int) -> None:
    got = assert_same_ids([LONG, "cat " * (context_length - 2), "cat " * (context_length - 1), "dog"], context_length)
    assert got[0, -1] == ours().eot_token and got[0, 0] == ours().sot_token
    assert ours(context_length).token_count(LONG) > context_length
    # exactly context_length tokens: kept whole; one more: truncated with eot last
    assert got[1, -1] == got[2, -1] == ours().eot_token


def test_random_strings() -> None:
    rng = random.Random(0)
    pieces = list("abcxyzABCXYZ0189 \t\n.,!?'\"&;#<>_-/()") + [
        "é",
        "ï",
        "ß",
        "İ",
        "日",
        "🚗",
        "&amp;",
        "&lt;",
        "<start_of_text>",
        "<END_OF_TEXT>",
        "\u00a0",
        "’",
        "Ã©",
        "ﬁ",
        "the ",
        "photo ",
    ]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(500)]
    assert_same_ids(texts, 32)


def test_token_count() -> None:
    tok = ours()
    for text in [*HARD, LONG, *vocab_names("coco")]:
        ids = tok.encode(text)
        assert tok.token_count(text) == len(ids) + 2
        if len(ids) + 2 <= tok.context_length:
            assert int((tok([text])[0] != 0).sum()) == len(ids) + 2


# ------------------------------------------------------------------------------------ errors
def test_argument_errors(tmp_path: Path) -> None:
    bpe = ours().bpe_path
    for bad in (1, 0, -5):
        with pytest.raises(ValueError, match="context_length"):
            CLIPTokenizer(bpe, context_length=bad)
    with pytest.raises(TypeError, match="context_length"):
        CLIPTokenizer(bpe, context_length=7.5)
    missing = tmp_path / "no_such_vocab.txt.gz"
    with pytest.raises(FileNotFoundError, match="no_such_vocab"):
        CLIPTokenizer(missing)
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        ours()(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        ours()([None])
    with pytest.raises(TypeError, match="text must be a str"):
        ours().encode(b"bytes")
    with pytest.raises(TypeError):
        ours().token_count(None)


def test_from_open_clip_without_open_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tok_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="open_clip is not installed"):
        CLIPTokenizer.from_open_clip()


# ----------------------------------------------------------------------------- without torch
_BLOCKED_SCRIPT = """
import json, sys

BLOCKED = set(sys.argv[1].split(","))


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, Block())
from ovdet.deploy.tokenizer import CLIPTokenizer

bpe = sys.argv[2]
tok = CLIPTokenizer.from_open_clip(16) if bpe == "-" else CLIPTokenizer(bpe, 16)
ids = tok(json.loads(sys.argv[3])).tolist()
imported = {"torch", "open_clip"} & set(sys.modules)
assert not imported, sorted(imported)
print(json.dumps(ids))
"""


@pytest.mark.parametrize(
    ("blocked", "use_path"),
    [("torch,open_clip,ftfy", True), ("torch", False)],
    ids=["explicit-path-no-ftfy", "from-open-clip-not-imported"],
)
def test_import_without_torch(blocked: str, use_path: bool) -> None:
    # texts ftfy leaves unchanged, so blocking it (the fallback path) changes nothing
    texts = ["a photo of a red backpack", "café au lait &amp; don't", LONG]
    bpe = str(ours().bpe_path) if use_path else "-"
    cmd = [sys.executable, "-c", textwrap.dedent(_BLOCKED_SCRIPT), blocked, bpe, json.dumps(texts)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == reference(16)(texts).tolist()
