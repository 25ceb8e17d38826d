"""Import cycles between the modules of graphfilters/ and analysis/, lazy (function-level)
imports included; package ``__init__`` re-exports are not edges. The cycle that remains
is listed (issue 19): a new one fails this test, and removing it must update the list."""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Cycles still open: the PyGSP-style ``.plot()`` methods of Spectrum / BlockResponse calling
#: analysis.plots, which reads the complex-share rule of analysis.spectra.
KNOWN = {
    ("analysis.plots", "analysis.response", "analysis.spectra"),
}


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for pkg in ("graphfilters", "analysis"):
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _edges(mods: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, f in mods.items():
        pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in mods and t != name
                            and mods[t].name != "__init__.py"}
    return edges


def _cycles(edges: dict[str, set[str]], nodes: list[str]) -> set[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(tuple(sorted(comp)))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def test_no_new_import_cycles():
    mods = _modules()
    nodes = [m for m, f in mods.items() if f.name != "__init__.py"]
    assert _cycles(_edges(mods), nodes) == KNOWN


def test_the_scan_finds_a_cycle():
    edges = defaultdict(set, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert _cycles(edges, ["a", "b", "c", "d"]) == {("a", "b", "c")}
