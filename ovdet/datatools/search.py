"""Text search over an image collection: index region embeddings once, query any text later.

:class:`Index` runs the detector once per image with a fixed *indexing vocabulary* and keeps, per
image, the boxes and region embeddings of its most salient regions (class-agnostic NMS over the
best score against that vocabulary). A region embedding ``e`` (:mod:`ovdet.models.regions`) gives
the head's logit for any unit text ``t`` as ``<e, t> + bias``, so each region is stored as the
vector ``[e, bias]`` in a faiss inner-product index and a query ``[t, 1]`` scores every region
in one search; an image scores its best region.

That score is the detector's own score for the query only where the neck's text attention would
have been the same: the network ran with the indexing vocabulary, not with the query. So
:meth:`Index.search` *re-ranks* the best candidates by running the detector on them with the
query as its one class (exactly ``set_classes([query])`` + ``predict``), and returns those
scores and boxes. How close the whole is to running the detector on every image is measured in
``benchmarks/bench_search.py`` and the README.

The index is incremental: :meth:`Index.add` embeds only images it has not seen (or whose file
changed), :meth:`Index.remove` drops images, and :meth:`Index.save` / :meth:`Index.load` keep it
in a folder (``index.json`` and the vectors, region tables and vocabulary files it names; see
:data:`DATA_FILES`). ``add(..., save_to=folder)`` saves progress at intervals, so a run that is
killed is continued by running it again. An index records the model's weights fingerprint and
text encoder, and refuses a detector that differs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torchvision

from ovdet._version import __version__
from ovdet.config import ModelConfig, NMSConfig, check_imgsz
from ovdet.data.images import iter_sources
from ovdet.data.letterbox import to_tensor, unletterbox_boxes
from ovdet.data.readers.common import load_json
from ovdet.datatools.label import list_images
from ovdet.inference.predict import FoldedCache, Predictor, letterbox_groups
from ovdet.io import atomic_write, atomic_write_text
from ovdet.models.detector import OVDetector
from ovdet.models.regions import region_outputs
from ovdet.text import text_encoder_id
from ovdet.text.vocabulary import builtin_vocabulary, is_builtin_vocabulary

__all__ = [
    "AddReport",
    "Index",
    "IndexMismatchError",
    "SearchHit",
    "SearchResults",
    "SearchableDetector",
    "exhaustive_search",
    "model_fingerprint",
]

FORMAT = "ovdet-index"
#: 2: the data files are named per save (the manifest's ``files``); 1 (still read): fixed names.
FORMAT_VERSION = 2
MANIFEST = "index.json"
#: The data files, by role: format 1's fixed names; format 2 puts a per-save token before the
#: suffix (``vectors-<token>.faiss``), so a save writes new files, then switches to them with one
#: atomic manifest write: a save killed half-way leaves the previous index whole.
DATA_FILES: dict[str, str] = {
    "vectors": "vectors.faiss",
    "regions": "regions.safetensors",
    "vocabulary": "vocabulary.safetensors",
}
#: :meth:`Index.add` with ``save_to`` waits at least this many times the last save's duration
#: between saves, so saving a large index never takes more than a small share of the run.
SAVE_OVERHEAD = 10.0


class SearchableDetector(Protocol):
    """What :class:`Index` needs of a detector (``ovdet.Detector`` is one)."""

    model: OVDetector
    device: torch.device

    @property
    def cfg(self) -> ModelConfig: ...

    def encode(self, names: Sequence[str]) -> torch.Tensor: ...


class IndexMismatchError(ValueError):
    """The detector given to an index is not the one it was built with (weights or text encoder)."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is in the dev extra
        raise ImportError("text search needs faiss (not installed): pip install 'ovdet[search]'") from e
    return faiss


@torch.no_grad()
def model_fingerprint(model: OVDetector) -> str:
    """SHA-256 of the network's weights, taken on a fused float32 CPU copy, so the same weights
    give the same fingerprint whether or not BatchNorms were folded (and on whatever device)."""
    net = copy.deepcopy(model).float().cpu().eval()
    if not net.is_fused:
        net.fuse()
    h = hashlib.sha256(json.dumps([net.cfg.version, net.cfg.embed_dim]).encode())
    for name, t in sorted(net.state_dict().items()):
        if not t.is_floating_point():  # BN counters etc.
            continue
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class SearchHit:
    """One image found for a query.

    Attributes:
        image_id: the image's id in the index (for :meth:`Index.remove`).
        path: the image file.
        score: the detector's score for the query (re-ranked), or the index's estimate.
        box: (4,) xyxy in original-image pixels: the best-scoring box.
        exact: True when ``score`` and ``box`` come from running the detector with the query.
        index_score: the index's estimate (sigmoid of the best region's logit).
        image_size: (height, width).
    """

    image_id: int
    path: str
    score: float
    box: np.ndarray
    exact: bool
    index_score: float
    image_size: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "path": self.path,
            "score": round(self.score, 6),
            "box": [round(float(v), 2) for v in self.box],
            "exact": self.exact,
            "index_score": round(self.index_score, 6),
            "image_size": list(self.image_size),
        }


