r"""Spectral densities of an operator too large to solve: stochastic Lanczos quadrature and
the kernel polynomial method (Jackson-damped Chebyshev moments), with Hutchinson probes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from graphfilters import _validate as V
from graphfilters._backend import to_numpy
from graphfilters.chebyshev import chebyshev_basis, jackson_damping
from graphfilters.graph import (
    Affinity,
)

from .eigen import (
    OPERATORS,
    OperatorApply,
    as_torch64,
    operator_is_symmetric,
    sample_indices,
    spectrum,
    unpack_source,
)

__all__ = [
    "DENSITY_METHODS",
    "SpectralDensity",
    "spectral_density",
]

DENSITY_METHODS = ("slq", "kpm")


# ------------------------------------------------------------------------------------------
# Spectral densities
# ------------------------------------------------------------------------------------------


@dataclass
class SpectralDensity:
    """Estimated eigenvalue density of a symmetric operator, per sample.

    Attributes
    ----------
    grid : numpy array ``(G,)``
    density : numpy array ``(S, G)``
        Integrates to ~1 over the grid (a probability density of the eigenvalues).
    method : str
        ``"slq"`` or ``"kpm"``.
    bounds : tuple of float
        Spectral interval used.
    nodes, weights : list of numpy arrays or None
        SLQ quadrature: Ritz values and weights (summing to 1) per sample.
    reason : str
    """

    grid: np.ndarray
    density: np.ndarray
    method: str
    bounds: tuple[float, float]
    nodes: list[np.ndarray] | None = None
    weights: list[np.ndarray] | None = None
    reason: str = ""

    @V.validate_params(
        {"f": ["callable"], "n": [V.POS_INT]},
        valid=lambda: {"self": SpectralDensity(np.zeros(2), np.zeros((1, 2)), "slq", (0.0, 1.0),
                                               [np.array([0.5])], [np.array([1.0])]),
                       "f": np.exp, "n": 3},
    )
    def trace(self, f: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
        r"""SLQ estimate of :math:`\operatorname{tr} f(S) = N \sum_i w_i f(\theta_i)` per
        sample (``slq`` only)."""
        if self.nodes is None or self.weights is None:
            raise ValueError("trace estimates need method='slq'")
        return np.array([n * float(np.sum(w * f(t))) for t, w in zip(self.nodes, self.weights)])


def _known_bounds(operator: str, kind: str, aff: Affinity) -> tuple[float, float] | None:
    nonneg = aff.nonnegative()
    if operator == "laplacian" and kind in ("sym", "rw") and nonneg:
        return 0.0, 2.0
    if operator == "normalized" and kind in ("sym", "rw") and nonneg:
        return -1.0, 1.0
    return None


@V.validate_params(
    {"operator": [V.StrOptions(OPERATORS)], "method": [V.StrOptions(DENSITY_METHODS)],
     "n_vectors": [V.POS_INT], "order": [V.NONNEG_INT], "n_steps": [V.POS_INT],
     "grid": [V.Interval(V.Integral, 2, None, closed="left"), V.ArrayLike(ndim=1)],
     "sigma": [V.POS_REAL, None], "seed": [V.NONNEG_INT], "progress": ["boolean"]},
    valid=lambda: {"affinity": np.ones((3, 3)), "progress": False, "order": 4, "grid": 5},
)
def spectral_density(
    affinity: Any,
    operator: str = "normalized",
    kind: str | None = None,
    *,
    method: str = "kpm",
    n_vectors: int = 16,
    order: int = 64,
    n_steps: int = 40,
    grid: int | np.ndarray = 200,
    bounds: tuple[float, float] | None = None,
    sigma: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> SpectralDensity:
    r"""Matrix-free eigenvalue density of a symmetric operator.

    ``"kpm"`` (kernel polynomial method): Chebyshev moments
    :math:`\mu_k = \tfrac{1}{N}\mathbb E[v^T T_k(\tilde S) v]` with Rademacher vectors on the
    operator rescaled to :math:`[-1, 1]`, Jackson damping :math:`g_k`, and

    .. math::

        \rho(x) = \frac{g_0\mu_0 + 2\sum_{k \ge 1} g_k \mu_k T_k(t)}{\pi h \sqrt{1 - t^2}},
        \qquad t = (x - c)/h.

    ``"slq"`` (stochastic Lanczos quadrature): ``n_steps`` Lanczos steps from each random
    vector; the Ritz values :math:`\theta_i` with weights :math:`\tau_i^2` (squared first
    components of the tridiagonal's eigenvectors) form a quadrature of the spectral measure,
    smoothed by a Gaussian of width ``sigma`` on the grid.

    Parameters
    ----------
    affinity, operator, kind
        As in :func:`spectrum`; the operator must be symmetric.
    n_vectors : int
        Random probe vectors (all applied in one product per step).
    order : int
        KPM polynomial degree.
    n_steps : int
        SLQ Lanczos steps.
    grid : int or array
        Evaluation points (a number of points spanning ``bounds``).
    bounds : (float, float), optional
        Spectral interval; known for normalized operators of non-negative affinities
        (``[-1, 1]``, Laplacians ``[0, 2]``), else estimated with Lanczos.
    sigma : float, optional
        SLQ smoothing width (default 1% of the interval).

    Examples
    --------
    >>> import numpy as np
    >>> from graphfilters.graph import DenseAffinity
    >>> A = np.random.default_rng(0).random((200, 200)); A = (A + A.T) / 2
    >>> d = spectral_density(DenseAffinity(A), "laplacian", "sym", progress=False)
    >>> d.bounds, round(float(np.trapezoid(d.density[0], d.grid)), 1)
    ((0.0, 2.0), 1.0)
    """
    aff, kind = unpack_source(affinity, kind, operator)
    aff.require_square()
    if not operator_is_symmetric(aff, operator, kind):
        raise ValueError(
            f"spectral densities need a symmetric operator; {operator}/{kind} of this "
            f"{type(aff).__name__} is not (its spectrum is complex). Use spectrum(..., "
            "method='arnoldi' or 'block_krylov') for extremes, or a symmetrized affinity"
        )
    aff = as_torch64(aff)
    reason = ""
    if bounds is None:
        bounds = _known_bounds(operator, kind, aff)
        if bounds is None:
            ext = spectrum(aff, operator, kind, method="lanczos" if aff.n > 50 else "eigh",
                           k=2, progress=False).all()
            lo, hi = float(ext.min()), float(ext.max())
            pad = 0.01 * max(hi - lo, 1e-12)
            bounds = (lo - pad, hi + pad)
            reason = "bounds estimated with Lanczos"
        else:
            reason = "bounds known from the normalization"
    a, b = float(bounds[0]), float(bounds[1])
    if not b > a:
        raise ValueError(f"bounds must satisfy lo < hi, got {bounds}")
    xs = np.linspace(a, b, int(grid)) if np.isscalar(grid) else np.asarray(grid, float)
    dens, nodes_all, weights_all = [], [], []
    idxs = sample_indices(aff)
    bar = tqdm(idxs, desc=f"density ({method})", disable=not progress or len(idxs) < 2,
               leave=False)
    for i, idx in enumerate(bar):
        single = aff.select(idx)
        apply = OperatorApply(single, operator, kind)
        gen = torch.Generator(device="cpu").manual_seed(seed + i)
        V = (torch.randint(0, 2, (single.n, n_vectors), generator=gen) * 2 - 1).to(
            dtype=torch.float64, device=single.device)
        if method == "kpm":
            dens.append(_kpm(apply, V, a, b, order, xs))
        else:
            th, w = _slq(apply, V, n_steps)
            nodes_all.append(th)
            weights_all.append(w)
            s = sigma if sigma is not None else 0.01 * (b - a)
            kern = np.exp(-0.5 * ((xs[:, None] - th[None, :]) / s) ** 2) / (s * np.sqrt(2 * np.pi))
            dens.append(kern @ w)
    bar.close()
    return SpectralDensity(xs, np.asarray(dens), method, (a, b),
                           nodes_all or None, weights_all or None, reason)


def _kpm(apply: Callable[[Tensor], Tensor], V: Tensor, a: float, b: float, order: int,
         xs: np.ndarray) -> np.ndarray:
    c, h = (a + b) / 2, (b - a) / 2 * 1.0001
    n = V.shape[0]

    def S(X: Tensor) -> Tensor:
        return (apply(X) - c * X) / h

    mu = np.zeros(order + 1)
    T_prev, T_cur = V, S(V)
    mu[0] = float((V * V).sum()) / (n * V.shape[1])
    if order >= 1:
        mu[1] = float((V * T_cur).sum()) / (n * V.shape[1])
    for k in range(2, order + 1):
        T_prev, T_cur = T_cur, 2 * S(T_cur) - T_prev
        mu[k] = float((V * T_cur).sum()) / (n * V.shape[1])
    g = jackson_damping(order)
    t = np.clip((xs - c) / h, -1 + 1e-12, 1 - 1e-12)
    T = chebyshev_basis(order, t)                         # (G, order + 1)
    coef = g * mu
    coef[1:] *= 2
    return (T @ coef) / (np.pi * h * np.sqrt(1 - t**2))


def _slq(apply: Callable[[Tensor], Tensor], V: Tensor, n_steps: int
         ) -> tuple[np.ndarray, np.ndarray]:
    n, m = V.shape
    steps = min(n_steps, n)
    Q = V / V.norm(dim=0, keepdim=True)
    Q_prev = torch.zeros_like(Q)
    beta_prev = torch.zeros(m, dtype=Q.dtype, device=Q.device)
    alphas, betas = [], []
    for _ in range(steps):
        W = apply(Q)
        alpha = (Q * W).sum(0)
        W = W - alpha * Q - beta_prev * Q_prev
        beta = W.norm(dim=0)
        alphas.append(alpha)
        betas.append(beta)
        ok = beta > 1e-10
        Q_prev, Q = Q, torch.where(ok, W / torch.where(ok, beta, 1.0), torch.zeros_like(W))
        beta_prev = torch.where(ok, beta, torch.zeros_like(beta))
    A = to_numpy(torch.stack(alphas))                          # (steps, m)
    Bt = to_numpy(torch.stack(betas))[:-1]
    nodes, weights = [], []
    for j in range(m):
        # stop each column at its first breakdown (the rest of its recursion is zero)
        bj = Bt[:, j]
        cut = int(np.argmax(bj <= 1e-10)) + 1 if (bj <= 1e-10).any() else steps
        T = np.diag(A[:cut, j]) + np.diag(bj[: cut - 1], 1) + np.diag(bj[: cut - 1], -1)
        th, Y = np.linalg.eigh(T)
        nodes.append(th)
        weights.append(Y[0] ** 2 / m)
    return np.concatenate(nodes), np.concatenate(weights)
