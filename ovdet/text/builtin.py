"""Real CLIP ViT-B/32 embeddings of the built-in vocabularies, shipped with ovdet: a model whose
text space they are answers ``set_classes("lvis")``, ``"coco"``, ``"objects365"``,
``"openimages"`` and any single name of those tables offline, with no text encoder.

The tables (``vocab/clip-vit-b32/embeddings.safetensors``; provenance and licence in that folder's
README.md) are Detic's text embeddings of ``"a " + name`` by OpenAI's CLIP ViT-B/32 (QuickGELU):
(N, 512) float16, not normalised, rows in the order of each table's names.

Which models get them (:func:`is_builtin_clip_space`, the one rule): an encoder id that means
these weights with this activation (``open_clip:ViT-B-32:openai``, the ``-quickgelu`` model name,
or OpenAI's own ``ViT-B-32.pt`` file by its sha256) *and* exactly the templates ``("a {}",)``.
``("{}",)`` (YOLO-World's setting, ovdet's default) is another prompt, so other embeddings: such a
model never receives these rows, and encodes as before.

Which row a name gets (:func:`enter_builtin_embeddings`), in order:

1. the same CLIP text as a table name: CLIP lower-cases and collapses spaces before tokenising,
   so ``"Raccoon"``, ``"raccoon"`` and ``" raccoon "`` are one input and one embedding; the row is
   entered under the name as written;
2. else a loose match (:func:`~ovdet.text.vocabulary.name_key`: case, spaces, ``_`` and ``-``
   ignored) of a table name or of ovdet's prompt name for that row (``"aerosol can"`` →
   ``aerosol_can``, LVIS ``"horned cow"`` → ``bull``, Objects365 ``"Monitor"`` → ``Moniter/TV``):
   the name is looked up under the table's own spelling, the text its row encodes, so the cache
   never holds a row under a text that did not produce it;
3. else nothing: the cache and the text encoder answer, as for any name.

A text several tables hold (``person`` in all four, ``Bench`` twice in OpenImages; the rows differ
only by the rounding of Detic's fp16 GPU run) takes the first table in :data:`CLIP_TABLES` order,
first row. The same rule holds online and offline, so a vocabulary gets the same embeddings on
every machine; an online encoder embeds only what the tables do not hold. Rows enter the
:class:`~ovdet.text.cache.EmbeddingCache` L2-normalised (as encoders return them) under the
model's own encoder id and templates; an entry already there is kept.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

import torch

from ovdet.text.base import TextEncoder, TextEncoderUnavailable, check_texts, validate_templates
from ovdet.text.cache import EmbeddingCache
from ovdet.text.files import read_safetensors
from ovdet.text.vocabulary import builtin_vocabulary, name_key

__all__ = [
    "BUILTIN_CLIP_ENCODER_ID",
    "BUILTIN_CLIP_ENCODER_IDS",
    "BUILTIN_CLIP_TEMPLATES",
    "CLIP_TABLES",
    "OPENAI_VIT_B32_SHA256",
    "builtin_clip_table",
    "cannot_encode",
    "encode_names",
    "enter_builtin_embeddings",
    "is_builtin_clip_space",
]

#: The tables, in the order that decides a text several hold.
CLIP_TABLES = ("coco", "lvis", "objects365", "openimages")
#: Tables whose rows are the classes of ovdet's ``vocab/<table>.txt``, in the same order (so
#: ovdet's prompt names are aliases of the rows); OpenImages' vocabulary is its names, each once.
_ROW_ALIGNED = ("coco", "lvis", "objects365")
#: The prompt the tables were made with (Detic's ``"a " + name``).
BUILTIN_CLIP_TEMPLATES: tuple[str, ...] = ("a {}",)
#: sha256 of OpenAI's ``ViT-B-32.pt``: the folder of its download URL (open_clip's ``openai`` tag).
OPENAI_VIT_B32_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
#: The id of the encoder the tables come from (what :func:`~ovdet.text.text_encoder_id` gives it).
BUILTIN_CLIP_ENCODER_ID = "open_clip:ViT-B-32:openai"
#: Every encoder id meaning OpenAI's ViT-B/32 weights run with QuickGELU, as they were trained: the
#: tag (either model name), or OpenAI's own file (hashed) under either model name; a file run with
#: GELU (no ``:quickgelu``) or any other file is another space.
BUILTIN_CLIP_ENCODER_IDS = frozenset(
    {
        BUILTIN_CLIP_ENCODER_ID,
        "open_clip:ViT-B-32-quickgelu:openai",
        f"open_clip:ViT-B-32:file:{OPENAI_VIT_B32_SHA256[:16]}:quickgelu",
        f"open_clip:ViT-B-32-quickgelu:file:{OPENAI_VIT_B32_SHA256[:16]}",
    }
)
TABLE_FILE = "clip-vit-b32/embeddings.safetensors"
TABLE_FORMAT = "ovdet-builtin-clip-embeddings"
_DIM = 512
_CONTEXT_LENGTH = 77


def is_builtin_clip_space(encoder_id: str, templates: Sequence[str]) -> bool:
    """Whether an encoder id and prompt templates are the text space the shipped tables live in
    (see the module docstring): an id in :data:`BUILTIN_CLIP_ENCODER_IDS` and templates exactly
    :data:`BUILTIN_CLIP_TEMPLATES`."""
    return encoder_id in BUILTIN_CLIP_ENCODER_IDS and tuple(templates) == BUILTIN_CLIP_TEMPLATES


def clip_text(name: str) -> str:
    """``name`` as CLIP's tokenizer sees it: lower case, runs of whitespace as one space, stripped."""
    return " ".join(name.lower().split())


