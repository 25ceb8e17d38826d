"""analyze(): one row per block with status/reason, tables, and a GPU run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis import AnalysisTable, BlockReport, analyze
from graphfilters.blocks import make_block
from graphfilters.models import PreResNet


class Mixed(nn.Module):
    """One of each structure: low-rank (snl), softmax (nl), channel-position graph (cgnl),
    sub-sampled keys (nl), criss-cross (cc)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 1)
        self.blocks = nn.Sequential(
            make_block("snl", 8), make_block("nl", 8), make_block("cgnl", 8),
            make_block("nl", 8, sub_sample=True), make_block("cc", 8),
        )
        with torch.no_grad():
            for p in self.blocks.parameters():
                p.normal_(0, 0.3)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_analyze_rows_statuses_and_tables():
    model = Mixed()
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    table = analyze(model, [(x, y)], max_samples=2, progress=False)
    assert isinstance(table, AnalysisTable) and all(isinstance(r, BlockReport) for r in table)
    rows = {r.path: r for r in table}
    assert list(rows) == [f"blocks.{i}" for i in range(5)]
    snl, nl, cgnl, sub, cc = (rows[f"blocks.{i}"] for i in range(5))
    assert snl.status == "ok" and snl.spectrum_method == "structured" and snl.symmetric
    assert snl.complex_share == 0 and snl.asymmetry == 0 and snl.lambda_max <= 2 + 1e-9
    assert nl.status == "ok" and nl.spectrum_method == "eig" and nl.complex_share > 0
    assert nl.response_class == "band-stop" and len(nl.stack_growth) == 10
    for r in (snl, nl, cc):
        assert r.reason == "" and math.isfinite(r.stability_radius)
        assert math.isfinite(r.jacobian_full) and math.isfinite(r.tao_negative_share)
    assert cgnl.status == "partial" and "channel-position" in cgnl.reason
    # sub-sampled keys: the N x M affinity is read as a bipartite graph (analysis.bipartite)
    assert sub.status == "ok" and sub.spectrum_method == "bipartite-svd", sub.reason
    assert "bipartite graph" in sub.notes["bipartite"] and "linearized" in sub.notes["n/a"]
    assert math.isfinite(sub.singular_max) and math.isfinite(sub.spectral_gap)
    assert math.isfinite(sub.z_low_energy) and sub.response_class
    assert math.isnan(sub.lambda_max) and math.isnan(sub.stability_radius)
    assert math.isfinite(sub.jacobian_full)                 # still measured empirically
    assert table.accuracy is not None and set(table.accuracy) == {0.0, 0.05, 0.1, 0.2, 0.4}
    frame = table.to_frame("all")
    assert len(frame) == 5 and {"status", "reason", "lambda_max"} <= set(frame.columns)
    text = table.summary()
    assert "blocks.2: partial:" in text and "structured" in text
    records = table.to_records()
    assert records[0]["path"] == "blocks.0" and isinstance(records[0]["stack_growth"], list)
    assert table.captures["blocks.0"].affinity.device.type == "cpu"


def test_analyze_preresnet_with_labels_and_model_modes():
    model = PreResNet(depth=8, width=4, block="snl", block_positions=1, num_classes=3)
    model.train()
    x = torch.randn(3, 3, 8, 8)
    table = analyze(model, x, labels=torch.tensor([0, 1, 2]), jacobian=False, progress=False)
    assert [r.path for r in table] == ["layer1.nonlocal1"]
    assert table[0].status == "ok" and math.isnan(table[0].jacobian_full)
    assert model.training
    with pytest.raises(ValueError, match="targets"):
        analyze(model, x, accuracy_levels=(0.1,), progress=False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_analyze_on_a_gpu_model():
    model = Mixed().cuda()
    x = torch.randn(2, 3, 4, 4, device="cuda")
    table = analyze(model, [(x, torch.tensor([0, 1], device="cuda"))], progress=False)
    rows = {r.path: r for r in table}
    assert rows["blocks.0"].status == "ok" and rows["blocks.1"].status == "ok"
    assert isinstance(rows["blocks.0"].lambda_max, float)
    assert all(c.affinity.device.type == "cpu" for c in table.captures.values())
    assert next(model.parameters()).is_cuda
    ref = analyze(Mixed(), [(x.cpu(), torch.tensor([0, 1]))], progress=False)
    assert np.isclose(ref[0].lambda_max, rows["blocks.0"].lambda_max, rtol=1e-4)
