"""Capture: blocks, MultiheadAttention, adapters, hooks and modes restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis import Capture, analyze, capture, register_adapter, unregister_adapter
from analysis.capture import ROOT
from graphfilters.blocks import make_block
from graphfilters.graph import DenseAffinity, LowRankAffinity, SoftmaxAffinity


def _randomized(block: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.4)
    return block


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.snl = _randomized(make_block("snl", 8))
        self.nl = _randomized(make_block("nl", 8), 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.nl(self.snl(self.stem(x)))
        return self.head(x.mean((2, 3)))


def _n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_capture_blocks_fields_and_exact_affinity():
    model = TwoBlocks().train()
    x = torch.randn(5, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    batches = [(x[:3], torch.zeros(3)), (x[3:], torch.zeros(2))]
    caps = capture(model, batches, max_samples=4, progress=False)
    assert list(caps) == ["snl", "nl"] and caps.n_samples == 4
    assert model.training and all(m.training for m in model.modules())     # modes restored
    assert not model.snl.record and not model.nl.record
    snl, nl = caps["snl"], caps["nl"]
    assert isinstance(snl.affinity, LowRankAffinity) and snl.affinity.symmetric
    assert isinstance(nl.affinity, SoftmaxAffinity)
    assert snl.affinity.batch_shape == (4,) and snl.n_samples == 4 and snl.n == 20
    assert snl.z.shape == (4, 20, 4) and snl.spatial_shape == (4, 5)
    assert [tuple(w.shape) for w in snl.weights] == [(4, 8), (4, 8)]
    assert snl.input.shape == (4, 8, 4, 5) and snl.output_scale.shape == (8,)
    assert snl.value_weight.shape == (8, 4) and snl.spec.name == "snl"
    assert snl.affinity.device.type == "cpu"
    # the captured operator is the one the block used
    model.eval()
    with torch.no_grad():
        h = model.stem(x[:4])
        _, dense = model.snl(h, return_affinity=True)
    assert torch.allclose(snl.operator().dense(), dense, atol=1e-5)
    row = snl.affinity_row((1, 2), index=3)
    assert row.shape == (4, 5)
    assert np.allclose(row.ravel(), dense[3, 1 * 5 + 2].numpy(), atol=1e-5)


def test_capture_stage_units_and_root_block():
    stage = _randomized(make_block("ns", 8, n_units=2))
    caps = capture(nn.Sequential(stage), torch.randn(2, 8, 3, 3), progress=False)
    assert list(caps) == ["0.units.0", "0.units.1"]
    assert all(c.spec.name == "ns" for c in caps.values())
    single = capture(_randomized(make_block("snl", 8)), torch.randn(2, 8, 3, 3), progress=False)
    assert list(single) == [ROOT]


def test_capture_removes_hooks_after_an_exception():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(_randomized(make_block("snl", 8)), Boom(), nn.MultiheadAttention(8, 2))
    model.train()
    before = _n_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, torch.randn(2, 8, 3, 3), progress=False)
    assert _n_hooks(model) == before == 0
    assert model.training and model[0].training and not model[0].record


def test_model_without_nonlocal_blocks_gives_empty_result_with_reason():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
    caps = capture(model, torch.randn(2, 3, 4, 4), progress=False)
    assert len(caps) == 0 and "no nonlocal module" in caps.reason
    table = analyze(model, torch.randn(2, 3, 4, 4), progress=False)
    assert len(table) == 0 and "no nonlocal module" in table.reason
    assert "no nonlocal blocks" in table.summary()
    frame = table.to_frame("all")
    assert len(frame) == 0 and "stability_radius" in frame.columns


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("heads", ["mean", "keep"])
def test_multihead_attention_capture_equals_module_weights(batch_first, heads):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=8, vdim=8)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = mha

        def forward(self, x, mask=None):
            return self.attn(x, x, x, key_padding_mask=mask)[0]

    x = torch.randn(3, 5, 8) if batch_first else torch.randn(5, 3, 8)
    caps = capture(Net(), x, heads=heads, progress=False)
    cap = caps["attn"]
    with torch.no_grad():
        _, w = mha(x, x, x, need_weights=True, average_attn_weights=(heads == "mean"))
    got = cap.operator().dense()
    assert got.shape == w.shape
    assert torch.allclose(got, w, atol=1e-6)
    assert cap.spec.name == "mha" and not cap.residual and cap.spatial_shape == (5,)
    assert isinstance(cap.affinity, DenseAffinity if heads == "mean" else SoftmaxAffinity)
    # masks are honoured
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, -1] = True
    caps = capture(Net(), x, heads=heads, progress=False,
                   forward=lambda model, batch: model(batch, mask))
    with torch.no_grad():
        _, w = mha(x, x, x, key_padding_mask=mask, average_attn_weights=(heads == "mean"))
    assert torch.allclose(caps["attn"].operator().dense(), w, atol=1e-6)


def test_register_adapter_and_blocks_filter():
    class Smoother(nn.Module):
        def forward(self, x):                      # (B, N, C): mean over the nodes
            return x.mean(1, keepdim=True).expand_as(x)

    def adapter(module, inputs, output):
        b, n, _ = inputs[0].shape
        return Capture("", "", "", DenseAffinity(torch.full((b, n, n), 1.0 / n)), "none",
                       z=inputs[0], weights=[torch.zeros(4, 4), torch.eye(4)],
                       spatial_shape=(n,), residual=False)

    model = nn.Sequential(Smoother(), nn.MultiheadAttention(4, 1, batch_first=True))
    model.forward = lambda x: model[0](x)          # the attention is never called
    register_adapter(Smoother, adapter)
    try:
        caps = capture(model, torch.randn(2, 6, 4), progress=False)
        assert list(caps) == ["0"] and caps["0"].source == "adapter"
        assert torch.allclose(caps["0"].operator().dense(), torch.full((2, 6, 6), 1 / 6))
        only = capture(model, torch.randn(2, 6, 4), blocks=[Smoother], progress=False)
        assert list(only) == ["0"]
        with pytest.raises(ValueError, match="no nonlocal module at path"):
            capture(model, torch.randn(2, 6, 4), blocks=["nope"], progress=False)
    finally:
        unregister_adapter(Smoother)
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_adapter(int, adapter)


def test_capture_argument_errors():
    model = TwoBlocks()
    with pytest.raises(ValueError, match="max_samples"):
        capture(model, torch.randn(1, 3, 2, 2), max_samples=0)
    with pytest.raises(ValueError, match="heads"):
        capture(model, torch.randn(1, 3, 2, 2), heads="sum")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        capture("model", torch.randn(1, 3, 2, 2))


def test_module_called_twice_per_forward_keeps_its_first_call():
    block = _randomized(make_block("snl", 8))
    model = nn.Sequential(block, block)
    x = torch.randn(3, 8, 2, 3)
    cap = capture(model, [x, x], max_samples=5, progress=False)["0"]
    assert cap.n_samples == 5 and cap.info["repeated_calls"] == 2
    assert torch.allclose(cap.input[:3], x)           # the first call's input
