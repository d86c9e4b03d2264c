"""The library's import graph keeps the layering docs/architecture.md describes: no two modules import
each other (directly or round a longer circle, counting imports inside functions too), a method
imports only the shared method helpers and its own package, and what the methods and the loop both
use never imports a method. Read statically from the source, so nothing is imported here."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "adarank"
# what every method may import from methods/ besides its own module or package
METHOD_HELPERS = {"base", "lowrank", "peft_support", "growth_clock", "orthogonal"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _graph() -> dict[str, set[str]]:
    """module -> the library modules it imports; ``from pkg import sub`` counts as importing ``pkg.sub``."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                submodules = {f"{source}.{alias.name}" for alias in node.names} & modules.keys()
                targets |= submodules or ({source} & modules.keys())
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names} & modules.keys()
        graph[name] = targets - {name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_the_graph_reader_sees_imports_inside_functions_and_through_packages():
    graph = _graph()
    assert "adarank.gpu_locks" in graph["adarank.run"]
    assert "adarank.run" in graph["adarank.gpu_slots"]  # imported inside _job_main
    assert "adarank.analysis.costs" in graph["adarank.analysis.report"]  # from adarank.analysis import costs


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_that_imports_it_back():
    assert _circles(_graph()) == []


def test_a_method_imports_no_other_method():
    wrong = []
    for name, targets in _graph().items():
        if not name.startswith("adarank.methods.") or name.split(".")[2] in METHOD_HELPERS:
            continue
        own = name.split(".")[2]
        for target in targets:
            parts = target.split(".")
            if target.startswith("adarank.methods.") and parts[2] not in METHOD_HELPERS | {own}:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_what_methods_and_the_loop_share_imports_no_method_and_no_tool():
    wrong = []
    for name, targets in _graph().items():
        lower = name.startswith(("adarank.training", "adarank.data", "adarank.metrics")) or (
            name.startswith("adarank.methods.") and name.split(".")[2] in METHOD_HELPERS)
        for target in targets:
            method = target.startswith("adarank.methods.") and target.split(".")[2] not in METHOD_HELPERS
            if (lower and method) or (not name.startswith("adarank.tools") and target.startswith("adarank.tools")):
                wrong.append(f"{name} -> {target}")
    assert wrong == []
