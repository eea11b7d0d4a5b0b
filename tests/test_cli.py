"""The boundary layer's structure: shared flags declared once, options built once, one stride rule,
one class-spec parser, one embedding-selection rule."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from ovdet.cli import build_parser, main
from ovdet.cli.options import SHARED_FLAGS, UsageError, predict_config, read_classes
from ovdet.config import ConfigError, EvalConfig, PredictConfig, check_imgsz, from_dict, load_model_config, to_dict
from ovdet.text.vocabulary import builtin_vocabulary, parse_class_spec, select_embeddings
from tests.helpers import TINY, make_detector

PACKAGE = Path(__file__).resolve().parents[1] / "ovdet"


@pytest.fixture(scope="module")
def tiny_detector():
    return make_detector()


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return dict(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------- shared flags
def test_every_shared_flag_comes_from_its_options_group() -> None:
    """Each command that takes e.g. --imgsz got it from options.add_imgsz, and none declares it itself."""
    seen: dict[str, set[str]] = {flag: set() for flag in SHARED_FLAGS}
    for name, sub in _commands(build_parser()).items():
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in SHARED_FLAGS:
                    assert getattr(action, "ovdet_group", None) == SHARED_FLAGS[flag], (name, flag)
                    seen[flag].add(name)
    # the groups are really shared: each flag is taken by two commands or more
    assert all(len(commands) >= 2 for commands in seen.values()), seen
    assert {"predict", "val", "label", "track", "export", "train", "index"} <= seen["--imgsz"]
    assert len(seen["--device"]) == 12 and len(seen["--model"]) >= 8


def test_no_command_module_declares_a_shared_flag() -> None:
    """The source itself: only ovdet/cli/options.py spells a shared flag in an add_argument call."""
    offenders = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.name == "options.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                flags = [a.value for a in node.args if isinstance(a, ast.Constant)]
                offenders += [f"{path.name}:{node.lineno} {f}" for f in flags if f in SHARED_FLAGS]
    assert not offenders, offenders


def test_each_command_module_registers_and_runs() -> None:
    """A command's parser sits beside its code: every sub-command's func lives in the module that registered it."""
    for name, sub in _commands(build_parser()).items():
        func = sub.get_default("func")
        assert func.__module__.startswith("ovdet.cli.") and func.__module__ != "ovdet.cli.options", name
        assert func.__name__.startswith("run"), name


# ---------------------------------------------------------------------------------------- the stride rule
def test_the_stride_rule_is_written_once() -> None:
    """No module but config.py checks an image size against a stride by hand (``% 32``, ``% stride``)."""
    pattern = re.compile(r"(imgsz|size|target_[hw]|\bv)\w*\s*%\s*(32|stride|self\.stride)\b")
    hits = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line) and p.name != "config.py"
    ]
    assert not hits, hits
    assert "% 32" not in "".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py"))


def test_check_imgsz() -> None:
    assert check_imgsz(640) == 640 and check_imgsz((320, 640)) == (320, 640) and check_imgsz([64, 64]) == (64, 64)
    assert check_imgsz(128, stride=64) == 128
    for bad in (100, 0, -32, (32, 33), (32, 64, 96), 64.0, True, "640"):
        with pytest.raises(ConfigError, match="imgsz must be a positive multiple of 32"):
            check_imgsz(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="train.imgsz must be a positive multiple of 32"):
        check_imgsz((64, 64), name="train.imgsz", square=True)
    with pytest.raises(ConfigError, match="multiple of 64"):
        check_imgsz(96, stride=64)


def test_predictor_checks_the_models_own_stride(tiny_detector) -> None:
    """PredictConfig knows only the architecture's usual stride (32); the network's own is checked where it runs."""
    det = tiny_detector
    det.set_classes(["person", "bus"])
    cfg = PredictConfig(imgsz=96)  # a multiple of 32
    det.predict([torch.zeros(3, 96, 96)], config=cfg)  # the tiny model's largest stride is 32: fine
    original = det.model.cfg
    det.model.cfg = dataclasses.replace(original, strides=(8, 16, 64))
    try:
        with pytest.raises(ConfigError, match=r"imgsz must be a positive multiple of 64 .*got 96"):
            det.predict([torch.zeros(3, 96, 96)], config=cfg)
    finally:
        det.model.cfg = original


# ---------------------------------------------------------------------------------------- PredictConfig
def test_predict_config_validates_once_and_derives_nms() -> None:
    cfg = PredictConfig(conf=0.3, iou=0.5, imgsz=(320, 640), max_det=10, agnostic_nms=True, batch=4)
    assert (cfg.nms.conf, cfg.nms.iou, cfg.nms.max_det, cfg.nms.agnostic) == (0.3, 0.5, 10, True)
    assert cfg.replace() is cfg and cfg.replace(conf=None) is cfg  # None changes nothing
    assert cfg.replace(conf=0.5).nms.conf == 0.5 and cfg.replace(conf=0.5).iou == 0.5
    assert "nms" not in to_dict(cfg) and from_dict(PredictConfig, to_dict(cfg)) == cfg
    for bad, match in (
        ({"conf": 1.5}, "nms.conf"),
        ({"iou": -0.1}, "nms.iou"),
        ({"max_det": 0}, "nms.max_det"),
        ({"batch": 0}, "batch"),
        ({"precision": "fp8"}, "precision"),
        ({"max_pixels": -1}, "max_pixels"),
        ({"imgsz": 300}, "imgsz"),
    ):
        with pytest.raises(ConfigError, match=match):
            PredictConfig(**bad)
    with pytest.raises(TypeError, match="unknown prediction option"):
        cfg.replace(confidence=0.2)
    assert EvalConfig(conf=0.01, max_det=None, fixed_ap=True).predict.max_det == 1000
    with pytest.raises(ConfigError, match="eval.nms.conf"):
        EvalConfig(conf=2.0)


def test_predict_config_from_flags() -> None:
    args = argparse.Namespace(conf=0.4, iou=0.6, imgsz=320, max_det=50, batch=2, precision="bf16", device="cpu")
    cfg = predict_config(args)
    assert cfg == PredictConfig(conf=0.4, iou=0.6, imgsz=320, max_det=50, batch=2, precision="bf16")
    with pytest.raises(UsageError, match="fp16"):
        predict_config(argparse.Namespace(precision="fp16", device="cpu"))
    with pytest.raises(UsageError, match="imgsz must be a positive multiple of 32"):
        predict_config(argparse.Namespace(imgsz=100, device="cpu"))


def test_predict_with_a_config_equals_keywords(tiny_detector, coco128_images: list[Path]) -> None:
    det = tiny_detector
    det.set_classes(["person", "bus", "dog"])
    paths = [str(p) for p in coco128_images[:3]]
    cfg = PredictConfig(conf=0.001, iou=0.6, imgsz=160, max_det=20, batch=2)
    a = det.predict(paths, config=cfg)
    b = det.predict(paths, conf=0.001, iou=0.6, imgsz=160, max_det=20, batch=2)
    c = det.predict(paths, config=PredictConfig(conf=0.5), conf=0.001, iou=0.6, imgsz=160, max_det=20, batch=2)
    assert sum(len(d) for d in a) > 0
    for x, y, z in zip(a, b, c):
        torch.testing.assert_close(x.boxes, y.boxes)
        torch.testing.assert_close(x.boxes, z.boxes)  # keywords override the config's fields
        assert len(x) <= 20


# ---------------------------------------------------------------------------------------- class specs
def test_one_class_spec_parser(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("# comment\nperson\n\nred backpack\n", encoding="utf-8")
    assert parse_class_spec(str(names)) == ["person", "red backpack"]
    assert parse_class_spec(" LVIS ") == builtin_vocabulary("lvis") and len(parse_class_spec("coco")) == 80
    assert parse_class_spec("person, red backpack,,") == ["person", "red backpack"]
    assert parse_class_spec("person, coco") == ["person", "coco"]  # only the whole string names a built-in one
    assert parse_class_spec(str(names), files=False) == [str(names)]  # a client never names the server's files
    with pytest.raises(ValueError, match="class file not found"):
        parse_class_spec(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="neither a built-in one"):
        parse_class_spec("person,bus", inline=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no class name"):
        parse_class_spec(str(empty))
    assert read_classes(str(names)) == ["person", "red backpack"]
    with pytest.raises(UsageError, match="holds no class name"):
        read_classes(" , ")


def test_one_class_spec_parser_is_the_only_one() -> None:
    """No module outside text/vocabulary.py splits a class list on commas or reads a class file itself."""
    hits = []
    for p in PACKAGE.rglob("*.py"):
        if p.name == "vocabulary.py":
            continue
        text = p.read_text(encoding="utf-8")
        if re.search(r"""\.split\(\s*["'],["']\s*\)""", text) and re.search(r"class|vocab", text):
            hits += [
                f"{p.relative_to(PACKAGE)}:{i}" for i, ln in enumerate(text.splitlines(), 1) if '.split(",")' in ln
            ]
    assert not hits, hits


def test_select_embeddings() -> None:
    own = torch.eye(3)
    calls: list[list[str]] = []

    def encode(names: list[str]) -> torch.Tensor:
        calls.append(names)
        return torch.full((len(names), 3), 7.0)

    rows = select_embeddings(["c", "a"], encode, ["a", "b", "c"], own)
    torch.testing.assert_close(rows, own[[2, 0]])
    assert calls == []  # the vocabulary's own rows: no encoder call
    out = select_embeddings(["a", "z"], encode, ["a", "b", "c"], own)
    assert calls == [["a", "z"]] and bool((out == 7.0).all())
    with pytest.raises(KeyError, match=r"\['z'\] not among the 3 names"):
        select_embeddings(["a", "z"], None, ["a", "b", "c"], own)


def test_embeddings_file_subset_on_the_command_line(
    tmp_path: Path, coco128_images: list[Path], capsys: pytest.CaptureFixture
) -> None:
    """--classes picks rows of an --embeddings file; a class the file lacks is a usage error naming it."""
    import json

    from ovdet.text import save_embeddings

    dim = load_model_config(TINY).embed_dim
    path = tmp_path / "emb.safetensors"
    emb = torch.nn.functional.normalize(torch.randn(3, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    save_embeddings(path, ["person", "bus", "dog"], emb, "x", ("{}",))
    argv = ["predict", "--model", str(TINY), "--embeddings", str(path), "--source", str(coco128_images[0])]
    argv += ["--save-dir", str(tmp_path / "out"), "--no-save-images", "--quiet", "--imgsz", "128"]
    assert main([*argv, "--classes", "dog,person"]) == 0
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["names"] == ["dog", "person"]
    capsys.readouterr()
    assert main([*argv, "--classes", "dog,cat"]) == 2
    assert "classes ['cat'] are not in" in capsys.readouterr().err
