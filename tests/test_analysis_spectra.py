"""Spectra and affinity metrics: structured = dense, matrix-free extremes, densities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import affinity_metrics, capture, spectral_density, spectrum
from analysis.spectra import choose_method, effective_rank, frobenius_stats, project_simplex
from graphfilters.blocks import make_block
from graphfilters.graph import DenseAffinity, LowRankAffinity, SoftmaxAffinity


def test_softmax_cpu_matmul_does_not_form_the_matrix(monkeypatch):
    """Core fix: on the CPU SoftmaxAffinity.matmul uses row chunks, not SDPA (which forms
    the N x M matrix there)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 70, 3, generator=g), torch.randn(2, 70, 3, generator=g)
    z = torch.randn(2, 70, 4, generator=g)
    aff = SoftmaxAffinity(q, k, scale=0.5, chunk_size=16)
    expected = aff.dense() @ z

    def boom(*args, **kwargs):
        raise AssertionError("SDPA called on the CPU")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", boom)
    out = aff.matmul(z)
    assert torch.allclose(out, expected, atol=1e-6)
    assert np.allclose(SoftmaxAffinity(q.numpy(), k.numpy(), 0.5).matmul(z.numpy()),
                       expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="N = 70"):
        aff.matmul(torch.zeros(2, 71, 1))



def _lowrank(rng, n=120, r=3, batch=2, symmetric=True):
    P, Q = rng.random((batch, n, r)), rng.random((batch, n, r))
    return LowRankAffinity(P, Q, symmetric=symmetric)


def _random_block(name: str, c: int = 8, seed: int = 0, **kw):
    torch.manual_seed(seed)
    block = make_block(name, c, **kw)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.4)
    return block.eval()


@pytest.mark.parametrize("operator,kind", [
    ("normalized", "sym"), ("normalized", "rw"), ("affinity", "none"), ("laplacian", "sym"),
    ("laplacian", "rw"),
])
def test_structured_and_dense_spectra_agree(rng, operator, kind):
    aff = _lowrank(rng)
    dense = DenseAffinity(aff.dense())
    s = spectrum(aff, operator, kind, progress=False)
    d = spectrum(dense, operator, kind, method="eig", progress=False)
    assert s.method == "structured" and "low-rank" in s.reason and s.complete
    for a, b in zip(s.eigenvalues, d.eigenvalues):
        key = lambda v: np.lexsort((np.round(np.imag(v), 8), np.round(np.real(v), 8)))  # noqa: E731
        a, b = np.asarray(a, complex), np.asarray(b, complex)
        assert np.abs(a[key(a)] - b[key(b)]).max() < 1e-9


def test_nonsymmetric_lowrank_structured_matches_dense(rng):
    aff = _lowrank(rng, symmetric=False)
    s = spectrum(aff, "normalized", "rw", progress=False).eigenvalues[0]
    d = np.linalg.eigvals(aff.normalized("rw").dense()[0])
    top = lambda v: np.sort(np.abs(v))[-3:]  # noqa: E731
    assert np.allclose(top(s), top(d), atol=1e-10)


def test_snl_laplacian_is_real_in_0_2_and_nl_softmax_is_complex():
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(1))
    net = torch.nn.ModuleDict({"snl": _random_block("snl"), "nl": _random_block("nl")})
    caps_snl = capture(net["snl"], x, progress=False)
    caps_nl = capture(net["nl"], x, progress=False)
    s = spectrum(caps_snl["(root)"], "laplacian", "sym", progress=False)
    assert s.method == "structured" and not s.is_complex
    ev = s.all()
    assert np.isrealobj(ev) and ev.min() > -1e-10 and ev.max() < 2 + 1e-10
    n = spectrum(caps_nl["(root)"], "normalized", "rw", progress=False)
    assert n.method == "eig" and n.is_complex
    assert affinity_metrics(caps_nl["(root)"], progress=False).summary()["complex_share"] > 0


