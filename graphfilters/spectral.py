r"""The spectral solvers of the toolkit, in one place, each eigenvalue with its residual.

Every eigen-solve of :mod:`graphfilters.graph` (``lambda_max``) and of
:mod:`analysis.spectra` (``spectrum``) goes through this module:

- :func:`dense_eigvals`: LAPACK on a dense matrix, refused (before anything is allocated)
  above :data:`DENSE_LIMIT` with the structured alternative named;
- :func:`arpack_extremes`: scipy ``eigsh`` (symmetric, both ends) / ``eigs`` (general) on a
  ``LinearOperator``; one vector per product;
- :func:`krylov_extremes`: restarted block Krylov Rayleigh–Ritz, for operators whose product
  costs the same for one vector or sixteen (softmax attention: the logits dominate), where it
  needs several times fewer logit evaluations than ARPACK (``benchmarks/bench_analysis.py``
  prints both with their accuracy);
- :func:`power_extreme`: power iteration with a residual stopping rule, a warning when the
  stated tolerance is not reached, and an optional safety margin (as PyGSP's
  ``estimate_lmax``).

Certification
-------------
A Ritz pair :math:`(\theta, u)`, :math:`\|u\| = 1`, is *certified* when its relative residual

.. math::

    \rho = \frac{\|A u - \theta u\|}{\|A V\|_2} \le \mathrm{tol}

where :math:`V` is the orthonormal basis the pair came from, so :math:`\|AV\|_2 \le \|A\|_2`
and :math:`\rho` over-estimates the residual relative to :math:`\|A\|_2`. The products
:math:`AV` are fresh operator products (never updated by recurrences), so the residual is
that of the true operator up to rounding. For a symmetric operator an eigenvalue lies within
:math:`\rho\|A\|_2` of :math:`\theta`; for a general one within :math:`\kappa\,\rho\|A\|_2`,
:math:`\kappa` the eigenvalue's condition number. Pairs that miss ``tol`` are returned with
``converged = False`` (a solver never silently drops them).

Examples
--------
>>> import numpy as np, torch
>>> from graphfilters.spectral import krylov_extremes
>>> rng = np.random.default_rng(0)
>>> A = torch.as_tensor(rng.random((300, 300)))
>>> A = A / A.sum(1, keepdim=True)                      # row-stochastic: Perron value 1
>>> res = krylov_extremes(lambda X: A @ X, 300, k=3, symmetric=False)
>>> bool(res.converged.all()), round(float(abs(res.values).max()), 12)
(True, 1.0)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import torch
from torch import Tensor

from . import _validate as V
from ._backend import Array
from ._warnings import external_stacklevel

__all__ = [
    "DENSE_LIMIT",
    "DEFAULT_TOL",
    "Eigs",
    "check_dense_size",
    "dense_eigvals",
    "arpack_extremes",
    "krylov_extremes",
    "power_extreme",
    "cached_matrix",
    "cached_extremes",
    "CACHE_BYTES",
    "ConvergenceWarning",
    "SingularValues",
    "top_singular_values",
]

#: Largest N for which dense eigensolvers run (``O(N^3)`` time, ``N^2`` memory).
DENSE_LIMIT = 8192
#: Default relative residual tolerance of the matrix-free solvers.
DEFAULT_TOL = 1e-6
WHICH = ("LM", "LR", "SR", "LI", "LA", "SA")


class ConvergenceWarning(UserWarning):
    """An iterative eigen-solver stopped before reaching its stated tolerance."""


@dataclass
class Eigs:
    """Eigenvalues of one operator with their certification.

    Attributes
    ----------
    values : numpy array (real for symmetric operators, else complex)
    residuals : numpy array
        Relative residuals :math:`\\|Au - \\theta u\\| / \\|AV\\|_2` (0 for dense solves).
    converged : numpy bool array
        ``residuals <= tol``.
    tol : float
    n_products : int
        Operator products used (one block of vectors counts once).
    """

    values: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    tol: float
    n_products: int = 0

    @property
    def certified(self) -> bool:
        return bool(np.all(self.converged))


def check_dense_size(n: int, what: str, alternative: str, limit: int | None = None) -> None:
    """Refuse a dense ``n x n`` eigen-solve above ``limit`` (default :data:`DENSE_LIMIT`)
    *before* anything is allocated, naming the structured ``alternative``."""
    limit = DENSE_LIMIT if limit is None else limit
    if n > limit:
        raise ValueError(
            f"{what}: N = {n} is too large for a dense eigendecomposition (O(N^3) time, "
            f"{8 * n * n / 2**30:.1f} GiB for the matrix; limit "
            f"graphfilters.spectral.DENSE_LIMIT = {limit}); {alternative}"
        )


def dense_eigvals(M: Array, symmetric: bool) -> Array:
    """Eigenvalues of a dense (batched) matrix: ``eigvalsh`` (ascending) or ``eigvals``.

    Half-precision tensors are solved in float32 (LAPACK has no half kernels). When torch's
    LAPACK reports that the non-symmetric QR algorithm did not converge (seen with the MKL
    of torch's x86 wheels on a defective matrix: an oversmoothed affinity whose rows are all
    equal, rank 1 with 15 zero eigenvalues at N = 16), the same matrix is solved by numpy's
    LAPACK instead (``geev`` as well; a different implementation, which converges there) and
    the result returned as a tensor on ``M``'s device.

    Examples
    --------
    >>> dense_eigvals(np.array([[2.0, 1.0], [1.0, 2.0]]), True)
    array([1., 3.])
    """
    if isinstance(M, torch.Tensor):
        if M.dtype in (torch.float16, torch.bfloat16):
            M = M.float()
        if symmetric:
            return torch.linalg.eigvalsh(M)
        try:
            return torch.linalg.eigvals(M)
        except torch.linalg.LinAlgError:
            ev = np.linalg.eigvals(M.detach().cpu().numpy())       # real when all are
            ev = ev.astype(np.result_type(ev.dtype, np.complex64))   # complex, as torch's
            return torch.from_numpy(ev).to(M.device)
    return np.linalg.eigvalsh(M) if symmetric else np.linalg.eigvals(M)


# ------------------------------------------------------------------------------------------
# ARPACK
# ------------------------------------------------------------------------------------------


def _relres(apply: Callable[[np.ndarray], np.ndarray], vals: np.ndarray, vecs: np.ndarray,
            scale: float) -> np.ndarray:
    vecs = vecs / np.linalg.norm(vecs, axis=0, keepdims=True)
    if np.iscomplexobj(vecs):
        AV = apply(vecs.real) + 1j * apply(vecs.imag)
    else:
        AV = apply(vecs)
    return np.linalg.norm(AV - vecs * vals[None, :], axis=0) / max(scale, 1e-300)


def arpack_extremes(
    op: spla.LinearOperator, k: int, *, symmetric: bool, which: tuple[str, ...] = ("LM",),
    tol: float = DEFAULT_TOL, seed: int = 0, maxiter: int | None = None,
) -> Eigs:
    """Extreme eigenvalues by ARPACK (``eigsh`` for ``which=("LA", "SA")`` both ends,
    ``eigs`` otherwise), with residuals from fresh products.

    ARPACK's own stopping rule is ``tol`` relative to each Ritz value; the residual reported
    here is relative to the largest Ritz value modulus (a lower bound of :math:`\\|A\\|_2`;
    exact for symmetric operators).

    Examples
    --------
    >>> A = np.diag(np.arange(1.0, 51.0))
    >>> r = arpack_extremes(spla.aslinearoperator(A), 2, symmetric=True, which=("LA", "SA"))
    >>> r.values.tolist(), bool(r.certified)
    ([1.0, 2.0, 49.0, 50.0], True)
    """
    n = op.shape[0]
    V.positive_int(k, "k")
    V.positive_float(tol, "tol")
    v0 = np.random.default_rng(seed).standard_normal(n)

    def apply(X: np.ndarray) -> np.ndarray:
        return np.column_stack([op @ X[:, j] for j in range(X.shape[1])])

    vals_all, vecs_all, n_mv = [], [], 0
    if symmetric:
        try:
            vals, vecs = spla.eigsh(op, k=min(2 * k, n - 1), which="BE", v0=v0, tol=tol,
                                    maxiter=maxiter)
        except spla.ArpackNoConvergence as exc:
            vals, vecs = exc.eigenvalues, exc.eigenvectors
        vals_all.append(vals)
        vecs_all.append(vecs)
    else:
        for w in which:
            try:
                vals, vecs = spla.eigs(op, k=min(k, n - 2), which=w, v0=v0, tol=tol,
                                       maxiter=maxiter)
            except spla.ArpackNoConvergence as exc:
                vals, vecs = exc.eigenvalues, exc.eigenvectors
            vals_all.append(vals)
            vecs_all.append(vecs)
    vals = np.concatenate(vals_all)
    vecs = np.concatenate(vecs_all, axis=1)
    if vals.size == 0:
        return Eigs(vals, np.zeros(0), np.zeros(0, bool), tol, n_mv)
    scale = float(np.abs(vals).max())
    res = _relres(apply, vals, vecs, scale)
    vals, res = _dedupe(vals, res, symmetric)
    return Eigs(vals, res, res <= tol, tol, n_mv)


def _dedupe(vals: np.ndarray, res: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    if symmetric:
        vals = np.real(vals)
        o = np.argsort(vals)
    else:
        vals = np.asarray(vals, dtype=np.complex128)
        o = np.lexsort((vals.imag, vals.real))
    vals, res = vals[o], res[o]
    scale = max(1.0, float(np.abs(vals).max(initial=0.0)))
    keep = [0] if len(vals) else []
    for i in range(1, len(vals)):
        if abs(vals[i] - vals[keep[-1]]) > 1e-9 * scale:
            keep.append(i)
        elif res[i] < res[keep[-1]]:
            keep[-1] = i
    return vals[keep], res[keep]


# ------------------------------------------------------------------------------------------
# Restarted block Krylov
# ------------------------------------------------------------------------------------------


def _wanted(theta: np.ndarray, k: int, symmetric: bool, which: tuple[str, ...]) -> np.ndarray:
    """Indices of the wanted Ritz values, in order of priority."""
    m = len(theta)
    if symmetric:
        o = np.argsort(theta.real)
        idx = np.r_[o[::-1][:k], o[:k]]                    # both ends, largest first
    else:
        keys = {"LM": -np.abs(theta), "LR": -theta.real, "SR": theta.real,
                "LI": -np.abs(theta.imag), "LA": -theta.real, "SA": theta.real}
        idx = np.concatenate([np.argsort(keys[w], kind="stable")[:k] for w in which])
    _, first = np.unique(idx, return_index=True)
    return idx[np.sort(first)][:m]


def _real_basis(U: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """A real basis of the span of Ritz vectors (real and imaginary parts)."""
    cols = []
    for j in range(U.shape[1]):
        if theta[j].imag < 0 and np.any(np.isclose(theta[:j], np.conj(theta[j]))):
            continue                  # the conjugate's vector spans the same real plane
        cols.append(U[:, j].real)
        if abs(theta[j].imag) > 0:
            cols.append(U[:, j].imag)
    return np.stack(cols, 1) if cols else np.zeros((U.shape[0], 0))


def _orth_against(W: torch.Tensor, Vb: torch.Tensor | None, drop: float) -> torch.Tensor:
    """Orthonormal columns spanning ``W`` minus its part in span ``Vb`` (twice), dropping
    directions below ``drop`` (a numerically invariant subspace)."""
    for _ in range(2):
        if Vb is not None:
            W = W - Vb @ (Vb.T @ W)
    R = torch.linalg.qr(W, mode="reduced")[1]
    keep = R.diagonal().abs() > drop
    Q = torch.linalg.qr(W[:, keep], mode="reduced")[0]
    if Vb is not None and Q.shape[1]:
        Q = Q - Vb @ (Vb.T @ Q)
        Q = torch.linalg.qr(Q, mode="reduced")[0]
    return Q


@V.validate_params(
    {"apply": ["callable"], "n": [V.POS_INT], "k": [V.POS_INT], "symmetric": ["boolean"],
     "block_size": [V.POS_INT], "n_blocks": [V.POS_INT], "tol": [V.POS_REAL],
     "max_restarts": [V.POS_INT], "seed": [V.NONNEG_INT], "warn": ["boolean"],
     "start": [V.InstanceOf(torch.Tensor), None]},
    valid=lambda: {"apply": lambda X: 2 * X, "n": 8, "symmetric": True},
)
def krylov_extremes(
    apply: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    k: int = 4,
    *,
    symmetric: bool,
    which: tuple[str, ...] = ("LM",),
    block_size: int = 16,
    n_blocks: int = 8,
    tol: float = DEFAULT_TOL,
    max_restarts: int = 30,
    seed: int = 0,
    device: Any = None,
    start: torch.Tensor | None = None,
    warn: bool = True,
) -> Eigs:
    r"""Extreme eigenvalues by restarted block Krylov Rayleigh–Ritz, certified.

    One cycle builds an orthonormal basis :math:`V` of
    :math:`[X, AX, \dots, A^{q-1}X]` (``q = n_blocks`` block products, block Gram–Schmidt
    twice), keeps the products :math:`AV`, and takes the Ritz pairs of
    :math:`H = V^T A V` with residuals :math:`\|AVy - \theta Vy\|`. The next cycle starts from
    a real basis of the wanted Ritz vectors (thick restart) until every wanted pair meets
    ``tol`` or ``max_restarts`` cycles have run; unconverged pairs are returned flagged (and
    warned about when ``warn``).

    Parameters
    ----------
    apply : callable
        ``X -> A X`` on float64 tensors ``(n, b)``.
    n : int
    k : int
        Eigenvalues per criterion (``which``; symmetric: per end).
    symmetric : bool
    which : tuple of {"LM", "LR", "SR", "LI"}
        Criteria of a general operator: largest modulus, largest/smallest real part,
        largest imaginary part.
    block_size, n_blocks : int
        Vectors per block (raised to hold every wanted vector) and products per cycle.
    tol : float
        Relative residual of a certified pair (see the module docstring).
    max_restarts : int
    start : tensor ``(n, b)``, optional
        Starting block (default: the constant vector and Gaussian vectors).

    Returns
    -------
    Eigs
    """
    for w in which:
        if w not in WHICH:
            raise ValueError(f"which must hold some of {list(WHICH)}, got {w!r}")
    n_want = 2 * k if symmetric else k * len(which)
    b = max(block_size, 2 * n_want if not symmetric else n_want + 4)
    if n <= b * (n_blocks + 1) or n <= 4 * b:
        return _dense_from_apply(apply, n, k, symmetric, which, tol, device)
    if start is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        X = torch.randn(n, b, generator=gen, dtype=torch.float64)
        X[:, 0] = 1.0       # the Perron vector of row-stochastic operators
        X = X.to(device)
    else:
        X = start.to(torch.float64)
    n_products = 0
    best: tuple[np.ndarray, np.ndarray] | None = None
    for _cycle in range(max_restarts):
        Vs = [_orth_against(X, None, 0.0)]
        AVs: list[torch.Tensor] = []
        for step in range(n_blocks):
            AVs.append(apply(Vs[-1]))
            n_products += 1
            if step == n_blocks - 1:
                break
            Vb = torch.cat(Vs, 1)
            scale = float(AVs[-1].norm()) if AVs[-1].numel() else 0.0
            W = _orth_against(AVs[-1], Vb, 1e-12 * max(scale, 1e-300))
            if W.shape[1] == 0:
                break                                  # invariant subspace
            Vs.append(W)
        Vb = torch.cat(Vs[: len(AVs)], 1)
        AV = torch.cat(AVs, 1)
        H = (Vb.T @ AV).cpu().numpy()
        anorm = float(torch.linalg.matrix_norm(AV, ord=2)) if AV.numel() else 0.0
        if symmetric:
            theta, Y = np.linalg.eigh((H + H.T) / 2)
        else:
            theta, Y = np.linalg.eig(H)
        Vn, AVn = Vb.cpu().numpy(), AV.cpu().numpy()
        R = AVn @ Y - (Vn @ Y) * theta[None, :]
        res = np.linalg.norm(R, axis=0) / max(anorm, 1e-300)
        want = _wanted(theta, k, symmetric, which)
        best = (theta[want], res[want])
        if np.all(res[want] <= tol):
            break
        # thick restart: the wanted Ritz vectors, then the next best, up to the block size
        wanted_set = set(want.tolist())
        rest = [i for i in _wanted(theta, len(theta), symmetric, which)
                if i not in wanted_set]
        pick = list(want) + rest
        U = Vn @ Y[:, pick]
        basis = _real_basis(U, theta[pick])[:, : max(b, len(want) * 2)]
        X = torch.as_tensor(basis, dtype=torch.float64, device=Vb.device)
    assert best is not None
    vals, res = best
    vals, res = (np.real(vals), res) if symmetric else (vals.astype(np.complex128), res)
    o = np.argsort(vals) if symmetric else np.lexsort((vals.imag, vals.real))
    vals, res = vals[o], res[o]
    conv = res <= tol
    if warn and not conv.all():
        warnings.warn(
            f"block Krylov: {int((~conv).sum())} of {len(conv)} eigenvalues not certified "
            f"after {max_restarts} restarts (relative residual up to {res.max():.1e} > tol "
            f"= {tol:g}); raise max_restarts or n_blocks", ConvergenceWarning,
            stacklevel=external_stacklevel())
    return Eigs(vals, res, conv, tol, n_products)


def _dense_from_apply(apply: Callable[[torch.Tensor], torch.Tensor], n: int, k: int,
                      symmetric: bool, which: tuple[str, ...], tol: float, device: Any) -> Eigs:
    """Small operators: the dense matrix from ``n`` products, exact eigenvalues."""
    M = apply(torch.eye(n, dtype=torch.float64, device=device)).cpu().numpy()
    vals = np.linalg.eigvalsh((M + M.T) / 2) if symmetric else np.linalg.eigvals(M)
    want = _wanted(vals, k, symmetric, which)
    vals = vals[want]
    vals = np.real(vals) if symmetric else vals.astype(np.complex128)
    o = np.argsort(vals) if symmetric else np.lexsort((vals.imag, vals.real))
    res = np.zeros(len(vals))
    return Eigs(vals[o], res, np.ones(len(vals), bool), tol, 1)


# ------------------------------------------------------------------------------------------
# Cached rows: ARPACK on operators whose products cost O(N^2) whatever the vectors
# ------------------------------------------------------------------------------------------

#: Memory (bytes) the default solver may spend on a stored copy of an expensive operator.
CACHE_BYTES = 2**30


def cached_matrix(rows: Callable[[int, int], np.ndarray], n: int, *, chunk: int = 256,
                  cache_bytes: int | None = None) -> np.ndarray | None:
    """The ``n x n`` operator assembled from row blocks ``rows(start, stop)`` (float64 rows),
    stored in float64 if it fits ``cache_bytes`` (default :data:`CACHE_BYTES`), else
    float32, else ``None``."""
    cache_bytes = CACHE_BYTES if cache_bytes is None else cache_bytes
    if 8 * n * n <= cache_bytes:
        dtype = np.float64
    elif 4 * n * n <= cache_bytes:
        dtype = np.float32
    else:
        return None
    M = np.empty((n, n), dtype=dtype)
    for s in range(0, n, chunk):
        M[s:s + chunk] = rows(s, min(s + chunk, n))
    return M


def cached_extremes(
    M: np.ndarray, k: int, *, symmetric: bool, which: tuple[str, ...],
    certify: Callable[[np.ndarray], np.ndarray] | None = None,
    tol: float = DEFAULT_TOL, seed: int = 0,
) -> Eigs:
    """ARPACK on a stored operator ``M``; for a float32 copy the residuals are recomputed
    with ``certify`` (``X -> A X`` in float64 on the true operator, one block product).

    Examples
    --------
    >>> M = np.diag(np.linspace(-1.0, 1.0, 100))
    >>> r = cached_extremes(M, 1, symmetric=True, which=("LA", "SA"))
    >>> r.values.round(12).tolist(), r.certified
    ([-1.0, 1.0], True)
    """
    n = M.shape[0]
    ncv = min(n - 1, max(2 * k * (2 if symmetric else len(which)) + 1, 40))
    v0 = np.random.default_rng(seed).standard_normal(n)
    if M.dtype == np.float64:
        op = spla.aslinearoperator(M)
    else:   # float32 storage, ARPACK in float64
        def mv(x: np.ndarray) -> np.ndarray:
            return (M @ x.astype(np.float32)).astype(np.float64)
        op = spla.LinearOperator((n, n), matvec=mv, dtype=np.float64)
    # ARPACK's test is |r| <= tol_arpack |theta|: for a float64 copy ask 100x the certified
    # tolerance; a float32 copy's products carry ~1e-7 relative rounding, so ask no more than
    # that (the float64 Rayleigh-Ritz below then certifies against the true operator)
    arpack_tol = tol * 1e-2 if M.dtype == np.float64 else max(tol * 1e-1, 1e-5)
    vals_all, vecs_all = [], []
    runs = [("BE", min(2 * k, n - 1))] if symmetric else [(w, min(k, n - 2)) for w in which]
    for w, kk in runs:
        solver = spla.eigsh if symmetric else spla.eigs
        try:
            vals, vecs = solver(op, k=kk, which=w, v0=v0, tol=arpack_tol,
                                ncv=max(ncv, kk + 2) if symmetric else max(ncv, kk + 3))
        except spla.ArpackNoConvergence as exc:
            vals, vecs = exc.eigenvalues, exc.eigenvectors
        vals_all.append(vals)
        vecs_all.append(vecs)
    vals = np.concatenate(vals_all).astype(np.float64 if symmetric else np.complex128)
    vecs = np.concatenate(vecs_all, 1).astype(np.float64 if symmetric else np.complex128)
    if M.dtype == np.float64 or certify is None:
        def apply(X: np.ndarray) -> np.ndarray:
            return M.astype(np.float64, copy=False) @ X
        true_apply = apply
    else:
        true_apply = certify
    if vals.size == 0:
        return Eigs(vals, np.zeros(0), np.zeros(0, bool), tol, 0)
    # Rayleigh-Ritz on the span of the Ritz vectors with one float64 block product of the
    # true operator: the certified values and residuals are those of the operator itself.
    X = vecs if symmetric else _real_basis(vecs, vals)
    X = X / np.linalg.norm(X, axis=0, keepdims=True)
    keep = np.abs(np.diag(np.linalg.qr(X)[1])) > 1e-6      # drop dependent columns, then
    Qx = np.linalg.qr(X[:, keep])[0]                         # orthonormalize the rest
    AQ = true_apply(Qx)
    H = Qx.T @ AQ
    theta, Y = np.linalg.eigh((H + H.T) / 2) if symmetric else np.linalg.eig(H)
    anorm = max(float(np.linalg.norm(AQ, 2)), 1e-300)
    res = np.linalg.norm(AQ @ Y - (Qx @ Y) * theta[None, :], axis=0) / anorm
    want = _wanted(theta, k, symmetric, which)
    vals, res = _dedupe(theta[want], res[want], symmetric)
    return Eigs(vals, res, res <= tol, tol, len(runs))


# ------------------------------------------------------------------------------------------
# Power iteration
# ------------------------------------------------------------------------------------------


@V.validate_params(
    {"apply": ["callable"], "n_iter": [V.POS_INT], "tol": [V.POS_REAL],
     "symmetric": ["boolean"], "warn": ["boolean"]},
    valid=lambda: {"apply": lambda x: 2 * x, "x0": torch.ones(3, 1, dtype=torch.float64)},
)
def power_extreme(
    apply: Callable[[Array], Array],
    x0: Array,
    *,
    n_iter: int = 1000,
    tol: float = 1e-6,
    symmetric: bool = True,
    warn: bool = True,
) -> tuple[Array, Array, bool]:
    r"""Largest eigenvalue modulus by power iteration on a batch of operators.

    Iterates :math:`x \leftarrow Ax/\|Ax\|` and stops when every sample's relative residual
    :math:`\|Ax - \theta x\| / |\theta|` is at most ``tol``, with :math:`\theta = x^TAx`
    (symmetric) or :math:`\theta = \|Ax\|` with the sign of :math:`x^TAx` (general). For a
    symmetric operator :math:`\theta` is then within :math:`\mathrm{tol}\,|\theta|` of an
    eigenvalue (of the largest one for a generic start). When ``n_iter`` steps do not reach
    ``tol`` (a small gap, or a complex dominant pair) a :class:`ConvergenceWarning` is issued.

    Parameters
    ----------
    apply : callable ``(..., N, 1) -> (..., N, 1)``
    x0 : array ``(..., N, 1)``
        Starting vectors (numpy or torch; the result has the same backend).

    Returns
    -------
    (estimate ``(...,)``, relative residual ``(...,)``, converged)
    """
    x = x0
    est = res = None
    for _ in range(n_iter):
        x = x / (x**2).sum(-2, keepdims=True) ** 0.5
        y = apply(x)
        rq = (x * y).sum((-2, -1))
        if symmetric:
            theta = rq
        else:
            sign = (rq >= 0) * 2.0 - 1.0
            theta = sign * ((y**2).sum((-2, -1))) ** 0.5
        r = ((y - theta[..., None, None] * x) ** 2).sum((-2, -1)) ** 0.5
        est = abs(theta)
        res = r / (est + 1e-300)
        if bool((res <= tol).all()):
            return est, res, True
        x = y
    if warn:
        worst = float(res.max()) if res is not None else float("nan")
        warnings.warn(
            f"power iteration did not reach tol = {tol:g} in n_iter = {n_iter} steps "
            f"(relative residual {worst:.1e}); the estimate may be low: raise n_iter, use "
            "method='lanczos' or a safety margin", ConvergenceWarning,
            stacklevel=external_stacklevel())
    return est, res, False


# ------------------------------------------------------------------------------------------
# Matrix-free singular values (Krylov-accelerated power iteration on A^T A)
# ------------------------------------------------------------------------------------------


@dataclass
class SingularValues:
    r"""Top singular values of a linear map known only through products with it and its
    adjoint (:func:`top_singular_values`).

    Attributes
    ----------
    values : numpy array ``(k,)``
        Descending.
    iterations : int
        Products with the map (each paired with one adjoint product).
    residual : float
        :math:`\max_i \|A^T u_i - \sigma_i v_i\| / \sigma_1` over the ``k`` Ritz triples
        (:math:`A v_i = \sigma_i u_i` holds exactly); a singular value lies within
        ``residual * values[0]`` of each ``values[i]``.
    converged : bool
        ``residual <= tol``.
    tol : float
    vector : Tensor or None
        The top right singular vector (a warm start for a related map).
    """

    values: np.ndarray
    iterations: int
    residual: float
    converged: bool
    tol: float
    vector: Tensor | None = field(default=None, repr=False)

    @property
    def norm(self) -> float:
        """:math:`\\sigma_1`."""
        return float(self.values[0])


def _orthogonalize(x: Tensor, basis: Tensor) -> Tensor:
    """``x`` minus its projection on the orthonormal rows of ``basis``: classical Gram-Schmidt,
    repeated when the first pass removed more than half of ``x``'s norm squared (the DGKS
    criterion, Daniel et al. 1976: one pass then leaves an error of the order of the
    rounding times the norm lost, so a second one restores orthogonality to working
    precision; otherwise one pass already does)."""
    before = x.norm()
    x = x - (basis @ x) @ basis
    if x.norm() < 0.7071 * before:
        x = x - (basis @ x) @ basis
    return x


@V.validate_params(
    {"matvec": ["callable"], "rmatvec": ["callable"], "like": [V.InstanceOf(torch.Tensor)],
     "k": [V.POS_INT], "tol": [V.UNIT_TOL],
     "max_iter": [V.POS_INT], "krylov": [V.POS_INT], "v0": [V.InstanceOf(torch.Tensor), None],
     "seed": [V.NONNEG_INT], "v0_mix": [V.Interval(V.Real, 0, 1, closed="both")]},
    valid=lambda: {"matvec": lambda v: 2 * v, "rmatvec": lambda u: 2 * u,
                   "like": torch.zeros(3, dtype=torch.float64)},
)
def top_singular_values(
    matvec: Callable[[Tensor], Tensor],
    rmatvec: Callable[[Tensor], Tensor],
    like: Tensor,
    k: int = 1,
    tol: float = 1e-6,
    max_iter: int = 300,
    krylov: int = 24,
    v0: Tensor | None = None,
    seed: int = 0,
    v0_mix: float = 1.0,
) -> SingularValues:
    r"""The ``k`` largest singular values of a linear map :math:`A`, matrix-free.

    Golub–Kahan–Lanczos bidiagonalization with full reorthogonalization and explicit
    restarts: power iteration on :math:`A^T A` accelerated by keeping its Krylov space
    (``krylov`` vectors per cycle, restarted from the top Ritz vectors). After step ``j``,
    :math:`A V_j = U_j B_j` exactly and the residual of the Ritz triple
    :math:`(\sigma_i, u_i, v_i)` is :math:`\|A^T u_i - \sigma_i v_i\| = \beta_j |P_{j i}|`;
    it stops when every one of the top ``k`` is below ``tol * sigma_1`` or after
    ``max_iter`` products (then ``converged`` is False).

    Parameters
    ----------
    matvec, rmatvec : callable
        :math:`v \mapsto A v` and :math:`u \mapsto A^T u` on tensors shaped like ``like``
        (a square map; the input and output spaces have ``like``'s shape).
    like : Tensor
        Shape, dtype and device of the vectors.
    k : int
        Number of singular values.
    tol : float
        Relative residual asked for.
    max_iter : int
        Cap on the number of products with :math:`A`.
    krylov : int
        Krylov space size per cycle (``>= k + 1``).
    v0 : Tensor, optional
        Start vector (warm start); random (``seed``) otherwise.
    v0_mix : float
        Weight of a random unit vector added to the normalized ``v0`` (default 1: equal
        parts). A residual certifies *a* singular triple, not the largest: a warm start with no
        component along the top singular vector would converge to a lower one; the random
        part rules that out as a cold start does, at the cost of a product or two. 0: ``v0``
        alone (when it is known to overlap the top vector).

    Returns
    -------
    SingularValues

    Examples
    --------
    >>> import torch
    >>> A = torch.tensor([[3.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    >>> sv = top_singular_values(lambda v: A @ v, lambda u: A.T @ u, torch.zeros(2,
    ...                          dtype=torch.float64), k=2, tol=1e-12)
    >>> bool(abs(sv.values - torch.linalg.svdvals(A).numpy()).max() < 1e-12), sv.converged
    (True, True)
    """
    krylov = max(krylov, k + 1)
    shape, dtype, dev = like.shape, like.dtype, like.device
    dim = like.numel()
    krylov = min(krylov, dim, max(max_iter, k + 1))        # rows that can be used
    k = min(k, dim)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if v0 is None:
        v = torch.randn(dim, generator=gen, dtype=dtype).to(dev)
    else:
        v = v0.detach().reshape(-1).to(device=dev, dtype=dtype).clone()
    nv = v.norm()
    if not bool(torch.isfinite(nv)) or float(nv) == 0:
        raise ValueError("the start vector v0 is zero or not finite")
    v = v / nv
    if v0 is not None and v0_mix > 0:
        # a warm start from a related map can be (near) orthogonal to this map's top
        # singular vector (e.g. J - I and J of a symmetric J): Krylov would then certify a
        # lower triple. A random part gives every direction its share, as a cold start does.
        r = torch.randn(dim, generator=gen, dtype=dtype).to(dev)
        v = v + v0_mix * r / r.norm()
        v = v / v.norm()
    products = 0
    # Krylov bases as preallocated rows (no re-stacking per step); Ritz vectors formed only
    # when a cycle ends
    Vb = torch.empty(krylov + 1, dim, dtype=dtype, device=dev)
    Ub: Tensor | None = None
    best: tuple[np.ndarray, float, np.ndarray, int] | None = None
    ritz: Tensor | None = None
    while True:
        Vb[0] = v
        alphas: list[float] = []
        betas: list[float] = []
        for j in range(krylov):
            y = matvec(Vb[j].reshape(shape))
            out_shape = y.shape
            u = y.reshape(-1).to(dtype)
            if Ub is None:
                Ub = torch.empty(krylov, u.numel(), dtype=dtype, device=dev)
            out_dim = Ub.shape[1]
            products += 1
            if j:
                u = _orthogonalize(u, Ub[:j])
            a = float(u.norm())
            if a == 0 or not math.isfinite(a):
                if not math.isfinite(a):
                    raise FloatingPointError("the map produced a non-finite vector")
                alphas.append(0.0)
                betas.append(0.0)
                break
            Ub[j] = u / a
            alphas.append(a)
            w = rmatvec(Ub[j].reshape(out_shape)).reshape(-1).to(dtype)
            Vm = Vb[:j + 1]
            w = _orthogonalize(w, Vm)
            b = float(w.norm())
            betas.append(b)
            m = len(alphas)
            Bm = np.diag(alphas) + np.diag(betas[:m - 1], 1)
            P, sig, Qt = np.linalg.svd(Bm)
            kk = min(k, m)
            res = np.abs(b * P[m - 1, :kk])
            rel = float(res.max() / max(sig[0], 1e-300))
            best = (sig[:kk], rel, Qt[:kk], m)
            ritz = None
            # an invariant subspace (beta = 0) holds exact singular triples; with fewer than k
            # of them the iteration goes on in its complement (a random vector orthogonal to
            # V, beta = 0 in B: A V = U B still holds), e.g. the identity map with k = 3
            invariant = b <= 1e-14 * max(sig[0], 1e-300)
            enough = m >= k
            if ((rel <= tol or invariant) and enough) or products >= max_iter \
                    or m >= min(dim, out_dim):
                break
            if invariant:
                r = torch.randn(dim, generator=gen, dtype=dtype).to(dev)
                r = r - (Vm @ r) @ Vm
                r = r - (Vm @ r) @ Vm
                Vb[j + 1] = r / r.norm()
            else:
                Vb[j + 1] = w / b
        if best is None:                                  # the map is zero
            return SingularValues(np.zeros(k), products, 0.0, True, float(tol), None)
        sig, rel, qt, m = best
        if ritz is None:                   # (kept from the last cycle if this one made none)
            ritz = torch.as_tensor(qt, dtype=dtype, device=dev) @ Vb[:m]    # (kk, dim)
        done = (rel <= tol and len(alphas) >= k) or products >= max_iter \
            or len(alphas) >= min(dim, out_dim) \
            or (len(alphas) >= k and betas[-1] <= 1e-14 * max(float(sig[0]), 1e-300))
        if done:
            vals = np.zeros(k)
            vals[:len(sig)] = sig
            return SingularValues(vals, products, rel, rel <= tol, float(tol),
                                  ritz[0].reshape(shape))
        v = ritz.sum(0)
        v = v / v.norm()
