"""The phrases of a caption that grounding looks for, each with its exact character spans.

Four ways to get them (:func:`extract_phrases` picks one):

1. **Noun phrases** (GLIP's default, :func:`noun_phrases`): TextBlob's Brill tagger (the *pattern*
   tagger, whose lexicon ships in the wheel: offline, nothing downloaded) tags the caption, each
   token is found again in the ORIGINAL caption (searching forward from the previous token's end),
   and GLIP's grammar ``NP: {<DT>?<JJ.*>*<NN.*>+}`` chunks the tags: an optional determiner, any
   adjectives, one or more nouns. A phrase's text is the caption between its first and last token,
   exactly (inner whitespace as written). Before chunking, three repairs of the tagger's tokens:

   * clitics: the tagger splits ``girl's`` into ``girl``, ``'``, ``s`` (and ``can't`` into ``ca``,
     ``n``, ``'``, ``t``); a glued apostrophe and its clitic become one token (``'s`` tagged POS,
     ``n't`` RB, ``'re``/``'ve``/``'m`` VBP, ``'ll``/``'d`` MD), and a word-internal apostrophe
     joins its word (``O'Neil``);
   * a token without a letter or digit (a quote, a dash) is never a determiner, adjective or noun
     (the tagger calls ``’`` a noun);
   * a token the tagger rewrote (``( ! )`` comes back as ``(!)``) has no place in the caption: it
     is dropped and ends any phrase; so does a line break between two tokens.

2. **Category lists** (Grounding DINO's prompt form, :func:`category_phrases`): ``"person. dog.
   red backpack."`` or ``"person . dog ."``. A caption is a category list when its separators (a
   ``.`` followed by whitespace or the end of the caption, and not closing a dotted abbreviation
   such as ``U.S.``, so ``3.5`` and ``the U.S. flag`` do not split)
   cut it into at least :data:`MIN_CATEGORIES` non-empty segments, each of at most
   :data:`MAX_CATEGORY_WORDS` words, none holding ``, ; : ! ?`` and none reading as a clause (a
   noun or pronoun followed by a finite verb, VBZ/VBD/VBP, by the tagger: ``"A man sits. A dog
   runs."`` is prose). Each segment, stripped of surrounding whitespace and periods, is one phrase.
   Every name of the COCO, LVIS and Objects365 vocabularies passes (``tests/test_grounding_phrases.py``).

3. **Given phrases** (:func:`locate_phrases`): strings found in the caption in the order given,
   each searched from the end of the previous one (exact, case-sensitive substrings).

4. **Given spans** (:func:`phrases_from_spans`): ``(start, end)`` character offsets, checked.

A phrase that occurs twice (``"a dog and a dog"``) gives two phrases, each with its own span.

Known limits of the tagger (English only; it is a lexicon plus rules): a digit may be tagged as a
preposition (``"with 2 balls"``), a word it does not know that ends in ``-ed``/``-ing`` may be
tagged as a verb and so end a phrase, and ``rock 'n' roll`` splits. Numbers (CD) are not part of
GLIP's grammar, so ``"two dogs"`` gives ``"dogs"``. Pass ``phrases=`` or ``spans=`` where the
chunker is wrong.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_CATEGORY_WORDS",
    "MIN_CATEGORIES",
    "Phrase",
    "Token",
    "category_phrases",
    "check_caption",
    "extract_phrases",
    "locate_phrases",
    "noun_phrases",
    "phrases_from_spans",
    "tag_caption",
]

#: A category-list segment has at most this many words (LVIS's and Objects365's names have at most 4).
MAX_CATEGORY_WORDS = 4
#: A category list has at least this many segments (one short sentence is left to the chunker).
MIN_CATEGORIES = 2

Span = tuple[int, int]

_APOSTROPHES = frozenset({"'", "\u2019"})
#: The tag a glued clitic gets (Penn tags); ``t`` is the end of ``n't``.
_CLITICS = {"s": "POS", "t": "RB", "re": "VBP", "ve": "VBP", "m": "VBP", "ll": "MD", "d": "MD"}
#: A period that ends a segment of a category list: followed by whitespace or the end, and not the
#: last period of a dotted abbreviation (``U.S.``, ``p.m.``).
_SEPARATOR = re.compile(r"(?<!\.[^\W\d_])\.(?=\s|$)")
_CATEGORY_PUNCTUATION = frozenset(",;:!?")
_FINITE_VERBS = frozenset({"VBZ", "VBD", "VBP"})


@dataclass(frozen=True)
class Token:
    """One tagged token of a caption.

    Attributes:
        text: ``caption[start:end]``, exactly.
        start, end: character offsets into the caption (``end`` exclusive).
        tag: its Penn Treebank part-of-speech tag (``NN``, ``JJ``, ``DT``, …).
    """

    text: str
    start: int
    end: int
    tag: str

    @property
    def span(self) -> Span:
        """``(start, end)``."""
        return (self.start, self.end)


@dataclass(frozen=True)
class Phrase:
    """A phrase of a caption.

    Attributes:
        text: the phrase as written in the caption: ``caption[start:end]`` of its span (with several
            spans, their texts joined by one space).
        spans: its ``(start, end)`` character spans into the caption, in order; one normally.
        head: its head noun (the last noun of the phrase, with its own span), for the head-noun
            fallback of :func:`ovdet.grounding.ground`; None when the phrase holds no noun.
    """

    text: str
    spans: tuple[Span, ...]
    head: Token | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"Phrase.text must be a non-empty string, got {self.text!r}")
        if not self.spans:
            raise ValueError(f"Phrase {self.text!r} has no span")
        for start, end in self.spans:
            if not 0 <= start < end:
                raise ValueError(f"Phrase {self.text!r}: span {(start, end)} must have 0 <= start < end")


def check_caption(caption: Any) -> str:
    """``caption`` as a string (UTF-8 bytes are decoded), checked.

    Raises:
        TypeError: neither ``str`` nor ``bytes``.
        ValueError: bytes that are not UTF-8 (the first bad byte is named), or an empty or
            whitespace-only caption.
    """
    if isinstance(caption, (bytes, bytearray)):
        try:
            caption = bytes(caption).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"the caption bytes are not UTF-8: byte {e.object[e.start : e.start + 1]!r} at offset {e.start} "
                f"({e.reason}); decode them yourself and pass a str"
            ) from None
    if not isinstance(caption, str):
        raise TypeError(f"the caption must be a str, got {type(caption).__name__} ({caption!r})")
    if not caption.strip():
        raise ValueError(f"the caption is empty or whitespace only ({caption!r}); it needs a phrase to ground")
    return caption


@functools.lru_cache(maxsize=1)
def _tagger() -> Any:
    """TextBlob's pattern tagger, built once per process (its lexicon is read on first use)."""
    from textblob.en.taggers import PatternTagger

    return PatternTagger()


