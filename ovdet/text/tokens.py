"""How many tokens a text takes in the text encoder a config describes, counted with that encoder's
tokenizer alone: no weights are loaded and nothing is downloaded.

The encoders warn when they truncate a text (:meth:`~ovdet.text.openclip.OpenCLIPTextEncoder.encode`,
:meth:`~ovdet.text.sentence.SentenceTransformerEncoder.encode`), but an embedding that comes from
the cache or the shipped CLIP tables never passes through an encoder; :func:`prompt_token_counts`
answers for any text, encoded or not. Counts are those the encoders check: the prompt with each
template applied (the approximate-CLIP encoder's MiniLM prompt included), start and end tokens
included, the longest template's count per text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ovdet.config import TextConfig
from ovdet.text.base import apply_template, check_texts, validate_templates

__all__ = ["TokenCounts", "prompt_token_counts"]

Counter = tuple[int, Callable[[str], int]]  # (context length, tokens of one prompt)


@dataclass(frozen=True)
class TokenCounts:
    """Token counts of K texts in one encoder.

    Attributes:
        context_length: tokens the encoder reads per prompt, start and end tokens included.
        counts: K ints, each text's longest prompt in tokens.
    """

    context_length: int
    counts: tuple[int, ...]

    def truncated(self) -> list[int]:
        """Indices of the texts longer than ``context_length`` (the encoder truncates them)."""
        return [i for i, n in enumerate(self.counts) if n > self.context_length]


def prompt_token_counts(cfg: TextConfig, texts: Sequence[str]) -> TokenCounts | None:
    """The token counts of ``texts`` in the encoder ``cfg`` describes (see the module docstring).

    Returns:
        The counts, or None when the tokenizer cannot count offline (an open_clip model with a
        Hugging Face tokenizer, or a sentence-transformers model that is not on this machine).

    Raises:
        TypeError: ``texts`` is a single string or holds a non-string.
    """
    texts = check_texts(texts)
    templates = validate_templates(cfg.templates)
    counter = _counter(cfg)
    if counter is None:
        return None
    context_length, count = counter
    outer = "{}"
    if cfg.family == "approx_clip":
        from ovdet.text.adapter import FITTED_PROMPT

        outer = FITTED_PROMPT  # what its MiniLM reads around each prompt
    counts = tuple(max(count(apply_template(outer, apply_template(t, text))) for t in templates) for text in texts)
    return TokenCounts(context_length, counts)


def _counter(cfg: TextConfig) -> Counter | None:
    if cfg.family == "open_clip":
        custom = None
        if cfg.custom is not None:
            from ovdet.text.openclip import validate_custom

            custom = validate_custom(cfg.custom)["context_length"]
        return _openclip_counter(cfg.model, custom)
    from ovdet.text.sentence import local_model_folder

    if cfg.family == "approx_clip":
        from ovdet.text.adapter import MINILM

        cfg = TextConfig(family="sentence_transformers", model=MINILM, pretrained=None)
    try:
        folder = local_model_folder(cfg)
    except ValueError:
        return None  # a broken folder: building the encoder reports it
    return None if folder is None else _sentence_counter(str(folder))


@functools.lru_cache(maxsize=8)
def _openclip_counter(model: str, custom_context_length: int | None) -> Counter | None:
    """CLIP's BPE tokenizer of an open_clip model (its vocabulary ships with open_clip), read once."""
    from open_clip.tokenizer import SimpleTokenizer

    from ovdet.text.openclip import clip_token_count

    if custom_context_length is not None:
        tokenizer = SimpleTokenizer(context_length=custom_context_length)
    else:
        import open_clip

        model_cfg = open_clip.get_model_config(model)
        if model_cfg is None or "hf_tokenizer_name" in model_cfg.get("text_cfg", {}):
            return None  # unknown, or a Hugging Face tokenizer (its files may need a download)
        tokenizer = open_clip.get_tokenizer(model)
    if clip_token_count(tokenizer, "") is None:
        return None
    return int(tokenizer.context_length), lambda text: clip_token_count(tokenizer, text) or 0


@functools.lru_cache(maxsize=8)
def _sentence_counter(folder: str) -> Counter | None:
    """The tokenizer and ``max_seq_length`` of the transformer module of a sentence-transformers folder."""
    root = Path(folder)
    module = root
    if (root / "modules.json").is_file():
        entries = json.loads((root / "modules.json").read_text(encoding="utf-8"))
        paths = [e.get("path", "") for e in entries if str(e.get("type", "")).endswith("Transformer")]
        module = root / paths[0] if paths else root
    config = module / "sentence_bert_config.json"
    if not config.is_file():
        return None
    max_seq_length = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
    if not isinstance(max_seq_length, int):
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(module), local_files_only=True)
    except (OSError, ValueError):
        return None
    return max_seq_length, lambda text: len(tokenizer(text)["input_ids"])
