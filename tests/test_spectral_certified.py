"""Certified spectra: matrix-free eigenvalues against dense solvers, with their residuals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.spectra import spectrum
from graphfilters.criss_cross import criss_cross
from graphfilters.graph import DenseAffinity, LowRankAffinity, SoftmaxAffinity
from graphfilters.spectral import cached_extremes, cached_matrix, dense_eigvals, krylov_extremes


def _top(ev, k):
    ev = np.asarray(ev)
    return ev[np.argsort(-np.abs(ev), kind="stable")][:k]


def _close_sets(a, b, atol):
    """Every value of ``a`` has a partner in ``b`` within ``atol``."""
    return all(np.abs(b - x).min() <= atol for x in a)


def _cases():
    rng = np.random.default_rng(0)
    A = rng.random((400, 400))
    q, k = torch.randn(2, 400, 8, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1)).unbind(0)
    P, Q = np.abs(rng.standard_normal((400, 5))), np.abs(rng.standard_normal((400, 5)))
    cq = torch.randn(1, 400, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return {
        "symmetric-dense": (DenseAffinity((A + A.T) / 2), "sym"),
        "nonsymmetric-dense": (DenseAffinity(A), "rw"),
        "low-rank-nonsym": (LowRankAffinity(P, Q), "rw"),
        "softmax": (SoftmaxAffinity(q / 2, k / 2), "rw"),
        "criss-cross": (criss_cross(cq, cq.flip(1), (20, 20)), "rw"),
    }


@pytest.mark.parametrize("name", ["symmetric-dense", "nonsymmetric-dense", "low-rank-nonsym",
                                  "softmax", "criss-cross"])
@pytest.mark.parametrize("method", ["arnoldi", "block_krylov"])
def test_matrix_free_extremes_are_certified_against_dense(name, method):
    aff, kind = _cases()[name]
    sym = aff.operator_symmetric(kind)
    if method == "arnoldi" and sym:
        method = "lanczos"
    dense = spectrum(aff, "normalized", kind, method="eigh" if sym else "eig",
                     progress=False).eigenvalues[0]
    got = spectrum(aff, "normalized", kind, method=method, k=4, tol=1e-6, progress=False)
    assert got.residuals is not None and got.converged is not None
    res, conv, ev = got.residuals[0], got.converged[0], got.eigenvalues[0]
    assert len(res) == len(ev) and np.all(res >= 0)
    assert got.status in ("certified", "uncertified")
    # every certified value is an eigenvalue (within a multiple of its residual)
    for value, r, ok in zip(ev, res, conv):
        if ok:
            assert np.abs(dense - value).min() <= max(100 * r, 1e-10), (name, value, r)
    # the top-4 by modulus are certified and equal the dense ones to 1e-6
    top = _top(ev, 4)                 # moduli: a conjugate pair may straddle the 4th place
    assert np.allclose(np.abs(top), np.abs(_top(dense, 4)), atol=1e-6), (name, top)
    assert _close_sets(top, dense, 1e-6), (name, top)
    assert all(conv[np.argsort(-np.abs(ev), kind="stable")[:4]]), (name, res)


def test_uncertified_values_are_flagged_not_dropped():
    A = np.random.default_rng(3).random((500, 500))
    aff = DenseAffinity(A)
    with pytest.warns(UserWarning, match="not certified"):
        s = spectrum(aff, "normalized", "rw", method="block_krylov", k=4, n_blocks=2,
                     tol=1e-14, progress=False)
    assert s.status == "uncertified" and "NOT certified" in s.reason
    assert s.n_uncertified == int((~s.converged[0]).sum()) > 0


def test_float32_stored_copy_is_certified_by_float64_products():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 600, 8, dtype=torch.float64, generator=g).unbind(0)
    aff = SoftmaxAffinity(q / 2, k / 2)
    M = cached_matrix(lambda s, e: aff.rows(s, e).numpy(), 600, cache_bytes=4 * 600 * 600)
    assert M.dtype == np.float32
    res = cached_extremes(M, 4, symmetric=False, which=("LM",),
                          certify=lambda X: aff.matmul(torch.as_tensor(X)).numpy(), tol=1e-6)
    dense = np.linalg.eigvals(aff.dense().numpy())
    assert res.certified and res.residuals.max() < 1e-6
    assert np.allclose(np.abs(_top(res.values, 4)), np.abs(_top(dense, 4)), atol=1e-6)
    assert _close_sets(res.values, dense, 1e-6)


def test_krylov_symmetric_both_ends():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((300, 300))
    A = torch.as_tensor((A + A.T) / 2)
    out = krylov_extremes(lambda X: A @ X, 300, 3, symmetric=True, which=("LA", "SA"),
                          tol=1e-8)
    ev = np.linalg.eigvalsh(A.numpy())
    assert out.certified
    assert np.allclose(np.sort(out.values), np.r_[ev[:3], ev[-3:]], atol=1e-7)


def test_auto_is_certified_and_the_status_reaches_the_reason():
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 700, 16, dtype=torch.float64, generator=g).unbind(0)
    s = spectrum(SoftmaxAffinity(q / 2, k / 2), "normalized", "rw", dense_limit=100, k=4,
                 progress=False)
    assert s.method == "arnoldi" and s.status == "certified" and "certified" in s.reason
    assert s.max_residual() <= 1e-6


def test_uncertified_status_reaches_the_figure():
    import matplotlib

    matplotlib.use("Agg")
    from analysis.plots import plot_spectrum

    A = np.random.default_rng(3).random((500, 500))
    with pytest.warns(UserWarning, match="not certified"):
        s = spectrum(DenseAffinity(A), "normalized", "rw", method="block_krylov", k=4,
                     n_blocks=2, tol=1e-14, progress=False)
    fig, ax = plot_spectrum(s)
    assert "NOT certified" in ax.get_title()
    good = spectrum(DenseAffinity(A), "normalized", "rw", method="arnoldi", k=4,
                    progress=False)
    assert "NOT certified" not in plot_spectrum(good)[1].get_title()


def test_dense_eigvals_of_an_oversmoothed_affinity():
    # the row-normalized affinity of notebook 06's deepest layer: every row equal (rank 1,
    # 15 zero eigenvalues), entries 1/16 to 1e-13. The MKL of torch's x86 wheels reports that
    # geev did not converge on it; the eigenvalues are 1 and fifteen zeros
    values = [float.fromhex(h) for h in ("0x1.fffffffffa636p-5", "0x1.ffffffffff4d4p-5",
                                         "0x1.0000000000b37p-4")]
    row = torch.tensor([values[i] for i in (1, 1, 2, 2, 1, 2, 2, 0, 0, 2, 2, 2, 2, 1, 2, 2)],
                       dtype=torch.float64)
    M = row.expand(16, 16).contiguous()
    ev = dense_eigvals(M, False)
    assert isinstance(ev, torch.Tensor) and ev.dtype == torch.complex128
    mag = ev.abs().sort().values
    assert abs(complex(ev[ev.abs().argmax()]) - 1) < 1e-12 and float(mag[:-1].max()) < 1e-12


def test_dense_eigvals_falls_back_when_torch_does_not_converge(monkeypatch):
    A = torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)

    def fail(M):
        raise torch.linalg.LinAlgError("The algorithm failed to converge (error code: 15)")

    monkeypatch.setattr(torch.linalg, "eigvals", fail)
    ev = dense_eigvals(A, False)
    assert isinstance(ev, torch.Tensor) and ev.dtype == torch.complex128
    assert sorted(ev.real.tolist()) == [2.0, 3.0]