@dataclass
class SearchResults:
    """The answer to one query.

    Attributes:
        query: the text.
        hits: at most k images, best first.
        candidates: images re-ranked with the detector (0: no re-ranking).
        skipped: (path, reason) of candidates that could not be re-read (kept with their index
            score, ``exact=False``).
        timings: seconds spent encoding the text, searching the vectors and re-ranking.
    """

    query: str
    hits: list[SearchHit]
    candidates: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "hits": [h.to_dict() for h in self.hits],
            "candidates": self.candidates,
            "skipped": [list(s) for s in self.skipped],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


@dataclass
class AddReport:
    """What :meth:`Index.add` did.

    Attributes:
        added: new images indexed.
        updated: images whose file changed since they were indexed (re-embedded).
        unchanged: images already in the index (not redone).
        skipped: (source, reason) of files that could not be read.
        seconds: wall time of the embedding pass.
    """

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def text(self) -> str:
        done = self.added + self.updated
        rate = f", {done / self.seconds:.1f} images/s" if done and self.seconds > 0 else ""
        lines = [
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, {len(self.skipped)} skipped{rate}"
        ]
        lines += [f"  skipped {reason}" for _, reason in self.skipped[:10]]
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more")
        return "\n".join(lines)


class _Vectors:
    """A faiss inner-product index with 64-bit ids (``remove_ids`` where the index type allows)."""

    def __init__(self, dim: int, spec: str) -> None:
        faiss = _faiss()
        self.dim, self.spec = dim, spec
        try:
            base = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(f"faiss index {spec!r}: {str(e).strip().splitlines()[-1]}") from e
        self.index = base if spec.upper().startswith("IDMAP") else faiss.IndexIDMap2(base)

    @classmethod
    def read(cls, path: Path, spec: str) -> _Vectors:
        faiss = _faiss()
        self = cls.__new__(cls)
        self.index = faiss.read_index(str(path))
        self.dim, self.spec = self.index.d, spec
        return self

    def write(self, path: Path) -> None:
        faiss = _faiss()
        atomic_write(path, lambda p: faiss.write_index(self.index, str(p)))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def trained(self) -> bool:
        return bool(self.index.is_trained)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add (n, dim) vectors with their ids; an untrained index is trained on them first."""
        if not self.index.is_trained:
            try:
                self.index.train(vectors)
            except RuntimeError as e:
                raise ValueError(
                    f"faiss index {self.spec!r} could not be trained on the first {len(vectors)} regions: "
                    f"{str(e).strip().splitlines()[-1]} (add more images in the first call, or use 'Flat')"
                ) from e
        self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            try:
                self.index.remove_ids(_faiss().IDSelectorBatch(ids.astype(np.int64)))
            except RuntimeError as e:
                raise ValueError(f"faiss index {self.spec!r} cannot remove vectors; use 'Flat' or 'IVF…'") from e

    def search(self, query: np.ndarray, n: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(1, n) inner products and ids, best first (ids -1 where fewer exist)."""
        ivf = _faiss().try_extract_index_ivf(self.index)  # None unless an IVF index
        if ivf is not None:
            ivf.nprobe = nprobe
        return self.index.search(query, n)


class _RegionTables:
    """Every indexed region's faiss id, image id and box; appended in chunks, joined on demand
    (so adding N images costs O(N), not O(N²) copies).

    Attributes (after :meth:`arrays`): ids (N,) int64 ascending, image (N,) int64, boxes (N, 4)
    float32 xyxy original pixels.
    """

    def __init__(self, ids: np.ndarray | None = None, image: np.ndarray | None = None, boxes: np.ndarray | None = None):
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._ids = np.zeros(0, np.int64) if ids is None else ids.astype(np.int64)
        self._image = np.zeros(0, np.int64) if image is None else image.astype(np.int64)
        self._boxes = np.zeros((0, 4), np.float32) if boxes is None else boxes.astype(np.float32)

    def append(self, ids: np.ndarray, image_id: int, boxes: np.ndarray) -> None:
        self._chunks.append((ids, np.full(len(ids), image_id, np.int64), boxes))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._chunks:
            ids, image, boxes = zip(*self._chunks)
            self._ids = np.concatenate((self._ids, *ids))
            self._image = np.concatenate((self._image, *image))
            self._boxes = np.concatenate((self._boxes, *boxes))
            self._chunks = []
        return self._ids, self._image, self._boxes

    def __len__(self) -> int:
        return len(self._ids) + sum(len(c[0]) for c in self._chunks)

    def drop_images(self, image_ids: Sequence[int]) -> np.ndarray:
        """Remove the regions of ``image_ids``; returns their faiss ids."""
        ids, image, boxes = self.arrays()
        gone = np.isin(image, np.asarray(image_ids, np.int64))
        self._ids, self._image, self._boxes = ids[~gone], image[~gone], boxes[~gone]
        return ids[gone]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())


