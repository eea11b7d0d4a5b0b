"""open_clip text towers — the one module that touches open_clip and its private API.

:class:`OpenCLIPTextEncoder` is the text tower of any built-in open_clip model (pretrained tag,
local checkpoint file or random weights), or a small randomly initialised custom tower for tests
and tiny configs. Only the text tower is ever built; the vision tower is never allocated.
``open_clip`` is imported on first use only, so importing this module never touches the
network. Checkpoints are read with ``torch.load(weights_only=True)``, safetensors, or (OpenAI's
original TorchScript files) TorchScript's own loader; nothing is unpickled.

Private open_clip API used here: ``open_clip.model._build_text_tower`` (build only the text
tower), ``open_clip.pretrained._get_safe_alternatives`` and ``HF_WEIGHTS_NAME`` (find cached
downloads without the network).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import urllib.parse
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ovdet.config import TextConfig
from ovdet.io import can_reach, file_sha256
from ovdet.text.base import (
    TextEncoderUnavailable,
    apply_template,
    check_texts,
    pool_templates,
    template_prompts,
    validate_templates,
)

__all__ = [
    "CLIP_VOCAB_SIZE",
    "CUSTOM_KEYS",
    "DEFAULT_BATCH_SIZE",
    "OpenCLIPTextEncoder",
    "clip_token_count",
    "openclip_encoder_id",
]

#: keys of ``TextConfig.custom``, all required.
CUSTOM_KEYS: tuple[str, ...] = ("embed_dim", "context_length", "vocab_size", "width", "heads", "layers")
#: vocabulary size of open_clip's SimpleTokenizer (CLIP BPE); a custom tower must match it.
CLIP_VOCAB_SIZE = 49408
#: texts per forward pass of the text tower.
DEFAULT_BATCH_SIZE = 256


def validate_custom(custom: Mapping[str, Any]) -> dict[str, int]:
    """Check a ``TextConfig.custom`` mapping; returns a plain dict in ``CUSTOM_KEYS`` order."""
    if not isinstance(custom, Mapping):
        raise TypeError(f"text.custom must be a mapping with keys {list(CUSTOM_KEYS)}, got {type(custom).__name__}")
    missing = [k for k in CUSTOM_KEYS if k not in custom]
    unknown = sorted(set(custom) - set(CUSTOM_KEYS))
    if missing or unknown:
        raise ValueError(
            f"text.custom needs exactly the keys {list(CUSTOM_KEYS)}; missing {missing}, unknown {unknown}"
        )
    out: dict[str, int] = {}
    for k in CUSTOM_KEYS:
        v = custom[k]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"text.custom.{k} must be a positive integer, got {v!r}")
        out[k] = v
    if out["vocab_size"] != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"text.custom.vocab_size={out['vocab_size']} does not match the CLIP tokenizer's "
            f"{CLIP_VOCAB_SIZE} tokens; set vocab_size: {CLIP_VOCAB_SIZE}"
        )
    if out["width"] % out["heads"]:
        raise ValueError(f"text.custom.heads={out['heads']} must divide text.custom.width={out['width']}")
    if out["context_length"] < 3:
        raise ValueError(
            f"text.custom.context_length={out['context_length']} leaves no room for a token "
            f"between the start and end tokens; use at least 3 (CLIP uses 77)"
        )
    return out


# --------------------------------------------------------------------------- identifiers
def clip_token_count(tokenizer: Any, text: str) -> int | None:
    """Tokens ``text`` needs with an open_clip tokenizer, start and end tokens included; None unless
    it is CLIP's BPE tokenizer with no token reduction (the one case where the count is exact)."""
    from open_clip.tokenizer import SimpleTokenizer

    if isinstance(tokenizer, SimpleTokenizer) and tokenizer.reduction_fn is None:
        return len(tokenizer.encode(text)) + 2
    return None


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _library_versions() -> dict[str, str]:
    # Random initialisation depends on open_clip's init code and torch's RNG, so random towers
    # get a new id (and never hit stale cache entries) when either library changes.
    try:
        oc = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - open_clip is a dependency
        oc = "unknown"
    return {"open_clip": oc, "torch": torch.__version__.split("+")[0]}


