"""A pure-Python/numpy CLIP BPE tokenizer for deployments without PyTorch.

:class:`CLIPTokenizer` gives the token ids that ``open_clip.tokenizer.SimpleTokenizer`` gives
with its default settings (``clean="lower"``, no reduction, no extra special tokens), from the
same BPE merges file, without importing torch or open_clip. Its only third-party imports are
numpy and ``regex``; ``ftfy`` is used when it is installed, as open_clip does (without it, text
that ``ftfy.fix_text`` would repair, such as mojibake or curly quotes, can tokenize differently).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import regex

__all__ = ["BPE_FILENAME", "CLIPTokenizer", "bytes_to_unicode", "clean_text"]

#: The name of CLIP's BPE merges file, as open_clip ships it.
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
#: The special tokens, appended to the vocabulary in this order (ids 49406 and 49407 for CLIP).
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
#: Merges CLIP uses: a 49152-entry vocabulary less the 256 byte symbols and the 2 special tokens
#: (the byte symbols appear twice, plain and word-final, so the vocabulary has 49408 entries).
_N_MERGES = 49152 - 256 - 2
_END_OF_WORD = "</w>"
#: Word-cache size limit, so arbitrary user text cannot grow it without bound.
_CACHE_LIMIT = 1 << 16
# Splits cleaned text into words: special tokens, English contractions, letter runs, single
# digits, runs of anything else but whitespace (CLIP's pattern, with its case-insensitive flag).
_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte → printable character map BPE works on.

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') map to
    themselves; the other 68 bytes (whitespace, control characters, ...) map to chr(256),
    chr(257), ... in byte order. The dict's order (printable bytes first, then the others) is the
    order of the first 256 vocabulary entries.

    Returns:
        256 entries, byte value → one-character string.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(256 + k) for k, b in enumerate(others)})
    return mapping


@lru_cache(maxsize=1)
def _fix_text() -> Callable[[str], str] | None:
    """``ftfy.fix_text`` when ftfy is installed, else None (imported on first use)."""
    try:
        import ftfy
    except ImportError:
        return None
    return ftfy.fix_text


def clean_text(text: str) -> str:
    """open_clip's default ("lower") text cleaning.

    ``ftfy.fix_text`` (when ftfy is installed), HTML entities unescaped twice, whitespace runs
    collapsed to one space and stripped, lower case.
    """
    fix = _fix_text()
    if fix is not None:
        text = fix(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """The merges CLIP uses: lines 1 .. 48894 of the gzipped merges file (line 0 is a header)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : _N_MERGES + 1]
    merges = []
    for number, line in enumerate(lines, start=2):
        parts = tuple(line.split())
        if len(parts) != 2:
            raise ValueError(f"{path}: line {number} is not a BPE merge (two symbols): {line!r}")
        merges.append(parts)
    return merges


class CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer: text → (N, context_length) int64 token ids.

    Matches ``open_clip.tokenizer.SimpleTokenizer(context_length=...)`` with its default settings.
    Special token strings in a text ("<start_of_text>", "<end_of_text>", in any case) are
    encoded as those tokens, as open_clip does.

    Args:
        bpe_path: CLIP's merges file (``bpe_simple_vocab_16e6.txt.gz``; see :meth:`from_open_clip`).
        context_length: columns of :meth:`__call__`'s output, start and end tokens included (>= 2).

    Attributes:
        sot_token: id of "<start_of_text>" (49406 for CLIP's file).
        eot_token: id of "<end_of_text>" (49407).
        vocab_size: number of token ids (49408).
        context_length: as given.
    """

    def __init__(self, bpe_path: str | Path, context_length: int = 77) -> None:
        if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
            raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        path = Path(bpe_path)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP BPE merges file not found: {path}")
        merges = _read_merges(path)
        byte_chars = list(bytes_to_unicode().values())
        vocab = [*byte_chars, *(c + _END_OF_WORD for c in byte_chars), *("".join(m) for m in merges), *SPECIAL_TOKENS]
        # dict(zip(...)): a repeated string keeps its last id, as in open_clip
        self._encoder: dict[str, int] = dict(zip(vocab, range(len(vocab))))
        self._ranks: dict[tuple[str, str], int] = dict(zip(merges, range(len(merges))))
        self._byte_chars: list[str] = [bytes_to_unicode()[b] for b in range(256)]
        # special tokens are words of their own: never split, never given "</w>"
        self._cache: dict[str, tuple[int, ...]] = {t: (self._encoder[t],) for t in SPECIAL_TOKENS}
        specials = "|".join(regex.escape(t) for t in SPECIAL_TOKENS)
        self._pattern = regex.compile(f"{specials}|{_WORD_PATTERN}", regex.IGNORECASE)
        self.bpe_path = path
        self.context_length = int(context_length)
        self.sot_token: int = self._encoder[SPECIAL_TOKENS[0]]
        self.eot_token: int = self._encoder[SPECIAL_TOKENS[1]]
        self.vocab_size: int = len(self._encoder)

    @classmethod
    def from_open_clip(cls, context_length: int = 77) -> CLIPTokenizer:
        """The tokenizer over the merges file inside the installed open_clip package.

        The package is located with ``importlib.util.find_spec``, not imported (open_clip imports
        torch).

        Raises:
            ModuleNotFoundError: open_clip is not installed.
            FileNotFoundError: the package has no merges file.
        """
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                f"open_clip is not installed, so its {BPE_FILENAME} cannot be found; install "
                "open_clip_torch or pass the file to CLIPTokenizer(bpe_path)",
                name="open_clip",
            )
        folders = list(spec.submodule_search_locations)
        for folder in folders:
            path = Path(folder) / BPE_FILENAME
            if path.is_file():
                return cls(path, context_length)
        raise FileNotFoundError(f"{BPE_FILENAME} not found in the open_clip package ({', '.join(folders)})")

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Token ids of one byte-encoded word: merge the best-ranked adjacent pair until none is left."""
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        ranks = self._ranks
        unranked = len(ranks)  # above every merge's rank
        symbols = [*word[:-1], word[-1] + _END_OF_WORD]
        while len(symbols) > 1:
            pair = min(zip(symbols, symbols[1:]), key=lambda p: ranks.get(p, unranked))
            if pair not in ranks:
                break
            first, second = pair
            merged = []
            i, n = 0, len(symbols)
            while i < n:  # every occurrence, left to right, non-overlapping
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = tuple(self._encoder[s] for s in symbols)
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE token ids of one text, without the start and end tokens.

        Args:
            text: any string; cleaned as open_clip cleans it (:func:`clean_text`).

        Returns:
            (T,) ids, each in [0, vocab_size).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        chars = self._byte_chars
        ids: list[int] = []
        for word in self._pattern.findall(clean_text(text)):
            ids.extend(self._bpe("".join([chars[b] for b in word.encode("utf-8")])))
        return ids

    def token_count(self, text: str) -> int:
        """Tokens ``text`` takes before truncation, start and end tokens included: ``len(encode(text)) + 2``."""
        return len(self.encode(text)) + 2

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids of a batch of texts, as CLIP text towers take them.

        Each row is ``[sot] + encode(text) + [eot]`` followed by zeros; a text with more than
        ``context_length`` tokens is truncated to ``context_length`` and its last id set to eot.

        Args:
            texts: N strings (a single str is taken as one text, as open_clip does).

        Returns:
            (N, context_length) int64 ids.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, Sequence):
            texts = list(texts)
        else:
            raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        length = self.context_length
        out = np.zeros((len(texts), length), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.sot_token, *self.encode(text), self.eot_token]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token
            out[i, : len(ids)] = ids
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.bpe_path)!r}, context_length={self.context_length})"
