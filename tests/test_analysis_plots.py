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
    assert len(axes) == 3 and len(fig.axes) == 3
    with pytest.raises(ValueError, match="3 queries"):
        plot_affinity_rows(snl_capture, [(0, 0), 1, 2], ax=Figure().subplots(1, 2))
    with pytest.raises(ValueError, match="out of range"):
        plot_affinity_rows(snl_capture, [99])
    with pytest.raises(TypeError, match="Axes"):
        plot_spectrum([1.0, 2.0], ax="not an axes")