@functools.lru_cache(maxsize=1)
def _openai_hashes() -> frozenset[str]:
    """sha256 of OpenAI's CLIP files: open_clip's ``openai`` URLs name the folder after them."""
    import open_clip

    out = set()
    for model, tag in open_clip.list_pretrained():
        if tag == "openai":
            url = (open_clip.get_pretrained_cfg(model, tag) or {}).get("url") or ""
            out.update(
                part for part in url.split("/") if len(part) == 64 and all(c in "0123456789abcdef" for c in part)
            )
    return frozenset(out)


def file_needs_quick_gelu(model: str, path: str) -> bool:
    """Whether a local checkpoint holds OpenAI CLIP weights, trained with QuickGELU, for a model
    whose open_clip config says GELU (e.g. ``ViT-B-32`` rather than ``ViT-B-32-quickgelu``).

    A file is recognised as OpenAI's when it is OpenAI's original TorchScript archive, when its
    sha256 is one of the OpenAI files open_clip knows, or when its path names ``openai`` (the
    Hugging Face cache folder ``timm/vit_base_patch32_clip_224.openai``, a renamed download).
    Running such weights with GELU gives silently wrong embeddings.
    """
    import open_clip

    model_cfg = open_clip.get_model_config(model) or {}
    if model_cfg.get("quick_gelu", False):
        return False
    if _is_torchscript_archive(path):
        return True
    if "openai" in os.path.abspath(path).lower():
        return True
    return file_sha256(path) in _openai_hashes()


def openclip_encoder_id(cfg: TextConfig) -> str:
    """The ``id`` that :meth:`OpenCLIPTextEncoder.from_config` gives ``cfg``, without building it.

    Lets a caller look embeddings up in an :class:`EmbeddingCache` before paying for (or
    downloading) the encoder. A local checkpoint file is hashed (its sha256 prefix is part of
    the id), so replacing the file's contents changes the id.

    Returns:
        ``"open_clip:custom:<hash>"`` for a custom tower, ``"open_clip:<model>:random:<hash>"``
        for random weights, ``"open_clip:<model>:file:<sha256[:16]>"`` for a checkpoint file
        (``…:quickgelu`` appended when the file's OpenAI weights switch the activation, see
        :func:`file_needs_quick_gelu`), ``"open_clip:<model>:<tag>"`` for a pretrained tag.
    """
    if cfg.custom is not None:
        custom = validate_custom(cfg.custom)
        return "open_clip:custom:" + _sha256_json({"custom": custom, "seed": cfg.seed, **_library_versions()})[:16]
    if cfg.pretrained is None:
        return f"open_clip:{cfg.model}:random:" + _sha256_json({"seed": cfg.seed, **_library_versions()})[:16]
    if os.path.isfile(cfg.pretrained):
        quick = ":quickgelu" if file_needs_quick_gelu(cfg.model, cfg.pretrained) else ""
        return f"open_clip:{cfg.model}:file:{file_sha256(cfg.pretrained)[:16]}{quick}"
    return f"open_clip:{cfg.model}:{cfg.pretrained}"


