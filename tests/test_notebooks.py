"""The notebooks: jupytext percent-format sources (``notebooks/NN_*.py``), run top to bottom.

Every ``notebooks/[0-9]*.py`` is picked up, so a new notebook is tested without editing
this file. The sources are plain Python (ruff lints them); the executed notebooks are
rendered on the docs site, not stored in the repository.
"""

from __future__ import annotations

import os
import sys
import time
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


def _kernel_manager():
    """A kernel running this interpreter (the venv's), whatever the installed kernelspecs say."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    # jupyter_client replaces a bare "python" in a kernelspec by sys.executable; set it
    # explicitly so that a kernelspec pointing at another Python cannot be picked up.
    spec = km.kernel_spec
    spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    return km


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    # The kernel inherits this environment. Matplotlib's inline backend is headless (no GUI)
    # and, unlike "Agg", renders every figure at the end of its cell, so a figure that
    # cannot be drawn (bad mathtext, wrong shapes) fails the test. One thread per kernel so
    # that notebooks running side by side (pytest -n 2) do not oversubscribe the cores.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Run from a scratch folder: nothing is written into the repository, and notebook 03
    # does not pick up checkpoints that `make demo` may have left in ../out.
    workdir = tmp_path / "notebooks"
    workdir.mkdir()
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(),
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
        allow_errors=False,
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
    assert elapsed < TIMEOUT_S, f"{path.name} took {elapsed:.0f} s"
    print(f"{path.name}: {elapsed:.1f} s")
