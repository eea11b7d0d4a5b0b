"""Class names → embeddings from an exported text encoder, without PyTorch.

:class:`OnnxTextEncoder` reads a ``*.text.onnx`` written by :func:`ovdet.export.text.export_text_encoder`
and the tokenizer file beside it, applies the prompt templates and pools per-template embeddings
exactly as the PyTorch encoders do (normalise each, average, normalise), so its embeddings equal
``Detector.encode``'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovdet.deploy.metadata import TEXT_METADATA_KEY, parse_metadata
from ovdet.deploy.session import open_session
from ovdet.text.base import check_texts, template_prompts, validate_templates

__all__ = ["OnnxTextEncoder", "pool_templates_np"]


def pool_templates_np(feats: np.ndarray, n_templates: int) -> np.ndarray:
    """(T*K, D) template-major features → (K, D) float32 unit rows (as :func:`ovdet.text.base.pool_templates`)."""
    feats = feats.astype(np.float32)
    feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
    feats = feats.reshape(n_templates, -1, feats.shape[-1])  # (T, K, D)
    if n_templates == 1:
        return np.ascontiguousarray(feats[0])
    mean = feats.mean(0)
    return (mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class _HFTokenizer:
    """A ``tokenizers`` (Rust) fast tokenizer with the sentence-transformers settings:
    truncation to ``max_length``, padding to the longest text."""

    def __init__(self, path: Path, max_length: int, pad_id: int) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError('this text encoder needs the tokenizers package: pip install "ovdet[deploy]"') from e
        self.max_length = max_length
        self._tok = Tokenizer.from_file(str(path))
        self._tok.enable_truncation(max_length=max_length)
        self._tok.enable_padding(pad_id=pad_id)

    def __call__(self, texts: list[str]) -> tuple[dict[str, np.ndarray], list[bool]]:
        enc = self._tok.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),  # (N, L)
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        return feeds, [bool(e.overflowing) for e in enc]


class _CLIPFeeds:
    """CLIP's BPE tokenizer producing the text graph's feed."""

    def __init__(self, path: Path, context_length: int) -> None:
        from ovdet.deploy.tokenizer import CLIPTokenizer

        self.tokenizer = CLIPTokenizer(path, context_length)
        self.max_length = context_length

    def __call__(self, texts: list[str]) -> tuple[dict[str, np.ndarray], list[bool]]:
        truncated = [self.tokenizer.token_count(t) > self.max_length for t in texts]
        return {"input_ids": self.tokenizer(texts)}, truncated


class OnnxTextEncoder:
    """An exported text encoder; implements ``encode`` like :class:`ovdet.text.TextEncoder`.

    Args:
        path: the ``*.text.onnx`` file (its tokenizer file must sit beside it).
        providers / threads: see :func:`ovdet.deploy.session.open_session`.
        batch_size: prompts per run.

    Attributes:
        id: the source encoder's id (embedding files from ``ovdet embed`` name the same ids).
        dim: D. context_length: tokens per text. templates: default prompt templates.

    Raises:
        FileNotFoundError: the model or its tokenizer file is missing (named).
        ValueError: not an exported ovdet text encoder (named).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        batch_size: int = 256,
    ) -> None:
        self.path = Path(path)
        self._session = open_session(self.path, providers, threads)
        meta = parse_metadata(self._session.metadata, TEXT_METADATA_KEY, self.path)
        self.metadata: dict[str, Any] = meta
        self.id: str = meta["encoder_id"]
        self.dim = int(meta["dim"])
        self.context_length = int(meta["context_length"])
        self.templates = validate_templates(meta["templates"])
        self.batch_size = int(batch_size)
        tok_path = self.path.parent / meta["tokenizer_file"]
        if not tok_path.is_file():
            raise FileNotFoundError(f"{tok_path}: the tokenizer file of text encoder {self.path} is missing")
        if meta["tokenizer"] == "clip_bpe":
            self._tokenize: Any = _CLIPFeeds(tok_path, self.context_length)
        elif meta["tokenizer"] == "hf_tokenizers":
            self._tokenize = _HFTokenizer(tok_path, self.context_length, int(meta.get("pad_id", 0)))
        else:
            raise ValueError(f"{self.path}: unknown tokenizer kind {meta['tokenizer']!r}")

    def __repr__(self) -> str:
        return f"OnnxTextEncoder({str(self.path)!r}, id={self.id!r}, dim={self.dim})"

    def encode(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """Embed ``texts`` (K strings) with the prompt templates (default: the export's).

        Returns:
            (K, D) float32 rows of unit L2 norm; (0, D) for no texts.
        """
        texts = check_texts(texts)
        templates = self.templates if templates is None else validate_templates(templates)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prompts = template_prompts(texts, templates)  # T*K
        out = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i : i + self.batch_size]
            feeds, truncated = self._tokenize(chunk)
            for p, cut in zip(chunk, truncated):
                if cut:
                    shown = p if len(p) <= 80 else p[:77] + "..."
                    warnings.warn(
                        f"text {shown!r} needs more than the {self.context_length} tokens the text encoder "
                        f"{self.id!r} reads; it is truncated",
                        stacklevel=2,
                    )
            out.append(self._session.run({k: feeds[k] for k in self._session.input_names})[0])  # (n, D)
        return pool_templates_np(np.concatenate(out), len(templates))
