"""Vocabularies: the built-in COCO (80), LVIS (1203), Objects365 (365) and OpenImages (498) class
names shipped with ovdet, the one parser of a class list typed as a string
(:func:`parse_class_spec`), and the one rule for which embeddings a list of names gets
(:func:`select_embeddings`).

Files in ``ovdet/text/vocab/`` hold one class per line, synonyms separated by ``/`` (as in
ultralytics' dataset files). :func:`builtin_vocabulary` returns prompt names: the first synonym,
or the most specific one where first synonyms collide (LVIS ``bow/bow weapon`` and
``bow/bow decorative ribbons`` become ``bow weapon`` and ``bow decorative ribbons``), so every
class has its own text. Use them anywhere a class list is accepted, or to keep the open
vocabulary while fine-tuning (``TrainConfig.keep_vocab``). ``openimages.txt`` is Detic's
OpenImages category list with each name once (it names ``Bench`` and ``Mouse`` twice; one text
can only be one class).

Real CLIP ViT-B/32 embeddings of these names ship in ``vocab/clip-vit-b32/`` (Detic's, Apache-2.0;
provenance in its README.md): a model whose text space they are (OpenAI's ViT-B/32 weights with
QuickGELU and the templates ``("a {}",)``) sets any of these vocabularies, or any single name of
their tables, offline without a text encoder. :mod:`ovdet.text.builtin` holds the rule for which
models and which rows.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TypeVar

__all__ = [
    "BUILTIN_VOCABULARIES",
    "builtin_vocabulary",
    "is_builtin_vocabulary",
    "parse_class_spec",
    "parse_classes",
    "select_embeddings",
]

#: An embedding matrix: a torch tensor or a numpy array (anything indexed by a list of rows).
E = TypeVar("E")

BUILTIN_VOCABULARIES = ("coco", "lvis", "objects365", "openimages")


def builtin_vocabulary(name: str) -> list[str]:
    """Prompt names of a built-in vocabulary (a new list each call).

    Raises:
        ValueError: unknown name (the known ones are listed).
    """
    key = name.strip().lower()
    if key not in BUILTIN_VOCABULARIES:
        raise ValueError(f"unknown built-in vocabulary {name!r}; choose one of {list(BUILTIN_VOCABULARIES)}")
    lines = resources.files("ovdet.text").joinpath("vocab", f"{key}.txt").read_text(encoding="utf-8").splitlines()
    synonyms = [[s.strip() for s in line.split("/") if s.strip()] for line in lines if line.strip()]
    first = Counter(s[0] for s in synonyms)
    return [s[0] if first[s[0]] == 1 or len(s) == 1 else s[-1] for s in synonyms]


def is_builtin_vocabulary(spec: object) -> bool:
    """True when ``spec`` is a string naming a built-in vocabulary (``"coco"``, ``" LVIS "``)."""
    return isinstance(spec, str) and spec.strip().lower() in BUILTIN_VOCABULARIES


def parse_classes(spec: str) -> list[str]:
    """Class names from one inline string: a built-in vocabulary's name (the whole string), else
    comma-separated names, stripped, empty ones dropped (``"person, red backpack"``); no file is
    ever read. As :func:`parse_class_spec` with ``files=False``, which the HTTP API uses.

    The list is not validated (see :func:`~ovdet.text.validate_class_names`); a string of only
    commas and spaces gives ``[]``.
    """
    return parse_class_spec(spec, files=False)


#: Suffixes that make a class spec a file even when it does not exist (so a typo is an error).
CLASS_FILE_SUFFIXES = (".txt", ".names")


def parse_class_spec(spec: str, *, files: bool = True, inline: bool = True) -> list[str]:
    """The one parser of a class list given as one string (``--classes``, ``--vocabulary``,
    ``keep_vocab``, an HTTP ``classes`` field, the label tool's prompts).

    In order: a text file with one name per line (``#`` comments, blank lines skipped) when
    ``spec`` names an existing file or ends in ``.txt``/``.names``; a built-in vocabulary's name
    (``coco``, ``lvis``, ``objects365``, ``openimages``, case and spaces ignored); else, with ``inline``,
    comma-separated names (stripped, empty ones dropped). Names are not validated (see
    :func:`~ovdet.text.validate_class_names`: duplicates are reported there, by name).

    Args:
        spec: the string as typed.
        files: read files (False where the string comes from a client: never read the server's
            files; a spec then is a built-in name or an inline list).
        inline: accept a comma-separated list (False: a built-in name or a file only, e.g. a
            vocabulary that must hold hundreds of names).

    Raises:
        ValueError: a ``.txt``/``.names`` file that does not exist, a file that holds no name, or
            (without ``inline``) a spec that is neither a built-in vocabulary nor a file.
    """
    if files:
        path = Path(spec)
        try:
            is_file = path.is_file()
        except (OSError, ValueError):  # a value too long or odd to be a path is an inline list
            is_file = False
        if is_file or path.suffix in CLASS_FILE_SUFFIXES:
            if not is_file:
                raise ValueError(f"class file not found: {path}")
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            names = [n for n in lines if n and not n.startswith("#")]
            if not names:
                raise ValueError(f"class file {path} holds no class name")
            return names
    if is_builtin_vocabulary(spec):
        return builtin_vocabulary(spec)
    if not inline:
        where = " nor a file" if files else ""
        raise ValueError(f"vocabulary {spec!r} is neither a built-in one ({', '.join(BUILTIN_VOCABULARIES)}){where}")
    return [n.strip() for n in spec.split(",") if n.strip()]


def name_key(name: str) -> str:
    """A class name compared loosely: lower case, runs of spaces, underscores and hyphens as one space."""
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def _loose_rows(names: Sequence[str]) -> dict[str, int | None]:
    """:func:`name_key` → row index, None where two rows share a key (ambiguous: never used)."""
    rows: dict[str, int | None] = {}
    for i, n in enumerate(names):
        k = name_key(n)
        rows[k] = None if k in rows else i
    return rows


def select_embeddings(
    names: Sequence[str],
    encode: Callable[[list[str]], E] | None,
    own_names: Sequence[str] | None = None,
    own_embeddings: E | None = None,
) -> E:
    """The one rule for "embeddings of these names": a vocabulary's own rows when it holds every
    name (so prompt-tuned, precomputed or file embeddings are what is used, and no encoder runs),
    else ``encode(names)`` (the embedding cache, then the text encoder). A name absent as written
    is matched to the one row that differs only in case or spacing (``"Raccoon"`` for
    ``"raccoon"``, ``"traffic_light"`` for ``"traffic light"``; :func:`name_key`), with a warning;
    a key two rows share is never used.

    Used by validation (``Detector.val``), training's validation, the serve engine and the
    command line's ``--embeddings`` files.

    Args:
        names: K class names (already validated).
        encode: names → (K, D) embeddings; None: only own rows may answer.
        own_names: the names of ``own_embeddings``' rows (M of them).
        own_embeddings: (M, D) tensor or array.

    Returns:
        (K, D), rows in the order of ``names`` (own rows stay where they are: device and dtype).

    Raises:
        KeyError: ``encode`` is None and some names are not among ``own_names`` (listed).
    """
    if own_embeddings is not None and own_names is not None:
        row = {n: i for i, n in enumerate(own_names)}
        loose = _loose_rows(own_names)
        missing = [n for n in names if n not in row and loose.get(name_key(n)) is None]
        if not missing:
            near = {n: own_names[loose[name_key(n)]] for n in names if n not in row}  # type: ignore[index]
            if near:
                shown = ", ".join(f"{n!r} ← {m!r}" for n, m in list(near.items())[:5])
                warnings.warn(
                    f"{len(near)} names matched a vocabulary row that differs only in case or spacing ({shown}); "
                    "CLIP and MiniLM lower-case their input, so these are the same text to them",
                    stacklevel=2,
                )
            return own_embeddings[[row[n] if n in row else loose[name_key(n)] for n in names]]  # type: ignore[index]
        if encode is None:
            raise KeyError(f"{missing} not among the {len(row)} names of the vocabulary")
    if encode is None:
        raise KeyError(f"no embeddings for {list(names)}: no vocabulary and no text encoder")
    return encode(list(names))
