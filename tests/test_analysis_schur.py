"""Products in real Schur coordinates (analysis.stability.schur) against dense float64
products and eigen-solves, and the frozen norms they give against the dense map's SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from analysis import capture
from analysis.stability import FrozenMap, frozen_norms, linearized_stability
from analysis.stability.frozen import SchurKroneckerMap
from analysis.stability.schur import DenseFactor, QuasiTriangular, real_schur, schur_pays


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(1, 9), seed=st.integers(0, 2 ** 16))
def test_quasi_triangular_products_equal_dense_products(n, m, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    S = QuasiTriangular(A, torch.float64)
    assert np.allclose(S.Q @ S.T @ S.Q.T, A, atol=1e-12 * max(1.0, np.abs(A).max()))
    assert np.allclose(np.tril(S.T, -2), 0)
    T = torch.from_numpy(S.T)
    x, z = torch.from_numpy(rng.standard_normal((m, n))), torch.from_numpy(
        rng.standard_normal((n, m)))
    scale = 1e-12 * float(T.abs().max() + 1) * n
    for got, ref in ((S.right(x), x @ T), (S.right_t(x), x @ T.T), (S.left(z), T @ z),
                     (S.left_t(z), T.T @ z)):
        assert float((got - ref).abs().max()) <= scale * float(ref.abs().max() + 1)
    # the eigenvalues read from the diagonal blocks are LAPACK's
    ev, ref = np.sort_complex(S.eigenvalues), np.sort_complex(np.linalg.eigvals(A))
    assert np.abs(ev - ref).max() <= 1e-9 * max(1.0, np.abs(ref).max())


def test_schur_eigenvalues_of_a_rotation_block_and_a_real_one():
    T = np.array([[1.0, 2.0, 5.0], [-2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    _, _, ev = real_schur(T)
    assert np.allclose(np.sort_complex(ev), np.sort_complex([1 + 2j, 1 - 2j, 3]))


def test_float32_products_agree_with_float64_ones():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((30, 30))
    S64 = QuasiTriangular(A, torch.float64)
    S32 = S64.to(torch.float32)
    assert S32.T is S64.T and S64.to(torch.float64) is S64       # no new decomposition
    x = torch.from_numpy(rng.standard_normal((5, 30)))
    ref = x @ torch.from_numpy(S64.T)
    assert float((S32.right(x.float()).double() - ref).abs().max()) < 1e-5 * float(
        ref.abs().max())
    with pytest.raises(ValueError, match="square"):
        QuasiTriangular(np.ones((2, 3)))
    with pytest.raises(ValueError, match="float32 or float64"):
        QuasiTriangular(A, torch.float16)


def test_schur_pays_only_where_the_decomposition_is_cheaper():
    assert schur_pays(768, 197) and schur_pays(197, 768)
    assert not schur_pays(4096, 8)


def _dense_map(M) -> torch.Tensor:
    """The frozen map as a dense (NC x NC) matrix, from its products on the unit basis."""
    n, c = M.shape
    eye = torch.eye(n * c, dtype=torch.float64)
    return torch.stack([M(e.reshape(n, c)).reshape(-1) for e in eye], 1)


def _pre_ln_capture(d=16, heads=2, n=10, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.TransformerEncoderLayer(d, heads, 2 * d, batch_first=True,
                                                   norm_first=True)).double().eval()
    return capture(net, torch.randn(2, n, d, dtype=torch.float64), progress=False)[
        "0.self_attn"]


def test_frozen_norms_in_schur_coordinates_equal_the_dense_norms():
    cap = _pre_ln_capture()
    M = FrozenMap(cap, 1)
    S = M.schur_form()
    assert isinstance(S, SchurKroneckerMap)          # residual, one term, C_s = C: fused
    assert isinstance(S.left, QuasiTriangular) and isinstance(S.right, QuasiTriangular)
    D = _dense_map(M)
    # the map in coordinates is orthogonally similar: same products back in the original
    X = torch.randn(M.shape, dtype=torch.float64)
    assert torch.allclose(S.from_coordinates(S(S.to_coordinates(X))), M(X), atol=1e-12)
    assert torch.allclose(S.from_coordinates(S.adjoint(S.to_coordinates(X))), M.adjoint(X),
                          atol=1e-12)
    ref, P = [], D
    for _ in range(6):
        ref.append(float(torch.linalg.matrix_norm(P, 2)))
        P = P @ D
    # sample 1 alone, and the max over both samples against both dense maps
    D0 = _dense_map(FrozenMap(cap, 0))
    ref0 = [float(torch.linalg.matrix_norm(torch.linalg.matrix_power(D0, k), 2))
            for k in range(1, 7)]
    fz = frozen_norms(cap, 6, tol=1e-11)
    assert fz.converged and fz.schur
    assert np.allclose(fz.growth, np.maximum(ref, ref0), rtol=1e-8)
    # its top vector is returned in the original coordinates (sample 0)
    v = fz.vector.reshape(-1)
    assert float(torch.linalg.vector_norm(D0 @ v)) == pytest.approx(ref0[0], rel=1e-8)
    # the radius from the same decomposition is the spectral radius of the dense map
    st_ = linearized_stability(cap, n_max=3, tol=1e-11, samples=1)
    assert "real Schur coordinates" in st_.how
    assert st_.radius == pytest.approx(float(torch.linalg.eigvals(D0).abs().max()), rel=1e-9)


def test_a_factor_that_does_not_pay_stays_dense():
    cap = _pre_ln_capture(d=8, heads=2, n=64)
    M = FrozenMap(cap, 0)
    assert schur_pays(8, 64) and not schur_pays(64, 8)
    S = M.schur_form()
    assert isinstance(S.left, DenseFactor) and isinstance(S.right, QuasiTriangular)
    X = torch.randn(M.shape, dtype=torch.float64)
    assert torch.allclose(S.from_coordinates(S(S.to_coordinates(X))), M(X), atol=1e-12)
