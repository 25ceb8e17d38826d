"""Exact stability metrics against dense Jacobians (float64, N <= 64): frozen-affinity norms
of the block map and its powers, full Jacobians of units and stages, the affinity's share,
sign-correct damping and the complex-share rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis import capture
from analysis.capture import Capture
from analysis.robustness import (
    FrozenMap,
    block_function,
    damping,
    frozen_function,
    frozen_norms,
    jacobian_singular_values,
    jacobian_spectral_norm,
    jacobians,
    linearized_stability,
    stack_jacobians,
    stage_jacobians,
    tao_spectrum,
    top_singular_values,
)
from analysis.spectra import complex_share
from analysis.stability import frozen_map_starts
from graphfilters.blocks import NonlocalStage, make_block
from graphfilters.graph import DenseAffinity

RTOL = 1e-6
TOL = 1e-11


def _randomize(module: nn.Module, seed: int = 3) -> nn.Module:
    """Random weights of unit scale per fan-in (the output scale too: not the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan = max(1, p[0].numel()) if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.6 / fan ** 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(1.3)
    return module.eval()


def _dense(f, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(f, x).reshape(x.numel(), x.numel())


def _power_norms(J: torch.Tensor, n_max: int) -> np.ndarray:
    out, P = [], J
    for _ in range(n_max):
        out.append(float(torch.linalg.matrix_norm(P, 2)))
        P = P @ J
    return np.array(out)


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


BLOCKS = ["nl", "ns", "a2", "snl", "gsnl"]


@pytest.mark.parametrize("name", BLOCKS)
def test_frozen_norms_and_full_jacobian_match_dense(name):
    C = 4
    block = _randomize(make_block(name, C).double())
    x = torch.randn(1, C, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cap = capture(block, x, progress=False)["(root)"]
    fn, x0 = block_function(cap, 0)
    J_fix = _dense(frozen_function(fn, x0), x0)
    J = _dense(fn, x0)
    ref = _power_norms(J_fix, 4)
    # both frozen paths: dense B_k(A) and the structured product with its vjp adjoint
    for limit in (2048, 0):
        fz = frozen_norms(cap, 4, tol=TOL, dense_limit=limit)
        assert fz.converged and _rel(fz.growth, ref) < RTOL, (limit, fz.growth, ref)
    st = linearized_stability(cap, n_max=4, tol=TOL)
    assert _rel(st.growth, ref) < RTOL and st.norm == pytest.approx(ref[0], rel=RTOL)
    assert np.all(st.growth_lower_bound <= st.growth * (1 + 1e-9))
    # full Jacobian: top singular values and the affinity's share
    rep = jacobians(fn, x0, k=3, tol=TOL)
    assert _rel(rep.full.values, torch.linalg.svdvals(J)[:3].numpy()) < RTOL
    assert rep.frozen.norm == pytest.approx(ref[0], rel=RTOL)
    eye = torch.eye(len(J), dtype=J.dtype)
    share = float(torch.linalg.matrix_norm(J - J_fix, 2) / torch.linalg.matrix_norm(J_fix - eye, 2))
    assert rep.affinity_share == pytest.approx(share, rel=RTOL)
    assert jacobian_spectral_norm(fn, x0, n_iter=200, tol=TOL, affinity="frozen") == \
        pytest.approx(ref[0], rel=RTOL)


@pytest.mark.parametrize("name", BLOCKS)
def test_stage_jacobians_match_dense(name):
    C = 4
    stage = _randomize(NonlocalStage(C, n_units=3, block=name).double(), seed=5)
    x = torch.randn(1, C, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rep = stage_jacobians(stage, x, k=2, tol=TOL)
    J, J_fix = _dense(stage, x), _dense(frozen_function(stage, x), x)
    assert _rel(rep.full.values, torch.linalg.svdvals(J)[:2].numpy()) < RTOL
    assert rep.frozen.norm == pytest.approx(float(torch.linalg.matrix_norm(J_fix, 2)), rel=RTOL)
    assert stage.training is False


def test_stack_of_independent_blocks_matches_dense():
    blocks = [_randomize(make_block("nl", 4).double(), seed=s) for s in (1, 2)]
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rep = stack_jacobians(blocks, x, k=1, tol=TOL)
    J = _dense(lambda t: blocks[1](blocks[0](t)), x)
    assert rep.full.norm == pytest.approx(float(torch.linalg.matrix_norm(J, 2)), rel=RTOL)


@pytest.mark.parametrize("heads", ["keep", "mean"])
def test_multihead_attention_frozen_and_full_match_dense(heads):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return x + self.attn(x, x, x)[0]

    x = torch.randn(1, 10, 8, dtype=torch.float64)
    cap = capture(Net(), x, heads=heads, progress=False)["attn"]
    fn, x0 = block_function(cap, 0)
    J, J_fix = _dense(fn, x0), _dense(frozen_function(fn, x0), x0)
    rep = jacobians(fn, x0, k=3, residual=False, tol=TOL)
    assert _rel(rep.full.values, torch.linalg.svdvals(J)[:3].numpy()) < RTOL
    assert rep.frozen.norm == pytest.approx(float(torch.linalg.matrix_norm(J_fix, 2)), rel=RTOL)
    fz = frozen_norms(cap, 5, tol=TOL)
    if heads == "keep":                                 # one affinity per head: exact
        assert _rel(fz.growth, _power_norms(J_fix, 5)) < RTOL
    else:                                               # head-averaged affinity: a model
        assert 0 < _rel(fz.growth, _power_norms(J_fix, 5)) < 0.5
        # one term, no residual: the Kronecker shortcut equals the generic iteration
        assert FrozenMap(cap).kronecker
        generic = frozen_norms(cap, 5, tol=TOL, dense_limit=0)
        assert _rel(fz.growth, generic.growth) < RTOL


@pytest.mark.parametrize("name", ["gsnl", "attention"])
@pytest.mark.parametrize("residual", [True, False])
def test_frozen_map_powers_in_the_value_space_equal_repeated_application(name, residual):
    # M^n by the value-space recursion (n + 2 products with G and W_k G) against n plain
    # applications of M and of its adjoint; gsnl: three terms, attention: per-head affinities
    torch.manual_seed(0)
    if name == "gsnl":
        block = _randomize(make_block("gsnl", 4).double())
        cap = capture(block, torch.randn(1, 4, 3, 4, dtype=torch.float64),
                      progress=False)["(root)"]
    else:
        net = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)).double()
        cap = capture(net, torch.randn(1, 7, 8, dtype=torch.float64), heads="keep",
                      progress=False)["0.self_attn"]
    M = FrozenMap(cap)
    M.residual = residual
    assert M.dense and not M.fused and len(M.terms) == (3 if name == "gsnl" else 1)
    X, U = torch.randn(M.shape, dtype=torch.float64), torch.randn(M.shape, dtype=torch.float64)
    for n in (3, 6):
        mv, rmv = M.power(n)
        a, b = X, U
        for _ in range(n):
            a, b = M(a), M.adjoint(b)
        assert float((mv(X) - a).norm() / a.norm()) < 1e-12
        assert float((rmv(U) - b).norm() / b.norm()) < 1e-12


def test_jacobians_from_the_frozen_map_starts_are_the_same_values_in_fewer_products():
    # warm starts from the frozen map built from the captured weights (a pre-LN layer's
    # LayerNorm folded at one scale: a model of J_fix) change the cost, not the values
    torch.manual_seed(0)
    net = nn.Sequential(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True,
                                                   norm_first=True)).double().eval()
    cap = capture(net, torch.randn(1, 12, 16, dtype=torch.float64), progress=False)[
        "0.self_attn"]
    fn, x0 = block_function(cap, 0)
    starts = frozen_map_starts(cap, x0, tol=1e-10)
    assert all(s is not None and s.shape == x0.shape for s in starts)
    J, J_fix = _dense(fn, x0), _dense(frozen_function(fn, x0), x0)
    eye = torch.eye(len(J), dtype=J.dtype)
    cold = jacobians(fn, x0, k=1, tol=1e-8, max_iter=300)
    warm = jacobians(fn, x0, k=1, tol=1e-8, max_iter=300, starts=starts)
    for rep in (cold, warm):
        assert rep.frozen.norm == pytest.approx(float(torch.linalg.matrix_norm(J_fix, 2)),
                                                rel=1e-6)
        share = float(torch.linalg.matrix_norm(J - J_fix, 2)
                      / torch.linalg.matrix_norm(J_fix - eye, 2))
        assert rep.affinity_share == pytest.approx(share, rel=1e-6)
    # the saving shows at a width where Lanczos needs more than a few products
    wide = nn.Sequential(nn.TransformerEncoderLayer(64, 2, 128, batch_first=True,
                                                    norm_first=True)).double().eval()
    cap = capture(wide, torch.randn(1, 50, 64, dtype=torch.float64), progress=False)[
        "0.self_attn"]
    fn, x0 = block_function(cap, 0)
    cold = jacobians(fn, x0, k=1, tol=1e-3)
    warm = jacobians(fn, x0, k=1, tol=1e-3, starts=frozen_map_starts(cap, x0))
    assert warm.frozen.iterations < cold.frozen.iterations
    assert warm.frozen.norm == pytest.approx(cold.frozen.norm, rel=1e-4)


def test_top_singular_values_certify_their_residual():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(40, 40, dtype=torch.float64, generator=g)
    sv = top_singular_values(lambda v: A @ v, lambda u: A.T @ u, torch.zeros(40,
                             dtype=torch.float64), k=4, tol=1e-10)
    assert sv.converged and _rel(sv.values, torch.linalg.svdvals(A)[:4].numpy()) < 1e-9
    capped = top_singular_values(lambda v: A @ v, lambda u: A.T @ u, torch.zeros(40,
                                 dtype=torch.float64), k=1, tol=1e-14, max_iter=3, krylov=3)
    assert not capped.converged and capped.iterations == 3 and capped.residual > 1e-14
    zero = top_singular_values(lambda v: 0 * v, lambda u: 0 * u, torch.zeros(3))
    assert zero.norm == 0.0
    with pytest.raises(ValueError, match="k must"):
        top_singular_values(lambda v: v, lambda u: u, torch.zeros(3), k=0)


def test_top_singular_values_go_on_past_an_invariant_subspace():
    # identity (every start vector spans an invariant subspace) and a start vector that is
    # a singular vector: the k values come from the complement, not zeros
    eye = top_singular_values(lambda v: v, lambda u: u, torch.zeros(6, dtype=torch.float64), k=3)
    assert eye.converged and np.allclose(eye.values, 1.0, atol=1e-14)
    D = torch.diag(torch.tensor([3.0, 2.0, 1.0, 1.0, 0.5], dtype=torch.float64))
    e1 = torch.eye(5, dtype=torch.float64)[0]
    sv = top_singular_values(lambda v: D @ v, lambda u: D @ u, e1, k=3, v0=e1, tol=1e-12)
    assert sv.converged and np.allclose(sv.values, [3.0, 2.0, 1.0], atol=1e-12)


def test_a_warm_start_orthogonal_to_the_top_vector_still_finds_it():
    # v0 = e_2 spans an invariant subspace of D: alone it certifies sigma = 2 with zero
    # residual; the random part of the start (v0_mix) finds sigma_1 = 3
    D = torch.diag(torch.tensor([2.0, 3.0, 1.0, 0.5, 0.25], dtype=torch.float64))
    e1 = torch.eye(5, dtype=torch.float64)[0]
    blind = top_singular_values(lambda v: D @ v, lambda u: D @ u, e1, v0=e1, v0_mix=0.0)
    assert blind.norm == pytest.approx(2.0)                 # what a bare warm start gives
    sv = top_singular_values(lambda v: D @ v, lambda u: D @ u, e1, v0=e1, tol=1e-12)
    assert sv.converged and sv.norm == pytest.approx(3.0, rel=1e-12)


def test_jacobian_affinity_argument_is_checked():
    with pytest.raises(ValueError, match="affinity must be one of"):
        jacobian_singular_values(nn.Identity(), torch.zeros(2), affinity="fixed")
    with pytest.raises(ValueError, match="frozen"):
        jacobian_singular_values(nn.Linear(2, 2), torch.zeros(1, 2), affinity="frozen")


def _ns_capture(sign: float) -> Capture:
    """A hand-built NS block: F = (A - I) Z W, G = I, W = sign * I (positive: damps)."""
    g = torch.Generator().manual_seed(0)
    A = torch.rand(1, 6, 6, generator=g, dtype=torch.float64)
    A = (A + A.mT) / 2
    W = sign * torch.eye(3, dtype=torch.float64)
    return Capture("ns", "block", "toy", DenseAffinity(A), "sym", weights=[-W, W],
                   value_weight=torch.eye(3, dtype=torch.float64), n_samples=1)


def test_damping_sign_on_hand_built_ns_block():
    # H(lambda) = (1 - lambda) W - W = -lambda W: with W = +I every nonzero frequency damps,
    # although Tao's sym(G W_1 S) = +I reports no negative eigenvalue at all
    damped = damping(_ns_capture(+1.0))
    assert damped.share == 1.0 and damped.definite_share == 1.0 and damped.mass == 1.0
    assert np.all(damped.max_eig[np.abs(damped.frequencies) > 1e-9] <= 1e-12)
    assert tao_spectrum(_ns_capture(+1.0)).negative_share == 0.0
    amplified = damping(_ns_capture(-1.0))
    assert amplified.share == 0.0 and amplified.mass == 0.0


@pytest.mark.parametrize("Cs", [2, 5])          # low-rank QR path; pencil of C x C maps
def test_damping_paths_match_dense_eigenvalues(Cs):
    rng = np.random.default_rng(0)
    C = 8
    G = torch.tensor(rng.standard_normal((C, Cs)))
    ws = [torch.tensor(rng.standard_normal((Cs, C))) for _ in range(3)]
    ws[1] = torch.zeros_like(ws[1])                  # a zero term is skipped, not mis-indexed
    A = torch.rand(1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    A = A * 0.2 + torch.roll(torch.eye(5, dtype=torch.float64), 1, 1)   # near a 5-cycle
    cap = Capture("b", "block", "toy", DenseAffinity(A), "rw", weights=ws, value_weight=G,
                  n_samples=1)
    d = damping(cap)
    # a non-symmetric affinity: real frequencies (a real eigen-solve on the pencil path) and
    # complex ones (a complex Hermitian one) in the same call
    assert np.any(np.imag(d.frequencies) != 0) and np.any(np.imag(d.frequencies) == 0)
    from analysis.response import frequency_response
    H = frequency_response([w.numpy() for w in ws], d.frequencies)
    K = np.einsum("ci,nio->nco", G.numpy(), H)
    ev = np.linalg.eigvalsh((K + np.conj(np.swapaxes(K, 1, 2))) / 2)
    assert np.allclose(d.min_eig, ev.min(1), atol=1e-10)
    assert np.allclose(d.max_eig, ev.max(1), atol=1e-10)
    assert np.allclose(d.negative_mass, np.where(ev < 0, -ev, 0).sum(1), atol=1e-10)


def test_complex_share_ignores_a_large_null_space():
    # rank-3 real matrix of size 60 with a rotation block, plus 1e-8 noise: 57 numerical
    # zeros whose eigenvalues scatter into the complex plane at ~1e-7
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((60, 3)))[0]
    core = np.array([[0.9, -0.4, 0.0], [0.4, 0.9, 0.0], [0.0, 0.0, 0.5]])
    mu = np.linalg.eigvals(U @ core @ U.T + 1e-8 * rng.standard_normal((60, 60)))
    naive = float((np.abs(mu.imag) > 1e-9 * np.abs(mu).max()).mean())
    cs = complex_share(mu)
    assert naive > 0.3                       # what the old rule reported
    assert cs.n_counted == 3 and cs.n_null == 57
    assert cs.share == pytest.approx(2 / 3)  # one conjugate pair among three
    assert "null space" in cs.rule and cs.rtol == 1e-3
    assert np.isnan(complex_share(np.zeros(4)).share)
    with pytest.raises(ValueError, match="rtol"):
        complex_share(mu, rtol=-1)


def test_frozen_map_checks_its_sample_index():
    cap = _ns_capture(1.0)
    with pytest.raises(ValueError, match="sample index"):
        FrozenMap(cap, index=3)


def test_report_claims_are_computed_from_the_numbers():
    from analysis.analyze import AnalysisTable, BlockReport
    from analysis.report import claims

    def table(block, growth, jac, share, damp, backbone):
        row = BlockReport(path="b", block=block, source="block", lambda_max=1.5,
                          stack_growth=(1.0, growth), jacobian_full=jac, affinity_share=share,
                          damping_share=damp)
        return AnalysisTable([row], backbone=[{"jacobian_full": backbone}])

    verdicts = dict((c, v) for c, v, _ in claims({
        "snl": table("snl", 2.0, 1.2, 0.5, float("nan"), 1.1),
        "nl": table("nl", 5.0, 1.1, 3.0, 0.4, 1.3)}))
    got = list(verdicts.values())
    assert got[:5] == ["held", "held", "did not hold", "held", "did not hold"]
    assert got[5] == "not tested"                       # no accuracy curves
    assert got[6:] == ["did not hold", "held"]          # SNL 1.2 > its backbone's 1.1
    assert all(v == "not tested" for _, v, _ in claims({})[:5])
    # equal within the certified precision, and a bare majority of damping frequencies
    close = [v for _, v, _ in claims({"snl": table("snl", 2.0, 1.2, 0.5, float("nan"), 1.1),
                                      "nl": table("nl", 2.001, 1.1, 3.0, 0.55, 1.3)})]
    assert close[1] == "not separated" and close[4] == "inconclusive"
    clear = [v for _, v, _ in claims({"nl": table("nl", 2.0, 1.1, 3.0, 0.8, 1.3)})]
    assert clear[4] == "held"


class _CubeOnce(torch.autograd.Function):
    """x**3 with a backward that is not differentiable again (no double backward) and a
    forward-mode rule: the autograd products must fall back to forward-mode AD."""

    @staticmethod
    def forward(x):
        return x ** 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.x = inputs[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x * x * g

    @staticmethod
    def jvp(ctx, t):
        return 3 * ctx.x * ctx.x * t


def test_jacobian_products_fall_back_when_double_backward_is_missing():
    from analysis.stability.jacobian import _autograd_products

    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    jvp, _ = _autograd_products(_CubeOnce.apply, x, check=False)
    with pytest.raises(RuntimeError):                   # the double-backward product fails
        jvp(torch.ones_like(x))
    sv = jacobian_singular_values(_CubeOnce.apply, x, k=2, tol=1e-12)
    assert sv.converged and np.allclose(sv.values, [12.0, 3.0], rtol=1e-12)   # 3 x^2
