"""``tools/eval_ovcoco.py``: OV-COCO's 48 base / 17 novel split and the base-only training data.

The transfer number itself is a tool run (README "The demo model"); these tests pin what it
measures: the split is OV-COCO's, the training data carries no novel box, and the evaluation set
carries only novel boxes under the full 65-name vocabulary.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from ovdet.data.readers import read_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    sys.path.insert(0, str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location("eval_ovcoco", ROOT / "tools" / "eval_ovcoco.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_is_ov_cocos_48_and_17(tool, data_dir: Path) -> None:
    coco = read_dataset(data_dir / "coco128" / "coco128.yaml").raw_names
    assert len(tool.BASE) == 48 and len(tool.NOVEL) == 17
    assert not set(tool.BASE) & set(tool.NOVEL)
    assert set(tool.BASE) | set(tool.NOVEL) <= set(coco)
    # the 15 COCO classes OV-COCO leaves out (no boxes with enough instances in the original split)
    assert {"traffic light", "hair drier", "dining table"} <= set(coco) - set(tool.BASE) - set(tool.NOVEL)


def test_restrict_keeps_every_image_and_only_the_chosen_boxes(tool, data_dir: Path) -> None:
    ds = read_dataset(data_dir / "coco128" / "coco128.yaml")
    vocab = (*tool.BASE, *tool.NOVEL)
    novel = tool.restrict(ds, vocab, tool.NOVEL)
    base_only = tool.restrict(ds, tool.BASE, tool.BASE)
    assert len(novel.records) == len(base_only.records) == len(ds.records)
    want_novel = sum(int(np.isin(r.labels, [ds.raw_names.index(n) for n in tool.NOVEL]).sum()) for r in ds.records)
    assert want_novel > 50  # coco128 has novel objects (cups, knives, sinks, ...)
    assert sum(len(r.labels) for r in novel.records) == want_novel
    for r_novel, r_base, r in zip(novel.records, base_only.records, ds.records):
        assert r_novel.path == r.path and r_base.path == r.path
        assert all(vocab[i] in tool.NOVEL for i in r_novel.labels)
        assert all(tool.BASE[i] in tool.BASE for i in r_base.labels) and r_base.labels.max(initial=-1) < 48
        assert [vocab[i] for i in r_novel.labels] == r_novel.texts
        # the boxes kept are the original ones, class for class
        orig = {ds.raw_names[lab] for lab in r.labels}
        assert {tool.BASE[i] for i in r_base.labels} == orig & set(tool.BASE)
        assert len(r_base.boxes) == len(r_base.labels) == len(r_base.ignore)
    assert novel.names == list(vocab) and base_only.names == list(tool.BASE)
    with pytest.raises(ValueError, match="not in the dataset's vocabulary"):
        tool.restrict(ds, ("person", "unicorn"), ("person",))
