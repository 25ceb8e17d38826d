"""The SNL fast path: stacked low-rank factors, W_1 folded into the small factor, and the
NaN/Inf check folded into the low-rank reduction.

Every structured path is compared with the plain separate-factor path and a dense float64
matrix; gradients with ``gradcheck``; block errors on NaN inputs and NaN parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphfilters.blocks import make_block
from graphfilters.graph import LowRankAffinity, NormalizedOperator


def _factors(seed: int, n: int, r: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(batch, n, 2 * r, generator=g, dtype=torch.float64) + 0.1
    return U[..., :r], U[..., r:]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 9), r=st.integers(1, 4),
       symmetric=st.booleans())
def test_stacked_factors_equal_separate_factors(seed, n, r, symmetric):
    P, Q = _factors(seed, n, r)
    U = torch.cat([P, Q], -1)
    a = LowRankAffinity.from_stacked(U, r, symmetric=symmetric)
    b = LowRankAffinity(P.clone(), Q.clone(), symmetric=symmetric)
    M = P @ Q.transpose(-1, -2)
    M = (M + M.transpose(-1, -2)) / 2 if symmetric else M
    Z = torch.randn(2, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(a.dense(), M, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.degrees(), M.sum(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(a.matmul(Z), M @ Z, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.matmul(Z), b.matmul(Z), rtol=0, atol=1e-12)
    torch.testing.assert_close(a.symmetrized().dense(), (M + M.transpose(-1, -2)) / 2,
                               rtol=0, atol=1e-12)
    s = torch.rand(2, n, dtype=torch.float64) + 0.5
    torch.testing.assert_close(a.scaled(s, s).dense(), s[..., :, None] * M * s[..., None, :],
                               rtol=0, atol=1e-12)
    ev = np.sort(np.linalg.eigvals(M.numpy()).real, -1)
    got = np.sort(np.asarray(a.eigvals().real if torch.is_complex(a.eigvals())
                             else a.eigvals()), -1)
    np.testing.assert_allclose(got, ev, atol=1e-9)


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_weighted_product_is_the_transposed_filter_term(factor):
    """``matmul_weighted_t(Z, W) = (factor D^{-1/2} M D^{-1/2} Z W)^T`` against a dense
    float64 matrix, and the operator's reduction is ``D^{-1/2}[P, Q]^T Z``."""
    P, Q = _factors(3, 7, 2)
    U = torch.cat([P, Q], -1)
    aff = LowRankAffinity.from_stacked(U, 2, symmetric=True)
    op = NormalizedOperator(aff, "sym")
    op.factor = factor
    assert op.fused
    M = (P @ Q.transpose(-1, -2) + Q @ P.transpose(-1, -2)) / 2
    d = M.sum(-1) ** -0.5
    A = factor * d[..., :, None] * M * d[..., None, :]
    Z = torch.randn(2, 7, 3, dtype=torch.float64)
    W = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(op.matmul_weighted_t(Z, W), (A @ Z @ W).transpose(-1, -2),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(op.reduced, (d[..., None] * U).transpose(-1, -2) @ Z,
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(op(Z), A @ Z, rtol=0, atol=1e-12)


def test_weighted_product_refuses_unstacked_factors():
    P, Q = _factors(0, 5, 2)
    op = NormalizedOperator(LowRankAffinity(P, Q, symmetric=True), "sym")
    assert not op.fused
    with pytest.raises(ValueError, match="stacked"):
        op.matmul_weighted_t(torch.randn(2, 5, 3, dtype=torch.float64),
                             torch.randn(3, 3, dtype=torch.float64))


def test_stacked_products_gradcheck():
    P, Q = _factors(1, 5, 2, batch=1)
    U = torch.cat([P, Q], -1).requires_grad_()
    Z = torch.randn(1, 5, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def f(U, Z, W):
        op = NormalizedOperator(LowRankAffinity.from_stacked(U, 2, symmetric=True), "sym")
        return op.matmul_weighted_t(Z, W), op(Z), op.affinity.degrees()

    assert torch.autograd.gradcheck(f, (U, Z, W))


@pytest.mark.parametrize("name", ["snl", "gsnl"])
@pytest.mark.parametrize("dim", [1, 2])
def test_folded_block_equals_its_dense_path(name, dim):
    """The block's structured forward (stacked factors, folded W_1) equals the dense
    ``materialize=True`` path in float64, values and input gradients."""
    torch.manual_seed(0)
    block = make_block(name, 6, dim=dim).double()
    for p in block.parameters():      # move off the identity-at-init point
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 6, *([5] * dim), dtype=torch.float64, requires_grad=True)
    y = block(x)
    gy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, gy)
    x2 = x.detach().clone().requires_grad_()
    y2 = block(x2, materialize=True)
    (gx2,) = torch.autograd.grad(y2, x2, gy)
    torch.testing.assert_close(y, y2, rtol=0, atol=1e-10)
    torch.testing.assert_close(gx, gx2, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["snl", "gsnl", "a2", "cgnl", "cayley", "arma", "nl"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_named_with_the_folded_check(name, bad):
    block = make_block(name, 6)
    x = torch.randn(2, 6, 4, 4)
    x[1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match="the input x contains NaN or Inf"):
        block(x)


@pytest.mark.parametrize("name", ["snl", "a2", "cayley"])
def test_non_finite_parameters_are_not_blamed_on_the_input(name):
    block = make_block(name, 6)
    with torch.no_grad():
        next(p for n, p in block.named_parameters() if "weight" in n).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"the parameter '[\w.]*weight' contains NaN or Inf"):
        block(torch.randn(2, 6, 4, 4))


def test_half_precision_stacked_factors_are_computed_in_float32():
    """A half-precision stacked affinity takes the float32 path (no fused product in half)."""
    P, Q = _factors(2, 6, 2)
    U = torch.cat([P, Q], -1)
    aff = LowRankAffinity.from_stacked(U.half(), 2, symmetric=True)
    ref = LowRankAffinity.from_stacked(U.half().double(), 2, symmetric=True)
    Z = torch.randn(2, 6, 3).half()
    assert aff.matmul(Z).dtype == torch.float16
    torch.testing.assert_close(aff.matmul(Z).double(), ref.matmul(Z.double()),
                               rtol=2e-3, atol=2e-3)
    assert not NormalizedOperator(aff, "sym").fused
