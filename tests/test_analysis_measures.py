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
