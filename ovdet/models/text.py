"""Text side of the detector: class names → L2-normalised embeddings.

* :class:`TextEncoder` — the protocol the detector needs (``id``, ``dim``, ``context_length``,
  ``templates``, ``encode``).
* :class:`OpenCLIPTextEncoder` — the text tower of any built-in open_clip model (pretrained tag,
  local checkpoint file or random weights), or a small randomly initialised custom tower for tests
  and tiny configs. Only the text tower is ever built; the vision tower is never allocated.
* :class:`EmbeddingCache` — embeddings keyed by (encoder id, templates, text), in memory and
  optionally in one safetensors file, so a vocabulary is encoded once per machine.
* :func:`save_embeddings` / :func:`load_embeddings` — the files ``ovdet embed`` writes, for
  machines without the text encoder's weights (``Detector.set_class_embeddings``).

``open_clip`` is imported on first use only, so importing this module is cheap and never touches
the network. Nothing here is unpickled: checkpoints are read with ``torch.load(weights_only=True)``
or safetensors.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import socket
import tempfile
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ovdet.config import TextConfig

#: keys of ``TextConfig.custom``, all required.
CUSTOM_KEYS: tuple[str, ...] = ("embed_dim", "context_length", "vocab_size", "width", "heads", "layers")
#: vocabulary size of open_clip's SimpleTokenizer (CLIP BPE); a custom tower must match it.
CLIP_VOCAB_SIZE = 49408
#: texts per forward pass of the text tower.
DEFAULT_BATCH_SIZE = 256
#: seconds to wait for the weights host before declaring the machine offline.
CONNECT_TIMEOUT_S = 3.0

_CACHE_FORMAT = "ovdet-embedding-cache"
_EMBEDDINGS_FORMAT = "ovdet-embeddings"
_FORMAT_VERSION = "1"

CacheKey = tuple[str, tuple[str, ...], str]


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


# --------------------------------------------------------------------------- validation
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
        raise TypeError(f"class names must be a list of strings, got a single string {names!r}; "
                        f"wrap it in a list: [{names!r}]")
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
        raise TypeError(f"templates must be a list of strings, got a single string {templates!r}; "
                        f"wrap it in a list: [{templates!r}]")
    out = tuple(templates)
    if not out:
        raise ValueError("no prompt templates: use ('{}',) to feed names as they are")
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"template at index {i} must be a string, got {type(t).__name__} ({t!r})")
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} (index {i}) must contain exactly one '{{}}' where the "
                             f"class name goes, found {t.count('{}')}")
    return out


def apply_template(template: str, text: str) -> str:
    """``template`` with its ``{}`` replaced by ``text`` (other braces are kept literally)."""
    return template.replace("{}", text, 1)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of strings, got a single string {texts!r}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text at index {i} must be a string, got {type(t).__name__} ({t!r})")
    return out


def _validate_custom(custom: Mapping[str, Any]) -> dict[str, int]:
    """Check a ``TextConfig.custom`` mapping; returns a plain dict in ``CUSTOM_KEYS`` order."""
    if not isinstance(custom, Mapping):
        raise TypeError(f"text.custom must be a mapping with keys {list(CUSTOM_KEYS)}, got {type(custom).__name__}")
    missing = [k for k in CUSTOM_KEYS if k not in custom]
    unknown = sorted(set(custom) - set(CUSTOM_KEYS))
    if missing or unknown:
        raise ValueError(f"text.custom needs exactly the keys {list(CUSTOM_KEYS)}; "
                         f"missing {missing}, unknown {unknown}")
    out: dict[str, int] = {}
    for k in CUSTOM_KEYS:
        v = custom[k]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"text.custom.{k} must be a positive integer, got {v!r}")
        out[k] = v
    if out["vocab_size"] != CLIP_VOCAB_SIZE:
        raise ValueError(f"text.custom.vocab_size={out['vocab_size']} does not match the CLIP tokenizer's "
                         f"{CLIP_VOCAB_SIZE} tokens; set vocab_size: {CLIP_VOCAB_SIZE}")
    if out["width"] % out["heads"]:
        raise ValueError(f"text.custom.heads={out['heads']} must divide text.custom.width={out['width']}")
    if out["context_length"] < 3:
        raise ValueError(f"text.custom.context_length={out['context_length']} leaves no room for a token "
                         f"between the start and end tokens; use at least 3 (CLIP uses 77)")
    return out


# --------------------------------------------------------------------------- identifiers
def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _library_versions() -> dict[str, str]:
    # Random initialisation depends on open_clip's init code and torch's RNG, so random towers
    # get a new id (and never hit stale cache entries) when either library changes.
    try:
        oc = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - open_clip is a dependency
        oc = "unknown"
    return {"open_clip": oc, "torch": torch.__version__.split("+")[0]}


def text_encoder_id(cfg: TextConfig) -> str:
    """The ``id`` that :func:`build_text_encoder` would give ``cfg``, without building it.

    Lets a caller look embeddings up in an :class:`EmbeddingCache` before paying for (or
    downloading) the encoder. A local checkpoint file is hashed (its sha256 prefix is part of
    the id), so replacing the file's contents changes the id.

    Returns:
        ``"open_clip:custom:<hash>"`` for a custom tower, ``"open_clip:<model>:random:<hash>"``
        for random weights, ``"open_clip:<model>:file:<sha256[:16]>"`` for a checkpoint file,
        ``"open_clip:<model>:<tag>"`` for a pretrained tag.
    """
    if cfg.custom is not None:
        custom = _validate_custom(cfg.custom)
        return "open_clip:custom:" + _sha256_json({"custom": custom, "seed": cfg.seed, **_library_versions()})[:16]
    if cfg.pretrained is None:
        return f"open_clip:{cfg.model}:random:" + _sha256_json({"seed": cfg.seed, **_library_versions()})[:16]
    if os.path.isfile(cfg.pretrained):
        return f"open_clip:{cfg.model}:file:{_file_sha256(cfg.pretrained)[:16]}"
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
        gelu = f" together with model '{model}-quickgelu' (these weights were trained with QuickGELU)"
    return (
        f"cannot load the open_clip text encoder {model!r} with pretrained={tag!r}: {reason}. "
        f"This machine appears to be offline (open_clip would fetch the weights from {where}). "
        f"To work offline, either (1) download that checkpoint file on a connected machine, copy it "
        f"here and pass its local path as `pretrained` (TextConfig.pretrained / `--text-weights "
        f"PATH`){gelu}, or (2) run `ovdet embed` on a connected machine to write the class embeddings to a "
        f"file and load them here with `Detector.set_class_embeddings(names, emb)` "
        f"(see ovdet.models.text.load_embeddings); no text encoder is needed then. "
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


def _can_reach(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    With a proxy configured the direct probe says nothing, so it answers True and lets the
    download itself try.
    """
    proxies = urllib.request.getproxies()
    if any(k in proxies for k in ("https", "http", "all")):
        return True
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return True
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


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
        raise ValueError(f"pretrained={tag!r} for open_clip model {model!r} is neither an existing file nor a "
                         f"known tag; known tags: {tags}. Pass a tag, the path of a local checkpoint, or "
                         f"null for random weights")
    if pcfg.get("file"):
        return str(pcfg["file"]), pcfg
    cached = _find_cached_pretrained(pcfg, cache_dir)
    if cached is not None:
        return cached, pcfg

    use_hub = bool(pcfg.get("hf_hub")) and ocp.has_hf_hub()
    if use_hub:
        from huggingface_hub import constants as hf_constants

        if hf_constants.HF_HUB_OFFLINE:
            raise TextEncoderUnavailable(_offline_message(model, tag, pcfg, "HF_HUB_OFFLINE is set and the "
                                                          "weights are not in the local cache"))
        probe = hf_constants.ENDPOINT
    else:
        probe = pcfg.get("url") or ""
    if probe and not _can_reach(probe):
        host = urllib.parse.urlsplit(probe).hostname
        raise TextEncoderUnavailable(_offline_message(
            model, tag, pcfg, f"the weights are not cached and {host} cannot be reached"))
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
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items()}
    return sd, False


