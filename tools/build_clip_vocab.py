"""Regenerate ovdet's shipped CLIP ViT-B/32 tables from Detic's files (see ovdet/text/vocab/clip-vit-b32/README.md).

    python tools/build_clip_vocab.py [SOURCE_DIR]   # default: $OVDET_DATA/clip-vit-b32-text

SOURCE_DIR holds ``<table>.npy`` ((N, 512) float16, read without pickle) and ``<table>.txt``
(row i = line i) for coco, lvis, objects365 and openimages, and ``LICENSE.Detic.Apache-2.0``.
Writes ``ovdet/text/vocab/clip-vit-b32/embeddings.safetensors`` (the rows as they are: float16,
not normalised; names, prompt, encoder and source sha256 in the metadata), copies the licence,
and writes ``ovdet/text/vocab/openimages.txt`` (the OpenImages vocabulary: each name once).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ovdet.text.builtin import BUILTIN_CLIP_ENCODER_ID, BUILTIN_CLIP_TEMPLATES, CLIP_TABLES, TABLE_FILE, TABLE_FORMAT
from ovdet.text.files import write_safetensors

SOURCE = "facebookresearch/Detic @ 436cda2a, datasets/metadata/*_clip_a+cname*.npy (Apache-2.0)"
VOCAB = Path(__file__).resolve().parents[1] / "ovdet" / "text" / "vocab"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("OVDET_DATA", "../shared/data")) / "clip-vit-b32-text"
    parser.add_argument("source", nargs="?", type=Path, default=default, help="folder of Detic's .npy/.txt files")
    src: Path = parser.parse_args().source
    tensors, names, sha = {}, {}, {}
    for table in CLIP_TABLES:
        rows = np.load(src / f"{table}.npy", allow_pickle=False)  # (N, 512)
        lines = (src / f"{table}.txt").read_text(encoding="utf-8").splitlines()
        if rows.dtype != np.float16 or rows.ndim != 2 or rows.shape != (len(lines), 512):
            raise SystemExit(f"{src / table}.npy: expected ({len(lines)}, 512) float16, got {rows.shape} {rows.dtype}")
        tensors[table] = torch.from_numpy(rows.copy())
        names[table] = lines
        sha[table] = hashlib.sha256((src / f"{table}.npy").read_bytes()).hexdigest()
    metadata = {
        "format": TABLE_FORMAT,
        "encoder_id": BUILTIN_CLIP_ENCODER_ID,
        "templates": json.dumps(list(BUILTIN_CLIP_TEMPLATES)),
        "normalised": "false",
        "source": SOURCE,
        "source_sha256": json.dumps(sha),
        "names": json.dumps(names),
    }
    out = VOCAB / TABLE_FILE
    write_safetensors(out, tensors, metadata)
    shutil.copyfile(src / "LICENSE.Detic.Apache-2.0", out.parent / "LICENSE.Detic.Apache-2.0")
    # One text is one class: Detic's list names Bench and Mouse twice; the first of each is kept.
    (VOCAB / "openimages.txt").write_text("\n".join(dict.fromkeys(names["openimages"])) + "\n", encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); sha256 of the sources: {sha}")


if __name__ == "__main__":
    main()
