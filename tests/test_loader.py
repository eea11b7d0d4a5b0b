"""Training/validation loader on real coco128 images: geometry, texts, determinism, robustness."""

from __future__ import annotations

import dataclasses
import gc
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ovdet.config import AugmentConfig
from ovdet.data.batch import collate
from ovdet.data.images import decode_image
from ovdet.data.letterbox import letterbox
from ovdet.data.loader import DetectionDataset, build_loader
from ovdet.data.readers import read_yolo
from ovdet.data.records import DataReport, Dataset, ImageRecord
from ovdet.data.transforms import swap_left_right

IMGSZ = 320
#: Augmentation that changes nothing: isolates letterbox / flip / mosaic in exact checks.
IDENTITY = AugmentConfig(mosaic=0.0, scale=(1.0, 1.0), translate=0.0, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.0)


@pytest.fixture(scope="module")
def coco128(data_dir: Path) -> Dataset:
    data = read_yolo(data_dir / "coco128" / "coco128.yaml", "train")
    assert len(data.records) == 128 and len(data.names) == 80
    return data


def _subset(data: Dataset, records: list[ImageRecord]) -> Dataset:
    return Dataset(records, data.names, data.raw_names, data.category_ids, DataReport())


def _bgr(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) RGB tensor → (H, W, 3) BGR array."""
    return np.ascontiguousarray(image.numpy().transpose(1, 2, 0)[:, :, ::-1])


def _check_batch(batch: dict, data: Dataset, imgsz: int, max_texts: int) -> None:
    """Every invariant of a collated training batch."""
    b = len(batch.paths)
    m = len(batch.labels)
    assert batch.images.shape == (b, 3, imgsz, imgsz) and batch.images.dtype == torch.uint8
    assert batch.batch_idx.shape == (m,) and batch.batch_idx.dtype == torch.int64
    assert batch.labels.dtype == torch.int64
    assert batch.boxes.shape == (m, 4) and batch.boxes.dtype == torch.float32
    assert batch.ignore.shape == (m,) and batch.ignore.dtype == torch.bool
    assert batch.text_mask.shape == (b, max_texts) and batch.text_mask.dtype == torch.bool
    assert len(batch.texts) == b and all(len(t) == max_texts for t in batch.texts)
    assert batch.box_source.shape == (m, 2)
    if m:
        assert bool(torch.all(batch.batch_idx[1:] >= batch.batch_idx[:-1]))
        x1, y1, x2, y2 = batch.boxes.unbind(1)
        assert bool(torch.all((x1 >= 0) & (x1 < x2) & (x2 <= imgsz))), batch.boxes
        assert bool(torch.all((y1 >= 0) & (y1 < y2) & (y2 <= imgsz))), batch.boxes
        assert int(batch.labels.min()) >= 0 and int(batch.labels.max()) < max_texts
    for i in range(b):
        texts, mask = batch.texts[i], batch.text_mask[i]
        real = [t for t, keep in zip(texts, mask.tolist()) if keep]
        assert len(set(real)) == len(real) and all(t == "" for t, keep in zip(texts, mask.tolist()) if not keep)
        sel = batch.batch_idx == i
        for label, ignore, (rec, box) in zip(
            batch.labels[sel].tolist(), batch.ignore[sel].tolist(), batch.box_source[sel].tolist()
        ):
            assert ignore == bool(data.records[rec].ignore[box])  # crowd flags travel with their box
            # The box's original class text, followed through the flip, is its text in the list.
            original = data.records[rec].texts[box]
            expected = swap_left_right(original) if batch.flipped[i] else original
            assert mask[label] and texts[label] == expected
        positives = {texts[label] for label in batch.labels[sel].tolist()}
        assert positives <= set(real)
        # A negative is never a class of any image the sample was built from (a box the crop
        # cut away may still be partly visible).
        present = {t for r in batch.sources[i] for t in data.records[r].texts}
        if batch.flipped[i]:
            present |= {swap_left_right(t) for t in present}
        assert not (set(real) - positives) & present
        assert len(batch.sources[i]) == (4 if batch.mosaic[i] else 1)


def test_one_epoch_with_mosaic_over_coco128(coco128: Dataset):
    # Every 5th box a crowd region, to follow ignore flags through the geometry.
    records = [dataclasses.replace(r, ignore=np.arange(len(r.texts)) % 5 == 4) for r in coco128.records]
    data = _subset(coco128, records)
    ds = DetectionDataset(data, imgsz=IMGSZ, seed=0)
    loader = build_loader(ds, batch_size=16, workers=0, shuffle=True, seed=0)
    loader.set_epoch(0, total_epochs=100)
    seen, boxes, mosaics, flips = [], 0, 0, 0
    ignored = 0
    for batch in loader:
        _check_batch(batch, data, IMGSZ, 80)
        ignored += int(batch.ignore.sum())
        seen += batch.indices
        boxes += len(batch.labels)
        mosaics += int(batch.mosaic.sum())
        flips += int(batch.flipped.sum())
    assert sorted(seen) == list(range(128))  # one full epoch, each image once
    assert mosaics == 128 and 30 < flips < 98  # mosaic p=1, flip p=0.5
    assert boxes > 900  # mosaics carry ~4 images' boxes each, minus what the crop cuts away
    assert 0.1 * boxes < ignored < 0.3 * boxes
    assert ds.skipped == 0 and ds.dropped == 0


def test_sample_fields(coco128: Dataset):
    ds = DetectionDataset(coco128, imgsz=IMGSZ, seed=0, max_texts=40)
    s = ds[3]
    assert s["image"].shape == (3, IMGSZ, IMGSZ) and s["image"].dtype == torch.uint8
    assert s["path"] == str(coco128.records[3].path) and s["index"] == 3
    assert s["orig_size"] == decode_image(coco128.records[3].path).shape[:2]
    assert len(s["texts"]) == 40 and s["text_mask"].shape == (40,)
    batch = collate([s, ds[4]])
    _check_batch(batch, coco128, IMGSZ, 40)

    # Background images (no label file) through the single-image and validation paths.
    background = [i for i, r in enumerate(coco128.records) if not r.texts]
    assert len(background) == 2
    for train in (True, False):
        ds = DetectionDataset(coco128, imgsz=IMGSZ, train=train, augment=dataclasses.replace(IDENTITY, fliplr=0.5))
        batch = collate([ds[i] for i in background])
        _check_batch(batch, coco128, IMGSZ, 80)
        assert batch.boxes.shape == (0, 4) and batch.batch_idx.shape == (0,)
        assert batch.text_mask.all()  # 80 negatives each


def test_same_seed_same_batch_different_seed_differs(coco128: Dataset):
    def first(seed: int) -> dict:
        ds = DetectionDataset(coco128, imgsz=IMGSZ, seed=seed)
        return next(iter(build_loader(ds, batch_size=4, workers=0, shuffle=True, seed=seed)))

    a, b, c = first(7), first(7), first(8)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes)
    assert torch.equal(a.labels, b.labels) and a.texts == b.texts and a.paths == b.paths
    assert a.paths != c.paths or not torch.equal(a.images, c.images)


def test_items_do_not_depend_on_workers_or_order(coco128: Dataset):
    data = _subset(coco128, coco128.records[:8])
    ds = DetectionDataset(data, imgsz=IMGSZ, seed=1)
    single = [ds[i] for i in reversed(range(8))][::-1]
    batches = list(build_loader(ds, batch_size=4, workers=2, shuffle=False))
    assert torch.equal(torch.cat([b.images for b in batches]), torch.stack([s["image"] for s in single]))
    assert torch.equal(torch.cat([b.boxes for b in batches]), torch.cat([s["boxes"] for s in single]))
    assert [t for b in batches for t in b.texts] == [s["texts"] for s in single]


def test_worker_batches_reuse_shared_memory_only_once_freed(coco128: Dataset):
    """Workers stack into reused shared-memory segments (PooledCollate): batches equal the
    in-process samples epoch after epoch, a segment is reused only after every tensor and
    array on its last batch is gone, and kept batches are never overwritten."""
    data = _subset(coco128, coco128.records[:12])
    ds = DetectionDataset(data, imgsz=IMGSZ, seed=6)
    loader = build_loader(ds, batch_size=3, workers=2, shuffle=True, seed=2, pin_memory=False)
    flags = loader.collate_fn.flags
    assert flags.shape == (2, 4) and flags.is_shared()

    kept_view, kept_array, kept_refs = None, None, None
    leases = []
    for epoch in range(4):
        loader.set_epoch(epoch, 10)
        order = [i for i, _, _ in loader.batch_sampler.sampler]
        for k, batch in enumerate(loader):
            keys = [(i, epoch, 10) for i in order[3 * k : 3 * k + 3]]
            expected = torch.stack([ds[key]["image"] for key in keys])
            assert torch.equal(batch.images, expected), (epoch, k)
            assert batch.images.is_shared() and not batch.boxes.is_shared()  # small tensors inline
            assert batch.lease is not None
            leases.append((batch.lease.worker, batch.lease.slot))
            if epoch == 0 and k == 1:  # keep a view and an array on this batch, nothing else
                kept_view, kept_array = batch.images[2], batch.images.numpy()
                kept_refs = (expected[2].clone(), expected.numpy().copy())
    assert len(leases) == 16 and len(set(leases)) < 16  # segments were reused
    # The kept batch's segment was never handed out again while its view and array lived.
    assert torch.equal(kept_view, kept_refs[0]) and np.array_equal(kept_array, kept_refs[1])

    # Batches that are all kept: each in a segment of its own (or a new one), never overwritten.
    held, orders = [], {}
    for epoch in (7, 8):
        loader.set_epoch(epoch, 10)
        orders[epoch] = [i for i, _, _ in loader.batch_sampler.sampler]
        held += [(epoch, k, b) for k, b in enumerate(loader)]
    for epoch, k, batch in held:
        keys = [(i, epoch, 10) for i in orders[epoch][3 * k : 3 * k + 3]]
        assert torch.equal(batch.images, torch.stack([ds[key]["image"] for key in keys])), (epoch, k)
    held = [b for _, _, b in held]
    ptrs = [b.images.data_ptr() for b in held]
    assert len(set(ptrs)) == len(ptrs)

    # Sent on from this process: a private copy, no lease, equal.
    again = pickle.loads(pickle.dumps(held[0]))
    assert again.lease is None and torch.equal(again.images, held[0].images)
    assert again.images.data_ptr() != held[0].images.data_ptr()
    assert torch.equal(again.boxes, held[0].boxes) and again.texts == held[0].texts
    del held, again, kept_view, kept_array
    gc.collect()
    # Freed everywhere: only the segments of batches made ahead (2 per worker) are still out.
    assert int(flags.sum()) <= 4


def test_epoch_changes_augmentation(coco128: Dataset):
    ds = DetectionDataset(coco128, imgsz=IMGSZ, seed=0)
    a = ds[5]["image"]
    ds.set_epoch(1, 10)
    assert not torch.equal(a, ds[5]["image"])


def _hands(tmp_path: Path, coco128: Dataset) -> Dataset:
    """One real image with two phrase boxes, "left hand" on the left and "right hand" on the right."""
    src = coco128.records[0]
    rec = ImageRecord(
        src.path,
        "hands",
        src.height,
        src.width,
        boxes=[[10, 100, 110, 200], [400, 100, 600, 300]],
        texts=["left hand", "right hand"],
        labels=[0, 1],
        ignore=[False, False],
    )
    names = ["left hand", "right hand", "dog"]
    return Dataset([rec], names, names, [0, 1, 2], DataReport())


def test_left_right_phrases_swap_under_flip(tmp_path: Path, coco128: Dataset):
    data = _hands(tmp_path, coco128)
    plain = DetectionDataset(data, imgsz=IMGSZ, augment=IDENTITY, seed=0)[0]
    flip = DetectionDataset(data, imgsz=IMGSZ, augment=dataclasses.replace(IDENTITY, fliplr=1.0), seed=0)[0]
    assert not plain["flipped"] and flip["flipped"]
    assert torch.equal(flip["image"], plain["image"].flip(-1))  # exactly a mirror image
    for box in range(2):
        p = int(torch.nonzero(plain["box_source"][:, 1] == box))
        f = int(torch.nonzero(flip["box_source"][:, 1] == box))
        x1, y1, x2, y2 = plain["boxes"][p].tolist()
        assert flip["boxes"][f].tolist() == pytest.approx([IMGSZ - x2, y1, IMGSZ - x1, y2], abs=1e-3)
        original = data.records[0].texts[box]
        assert plain["texts"][int(plain["labels"][p])] == original
        assert flip["texts"][int(flip["labels"][f])] == {"left hand": "right hand", "right hand": "left hand"}[original]


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path: Path, coco128: Dataset):
    records = []
    for rec in coco128.records[:6]:
        dst = tmp_path / rec.path.name
        shutil.copy(rec.path, dst)
        records.append(dataclasses.replace(rec, path=dst))
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(coco128.records[6].path.read_bytes()[:3000])
    records.append(dataclasses.replace(coco128.records[6], path=bad))
    records.append(dataclasses.replace(coco128.records[7], path=tmp_path / "missing.jpg"))
    data = _subset(coco128, records)
    bad_paths = {str(bad), str(tmp_path / "missing.jpg")}

    ds = DetectionDataset(data, imgsz=IMGSZ, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(build_loader(ds, batch_size=4, workers=0, shuffle=False))
    assert not caught  # nothing printed: each bad image is one entry of the data's report
    reasons = dict(data.report.problems)
    assert sorted(reasons) == sorted(bad_paths)
    assert (
        reasons[str(bad)].startswith("truncated JPEG")
        and "image file not found" in reasons[str(tmp_path / "missing.jpg")]
    )
    assert all(r.endswith("replaced by another image during training") for r in reasons.values())
    events = sum(len(b.skipped) for b in batches)
    assert sum(len(b.paths) for b in batches) == 8  # the epoch completes at full length
    assert events >= 2 and ds.skipped == events  # both bad images were the main image once
    assert {p for b in batches for p in b.skipped} == bad_paths
    assert not bad_paths & {p for b in batches for p in b.paths}
    for b in batches:
        _check_batch(b, data, IMGSZ, 80)

    # Workers count in their own copies; the loader brings the counts to the main process.
    data2 = _subset(coco128, records)
    ds2 = DetectionDataset(data2, imgsz=IMGSZ, seed=0)
    batches2 = list(build_loader(ds2, batch_size=4, workers=2, shuffle=False))
    assert ds2.skipped == events == sum(len(b.skipped) for b in batches2)
    assert dict(data2.report.problems) == reasons  # each once, though both workers met them


def test_close_mosaic_switches_mosaic_off(coco128: Dataset):
    data = _subset(coco128, coco128.records[:6])
    cfg = dataclasses.replace(IDENTITY, mosaic=1.0, close_mosaic=2)
    ds = DetectionDataset(data, imgsz=IMGSZ, augment=cfg, seed=0)
    ds.set_epoch(7, total_epochs=10)
    assert ds.mosaic_enabled and all(ds[i]["mosaic"] for i in range(6))
    ds.set_epoch(8, total_epochs=10)
    assert not ds.mosaic_enabled
    for i in range(6):
        s = ds[i]
        assert not s["mosaic"]
        # No seams: the whole image is the one source image resized and letterboxed (identity
        # affine, no HSV/flip), pixel for pixel, with its boxes mapped the same way.
        image = decode_image(data.records[i].path)
        expected, info = letterbox(image, IMGSZ, auto=False)  # longest side of coco128 = 640 → 320
        assert np.array_equal(_bgr(s["image"]), expected)
        sx, sy = info.scale
        ref = data.records[i].boxes * [sx, sy, sx, sy] + [*info.pad, *info.pad]
        np.testing.assert_allclose(s["boxes"].numpy(), ref[s["box_source"][:, 1].numpy()], atol=1e-3)


def test_validation_is_exact_letterbox(coco128: Dataset):
    ds = DetectionDataset(coco128, imgsz=IMGSZ, train=False, seed=0)
    for i in (0, 1, 60):
        s = ds[i]
        rec = coco128.records[i]
        expected, info = letterbox(decode_image(rec.path), IMGSZ, auto=False)
        assert np.array_equal(_bgr(s["image"]), expected)  # pixel-exact
        assert s["letterbox"] == info and not s["mosaic"] and not s["flipped"]
        sx, sy = info.scale
        ref = rec.boxes * [sx, sy, sx, sy] + [*info.pad, *info.pad]
        assert len(s["boxes"]) == len(rec.boxes)
        np.testing.assert_allclose(s["boxes"].numpy(), ref[s["box_source"][:, 1].numpy()], atol=1e-3)


def test_distributed_sampler_splits_disjointly(coco128: Dataset):
    ds = DetectionDataset(coco128, imgsz=IMGSZ, train=False)
    shards = []
    for rank in range(2):
        loader = build_loader(
            ds, batch_size=8, workers=0, shuffle=True, seed=3, distributed=True, num_replicas=2, rank=rank
        )
        loader.set_epoch(1)
        items = list(loader.batch_sampler.sampler)
        assert all(e == 1 for _, e, _ in items)  # the epoch travels with each index
        shards.append([i for i, _, _ in items])
        assert len(loader) == 8  # 64 images per rank
    assert len(shards[0]) == len(shards[1]) == 64
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(128))
    loader.set_epoch(2)
    assert [i for i, _, _ in loader.batch_sampler.sampler] != shards[1]  # the order changes with the epoch


def test_text_limits_and_lvis_negatives(coco128: Dataset):
    cat = {n: i for i, n in enumerate(coco128.names)}
    recs = [
        dataclasses.replace(
            r, not_exhaustive_category_ids=[cat["dog"], cat["cat"]], neg_category_ids=[cat["zebra"], cat["giraffe"]]
        )
        for r in coco128.records[:10]
        if not {"dog", "zebra", "giraffe"} & set(r.texts)
    ]
    data = _subset(coco128, recs)
    ds = DetectionDataset(data, imgsz=IMGSZ, train=False, max_texts=80)
    for i in range(len(recs)):
        s = ds[i]
        assert "dog" not in s["texts"] and {"zebra", "giraffe"} <= set(s["texts"])
        if "cat" not in recs[i].texts:
            assert "cat" not in s["texts"]

    # More distinct classes than max_texts: surplus boxes are dropped and counted.
    many = max(coco128.records, key=lambda r: len(set(r.texts)))
    ds = DetectionDataset(_subset(coco128, [many]), imgsz=IMGSZ, train=False, max_texts=2)
    s = ds[0]
    assert s["text_mask"].all() and set(s["texts"]) <= set(many.texts)
    assert s["dropped"] == sum(t not in s["texts"] for t in many.texts) > 0 and ds.dropped == s["dropped"]
    assert len(s["labels"]) == len(many.texts) - s["dropped"]


def test_ram_cache_gives_identical_samples(coco128: Dataset):
    data = _subset(coco128, coco128.records[:6])
    plain = DetectionDataset(data, imgsz=IMGSZ, seed=4)
    cached = DetectionDataset(data, imgsz=IMGSZ, seed=4, cache="ram")
    assert cached.fill_cache() == 6
    for i in range(6):
        a, b = plain[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"]) and a["texts"] == b["texts"]


def test_decode_buffer_gives_identical_samples_and_stays_in_budget(
    coco128: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a cache, recently decoded images are kept (LRU, bounded in MiB): the samples equal
    unbuffered ones over several epochs (augmentation never writes into a kept image), repeat
    draws decode nothing, and the kept bytes never pass the budget."""
    import ovdet.data.loader as loader_module

    decoded: list[str] = []

    def counting_decode(path, **kwargs):
        decoded.append(str(path))
        return decode_image(path, **kwargs)

    monkeypatch.setattr(loader_module, "decode_image", counting_decode)
    data = _subset(coco128, coco128.records[:8])
    plain = DetectionDataset(data, imgsz=IMGSZ, seed=4, buffer_mb=0)
    buffered = DetectionDataset(data, imgsz=IMGSZ, seed=4)  # default 256 MiB: all 8 fit
    for epoch in (0, 1, 2):
        plain.set_epoch(epoch, 50)
        buffered.set_epoch(epoch, 50)
        for i in range(8):
            before = len(decoded)
            a = plain[i]
            plain_decodes = len(decoded) - before
            b = buffered[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
            assert a["texts"] == b["texts"]
            assert plain_decodes >= 1  # mosaic: up to 4 images per sample
    assert len(buffered._buffer) == 8 and buffered._buffer_bytes == sum(v[0].nbytes for v in buffered._buffer.values())
    # once every image is kept, the buffered dataset decodes nothing more
    before = len(decoded)
    for i in range(8):
        buffered[i]
    assert len(decoded) == before

    # a budget of about three images (validation: kept at their decoded size): never exceeded,
    # least recently used dropped first, so what is kept is the longest run of latest images that fits
    sizes = [decode_image(r.path).nbytes for r in data.records]
    small = DetectionDataset(data, imgsz=IMGSZ, seed=4, buffer_mb=3.5 * max(sizes) / 2**20, train=False)
    for i in range(8):
        small[i]
        kept, total = [], 0
        for j in range(i, -1, -1):
            if total + sizes[j] > small._buffer_limit:
                break
            kept.insert(0, j)
            total += sizes[j]
        assert list(small._buffer) == kept and small._buffer_bytes == total <= small._buffer_limit
    assert 3 <= len(small._buffer) < 8
    with pytest.raises(ValueError, match="buffer_mb"):
        DetectionDataset(data, imgsz=IMGSZ, buffer_mb=-1)
    assert DetectionDataset(data, imgsz=IMGSZ, cache="ram")._buffer_limit == 0  # the cache holds them instead


def test_persistent_workers_follow_the_epoch(coco128: Dataset):
    """Workers live across epochs, yet each epoch's samples equal the single-process ones."""
    ds = DetectionDataset(coco128, imgsz=IMGSZ, train=True, seed=5)
    loader = build_loader(ds, batch_size=4, workers=2, shuffle=False, seed=5)
    assert loader.persistent_workers
    firsts = []
    for epoch, total in ((0, 20), (15, 20)):  # epoch 15 of 20: mosaic closed (close_mosaic=10)
        loader.set_epoch(epoch, total)
        batch = next(iter(loader))
        ref = ds[(0, epoch, total)]
        assert torch.equal(batch.images[0], ref["image"])
        assert bool(batch.mosaic[0]) == ref["mosaic"]
        firsts.append(batch.images[0])
    assert not torch.equal(firsts[0], firsts[1])
    assert not ds[(0, 15, 20)]["mosaic"]  # closed for the last 10 of 20 epochs