def tag_caption(caption: str | bytes) -> list[Token]:
    """The caption's tokens with their tags and exact spans (see the module docstring's repairs).

    Tokens the tagger rewrote (so that they are not in the caption) are left out.

    Raises:
        TypeError / ValueError: see :func:`check_caption`.
    """
    return [t for t in _tokens(check_caption(caption)) if t is not None]


def _tokens(caption: str) -> list[Token | None]:
    """Tagged tokens in order; None marks a token that could not be placed or a line break (either
    ends a phrase)."""
    out: list[Token | None] = []
    pos = 0
    for word, tag in _tagger().tag(caption):
        start = caption.find(word, pos)
        # A gap holding a letter or digit means the token was rewritten and matched further on.
        if start < 0 or any(c.isalnum() for c in caption[pos:start]):
            out.append(None)
            continue
        if "\n" in caption[pos:start] and out:
            out.append(None)
        out.append(Token(word, start, start + len(word), tag))
        pos = start + len(word)
    return _symbols_are_not_words(_join_clitics(caption, out))


def _glued(a: Token | None, b: Token | None) -> bool:
    return a is not None and b is not None and a.end == b.start


def _join_clitics(caption: str, tokens: list[Token | None]) -> list[Token | None]:
    """Apostrophe repairs: ``girl`` ``'`` ``s`` → ``girl`` ``'s``; ``ca`` ``n`` ``'`` ``t`` → ``ca``
    ``n't``; ``O`` ``'`` ``Neil`` → ``O'Neil``."""
    out: list[Token | None] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        prev = out[-1] if out else None
        if t is not None and t.text in _APOSTROPHES and _glued(prev, t) and _glued(t, nxt) and prev is not None:
            assert nxt is not None
            clitic = _CLITICS.get(nxt.text.lower())
            if clitic == "RB" and prev.text.lower() == "n" and _glued(out[-2] if len(out) > 1 else None, prev):
                out.pop()  # "n" + "'" + "t": the negation
                out.append(Token(caption[prev.start : nxt.end], prev.start, nxt.end, "RB"))
            elif clitic is not None and clitic != "RB":
                out.append(Token(caption[t.start : nxt.end], t.start, nxt.end, clitic))
            else:  # a word-internal apostrophe: one word, tagged as its last part
                out.pop()
                out.append(Token(caption[prev.start : nxt.end], prev.start, nxt.end, nxt.tag))
            i += 2
            continue
        out.append(t)
        i += 1
    return out


