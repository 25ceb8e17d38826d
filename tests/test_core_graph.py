"""Degrees, Laplacians, normalization, lambda_max and the affinity structures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import graphfilters.graph as G
from graphfilters.graph import (
    DenseAffinity,
    LowRankAffinity,
    SoftmaxAffinity,
    SumAffinity,
    degrees,
    inv_degree_power,
    lambda_max,
    laplacian,
    normalized_affinity,
    symmetrize,
)

from .conftest import random_symmetric_affinity


def _nonneg_square(n_max=9):
    return st.integers(1, n_max).flatmap(
        lambda n: arrays(np.float64, (n, n), elements=st.floats(0, 10, allow_subnormal=False))
    )


@given(_nonneg_square())
def test_Lsym_spectrum_in_0_2(W):
    """The normalized Laplacian of a symmetric non-negative affinity has spectrum in [0, 2]."""
    A = symmetrize(W)
    lam = np.linalg.eigvalsh(laplacian(A, "sym"))
    assert lam.min() >= -1e-9 and lam.max() <= 2 + 1e-9
    assert not np.isnan(laplacian(A, "rw")).any()


@given(_nonneg_square())
def test_Lrw_is_similar_to_Lsym(W):
    A = symmetrize(W)
    d = degrees(A)
    if (d <= 0).any():
        return  # similarity needs D invertible
    lam_rw = np.sort(np.linalg.eigvals(laplacian(A, "rw")).real)
    assert np.allclose(lam_rw, np.linalg.eigvalsh(laplacian(A, "sym")), atol=1e-8)


@given(_nonneg_square(6), st.integers(1, 3))
def test_batch_equivalence(W, b):
    A = np.stack([W * (i + 1) for i in range(b)])
    for kind in ("combinatorial", "sym", "rw"):
        batched = laplacian(A, kind)
        for i in range(b):
            assert np.allclose(batched[i], laplacian(A[i], kind))


def test_definitions(rng):
    A = random_symmetric_affinity(rng, 7)
    d = A.sum(1)
    D = np.diag(d)
    Dm12 = np.diag(d**-0.5)
    assert np.allclose(degrees(A), d)
    assert np.allclose(laplacian(A, "combinatorial"), D - A)
    assert np.allclose(laplacian(A, "sym"), np.eye(7) - Dm12 @ A @ Dm12)
    assert np.allclose(laplacian(A, "rw"), np.eye(7) - np.diag(1 / d) @ A)
    assert np.allclose(normalized_affinity(A, "size"), A / 7)
    assert np.allclose(normalized_affinity(A, "none"), A)


def test_zero_degree_nodes_get_zero_not_nan():
    A = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    for kind in ("sym", "rw"):
        Ahat = normalized_affinity(A, kind)
        assert np.isfinite(Ahat).all() and (Ahat[2] == 0).all() and (Ahat[:, 2] == 0).all()
    assert np.allclose(inv_degree_power(np.array([4.0, 0.0]), 1.0), [0.25, 0.0])
    t = torch.tensor(A, requires_grad=True)
    normalized_affinity(t, "sym").sum().backward()
    assert torch.isfinite(t.grad).all()


def _lowrank(rng, n=50, r=3, batch=(), symmetric=True, nonneg=True):
    P = rng.random((*batch, n, r)) if nonneg else rng.standard_normal((*batch, n, r))
    Q = rng.random((*batch, n, r)) if nonneg else rng.standard_normal((*batch, n, r))
    return LowRankAffinity(P, Q, symmetric=symmetric)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("kind", ["sym", "rw", "size", "none"])
def test_lowrank_equals_dense(rng, symmetric, kind):
    op = _lowrank(rng, batch=(2,), symmetric=symmetric)
    dense = DenseAffinity(op.dense())
    Z = rng.standard_normal((2, 50, 4))
    assert np.abs(op.degrees() - dense.degrees()).max() < 1e-12
    assert np.abs(op.normalized(kind)(Z) - dense.normalized(kind)(Z)).max() < 1e-12
    assert np.abs(op.normalized(kind).dense() - normalized_affinity(op.dense(), kind)).max() < 1e-12
    ev_lr, ev_d = op.eigvals(kind), dense.eigvals(kind)
    if op.normalized(kind).symmetric:
        assert np.isrealobj(ev_lr) and np.abs(ev_lr - ev_d).max() < 1e-12
    else:
        a = np.sort_complex(np.round(ev_lr, 9))
        b = np.sort_complex(np.round(ev_d, 9))
        assert np.abs(a - b).max() < 1e-8


def test_lowrank_laplacian_spectrum_and_nonzero(rng):
    op = _lowrank(rng, n=80, r=4)
    lam = op.laplacian_eigvals("sym")
    ref = np.linalg.eigvalsh(laplacian(op.dense(), "sym"))
    assert np.abs(lam - ref).max() < 1e-12
    mu = op.eigvals("sym", nonzero=True)
    assert mu.shape == (8,)
    # Ahat has at most 2r nonzero eigenvalues: the other N - 2r eigenvalues of L are 1
    full = np.sort(np.concatenate([1 - mu, np.ones(80 - 8)]))
    assert np.allclose(full, ref, atol=1e-12)


def test_lowrank_with_more_factors_than_nodes(rng):
    op = _lowrank(rng, n=3, r=4)
    assert np.allclose(op.eigvals("sym"), np.linalg.eigvalsh(normalized_affinity(op.dense())))


def test_scipy_linear_operator(rng):
    op = _lowrank(rng, n=200, r=3)
    lin = op.as_linear_operator("sym")
    assert isinstance(lin, spla.LinearOperator) and lin.shape == (200, 200)
    top = spla.eigsh(lin, k=2, which="LA")[0]
    assert np.allclose(np.sort(top), np.sort(op.eigvals("sym"))[-2:], atol=1e-10)
    x = rng.standard_normal(200)
    assert np.allclose(op.as_linear_operator(laplacian="sym") @ x,
                       laplacian(op.dense(), "sym") @ x)
    dense = DenseAffinity(op.dense())
    ref = normalized_affinity(op.dense(), "rw") @ x
    assert np.allclose(dense.as_linear_operator("rw") @ x, ref)


@pytest.mark.parametrize("kind", ["sym", "rw", "combinatorial"])
def test_lambda_max_methods_agree(rng, kind):
    A = random_symmetric_affinity(rng, 60)
    exact = float(lambda_max(A, kind, "exact"))
    assert float(lambda_max(A, kind, "lanczos")) == pytest.approx(exact, rel=1e-8)
    assert float(lambda_max(A, kind, "power", n_iter=3000, tol=1e-10)) == pytest.approx(
        exact, rel=1e-4
    )
    assert float(lambda_max(A, kind, "bound")) >= exact - 1e-12
    if kind == "combinatorial":
        assert float(lambda_max(A, kind, "bound")) == pytest.approx(2 * A.sum(1).max())


def test_lambda_max_structured_and_batched(rng):
    op = _lowrank(rng, n=300, r=4, batch=(2,))
    exact = lambda_max(op, "sym", "exact")
    assert exact.shape == (2,)
    assert np.allclose(lambda_max(op, "sym", "lanczos"), exact, rtol=1e-8)
    comb_bound = lambda_max(op, "combinatorial", "bound")
    assert (comb_bound >= lambda_max(op.dense(), "combinatorial", "exact") - 1e-9).all()
    signed = _lowrank(rng, n=30, r=2, nonneg=False)
    assert float(lambda_max(signed, "combinatorial", "bound")) >= float(
        lambda_max(signed.dense(), "combinatorial", "exact")
    )


def test_softmax_affinity(rng):
    q, k = rng.standard_normal((2, 2, 40, 5))
    Z = rng.standard_normal((2, 40, 3))
    aff = SoftmaxAffinity(q, k, scale=0.7, chunk_size=7)
    logits = 0.7 * q @ np.swapaxes(k, -1, -2)
    A = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert np.allclose(aff.dense(), A)
    assert np.allclose(aff.matmul(Z), A @ Z)
    assert np.allclose(aff.degrees(), 1)
    assert np.allclose(aff.normalized("rw")(Z), A @ Z)
    assert np.allclose(aff.normalized("sym")(Z), A @ Z)  # D = I
    t = SoftmaxAffinity(*(torch.tensor(x) for x in (q, k)), scale=0.7)
    assert np.allclose(t.matmul(torch.tensor(Z)).numpy(), A @ Z, atol=1e-12)
    ev = aff.eigvals()
    assert np.iscomplexobj(ev) and np.abs(ev.imag).max() > 1e-6  # non-symmetric: complex
    sub = SoftmaxAffinity(q, k[:, :10])
    assert sub.shape == (2, 40, 10)
    with pytest.raises(ValueError, match="square"):
        sub.laplacian_eigvals()


def test_sum_affinity(rng):
    a, b = _lowrank(rng, n=20, r=2), DenseAffinity(random_symmetric_affinity(rng, 20))
    s = SumAffinity([a, b])
    Z = rng.standard_normal((20, 2))
    assert np.allclose(s.dense(), a.dense() + b.dense())
    assert np.allclose(s.normalized("rw")(Z), normalized_affinity(a.dense() + b.dense(), "rw") @ Z)
    assert s.symmetric and np.allclose(s.numpy().select(()).dense(), s.dense())


@pytest.mark.parametrize("kind", ["sym", "rw", "size", "none"])
def test_numpy_and_torch_agree(rng, kind):
    op = _lowrank(rng, n=30, r=3, batch=(2,))
    top = LowRankAffinity(torch.tensor(op.P), torch.tensor(op.Q), symmetric=True)
    Z = rng.standard_normal((2, 30, 2))
    assert np.allclose(top.normalized(kind)(torch.tensor(Z)).numpy(), op.normalized(kind)(Z))
    assert np.allclose(top.eigvals(kind).numpy(), op.eigvals(kind), atol=1e-12)
    A = op.dense()
    for lap in ("combinatorial", "sym", "rw"):
        assert np.allclose(laplacian(torch.tensor(A), lap).numpy(), laplacian(A, lap))
        for method in ("exact", "bound", "lanczos"):
            assert np.allclose(lambda_max(torch.tensor(A), lap, method).numpy(),
                               lambda_max(A, lap, method), rtol=1e-8)


def test_gradcheck_normalized_products():
    g = torch.Generator().manual_seed(1)
    P = torch.rand(7, 2, dtype=torch.float64, generator=g, requires_grad=True)
    Q = torch.rand(7, 2, dtype=torch.float64, generator=g, requires_grad=True)
    Z = torch.randn(7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    with torch.no_grad():
        P[3] = 0.0  # node 3 keeps a positive degree through Q (isolated nodes: see above)

    def lowrank(p, q, z):
        return LowRankAffinity(p, q, symmetric=True).normalized("sym")(z)

    def dense(a, z):
        return DenseAffinity(a).normalized("sym")(z)

    assert torch.autograd.gradcheck(lowrank, (P, Q, Z))
    A = torch.rand(6, 6, dtype=torch.float64, generator=g)
    A = ((A + A.T) / 2).requires_grad_()
    assert torch.autograd.gradcheck(dense, (A, Z[:6]))
    assert torch.autograd.gradcheck(lambda a, z: DenseAffinity(a).normalized("rw")(z),
                                    (A, Z[:6]))


def test_bad_inputs(rng, monkeypatch):
    with pytest.raises(ValueError, match=r"shape \(\.\.\., N, N\)"):
        laplacian(np.ones((3, 4)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        degrees(np.array([[0.0, np.inf], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        LowRankAffinity(np.full((3, 1), np.nan), np.ones((3, 1)))
    with pytest.raises(ValueError, match="negative degree.*relu_dot"):
        normalized_affinity(np.array([[0.0, -1.0], [-1.0, 0.0]]), "sym")
    with pytest.raises(ValueError, match="negative degree"):
        LowRankAffinity(-np.ones((4, 1)), np.ones((4, 1)), symmetric=True).normalized("sym")
    with pytest.raises(ValueError, match="laplacian: kind must be one of"):
        laplacian(np.eye(2), "foo")
    with pytest.raises(ValueError, match="normalized_affinity: kind must be one of"):
        normalized_affinity(np.eye(2), "l2")
    with pytest.raises(ValueError, match="lambda_max: method must be one of"):
        lambda_max(np.eye(2), "sym", "arnoldi")
    with pytest.raises(ValueError, match="same shape"):
        LowRankAffinity(np.ones((4, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="N = 5 nodes"):
        LowRankAffinity(np.ones((5, 2)), np.ones((5, 2))).matmul(np.ones((4, 1)))
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        degrees("A")
    monkeypatch.setattr(G.S, "DENSE_LIMIT", 10)
    with pytest.raises(ValueError, match="too large for a dense eigendecomposition.*LowRank"):
        DenseAffinity(random_symmetric_affinity(rng, 11)).eigvals("sym")
    # the structured path has no such limit
    assert _lowrank(rng, n=11, r=2).eigvals("sym").shape == (11,)


@pytest.mark.cuda
def test_cuda_matches_cpu(rng):
    op = _lowrank(rng, n=64, r=4, batch=(2,))
    P, Q = (torch.tensor(x, device="cuda") for x in (op.P, op.Q))
    Z = torch.tensor(rng.standard_normal((2, 64, 3)), device="cuda")
    out = LowRankAffinity(P, Q, symmetric=True).normalized("sym")(Z)
    assert out.device.type == "cuda"
    assert np.allclose(out.cpu().numpy(), op.normalized("sym")(Z.cpu().numpy()), atol=1e-12)


def test_concat_keeps_structure_and_equals_stacked_dense():
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    sym = DenseAffinity(torch.eye(4, dtype=torch.float64)[None])
    assert sym.symmetric                                   # caches True
    cases = [
        (sym, [DenseAffinity(r(2, 4, 4))]),                # the cached symmetry is reset
        (LowRankAffinity(r(1, 4, 2), r(1, 4, 2)), [LowRankAffinity(r(2, 4, 2), r(2, 4, 2))]),
        (SoftmaxAffinity(r(1, 4, 3), r(1, 4, 3)), [SoftmaxAffinity(r(1, 4, 3), r(1, 4, 3))]),
        (SumAffinity([LowRankAffinity(r(1, 4, 2), r(1, 4, 2)), DenseAffinity(r(1, 4, 4))]),
         [SumAffinity([LowRankAffinity(r(1, 4, 2), r(1, 4, 2)), DenseAffinity(r(1, 4, 4))])]),
    ]
    for first, rest in cases:
        cat = first.concat(rest)
        assert type(cat) is type(first)
        ref = torch.cat([torch.as_tensor(p.dense()) for p in [first, *rest]], 0)
        torch.testing.assert_close(torch.as_tensor(cat.dense()), ref, rtol=0, atol=1e-15)
    assert not cases[0][0].concat(cases[0][1]).symmetric
    # other settings (a symmetric and a plain low-rank product): stacked densely
    a = LowRankAffinity(r(1, 4, 2), r(1, 4, 2), symmetric=True)
    b = LowRankAffinity(r(1, 4, 2), r(1, 4, 2))
    mixed = a.concat([b])
    assert type(mixed) is DenseAffinity and mixed.batch_shape == (2,)
    torch.testing.assert_close(torch.as_tensor(mixed.dense())[1], torch.as_tensor(b.dense())[0])
