"""ONNX export of a text encoder, with the tokenizer it needs, for deployments without PyTorch.

Two families, as in :mod:`ovdet.text`:

* open_clip towers with CLIP's BPE tokenizer: the graph maps ``input_ids`` (N, context_length)
  int64 to unit-norm embeddings (N, D); the BPE merges file is copied beside the model and read
  by :class:`ovdet.deploy.tokenizer.CLIPTokenizer` (pure Python).
* sentence-transformers models (BERT family): the graph maps ``input_ids``, ``attention_mask``
  and ``token_type_ids`` (N, L) int64, L dynamic, to the model's own pooled, normalised
  sentence embedding (N, D); the fast tokenizer's ``tokenizer.json`` is written beside it and
  read with the ``tokenizers`` library.

Prompt templates are applied, and per-template embeddings pooled, by the runtime
(:class:`ovdet.deploy.text.OnnxTextEncoder`), exactly as :func:`ovdet.text.base.pool_templates` does.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ovdet.deploy.metadata import TEXT_METADATA_KEY
from ovdet.export.onnx import export_files
from ovdet.io import atomic_write, atomic_write_text
from ovdet.text.base import TextEncoder
from ovdet.text.openclip import OpenCLIPTextEncoder
from ovdet.text.sentence import SentenceTransformerEncoder

__all__ = ["export_text_encoder"]


class _CLIPTextGraph(nn.Module):
    """(N, ctx) int64 token ids → (N, D) unit-norm embeddings of an open_clip tower."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        feats = self.tower(input_ids)
        if isinstance(feats, tuple):  # towers built with output_tokens return (pooled, tokens)
            feats = feats[0]
        return F.normalize(feats.float(), dim=-1)


class _SentenceGraph(nn.Module):
    """(N, L) ids, mask and token types → (N, D) a sentence-transformers model's unit-norm embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return F.normalize(self.model(features)["sentence_embedding"].float(), dim=-1)


def _export(graph: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], axes: dict, opset: int) -> Any:
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and exporter deprecation chatter
        torch.onnx.export(
            graph.eval(),
            example,
            buffer,
            dynamo=False,
            input_names=names,
            output_names=["embeddings"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def export_text_encoder(
    encoder: TextEncoder, model_path: str | Path, opset: int = 17
) -> tuple[dict[str, Any], list[Path]]:
    """Export ``encoder`` beside the detector file ``model_path``.

    Args:
        encoder: an :class:`~ovdet.text.OpenCLIPTextEncoder` with CLIP's BPE tokenizer, or a
            :class:`~ovdet.text.SentenceTransformerEncoder` with a fast tokenizer.
        model_path: the detector's ``.onnx`` path; text files are named after it
            (:func:`~ovdet.export.onnx.export_files`).
        opset: ONNX opset.

    Returns:
        (the text metadata, the files written). The metadata is also stored in the text model
        under :data:`TEXT_METADATA_KEY`; file names in it are relative to the model's folder.

    Raises:
        ValueError: an encoder or tokenizer this export cannot carry (named), with the way
            around it (``ovdet embed`` files work with any encoder).
    """
    import onnx

    files = export_files(model_path)
    written: list[Path] = []
    meta: dict[str, Any] = {
        "format": "ovdet-text-onnx",
        "encoder_id": encoder.id,
        "dim": int(encoder.dim),
        "context_length": int(encoder.context_length),
        "templates": list(encoder.templates),
    }
    if isinstance(encoder, OpenCLIPTextEncoder):
        from open_clip.tokenizer import SimpleTokenizer

        tokenizer = encoder._tokenizer
        if not isinstance(tokenizer, SimpleTokenizer) or tokenizer.reduction_fn is not None:
            raise ValueError(
                f"text encoder {encoder.id!r} uses tokenizer {type(tokenizer).__name__}, which the ONNX export "
                "cannot carry (CLIP's BPE tokenizer only); export with dynamic_vocab and load `ovdet embed` files instead"
            )
        tower = encoder.module
        device = next(tower.parameters()).device
        example = (tokenizer(["a photo of a dog", "person"]).to(device),)  # (2, ctx)
        proto = _export(_CLIPTextGraph(tower), example, ["input_ids"], {"input_ids": {0: "texts"}}, opset)
        from open_clip.tokenizer import default_bpe

        written.append(atomic_write(files["bpe"], lambda tmp: shutil.copyfile(default_bpe(), tmp)))
        meta.update(tokenizer="clip_bpe", tokenizer_file=files["bpe"].name, inputs=["input_ids"])
    elif isinstance(encoder, SentenceTransformerEncoder):
        model = encoder.module
        hf_tokenizer = getattr(model, "tokenizer", None)
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                f"text encoder {encoder.id!r} has no fast (tokenizer.json) tokenizer, which the ONNX export needs; "
                "export with dynamic_vocab and load `ovdet embed` files instead"
            )
        tok = hf_tokenizer(["a photo of a dog", "person"], padding=True, return_tensors="pt")
        device = encoder.device
        ids = tok["input_ids"].to(device)
        mask = tok["attention_mask"].to(device)
        types = tok.get("token_type_ids", torch.zeros_like(tok["input_ids"])).to(device)
        axes = {n: {0: "texts", 1: "tokens"} for n in ("input_ids", "attention_mask", "token_type_ids")}
        axes["embeddings"] = {0: "texts"}
        proto = _export(
            _SentenceGraph(model), (ids, mask, types), ["input_ids", "attention_mask", "token_type_ids"], axes, opset
        )
        written.append(atomic_write_text(files["tokenizer_json"], backend.to_str()))
        meta.update(
            tokenizer="hf_tokenizers",
            tokenizer_file=files["tokenizer_json"].name,
            inputs=["input_ids", "attention_mask", "token_type_ids"],
            pad_id=int(hf_tokenizer.pad_token_id or 0),
        )
    else:
        raise ValueError(
            f"cannot export text encoder {type(encoder).__name__} ({getattr(encoder, 'id', '?')}); "
            "export with dynamic_vocab and load `ovdet embed` files instead"
        )
    entry = proto.metadata_props.add()
    entry.key, entry.value = TEXT_METADATA_KEY, json.dumps(meta)
    written.insert(0, atomic_write(files["text_model"], lambda tmp: onnx.save(proto, str(tmp))))
    meta["file"] = files["text_model"].name
    return meta, written
