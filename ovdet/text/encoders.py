"""Which encoder a :class:`~ovdet.config.TextConfig` describes: build it, or name it without building."""

from __future__ import annotations

import torch

from ovdet.config import TextConfig
from ovdet.text.adapter import ApproxCLIPTextEncoder, approx_clip_encoder_id
from ovdet.text.base import TextEncoder
from ovdet.text.openclip import OpenCLIPTextEncoder, openclip_encoder_id
from ovdet.text.sentence import SentenceTransformerEncoder, sentence_encoder_id

__all__ = ["build_text_encoder", "text_encoder_id"]


def text_encoder_id(cfg: TextConfig) -> str:
    """The ``id`` that :func:`build_text_encoder` gives ``cfg``, without building it.

    Lets a caller look embeddings up in an :class:`~ovdet.text.EmbeddingCache` before paying
    for (or downloading) the encoder.
    """
    if cfg.family == "sentence_transformers":
        return sentence_encoder_id(cfg)
    if cfg.family == "approx_clip":
        return approx_clip_encoder_id(cfg)
    return openclip_encoder_id(cfg)


def build_text_encoder(cfg: TextConfig, device: str | torch.device = "cpu") -> TextEncoder:
    """The text encoder ``cfg`` describes (see :meth:`OpenCLIPTextEncoder.from_config` and
    :meth:`SentenceTransformerEncoder.from_config`, :meth:`ApproxCLIPTextEncoder.from_config`).

    Raises:
        ValueError: bad config or checkpoint (named).
        TextEncoderUnavailable: pretrained weights cannot be obtained (offline); the message says
            how to supply them locally.
    """
    if cfg.family == "sentence_transformers":
        return SentenceTransformerEncoder.from_config(cfg, device=device)
    if cfg.family == "approx_clip":
        return ApproxCLIPTextEncoder.from_config(cfg, device=device)
    return OpenCLIPTextEncoder.from_config(cfg, device=device)
