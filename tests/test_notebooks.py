"""The notebooks: stored clean, in sync with notebooks/_build.py, and run top to bottom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
TIMEOUT_S = 120  # per notebook, on the CPU


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1, "no notebooks in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has a count"


def test_notebooks_match_their_source():
    """The stored notebooks are exactly what notebooks/_build.py writes."""
    proc = subprocess.run(
        [sys.executable, str(NOTEBOOK_DIR / "_build.py"), "--check"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout


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
    nbformat = pytest.importorskip("nbformat")
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
    nb = nbformat.read(path, as_version=4)
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