def _as_paths(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(sources, (str, os.PathLike)):
        return list_images(sources)
    out: list[Path] = []
    for s in sources:
        out.extend(list_images(s))
    return out


def _read(paths: Sequence[str], max_pixels: int | None = None) -> list[tuple[np.ndarray | None, str | None]]:
    """(image, None) or (None, reason) per file, in order; a missing or unreadable file never raises."""
    out: list[tuple[np.ndarray | None, str | None]] = []
    for path in paths:
        try:
            item = next(iter(iter_sources(path, max_pixels=max_pixels)))
        except (FileNotFoundError, OSError, ValueError) as e:
            out.append((None, str(e)))
            continue
        out.append(
            (item.image, None)
            if item.error is None and item.image is not None
            else (None, item.error or f"{path}: no image")
        )
    return out


def _file_state(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class Index:
    """A text-searchable index of an image collection (see the module docstring).

    Args:
        detector: the detector whose region embeddings are indexed and which re-ranks; it is
            never modified (its vocabulary stays as it is).
        vocabulary: the indexing vocabulary: class names, or a built-in vocabulary name
            (``"lvis"``, ``"coco"``, ``"objects365"``). It drives the neck's text attention and
            picks the salient regions.
        imgsz: letterbox size of the embedding pass and of re-ranking.
        regions: regions kept per image.
        region_iou: class-agnostic NMS IoU among an image's kept regions.
        faiss_index: a faiss ``index_factory`` string: ``"Flat"`` (exact, default), ``"SQ8"``
            (a quarter of the memory), ``"IVF1024,Flat"`` (sub-linear queries; trained on the
            first images added), ...
        batch: images per forward pass.

    Raises:
        ValueError: a bad setting or vocabulary (named).
    """

    def __init__(
        self,
        detector: SearchableDetector,
        vocabulary: Sequence[str] | str = "lvis",
        imgsz: int = 640,
        regions: int = 64,
        region_iou: float = 0.5,
        faiss_index: str = "Flat",
        batch: int = 8,
    ) -> None:
        check_imgsz(imgsz, max(detector.model.cfg.strides), square=True)
        if regions < 1:
            raise ValueError(f"regions must be >= 1, got {regions}")
        if not 0.0 < region_iou <= 1.0:
            raise ValueError(f"region_iou must be in (0, 1], got {region_iou}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        names = builtin_vocabulary(vocabulary) if is_builtin_vocabulary(vocabulary) else list(vocabulary)  # type: ignore[arg-type]
        self._det = detector
        self.vocabulary: list[str] = names
        self._vocab_emb = detector.encode(names).float().cpu()  # (K, D); checks the names
        self.imgsz, self.regions, self.region_iou, self.batch = imgsz, regions, region_iou, batch
        self.faiss_index = faiss_index
        self.nprobe = 16
        self.fingerprint = model_fingerprint(detector.model)
        self.text_encoder = text_encoder_id(detector.cfg.text)
        self.templates = list(detector.cfg.text.templates)
        self.model_spec: str | None = None  # how to load the model again (set by the CLI)
        self._vectors = _Vectors(detector.cfg.embed_dim + 1, faiss_index)
        self._images: dict[int, dict[str, Any]] = {}  # id → {path, size: [h, w], file: [bytes, mtime_ns]}
        self._by_path: dict[str, int] = {}
        self._tables = _RegionTables()
        self._next_image, self._next_region = 0, 0
        self._net: OVDetector | None = None  # fused copy for the embedding pass
        self._folded = FoldedCache()  # the query-vocabulary network re-ranking runs

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        """Images in the index."""
        return len(self._images)

    @property
    def num_regions(self) -> int:
        """Regions in the index."""
        return len(self._tables)

    @property
    def paths(self) -> list[str]:
        """Indexed image files, in id order."""
        return [self._images[i]["path"] for i in sorted(self._images)]

    def image_regions(self, image_id: int) -> np.ndarray:
        """(R, 4) xyxy original-pixel boxes of the regions indexed for an image (R ≤ ``regions``)."""
        _, image, boxes = self._tables.arrays()
        return boxes[image == image_id].copy()

    def image_id(self, path: str | os.PathLike) -> int | None:
        """The id of an indexed file, or None."""
        return self._by_path.get(str(Path(path).resolve()))

    def memory_bytes(self) -> int:
        """Bytes the vectors and region tables hold (faiss's own estimate for its index)."""
        vec = self.num_regions * self._vectors.dim * 4
        if self.faiss_index.upper().startswith("SQ8") or ",SQ8" in self.faiss_index.upper():
            vec = self.num_regions * self._vectors.dim
        return vec + self._tables.nbytes()

    # ------------------------------------------------------------------ checks
    def check_detector(self, detector: SearchableDetector) -> None:
        """Refuse a detector this index was not built with.

        Raises:
            IndexMismatchError: other weights or another text encoder (both named).
        """
        encoder = text_encoder_id(detector.cfg.text)
        if encoder != self.text_encoder or list(detector.cfg.text.templates) != self.templates:
            raise IndexMismatchError(
                f"the index was built with text encoder {self.text_encoder!r} (templates {self.templates}) "
                f"but the detector uses {encoder!r} (templates {list(detector.cfg.text.templates)}); "
                "query with the model the index was built with, or rebuild the index"
            )
        found = model_fingerprint(detector.model)
        if found != self.fingerprint:
            raise IndexMismatchError(
                f"the index was built with other model weights (fingerprint {self.fingerprint[:12]}, "
                f"this model's is {found[:12]}"
                + (f"; it was built with --model {self.model_spec}" if self.model_spec else "")
                + "): query with that model, or rebuild the index with this one"
            )

    # ------------------------------------------------------------------ building
    def _network(self) -> OVDetector:
        if self._net is None:
            net = copy.deepcopy(self._det.model).eval()
            self._net = net.fuse().requires_grad_(False)
        return self._net

    @torch.no_grad()
    def _embed(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: (R, D+1) float32 vectors ``[e, bias]`` and (R, 4) boxes in original pixels."""
        net = self._network()
        device = next(net.parameters()).device
        text = self._vocab_emb.to(device)
        stride = max(net.cfg.strides)
        boxed, groups = letterbox_groups(images, self.imgsz, stride)
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(images)
        for idx in groups:
            x = to_tensor([boxed[i][0] for i in idx]).to(device)
            r = region_outputs(net, x, text)
            for j, i in enumerate(idx):
                saliency = r.scores[j].amax(-1)  # (A,)
                keep = torchvision.ops.nms(r.boxes[j].float(), saliency.float(), self.region_iou)[: self.regions]
                vec = torch.cat((r.embeddings[j][keep], r.bias[keep, None]), 1).float().cpu().numpy()
                boxes = unletterbox_boxes(r.boxes[j][keep].float().cpu(), boxed[i][1]).numpy()
                out[i] = (np.ascontiguousarray(vec, dtype=np.float32), boxes.astype(np.float32))
        return out  # type: ignore[return-value]

    def add(
        self,
        sources: str | os.PathLike | Iterable[str | os.PathLike],
        progress: Callable[[int], None] | None = None,
        max_pixels: int | None = None,
        save_to: str | os.PathLike | None = None,
        save_every: float = 120.0,
    ) -> AddReport:
        """Index image files; those already indexed and unchanged are not redone.

        Args:
            sources: an image file, a folder (its images, not recursive), a glob, or a list of these.
            progress: called with the number of files handled after each batch (e.g. a tqdm's
                ``update``).
            max_pixels: largest image decoded (see :func:`~ovdet.data.images.resolve_max_pixels`).
            save_to: a folder the index is saved to (:meth:`save`) during the run, so a run that is
                killed keeps its work: loading the folder and adding the same sources again embeds
                only the images not saved yet. None: nothing is saved (call :meth:`save` after).
                The last batches are saved by the caller's :meth:`save` at the end.
            save_every: seconds between two saves to ``save_to``, after a batch; at least
                :data:`SAVE_OVERHEAD` times the last save's duration (saving rewrites the whole
                index). 0: after every batch.

        Returns:
            :class:`AddReport`; unreadable files are counted there, never raised.

        Raises:
            FileNotFoundError: a source that does not exist or holds no image.
            ValueError: ``save_every`` < 0.
        """
        if save_every < 0:
            raise ValueError(f"save_every must be >= 0 seconds, got {save_every}")
        report = AddReport()
        todo: list[tuple[Path, tuple[int, int], int | None]] = []
        seen: set[str] = set()
        for path in _as_paths(sources):
            key = str(path.resolve())
            if key in seen:
                continue
            seen.add(key)
            try:
                state = _file_state(path)
            except OSError as e:
                report.skipped.append((str(path), f"{path}: {e.strerror or e}"))
                continue
            old = self._by_path.get(key)
            if old is not None and tuple(self._images[old]["file"]) == state:
                report.unchanged += 1
                continue
            todo.append((path.resolve(), state, old))
        if progress is not None and (report.unchanged or report.skipped):
            progress(report.unchanged + len(report.skipped))
        start = time.perf_counter()
        saved_at, wait = start, save_every  # the next save is due ``wait`` seconds after ``saved_at``
        pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (image id, vectors, ids) not in faiss yet
        try:
            for lo in range(0, len(todo), self.batch):
                chunk = todo[lo : lo + self.batch]
                read = _read([str(p) for p, _, _ in chunk], max_pixels)
                good = [(c, im) for c, (im, _) in zip(chunk, read) if im is not None]
                report.skipped += [(str(c[0]), err) for c, (im, err) in zip(chunk, read) if im is None]
                if good:
                    embedded = self._embed([im for _, im in good])
                    for ((path, state, old), im), (vec, boxes) in zip(good, embedded):
                        if old is not None:
                            self._drop([old])
                            report.updated += 1
                        else:
                            report.added += 1
                        image_id, ids = self._insert(str(path), im.shape[:2], state, boxes)
                        pending.append((image_id, vec, ids))
                if self._vectors.trained and pending:  # an untrained index (IVF, PQ) trains on all of them
                    self._flush(pending)
                if save_to is not None and good and not pending and time.perf_counter() - saved_at >= wait:
                    t0 = time.perf_counter()
                    self.save(save_to)
                    saved_at = time.perf_counter()
                    wait = max(save_every, SAVE_OVERHEAD * (saved_at - t0)) if save_every > 0 else 0.0
                if progress is not None:
                    progress(len(chunk))
            self._flush(pending)
        except BaseException:
            # images whose vectors are not in faiss leave the tables too: an interrupted or failed
            # add loses only its own unfinished images, and the index stays consistent
            self._drop([i for i, _, _ in pending if i in self._images], in_faiss=False)
            raise
        report.seconds = time.perf_counter() - start
        return report

    def _insert(
        self, path: str, size: tuple[int, int], state: tuple[int, int], boxes: np.ndarray
    ) -> tuple[int, np.ndarray]:
        """Record an image and its regions' boxes; returns its id and its regions' faiss ids."""
        image_id = self._next_image
        self._next_image += 1
        ids = np.arange(self._next_region, self._next_region + len(boxes), dtype=np.int64)
        self._next_region += len(boxes)
        self._images[image_id] = {"path": path, "size": [int(size[0]), int(size[1])], "file": list(state)}
        self._by_path[path] = image_id
        self._tables.append(ids, image_id, boxes)
        return image_id, ids

    def _flush(self, pending: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Add the pending vectors to faiss (emptying the list)."""
        if pending:
            self._vectors.add(np.concatenate([v for _, v, _ in pending]), np.concatenate([i for _, _, i in pending]))
            pending.clear()

    def remove(self, images: Iterable[int | str | os.PathLike]) -> int:
        """Remove images (by id or file path) from the index; unknown ones are ignored.

        Returns:
            How many images were removed.
        """
        ids = []
        for item in images:
            image_id = item if isinstance(item, (int, np.integer)) else self.image_id(item)
            if image_id is not None and int(image_id) in self._images:
                ids.append(int(image_id))
        self._drop(ids)
        return len(ids)

    def _drop(self, image_ids: list[int], in_faiss: bool = True) -> None:
        if not image_ids:
            return
        gone = self._tables.drop_images(image_ids)
        if in_faiss:
            self._vectors.remove(gone)
        for i in image_ids:
            del self._by_path[self._images.pop(i)["path"]]

    # ------------------------------------------------------------------ searching
    def search(self, text: str, k: int = 10, rerank: bool = True, candidates: int | None = None) -> SearchResults:
        """The k images that best match ``text``, best first, each with its best box.

        Args:
            text: the query, any natural-language phrase.
            k: images returned at most.
            rerank: re-score the best ``candidates`` images by running the detector with
                ``text`` as its one class (the detector's own scores and boxes); otherwise
                the index's estimate is returned.
            candidates: images re-ranked (default ``max(3·k, 30)``).

        Raises:
            ValueError: an empty query or ``k < 1``.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the query must be a non-empty string, got {text!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n_cand = (max(3 * k, 30) if candidates is None else max(candidates, k)) if rerank else k
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        emb = torch.nn.functional.normalize(self._det.encode([text]).float(), dim=-1)  # (1, D)
        timings["encode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ranked = self._best_images(emb[0].cpu().numpy(), n_cand)  # [(image id, logit, region row)]
        region_boxes = self._tables.arrays()[2]
        timings["search"] = time.perf_counter() - t0
        hits = [
            SearchHit(
                image_id=i,
                path=self._images[i]["path"],
                score=float(torch.tensor(logit).sigmoid()),
                box=region_boxes[row].copy(),
                exact=False,
                index_score=float(torch.tensor(logit).sigmoid()),
                image_size=tuple(self._images[i]["size"]),  # type: ignore[arg-type]
            )
            for i, logit, row in ranked
        ]
        skipped: list[tuple[str, str]] = []
        if rerank and hits:
            t0 = time.perf_counter()
            skipped = self._rerank(text, emb, hits)
            timings["rerank"] = time.perf_counter() - t0
            hits.sort(key=lambda h: (not h.exact, -h.score))
        return SearchResults(text, hits[:k], len(ranked) if rerank else 0, skipped, timings)

    def _best_images(self, query: np.ndarray, n_images: int) -> list[tuple[int, float, int]]:
        """The ``n_images`` images with the best region logit for the unit ``query`` (D,)."""
        total = len(self._vectors)
        if total == 0:
            return []
        region_ids, region_image, _ = self._tables.arrays()
        q = np.append(query, 1.0).astype(np.float32)[None]  # (1, D+1): [t, 1]·[e, bias] = logit
        n = min(total, max(64, 8 * n_images))
        while True:
            scores, ids = self._vectors.search(q, n, self.nprobe)
            valid = ids[0] >= 0
            rows = np.searchsorted(region_ids, ids[0][valid])
            images = region_image[rows]
            _, first = np.unique(images, return_index=True)  # best region of each image (results sorted)
            first.sort()
            if len(first) >= n_images or n >= total:
                break
            n = min(total, n * 4)
        return [(int(images[f]), float(scores[0][valid][f]), int(rows[f])) for f in first[:n_images]]

    def _rerank(self, text: str, emb: torch.Tensor, hits: list[SearchHit]) -> list[tuple[str, str]]:
        predictor = _query_predictor(self._det.model, text, emb, self.imgsz, self._folded)
        skipped = []
        for lo in range(0, len(hits), self.batch):
            chunk = hits[lo : lo + self.batch]
            read = _read([h.path for h in chunk])
            good = [(h, im) for h, (im, _) in zip(chunk, read) if im is not None]
            skipped += [(h.path, err) for h, (im, err) in zip(chunk, read) if im is None]
            if not good:
                continue
            dets = predictor([im for _, im in good], [h.path for h, _ in good], keep_images=False)
            for (h, _), d in zip(good, dets):
                h.exact = True
                if len(d):
                    h.score, h.box = float(d.scores[0]), d.boxes[0].numpy().copy()
                else:
                    h.score = 0.0
        self._folded.clear()
        return skipped

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to folder ``path`` (created).

        The data files are new files (named with a token of this save), each written atomically;
        then the manifest naming them replaces the old one atomically, and only then are the
        previous data files removed. A save killed at any point leaves the previous index whole.
        """
        from safetensors.numpy import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        files = {role: _save_name(name, token) for role, name in DATA_FILES.items()}
        self._vectors.write(out / files["vectors"])
        ids, image, boxes = self._tables.arrays()
        tables = {"ids": ids, "image": image, "boxes": boxes}
        atomic_write(out / files["regions"], lambda p: save_file(tables, str(p)))
        vocab = {"embeddings": self._vocab_emb.numpy()}
        atomic_write(out / files["vocabulary"], lambda p: save_file(vocab, str(p)))
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "files": files,
            "ovdet": __version__,
            "model": {
                "fingerprint": self.fingerprint,
                "spec": self.model_spec,
                "version": self._det.cfg.version,
                "embed_dim": self._det.cfg.embed_dim,
            },
            "text_encoder": self.text_encoder,
            "templates": self.templates,
            "vocabulary": self.vocabulary,
            "imgsz": self.imgsz,
            "regions": self.regions,
            "region_iou": self.region_iou,
            "faiss_index": self.faiss_index,
            "batch": self.batch,
            "counts": {"images": len(self), "regions": self.num_regions, "vectors": len(self._vectors)},
            "next_ids": {"image": self._next_image, "region": self._next_region},
            "images": [{"id": i, **self._images[i]} for i in sorted(self._images)],
        }
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
        _remove_old_data_files(out, files)
        return out

    @staticmethod
    def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
        """The manifest of the index folder ``path``, checked field by field.

        Raises:
            FileNotFoundError: no index there.
            ValueError: not an ovdet index, a newer format, or a field missing or ill-formed
                (named, e.g. a duplicate image id).
        """
        file = Path(path) / MANIFEST
        if not file.is_file():
            raise FileNotFoundError(f"no index in {path} ({MANIFEST} not found); build one with `ovdet index`")
        manifest = load_json(file)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise ValueError(f"{file}: not an ovdet index (format {found!r})")
        version = manifest.get("version", 1)
        if not _is_int(version) or version < 1:
            raise ValueError(f"{file}: index format version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(f"{file}: index format {version} is newer than this ovdet reads ({FORMAT_VERSION})")
        _check_manifest(manifest, file)
        return manifest

    @classmethod
    def load(cls, path: str | os.PathLike, detector: SearchableDetector) -> Index:
        """Open the index in folder ``path`` with the detector it was built with.

        Raises:
            FileNotFoundError: no index there.
            IndexMismatchError: ``detector`` has other weights or another text encoder.
            ValueError: the files are not a consistent ovdet index (named).
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(path)
        m = cls.read_manifest(folder)
        files = {role: folder / name for role, name in m.get("files", DATA_FILES).items()}
        self = cls.__new__(cls)
        self._det = detector
        self.fingerprint, self.model_spec = m["model"]["fingerprint"], m["model"].get("spec")
        self.text_encoder, self.templates = m["text_encoder"], list(m["templates"])
        self.check_detector(detector)
        try:
            tables = load_file(str(files["regions"]))
            self._vocab_emb = torch.from_numpy(load_file(str(files["vocabulary"]))["embeddings"])
            tables = {k: tables[k] for k in ("ids", "image", "boxes")}
        except (SafetensorError, OSError, KeyError) as e:
            raise ValueError(f"{folder}: cannot read the region tables or vocabulary ({type(e).__name__}: {e})") from e
        self.vocabulary = list(m["vocabulary"])
        self.imgsz, self.regions, self.region_iou = m["imgsz"], m["regions"], float(m["region_iou"])
        self.faiss_index, self.batch, self.nprobe = m["faiss_index"], m.get("batch", 8), 16
        try:
            self._vectors = _Vectors.read(files["vectors"], self.faiss_index)
        except RuntimeError as e:
            raise ValueError(
                f"{files['vectors']}: not a readable faiss index ({str(e).strip().splitlines()[-1]})"
            ) from e
        self._tables = _RegionTables(tables["ids"], tables["image"], tables["boxes"])
        ids, image, boxes = self._tables.arrays()
        self._images = {r["id"]: {k: r[k] for k in ("path", "size", "file")} for r in m["images"]}
        self._by_path = {r["path"]: i for i, r in self._images.items()}
        self._next_image, self._next_region = m["next_ids"]["image"], m["next_ids"]["region"]
        counts = (len(self._images), len(ids), len(self._vectors))
        if counts != (m["counts"]["images"], m["counts"]["regions"], m["counts"]["vectors"]) or not (
            len(ids) == len(image) == len(boxes) == len(self._vectors)
        ):
            raise ValueError(
                f"{folder}: the index files disagree (images, regions, vectors = {counts}, manifest says "
                f"{(m['counts']['images'], m['counts']['regions'], m['counts']['vectors'])}): the data files are not "
                f"the ones {MANIFEST} was written with (files copied from another index, or a format-1 index "
                "whose save was interrupted): rebuild it"
            )
        _check_region_tables(ids, image, boxes, self._images, self._next_region, files["regions"])
        if self._vocab_emb.shape != (len(self.vocabulary), detector.cfg.embed_dim):
            raise ValueError(
                f"{files['vocabulary']}: embeddings {tuple(self._vocab_emb.shape)} do not match the vocabulary"
            )
        self._net, self._folded = None, FoldedCache()
        return self


def _save_name(name: str, token: str) -> str:
    """``name`` (a :data:`DATA_FILES` name) as one save writes it: ``vectors.faiss`` → ``vectors-<token>.faiss``."""
    stem, suffix = name.split(".", 1)
    return f"{stem}-{token}.{suffix}"


def _remove_old_data_files(folder: Path, keep: dict[str, str]) -> None:
    """Delete the data files of earlier saves in ``folder`` (format 1's fixed names, or another
    save's token), keeping ``keep``'s; nothing else in the folder is touched."""
    for name in DATA_FILES.values():
        stem, suffix = name.split(".", 1)
        pattern = re.compile(rf"{re.escape(stem)}(-[0-9a-f]{{12}})?\.{re.escape(suffix)}")
        for p in folder.iterdir():
            if pattern.fullmatch(p.name) and p.name not in keep.values():
                p.unlink(missing_ok=True)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _is_strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_file_name(v: Any) -> bool:
    """A plain file name (no folder part): a manifest never points outside its own folder."""
    return isinstance(v, str) and v not in ("", ".", "..") and Path(v).name == v


#: Top-level manifest fields: what each must be, and the check.
_MANIFEST_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "model": ("a mapping", lambda v: isinstance(v, dict)),
    "text_encoder": ("a string", lambda v: isinstance(v, str)),
    "templates": ("a list of strings", _is_strings),
    "vocabulary": ("a list of class names", lambda v: _is_strings(v) and len(v) > 0),
    "imgsz": ("an integer", _is_int),
    "regions": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "region_iou": (
        "a number in (0, 1]",
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
    ),
    "faiss_index": ("a string", lambda v: isinstance(v, str)),
    "counts": ("a mapping", lambda v: isinstance(v, dict)),
    "next_ids": ("a mapping", lambda v: isinstance(v, dict)),
    "images": ("a list of image entries", lambda v: isinstance(v, list)),
}
#: Fields of each ``images`` entry: what each must be, and the check.
_IMAGE_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "id": ("an integer >= 0", _is_count),
    "path": ("a string", lambda v: isinstance(v, str) and v != ""),
    "size": ("[height, width]", lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v)),
    "file": ("[bytes, mtime_ns]", lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v)),
}


def _check_manifest(m: dict[str, Any], file: Path) -> None:
    """Raises ValueError naming the first field of manifest ``m`` (read from ``file``) that is
    missing or ill-formed, a duplicate image id or path, or a next id already used."""

    def fail(problem: str) -> ValueError:
        return ValueError(f"{file}: {problem} (the manifest was edited or damaged: restore it, or rebuild the index)")

    def check(where: dict[str, Any], key: str, what: str, ok: Callable[[Any], bool], name: str) -> None:
        if key not in where:
            raise fail(f"no {name!r} entry ({what})")
        if not ok(where[key]):
            value = where[key]
            raise fail(f"{name!r} must be {what}, got {type(value).__name__} {json.dumps(value)[:60]}")

    for key, (what, ok) in _MANIFEST_FIELDS.items():
        check(m, key, what, ok, key)
    check(m["model"], "fingerprint", "a string", lambda v: isinstance(v, str), "model.fingerprint")
    for key in ("images", "regions", "vectors"):
        check(m["counts"], key, "an integer >= 0", _is_count, f"counts.{key}")
    for key in ("image", "region"):
        check(m["next_ids"], key, "an integer >= 0", _is_count, f"next_ids.{key}")
    if "batch" in m:
        check(m, "batch", "an integer >= 1", lambda v: _is_int(v) and v >= 1, "batch")
    if m.get("version", 1) >= 2:
        check(m, "files", f"a mapping of {sorted(DATA_FILES)} to file names", lambda v: isinstance(v, dict), "files")
        for role in DATA_FILES:
            check(m["files"], role, "a file name in the index folder", _is_file_name, f"files.{role}")
    first_id: dict[int, int] = {}
    first_path: dict[str, int] = {}
    for i, entry in enumerate(m["images"]):
        if not isinstance(entry, dict):
            raise fail(f"images[{i}] must be a mapping of {sorted(_IMAGE_FIELDS)}, got {type(entry).__name__}")
        for key, (what, ok) in _IMAGE_FIELDS.items():
            if key not in entry:
                raise fail(f"images[{i}] lacks {key!r} ({what})")
            if not ok(entry[key]):
                raise fail(f"images[{i}].{key} must be {what}, got {json.dumps(entry[key])[:60]}")
        if entry["id"] in first_id:
            raise fail(f"duplicate image id {entry['id']} (entries {first_id[entry['id']]} and {i})")
        if entry["path"] in first_path:
            raise fail(f"images[{i}].path {entry['path']!r} is also images[{first_path[entry['path']]}]'s")
        first_id[entry["id"]], first_path[entry["path"]] = i, i
    if first_id and m["next_ids"]["image"] <= max(first_id):
        raise fail(
            f"next_ids.image={m['next_ids']['image']} must be greater than every image id (the largest is "
            f"image id {max(first_id)}), or new images would reuse ids"
        )


def _check_region_tables(
    ids: np.ndarray, image: np.ndarray, boxes: np.ndarray, images: dict[int, Any], next_region: int, file: Path
) -> None:
    """Raises ValueError when the region tables (N,) ids, (N,) image ids, (N, 4) boxes of ``file``
    do not fit the manifest: ids not strictly ascending or not below ``next_region``, regions of
    images the manifest does not list, or boxes not (N, 4)."""
    problem = None
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        problem = f"boxes must be (N, 4), got {tuple(boxes.shape)}"
    elif len(ids) and (np.any(np.diff(ids) <= 0) or ids[-1] >= next_region or ids[0] < 0):
        problem = f"region ids must be strictly ascending in [0, next_ids.region={next_region})"
    else:
        orphans = np.setdiff1d(image, np.fromiter(images, np.int64, len(images)))
        if len(orphans):
            problem = f"regions of image ids {orphans[:5].tolist()} that {MANIFEST} does not list"
    if problem:
        raise ValueError(f"{file}: {problem}; the index files do not belong together: rebuild the index")


def _query_predictor(model: OVDetector, text: str, emb: torch.Tensor, imgsz: int, folded: FoldedCache) -> Predictor:
    """The detector with ``text`` as its one class, keeping each image's best box: what
    ``set_classes([text])`` + ``predict`` ranks by."""
    emb = emb.to(next(model.parameters()).device)
    nms = NMSConfig(conf=0.0, iou=0.7, max_det=1, max_nms=1)  # the best anchor is the top box NMS keeps
    return Predictor(model, [text], emb, nms, imgsz=imgsz, folded=folded.get(model, emb))


def exhaustive_search(
    detector: SearchableDetector, paths: Sequence[str | os.PathLike], text: str, imgsz: int = 640, batch: int = 8
) -> list[tuple[str, float]]:
    """The reference an index approximates: the detector run on every image with ``text`` as its
    one class, images ranked by their best score (unreadable files are left out).

    Returns:
        (resolved path, score) for every readable image, best first (paths as an index stores them).
    """
    emb = torch.nn.functional.normalize(detector.encode([text]).float(), dim=-1)
    folded = FoldedCache()
    predictor = _query_predictor(detector.model, text, emb, imgsz, folded)
    out: list[tuple[str, float]] = []
    names = [str(Path(p).resolve()) for p in paths]
    for lo in range(0, len(names), batch):
        chunk = names[lo : lo + batch]
        items = [(name, im) for name, (im, _) in zip(chunk, _read(chunk)) if im is not None]
        if items:
            dets = predictor([im for _, im in items], [name for name, _ in items], keep_images=False)
            out += [(d.path or "", float(d.scores[0]) if len(d) else 0.0) for d in dets]
    out.sort(key=lambda r: -r[1])
    return out
