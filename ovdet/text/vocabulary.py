"""Built-in vocabularies: the COCO (80), LVIS (1203) and Objects365 (365) class names, shipped with ovdet.

Files in ``ovdet/text/vocab/`` hold one class per line, synonyms separated by ``/`` (as in
ultralytics' dataset files). :func:`builtin_vocabulary` returns prompt names: the first synonym,
or the most specific one where first synonyms collide (LVIS ``bow/bow weapon`` and
``bow/bow decorative ribbons`` become ``bow weapon`` and ``bow decorative ribbons``), so every
class has its own text. Use them anywhere a class list is accepted, or to keep the open
vocabulary while fine-tuning (``TrainConfig.keep_vocab``).
"""

from __future__ import annotations

from collections import Counter
from importlib import resources

__all__ = ["BUILTIN_VOCABULARIES", "builtin_vocabulary", "is_builtin_vocabulary", "parse_classes", "resolve_vocabulary"]

BUILTIN_VOCABULARIES = ("coco", "lvis", "objects365")


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
    """Class names from one string, as the command line, the HTTP API and the web page take them:
    a built-in vocabulary's name (``coco``, ``lvis``, ``objects365``: the whole string), else
    comma-separated names, stripped, empty ones dropped (``"person, red backpack"``).

    The list is not validated (see :func:`~ovdet.text.validate_class_names`); a string of only
    commas and spaces gives ``[]``.
    """
    if is_builtin_vocabulary(spec):
        return builtin_vocabulary(spec)
    return [n.strip() for n in spec.split(",") if n.strip()]


def resolve_vocabulary(spec: str) -> list[str]:
    """Names from a built-in vocabulary name (``coco``, ``lvis``, ``objects365``) or a text file
    with one name per line (``#`` comments).

    Raises:
        ValueError: neither a built-in name nor an existing file.
    """
    from pathlib import Path

    if is_builtin_vocabulary(spec):
        return builtin_vocabulary(spec)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"vocabulary {spec!r} is neither a built-in one ({', '.join(BUILTIN_VOCABULARIES)}) nor a file"
        )
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(n for n in names if n and not n.startswith("#")))
