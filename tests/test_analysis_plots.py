"""Plots return (fig, ax) and draw into a given ax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from analysis import block_response, capture, linearized_stability, spectrum
from analysis.plots import (
    plot_accuracy,
    plot_affinity_rows,
    plot_energy,
    plot_growth,
    plot_history,
    plot_response,
    plot_spectrum,
)
from graphfilters.blocks import make_block


@pytest.fixture(scope="module")
def snl_capture():
    torch.manual_seed(0)
    block = make_block("snl", 6)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.4)
    return capture(block, torch.randn(1, 6, 4, 5), progress=False)["(root)"]


def _check(result, ax=None):
    fig, out_ax = result
    assert isinstance(fig, Figure)
    if ax is not None:
        assert out_ax is ax and fig is ax.figure
    return out_ax


def test_every_plot_returns_fig_ax_and_honours_ax(snl_capture):
    resp = block_response(snl_capture)
    st = linearized_stability(snl_capture)
    host = Figure()
    axes = host.subplots(2, 4).ravel()
    calls = [
        lambda ax: plot_spectrum(spectrum(snl_capture, "laplacian", progress=False), ax=ax),
        lambda ax: plot_spectrum(np.array([0.5 + 0.3j, 0.5 - 0.3j, 1.0]), ax=ax),
        lambda ax: plot_response(resp, ax=ax),
        lambda ax: plot_growth(st, ax=ax),
        lambda ax: plot_accuracy({0.0: 0.9, 0.2: 0.4}, ax=ax, label="snl"),
        lambda ax: plot_energy(resp.energy_z, ax=ax, label="Z"),
        lambda ax: plot_affinity_rows(snl_capture, [(1, 1)], torch.rand(3, 16, 20), ax=ax),
    ]
    for call, ax in zip(calls, axes):
        fig, out = call(ax)
        assert fig is host
        assert out is ax or out == [ax]
        assert ax.has_data()
    for call in calls:                       # and each makes its own figure without ax
        fig, out = call(None)
        assert isinstance(fig, Figure) and fig is not host
    assert axes[1].get_xlabel() == "Re"      # complex spectrum: the complex plane
    assert axes[0].get_xlabel() == "eigenvalue"


def test_affinity_rows_figure_and_errors(snl_capture):
    fig, axes = plot_affinity_rows(snl_capture, [(0, 0), 7, (3, 4)])
    assert len(axes) == 3 and len(fig.axes) == 4       # three panels and one colorbar
    with pytest.raises(ValueError, match="3 queries"):
        plot_affinity_rows(snl_capture, [(0, 0), 1, 2], ax=Figure().subplots(1, 2))
    with pytest.raises(ValueError, match="out of range"):
        plot_affinity_rows(snl_capture, [99])
    with pytest.raises(TypeError, match="Axes"):
        plot_spectrum([1.0, 2.0], ax="not an axes")


# --- the figure defects of issue 15 --------------------------------------------------------


def test_complex_laplacian_spectrum_has_linear_axes_and_its_own_circle():
    """A complex Laplacian spectrum λ = 1 - μ: the circle is |λ - 1| = 1, axes stay linear
    even with log=True, and an array of unknown origin gets no circle at all."""
    rng = np.random.default_rng(0)
    mu = 0.5 * (rng.uniform(-1, 1, 40) + 1j * rng.uniform(-1, 1, 40))
    fig, ax = plot_spectrum(1 - mu, operator="laplacian", log=True)
    assert ax.get_yscale() == ax.get_xscale() == "linear"
    circle = next(line for line in ax.lines if line.get_linestyle() == "--")
    x, y = circle.get_data()
    np.testing.assert_allclose(np.hypot(x - 1.0, y), 1.0, atol=1e-12)
    assert "lambda - 1" in circle.get_label()
    _, ax = plot_spectrum(1 - mu)
    assert not [line for line in ax.lines if line.get_linestyle() == "--"]
    with pytest.raises(ValueError, match="operator"):
        plot_spectrum(mu, operator="adjacency")


def test_log_axes_read_plain_numbers():
    fig, ax = plot_growth([1.05, 1.2, 1.45])
    fig.draw_without_rendering()
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)]
    assert any(labels) and not [s for s in labels if "times" in s or "^" in s], labels
    fig, ax = plot_spectrum(np.r_[np.ones(50), np.linspace(0, 2, 9)], log=True)
    assert ax.get_yscale() == "log"


def test_history_legend_names_every_line():
    hist = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 * e, "test_acc": 0.25 * e}
            for e in (1, 2, 3)]
    fig, ax = plot_history(hist)
    legend = fig.axes[1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["train loss", "train acc", "test acc"]


def test_isolated_node_panel_says_so():
    from analysis.capture import Capture
    from graphfilters.graph import LowRankAffinity

    u = torch.rand(1, 12, 3, dtype=torch.float64)
    u[0, 5] = 0.0  # node 5 has no edge: its row of the operator is 0
    cap = Capture("b", "block", "toy", LowRankAffinity(u, u), "sym", spatial_shape=(3, 4),
                  n_samples=1)
    fig, axes = plot_affinity_rows(cap, [(0, 0), 5])
    texts = [[t.get_text() for t in a.texts] for a in axes]
    assert not texts[0] and "isolated node" in texts[1][0]
