"""N x M affinities as bipartite graphs (analysis.bipartite), against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import analyze
from analysis.bipartite import (
    DENSE_LIMIT,
    bipartite_energy,
    bipartite_response,
    bipartite_spectrum,
)
from analysis.capture import Capture
from graphfilters.graph import DenseAffinity, SoftmaxAffinity


def _softmax(s: int, n: int, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(s, n, m, generator=g, dtype=torch.float64), -1)


def _bipartite_laplacian_eigs(A: np.ndarray) -> np.ndarray:
    """Eigenvalues of I - D^-1/2 B D^-1/2 of the (N + M)-node bipartite graph, formed."""
    n, m = A.shape
    B = np.zeros((n + m, n + m))
    B[:n, n:], B[n:, :n] = A, A.T
    d = B.sum(1)
    L = np.eye(n + m) - B / np.sqrt(np.outer(d, d))
    return np.linalg.eigvalsh(L)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 9), m=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_singular_values_are_the_bipartite_laplacian_and_query_graph_spectra(n, m, seed):
    A = _softmax(1, n, m, seed)
    sp = bipartite_spectrum(A)
    sv = sp.singular_values[0]
    assert sp.operator == "normalized_biadjacency"
    assert sv[0] == pytest.approx(1.0, abs=1e-12)
    assert np.all(sv >= -1e-12) and np.all(sv <= 1 + 1e-12)
    An = A[0].numpy()
    # the lower half of the bipartite Laplacian's spectrum is 1 - sigma (padded by 1's)
    lap = _bipartite_laplacian_eigs(An)
    expect = np.sort(np.concatenate([1 - sv, 1 + sv, np.ones(abs(n - m))]))
    np.testing.assert_allclose(lap, expect, atol=1e-10)
    # sigma^2 are the eigenvalues of the query graph A D_k^-1 A^T (row-stochastic here)
    P = An @ np.diag(1 / An.sum(0)) @ An.T
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-12)
    ev = np.sort(np.linalg.eigvals(P).real)[::-1][: len(sv)]
    np.testing.assert_allclose(ev, sv**2, atol=1e-10)


def test_metrics_and_raw_norm():
    A = _softmax(3, 12, 4, seed=1)
    sp = bipartite_spectrum(DenseAffinity(A).normalized("none"))
    np.testing.assert_allclose(sp.raw_singular_max, torch.linalg.matrix_norm(A, 2).numpy())
    np.testing.assert_allclose(sp.row_sum_deviation, 0.0, atol=1e-12)
    gap = [1 - s[1] / s[0] for s in sp.singular_values]
    np.testing.assert_allclose(sp.spectral_gap, gap)
    summ = sp.summary()
    assert summ["singular_max"] == pytest.approx(float(sp.raw_singular_max.max()))
    assert 1.0 <= summ["effective_rank"] <= 4.0


def test_negative_entries_are_not_a_graph():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(1, 6, 3, generator=g, dtype=torch.float64) / 3
    sp = bipartite_spectrum(A)
    assert sp.operator == "affinity"
    np.testing.assert_allclose(sp.singular_values[0], torch.linalg.svdvals(A[0]).numpy())
    assert "not a graph" in sp.describe()


def test_energy_is_conserved_and_constant_keys_are_low():
    A = _softmax(2, 10, 4, seed=2)
    sp = bipartite_spectrum(A, vectors=True)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    f = torch.randn(2, 10, 3, generator=g, dtype=torch.float64)
    for sig, side in ((z, "keys"), (f, "queries")):
        e = bipartite_energy(sp, sig, side)
        for en, s in zip(e.energy, sig):
            assert en.sum() == pytest.approx(float((s * s).sum()), rel=1e-12)
        assert e.band_fractions().sum() == pytest.approx(1.0)
    # sqrt(d_k) on the keys is the top right singular vector: lambda = 0
    top = A.sum(-2).sqrt()[..., None]
    e = bipartite_energy(sp, top, "keys")
    for lam, en in zip(e.frequencies, e.energy):
        assert en[0] == pytest.approx(float(en.sum()), rel=1e-10) and lam[0] == pytest.approx(0)
    with pytest.raises(ValueError, match="signal must have shape"):
        bipartite_energy(sp, f, "keys")
    with pytest.raises(ValueError, match="side must be"):
        bipartite_energy(sp, z, "values")
    with pytest.raises(ValueError, match="no singular vectors"):
        bipartite_energy(bipartite_spectrum(A), z, "keys")


def test_response_gains_and_output_energy():
    A = _softmax(1, 9, 3, seed=4)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1, 3, 4, generator=g, dtype=torch.float64)
    W1 = torch.randn(4, 2, generator=g, dtype=torch.float64)
    cap = Capture("b", "block", "toy", DenseAffinity(A), "none", z=z,
                  weights=[torch.zeros(4, 2, dtype=torch.float64), W1])
    resp = bipartite_response(cap)
    sv = bipartite_spectrum(A).singular_values[0]
    s1 = float(torch.linalg.svdvals(W1)[0])
    np.testing.assert_allclose(resp.eigenvalues[0], 1 - sv, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(resp.gains_at_eigenvalues[0], sv * s1, rtol=1e-10)
    out = (A @ z) @ W1
    assert resp.energy_out.energy[0].sum() == pytest.approx(float((out * out).sum()))
    bad = Capture("b", "block", "toy", DenseAffinity(A), "none", z=z, weights=[W1[:, :2] * 0 + 1,
                                                                                 W1])
    with pytest.raises(ValueError, match="order-1 filter"):
        bipartite_response(bad)


def test_bad_input_is_named_before_allocation():
    big = DENSE_LIMIT + 1
    aff = SoftmaxAffinity(torch.zeros(1, big, 1), torch.zeros(1, big, 1))
    with pytest.raises(ValueError, match="too large for the exact bipartite SVD"):
        bipartite_spectrum(aff)
    with pytest.raises(ValueError, match="non-finite"):
        bipartite_spectrum(torch.full((1, 3, 2), float("nan")))
    with pytest.raises(TypeError, match="affinity must be"):
        bipartite_spectrum([[1.0, 0.0]])


class _SubSampledNL(torch.nn.Module):
    """A non-local block with max-pooled keys and values, written from scratch."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.theta = torch.nn.Conv2d(c, 2, 1)
        self.phi = torch.nn.Sequential(torch.nn.Conv2d(c, 2, 1), torch.nn.MaxPool2d(2))
        self.g = torch.nn.Sequential(torch.nn.Conv2d(c, 2, 1), torch.nn.MaxPool2d(2))
        self.out = torch.nn.Conv2d(2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)
        k = self.phi(x).flatten(2)
        v = self.g(x).flatten(2).transpose(1, 2)
        a = torch.softmax(q @ k, -1)
        y = (a @ v).transpose(1, 2).reshape(b, 2, h, w)
        return x + self.out(y)


def test_analyze_reads_an_unknown_sub_sampled_block_as_bipartite():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), _SubSampledNL()).eval()
    x = torch.randn(2, 3, 6, 6)
    table = analyze(model, x, progress=False)
    (row,) = list(table)
    assert row.status == "ok", row.reason
    assert row.source == "observed" and row.spectrum_method == "bipartite-svd"
    assert "36 x 9" in row.notes["bipartite"]
    assert "bipartite graph" in row.notes["n/a"]
    assert row.singular_max > 1.0 and 0 < row.spectral_gap <= 1
    assert np.isfinite(row.jacobian_full) and np.isfinite(row.jacobian_frozen)
