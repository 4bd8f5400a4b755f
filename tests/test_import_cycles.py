"""No import cycles inside src/lmrepro: every import (module-level and inside functions, relative and absolute)
is an edge of the module graph, and no strongly connected component may hold more than one module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lmrepro"


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name → file, for every module and package under ``root``."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``module`` imports anywhere in its file (``from pkg import sub`` names the
    submodule when ``sub`` is one, else the package)."""
    is_pkg = path.name == "__init__.py"
    package = module.split(".") if is_pkg else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known} - {module}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = module_files(root)
    known = set(mods)
    return {m: imported_modules(m, p, known) for m, p in mods.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components of size > 1, each sorted, in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(out)


def test_detector_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_relative_and_function_level_imports_are_edges(tmp_path):
    pkg = tmp_path / "lmrepro"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .low import f\n")
    (pkg / "sub" / "low.py").write_text("def f():\n    from ..top import g\n    return g\n")
    (pkg / "top.py").write_text("from lmrepro.sub import low\n\ndef g():\n    pass\n")
    graph = import_graph(pkg)
    assert graph["lmrepro.sub.low"] == {"lmrepro.top"}
    assert graph["lmrepro.top"] == {"lmrepro.sub.low"}
    assert graph["lmrepro.sub"] == {"lmrepro.sub.low"}
    assert strongly_connected(graph) == [["lmrepro.sub.low", "lmrepro.top"]]


def test_no_import_cycles_in_lmrepro():
    cycles = strongly_connected(import_graph())
    assert not cycles, "import cycles inside src/lmrepro (each line one strongly connected component):\n" + "\n".join(
        "  " + " <-> ".join(c) for c in cycles
    )
