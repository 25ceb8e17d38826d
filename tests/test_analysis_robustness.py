"""Robustness: hand-computed stability, Jacobian norm against the full Jacobian, Tao spectrum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis import (
    accuracy_under_noise,
    affinity_sensitivity,
    block_function,
    capture,
    jacobian_spectral_norm,
    linearized_stability,
    noise_sensitivity,
    tao_spectrum,
)
from analysis.capture import Capture
from analysis.robustness import value_projection
from graphfilters.blocks import make_block


def _known_snl(a: float, b: float, gamma: float):
    """An SNL block with G = I, W_0 = a I, W_1 = b I and BN scale gamma / sqrt(1 + eps)."""
    block = make_block("snl", 4, inter_channels=4)
    torch.manual_seed(0)
    with torch.no_grad():
        block.theta.weight.normal_()
        block.phi.weight.normal_()
        block.g.weight.copy_(torch.eye(4).reshape(4, 4, 1, 1))
        block.w["0"].copy_(a * torch.eye(4))
        block.w["1"].copy_(b * torch.eye(4))
        block.norm.weight.fill_(gamma)
        block.norm.bias.zero_()
        block.norm.running_mean.zero_()
        block.norm.running_var.fill_(1.0)
    return block.eval()


def test_stability_radius_matches_hand_computation():
    a, b, gamma = 0.1, -0.3, 2.0
    block = _known_snl(a, b, gamma)
    assert torch.allclose(block.filter_weights()[1], b * torch.eye(4))
    cap = capture(block, torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1)),
                  progress=False)["(root)"]
    s = gamma / np.sqrt(1 + block.norm.eps)
    mu = np.linalg.eigvalsh(cap.operator().dense().double().numpy())      # (2, 9)
    hand = np.abs(1 + s * (a + b * mu))                    # M(lambda) = (1 + s H) I
    st = linearized_stability(cap, n_max=10)
    assert np.isclose(st.radius, hand.max(), rtol=1e-6)
    assert np.isclose(st.norm, hand.max(), rtol=1e-6)                 # normal maps
    assert np.allclose(st.growth, hand.max() ** np.arange(1, 11), rtol=1e-6)
    assert "exact" in st.how
    G, how = value_projection(cap)
    assert np.allclose(G, np.eye(4)) and how == "from the module"
    tao = tao_spectrum(cap)                                # sym(G W_1 S) = b s I
    assert np.allclose(tao.eigenvalues, b * s) and tao.negative_share == 1.0
    assert tao.negative_mass == 1.0
    # without the module's G, least squares on the captured input recovers it
    cap.value_weight = None
    G2, how2 = value_projection(cap)
    assert np.allclose(G2, np.eye(4), atol=1e-5) and "least squares" in how2


def test_tao_share_is_fixed_by_a_bottleneck_but_the_mass_is_not():
    # C = 8, C_s = 4: sym(G W) has rank <= 8 with exactly 4 negative eigenvalues (inertia)
    rng = np.random.default_rng(0)
    masses = set()
    for scale in (0.2, 1.0, 5.0):
        G, W = rng.standard_normal((8, 4)), rng.standard_normal((4, 8))
        W = W + scale * G.T  # pushes sym(G W) towards positive definite on range(G)
        cap = Capture("b", "block", "toy", None, weights=[torch.zeros(4, 8), torch.tensor(W)],
                      value_weight=torch.tensor(G))
        tao = tao_spectrum(cap)
        assert tao.negative_share == 0.5 and tao.forced and tao.rank == 4
        masses.add(round(tao.negative_mass, 3))
    assert len(masses) == 3 and max(masses) < 0.5


def test_nonsymmetric_stability_is_exact_and_names_the_schur_bound():
    torch.manual_seed(0)
    block = make_block("nl", 4)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)
    cap = capture(block, torch.randn(1, 4, 3, 3), progress=False)["(root)"]
    st = linearized_stability(cap, n_max=3)
    assert "matrix-free" in st.how and st.converged
    assert "lower bound" in st.notes["lower_bound"]
    assert st.radius > 0 and len(st.growth) == 3 and len(st.growth_lower_bound) == 3
    assert np.all(st.growth_lower_bound <= st.growth * (1 + 1e-9))
    with pytest.raises(ValueError, match="eigenbasis"):
        linearized_stability(cap, n_max=3, exact="eigenbasis")


def _random_snl():
    torch.manual_seed(3)
    block = make_block("snl", 4)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)
    return block.eval()


@pytest.mark.parametrize("mode", ["autograd", "func"])
def test_jacobian_norm_matches_full_jacobian(mode):
    block = _random_snl()
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    J = torch.autograd.functional.jacobian(block, x).reshape(x.numel(), x.numel())
    exact = float(torch.linalg.matrix_norm(J, 2))
    est = jacobian_spectral_norm(block, x, n_iter=200, tol=1e-10, mode=mode)
    assert abs(est - exact) <= 1e-4 * exact


def test_jacobian_of_captured_attention_and_stage_unit():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(4, 2, batch_first=True)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x)[0]

    cap = capture(Net(), torch.randn(1, 5, 4), progress=False)["attn"]
    fn, x = block_function(cap)
    J = torch.autograd.functional.jacobian(fn, x).reshape(x.numel(), x.numel())
    est = jacobian_spectral_norm(fn, x, n_iter=200, tol=1e-10)
    assert abs(est - float(torch.linalg.matrix_norm(J, 2))) < 1e-3
    stage = make_block("ns", 4, n_units=2)
    caps = capture(nn.Sequential(stage), torch.randn(1, 4, 2, 2), progress=False)
    fn, x = block_function(caps["0.units.1"])            # called with the shared affinity
    assert jacobian_spectral_norm(fn, x) == pytest.approx(1.0, abs=1e-5)   # identity at init
    assert stage.training                                # modes restored


def test_noise_and_affinity_sensitivity_and_accuracy():
    block = _random_snl()
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    out = noise_sensitivity(block, x, level=0.05)
    assert 0 < out["relative_change"] and np.isclose(out["gain"], out["relative_change"] / 0.05)
    cap = capture(block, x, progress=False)["(root)"]
    small = affinity_sensitivity(cap, level=1e-3)
    big = affinity_sensitivity(cap, level=1e-1)
    assert 0 < small["output_change"] < big["output_change"]
    assert np.isfinite(small["gain"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        model[1].bias.zero_()
    xs = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0]]).reshape(2, 1, 2, 2)
    acc = accuracy_under_noise(model, [(xs, torch.tensor([0, 1]))], levels=(0.0, 100.0),
                               progress=False)
    assert acc[0.0] == 1.0 and 0.0 <= acc[100.0] <= 1.0
    with pytest.raises(ValueError, match=">= 0"):
        accuracy_under_noise(model, [(xs, torch.tensor([0, 1]))], levels=(-1.0,))
