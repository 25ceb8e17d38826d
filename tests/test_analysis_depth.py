"""analysis.depth_profile: rank collapse, high-frequency share and spectral gap per layer.

The values are checked against an independent numpy computation of a tiny float64 attention
stack; on fixed seeds a pure-attention stack collapses faster than the same stack with skip
connections and MLPs (Dong et al., ICML 2021).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis import DepthProfile, depth_profile
from analysis.depth import absolute_gap, hf_share, token_residual
from analysis.plots import plot_depth_profile


class Layer(nn.Module):
    """``MHA`` alone (pure attention) or with a skip connection and/or an MLP."""

    def __init__(self, dim: int, heads: int, skip: bool, mlp: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.skip = skip
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim)) \
            if mlp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(x, x, x, need_weights=False)[0]
        x = x + a if self.skip else a
        if self.mlp is not None:
            x = x + self.mlp(x) if self.skip else self.mlp(x)
        return x


def stack(depth: int, dim: int, heads: int, skip: bool, mlp: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(*[Layer(dim, heads, skip, mlp) for _ in range(depth)])


# -- an independent numpy computation --------------------------------------------------------


def _np_mha(mha: nn.MultiheadAttention, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output ``(S, N, E)`` and per-head attention ``(S, H, N, N)`` of ``mha`` on ``X``."""
    E, H = mha.embed_dim, mha.num_heads
    d = E // H
    W = mha.in_proj_weight.detach().numpy()
    b = mha.in_proj_bias.detach().numpy()
    q, k, v = (X @ W[i * E:(i + 1) * E].T + b[i * E:(i + 1) * E] for i in range(3))
    heads, maps = [], []
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        logits = q[..., sl] @ np.swapaxes(k[..., sl], -1, -2) / math.sqrt(d)
        P = np.exp(logits - logits.max(-1, keepdims=True))
        P /= P.sum(-1, keepdims=True)
        maps.append(P)
        heads.append(P @ v[..., sl])
    out = np.concatenate(heads, -1) @ mha.out_proj.weight.detach().numpy().T \
        + mha.out_proj.bias.detach().numpy()
    return out, np.stack(maps, 1)


