"""Paper-quality layout of every plot function: nothing leaves the figure or lands on another
panel, and bad data is refused by name.

Every figure is drawn (Agg) and the window extents of its texts are compared: each title,
axis label, tick label row and legend lies inside the figure (nothing clipped); no legend or
title overlaps another panel (twin axes and colorbars excepted for legends placed beside
them); titles of neighbouring panels do not overlap each other.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from analysis import capture_figures, plots
from analysis.response import FrequencyEnergy, block_response
from analysis.spectra import spectrum
from tests.attention_models import residual_mha_capture


@pytest.fixture(scope="module")
def cap():
    c = residual_mha_capture(8, 64, seed=1)
    c.spatial_shape = (8, 8)
    return c


def _cases(cap):
    spec = spectrum(cap, "normalized", progress=False)
    hist = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.2 * e, "test_acc": 0.18 * e}
            for e in range(1, 5)]
    energy = FrequencyEnergy([np.linspace(0, 2, 64)], [np.exp(-np.linspace(0, 4, 64))],
                             "eigh")
    return {
        "plot_spectrum complex": lambda: plots.plot_spectrum(spec),
        "plot_spectrum laplacian": lambda: plots.plot_spectrum(1 - spec.all(),
                                                               operator="laplacian"),
        "plot_spectrum real": lambda: plots.plot_spectrum(np.linspace(0, 2, 80), log=True),
        "plot_response": lambda: plots.plot_response(
            block_response(cap, spectrum_result=spec, energies=False)),
        "plot_affinity_rows": lambda: plots.plot_affinity_rows(cap, [(0, 0), (3, 4), (7, 7)]),
        "plot_growth": lambda: plots.plot_growth([1.2, 1.5, 1.9, 2.4], label="layer1.block"),
        "plot_accuracy": lambda: plots.plot_accuracy({0.0: 0.9, 0.5: 0.7, 1.0: 0.4},
                                                     label="snl"),
        "plot_energy": lambda: plots.plot_energy(energy, label="Z"),
        "plot_history": lambda: plots.plot_history(hist),
        "plot_block_responses": lambda: plots.plot_block_responses(),
        "plot_filter_families": lambda: plots.plot_filter_families(),
        "plot_capture_spectra": lambda: capture_figures.plot_capture_spectra(cap),
        "plot_depth_profile": lambda: plots.plot_depth_profile(_depth_profile(), log=True),
    }


def _depth_profile():
    from analysis.depth import DepthProfile, DepthRow

    return DepthProfile([DepthRow(d, f"layers.{d}", residual_in=0.9 ** (3 ** d),
                                  hf_share_out=0.5 / (d + 1), absolute_gap=0.6 + 0.05 * d,
                                  absolute_gap_std=0.05) for d in range(5)])


def _ext(artist, renderer):
    return artist.get_window_extent(renderer)


def _overlap(a, b, tol=1.0) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tol) and (min(a.y1, b.y1) - max(a.y0, b.y0)
                                                           > tol)


def _inside(inner, outer, tol=1.0) -> bool:
    return (inner.x0 >= outer.x0 - tol and inner.y0 >= outer.y0 - tol
            and inner.x1 <= outer.x1 + tol and inner.y1 <= outer.y1 + tol)


def _problems(fig) -> list[str]:
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    page = fig.bbox
    axes = [a for a in fig.axes if a.get_visible()]
    out = []
    boxes = {id(a): a.get_window_extent(renderer) for a in axes}

    def others(a):
        same = [b for b in axes if b is not a and not _overlap(boxes[id(a)], boxes[id(b)])]
        return same

    titles = []
    for i, a in enumerate(axes):
        texts = [("title", a.title), ("xlabel", a.xaxis.label), ("ylabel", a.yaxis.label)]
        drawn = a.xaxis._update_ticks() + a.yaxis._update_ticks()   # the ticks in view
        texts += [(f"tick {t.label1.get_text()}", t.label1) for t in drawn]
        for what, t in texts:
            if not t.get_visible() or not t.get_text():
                continue
            box = _ext(t, renderer)
            if not _inside(box, page):
                out.append(f"axes {i}: {what} {t.get_text()!r} clipped by the figure")
            if what == "title":
                titles.append((i, box))
                for b in others(a):
                    if _overlap(box, boxes[id(b)]):
                        out.append(f"axes {i}: title {t.get_text()!r} overlaps another panel")
        leg = a.get_legend()
        if leg is not None and leg.get_visible():
            box = _ext(leg, renderer)
            if not _inside(box, page):
                out.append(f"axes {i}: legend clipped by the figure")
            if not _inside(box, boxes[id(a)]):
                for b in others(a):
                    if _overlap(box, boxes[id(b)]):
                        out.append(f"axes {i}: legend outside its panel overlaps another one")
    for j, (i, a) in enumerate(titles):
        for k, b in titles[j + 1:]:
            if _overlap(a, b):
                out.append(f"titles of axes {i} and {k} overlap")
    for t in fig.texts + ([fig._suptitle] if fig._suptitle else []):
        if t.get_text() and not _inside(_ext(t, renderer), page):
            out.append(f"figure text {t.get_text()!r} clipped")
    return out


def test_every_plot_function_is_checked(cap):
    names = {n for n in (*plots.__all__, *capture_figures.__all__) if n.startswith("plot_")}
    checked = {k.split()[0] for k in _cases(cap)}
    assert names == checked, names ^ checked
    assert set(CASES) == set(_cases(cap))


CASES = ["plot_spectrum complex", "plot_spectrum laplacian", "plot_spectrum real",
         "plot_response", "plot_affinity_rows", "plot_growth", "plot_accuracy", "plot_energy",
         "plot_history", "plot_block_responses", "plot_filter_families", "plot_capture_spectra",
         "plot_depth_profile"]


@pytest.mark.parametrize("case", CASES)
def test_nothing_leaves_its_place(cap, case):
    fig, _ = _cases(cap)[case]()
    assert _problems(fig) == []
    # readable type: nothing below 6.5 pt
    sizes = [t.get_fontsize() for t in fig.findobj(lambda o: hasattr(o, "get_fontsize"))
             if getattr(t, "get_text", lambda: "")()]
    assert min(sizes) >= 6.5, min(sizes)


def test_a_legend_over_a_neighbour_is_caught():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    a, _ = fig.subplots(1, 2)
    a.plot([0, 1], label="a rather long label that needs room")
    a.legend(loc="upper left", bbox_to_anchor=(0.8, 1.0))
    assert any("legend" in p for p in _problems(fig))


@pytest.mark.parametrize("call, name", [
    (lambda: plots.plot_spectrum(np.array([])), "spectrum"),
    (lambda: plots.plot_spectrum(np.full(4, np.nan)), "spectrum"),
    (lambda: plots.plot_response((np.linspace(0, 2, 3), np.full(3, np.nan))), "response"),
    (lambda: plots.plot_growth([np.nan, np.nan]), "stability"),
    (lambda: plots.plot_growth([]), "stability"),
    (lambda: plots.plot_accuracy({}), "accuracy"),
    (lambda: plots.plot_accuracy({0.0: np.nan}), "accuracy"),
    (lambda: plots.plot_history([]), "history"),
    (lambda: plots.plot_depth_profile(_depth_profile(), quantities="hf_share_branch"),
     "profile"),
])
def test_empty_or_all_nan_data_is_refused_by_name(call, name):
    with pytest.raises(ValueError, match=name):
        call()
