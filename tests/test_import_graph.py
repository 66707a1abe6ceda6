"""The import graph of rlhf/, read statically (ast): no cycle, and no lower layer importing the top.

Every ``import rlhf...`` / ``from rlhf... import ...`` counts, including the lazy ones inside
functions (they are cycles all the same, only deferred: the order in which modules happen to be
imported decides whether they work) and relative imports. An edge goes to the deepest rlhf
module the statement names (``from rlhf.data import load`` -> rlhf.data.load when that is a
module, else rlhf.data). The top layer (recipes, tools, the CLI) may be imported only by itself,
by the Python API (rlhf/api.py, and the package's lazy ``rlhf.<stage>`` names) and by the
pipeline runner, which calls stages. Fast: no module is imported.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rlhf"
TOP = ("rlhf.recipes", "rlhf.tools", "rlhf.cli")
MAY_IMPORT_TOP = ("rlhf.recipes", "rlhf.tools", "rlhf.cli", "rlhf.api", "rlhf.pipeline", "rlhf.__main__")


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def import_graph(root: Path = ROOT) -> dict[str, set[tuple[str, int]]]:
    """module -> {(imported rlhf module, line)}."""
    mods = _modules(root)

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[tuple[str, int]]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[tuple[str, int]] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {(resolve(a.name), node.lineno) for a in node.names if a.name.split(".")[0] == "rlhf"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = package
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                if base.split(".")[0] != "rlhf":
                    continue
                for a in node.names:
                    full = f"{base}.{a.name}"
                    deps.add((full if full in mods else resolve(base), node.lineno))
        graph[mod] = {(d, line) for d, line in deps if d and d != mod}
    return graph


def cycles(graph: dict[str, set[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    succ = {m: sorted({d for d, _ in deps if d in graph}) for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in succ:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            if i < len(succ[v]):
                work.append((v, i + 1))
                w = succ[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
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
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def _is_under(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def test_the_checker_finds_a_cycle_and_an_upward_import(tmp_path):
    """The checks can fail: a hand-made package with a lazy two-module cycle and a model module
    importing a recipe."""
    pkg = tmp_path / "rlhf"
    (pkg / "recipes").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "recipes" / "__init__.py").write_text("")
    (pkg / "recipes" / "x.py").write_text("A = 1\n")
    (pkg / "a.py").write_text("def f():\n    from rlhf import b\n")
    (pkg / "b.py").write_text("from . import a\nfrom rlhf.recipes.x import A\n")
    g = import_graph(pkg)
    assert g["rlhf.b"] == {("rlhf.a", 1), ("rlhf.recipes.x", 2)}
    assert cycles(g) == [["rlhf.a", "rlhf.b"]]
    assert cycles({"a": {("b", 1)}, "b": {("c", 1)}, "c": set()}) == []


@functools.cache
def _rlhf_graph() -> dict[str, set[tuple[str, int]]]:
    return import_graph()


def test_no_import_cycle():
    g = _rlhf_graph()
    found = cycles(g)
    lines = [f"{' <-> '.join(c)}: " + "; ".join(f"{a} -> {d} (line {n})" for a in c for d, n in sorted(g[a])
                                                  if d in c) for c in found]
    assert not found, "import cycles in rlhf/:\n" + "\n".join(lines)


@pytest.mark.parametrize("top", TOP)
def test_no_lower_layer_imports_the_top(top):
    bad = [f"{m} -> {d} (line {n})" for m, deps in sorted(_rlhf_graph().items())
           if not _is_under(m, MAY_IMPORT_TOP) for d, n in sorted(deps) if _is_under(d, (top,))]
    assert not bad, f"modules below the top layer import {top}:\n" + "\n".join(bad)