# --------------------------------------------------------------------------- weights
def _offline_message(model: str, tag: str, pcfg: Mapping[str, Any], reason: str) -> str:
    sources = []
    if pcfg.get("hf_hub"):
        sources.append(f"Hugging Face hub repo {pcfg['hf_hub'].rstrip('/')!r}")
    if pcfg.get("url"):
        sources.append(f"URL {pcfg['url']}")
    where = " or ".join(sources) or "its download location"
    gelu = ""
    if pcfg.get("quick_gelu") and not model.endswith("-quickgelu") and _has_model_config(f"{model}-quickgelu"):
        # A local file carries no activation info; the tag implied QuickGELU.
        gelu = (
            f" together with model '{model}-quickgelu' (`--text-model {model}-quickgelu`; these weights were "
            f"trained with QuickGELU)"
        )
    return (
        f"cannot load the open_clip text encoder {model!r} with pretrained={tag!r}: {reason}. "
        f"This machine appears to be offline (open_clip would fetch the weights from {where}). "
        f"To work offline, either (1) download that checkpoint file on a connected machine, copy it "
        f"here and pass its local path as `pretrained` (TextConfig.pretrained, or `--text-weights "
        f"PATH` of ovdet predict/val/embed){gelu}, or (2) run `ovdet embed` on a connected machine to write the class embeddings to a "
        f"file and load them here with `Detector.set_class_embeddings(names, emb)` "
        f"(see ovdet.text.load_embeddings); no text encoder is needed then. "
        f"Weights already in the Hugging Face cache are found without network access."
    )


def _has_model_config(model: str) -> bool:
    import open_clip

    return open_clip.get_model_config(model) is not None


def _find_cached_pretrained(pcfg: Mapping[str, Any], cache_dir: str | None) -> str | None:
    """Path of an already-downloaded checkpoint for an open_clip pretrained config, or None.

    Mirrors where ``open_clip.download_pretrained`` would put it; never touches the network.
    """
    import open_clip.pretrained as ocp

    hf_hub = pcfg.get("hf_hub") or ""
    if hf_hub and ocp.has_hf_hub():
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        default = getattr(ocp, "HF_WEIGHTS_NAME", "open_clip_pytorch_model.bin")
        filename = filename or default
        safe_alternatives = getattr(ocp, "_get_safe_alternatives", lambda f: ())
        for name in [*safe_alternatives(filename), filename]:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = pcfg.get("url") or ""
    if url:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(target):
            return target
    return None


def _resolve_pretrained_tag(model: str, tag: str, cache_dir: str | None) -> tuple[str, dict[str, Any]]:
    """Local checkpoint path for an open_clip (model, tag), downloading it when needed.

    Fails fast when offline: a cached file is used without network access; otherwise the
    weights host is probed once (a few seconds at most) before open_clip's download, whose
    own retries take most of a minute to give up.

    Returns:
        (path, pretrained config of the tag).

    Raises:
        ValueError: ``tag`` is not a pretrained tag of ``model`` (the known tags are listed).
        TextEncoderUnavailable: the weights are not cached and cannot be downloaded.
    """
    import open_clip
    import open_clip.pretrained as ocp

    pcfg = dict(open_clip.get_pretrained_cfg(model, tag) or {})
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ValueError(
            f"pretrained={tag!r} for open_clip model {model!r} is neither an existing file nor a "
            f"known tag; known tags: {tags}. Pass a tag, the path of a local checkpoint, or "
            f"null for random weights"
        )
    if pcfg.get("file"):
        return str(pcfg["file"]), pcfg
    cached = _find_cached_pretrained(pcfg, cache_dir)
    if cached is not None:
        return cached, pcfg

    use_hub = bool(pcfg.get("hf_hub")) and ocp.has_hf_hub()
    if use_hub:
        from huggingface_hub import constants as hf_constants

        if hf_constants.HF_HUB_OFFLINE:
            raise TextEncoderUnavailable(
                _offline_message(model, tag, pcfg, "HF_HUB_OFFLINE is set and the weights are not in the local cache")
            )
        probe = hf_constants.ENDPOINT
    else:
        probe = pcfg.get("url") or ""
    if probe and not can_reach(probe):
        host = urllib.parse.urlsplit(probe).hostname
        raise TextEncoderUnavailable(
            _offline_message(model, tag, pcfg, f"the weights are not cached and {host} cannot be reached")
        )
    try:
        path = ocp.download_pretrained(pcfg, cache_dir=cache_dir)
    except Exception as e:  # open_clip and huggingface_hub raise many types; all mean "no weights"
        raise TextEncoderUnavailable(_offline_message(model, tag, pcfg, f"download failed ({e})")) from e
    if not path or not os.path.isfile(path):
        raise TextEncoderUnavailable(_offline_message(model, tag, pcfg, "download produced no file"))
    return path, pcfg


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in z.namelist())