def _symbols_are_not_words(tokens: list[Token | None]) -> list[Token | None]:
    """A token with no letter or digit is never a determiner, adjective or noun (tagged SYM instead)."""
    return [
        Token(t.text, t.start, t.end, "SYM")
        if t is not None and not any(c.isalnum() for c in t.text) and _chunk_role(t.tag) is not None
        else t
        for t in tokens
    ]


def _chunk_role(tag: str) -> str | None:
    """The token's part in GLIP's grammar ``<DT>?<JJ.*>*<NN.*>+``: ``"DT"``, ``"JJ"``, ``"NN"`` or None."""
    if tag == "DT":
        return "DT"
    if tag.startswith("JJ"):
        return "JJ"
    if tag.startswith("NN"):
        return "NN"
    return None


def _head(tokens: Sequence[Token | None], span: Span) -> Token | None:
    """The last noun token lying inside ``span``, or None."""
    nouns = [t for t in tokens if t is not None and t.tag.startswith("NN") and span[0] <= t.start and t.end <= span[1]]
    return nouns[-1] if nouns else None


def noun_phrases(caption: str | bytes) -> list[Phrase]:
    """The noun phrases of GLIP's grammar ``NP: {<DT>?<JJ.*>*<NN.*>+}``, in caption order.

    The chunker matches left to right and takes the longest match at each place (as
    ``nltk.RegexpParser`` with that grammar does); a repeated phrase is kept each time.

    Returns:
        One :class:`Phrase` per chunk (one span each, ``head`` its last noun); empty when the
        caption has none.

    Raises:
        TypeError / ValueError: see :func:`check_caption`.
    """
    caption = check_caption(caption)
    tokens = _tokens(caption)
    roles = [None if t is None else _chunk_role(t.tag) for t in tokens]
    phrases: list[Phrase] = []
    i = 0
    while i < len(tokens):
        j = i + (roles[i] == "DT")
        while j < len(tokens) and roles[j] == "JJ":
            j += 1
        k = j
        while k < len(tokens) and roles[k] == "NN":
            k += 1
        if k == j:  # no noun: no chunk starts here (backtracking cannot help, see the test against nltk)
            i += 1
            continue
        first, last = tokens[i], tokens[k - 1]
        assert first is not None and last is not None
        span = (first.start, last.end)
        phrases.append(Phrase(caption[span[0] : span[1]], (span,), last))
        i = k
    return phrases


def category_phrases(caption: str | bytes) -> list[Phrase] | None:
    """The segments of a category-list caption (``"person. dog. red backpack."``), or None when the
    caption is not one (the rule is in the module docstring).

    Raises:
        TypeError / ValueError: see :func:`check_caption`.
    """
    caption = check_caption(caption)
    bounds = [0] + [m.end() for m in _SEPARATOR.finditer(caption)]
    if len(bounds) < 2:
        return None
    ends = [m.start() for m in _SEPARATOR.finditer(caption)] + [len(caption)]
    spans: list[Span] = []
    for lo, hi in zip(bounds, ends):
        segment = caption[lo:hi]
        stripped = segment.strip().strip(".").strip()
        if not stripped:
            continue
        start = lo + segment.index(stripped)
        spans.append((start, start + len(stripped)))
    if len(spans) < MIN_CATEGORIES:
        return None
    tokens = _tokens(caption)
    for span in spans:
        text = caption[span[0] : span[1]]
        if len(text.split()) > MAX_CATEGORY_WORDS or any(c in _CATEGORY_PUNCTUATION for c in text):
            return None
        tags = [t.tag for t in tokens if t is not None and span[0] <= t.start and t.end <= span[1]]
        subject = False
        for tag in tags:
            if tag in _FINITE_VERBS and subject:
                return None  # "a man sits": a clause, so prose
            subject = subject or tag.startswith(("NN", "PRP"))
    return [Phrase(caption[s:e], ((s, e),), _head(tokens, (s, e))) for s, e in spans]


