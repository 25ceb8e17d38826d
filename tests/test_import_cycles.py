"""Import cycles between the modules of graphfilters/ and analysis/, lazy (function-level)
imports included; package ``__init__`` re-exports are not edges (issue 19: none is left)."""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Cycles still open: none. (The last, analysis.plots <-> response <-> spectra, went when the
#: complex-share rule became its own leaf module and the figure that runs its own solves,
#: ``plot_capture_spectra``, moved above both to analysis.capture_figures.)
KNOWN: set[tuple[str, ...]] = set()


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for pkg in ("graphfilters", "analysis"):
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _resolve(node: ast.ImportFrom, pkg: str) -> str:
    if node.level:
        base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))
    return node.module or ""


def _reexports(mods: dict[str, pathlib.Path]) -> dict[str, dict[str, str]]:
    """For each package: name -> the module its ``__init__`` imports it from."""
    out: dict[str, dict[str, str]] = {}
    for name, f in mods.items():
        if f.name != "__init__.py":
            continue
        table = out.setdefault(name, {})
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                mod = _resolve(node, name)
                for a in node.names:
                    table[a.asname or a.name] = mod
    return out


def _edges(mods: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """Module -> modules it imports; a name imported from a package ``__init__`` is an edge
    to the module the package imports it from (so a cycle through a re-export is seen)."""
    reexp = _reexports(mods)
    edges: dict[str, set[str]] = defaultdict(set)
    for name, f in mods.items():
        pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = _resolve(node, pkg)
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
                targets += [reexp[mod][a.name] for a in node.names
                            if a.name in reexp.get(mod, {})]
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


def test_a_cycle_through_a_package_reexport_is_seen(tmp_path):
    pkg = tmp_path / "graphfilters" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "graphfilters" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from graphfilters.b import g\n")
    (tmp_path / "graphfilters" / "b.py").write_text("from .sub import f\n")
    mods = {".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (tmp_path / "graphfilters").rglob("*.py")}
    nodes = [m for m, f in mods.items() if f.name != "__init__.py"]
    assert _cycles(_edges(mods), nodes) == {("graphfilters.b", "graphfilters.sub.a")}


def test_the_scan_finds_a_cycle():
    edges = defaultdict(set, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert _cycles(edges, ["a", "b", "c", "d"]) == {("a", "b", "c")}