def _read_state_dict(path: str) -> tuple[dict[str, torch.Tensor], bool]:
    """Tensors of a checkpoint file, without unpickling arbitrary objects.

    Returns:
        (state dict, whether the file is an OpenAI TorchScript CLIP archive).

    Raises:
        ValueError: the file cannot be read as a checkpoint (the file is named).
    """
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu"), False
        if _is_torchscript_archive(path):
            # OpenAI's original CLIP files are TorchScript archives, which torch.load refuses
            # with weights_only=True. TorchScript's loader restores only tensors and TorchScript
            # types (no arbitrary Python objects); only the parameters are kept.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                module = torch.jit.load(path, map_location="cpu")
            sd = dict(module.state_dict())
            openai = "input_resolution" in sd
            for k in ("input_resolution", "context_length", "vocab_size"):
                sd.pop(k, None)
            return sd, openai
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, Mapping) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"checkpoint {path} is not a state dict of tensors")
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in ckpt.items()}
    return sd, False


def _text_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text-tower part of a full-CLIP or text-only state dict, in the tower's own key names.

    Handles open_clip's ``CLIP`` layout (text weights at top level next to ``visual.*``) and the
    ``CustomTextCLIP`` layout (``text.*``).
    """
    if any(k.startswith("text.") for k in sd):
        return {k[len("text.") :]: v for k, v in sd.items() if k.startswith("text.")}
    drop = {"logit_scale", "logit_bias", "attn_mask"}
    return {k: v for k, v in sd.items() if not k.startswith("visual.") and k not in drop}


def _load_tower_state(tower: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``tower`` exactly; raises ValueError starting with ``what`` otherwise."""
    own = tower.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:

        def few(xs: list[str]) -> str:
            return f"{xs[:4]}{f' and {len(xs) - 4} more' if len(xs) > 4 else ''}"

        raise ValueError(
            f"{what}: missing keys {few(missing)}, unexpected keys {few(unexpected)}, "
            f"shape mismatches (file vs model) {few(shapes)}"
        )
    tower.load_state_dict(state, strict=True)


def _build_tower(embed_dim: int, text_cfg: Mapping[str, Any], quick_gelu: bool, seed: int) -> nn.Module:
    """An open_clip text tower, initialised from ``seed`` without touching the global RNG."""
    from open_clip.model import _build_text_tower

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_text_tower(embed_dim, dict(text_cfg), quick_gelu=quick_gelu)


