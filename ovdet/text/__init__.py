"""Text side of the detector: class names → L2-normalised embeddings.

* :mod:`ovdet.text.base` — the :class:`TextEncoder` protocol, vocabulary and template checks.
* :mod:`ovdet.text.openclip` — open_clip text towers (the one module touching open_clip).
* :mod:`ovdet.text.sentence` — sentence-transformers encoders (BERT family, e.g. MiniLM).
* :mod:`ovdet.text.encoders` — build the encoder a config describes, or name it without building.
* :mod:`ovdet.text.cache` — :class:`EmbeddingCache`, so a vocabulary is encoded once per machine.
* :mod:`ovdet.text.files` — embedding files (``ovdet embed``) for machines without the encoder.
* :mod:`ovdet.text.tokens` — how many tokens a text takes, from the encoder's tokenizer alone.

The names below are imported from their modules on first access, so importing
``ovdet.text.base`` or ``ovdet.text.files`` (as the deployment runtime does, without PyTorch)
loads neither the encoders nor PyTorch.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ovdet.text.base import (
        TextEncoder,
        TextEncoderUnavailable,
        apply_template,
        check_texts,
        validate_class_names,
        validate_templates,
    )
    from ovdet.text.cache import EmbeddingCache
    from ovdet.text.encoders import build_text_encoder, text_encoder_id
    from ovdet.text.files import load_embeddings, save_embeddings
    from ovdet.text.openclip import CLIP_VOCAB_SIZE, CUSTOM_KEYS, DEFAULT_BATCH_SIZE, OpenCLIPTextEncoder
    from ovdet.text.sentence import SentenceTransformerEncoder

#: Each public name and the module of ovdet.text that defines it.
_MODULES: dict[str, str] = {
    "CLIP_VOCAB_SIZE": "openclip",
    "CUSTOM_KEYS": "openclip",
    "DEFAULT_BATCH_SIZE": "openclip",
    "EmbeddingCache": "cache",
    "OpenCLIPTextEncoder": "openclip",
    "SentenceTransformerEncoder": "sentence",
    "TextEncoder": "base",
    "TextEncoderUnavailable": "base",
    "apply_template": "base",
    "build_text_encoder": "encoders",
    "check_texts": "base",
    "load_embeddings": "files",
    "save_embeddings": "files",
    "text_encoder_id": "encoders",
    "validate_class_names": "base",
    "validate_templates": "base",
}

__all__ = [
    "CLIP_VOCAB_SIZE",
    "CUSTOM_KEYS",
    "DEFAULT_BATCH_SIZE",
    "EmbeddingCache",
    "OpenCLIPTextEncoder",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "TextEncoderUnavailable",
    "apply_template",
    "build_text_encoder",
    "check_texts",
    "load_embeddings",
    "save_embeddings",
    "text_encoder_id",
    "validate_class_names",
    "validate_templates",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'ovdet.text' has no attribute {name!r}")
    value = getattr(import_module(f"ovdet.text.{module}"), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})
