"""Benchmark of the numeric core: structured (low-rank) against dense, Chebyshev against exact.

Run: ``python benchmarks/bench_core.py [--quick]``. Prints, in one run, the time of each path,
the ratio dense / structured, the peak memory (numpy allocations) and the largest difference.

Cases (DESIGN §5): SNL-type affinity ``sym(ReLU(Θ)ReLU(Φ)^T)`` with ``C_s = 32``:
normalized product :math:`\\hat A Z` and the exact spectrum of :math:`\\hat A` at
N = 4096, 16384, 65536 (dense only where it fits: product up to 16384, eigh at 4096), and a
Chebyshev filter of order 10 against exact spectral filtering at N = 4096.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _util import measure, row  # noqa: E402

from graphfilters.chebyshev import chebyshev_coefficients, polynomial_filter  # noqa: E402
from graphfilters.graph import LowRankAffinity, normalized_affinity  # noqa: E402


def dense_normalized_product(P: np.ndarray, Q: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """The official-code path: form M, symmetrize, D^{-1/2} M D^{-1/2}, multiply."""
    M = P @ Q.T
    M = (M + M.T) / 2
    return normalized_affinity(M, "sym") @ Z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    args = parser.parse_args()
    sizes = (1024, 4096) if args.quick else (4096, 16384, 65536)
    dense_product_max, dense_eig_max = 16384, 4096
    cs, c = 32, 32
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, {os.cpu_count()} CPU cores; C_s = {cs}, C = {c}")
    print(row("case", "N", "dense s", "struct s", "ratio", "max |diff|"))
    for n in sizes:
        P = np.maximum(rng.standard_normal((n, cs)), 0)
        Q = np.maximum(rng.standard_normal((n, cs)), 0)
        Z = rng.standard_normal((n, c))
        op = LowRankAffinity(P, Q, symmetric=True)
        fast, t_fast, m_fast = measure(lambda: op.normalized("sym")(Z))  # noqa: B023
        if n <= dense_product_max:
            slow, t_slow, m_slow = measure(lambda: dense_normalized_product(P, Q, Z), repeat=1)  # noqa: B023
            diff = np.abs(slow - fast).max()
            print(row("normalized product", n, f"{t_slow:.4f}", f"{t_fast:.5f}",
                      f"{t_slow / t_fast:.0f}x", f"{diff:.1e}"))
            print(row("  peak MiB", n, f"{m_slow:.0f}", f"{m_fast:.1f}",
                      f"{m_slow / m_fast:.0f}x", ""))
            del slow
        else:
            print(row("normalized product", n, "skipped", f"{t_fast:.5f}", "", ""))
            print(row("  peak MiB", n, f"~{8 * n * n / 2**20 * 3:.0f}*", f"{m_fast:.1f}", "", ""))
        ev, t_ev, m_ev = measure(lambda: op.eigvals("sym"), repeat=1)  # noqa: B023
        if n <= dense_eig_max:
            ref, t_ref, m_ref = measure(
                lambda: np.linalg.eigvalsh(normalized_affinity(op.dense(), "sym")), repeat=1  # noqa: B023
            )
            print(row("exact spectrum (all N)", n, f"{t_ref:.3f}", f"{t_ev:.4f}",
                      f"{t_ref / t_ev:.0f}x", f"{np.abs(ref - ev).max():.1e}"))
            print(row("  peak MiB", n, f"{m_ref:.0f}", f"{m_ev:.1f}", f"{m_ref / m_ev:.0f}x", ""))
        else:
            print(row("exact spectrum (all N)", n, "skipped", f"{t_ev:.4f}", "", ""))
            print(row("  peak MiB", n, "", f"{m_ev:.1f}", "", ""))
    print("  * dense would need about three N x N float64 matrices; not run")

    n = 1024 if args.quick else 4096
    order = 10
    P = np.maximum(rng.standard_normal((n, cs)), 0)
    Q = np.maximum(rng.standard_normal((n, cs)), 0)
    Z = rng.standard_normal((n, c))
    op = LowRankAffinity(P, Q, symmetric=True)
    Ahat = op.normalized("sym")

    def h(lam: np.ndarray) -> np.ndarray:
        return np.exp(-3 * lam)

    coeffs = chebyshev_coefficients(h, order, lambda_max=2.0)

    def cheb() -> np.ndarray:
        # L_sym = I - Ahat, lambda_max = 2: scaled Laplacian is -Ahat
        return polynomial_filter(lambda X: -Ahat(X), Z, coeffs)

    def exact() -> np.ndarray:
        L = np.eye(n) - Ahat.dense()
        lam, U = np.linalg.eigh(L)
        return U @ (h(lam)[:, None] * (U.T @ Z))

    fast, t_fast, m_fast = measure(cheb)
    ref, t_ref, m_ref = measure(exact, repeat=1)
    poly_err = np.abs(polynomial_filter(lambda X: -Ahat(X), Z, coeffs) - ref).max()
    print()
    print(row("chebyshev order 10 vs eigh", n, f"{t_ref:.3f}", f"{t_fast:.5f}",
              f"{t_ref / t_fast:.0f}x", f"{poly_err:.1e}"))
    print(row("  peak MiB", n, f"{m_ref:.0f}", f"{m_fast:.1f}", f"{m_ref / m_fast:.0f}x", ""))
    print("  (|diff| of the Chebyshev row is the approximation error of order 10 for exp(-3λ))")


if __name__ == "__main__":
    main()
