"""The package's shape: no import cycles, sub-packages that name their API, docs that match the code.

The import graph counts every import, also those inside functions (a lazy import hides a cycle
from Python, not from a reader). A package's `__init__` resolves its names lazily (PEP 562), so it
adds no edge.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "beear_stage"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lazy_exports(init: Path) -> dict[str, str]:
    """A package `__init__`'s `_EXPORTS` (name -> submodule), read without importing it."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_EXPORTS":
            return ast.literal_eval(node.value)
    return {}


def import_graph() -> dict[str, set[str]]:
    """module -> the beear_stage modules it imports (module level and inside functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    exports = {name: _lazy_exports(p) for name, p in modules.items() if p.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                lazy = exports.get(node.module, {})  # `from pkg import name` -> pkg's submodule
                targets = [f"{node.module}.{lazy.get(a.name, a.name)}" for a in node.names]
            for target in targets:
                while target and target not in modules:  # `from pkg import name` -> pkg
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "beear_stage.methods.beear" in graph and graph["beear_stage.methods.registry"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("package", ["methods", "eval", "release"])
def test_each_sub_package_names_its_public_api(package):
    module = importlib.import_module(f"beear_stage.{package}")
    assert module.__doc__ and module.__all__
    for name in module.__all__:
        assert getattr(module, name) is not None, f"beear_stage.{package}.{name}"


def test_the_library_imports_no_prefect():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m.split(".")[0] in ("prefect", "flows", "tasks")}, path
