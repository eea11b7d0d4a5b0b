"""Text search (``ovdet index`` / ``ovdet search``) against brute force, and at scale.

Quality: builds an :class:`ovdet.Index` over coco128 and answers 20 queries; the reference is
brute force (``set_classes([query])`` + ``predict`` on every image, ranked by the best score).
Prints recall@k of the index alone and re-ranked with 0/20/30/50 candidates, with the
seconds per query of each, and brute force's.

Scale (synthetic vectors, as real ones would need a million images): query latency of the
faiss index at 10k and 1M regions (Flat, SQ8 and IVF1024,Flat), and the memory per image. The
vectors are clustered (a Gaussian mixture of 4096 centres), as region embeddings are (objects of
a kind land near each other); on structureless Gaussian noise an inverted file (IVF) has nothing
to partition and its recall collapses, so that would measure the data, not the index.

    python benchmarks/bench_search.py --model ovdet-demo --imgsz 640
    python benchmarks/bench_search.py --skip-quality            # scale only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEFAULT_DATA, coco128_files  # noqa: E402

QUERIES = [
    "person", "a dog", "cat", "car", "bus", "train", "airplane", "giraffe", "elephant", "zebra",
    "pizza", "donut", "broccoli", "cup", "bottle", "laptop", "bed", "clock", "umbrella", "a red car",
]  # fmt: skip


def quality(args: argparse.Namespace) -> None:
    from ovdet import Detector, Index
    from ovdet.datatools import exhaustive_search

    files = coco128_files(args.data)
    det = (
        Detector.from_pretrained(args.model, device="cpu")
        if not Path(args.model).exists()
        else Detector.load(args.model, device="cpu")
    )
    det.encode(QUERIES)  # text embeddings cached: neither side pays the encoder
    t0 = time.perf_counter()
    truth = {q: [p for p, _ in exhaustive_search(det, files, q, args.imgsz)[: args.k]] for q in QUERIES}
    brute = (time.perf_counter() - t0) / len(QUERIES)
    index = Index(det, args.vocabulary, imgsz=args.imgsz, regions=args.regions)
    report = index.add(files)
    with tempfile.TemporaryDirectory() as tmp:
        index.save(tmp)
        disk = sum(f.stat().st_size for f in Path(tmp).iterdir())
    print(
        f"model {args.model}, imgsz {args.imgsz}, indexing vocabulary {args.vocabulary} ({len(index.vocabulary)} names)"
    )
    print(
        f"index build: {len(files)} images in {report.seconds:.1f} s = {len(files) / report.seconds:.1f} images/s; "
        f"{index.num_regions} regions; {index.memory_bytes() / len(index) / 1024:.1f} KiB/image in memory, "
        f"{disk / len(index) / 1024:.1f} KiB/image on disk"
    )
    print(f"brute force: {brute:.2f} s/query ({len(files)} images each)")
    print(f"{'candidates':>10} {'recall@' + str(args.k):>10} {'min':>5} {'s/query':>8} {'vs brute':>9}")
    for cands in args.candidates:
        recalls, times = [], []
        for q in QUERIES:
            t0 = time.perf_counter()
            hits = index.search(q, k=args.k, rerank=cands > 0, candidates=cands or None).hits
            times.append(time.perf_counter() - t0)
            recalls.append(len(set(truth[q]) & {h.path for h in hits}) / args.k)
        per = statistics.mean(times)
        label = "index only" if cands == 0 else str(cands)
        print(f"{label:>10} {statistics.mean(recalls):>10.3f} {min(recalls):>5.1f} {per:>8.3f} {per / brute:>8.3f}x")


def scale(args: argparse.Namespace) -> None:
    import faiss

    from ovdet.datatools.search import _Vectors

    dim = args.dim + 1  # [e, bias]
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4096, dim)).astype(np.float32)

    def clustered(n: int) -> np.ndarray:  # (n, dim) float32: a centre plus noise of half its scale
        out = centres[rng.integers(0, len(centres), n)]
        out += 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
        return out

    queries = clustered(50)
    queries[:, -1] = 1.0
    print(f"\nfaiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, vectors of {dim} floats")
    print(
        f"{'regions':>9} {'index':>14} {'build s':>8} {'query ms p50':>13} {'MiB':>8} {'KiB/image':>10} {'recall@10':>10}"
    )
    for n in args.sizes:
        data = clustered(n)
        ids = np.arange(n, dtype=np.int64)
        exact = None
        for spec in ("Flat", "SQ8", "IVF1024,Flat"):
            if spec.startswith("IVF") and n < 39 * 1024:
                continue
            vec = _Vectors(dim, spec)
            t0 = time.perf_counter()
            vec.add(data, ids)
            build = time.perf_counter() - t0
            lat, found = [], []
            for q in queries:
                t0 = time.perf_counter()
                _, got = vec.search(q[None], 240, nprobe=16)  # what a k=10 search (30 candidates) asks for
                lat.append((time.perf_counter() - t0) * 1000)
                found.append(got[0][:10])
            if exact is None:
                exact = found
            recall = statistics.mean(len(set(a) & set(b)) / 10 for a, b in zip(exact, found))
            with tempfile.TemporaryDirectory() as tmp:
                vec.write(Path(tmp) / "v.faiss")
                mib = (Path(tmp) / "v.faiss").stat().st_size / 2**20
            per_image = mib * 1024 / (n / args.regions)
            print(
                f"{n:>9} {spec:>14} {build:>8.2f} {statistics.median(lat):>13.2f} {mib:>8.1f} {per_image:>10.1f} {recall:>10.2f}"
            )
        del data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--model", default="ovdet-demo")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--vocabulary", default="lvis")
    ap.add_argument("--regions", type=int, default=64)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--candidates", type=int, nargs="+", default=[0, 20, 30, 50])
    ap.add_argument("--dim", type=int, default=512, help="embedding width of the synthetic vectors (CLIP: 512)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    args = ap.parse_args()
    if not args.skip_quality:
        quality(args)
    if not args.skip_scale:
        scale(args)


if __name__ == "__main__":
    main()