@dataclass(frozen=True)
class _Tables:
    names: dict[str, list[str]]  # table -> N names, row i = name i
    rows: dict[str, torch.Tensor]  # table -> (N, 512) float16, not normalised
    exact: dict[str, tuple[str, int]]  # clip_text -> (table, row): the first table, first row
    loose: dict[str, str]  # name_key -> the table spelling that answers it


@functools.lru_cache(maxsize=1)
def _tables() -> _Tables:
    """The shipped tables, read once per process (package data: never changes while running)."""
    path = resources.files("ovdet.text").joinpath("vocab", *TABLE_FILE.split("/"))
    with resources.as_file(path) as file:
        tensors, metadata = read_safetensors(file)
    if metadata.get("format") != TABLE_FORMAT:  # pragma: no cover - a broken installation
        raise RuntimeError(f"{path}: format {metadata.get('format')!r}, expected {TABLE_FORMAT!r}; reinstall ovdet")
    names: dict[str, list[str]] = json.loads(metadata["names"])
    exact: dict[str, tuple[str, int]] = {}
    loose: dict[str, str] = {}
    for table in CLIP_TABLES:
        aliases = builtin_vocabulary(table) if table in _ROW_ALIGNED else names[table]
        for i, (name, alias) in enumerate(zip(names[table], aliases)):
            exact.setdefault(clip_text(name), (table, i))
            loose.setdefault(name_key(name), name)
            loose.setdefault(name_key(alias), name)
    return _Tables(names, {t: tensors[t] for t in CLIP_TABLES}, exact, loose)  # type: ignore[misc]


def builtin_clip_table(table: str) -> tuple[list[str], torch.Tensor]:
    """One shipped table as it is: (N names, (N, 512) float16 rows, not normalised), new objects.

    Raises:
        ValueError: ``table`` is not one of :data:`CLIP_TABLES`.
    """
    if table not in CLIP_TABLES:
        raise ValueError(f"no built-in CLIP table {table!r}; the tables are {list(CLIP_TABLES)}")
    t = _tables()
    return list(t.names[table]), t.rows[table].clone()


def _table_text(name: str) -> str | None:
    """The text ``name`` is looked up by (rules 1 and 2 of the module docstring), or None."""
    t = _tables()
    if clip_text(name) in t.exact:
        return name
    return t.loose.get(name_key(name))


