"""The import graph is layered and acyclic: lower layers never import higher ones, not even inside
functions or ``TYPE_CHECKING`` blocks, and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ovdet"

#: Each top-level part of ovdet and its layer; a module may import only its own layer or lower, and
#: two parts that share a layer never import each other (see :func:`violations`). So, among the
#: layers above the model: ``inference`` (predict, outputs, track, validate) is below everything
#: that runs a network, with ``grounding`` beside it (it drives a detector through a protocol, so
#: ``serve`` and ``api`` may use it); ``engine`` (training), ``deploy``, ``serve`` and
#: ``datatools`` are siblings over them; ``export`` builds on ``deploy`` (it checks what it wrote with the runtime); ``api`` is
#: the facade over all of them; ``distributed`` drives ``api``; the command line is on top. Below,
#: ``device`` reads the precision names of ``config``.
LAYERS: dict[str, int] = {
    "ovdet._version": 0,
    "ovdet.config": 0,
    "ovdet.io": 0,
    "ovdet.structures": 0,
    "ovdet.device": 1,
    "ovdet.text": 2,
    "ovdet.data": 2,
    "ovdet.models": 3,
    "ovdet.evaluation": 3,
    "ovdet.checkpoint": 4,
    "ovdet.weights": 5,
    "ovdet.inference": 6,
    "ovdet.onnx_import": 6,
    "ovdet.grounding": 6,
    "ovdet.engine": 7,
    "ovdet.deploy": 7,
    "ovdet.serve": 7,
    "ovdet.datatools": 7,
    "ovdet.export": 8,
    "ovdet.api": 9,
    "ovdet.distributed": 10,
    "ovdet.cli": 11,
    "ovdet.__main__": 12,
    "ovdet": 12,
}


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name → file of every module under ``root`` (a package folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of the package that ``name`` imports, anywhere in the file (functions included)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:  # "ovdet.data.images.decode_image" → its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def part_of(module: str) -> str:
    """The entry of LAYERS that ``module`` belongs to (its longest matching prefix)."""
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    raise KeyError(f"{module} belongs to no layer: add it to LAYERS in tests/test_architecture.py")


def layer_of(module: str) -> int:
    return LAYERS[part_of(module)]


def violations(root: Path) -> tuple[list[str], list[list[str]]]:
    """(upward or sideways imports, import cycles) of the package at ``root``.

    Sideways: a module importing another part of its own layer (``ovdet.serve`` importing
    ``ovdet.engine``); a part's modules import each other freely.
    """
    modules = module_names(root)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    upward = [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if layer_of(b) > layer_of(a) or (layer_of(b) == layer_of(a) and part_of(b) != part_of(a))
    ]
    return upward, cycles(graph)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_ovdet_imports_are_layered_and_acyclic() -> None:
    modules = module_names(PACKAGE)
    assert len(modules) > 30 and all(layer_of(m) >= 0 for m in modules)  # every module has a layer
    upward, loops = violations(PACKAGE)
    assert not upward, "upward imports:\n" + "\n".join(upward)
    assert not loops, f"import cycles: {loops}"


def test_checker_finds_upward_function_level_imports_and_cycles(tmp_path: Path) -> None:
    """The checker itself: an upward import hidden in a function, and a cycle, are both reported."""
    pkg = tmp_path / "ovdet"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from ovdet.api import Detector\n")
    (pkg / "api.py").write_text("import ovdet.config\n")
    (pkg / "engine").mkdir()
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "engine" / "train.py").write_text("from ovdet.serve import app\n")  # a sibling on layer 7
    (pkg / "serve").mkdir()
    (pkg / "serve" / "__init__.py").write_text("")
    (pkg / "serve" / "app.py").write_text("import ovdet.config\n")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "a.py").write_text("from . import b\n")
    (pkg / "models" / "b.py").write_text("from ovdet.models.a import thing\nfrom ..config import x\n")
    upward, loops = violations(pkg)
    assert upward == [
        "ovdet.config (layer 0) imports ovdet.api (layer 9)",
        "ovdet.engine.train (layer 7) imports ovdet.serve.app (layer 7)",
    ]
    assert sorted(loops) == [["ovdet.api", "ovdet.config"], ["ovdet.models.a", "ovdet.models.b"]]


@pytest.mark.parametrize("module", ["ovdet.config", "ovdet.structures", "ovdet.text", "ovdet.data.images"])
def test_low_layers_import_no_torch_model_code(module: str) -> None:
    """Importing a low layer pulls in nothing above it (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        f"import sys, {module}; bad = [m for m in sys.modules if m.startswith(('ovdet.api', 'ovdet.engine', 'ovdet.inference', "
        f"'ovdet.cli', 'ovdet.weights', 'ovdet.checkpoint'))]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_imports_no_torch() -> None:
    """The deployment runtime and everything it imports load no PyTorch, even where it is installed
    (fresh interpreter; ``tests/test_deploy_notorch.py`` runs it where torch cannot be imported)."""
    import subprocess
    import sys

    modules = (
        "ovdet.deploy.runtime, ovdet.deploy.text, ovdet.deploy.tokenizer, ovdet.inference.stream, ovdet.text.files"
    )
    code = (
        f"import sys, {modules}; from ovdet.deploy import OnnxDetector, OnnxTextEncoder; "
        f"bad = sorted({{m.partition('.')[0] if m.startswith('torch') else m for m in sys.modules "
        f"if m.startswith(('torch', 'ovdet.models', 'ovdet.inference.predict', 'ovdet.device', 'ovdet.text.openclip'))}}); "
        f"print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
