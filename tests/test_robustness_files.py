"""Files, models and indexes that were used silently when wrong (issue #35, items 9-14): model
configs without bounds, checkpoints of unknown format versions or with NaN weights, embedding
files from another text encoder (or with zero rows, or integers), ``ovdet embed`` with a model
spec the other commands take, reruns of ``ovdet index``, broken index manifests, and an index
run killed half-way.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ovdet.checkpoint import load_checkpoint
from ovdet.cli import EXIT_INTERRUPTED, main
from ovdet.config import ConfigError, ModelConfig, from_dict, load_model_config, save_model_config, to_dict
from ovdet.datatools import Index
from ovdet.text import load_embeddings, save_embeddings, text_encoder_id
from ovdet.weights import bundled_dir
from tests.helpers import CONFIGS, TINY, make_detector

IMGSZ = 64
GELU = "open_clip:ViT-B-32:openai"  # OpenAI CLIP weights run with GELU: width 512, another function
QUICK_GELU = "open_clip:ViT-B-32-quickgelu:openai"  # the activation they were trained with


@pytest.fixture(scope="module")
def det():
    return make_detector(2)


@pytest.fixture()
def images(tmp_path: Path, coco128_images: list[Path]) -> Path:
    src = tmp_path / "images"
    src.mkdir()
    for p in coco128_images[:6]:
        shutil.copy(p, src / p.name)
    return src


# ------------------------------------------------------------------------- 9. model config bounds
def _tiny_data(**changes) -> dict:
    return {**to_dict(load_model_config(TINY)), **changes}


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"depths": [1, 2, 2, 1000000]}, r"model\.depths\[3\]=1000000 .*at most"),
        ({"neck_heads": [0, 0, 0, 0]}, r"model\.neck_heads\[0\]=0 must be >= 1"),
        ({"embed_dim": -384}, r"model\.embed_dim=-384 must be >= 1"),
        ({"channels": [8, 16, 0, 64, 64]}, r"model\.channels\[2\]=0 must be >= 2"),
        ({"channels": [8, 16, 32, 64, 10**6]}, r"model\.channels\[4\]=1000000 .*at most"),
        ({"neck_depth": 0}, r"model\.neck_depth=0 must be >= 1"),
        ({"reg_max": 0}, r"model\.reg_max=0 must be >= 1"),
        ({"pool_size": 10**4}, r"model\.pool_size=10000 .*at most"),
        ({"box_channels": 0}, r"model\.box_channels=0"),
        ({"embed_channels": -1}, r"model\.embed_channels=-1"),
        ({"pool_heads": 0}, r"model\.pool_heads=0"),
        ({"depths": [1, 1, "2", 1]}, r"model\.depths\[2\] must be an integer, got '2'"),
        ({"embed_dim": 32.5}, r"model\.embed_dim must be an integer, got 32\.5"),
        ({"depths": [1, True, 1, 1]}, r"model\.depths\[1\] must be an integer, got True"),
        ({"strides": [8, 16, 16]}, r"model\.strides .*increasing"),
        ({"strides": [8, 16, 0]}, r"model\.strides"),
        ({"bn_eps": 0.0}, r"model\.bn_eps=0\.0 must be in \(0, 1\)"),
        ({"bn_eps": math.nan}, r"model\.bn_eps=nan"),
        ({"bn_momentum": 1.5}, r"model\.bn_momentum=1\.5 must be in \[0, 1\]"),
    ],
)
def test_model_config_fields_are_bounded_before_anything_is_built(changes: dict, match: str) -> None:
    """Issue #35.9: every field is checked when the config is made (so before any allocation),
    with the field, the value and the bound in the message."""
    with pytest.raises(ConfigError, match=match):
        from_dict(ModelConfig, _tiny_data(**changes))


def test_every_known_model_config_validates() -> None:
    """The bounds leave room for every real architecture: all scales of v1 and v2, every shipped
    YAML and the bundled demo model."""
    for version in (1, 2):
        for scale in "nsmlx":
            assert ModelConfig.scaled(version, scale).version == version
            assert ModelConfig.scaled(version, scale, embed_dim=1024).embed_dim == 1024
    for path in sorted(CONFIGS.glob("*.yaml")):
        assert load_model_config(path) is not None
    demo = json.loads((bundled_dir("ovdet-demo") / "config.json").read_text())
    assert from_dict(ModelConfig, demo["model"], "model.").embed_dim == 512


@pytest.fixture()
def saved(det, tmp_path: Path) -> Path:
    return det.save(tmp_path / "model")


def _edit_config(folder: Path, **changes) -> None:
    meta = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (folder / "config.json").write_text(json.dumps(meta))


def test_checkpoint_with_an_unbounded_config_is_refused(saved: Path) -> None:
    meta = json.loads((saved / "config.json").read_text())
    _edit_config(saved, model={**meta["model"], "neck_heads": [0, 0, 0, 0]})
    with pytest.raises(ConfigError, match=r"config\.json.*model\.neck_heads\[0\]=0"):
        load_checkpoint(saved)


@pytest.mark.parametrize("version", [99, 0, "1", None])
def test_checkpoint_of_an_unknown_format_version_is_refused(saved: Path, version) -> None:
    _edit_config(saved, format_version=version)
    with pytest.raises(ValueError, match=r"config\.json.*format_version"):
        load_checkpoint(saved)


def test_non_finite_weights_warn_at_load_naming_the_tensors(det, saved: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(saved / "model.safetensors"))
    name = "head.contrast.0.bias"
    assert name in state
    state[name] = torch.full_like(state[name], math.nan)
    conv = next(k for k in state if k.endswith("conv.weight"))
    state[conv] = state[conv].clone()
    state[conv].view(-1)[:3] = math.inf
    save_file(state, str(saved / "model.safetensors"))
    with pytest.warns(UserWarning, match=r"NaN or infinite values") as caught:
        load_checkpoint(saved)
    text = str(caught[0].message)
    assert f"{name} ({state[name].numel()} of {state[name].numel()})" in text and f"{conv} (3 of" in text
    assert "2 tensor" in text and "model.safetensors" in text
    det.save(saved)  # finite weights: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(saved)


# ---------------------------------------------------------------------- 10. embedding files checked
def _emb_file(path: Path, emb: torch.Tensor, names: list[str], encoder_id: str | None = GELU) -> Path:
    metadata = {"names": json.dumps(names), "templates": json.dumps(["{}"])}
    if encoder_id is not None:
        metadata["encoder_id"] = encoder_id
    save_file({"embeddings": emb}, str(path), metadata=metadata)
    return path


def test_embedding_file_with_zero_rows_or_integers_is_refused(tmp_path: Path) -> None:
    """Issue #35.10: a zero row matches nothing, an integer file is no embedding: both refused."""
    rows = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    rows[1] = 0
    with pytest.raises(ValueError, match=r"zero\.safetensors: row 1 \('b'\) is all zeros"):
        load_embeddings(_emb_file(tmp_path / "zero.safetensors", rows, ["a", "b", "c"]))
    ints = torch.ones(3, 8, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"int\.safetensors: embeddings are int32.*floating-point"):
        load_embeddings(_emb_file(tmp_path / "int.safetensors", ints, ["a", "b", "c"]))
    half = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1).half()
    names, emb, _ = load_embeddings(_emb_file(tmp_path / "half.safetensors", half, ["a", "b", "c"]))
    assert emb.dtype == torch.float32 and torch.equal(emb, half.float())
    with pytest.raises(ValueError, match=r"row 0 \('a'\) is all zeros"):
        save_embeddings(tmp_path / "w.safetensors", ["a"], torch.zeros(1, 8), GELU, ["{}"])