def _text_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text-tower part of a full-CLIP or text-only state dict, in the tower's own key names.

    Handles open_clip's ``CLIP`` layout (text weights at top level next to ``visual.*``) and the
    ``CustomTextCLIP`` layout (``text.*``).
    """
    if any(k.startswith("text.") for k in sd):
        return {k[len("text."):]: v for k, v in sd.items() if k.startswith("text.")}
    drop = {"logit_scale", "logit_bias", "attn_mask"}
    return {k: v for k, v in sd.items() if not k.startswith("visual.") and k not in drop}


def _load_tower_state(tower: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``tower`` exactly; raises ValueError starting with ``what`` otherwise."""
    own = tower.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        def few(xs: list[str]) -> str:
            return f"{xs[:4]}{' and %d more' % (len(xs) - 4) if len(xs) > 4 else ''}"

        raise ValueError(f"{what}: missing keys {few(missing)}, unexpected keys {few(unexpected)}, "
                         f"shape mismatches (file vs model) {few(shapes)}")
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
        id: stable identifier of the weights (see :func:`text_encoder_id`).
        dim: embedding size D.
        context_length: tokens per text.
        templates: default prompt templates, each with exactly one ``{}``.
        device: where the tower runs; results are always returned on CPU.
        batch_size: texts per forward pass.
    """

    def __init__(self, tower: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], *, id: str, dim: int,
                 context_length: int, templates: Sequence[str] = ("{}",),
                 device: str | torch.device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE) -> None:
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
    def from_config(cls, cfg: TextConfig, device: str | torch.device = "cpu", *,
                    batch_size: int = DEFAULT_BATCH_SIZE, cache_dir: str | None = None) -> "OpenCLIPTextEncoder":
        """Build the encoder a :class:`~ovdet.config.TextConfig` describes.

        * ``cfg.custom`` set: a random tower of that shape, deterministic from ``cfg.seed``.
        * ``cfg.pretrained`` an existing file: the text weights of that checkpoint (a full
          open_clip/OpenAI CLIP state dict or just the text tower's; ``.safetensors``, a
          ``torch.save`` file read with ``weights_only=True``, or an OpenAI TorchScript archive).
          Activation: QuickGELU when the model name says so (``"ViT-B-32-quickgelu"``) or the
          file is an OpenAI TorchScript archive — use the ``-quickgelu`` name for OpenAI weights
          converted to open_clip's format.
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
            custom = _validate_custom(cfg.custom)
            from open_clip.tokenizer import SimpleTokenizer

            text_cfg = {k: custom[k] for k in ("context_length", "vocab_size", "width", "heads", "layers")}
            tower = _build_tower(custom["embed_dim"], text_cfg, quick_gelu=False, seed=cfg.seed)
            tokenizer = SimpleTokenizer(context_length=custom["context_length"])
            return cls(tower, tokenizer, id=text_encoder_id(cfg), dim=custom["embed_dim"],
                       context_length=custom["context_length"], templates=templates, device=device,
                       batch_size=batch_size)

        import open_clip

        model = cfg.model
        if ":" in model:
            raise ValueError(f"text.model={model!r}: schema model names (hf-hub:, local-dir:) are not supported; "
                             f"use a built-in open_clip model name and pass a local checkpoint as `pretrained`")
        model_cfg = open_clip.get_model_config(model)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip model {model!r}; see open_clip.list_models() for the "
                             f"{len(open_clip.list_models())} built-in names (e.g. 'ViT-B-32')")
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
            full, is_openai_jit = _read_state_dict(path)
            state = _text_state_dict(full)
            quick_gelu = quick_gelu or is_openai_jit
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
                f"`ovdet embed` there and `Detector.set_class_embeddings` here)") from e
        if state is not None:
            _load_tower_state(tower, state, f"checkpoint {path} does not fit the text tower of open_clip "
                                            f"model {model!r}")
        ctx = int(getattr(tokenizer, "context_length", None) or text_cfg.get("context_length", 77))
        return cls(tower, tokenizer, id=text_encoder_id(cfg), dim=model_cfg["embed_dim"], context_length=ctx,
                   templates=templates, device=device, batch_size=batch_size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, context_length={self.context_length}, "
                f"templates={self.templates!r}, device={str(self.device)!r})")

    def token_count(self, text: str) -> int | None:
        """Tokens ``text`` needs, start and end tokens included; None if the tokenizer can't say."""
        from open_clip.tokenizer import SimpleTokenizer

        if isinstance(self._tokenizer, SimpleTokenizer) and self._tokenizer.reduction_fn is None:
            return len(self._tokenizer.encode(text)) + 2
        return None

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
        texts = _check_texts(texts)
        templates = self.templates if templates is None else validate_templates(templates)
        if not texts:
            return torch.empty(0, self.dim)
        for text in texts:
            n = max((self.token_count(apply_template(t, text)) or 0) for t in templates)
            if n > self.context_length:
                shown = text if len(text) <= 80 else text[:77] + "..."
                warnings.warn(f"text {shown!r} needs {n} tokens with its prompt template but the text encoder "
                              f"{self.id!r} reads {self.context_length} (start/end included); it is truncated",
                              stacklevel=2)
        prompts = [apply_template(t, x) for t in templates for x in texts]  # T*K, template-major
        feats = self._encode_prompts(prompts).view(len(templates), len(texts), self.dim)  # (T, K, D)
        emb = feats[0] if len(templates) == 1 else F.normalize(feats.mean(0), dim=-1)  # (K, D)
        return emb.contiguous()

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(N,) prompts → (N, D) float32 CPU unit-norm rows, in batches of ``batch_size``."""
        out = []
        with torch.no_grad():
            for i in range(0, len(prompts), self.batch_size):
                tokens = self._tokenizer(prompts[i:i + self.batch_size]).to(self.device)  # (B, ctx)
                feats = self._tower(tokens)  # (B, D)
                if isinstance(feats, tuple):  # towers built with output_tokens return (pooled, tokens)
                    feats = feats[0]
                out.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out)  # (N, D)


def build_text_encoder(cfg: TextConfig, device: str | torch.device = "cpu") -> TextEncoder:
    """The text encoder ``cfg`` describes (see :meth:`OpenCLIPTextEncoder.from_config`).

    Raises:
        ValueError: bad config or checkpoint (named).
        TextEncoderUnavailable: pretrained weights cannot be obtained (offline); the message says
            how to supply them locally.
    """
    return OpenCLIPTextEncoder.from_config(cfg, device=device)


# --------------------------------------------------------------------------- files
def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file through a temporary file in the same folder + ``os.replace``."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, metadata


def _cache_key_hash(key: CacheKey) -> str:
    encoder_id, templates, text = key
    return hashlib.sha256(json.dumps([encoder_id, list(templates), text]).encode()).hexdigest()


class EmbeddingCache:
    """Text embeddings keyed by (encoder id, templates, text); in memory, optionally on disk.

    The key holds everything an embedding depends on, so a different encoder, template set or
    text can never reuse an entry. The cache never builds an encoder: callers pass one to
    :meth:`get_or_encode`, or check :meth:`lookup` first (with :func:`text_encoder_id`) to
    avoid building it at all.

    On disk it is one safetensors file: tensor names are sha256 hashes of the keys, and the
    metadata entry ``"keys"`` maps each hash to its readable ``[encoder_id, templates, text]``.
    The constructor does no I/O: the file is read on first use (or by an explicit :meth:`load`)
    and written only by :meth:`save`.

    Args:
        path: safetensors file backing the cache, or None for memory only.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[CacheKey, torch.Tensor] = {}  # key -> (D,) float32 CPU
        self._loaded = path is None  # the file is read once, on first use

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 3):
            return False
        encoder_id, templates, text = key
        self._ensure_loaded()
        return (encoder_id, tuple(templates), text) in self._entries

    def __repr__(self) -> str:
        return f"EmbeddingCache(path={str(self.path) if self.path else None!r}, entries={len(self)})"

    def lookup(self, encoder_id: str, texts: Sequence[str], templates: Sequence[str]) -> torch.Tensor | None:
        """Embeddings of ``texts`` if every one is cached, else None; never encodes.

        Returns:
            (K, D) float32 (a new tensor), or None when any text is missing (or K = 0).
        """
        texts = _check_texts(texts)
        key_templates = validate_templates(templates)
        self._ensure_loaded()
        rows = [self._entries.get((encoder_id, key_templates, t)) for t in texts]
        if not rows or any(r is None for r in rows):
            return None
        return torch.stack(rows)  # type: ignore[arg-type]

    def get_or_encode(self, encoder: TextEncoder, texts: Sequence[str],
                      templates: Sequence[str] | None = None) -> torch.Tensor:
        """Embeddings of ``texts``, encoding only the ones not cached (in one encoder call).

        Args:
            encoder: the text encoder; its ``id`` is part of the key.
            texts: K strings (repeats allowed; each distinct missing text is encoded once).
            templates: prompt templates; None uses ``encoder.templates``.

        Returns:
            (K, D) float32 on CPU (a new tensor; editing it does not change the cache).

        Raises:
            RuntimeError: the encoder returned a wrongly shaped or non-finite result.
        """
        texts = _check_texts(texts)
        key_templates = encoder.templates if templates is None else templates
        key_templates = validate_templates(key_templates)
        eid = encoder.id
        self._ensure_loaded()
        missing = list(dict.fromkeys(t for t in texts if (eid, key_templates, t) not in self._entries))
        if missing:
            emb = encoder.encode(missing, templates=key_templates)  # (M, D)
            if not isinstance(emb, torch.Tensor) or emb.shape != (len(missing), encoder.dim):
                shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
                raise RuntimeError(f"text encoder {eid!r} returned {shape} for {len(missing)} texts, "
                                   f"expected ({len(missing)}, {encoder.dim})")
            emb = emb.detach().to("cpu", torch.float32)
            if not torch.isfinite(emb).all():
                raise RuntimeError(f"text encoder {eid!r} returned NaN or infinite embeddings")
            for text, row in zip(missing, emb):
                self._entries[(eid, key_templates, text)] = row.clone()
        if not texts:
            return torch.empty(0, encoder.dim)
        return torch.stack([self._entries[(eid, key_templates, t)] for t in texts])  # (K, D)

    def clear(self) -> None:
        """Forget all in-memory entries (the file is untouched and not re-read)."""
        self._entries.clear()
        self._loaded = True

    def load(self) -> int:
        """Add the entries of :attr:`path` that are not already in memory.

        Called automatically on first use; call it again to pick up entries other processes
        have saved since.

        A missing file is an empty cache. An unreadable or inconsistent file is reported with a
        warning naming it and ignored (the next :meth:`save` replaces it); in-memory entries are
        always kept.

        Returns:
            The number of entries added.
        """
        self._loaded = True
        if self.path is None or not self.path.exists():
            return 0
        try:
            entries = self._read(self.path)
        except Exception as e:  # safetensors, JSON and OS errors alike: a cache is never fatal
            warnings.warn(f"embedding cache {self.path} is unreadable ({type(e).__name__}: {e}); ignoring it, "
                          f"it will be rewritten on the next save()", stacklevel=2)
            return 0
        added = 0
        for key, row in entries.items():
            if key not in self._entries:
                self._entries[key] = row
                added += 1
        return added

    def save(self) -> Path:
        """Write the cache to :attr:`path` atomically (temporary file + ``os.replace``).

        Entries already in the file but not in memory (e.g. written by another process) are
        kept; in-memory entries win on conflict. An unreadable existing file is replaced.

        Returns:
            The path written.

        Raises:
            ValueError: the cache has no path.
            OSError: the file cannot be written.
        """
        if self.path is None:
            raise ValueError("this EmbeddingCache has no path; construct it with EmbeddingCache(path) to save")
        merged: dict[CacheKey, torch.Tensor] = {}
        if self.path.exists():
            try:
                merged.update(self._read(self.path))
            except Exception:  # unreadable: load() has warned already; it is replaced below
                pass
        merged.update(self._entries)
        tensors: dict[str, torch.Tensor] = {}
        keys: dict[str, list[Any]] = {}
        for key, row in merged.items():
            h = _cache_key_hash(key)
            tensors[h] = row.contiguous()
            keys[h] = [key[0], list(key[1]), key[2]]
        metadata = {"format": _CACHE_FORMAT, "version": _FORMAT_VERSION, "keys": json.dumps(keys)}
        _atomic_save(tensors, self.path, metadata)
        return self.path

    @staticmethod
    def _read(path: Path) -> dict[CacheKey, torch.Tensor]:
        """Entries of a cache file; raises ValueError (or the reader's error) when inconsistent."""
        tensors, metadata = _read_safetensors(path)
        if metadata.get("format") != _CACHE_FORMAT:
            raise ValueError(f"'format' is {metadata.get('format')!r}, expected {_CACHE_FORMAT!r}")
        keys = json.loads(metadata["keys"])
        if set(keys) != set(tensors):
            raise ValueError("tensor names and metadata keys differ")
        out: dict[CacheKey, torch.Tensor] = {}
        for h, (encoder_id, templates, text) in keys.items():
            key: CacheKey = (str(encoder_id), tuple(templates), str(text))
            row = tensors[h]
            if _cache_key_hash(key) != h:
                raise ValueError(f"entry {h[:12]}... does not match its key {key!r}")
            if row.ndim != 1 or row.dtype != torch.float32 or not torch.isfinite(row).all():
                raise ValueError(f"entry for {key!r} is not a finite 1-D float32 vector")
            out[key] = row
        return out