class _TableEncoder:
    """The tables as a :class:`~ovdet.text.base.TextEncoder` under a model's own encoder id, so
    :meth:`EmbeddingCache.get_or_encode` enters exactly the rows not yet cached. Encodes only texts
    :func:`_table_text` returns for themselves."""

    def __init__(self, encoder_id: str, templates: Sequence[str]) -> None:
        self.id = encoder_id
        self.dim = _DIM
        self.context_length = _CONTEXT_LENGTH
        self.templates = validate_templates(templates)

    def encode(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """(K, 512) float32 unit rows of ``texts`` (each one the tables hold, as its own CLIP text)."""
        t = _tables()
        at = [t.exact[clip_text(x)] for x in check_texts(texts)]
        rows = torch.stack([t.rows[table][i] for table, i in at]) if at else torch.empty(0, _DIM)  # (K, 512) fp16
        return torch.nn.functional.normalize(rows.float(), dim=-1)


def enter_builtin_embeddings(
    cache: EmbeddingCache, encoder_id: str, templates: Sequence[str], names: Sequence[str]
) -> list[str]:
    """Enter the shipped rows that answer ``names`` into ``cache``; returns the texts to look the
    names up by (the module docstring's rules).

    For an encoder id and templates that are not the tables' space (:func:`is_builtin_clip_space`)
    nothing is entered and the names are returned as they are.

    Args:
        cache: the embedding cache; entries already in it are kept.
        encoder_id: the model's text encoder id (``text_encoder_id(cfg.text)``).
        templates: the model's prompt templates.
        names: K class names.

    Returns:
        K texts: each name, or the table's spelling where a loose match answers it.
    """
    names = check_texts(names)
    if not is_builtin_clip_space(encoder_id, templates):
        return names
    found = [_table_text(n) for n in names]
    known = [x for x in found if x is not None]
    if known:
        cache.get_or_encode(_TableEncoder(encoder_id, templates), known, templates)  # type: ignore[arg-type]
    return [x or n for x, n in zip(found, names)]


def encode_names(
    cache: EmbeddingCache,
    encoder_id: str,
    templates: Sequence[str],
    names: Sequence[str],
    get_encoder: Callable[[], TextEncoder],
) -> torch.Tensor:
    """(K, D) embeddings of ``names``: the shipped tables first (where they are the encoder's
    space), then ``cache``, and only then the encoder ``get_encoder`` builds (never built when
    the tables and the cache hold every name). The one lookup order of ``Detector.encode`` and
    ``ovdet embed``.

    Raises:
        TextEncoderUnavailable: some names need the encoder and it cannot be built; the message
            names them, their nearest table names and how to supply embeddings (:func:`cannot_encode`).
    """
    texts = enter_builtin_embeddings(cache, encoder_id, templates, names)
    emb = cache.lookup(encoder_id, texts, templates)
    if emb is not None:
        return emb
    try:
        encoder = get_encoder()
    except TextEncoderUnavailable as e:
        missing = [n for n, t in zip(names, texts) if (encoder_id, tuple(templates), t) not in cache]
        raise cannot_encode(e, encoder_id, templates, missing) from e
    return cache.get_or_encode(encoder, texts, templates)


def _nearest(name: str, n: int = 3) -> list[str]:
    """Up to ``n`` table or prompt names closest to ``name`` (difflib, on :func:`name_key`)."""
    t = _tables()
    keys = difflib.get_close_matches(name_key(name), list(t.loose), n=n, cutoff=0.6)
    return list(dict.fromkeys(t.loose[k] for k in keys))


def cannot_encode(
    error: TextEncoderUnavailable, encoder_id: str, templates: Sequence[str], missing: Sequence[str]
) -> TextEncoderUnavailable:
    """The error for names neither the cache nor the tables hold when the encoder cannot be built.

    In the tables' space: names the (first ten) missing names, the nearest table names of each,
    and how to supply embeddings; for OpenAI's ViT-B/32 with other templates and names the tables
    hold: adds which templates the tables are for. Otherwise ``error`` itself.
    """
    fix = (
        "embed them on a connected machine with `ovdet embed --model <this model> --classes ... -o names.safetensors` "
        "and load the file here with `Detector.set_class_embeddings(names, emb)` (see ovdet.text.load_embeddings; "
        "`--embeddings names.safetensors` on the command line), or give the encoder's weights locally"
    )
    if is_builtin_clip_space(encoder_id, templates):
        shown = ", ".join(f"{n!r} (nearest: {_nearest(n) or 'none'})" for n in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        sizes = ", ".join(f"{t} {len(_tables().names[t])}" for t in CLIP_TABLES)
        return TextEncoderUnavailable(
            f"cannot encode {shown}{more} offline: not among the names of ovdet's built-in CLIP ViT-B/32 tables "
            f"({sizes}; they need no text encoder), and the text encoder cannot be built. To use these names, {fix}. "
            f"The encoder's error: {error}"
        )
    if encoder_id in BUILTIN_CLIP_ENCODER_IDS and any(_table_text(n) is not None for n in missing):
        return TextEncoderUnavailable(
            f"{error} Note: ovdet ships CLIP ViT-B/32 embeddings of the COCO, LVIS, Objects365 and OpenImages names "
            f"for the templates {list(BUILTIN_CLIP_TEMPLATES)} only, not this model's {list(templates)} (another "
            f"prompt is another embedding); a model meant for that prompt can set text.templates: "
            f"{list(BUILTIN_CLIP_TEMPLATES)} to use them offline"
        )
    return error