def test_embedding_file_of_another_text_encoder_is_refused_or_warned(tmp_path: Path) -> None:
    """GELU and QuickGELU CLIP embeddings are both 512-d: only the ids tell them apart."""
    emb = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    path = _emb_file(tmp_path / "gelu.safetensors", emb, ["dog", "cat"], GELU)
    with pytest.raises(ValueError, match=rf"gelu\.safetensors.*{GELU}.*{QUICK_GELU}.*allow_other_encoder"):
        load_embeddings(path, encoder_id=QUICK_GELU)
    with pytest.warns(UserWarning, match=rf"{GELU}.*{QUICK_GELU}"):
        names, got, _ = load_embeddings(path, encoder_id=QUICK_GELU, allow_other_encoder=True)
    assert names == ["dog", "cat"] and torch.equal(got, emb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_embeddings(path, encoder_id=GELU)  # the same encoder: silent
        load_embeddings(path)  # nothing to compare with: silent
    bare = _emb_file(tmp_path / "bare.safetensors", emb, ["dog", "cat"], encoder_id=None)
    with pytest.warns(UserWarning, match=r"bare\.safetensors records no text encoder"):
        load_embeddings(bare, encoder_id=QUICK_GELU)
    mine = _emb_file(tmp_path / "mine.safetensors", emb, ["dog", "cat"], encoder_id="my-vectors")
    with pytest.warns(UserWarning, match=r"mine\.safetensors records the text encoder 'my-vectors', not one"):
        load_embeddings(mine, encoder_id=QUICK_GELU)  # an id ovdet cannot compare: used, with a warning


def test_cli_refuses_embeddings_of_another_encoder_unless_allowed(
    tmp_path: Path, coco128_images: list[Path], capsys: pytest.CaptureFixture
) -> None:
    overrides = ["embed_dim=512", "text.model=ViT-B-32-quickgelu", "text.pretrained=openai", "text.custom=null"]
    cfg = load_model_config(TINY, overrides)
    assert text_encoder_id(cfg.text) == QUICK_GELU  # named without building (no download)
    save_model_config(cfg, tmp_path / "model.yaml")
    emb = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    path = _emb_file(tmp_path / "gelu.safetensors", emb, ["dog", "cat"], GELU)
    argv = ["predict", "--model", str(tmp_path / "model.yaml"), "--embeddings", str(path), "--imgsz", str(IMGSZ)]
    argv += ["--source", str(coco128_images[0]), "--device", "cpu", "--quiet", "--save-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert GELU in err and QUICK_GELU in err and "--allow-other-encoder" in err
    with pytest.warns(UserWarning, match=rf"{GELU}.*{QUICK_GELU}"):
        assert main([*argv, "--allow-other-encoder"]) == 0


# -------------------------------------------------------------- 11. embed takes every model spec
@pytest.mark.parametrize("spec", ["name", "folder", "checkpoint", "yaml"])
def test_embed_accepts_every_model_spec(spec: str, det, tmp_path: Path) -> None:
    """Issue #35.11: ``ovdet embed --model`` takes what ``predict --model`` takes; the file is the
    model's own encoder's (its id, and the same rows the model computes)."""
    model = {
        "name": "ovdet-demo",
        "folder": str(bundled_dir("ovdet-demo")),
        "checkpoint": str(det.save(tmp_path / "ckpt")),
        "yaml": str(TINY),
    }[spec]
    from ovdet.api import load_detector

    out = tmp_path / "emb.safetensors"
    # names the demo's CLIP tables hold: offline, its text encoder cannot be built
    assert main(["embed", "--classes", "dog,raccoon", "-o", str(out), "--model", model, "--device", "cpu"]) == 0
    names, emb, meta = load_embeddings(out)
    ref = load_detector(model, "cpu")
    assert names == ["dog", "raccoon"] and meta["encoder_id"] == text_encoder_id(ref.cfg.text)
    torch.testing.assert_close(emb, ref.encode(names), atol=1e-5, rtol=1e-5)


def test_embed_names_a_model_spec_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "e.safetensors")
    assert main(["embed", "--classes", "dog", "-o", out, "--model", "ovdet-dem"]) == 2
    assert "did you mean the pretrained model 'ovdet-demo'" in capsys.readouterr().err


# ---------------------------------------------------------------- 12. rerunning the same index command
@pytest.mark.parametrize("form", ["builtin", "file", "inline"])
def test_rerunning_the_same_index_command_adds_new_files(
    form: str, det, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue #35.12: the stored vocabulary (names) is compared with the names the spec gives."""
    (tmp_path / "vocab.txt").write_text("dog\nred car\n")
    vocabulary = {"builtin": "coco", "file": str(tmp_path / "vocab.txt"), "inline": "dog, red car"}[form]
    model, out = det.save(tmp_path / "model"), tmp_path / "ix"
    later = tmp_path / "later"
    later.mkdir()
    for f in sorted(images.iterdir())[2:]:
        shutil.move(f, later / f.name)

    def index(source: Path, vocab: str = vocabulary) -> int:
        argv = ["index", "--model", str(model), "--out", str(out), "--source", str(source), "--vocabulary", vocab]
        return main([*argv, "--imgsz", str(IMGSZ), "--device", "cpu", "--quiet", "--regions", "4"])

    assert index(images) == 0
    assert "2 added" in capsys.readouterr().out
    assert index(images) == 0, capsys.readouterr().err  # the same command again
    assert "0 added, 0 updated, 2 unchanged" in capsys.readouterr().out
    for f in later.iterdir():
        shutil.move(f, images / f.name)
    assert index(images) == 0  # the README's promise: new files are added
    assert "4 added, 0 updated, 2 unchanged" in capsys.readouterr().out
    assert index(images, "lvis" if form == "builtin" else "dog, cat") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "vocabulary" in err


# ------------------------------------------------------------------------ 13. broken index manifests
@pytest.fixture()
def saved_index(det, images: Path, tmp_path: Path) -> Path:
    index = Index(det, ["dog", "car"], imgsz=IMGSZ, regions=4)
    index.add(sorted(images.iterdir())[:3])
    return index.save(tmp_path / "ix")


def _edit_manifest(folder: Path, edit) -> None:
    file = folder / "index.json"
    manifest = json.loads(file.read_text())
    edit(manifest)
    file.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m["images"][2].update(id=m["images"][0]["id"]), r"duplicate image id 0 \(entries 0 and 2\)"),
        (lambda m: m.update(images="x"), r"'images' must be a list of image entries, got str"),
        (lambda m: m["images"].__setitem__(1, "x"), r"images\[1\] must be a mapping"),
        (lambda m: m["images"][1].pop("path"), r"images\[1\] lacks 'path'"),
        (lambda m: m["images"][1].update(id="1"), r"images\[1\]\.id must be an integer"),
        (lambda m: m["images"][1].update(size=[10]), r"images\[1\]\.size must be \[height, width\]"),
        (lambda m: m["images"][2].update(path=m["images"][0]["path"]), r"images\[2\]\.path .* also images\[0\]"),
        (lambda m: m.update(counts=[1, 2, 3]), r"'counts' must be a mapping"),
        (lambda m: m["next_ids"].update(image=1), r"next_ids\.image=1 .*image id 2"),
        (lambda m: m.pop("vocabulary"), r"no 'vocabulary'"),
        (lambda m: m.update(imgsz="big"), r"'imgsz' must be an integer"),
        (lambda m: m["files"].update(vectors="../v.faiss"), r"'files\.vectors' must be a file name"),
    ],
)
def test_a_broken_manifest_names_the_problem(det, saved_index: Path, edit, match: str) -> None:
    """Issue #35.13: the actual problem, not "an interrupted save" or a raw Python error."""
    _edit_manifest(saved_index, edit)
    with pytest.raises(ValueError, match=match) as caught:
        Index.load(saved_index, det)
    assert "index.json" in str(caught.value) and "interrupted" not in str(caught.value)