def test_matrix_free_extremes_match_dense(rng):
    A = rng.random((300, 300))
    sym = DenseAffinity((A + A.T) / 2)
    lz = spectrum(sym, "laplacian", "sym", method="lanczos", k=3, progress=False)
    ex = spectrum(sym, "laplacian", "sym", method="eigh", progress=False).eigenvalues[0]
    assert np.allclose(lz.eigenvalues[0][[0, -1]], ex[[0, -1]], atol=1e-8)
    assert lz.method == "lanczos" and not lz.complete
    q, k = torch.randn(2, 300, 4, dtype=torch.float64).unbind(0)
    soft = SoftmaxAffinity(q, k)
    dense = np.sort(np.abs(spectrum(soft, method="eig", progress=False).eigenvalues[0]))[::-1]
    for method in ("arnoldi", "block_krylov"):
        got = spectrum(soft, "normalized", "rw", method=method, k=4, progress=False)
        top = np.sort(np.abs(got.eigenvalues[0]))[::-1]
        assert abs(top[0] - 1) < 1e-8, method          # Perron eigenvalue of a stochastic A
        assert abs(top[1] - dense[1]) < 1e-3, method
    # lanczos refuses non-symmetric operators with a clear message
    with pytest.raises(ValueError, match="arnoldi"):
        spectrum(soft, method="lanczos", progress=False)


def test_auto_records_method_and_reason():
    x = np.zeros((5000, 2))
    assert choose_method(SoftmaxAffinity(x, x), "normalized", "rw")[0] == "arnoldi"
    big = LowRankAffinity(np.ones((5000, 2)), np.ones((5000, 2)), symmetric=True)
    method, reason = choose_method(big, "laplacian", "sym")
    assert method == "structured" and "rank" in reason
    small = DenseAffinity(np.ones((10, 10)))
    assert choose_method(small, "normalized", "sym")[0] == "eigh"
    assert choose_method(DenseAffinity(np.triu(np.ones((10, 10)))), "normalized", "rw")[0] == "eig"
    with pytest.raises(ValueError, match="spectrum: method must be one of"):
        spectrum(small, method="magic")
    with pytest.raises(ValueError, match="eig"):
        spectrum(DenseAffinity(np.triu(np.ones((10, 10)))), "normalized", "rw", method="eigh")


def test_metrics_structured_and_tiled_match_dense(rng):
    lr = _lowrank(rng, symmetric=False)
    q, k = rng.standard_normal((2, 2, 90, 3))
    for aff, norm in ((lr, "sym"), (lr, "rw"), (lr.symmetrized(), "sym"),
                      (SoftmaxAffinity(q, k), "rw")):
        a = affinity_metrics(aff, norm, tile=32, progress=False)
        b = affinity_metrics(DenseAffinity(aff.dense()), norm, progress=False)
        for name, va in a.summary().items():
            assert np.isclose(va, b.summary()[name], rtol=1e-7, atol=1e-9, equal_nan=True), (
                norm, name)
    assert "Gram" in affinity_metrics(lr, "sym", progress=False).notes["asymmetry"]
    assert "tiled" in affinity_metrics(SoftmaxAffinity(q, k), tile=32,
                                       progress=False).notes["asymmetry"]


