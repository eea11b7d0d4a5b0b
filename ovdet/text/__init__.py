"""Text side of the detector: class names → L2-normalised embeddings.

* :mod:`ovdet.text.base` — the :class:`TextEncoder` protocol, vocabulary and template checks.
* :mod:`ovdet.text.openclip` — open_clip text towers (the one module touching open_clip).
* :mod:`ovdet.text.sentence` — sentence-transformers encoders (BERT family, e.g. MiniLM).
* :mod:`ovdet.text.encoders` — build the encoder a config describes, or name it without building.
* :mod:`ovdet.text.cache` — :class:`EmbeddingCache`, so a vocabulary is encoded once per machine.
* :mod:`ovdet.text.files` — embedding files (``ovdet embed``) for machines without the encoder.
"""

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