# ------------------------------------------------------------------ 14. an index run killed mid-way
class _Killed(KeyboardInterrupt):
    pass


def _kill_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> list[int]:
    """Make the embedding pass raise on its ``calls + 1``-th batch; returns the batch sizes seen."""
    seen: list[int] = []
    original = Index._embed

    def embed(self, batch):
        if len(seen) == calls:
            raise _Killed()
        seen.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(Index, "_embed", embed)
    return seen


def test_an_interrupted_add_keeps_its_progress_and_a_rerun_continues(
    det, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #35.14: progress is saved at intervals; the rerun embeds only the rest, and the result
    equals an uninterrupted run."""
    files = sorted(images.iterdir())
    full = Index(det, ["dog", "car"], imgsz=IMGSZ, regions=4, batch=2)
    full.add(files)
    out = tmp_path / "ix"
    index = Index(det, ["dog", "car"], imgsz=IMGSZ, regions=4, batch=2)
    seen = _kill_after(monkeypatch, 2)
    with pytest.raises(_Killed):
        index.add(files, save_to=out, save_every=0.0)
    assert seen == [2, 2]
    monkeypatch.undo()
    resumed = Index.load(out, det)
    assert len(resumed) == 4 and resumed.paths == [str(f.resolve()) for f in files[:4]]
    seen = _kill_after(monkeypatch, 10)
    report = resumed.add(files, save_to=out, save_every=0.0)
    assert (report.added, report.unchanged) == (2, 4) and seen == [2]
    again = Index.load(out, det)
    assert again.paths == full.paths and again.num_regions == full.num_regions
    np.testing.assert_array_equal(again.image_regions(5), full.image_regions(5))
    for q in ("dog", "a red car"):
        a, b = full.search(q, k=6, rerank=False), again.search(q, k=6, rerank=False)
        assert [h.path for h in a.hits] == [h.path for h in b.hits]
        np.testing.assert_allclose([h.index_score for h in a.hits], [h.index_score for h in b.hits], atol=1e-6)
    # only the manifest's own data files are left: each save replaced the previous ones
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.json", *json.loads((out / "index.json").read_text())["files"].values()]
    )


def test_a_killed_index_command_is_continued_by_the_same_command(
    det, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    model, out = det.save(tmp_path / "model"), tmp_path / "ix"
    argv = ["index", "--model", str(model), "--out", str(out), "--source", str(images), "--vocabulary", "coco"]
    argv += ["--imgsz", str(IMGSZ), "--regions", "4", "--batch", "2", "--device", "cpu", "--quiet"]
    _kill_after(monkeypatch, 1)
    assert main([*argv, "--save-every", "0"]) == EXIT_INTERRUPTED
    monkeypatch.undo()
    assert len(Index.load(out, det)) == 2  # the first batch was saved before the kill
    capsys.readouterr()
    seen = _kill_after(monkeypatch, 10)
    assert main(argv) == 0
    assert "4 added, 0 updated, 2 unchanged" in capsys.readouterr().out and seen == [2, 2]
