"""What a notebook shows: the mime bundles of the toolkit's results in a fresh Jupyter kernel.

A small notebook is executed with nbclient in a fresh kernel (no ``%matplotlib`` magic, the
kernel's default backend) and its outputs are read back: a figure displays exactly once as
``image/png``, whether ``fig`` is the cell's value or a plot call is the cell's last
expression; the analysis table is HTML with the headline columns; a derivation and an
identification display as math.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CELLS = {
    "setup": (
        "import sys\n"
        "import numpy as np\n"
        "from analysis.plots import plot_spectrum, plot_block_responses, plot_growth\n"
        "ev = np.array([0.2 + 0.1j, 0.2 - 0.1j, 0.9, -0.3])"
    ),
    "fig_value": "fig, ax = plot_spectrum(ev, operator='normalized')\nfig",
    "call_last": "plot_growth([1.1, 1.3, 1.2])",
    "call_multi": "plot_block_responses(['snl', 'arma'], ncols=2)",
    "assigned": "fig, ax = plot_growth([1.1, 1.3])",
    "no_pyplot": "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no pyplot')",
    "table": (
        "import torch\n"
        "from analysis import analyze\n"
        "_ = torch.manual_seed(0)\n"
        "mha = torch.nn.MultiheadAttention(4, 1, batch_first=True)\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.attn = mha\n"
        "    def forward(self, x):\n"
        "        return x + self.attn(x, x, x)[0]\n"
        "table = analyze(Net(), torch.randn(2, 6, 4), progress=False)\n"
        "table"
    ),
    "derivation": "from graphfilters.symbolic import derive\nderive('snl')",
    "identification": (
        "from graphfilters.symbolic import identify\n"
        "identify(r'Z W_0 + \\hat A Z W_1')"
    ),
}


@pytest.fixture(scope="module")
def outputs() -> dict[str, list[dict]]:
    """Each cell's outputs, by cell name, from one fresh kernel."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.manager import KernelManager

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"name": k}) for k, src in CELLS.items()]
    km = KernelManager(kernel_name="python3")
    km.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel's own default, as a user gets it
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, km=km, timeout=120, kernel_name="python3",
                                allow_errors=False).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {c.metadata["name"]: c.outputs for c in nb.cells}


def _mimes(outs: list[dict]) -> list[str]:
    return [m for o in outs for m in o.get("data", {})]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("cell", ["fig_value", "call_last", "call_multi"])
def test_a_figure_displays_exactly_once(outputs, cell):
    mimes = _mimes(outputs[cell])
    assert mimes.count("image/png") == 1, (cell, outputs[cell])
    text = [o["data"]["text/plain"] for o in outputs[cell] if "text/plain" in o.get("data", {})]
    assert not any("<Axes" in t for t in text), text


def test_an_assigned_figure_does_not_display_and_no_pyplot_state(outputs):
    assert "image/png" not in _mimes(outputs["assigned"])
    assert outputs["no_pyplot"][0]["text"].strip() == "no pyplot"


def test_the_analysis_table_is_html_with_the_headline_columns(outputs):
    (data,) = [o["data"] for o in outputs["table"] if "data" in o]
    html = data["text/html"]
    header = re.search(r"<thead>(.*?)</thead>", html, re.S)
    assert header, html[:500]
    n_head = len(re.findall(r"<th[ >]", header.group(1)))
    assert 3 <= n_head <= 12, (n_head, header.group(1))
    assert "λ" in html and "attn" in html
    assert len(data["text/plain"].splitlines()[0]) <= 120


@pytest.mark.parametrize("cell", ["derivation", "identification"])
def test_math_displays_as_math(outputs, cell):
    (data,) = [o["data"] for o in outputs[cell] if "data" in o]
    math = data.get("text/latex", "") or data.get("text/html", "")
    assert "\\hat" in math and ("$" in math or "\\[" in math), data
    assert "object at 0x" not in data["text/plain"]
    # what Jupyter and the docs show first: one display per step, no alignment marks
    assert "$$" in data["text/markdown"] and "&" not in data["text/markdown"]