def save_embeddings(path: str | Path, names: Sequence[str], emb: torch.Tensor, encoder_id: str,
                    templates: Sequence[str]) -> Path:
    """Write class embeddings to a safetensors file (the format ``ovdet embed`` produces).

    The file holds one tensor ``"embeddings"`` (K, D) float32; the metadata holds the names
    (JSON list), the encoder id and the templates (JSON list), readable with any safetensors tool.

    Args:
        path: file to write (atomically).
        names: K class names (validated like :func:`validate_class_names`).
        emb: (K, D) embeddings, one row per name.
        encoder_id: the id of the encoder that produced them.
        templates: prompt templates used.

    Returns:
        The path written.

    Raises:
        ValueError: row count or shape does not match the names, or values are not finite.
    """
    path = Path(path)
    names = validate_class_names(names)
    templates = validate_templates(templates)
    emb = torch.as_tensor(emb)
    if emb.ndim != 2 or emb.shape[0] != len(names):
        raise ValueError(f"embeddings for {path} must be (K, D) with K = {len(names)} names, got {tuple(emb.shape)}")
    emb = emb.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(emb).all():
        raise ValueError(f"embeddings for {path} contain NaN or infinite values")
    metadata = {"format": _EMBEDDINGS_FORMAT, "version": _FORMAT_VERSION, "names": json.dumps(names),
                "encoder_id": str(encoder_id), "templates": json.dumps(list(templates))}
    _atomic_save({"embeddings": emb}, path, metadata)
    return path


