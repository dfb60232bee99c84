"""The package's layering (docs/architecture.md), read from its imports: arrows point down, no circles.

Every ``import`` and ``from ... import`` in src/flyt counts, including those inside functions (a lazy
import is still a dependency). A module may import its own layer or any layer below it, never above.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "flyt"

# Bottom to top. The package face (flyt/__init__.py) re-exports the api lazily and is exempt.
LAYERS = [
    "errors",
    "progress",
    "io",
    "engines",
    "sampling",
    "models",
    "encoders",
    "scorers",
    "synthetic",
    "training",
    "bench",
    "pipeline",
    "api",
    "cli",
    "__main__",
]
RANK = {name: i for i, name in enumerate(LAYERS)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """flyt modules that ``path`` imports (a ``from a import b`` of a submodule b counts as a.b)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            if t == "flyt" or not t.startswith("flyt."):
                continue
            while t not in modules and "." in t:  # `import flyt.a.b.c` where c is an attribute
                t = t.rsplit(".", 1)[0]
            out.add(t)
    return out


def _layer(module: str) -> str:
    return module.split(".")[1]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, m, modules) - {m} for m, p in modules.items()}


def test_every_top_level_name_has_a_layer():
    names = {_layer(m) for m in _modules() if m != "flyt"}
    assert names <= set(RANK), f"place these in LAYERS and docs/architecture.md: {sorted(names - set(RANK))}"


def test_no_import_reaches_up_a_layer():
    upward = []
    for module, targets in _graph().items():
        if module == "flyt":
            continue
        for t in targets:
            if RANK[_layer(t)] > RANK[_layer(module)]:
                upward.append(f"{module} -> {t}")
    assert not upward, "imports that reach up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    graph = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_checker_sees_a_planted_upward_import_and_circle(tmp_path, monkeypatch):
    """The checks above can fail: a copy of two modules with an upward import and a circle is caught."""
    pkg = tmp_path / "flyt"
    (pkg / "io").mkdir(parents=True)
    (pkg / "cli").mkdir()
    for p in (pkg / "__init__.py", pkg / "io" / "__init__.py", pkg / "cli" / "__init__.py"):
        p.write_text("")
    (pkg / "io" / "a.py").write_text("def f():\n    from flyt.cli import b\n")
    (pkg / "cli" / "b.py").write_text("from flyt.io.a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    with pytest.raises(AssertionError, match="flyt.io.a -> flyt.cli.b"):
        test_no_import_reaches_up_a_layer()
    with pytest.raises(AssertionError, match="import circles"):
        test_no_import_circle()
