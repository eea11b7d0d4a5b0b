"""The texts of a training run, embedded once: batches look their texts up instead of calling the encoder.

Every text the loader can emit (class names, grounding phrases, extra negatives, and their
left/right-swapped forms from horizontal flips) is embedded before the first step through the
embedding cache; a large vocabulary shows a progress bar while it is encoded. Two modes change
that: prompt tuning makes the class-name embeddings learnable parameters (initialised from the
encoder), and text-encoder fine-tuning re-encodes each batch's texts with gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ovdet.data.transforms import swap_left_right

__all__ = ["TrainingVocabulary"]

#: Texts per encoder call while a progress bar is shown; smaller vocabularies are one call, no bar.
EMBED_CHUNK = 1024


class TrainingVocabulary(nn.Module):
    """Text → embedding table of a run.

    Args:
        texts: every text batches may hold (duplicates and the padding text ignored).
        embed: K texts → (K, D) unit-norm embeddings (the cache-backed encoder).
        learnable: names whose embeddings become parameters (prompt tuning); empty: none.
        encoder: a text encoder with ``encode_trainable`` to fine-tune (texts re-encoded per batch).
        pad_text: the loader's padding text (its slots get zero vectors; they are masked anyway).
        progress: with more than :data:`EMBED_CHUNK` texts, show a progress bar while they are
            encoded (see :meth:`_embed`).

    Attributes:
        texts: the table's texts, in row order.
        fixed: (V, D) buffer of the frozen embeddings.
        prompts: (P, D) parameter of the learnable ones (prompt tuning), or None.
    """

    def __init__(
        self,
        texts: Sequence[str],
        embed: Callable[[list[str]], torch.Tensor],
        learnable: Sequence[str] = (),
        encoder=None,
        pad_text: str = "",
        progress: bool = False,
    ) -> None:
        super().__init__()
        seen = dict.fromkeys(t for text in texts for t in (text, swap_left_right(text)) if t != pad_text)
        self.texts: list[str] = list(seen)
        if not self.texts:
            raise ValueError("the training vocabulary is empty: the dataset has no class names or phrases")
        self.index = {t: i for i, t in enumerate(self.texts)}
        emb = self._embed(embed, self.texts, progress).float()  # (V, D)
        self.register_buffer("fixed", emb.clone(), persistent=False)
        self.learnable = [t for t in dict.fromkeys(learnable)]
        missing = [t for t in self.learnable if t not in self.index]
        if missing:
            raise ValueError(f"learnable texts {missing[:5]} are not in the training vocabulary")
        self._prompt_rows = torch.tensor([self.index[t] for t in self.learnable], dtype=torch.long)
        self.prompts = nn.Parameter(emb[self._prompt_rows].clone()) if self.learnable else None
        self.encoder = encoder
        self.pad_text = pad_text

    @staticmethod
    def _embed(embed: Callable[[list[str]], torch.Tensor], texts: list[str], progress: bool) -> torch.Tensor:
        """(V, D) ``embed(texts)``, after encoding them chunk by chunk behind a progress bar.

        ``embed`` decides for the whole list where embeddings come from (a vocabulary's own
        rows only when it holds every text; else the encoder), so the chunks only fill its
        embedding cache, with progress shown, and the table is then one ``embed`` of every text,
        which finds them there: the same rows as without a bar.
        """
        if progress and len(texts) > EMBED_CHUNK:
            from tqdm import tqdm

            with tqdm(total=len(texts), desc="embedding the vocabulary", unit="text", dynamic_ncols=True) as bar:
                for start in range(0, len(texts), EMBED_CHUNK):
                    chunk = texts[start : start + EMBED_CHUNK]
                    embed(chunk)
                    bar.update(len(chunk))
        return embed(texts)

    @property
    def dim(self) -> int:
        return int(self.fixed.shape[1])

    def table(self) -> torch.Tensor:
        """(V, D) current embeddings of every text (learnable rows re-normalised)."""
        if self.prompts is None:
            return self.fixed
        rows = self._prompt_rows.to(self.fixed.device)
        return self.fixed.index_copy(0, rows, F.normalize(self.prompts, dim=-1))

    def lookup(self, texts: Sequence[Sequence[str]]) -> torch.Tensor:
        """(B, T, D) embeddings of each image's T texts (zeros for padding).

        Raises:
            KeyError: a text that is not in the table (named).
        """
        b, t = len(texts), len(texts[0]) if texts else 0
        flat = [x for row in texts for x in row]
        unknown = [x for x in flat if x != self.pad_text and x not in self.index]
        if unknown:
            raise KeyError(f"text {unknown[0]!r} is not in the training vocabulary ({len(self.texts)} texts)")
        if self.encoder is not None:  # fine-tuning the encoder: this batch's texts, with gradients
            wanted = list(dict.fromkeys(x for x in flat if x != self.pad_text))
            emb = self.encoder.encode_trainable(wanted).to(self.fixed.device)  # (U, D)
            pos = {x: i for i, x in enumerate(wanted)}
            source, rows = torch.cat([emb, emb.new_zeros(1, emb.shape[1])]), [pos.get(x, len(wanted)) for x in flat]
        else:
            source = torch.cat([self.table(), self.fixed.new_zeros(1, self.dim)])  # (V + 1, D), last row: padding
            rows = [self.index.get(x, len(self.texts)) if x != self.pad_text else len(self.texts) for x in flat]
        idx = torch.tensor(rows, dtype=torch.long, device=source.device)
        return source.index_select(0, idx).view(b, t, -1)

    def embeddings_of(self, names: Sequence[str]) -> torch.Tensor:
        """(K, D) current embeddings of ``names`` (detached, on CPU): what a checkpoint saves."""
        with torch.no_grad():
            if self.encoder is not None:
                return self.encoder.encode_trainable(list(names)).detach().cpu()
            table = self.table()
            return table[torch.tensor([self.index[n] for n in names], device=table.device)].detach().cpu()
