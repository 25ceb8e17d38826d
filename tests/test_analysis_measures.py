"""The measure registry (analysis.measures): a measure added from outside the package shows in
analyze()'s table, summary and markdown; a failing measure makes its row partial and the others
still run; measures= selects."""

from __future__ import annotations

import math

import pytest
import torch

from analysis import analyze
from analysis.measures import Measure, register, registered, unregister
from graphfilters.blocks import make_block


def _model():
    torch.manual_seed(0)
    block = make_block("snl", 4)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return block, torch.randn(2, 4, 3, 3)


def _trace(cap, ctx):
    A = cap.dense_affinity().double()
    return {"affinity_trace": float(A.diagonal(dim1=-2, dim2=-1).sum(-1).mean())}


def test_a_measure_registered_from_outside_is_a_column_everywhere():
    block, x = _model()
    register(Measure("trace", ("affinity_trace",), _trace,
                     headline=(("affinity_trace", "tr A", ".4f"),)))
    try:
        table = analyze(block, x, progress=False, backbone=False, jacobian=False)
    finally:
        unregister("trace")
    row = table[0]
    A = table.captures["(root)"].dense_affinity().double()
    ref = float(A.diagonal(dim1=-2, dim2=-1).sum(-1).mean())
    assert row.extra["affinity_trace"] == pytest.approx(ref, abs=1e-12)
    assert "affinity_trace" in table.to_frame(columns="all").columns
    assert "tr A" in table.summary() and "tr A" in table.to_markdown()
    assert f"{ref:.4f}" in table.to_markdown()
    assert "trace" not in [m.name for m in registered()]


def test_a_failing_measure_is_the_rows_reason_and_the_others_run():
    block, x = _model()

    def broken(cap, ctx):
        raise RuntimeError("no luck")

    register(Measure("broken", ("nothing",), broken), before="spectrum")
    try:
        row = analyze(block, x, progress=False, backbone=False, jacobian=False)[0]
    finally:
        unregister("broken")
    assert row.status == "partial" and "broken: no luck" in row.reason
    assert math.isfinite(row.lambda_max) and math.isfinite(row.stability_norm)


def test_measures_select_and_unknown_names_are_refused():
    block, x = _model()
    row = analyze(block, x, progress=False, backbone=False, jacobian=False,
                  measures=["spectrum", "metrics"])[0]
    assert math.isfinite(row.lambda_max) and math.isnan(row.stability_norm)
    assert row.response_class == ""
    with pytest.raises(ValueError, match="measures: unknown measure"):
        analyze(block, x, progress=False, measures=["spectrum", "nope"])
    with pytest.raises(ValueError, match="before='nope'"):
        register(Measure("x", (), _trace), before="nope")


@pytest.mark.parametrize("name", ["gfsa", "attnscale", "diffattn"])
def test_learned_coefficients_of_attention_filters_are_in_the_row(name):
    """GFSA's w's, AttnScale's lambda_h and Differential attention's lambda (issue 22), read
    from the trained block, per head, in the row's ``coefficients`` column."""
    from graphfilters.blocks import make_block

    torch.manual_seed(0)
    block = make_block(name, 8, heads=2)
    with torch.no_grad():
        for p in block.coefficients().values():
            p.copy_(torch.randn_like(p))
    table = analyze(torch.nn.Sequential(block), torch.randn(2, 8, 4, 4), progress=False,
                    jacobian=False)
    got = table[0].extra["coefficients"]
    for key, value in block.coefficients().items():
        assert got[key] == pytest.approx(value.detach().reshape(-1).tolist(), abs=0)
    if name == "diffattn":
        assert got["lambda"] == pytest.approx(float(block.lambda_full()), abs=0)
    assert "coefficients" in table.to_frame("all").columns


def test_blocks_without_learned_coefficients_have_no_column():
    table = analyze(make_block("snl", 4), torch.randn(1, 4, 3, 3), progress=False,
                    jacobian=False)
    assert "coefficients" not in table[0].extra