def locate_phrases(caption: str | bytes, phrases: Sequence[str]) -> list[Phrase]:
    """Caller-given phrases found in the caption, in the order given.

    Each phrase (stripped of surrounding whitespace) is the first exact, case-sensitive occurrence
    after the end of the previous one, so ``["a dog", "a dog"]`` finds both dogs of ``"a dog and a
    dog"``.

    Raises:
        TypeError: ``phrases`` is a single string, or holds a non-string (its index named).
        ValueError: no phrases, an empty phrase, or a phrase not found after the previous one (the
            message says whether it occurs earlier or in another case).
    """
    caption = check_caption(caption)
    if isinstance(phrases, (str, bytes)):
        raise TypeError(f"phrases must be a list of strings, got a single string {phrases!r}; wrap it: [{phrases!r}]")
    items = list(phrases)
    if not items:
        raise ValueError("phrases is empty: give at least one phrase (or None to find the noun phrases)")
    tokens = _tokens(caption)
    out: list[Phrase] = []
    pos = 0
    for i, phrase in enumerate(items):
        if not isinstance(phrase, str):
            raise TypeError(f"phrase at index {i} must be a string, got {type(phrase).__name__} ({phrase!r})")
        text = phrase.strip()
        if not text:
            raise ValueError(f"phrase at index {i} is empty or whitespace only ({phrase!r})")
        start = caption.find(text, pos)
        if start < 0:
            raise ValueError(_not_found(caption, text, i, pos))
        span = (start, start + len(text))
        out.append(Phrase(text, (span,), _head(tokens, span)))
        pos = span[1]
    return out


def _not_found(caption: str, text: str, index: int, pos: int) -> str:
    where = f"after offset {pos} (the end of the previous phrase)" if pos else ""
    hint = ""
    if caption.find(text) >= 0:
        hint = f"; it occurs at offset {caption.find(text)}, before the previous phrase: give phrases in caption order"
    elif caption.lower().find(text.lower(), pos) >= 0:
        j = caption.lower().find(text.lower(), pos)
        hint = f"; {caption[j : j + len(text)]!r} at offset {j} differs in case (phrases are matched exactly)"
    return f"phrase {text!r} (index {index}) is not in the caption {caption!r} {where}".rstrip() + hint


def phrases_from_spans(caption: str | bytes, spans: Sequence[Sequence[int]]) -> list[Phrase]:
    """Phrases at caller-given character spans, in the order given.

    Args:
        caption: the caption.
        spans: ``(start, end)`` pairs of ints, ``0 <= start < end <= len(caption)``, not
            overlapping one another, none covering only whitespace.

    Raises:
        TypeError: a span that is not a pair of ints (named).
        ValueError: no spans, or a span out of the caption, empty, reversed, blank or overlapping
            another (both named).
    """
    caption = check_caption(caption)
    items = list(spans)
    if not items:
        raise ValueError("spans is empty: give at least one (start, end) span (or None to find the noun phrases)")
    checked: list[Span] = []
    for i, span in enumerate(items):
        pair = tuple(span) if isinstance(span, (tuple, list)) else None
        if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
            raise TypeError(f"span at index {i} must be a (start, end) pair of ints, got {span!r}")
        start, end = pair
        if not 0 <= start < end <= len(caption):
            raise ValueError(
                f"span {pair} (index {i}) must satisfy 0 <= start < end <= {len(caption)} (the caption's length)"
            )
        if not caption[start:end].strip():
            raise ValueError(f"span {pair} (index {i}) covers only whitespace ({caption[start:end]!r})")
        checked.append((start, end))
    order = sorted(range(len(checked)), key=lambda k: checked[k])
    for a, b in zip(order, order[1:]):
        if checked[b][0] < checked[a][1]:
            raise ValueError(
                f"span {checked[b]} (index {b}) overlaps span {checked[a]} (index {a}): spans must not overlap"
            )
    tokens = _tokens(caption)
    return [Phrase(caption[s:e], ((s, e),), _head(tokens, (s, e))) for s, e in checked]


def extract_phrases(
    caption: str | bytes, phrases: Sequence[str] | None = None, spans: Sequence[Sequence[int]] | None = None
) -> list[Phrase]:
    """The phrases to ground: the given ``phrases`` or ``spans``, else a category list's segments,
    else the caption's noun phrases (see the module docstring).

    Raises:
        TypeError / ValueError: see :func:`check_caption`, :func:`locate_phrases` and
            :func:`phrases_from_spans`; both ``phrases`` and ``spans`` given; or a caption with no
            noun phrase.
    """
    caption = check_caption(caption)
    if phrases is not None and spans is not None:
        raise ValueError("give phrases or spans, not both")
    if phrases is not None:
        return locate_phrases(caption, phrases)
    if spans is not None:
        return phrases_from_spans(caption, spans)
    found = category_phrases(caption)
    if found is None:
        found = noun_phrases(caption)
    if not found:
        raise ValueError(
            f"no noun phrase found in the caption {caption!r}; name what to ground with phrases=[...] "
            f"(or spans=[(start, end), ...])"
        )
    return found
