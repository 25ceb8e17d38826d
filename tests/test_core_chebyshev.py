"""Chebyshev polynomials, coefficients and filters against exact references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from numpy.polynomial import chebyshev as npcheb

from graphfilters.chebyshev import (
    chebyshev_basis,
    chebyshev_coefficients,
    chebyshev_filter,
    chebyshev_T,
    jackson_damping,
    polynomial_filter,
    polynomial_terms,
    spectral_filter,
)
from graphfilters.graph import laplacian, normalized_affinity

from .conftest import random_symmetric_affinity


@given(st.integers(0, 12), st.floats(-1, 1))
def test_T_k_of_cos_is_cos_k(k, x):
    theta = np.arccos(x)
    assert abs(chebyshev_T(k, x) - np.cos(k * theta)) < 1e-12


@given(st.integers(0, 8), st.integers(0, 8), st.floats(-2, 2))
def test_product_identity(m, n, x):
    # T_m T_n = (T_{m+n} + T_{|m-n|}) / 2, for any real x
    lhs = chebyshev_T(m, x) * chebyshev_T(n, x)
    rhs = (chebyshev_T(m + n, x) + chebyshev_T(abs(m - n), x)) / 2
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs))


@given(st.integers(0, 10), st.floats(-1.5, 1.5))
def test_parity_sign_absorption(k, x):
    assert abs(chebyshev_T(k, -x) - (-1) ** k * chebyshev_T(k, x)) < 1e-9


def test_basis_matches_numpy():
    x = np.linspace(-1.3, 1.3, 17)
    basis = chebyshev_basis(6, x)
    for k in range(7):
        assert np.allclose(basis[..., k], npcheb.chebval(x, np.eye(7)[k]), atol=1e-12)


@pytest.mark.parametrize("order", [0, 1, 3, 8, 15])
@pytest.mark.parametrize("lambda_max", [2.0, 7.5])
def test_coefficients_equal_numpy_chebinterpolate(order, lambda_max):
    def h(lam):
        return np.exp(-lam) + np.sin(lam)

    c = chebyshev_coefficients(h, order, lambda_max)
    ref = npcheb.chebinterpolate(lambda x: h(lambda_max / 2 * (x + 1)), order)
    assert np.allclose(c, ref, atol=1e-13)


def test_coefficients_of_a_polynomial_are_exact_and_more_points_change_nothing():
    # a degree-2 polynomial is reproduced exactly; higher coefficients vanish
    c = chebyshev_coefficients(lambda lam: 3 * lam**2 - lam + 2, order=4, n_points=40)
    x = np.linspace(0, 2, 11)
    approx = npcheb.chebval(x - 1, c)
    assert np.allclose(approx, 3 * x**2 - x + 2, atol=1e-12)
    assert np.allclose(c[3:], 0, atol=1e-13)


def test_jackson_damping():
    g = jackson_damping(10)
    assert g[0] == pytest.approx(1.0)
    assert np.all(np.diff(g) < 0) and np.all(g > 0)
    c = chebyshev_coefficients(np.sign, 10, lambda_max=2, damping="jackson")  # not smooth
    assert np.allclose(c, chebyshev_coefficients(np.sign, 10, 2) * g)


def _exact(L, Z, h):
    lam, U = np.linalg.eigh(L)
    return U @ (h(lam)[:, None] * (U.T @ Z))


@pytest.mark.parametrize("h", [lambda lam: np.exp(-2 * lam), lambda lam: 1 / (1 + lam)])
def test_chebyshev_filter_converges_to_exact_spectral_filter(rng, h):
    A = random_symmetric_affinity(rng, 60, density=0.3)
    L = laplacian(A, "sym")
    Z = rng.standard_normal((60, 3))
    exact = _exact(L, Z, h)
    assert np.allclose(spectral_filter(L, Z, h), exact, atol=1e-12)
    errors = []
    for order in (1, 2, 4, 8, 16, 24):
        c = chebyshev_coefficients(h, order, lambda_max=2.0)
        errors.append(np.abs(chebyshev_filter(L, Z, c, lambda_max=2.0) - exact).max())
    # Decreasing until both reach the float64 floor (rounding decides the order below it).
    floor = 1e-13
    assert all(b < a or max(a, b) < floor for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-9


def test_combinatorial_laplacian_with_exact_lambda_max(rng):
    A = random_symmetric_affinity(rng, 40)
    L = laplacian(A, "combinatorial")
    lmax = np.linalg.eigvalsh(L).max()
    Z = rng.standard_normal((40, 2))

    def h(lam):
        return np.exp(-lam / lmax)

    c = chebyshev_coefficients(h, 20, lambda_max=lmax)
    assert np.abs(chebyshev_filter(L, Z, c, lambda_max=lmax) - _exact(L, Z, h)).max() < 1e-10


def test_terms_equal_matrix_polynomials(rng):
    A = random_symmetric_affinity(rng, 20)
    S = normalized_affinity(A, "sym")
    Z = rng.standard_normal((20, 2))
    mu, U = np.linalg.eigh(S)
    for k, term in enumerate(polynomial_terms(lambda X: S @ X, Z, 5)):
        Tk = U @ np.diag(npcheb.chebval(mu, np.eye(6)[k])) @ U.T
        assert np.allclose(term, Tk @ Z, atol=1e-12)


def test_laplacian_form_equals_affinity_form_with_absorbed_signs(rng):
    # lambda_max = 2: T_k(L_sym - I) = T_k(-Ahat) = (-1)^k T_k(Ahat)
    A = random_symmetric_affinity(rng, 25)
    L, S = laplacian(A, "sym"), normalized_affinity(A, "sym")
    Z = rng.standard_normal((25, 3))
    W = rng.standard_normal((4, 3, 5))
    lhs = chebyshev_filter(L, Z, W, lambda_max=2.0)
    rhs = polynomial_filter(lambda X: S @ X, Z, [(-1) ** k * W[k] for k in range(4)])
    assert lhs.shape == (25, 5)
    assert np.allclose(lhs, rhs, atol=1e-12)


def test_stable_basis_equals_chebyshev_on_a_projection(rng):
    X = rng.standard_normal((15, 3))
    S = X @ np.linalg.solve(X.T @ X, X.T)  # orthogonal projection: S^2 = S
    Z = rng.standard_normal((15, 2))
    exact = polynomial_terms(lambda V: S @ V, Z, 6)
    stable = polynomial_terms(lambda V: S @ V, Z, 6, basis="stable")
    for a, b in zip(exact, stable):
        assert np.allclose(a, b, atol=1e-10)
    assert np.allclose(stable[2], 2 * S @ Z - Z)


def test_dropped_terms_and_scalar_weights(rng):
    S = normalized_affinity(random_symmetric_affinity(rng, 10), "rw")
    Z = rng.standard_normal((10, 2))
    W = rng.standard_normal((2, 4))
    assert np.allclose(polynomial_filter(lambda X: S @ X, Z, [None, W]), S @ Z @ W)
    assert np.allclose(polynomial_filter(lambda X: S @ X, Z, np.array([2.0, -1.0])),
                       2 * Z - S @ Z)


def test_torch_equals_numpy_batched(rng):
    A = np.stack([random_symmetric_affinity(rng, 12) for _ in range(3)])
    L = laplacian(A, "sym")
    Z = rng.standard_normal((3, 12, 2))
    W = rng.standard_normal((3, 2, 2))
    ref = chebyshev_filter(L, Z, W)
    out = chebyshev_filter(torch.tensor(L), torch.tensor(Z), torch.tensor(W))
    assert isinstance(out, torch.Tensor)
    assert np.allclose(out.numpy(), ref, atol=1e-12)
    for b in range(3):  # batch equivalence
        assert np.allclose(chebyshev_filter(L[b], Z[b], W), ref[b], atol=1e-12)


def test_gradcheck_polynomial_filter():
    g = torch.Generator().manual_seed(0)
    S = torch.rand(6, 6, generator=g, dtype=torch.float64)
    S = (S + S.T) / 2
    Z = torch.randn(6, 2, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(3, 2, 2, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, w: polynomial_filter(lambda X: S @ X, z, w), (Z, W))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: chebyshev_coefficients(np.exp, -1), "order must be an integer in"),
        (lambda: chebyshev_coefficients(np.exp, 3, lambda_max=0), "lambda_max"),
        (lambda: chebyshev_coefficients(np.exp, 3, n_points=2), "n_points"),
        (lambda: chebyshev_coefficients(lambda x: np.where(x > 1, 0.0, np.inf), 3), "NaN or Inf"),
        (lambda: chebyshev_coefficients(lambda x: 1.0, 3), "vectorized"),
        (lambda: chebyshev_coefficients(np.exp, 3, damping="lanczos"), "damping"),
        (lambda: polynomial_terms(lambda x: x, np.ones((2, 1)), 2, basis="x"), "basis"),
        (lambda: chebyshev_filter(np.ones((3, 2)), np.ones((3, 1)), [1.0]), r"\(\.\.\., N, N\)"),
        (lambda: chebyshev_filter(np.eye(3), np.ones((4, 1)), [1.0]), "N = 3"),
        (lambda: chebyshev_filter(np.eye(3) * np.nan, np.ones((3, 1)), [1.0]), "NaN or Inf"),
        (lambda: polynomial_filter(lambda x: x, np.ones((2, 1)), []), "at least one"),
        (lambda: polynomial_filter(lambda x: x, np.ones((2, 1)), np.ones((2, 2))), "shape"),
        (lambda: spectral_filter(np.triu(np.ones((3, 3))), np.ones((3, 1)), np.exp), "symmetric"),
    ],
)
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_errors():
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        chebyshev_basis(2, "x")
    with pytest.raises(TypeError, match="real-valued"):
        chebyshev_basis(2, np.array([1j]))
