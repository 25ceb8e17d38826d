"""Result objects show short summaries (shapes, method, status, key numbers), never a tensor.

Every ``__repr__`` is one short line and every ``_repr_html_`` a small table; the HTML of
an analysis table has the headline columns; ``.plot()`` methods draw what the plot
functions draw.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from analysis import analyze, capture
from analysis.response import block_response
from analysis.robustness import linearized_stability
from analysis.spectra import spectrum


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x):
        return x + self.attn(x, x, x)[0]


@pytest.fixture(scope="module")
def objects():
    torch.manual_seed(0)
    net, x = _Net(), torch.randn(2, 16, 4)
    cap = capture(net, x, progress=False)["attn"]
    spec = spectrum(cap, "normalized", progress=False)
    return {
        "capture": cap, "spectrum": spec, "affinity": cap.affinity,
        "operator": cap.operator(), "stability": linearized_stability(cap),
        "response": block_response(cap, spectrum_result=spec, energies=False),
        "row": analyze(net, x, progress=False)[0],
    }


_DUMP = re.compile(r"tensor\(\[|array\(\[|\[\[|object at 0x")


@pytest.mark.parametrize("name", ["capture", "spectrum", "affinity", "operator", "stability",
                                  "response", "row"])
def test_short_repr_and_html_card(objects, name):
    obj = objects[name]
    text = repr(obj)
    assert "\n" not in text and len(text) < 300 and not _DUMP.search(text), text
    html = obj._repr_html_()
    assert "<table>" in html and not _DUMP.search(html) and len(html) < 6000, html


def test_plot_methods_delegate_to_the_plot_functions(objects):
    fig, ax = objects["spectrum"].plot()
    assert ax.get_xlabel() == "Re"              # the complex spectrum of a softmax affinity
    fig, ax = objects["response"].plot()
    assert "gain" in ax.get_ylabel()
    fig, axes = objects["capture"].plot([0, 5])
    assert len(axes) == 2


def test_table_columns_are_data_driven(objects):
    from analysis.analyze import HEADLINE_COLUMNS, AnalysisTable, BlockReport

    table = AnalysisTable([objects["row"]])
    summary, everything = table.columns("summary"), table.columns("all")
    assert len(summary) <= 12 and len(HEADLINE_COLUMNS) <= 12
    assert "tao_negative_share" not in summary        # forced by the construction: no headline
    assert "jacobian_vs_backbone" not in summary      # no backbone measured: undefined
    from dataclasses import fields
    assert set(everything) == {f.name for f in fields(BlockReport)} - {"notes", "timings", "extra"}
    assert len(table.summary().splitlines()[1]) <= 130
    with pytest.raises(ValueError, match="columns"):
        table.columns("some")
    pd = pytest.importorskip("pandas")
    assert isinstance(table.to_frame("summary"), pd.DataFrame)
    assert list(table.to_frame("summary").columns) == summary


def test_headline_against_the_backbone():
    from analysis.analyze import AnalysisTable, BlockReport

    table = AnalysisTable([BlockReport("b", "snl", "block", jacobian_full=2.0)],
                          backbone=[{"jacobian_full": 1.0}, {"jacobian_full": 4.0}])
    assert table.columns("summary")[-1] == "jacobian_vs_backbone"
    assert np.isclose(table.to_frame("summary")["jacobian_vs_backbone"][0], 2.0 / 2.5)
    assert table.headline()["backbone median jacobian_full"] == 2.5


def test_a_table_made_by_analyze_shows_each_headline_column_once():
    # response_class is the headline of two measures (response, attention_response): the
    # table analyze() makes, its markdown and the report's header name it once
    torch.manual_seed(0)
    table = analyze(_Net(), torch.randn(2, 16, 4), progress=False, jacobian=False)
    keys = [k for k, _, _ in table.measure_headline]
    assert len(keys) == len(set(keys)) and "response_class" in keys
    header = table.to_markdown().splitlines()[0]
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert len(cells) == len(set(cells)), header
