"""The embedding cache: text embeddings keyed by (encoder id, templates, text), in memory and on disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ovdet.text.base import TextEncoder, check_texts, validate_templates
from ovdet.text.files import FORMAT_VERSION, read_safetensors, write_safetensors

__all__ = ["CacheKey", "EmbeddingCache"]

_CACHE_FORMAT = "ovdet-embedding-cache"

CacheKey = tuple[str, tuple[str, ...], str]


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
        self._unsaved = 0  # entries encoded since the last save()

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
        texts = check_texts(texts)
        key_templates = validate_templates(templates)
        self._ensure_loaded()
        rows = [self._entries.get((encoder_id, key_templates, t)) for t in texts]
        if not rows or any(r is None for r in rows):
            return None
        return torch.stack(rows)  # type: ignore[arg-type]

    def get_or_encode(
        self, encoder: TextEncoder, texts: Sequence[str], templates: Sequence[str] | None = None
    ) -> torch.Tensor:
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
        texts = check_texts(texts)
        key_templates = encoder.templates if templates is None else templates
        key_templates = validate_templates(key_templates)
        eid = encoder.id
        self._ensure_loaded()
        missing = list(dict.fromkeys(t for t in texts if (eid, key_templates, t) not in self._entries))
        if missing:
            emb = encoder.encode(missing, templates=key_templates)  # (M, D)
            if not isinstance(emb, torch.Tensor) or emb.shape != (len(missing), encoder.dim):
                shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
                raise RuntimeError(
                    f"text encoder {eid!r} returned {shape} for {len(missing)} texts, "
                    f"expected ({len(missing)}, {encoder.dim})"
                )
            emb = emb.detach().to("cpu", torch.float32)
            if not torch.isfinite(emb).all():
                raise RuntimeError(f"text encoder {eid!r} returned NaN or infinite embeddings")
            for text, row in zip(missing, emb):
                self._entries[(eid, key_templates, text)] = row.clone()
            self._unsaved += len(missing)
        if not texts:
            return torch.empty(0, encoder.dim)
        return torch.stack([self._entries[(eid, key_templates, t)] for t in texts])  # (K, D)

    @property
    def unsaved(self) -> int:
        """Entries encoded since the last :meth:`save` (0: the file, if any, has them all)."""
        return self._unsaved

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
            warnings.warn(
                f"embedding cache {self.path} is unreadable ({type(e).__name__}: {e}); ignoring it, "
                f"it will be rewritten on the next save()",
                stacklevel=2,
            )
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
            with contextlib.suppress(Exception):  # unreadable: load() has warned already; replaced below
                merged.update(self._read(self.path))
        merged.update(self._entries)
        tensors: dict[str, torch.Tensor] = {}
        keys: dict[str, list[Any]] = {}
        for key, row in merged.items():
            h = _cache_key_hash(key)
            tensors[h] = row.contiguous()
            keys[h] = [key[0], list(key[1]), key[2]]
        metadata = {"format": _CACHE_FORMAT, "version": FORMAT_VERSION, "keys": json.dumps(keys)}
        write_safetensors(self.path, tensors, metadata)
        self._unsaved = 0
        return self.path

    @staticmethod
    def _read(path: Path) -> dict[CacheKey, torch.Tensor]:
        """Entries of a cache file; raises ValueError (or the reader's error) when inconsistent."""
        tensors, metadata = read_safetensors(path)
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