def load_embeddings(path: str | Path) -> tuple[list[str], torch.Tensor, dict[str, Any]]:
    """Read a file written by :func:`save_embeddings` / ``ovdet embed``.

    Returns:
        (names: K strings, embeddings: (K, D) float32, meta: ``{"encoder_id": str,
        "templates": tuple[str, ...], "format": str, "version": str}``).

    Raises:
        FileNotFoundError: the file does not exist (named).
        ValueError: the file is unreadable, lacks the embeddings or names, or its row count does
            not match its names (the file is named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    try:
        tensors, metadata = _read_safetensors(path)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors embeddings file ({type(e).__name__}: {e}); "
                         f"write one with `ovdet embed`") from e
    if "embeddings" not in tensors:
        raise ValueError(f"{path}: no 'embeddings' tensor (found {sorted(tensors)}); write one with `ovdet embed`")
    if "names" not in metadata:
        raise ValueError(f"{path}: no 'names' metadata; write the file with `ovdet embed`")
    try:
        names = json.loads(metadata["names"])
        templates = tuple(json.loads(metadata.get("templates", '["{}"]')))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: metadata is not valid JSON ({e})") from e
    try:
        names = validate_class_names(names)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad class names: {e}") from e
    emb = tensors["embeddings"]
    if emb.ndim != 2:
        raise ValueError(f"{path}: embeddings must be 2-D (K, D), got shape {tuple(emb.shape)}")
    if emb.shape[0] != len(names):
        raise ValueError(f"{path}: {len(names)} names but {emb.shape[0]} embedding rows")
    emb = emb.to(torch.float32)
    if not torch.isfinite(emb).all():
        raise ValueError(f"{path}: embeddings contain NaN or infinite values")
    meta = {"encoder_id": metadata.get("encoder_id", ""), "templates": templates,
            "format": metadata.get("format", ""), "version": metadata.get("version", "")}
    return names, emb, meta


__all__ = [
    "CLIP_VOCAB_SIZE", "CUSTOM_KEYS", "DEFAULT_BATCH_SIZE", "EmbeddingCache", "OpenCLIPTextEncoder", "TextEncoder",
    "TextEncoderUnavailable", "apply_template", "build_text_encoder", "load_embeddings", "save_embeddings",
    "text_encoder_id", "validate_class_names", "validate_templates",
]