def _np_measures(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    R = X - X.mean(1, keepdims=True)
    fro = np.sqrt((R ** 2).sum((1, 2)) / (X ** 2).sum((1, 2)))

    def comp(M: np.ndarray) -> np.ndarray:
        a = np.abs(M)
        return np.sqrt(a.sum(1).max(-1) * a.sum(2).max(-1))

    return fro, comp(R) / comp(X), (R ** 2).sum((1, 2)) / (X ** 2).sum((1, 2))


def test_values_equal_an_independent_numpy_computation():
    model = stack(2, 6, 2, skip=False, mlp=False, seed=3).double()
    torch.manual_seed(4)
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    profile = depth_profile(model, x)
    assert [r.path for r in profile] == ["0.attn", "1.attn"]
    X = x.numpy()
    for row, layer in zip(profile, model):
        Y, P = _np_mha(layer.attn, X)
        fro, l1inf, hf = _np_measures(X)
        fro_o, l1inf_o, hf_o = _np_measures(Y)
        gaps = np.array([[1 - np.sort(np.abs(np.linalg.eigvals(P[s, h])))[-2]
                          for h in range(2)] for s in range(3)])
        assert row.status == "ok", row.reason
        assert (row.n_tokens, row.heads, row.n_samples) == (5, 2, 3)
        np.testing.assert_allclose(
            [row.residual_in, row.residual_in_std, row.residual_out,
             row.residual_l1inf_at_mean_in, row.residual_l1inf_at_mean_out,
             row.hf_share_in, row.hf_share_out],
            [fro.mean(), fro.std(), fro_o.mean(), l1inf.mean(), l1inf_o.mean(), hf.mean(),
             hf_o.mean()], rtol=1e-10)
        np.testing.assert_allclose(row.absolute_gap_heads, gaps.mean(0), rtol=1e-9)
        np.testing.assert_allclose([row.absolute_gap, row.absolute_gap_std],
                                   [gaps.mean(0).mean(), gaps.mean(0).std()], rtol=1e-9)
        assert row.hf_share_in == pytest.approx(row.residual_in ** 2 + row.residual_in_std ** 2)
        X = Y


def test_pure_attention_collapses_faster_than_with_skip_and_mlp():
    """Dong et al.: the same 6-layer stack (seed 0, inputs seed 1) with and without skip
    connections and MLPs; the numbers are recorded in the note of issue 22."""
    torch.manual_seed(1)
    x = torch.randn(8, 12, 16)
    curves = {}
    for skip, mlp in ((False, False), (True, True)):
        p = depth_profile(stack(6, 16, 2, skip, mlp, seed=0), x)
        curves[skip] = np.array([r.residual_in for r in p] + [p[-1].residual_out])
    pure, skipped = curves[False], curves[True]
    print("pure:", np.round(pure, 6), "skip+MLP:", np.round(skipped, 6))
    assert pure[0] == pytest.approx(skipped[0])                 # the same input
    assert np.all(np.diff(pure) <= 0)                           # collapses, layer by layer
    assert pure[2] < 0.01 and skipped[2] > 0.8                  # two layers suffice
    assert np.all(pure[1:] < skipped[1:])
    assert skipped[-1] > 0.1                                    # skip/MLP keep the rank


def test_order_is_the_forward_order():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = Layer(8, 1, True, False)
            self.a = Layer(8, 1, True, False)

        def forward(self, x):
            return self.b(self.a(x))

    p = depth_profile(Reversed(), torch.randn(2, 4, 8))
    assert [r.path for r in p] == ["a.attn", "b.attn"]
    assert [r.depth for r in p] == [0, 1]


def test_transformer_layer_branch_and_gfsa_heads_counted_once():
    from graphfilters.blocks.gfsa import GFSA

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    p = depth_profile(enc, torch.randn(2, 6, 8))
    assert "x + SA(norm1(x))" in p[0].map and 0 < p[0].hf_share_branch <= 1
    block = GFSA(8, heads=2, dim=1)
    with torch.no_grad():
        block.norm.weight.fill_(1.0)
        block.w_K.fill_(0.5)
    row = depth_profile(block, torch.randn(2, 8, 7))[0]
    assert row.heads == 2 and len(row.absolute_gap_heads) == 2
    assert "counted once" in row.notes["absolute_gap"]


def test_not_row_stochastic_is_na_with_the_reason():
    class Product(nn.Module):                 # a normalized product, rows not summing to 1
        def forward(self, x):
            w = torch.relu(x @ x.transpose(1, 2)) / x.shape[1]
            return w @ x

    row = depth_profile(Product(), torch.randn(2, 6, 3))[0]
    assert row.status == "partial" and math.isnan(row.absolute_gap)
    assert "row-stochastic" in row.reason
    assert math.isfinite(row.residual_in)


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="model"):
        depth_profile("net", torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="data"):
        depth_profile(nn.Linear(4, 4), None)
    with pytest.raises(ValueError, match="max_samples"):
        depth_profile(nn.Linear(4, 4), torch.randn(2, 4), max_samples=0)
    with pytest.raises(ValueError, match="norm"):
        token_residual(torch.randn(3, 2), norm="l2")
    with pytest.raises(TypeError, match="X"):
        hf_share([[1.0, 2.0]])
    empty = depth_profile(nn.Linear(4, 4), torch.randn(2, 4))
    assert isinstance(empty, DepthProfile) and not empty
    assert "no nonlocal module" in empty.reason and "no attention" in empty.summary()
    with pytest.raises(ValueError, match="profile"):
        plot_depth_profile(empty)
    with pytest.raises(TypeError, match="profile"):
        plot_depth_profile({"a": 1})
    with pytest.raises(ValueError, match="quantities"):
        plot_depth_profile(depth_profile(Layer(4, 1, True, False), torch.randn(2, 3, 4)),
                           quantities="gap")
    assert math.isnan(absolute_gap([1.0]))


def test_frame_summary_and_plot():
    pd = pytest.importorskip("pandas")
    p = depth_profile(stack(3, 8, 2, False, False, seed=0), torch.randn(2, 5, 8))
    frame = p.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 3
    assert list(p.to_frame("summary").columns)[:2] == ["depth", "path"]
    assert "1-|mu2|" in p.summary()
    fig, ax = plot_depth_profile(p, label="pure", log=True)
    assert ax.get_yscale() == "log" and ax.get_legend() is not None
    fig2, ax2 = p.plot(ax=ax, quantities="residual_out", label="again")
    assert fig2 is fig and ax2 is ax