# --------------------------------------------------------------------------- encoder
class OpenCLIPTextEncoder:
    """The text tower of an open_clip model; implements :class:`TextEncoder`.

    Build one with :meth:`from_config` (or :func:`build_text_encoder`); the constructor only
    wraps already-built parts.

    Args:
        tower: open_clip text tower mapping (B, context_length) int64 tokens to (B, D) features.
        tokenizer: open_clip tokenizer: ``tokenizer(list[str]) -> (B, context_length)`` int64.
        id: stable identifier of the weights (see :func:`openclip_encoder_id`).
        dim: embedding size D.
        context_length: tokens per text.
        templates: default prompt templates, each with exactly one ``{}``.
        device: where the tower runs; results are always returned on CPU.
        batch_size: texts per forward pass.
    """

    def __init__(
        self,
        tower: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        id: str,
        dim: int,
        context_length: int,
        templates: Sequence[str] = ("{}",),
        device: str | torch.device = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.id = id
        self.dim = int(dim)
        self.context_length = int(context_length)
        self.templates = validate_templates(templates)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self._tower = tower.to(self.device).eval().requires_grad_(False)
        self._tokenizer = tokenizer

    @classmethod
    def from_config(
        cls,
        cfg: TextConfig,
        device: str | torch.device = "cpu",
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cache_dir: str | None = None,
    ) -> OpenCLIPTextEncoder:
        """Build the encoder a :class:`~ovdet.config.TextConfig` describes.

        * ``cfg.custom`` set: a random tower of that shape, deterministic from ``cfg.seed``.
        * ``cfg.pretrained`` an existing file: the text weights of that checkpoint (a full
          open_clip/OpenAI CLIP state dict or just the text tower's; ``.safetensors``, a
          ``torch.save`` file read with ``weights_only=True``, or an OpenAI TorchScript archive).
          Activation: QuickGELU when the model name says so (``"ViT-B-32-quickgelu"``) or the
          file is recognised as OpenAI's (see :func:`file_needs_quick_gelu`; a warning says so);
          name the ``-quickgelu`` model for OpenAI weights the check cannot recognise.
        * ``cfg.pretrained`` a tag (``"openai"``): downloaded through open_clip, or taken from
          the local cache; the tag's activation (QuickGELU for OpenAI weights) is used.
        * ``cfg.pretrained`` None: random weights from ``cfg.seed``.

        The global RNG state is never changed.

        Args:
            cfg: text encoder config.
            device: where the tower runs.
            batch_size: texts per forward pass.
            cache_dir: open_clip download cache (default: open_clip's / Hugging Face's).

        Raises:
            ValueError: unknown model or tag, bad custom config, unreadable or mismatched checkpoint.
            TextEncoderUnavailable: pretrained weights cannot be downloaded (offline) and are not cached.
        """
        templates = validate_templates(cfg.templates)
        if cfg.custom is not None:
            custom = validate_custom(cfg.custom)
            from open_clip.tokenizer import SimpleTokenizer

            text_cfg = {k: custom[k] for k in ("context_length", "vocab_size", "width", "heads", "layers")}
            tower = _build_tower(custom["embed_dim"], text_cfg, quick_gelu=False, seed=cfg.seed)
            tokenizer = SimpleTokenizer(context_length=custom["context_length"])
            return cls(
                tower,
                tokenizer,
                id=openclip_encoder_id(cfg),
                dim=custom["embed_dim"],
                context_length=custom["context_length"],
                templates=templates,
                device=device,
                batch_size=batch_size,
            )

        import open_clip

        model = cfg.model
        if ":" in model:
            raise ValueError(
                f"text.model={model!r}: schema model names (hf-hub:, local-dir:) are not supported; "
                f"use a built-in open_clip model name and pass a local checkpoint as `pretrained`"
            )
        model_cfg = open_clip.get_model_config(model)
        if model_cfg is None:
            raise ValueError(
                f"unknown open_clip model {model!r}; see open_clip.list_models() for the "
                f"{len(open_clip.list_models())} built-in names (e.g. 'ViT-B-32')"
            )
        if "multimodal_cfg" in model_cfg:
            raise ValueError(f"open_clip model {model!r} is a CoCa model, whose text tower is not supported")

        # Resolve the weights first, so an offline machine fails before any model is built.
        path: str | None = None
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
        if cfg.pretrained is not None:
            if os.path.isfile(cfg.pretrained):
                path = cfg.pretrained
            else:
                path, pcfg = _resolve_pretrained_tag(model, cfg.pretrained, cache_dir)
                quick_gelu = quick_gelu or bool(pcfg.get("quick_gelu", False))
        state: dict[str, torch.Tensor] | None = None
        if path is not None:
            if not quick_gelu and os.path.isfile(cfg.pretrained) and file_needs_quick_gelu(model, path):
                quick_gelu = True
                quick_name = f"{model}-quickgelu"
                hint = (
                    f"set text.model: {quick_name} (--text-model {quick_name}) to say so explicitly"
                    if _has_model_config(quick_name)
                    else ""
                )
                warnings.warn(
                    f"text weights {path} are OpenAI CLIP weights, trained with QuickGELU, but open_clip model "
                    f"{model!r} uses GELU: running them with QuickGELU, as they were trained. {hint}",
                    stacklevel=2,
                )
            full, _ = _read_state_dict(path)
            state = _text_state_dict(full)
            del full

        text_cfg = dict(model_cfg["text_cfg"])
        if "hf_model_name" in text_cfg:
            text_cfg["hf_model_pretrained"] = False  # weights come from the checkpoint (or stay random)
        try:
            tower = _build_tower(model_cfg["embed_dim"], text_cfg, quick_gelu=quick_gelu, seed=cfg.seed)
            tokenizer = open_clip.get_tokenizer(model)
        except OSError as e:  # Hugging Face text towers/tokenizers fetch their config at build time
            raise TextEncoderUnavailable(
                f"cannot build the text tower or tokenizer of open_clip model {model!r}: {e}. Its Hugging "
                f"Face config/tokenizer must be downloaded once on a connected machine (or use "
                f"`ovdet embed` there and `Detector.set_class_embeddings` here)"
            ) from e
        if state is not None:
            _load_tower_state(
                tower, state, f"checkpoint {path} does not fit the text tower of open_clip model {model!r}"
            )
        ctx = int(getattr(tokenizer, "context_length", None) or text_cfg.get("context_length", 77))
        return cls(
            tower,
            tokenizer,
            id=openclip_encoder_id(cfg),
            dim=model_cfg["embed_dim"],
            context_length=ctx,
            templates=templates,
            device=device,
            batch_size=batch_size,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, context_length={self.context_length}, "
            f"templates={self.templates!r}, device={str(self.device)!r})"
        )

    def token_count(self, text: str) -> int | None:
        """Tokens ``text`` needs, start and end tokens included; None if the tokenizer can't say."""
        return clip_token_count(self._tokenizer, text)

    def encode(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Embed ``texts`` (see :meth:`TextEncoder.encode`).

        Texts longer than ``context_length`` tokens are truncated (the end token is kept), with
        a warning naming the text.

        Args:
            texts: K strings.
            templates: prompt templates, each with exactly one ``{}``; None uses ``self.templates``.

        Returns:
            (K, D) float32 on CPU, rows of unit L2 norm; (0, D) for no texts.
        """
        texts = check_texts(texts)
        templates = self.templates if templates is None else validate_templates(templates)
        if not texts:
            return torch.empty(0, self.dim)
        for text in texts:
            n = max((self.token_count(apply_template(t, text)) or 0) for t in templates)
            if n > self.context_length:
                shown = text if len(text) <= 80 else text[:77] + "..."
                warnings.warn(
                    f"text {shown!r} needs {n} tokens with its prompt template but the text encoder "
                    f"{self.id!r} reads {self.context_length} (start/end included); it is truncated",
                    stacklevel=2,
                )
        return pool_templates(self._encode_prompts(template_prompts(texts, templates)), len(templates)).contiguous()

    @property
    def module(self) -> nn.Module:
        """The text tower (for fine-tuning: ``encode_trainable`` runs it with gradients)."""
        return self._tower

    def encode_trainable(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Like :meth:`encode`, but differentiable, on the tower's device (text-encoder fine-tuning).

        Returns:
            (K, D) float32 unit-norm rows that carry gradients to the tower's parameters.
        """
        texts = check_texts(texts)
        templates = self.templates if templates is None else validate_templates(templates)
        tokens = self._tokenizer(template_prompts(texts, templates)).to(self.device)  # (T*K, ctx)
        feats = self._tower(tokens)
        if isinstance(feats, tuple):
            feats = feats[0]
        return pool_templates(feats, len(templates))  # (K, D)

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(N,) prompts → (N, D) float32 CPU unit-norm rows, in batches of ``batch_size``."""
        out = []
        with torch.no_grad():
            for i in range(0, len(prompts), self.batch_size):
                tokens = self._tokenizer(prompts[i : i + self.batch_size]).to(self.device)  # (B, ctx)
                feats = self._tower(tokens)  # (B, D)
                if isinstance(feats, tuple):  # towers built with output_tokens return (pooled, tokens)
                    feats = feats[0]
                out.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out)  # (N, D)
