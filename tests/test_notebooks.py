"""The notebooks: jupytext percent-format sources (``notebooks/NN_*.py``), run top to bottom.

Every ``notebooks/[0-9]*.py`` is picked up, so a new notebook is tested without editing
this file. The sources are plain Python (ruff lints them); the executed notebooks are
rendered on the docs site, not stored in the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9]*.py"))
TIMEOUT_S = 120  # per notebook, on the CPU


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1, "no notebooks in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_source_is_jupytext_percent(path):
    """A percent-format source with the python3 kernelspec, and no stray .ipynb beside it."""
    jupytext = pytest.importorskip("jupytext")
    text = path.read_text(encoding="utf-8")
    assert "format_name: percent" in text, f"{path.name} is not a jupytext percent source"
    nb = jupytext.reads(text, fmt="py:percent")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    kinds = {cell.cell_type for cell in nb.cells}
    assert kinds == {"markdown", "code"}, f"{path.name}: cells {kinds}"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), (
        f"{path.name} must open with a markdown title cell"
    )


def _hook():
    """docs/hooks/notebooks.py: how notebooks are executed, for the docs and for these tests."""
    import importlib.util
    import sys

    name = "docs_notebooks_hook"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "docs/hooks/notebooks.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: its dataclass looks itself up there
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 120)
@pytest.mark.parametrize("path", [*NOTEBOOKS, NOTEBOOK_DIR.parent / "docs" / "gallery.py"],
                         ids=lambda p: p.name)
def test_notebook_runs(path, notebook_cache):
    """The notebook runs top to bottom in a fresh kernel, without errors or warnings, and
    every ``plt.show()`` draws a figure.

    Executed as the docs site executes it (docs/hooks/notebooks.py: a scratch folder, so that
    nothing is written into the repository and notebook 03 does not pick up checkpoints that
    `make demo` left in ../out; matplotlib's inline backend, which renders every figure at
    the end of its cell, so a figure that cannot be drawn fails; one thread). When the docs
    build of this session already executed it (same source, same code), that run is checked.
    """
    pytest.importorskip("nbclient")
    pytest.importorskip("jupytext")
    nb = _hook().executed(path, notebook_cache)
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
    # No warning on stderr (e.g. tqdm's "IProgress not found": the dev extra has ipywidgets).
    stderr = [out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("name") == "stderr"]
    assert not [t for t in stderr if "Warning" in t], stderr
    # Every plt.show() drew a figure (the docs pages show these PNGs).
    shows = sum(cell.source.count("plt.show()") for cell in nb.cells if cell.cell_type == "code")
    pngs = sum("image/png" in out.get("data", {}) for cell in nb.cells
               if cell.cell_type == "code" for out in cell.get("outputs", []))
    assert pngs >= shows, f"{path.name}: {shows} plt.show() but {pngs} figures"
    elapsed = nb.metadata["graphfilters"]["seconds"]
    assert elapsed < TIMEOUT_S, f"{path.name} took {elapsed:.0f} s"
    print(f"{path.name}: {elapsed:.1f} s")
