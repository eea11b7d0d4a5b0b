"""The text-encoder contract: the :class:`TextEncoder` protocol, vocabulary checks, prompt templates.

Every encoder family (open_clip, sentence-transformers) implements :class:`TextEncoder`; the
detector, the embedding cache and the files depend only on this module. It does not import
PyTorch (the deployment runtime validates vocabularies and templates with it);
:func:`pool_templates` does when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "TextEncoder",
    "TextEncoderUnavailable",
    "apply_template",
    "check_texts",
    "pool_templates",
    "template_prompts",
    "validate_class_names",
    "validate_templates",
]


class TextEncoderUnavailable(RuntimeError):
    """The text encoder's weights cannot be obtained (typically: offline and not cached).

    The message names the model and tag and says how to supply the weights locally.
    """


@runtime_checkable
class TextEncoder(Protocol):
    """Turns texts into L2-normalised embeddings.

    Attributes:
        id: stable identifier of the weights (cache key), e.g. ``"open_clip:ViT-B-32:openai"``;
            two encoders with the same id must produce the same embeddings.
        dim: embedding size D.
        context_length: tokens per text, start and end tokens included; longer texts are
            truncated (with a warning).
        templates: prompt templates applied by :meth:`encode` when none are given.
    """

    id: str
    dim: int
    context_length: int
    templates: tuple[str, ...]

    def encode(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Embed ``texts``.

        Args:
            texts: K strings.
            templates: prompt templates, each with exactly one ``{}``; ``None`` uses
                ``self.templates``. With several templates the per-template embeddings are
                averaged and re-normalised.

        Returns:
            (K, D) float32 on CPU, rows of unit L2 norm.
        """
        ...


def validate_class_names(names: Sequence[str]) -> list[str]:
    """Check a vocabulary and return it as a new list.

    Args:
        names: class names or phrases (any language; compared exactly, case-sensitive).

    Returns:
        A copy of ``names`` as a list.

    Raises:
        TypeError: ``names`` is a single string or not a sequence, or an element is not a
            string (the index and type are named).
        ValueError: the list is empty, a name is empty or whitespace only (index named), or
            names repeat (the duplicates are named).
    """
    if isinstance(names, (str, bytes)):
        raise TypeError(
            f"class names must be a list of strings, got a single string {names!r}; wrap it in a list: [{names!r}]"
        )
    try:
        out = list(names)
    except TypeError as e:
        raise TypeError(f"class names must be a list of strings, got {type(names).__name__}") from e
    if not out:
        raise ValueError("no class names: the vocabulary needs at least one name")
    for i, name in enumerate(out):
        if not isinstance(name, str):
            raise TypeError(f"class name at index {i} must be a string, got {type(name).__name__} ({name!r})")
        if not name.strip():
            raise ValueError(f"class name at index {i} is empty or whitespace only ({name!r})")
    seen: set[str] = set()
    dups: list[str] = []
    for name in out:
        if name in seen and name not in dups:
            dups.append(name)
        seen.add(name)
    if dups:
        raise ValueError(f"duplicate class names {dups}; each name must appear once")
    return out


def validate_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Check prompt templates and return them as a tuple.

    Raises:
        TypeError: ``templates`` is a single string or holds a non-string.
        ValueError: no templates, or a template without exactly one ``{}`` (named).
    """
    if isinstance(templates, str):
        raise TypeError(
            f"templates must be a list of strings, got a single string {templates!r}; "
            f"wrap it in a list: [{templates!r}]"
        )
    out = tuple(templates)
    if not out:
        raise ValueError("no prompt templates: use ('{}',) to feed names as they are")
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"template at index {i} must be a string, got {type(t).__name__} ({t!r})")
        if t.count("{}") != 1:
            raise ValueError(
                f"template {t!r} (index {i}) must contain exactly one '{{}}' where the "
                f"class name goes, found {t.count('{}')}"
            )
    return out


def apply_template(template: str, text: str) -> str:
    """``template`` with its ``{}`` replaced by ``text`` (other braces are kept literally)."""
    return template.replace("{}", text, 1)


def check_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a new list of strings.

    Raises:
        TypeError: a single string instead of a list, or an element that is not a string (named).
    """
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of strings, got a single string {texts!r}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text at index {i} must be a string, got {type(t).__name__} ({t!r})")
    return out


def template_prompts(texts: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every text in every template, template-major: T*K prompts (``[t0(x0), t0(x1), …, t1(x0), …]``)."""
    return [apply_template(t, x) for t in templates for x in texts]


def pool_templates(feats: torch.Tensor, n_templates: int) -> torch.Tensor:
    """Per-template features of :func:`template_prompts` → one unit-norm embedding per text.

    Args:
        feats: (T*K, D) features in template-major order (any float dtype, any device).
        n_templates: T.

    Returns:
        (K, D) float32 rows of unit L2 norm: each prompt normalised, then (for T > 1) the mean
        over templates re-normalised. Differentiable.
    """
    import torch

    feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    feats = feats.view(n_templates, -1, feats.shape[-1])  # (T, K, D)
    return feats[0] if n_templates == 1 else torch.nn.functional.normalize(feats.mean(0), dim=-1)