def test_rank_collapse_and_effective_rank_definitions():
    n = 20
    pi = np.random.default_rng(0).random(n)
    pi /= pi.sum()
    collapsed = DenseAffinity(np.ones((n, 1)) * pi[None, :])
    m = affinity_metrics(collapsed, "none", progress=False)
    # the closed form subtracts squared norms: accurate to ~sqrt(machine epsilon)
    assert m.rank_collapse[0] < 1e-6 and np.isclose(m.effective_rank[0], 1.0)
    perm = DenseAffinity(np.eye(n)[np.random.default_rng(1).permutation(n)])
    m = affinity_metrics(perm, "none", progress=False)
    assert np.isclose(m.rank_collapse[0], np.sqrt(1 - 1 / n))
    assert np.isclose(m.effective_rank[0], n) and m.row_sum_deviation[0] < 1e-12
    assert effective_rank([2.0, 0.0]) == 1.0
    scaled = DenseAffinity(3.0 * np.eye(n)[np.random.default_rng(1).permutation(n)])
    m = affinity_metrics(scaled, "none", progress=False)      # rows sum to 3: not defined
    assert np.isnan(m.rank_collapse[0]) and "not row-stochastic" in m.notes["rank_collapse"]
    v = torch.tensor([[0.2, -0.5, 2.0], [0.3, 0.3, 0.4]])
    p = project_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(2)) and (p >= 0).all()
    assert torch.allclose(p[1], v[1])


def test_frobenius_stats_lowrank_without_dense(rng):
    lr = _lowrank(rng, batch=1, symmetric=False).select(0)
    op = lr.normalized("rw")
    st = frobenius_stats(op)
    M = op.dense()
    assert np.isclose(float(st["fro2"]), (M * M).sum())
    assert np.isclose(float(st["inner"]), (M * M.T).sum())
    assert np.allclose(st["colsum"].numpy(), M.sum(0))


@pytest.mark.parametrize("method", ["kpm", "slq"])
def test_spectral_density_matches_exact_histogram(rng, method):
    n = 400                                      # a weighted ring: a spread spectrum
    A = np.zeros((n, n))
    for shift in (1, 2):
        w = 0.5 + rng.random(n)
        A[np.arange(n), (np.arange(n) + shift) % n] = w
    aff = DenseAffinity(A + A.T)
    exact = spectrum(aff, "normalized", "sym", progress=False).eigenvalues[0]
    d = spectral_density(aff, "normalized", "sym", method=method, n_vectors=16, order=80,
                         n_steps=30, grid=400, progress=False)
    assert d.bounds == (-1.0, 1.0)
    cdf = np.cumsum(d.density[0]) * (d.grid[1] - d.grid[0])
    for q in (0.25, 0.5, 0.75):
        at = np.quantile(exact, q)
        assert abs(np.interp(at, d.grid, cdf) - (exact <= at).mean()) < 0.06
    with pytest.raises(ValueError, match="symmetric"):
        spectral_density(DenseAffinity(np.triu(A)), "normalized", "rw")


def test_effective_rank_with_underflowing_shares_is_finite():
    import warnings

    from analysis.spectra import effective_rank

    with warnings.catch_warnings():
        warnings.simplefilter("error")             # no log(0) on a diverged model's spectrum
        assert effective_rank([1e300, 1e-30, 1.0]) == 1.0
    assert np.isnan(effective_rank([np.inf, 1.0]))


def test_spectral_gap_is_na_where_the_operator_is_no_graph():
    """A dot-product kernel divided by N (negative entries, no eigenvalue 1) gets no gap, with
    the reason; a row-stochastic affinity keeps its gap, equal to the exact eigenvalues'."""
    import numpy as np
    import torch

    from analysis.spectra import affinity_metrics
    from graphfilters.graph import DenseAffinity

    torch.manual_seed(0)
    m = affinity_metrics(DenseAffinity(torch.randn(2, 6, 6, dtype=torch.float64) / 6), "none",
                         progress=False)
    assert np.isnan(m.spectral_gap).all() and "no zero eigenvalue" in m.notes["spectral_gap"]
    W = torch.rand(1, 6, 6, dtype=torch.float64)
    m = affinity_metrics(DenseAffinity(W), "rw", progress=False)
    lam = np.sort((1 - np.linalg.eigvals((W[0] / W[0].sum(1, keepdim=True)).numpy())).real)
    assert m.spectral_gap[0] == pytest.approx(lam[1] - lam[0], abs=1e-10)
