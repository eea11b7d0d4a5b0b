"""Approximate CLIP ViT-B/32 text embeddings from the offline MiniLM encoder (an explicit opt-in).

``TextConfig(family="approx_clip")`` builds :class:`ApproxCLIPTextEncoder`: the shipped
``all-MiniLM-L6-v2`` (no download) followed by an affine adapter into the text space of CLIP
ViT-B/32 (OpenAI weights), for names no shipped CLIP table holds. The adapter
(``approx_clip/*.safetensors``, fp16) is fitted by ``tools/fit_text_adapter.py --write`` on the
~1,600 unique names of the COCO, LVIS, Objects365 and OpenImages CLIP tables; its JSON beside it
records what it was fitted on and the held-out numbers (names never fitted: top-5 retrieval of
the true CLIP vector among all table names ≈ 55%, mean cosine ≈ 0.87 against ≈ 0.86 for the
constant mean vector). It approximates — it does not reproduce — CLIP; its id says so, so its
embeddings never share cache entries with the real encoder's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ovdet.config import TextConfig
from ovdet.io import file_sha256
from ovdet.text.base import (
    TextEncoder,
    apply_template,
    check_texts,
    pool_templates,
    template_prompts,
    validate_templates,
)

__all__ = [
    "ADAPTER_DIR",
    "ADAPTER_FILE",
    "APPROXIMATES",
    "MINILM",
    "PROVENANCE_FILE",
    "ApproxCLIPTextEncoder",
    "approx_clip_encoder_id",
]

#: The folder of the shipped adapter and its provenance JSON.
ADAPTER_DIR = Path(__file__).resolve().parent / "approx_clip"
ADAPTER_FILE = "minilm_l6_v2_to_clip_vit_b32.safetensors"
PROVENANCE_FILE = "minilm_l6_v2_to_clip_vit_b32.json"
#: The sentence encoder the adapter reads.
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
#: (model, pretrained) of the CLIP text tower whose space the adapter approximates.
APPROXIMATES = ("ViT-B-32", "openai")
#: The prompt MiniLM reads around each text, as when the adapter was fitted (the CLIP tables used ``"a {name}"``).
FITTED_PROMPT = "a {}"


def _check(cfg: TextConfig) -> None:
    if cfg.family != "approx_clip":
        raise ValueError(f"text.family={cfg.family!r}: the approximate CLIP encoder needs text.family='approx_clip'")
    if cfg.model != APPROXIMATES[0]:
        raise ValueError(
            f"text.model={cfg.model!r}: the approximate CLIP encoder maps into {APPROXIMATES[0]} only; "
            f"set text.model={APPROXIMATES[0]!r} or use text.family='open_clip' for {cfg.model}"
        )
    if cfg.pretrained != APPROXIMATES[1]:
        raise ValueError(
            f"text.pretrained={cfg.pretrained!r}: the approximate CLIP encoder approximates the "
            f"{APPROXIMATES[1]!r} weights only; set text.pretrained={APPROXIMATES[1]!r}"
        )


def approx_clip_encoder_id(cfg: TextConfig) -> str:
    """The id :meth:`ApproxCLIPTextEncoder.from_config` gives ``cfg``, without building it.

    Returns:
        ``"approx_clip:ViT-B-32:openai:<MiniLM>:adapter-<sha256[:16]>"``: never the real CLIP id,
        and a refitted adapter gets a new one.

    Raises:
        ValueError: ``cfg`` asks for another CLIP model or weights (the field is named).
    """
    _check(cfg)
    digest = file_sha256(ADAPTER_DIR / ADAPTER_FILE)[:16]
    return f"approx_clip:{APPROXIMATES[0]}:{APPROXIMATES[1]}:{MINILM}:adapter-{digest}"


class ApproxCLIPTextEncoder:
    """MiniLM embeddings mapped into CLIP ViT-B/32 text space: a :class:`~ovdet.text.base.TextEncoder`.

    Each prompt is read by MiniLM as ``"a <prompt>"`` (the fitted form), mapped by the adapter,
    normalised, and (for several templates) pooled in CLIP space.

    Args:
        minilm: the MiniLM encoder (384-d).
        weight: (512, 384) float adapter weight.
        bias: (512,) float adapter bias.
        id: see :func:`approx_clip_encoder_id`.
        templates: default prompt templates, each with exactly one ``{}``.
    """

    def __init__(
        self,
        minilm: TextEncoder,
        weight: torch.Tensor,
        bias: torch.Tensor,
        *,
        id: str,
        templates: Sequence[str] = ("{}",),
    ) -> None:
        if weight.ndim != 2 or weight.shape[1] != minilm.dim or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"adapter weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do not map the "
                f"{minilm.dim}-d encoder {minilm.id!r}: expected (D, {minilm.dim}) and (D,)"
            )
        self.id = id
        self._minilm = minilm
        self._weight = weight.float()  # (512, 384)
        self._bias = bias.float()  # (512,)
        self.dim = int(weight.shape[0])
        self.context_length = minilm.context_length
        self.templates = validate_templates(templates)

    @classmethod
    def from_config(cls, cfg: TextConfig, device: str | torch.device = "cpu") -> ApproxCLIPTextEncoder:
        """The shipped MiniLM (run on ``device``) and the shipped adapter (see the module docstring).

        Raises:
            ValueError: ``cfg`` asks for another CLIP model or weights, or the adapter file is
                missing or malformed (the file is named).
        """
        from safetensors.torch import load_file

        from ovdet.text.sentence import SentenceTransformerEncoder

        ident = approx_clip_encoder_id(cfg)
        path = ADAPTER_DIR / ADAPTER_FILE
        tensors = load_file(str(path))
        if set(tensors) != {"weight", "bias"}:
            raise ValueError(f"{path}: expected tensors 'weight' and 'bias', found {sorted(tensors)}")
        minilm = SentenceTransformerEncoder.from_config(
            TextConfig(family="sentence_transformers", model=MINILM, pretrained=None), device=device
        )
        return cls(minilm, tensors["weight"], tensors["bias"], id=ident, templates=cfg.templates)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, templates={self.templates!r})"

    def encode(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Embed ``texts`` (see :meth:`TextEncoder.encode`).

        Returns:
            (K, 512) float32 on CPU, rows of unit L2 norm; (0, 512) for no texts.
        """
        texts = check_texts(texts)
        templates = self.templates if templates is None else validate_templates(templates)
        if not texts:
            return torch.empty(0, self.dim)
        prompts = [apply_template(FITTED_PROMPT, p) for p in template_prompts(texts, templates)]  # T*K
        feats = self._minilm.encode(prompts, templates=("{}",))  # (T*K, 384), unit rows
        return pool_templates(feats @ self._weight.T + self._bias, len(templates)).contiguous()  # (K, 512)
