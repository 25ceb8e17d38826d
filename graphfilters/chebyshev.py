r"""Chebyshev polynomials, coefficients of spectral functions, and polynomial graph filters.

The filter of order :math:`K` (polynomial degree; :math:`K + 1` terms) acting on a graph signal
:math:`Z \in \mathbb{R}^{N \times C}` is

.. math::

    F(Z) = \sum_{k=0}^{K} T_k(\tilde L)\, Z\, W_k, \qquad \tilde L = \frac{2L}{\lambda_{max}} - I,

with :math:`T_0 = 1`, :math:`T_1 = x`, :math:`T_{k+1} = 2xT_k - T_{k-1}`. The weights
:math:`W_k` are matrices ``(C_in, C_out)`` (as in nonlocal blocks and ChebConv) or scalars
(the coefficients of a spectral function :math:`h(\lambda)`).

Two forms are offered. :func:`chebyshev_filter` is the Laplacian form above.
:func:`polynomial_filter` applies :math:`\sum_k B_k(S) Z W_k` for any operator :math:`S` given as
a callable — e.g. the normalized affinity :math:`\hat A`. With the normalized Laplacian and
:math:`\lambda_{max} = 2`, :math:`\tilde L = -\hat A` and :math:`T_k(-x) = (-1)^k T_k(x)`, so both
agree with :math:`W^{\hat A}_k = (-1)^k W^{L}_k`.

Coefficient convention (:func:`chebyshev_coefficients`): numpy's, i.e.
:math:`h(\lambda) \approx \sum_{k=0}^{K} c_k T_k(2\lambda/\lambda_{max} - 1)` with :math:`c_0`
the coefficient of :math:`T_0` itself. Hammond et al. (2011) and PyGSP write
:math:`\tfrac12 c_0 + \sum_{k \ge 1} c_k T_k`: their :math:`c_0` is twice ours.

Examples
--------
>>> import numpy as np
>>> from graphfilters.chebyshev import chebyshev_coefficients, chebyshev_filter
>>> from graphfilters.graph import laplacian
>>> rng = np.random.default_rng(0)
>>> W = rng.random((30, 30)); A = (W + W.T) / 2
>>> L = laplacian(A, "sym")
>>> c = chebyshev_coefficients(lambda lam: np.exp(-lam), order=12)
>>> x = rng.standard_normal((30, 1))
>>> lam, U = np.linalg.eigh(L)
>>> exact = U @ (np.exp(-lam)[:, None] * (U.T @ x))
>>> bool(np.abs(chebyshev_filter(L, x, c) - exact).max() < 1e-10)
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from . import _backend as B
from . import _validate as V
from ._backend import Array
from ._warnings import external_stacklevel
from .filters import filter_sum, get_filter
from .graph import DENSE_LIMIT

__all__ = [
    "chebyshev_T",
    "chebyshev_basis",
    "chebyshev_coefficients",
    "jackson_damping",
    "polynomial_terms",
    "polynomial_filter",
    "chebyshev_filter",
    "spectral_filter",
]

#: Largest polynomial degree accepted (T_k of a scaled spectrum is bounded, but a degree
#: beyond this is a mistake, not a filter: every term costs one operator product).
MAX_ORDER = 10_000


#: the polynomial degree (K + 1 terms)
ORDER = V.Interval(V.Integral, 0, MAX_ORDER, closed="both")


def _check_order(order: int) -> int:
    return int(V.check(order, "order", [ORDER]))


@V.validate_params({"k": [ORDER]}, valid=lambda: {"k": 2, "x": [0.0, 0.5]})
def chebyshev_T(k: int, x: Array) -> Array:
    r"""Values of the Chebyshev polynomial :math:`T_k(x)` (any real ``x``).

    Examples
    --------
    >>> chebyshev_T(2, [0.0, 0.5, 1.0])
    array([-1. , -0.5,  1. ])
    """
    return chebyshev_basis(k, x)[..., -1]


@V.validate_params({"order": [ORDER]}, valid=lambda: {"order": 2, "x": [0.0, 0.5]})
def chebyshev_basis(order: int, x: Array) -> Array:
    r"""Values :math:`T_0(x), \dots, T_K(x)` stacked on a new last axis.

    Shapes
    ------
    ``x``: any shape ``S`` → ``(*S, order + 1)``.

    Examples
    --------
    >>> chebyshev_basis(3, 0.5)
    array([ 1. ,  0.5, -0.5, -1. ])
    """
    order = int(order)
    x = B.as_array(x, "x")
    terms = [B.ones(tuple(x.shape), x), x]
    for _ in range(2, order + 1):
        terms.append(2 * x * terms[-1] - terms[-2])
    terms = terms[: order + 1]
    return B.xp(x).stack(terms, -1) if B.is_torch(x) else np.stack(terms, -1)


@V.validate_params({"order": [ORDER]}, valid=lambda: {"order": 3})
def jackson_damping(order: int) -> np.ndarray:
    r"""Jackson damping factors :math:`g_k` that suppress Gibbs oscillations.

    .. math::

        g_k = \frac{(K+2-k)\cos\frac{\pi k}{K+2} + \sin\frac{\pi k}{K+2}\cot\frac{\pi}{K+2}}{K+2}

    Examples
    --------
    >>> float(jackson_damping(3)[0])
    1.0
    """
    order = int(order)
    m = order + 2
    k = np.arange(order + 1)
    a = np.pi / m
    return ((m - k) * np.cos(k * a) + np.sin(k * a) / np.tan(a)) / m


@V.validate_params(
    {"h": ["callable"], "order": [ORDER], "lambda_max": [V.POS_REAL],
     "n_points": [V.POS_INT, None], "damping": [V.StrOptions({"jackson"}), None]},
    valid=lambda: {"h": lambda lam: 1 - lam, "order": 2},
)
def chebyshev_coefficients(
    h: Callable[[np.ndarray], np.ndarray],
    order: int,
    lambda_max: float = 2.0,
    n_points: int | None = None,
    damping: str | None = None,
) -> np.ndarray:
    r"""Chebyshev coefficients of :math:`h` on :math:`[0, \lambda_{max}]`.

    Computed by Chebyshev–Gauss quadrature on ``n_points`` nodes
    :math:`\theta_j = \pi (j + \tfrac12)/n`:

    .. math::

        c_k = \frac{2 - \delta_{k0}}{n} \sum_{j=0}^{n-1}
              h\Big(\tfrac{\lambda_{max}}{2}(\cos\theta_j + 1)\Big) \cos(k\theta_j).

    With ``n_points = order + 1`` (the default) this is the interpolant at the Chebyshev
    points, identical to :func:`numpy.polynomial.chebyshev.chebinterpolate`; more points give
    the truncated Chebyshev series. ``c_0`` follows numpy's convention (not halved; see the
    module docstring).

    Parameters
    ----------
    h : callable
        Vectorized scalar function of :math:`\lambda`.
    order : int
        Polynomial degree ``K``; ``K + 1`` coefficients are returned.
    lambda_max : float
        Upper end of the spectrum.
    n_points : int, optional
        Quadrature nodes (``>= order + 1``).
    damping : {None, "jackson"}
        Multiply by :func:`jackson_damping`.

    Examples
    --------
    >>> c = chebyshev_coefficients(lambda lam: 1 - lam, order=1)   # NL's response
    >>> np.round(c, 12) + 0.0
    array([ 0., -1.])
    """
    order, lambda_max = int(order), float(lambda_max)
    n = order + 1 if n_points is None else int(n_points)
    if n < order + 1:
        raise ValueError(f"n_points must be >= order + 1 = {order + 1}, got {n}")
    theta = np.pi * (np.arange(n) + 0.5) / n
    values = np.asarray(h(lambda_max / 2 * (np.cos(theta) + 1)), dtype=np.float64)
    if values.shape != theta.shape:
        raise ValueError(
            f"h must be a vectorized scalar function: h(array of shape {theta.shape}) returned "
            f"shape {values.shape}"
        )
    if not np.isfinite(values).all():
        raise ValueError("h returned NaN or Inf on [0, lambda_max]")
    c = 2.0 / n * np.cos(np.outer(np.arange(order + 1), theta)) @ values
    c[0] /= 2
    return c if damping is None else c * jackson_damping(order)


def _iter_terms(
    apply: Callable[[Array], Array], Z: Array, order: int, basis: str
) -> Iterator[Array]:
    order = _check_order(order)
    family = get_filter(basis)
    if family.kind != "polynomial":
        raise ValueError(
            f"basis {basis!r} is a {family.kind} filter: use graphfilters.filters "
            "(get_filter(basis).terms(GraphOperator, ...)), not the polynomial recursion"
        )
    return family.iter_terms(apply, Z, order)


def polynomial_terms(
    apply: Callable[[Array], Array], Z: Array, order: int, basis: str = "chebyshev"
) -> list[Array]:
    r"""The terms :math:`B_0(S)Z, \dots, B_K(S)Z` of a polynomial basis by its recursion
    (earlier name ``chebyshev_terms``, kept as a deprecated alias: the basis need not be
    Chebyshev's).

    ``basis="chebyshev"``: :math:`B_k = T_k`. ``basis="stable"``: Chebyshev polynomials
    under the stable hypothesis :math:`S^2 = S` (gSNL's 2019 code), which reduces every
    term to :math:`B_k = T_k(0) I + (1 - T_k(0)) S`, e.g. :math:`B_2 = 2S - I`.

    Parameters
    ----------
    apply : callable
        ``apply(X)`` returns :math:`S X` for ``X`` of shape ``(..., N, C)``.
    Z : array or tensor, shape ``(..., N, C)``
    order : int
        Polynomial degree ``K``.

    Examples
    --------
    >>> import numpy as np
    >>> S = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> terms = polynomial_terms(lambda X: S @ X, np.eye(2), 2)
    >>> terms[2]                       # T_2(S) = 2 S^2 - I = I
    array([[1., 0.],
           [0., 1.]])
    """
    return list(_iter_terms(apply, Z, order, basis))


def chebyshev_terms(apply: Callable[[Array], Array], Z: Array, order: int,
                    basis: str = "chebyshev") -> list[Array]:
    """Deprecated name of :func:`polynomial_terms` (``basis="monomial"`` returns monomials)."""
    import warnings

    warnings.warn("chebyshev_terms is now polynomial_terms (the basis need not be "
                  "Chebyshev's)", DeprecationWarning, stacklevel=external_stacklevel())
    return polynomial_terms(apply, Z, order, basis)


def _check_signal(Z: Array) -> Array:
    """The signal ``Z`` ``(..., N, C)``: an array, non-empty, finite."""
    Z = B.as_array(Z, "Z")
    if Z.ndim < 2:
        raise ValueError(f"Z must have shape (..., N, C), got shape {tuple(Z.shape)}")
    V.nonempty(Z, "Z")
    B.check_finite(Z, "Z")
    return Z


def _weight_list(weights: Sequence | Array) -> list:
    if B.is_torch(weights) or isinstance(weights, np.ndarray):
        if weights.ndim not in (1, 3):
            raise ValueError(
                "weights must have shape (K+1,) (scalars) or (K+1, C_in, C_out) (matrices), "
                f"got {tuple(weights.shape)}"
            )
        return [weights[k] for k in range(weights.shape[0])]
    weights = list(weights)
    if not weights:
        raise ValueError("weights must hold at least one term (order 0)")
    return weights


@V.validate_params({"apply": ["callable"], "basis": [V.InstanceOf(str, "a basis name")]},
                   valid=lambda: {"apply": lambda X: X, "Z": np.ones((2, 1)), "weights": [1.0]})
def polynomial_filter(
    apply: Callable[[Array], Array],
    Z: Array,
    weights: Sequence | Array,
    basis: str = "chebyshev",
) -> Array:
    r""":math:`\sum_{k=0}^{K} B_k(S)\, Z\, W_k` for an operator :math:`S` given as a callable.

    Parameters
    ----------
    apply : callable
        ``apply(X) = S X``.
    Z : (..., N, C_in)
    weights : sequence of length ``K + 1``
        Scalars, ``(C_in, C_out)`` matrices, or ``None`` for a dropped term; or an array of
        shape ``(K+1,)`` or ``(K+1, C_in, C_out)``.
    basis : {"chebyshev", "stable"}
        See :func:`polynomial_terms`.

    Shapes
    ------
    ``Z``: ``(..., N, C_in)`` → ``(..., N, C_out)`` (``C_out = C_in`` for scalar weights).

    Examples
    --------
    >>> import numpy as np
    >>> S = np.array([[0.5, 0.5], [0.5, 0.5]])
    >>> polynomial_filter(lambda X: S @ X, np.array([[1.0], [0.0]]), [0.0, 1.0])  # S Z
    array([[0.5],
           [0.5]])
    """
    Z = _check_signal(Z)
    ws = _weight_list(weights)
    for k, w in enumerate(ws):
        shape = tuple(getattr(w, "shape", ()))
        if len(shape) == 2 and shape[0] != Z.shape[-1]:
            raise ValueError(
                f"weights[{k}] must have shape (C_in, C_out) with C_in = {Z.shape[-1]} (the "
                f"channels of Z), got shape {shape}"
            )
    return filter_sum(_iter_terms(apply, Z, len(ws) - 1, basis), ws)


@V.validate_params({"lambda_max": [V.POS_REAL]},
                   valid=lambda: {"L": np.eye(2), "Z": np.ones((2, 1)), "weights": [1.0]})
def chebyshev_filter(
    L: Array | Callable[[Array], Array],
    Z: Array,
    weights: Sequence | Array,
    lambda_max: float = 2.0,
) -> Array:
    r"""The Chebyshev filter in Laplacian form, :math:`\sum_k T_k(2L/\lambda_{max} - I) Z W_k`.

    Parameters
    ----------
    L : array ``(..., N, N)`` or callable
        The Laplacian, or a function ``X -> L X`` (e.g. ``affinity.laplacian_matmul``).
    Z : (..., N, C_in)
    weights : see :func:`polynomial_filter`
    lambda_max : float
        Upper bound of the spectrum of ``L`` (2 for the normalized Laplacians).

    Examples
    --------
    >>> import numpy as np
    >>> L = np.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> chebyshev_filter(L, np.array([[1.0], [0.0]]), [0.0, 1.0])   # (L - I) Z
    array([[ 0.],
           [-1.]])
    """
    lambda_max = float(lambda_max)
    Z = _check_signal(Z)
    if callable(L):
        matmul = L
    else:
        L = B.check_square(L, "L")
        if Z.shape[-2] != L.shape[-1]:
            raise ValueError(
                f"Z must have shape (..., N, C) with N = {L.shape[-1]}, got {tuple(Z.shape)}"
            )

        def matmul(X: Array) -> Array:
            return L @ X

    scale = 2.0 / lambda_max
    return polynomial_filter(lambda X: scale * matmul(X) - X, Z, weights)


@V.validate_params({"h": ["callable"]},
                   valid=lambda: {"L": np.eye(2), "Z": np.ones((2, 1)), "h": lambda lam: lam})
def spectral_filter(L: Array, Z: Array, h: Callable[[Array], Array]) -> Array:
    r"""Exact filtering :math:`U\, h(\Lambda)\, U^T Z` through the eigendecomposition.

    The reference for :func:`chebyshev_filter`; ``L`` must be symmetric (``eigh``), and
    ``h`` is evaluated on the eigenvalues in the backend of ``L``.

    Examples
    --------
    >>> import numpy as np
    >>> L = np.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> spectral_filter(L, np.array([[1.0], [0.0]]), lambda lam: lam)   # = L Z
    array([[ 1.],
           [-1.]])
    """
    L = B.as_array(L, "L")
    if L.ndim >= 2 and L.shape[-1] == L.shape[-2] and L.shape[-1] > DENSE_LIMIT:
        raise ValueError(
            f"L: N = {L.shape[-1]} is too large for an exact eigendecomposition; use "
            "chebyshev_filter with chebyshev_coefficients(h, order) instead"
        )
    L = B.check_square(L, "L")
    Z = _check_signal(Z)
    if Z.shape[-2] != L.shape[-1]:
        raise ValueError(
            f"Z must have shape (..., N, C) with N = {L.shape[-1]}, got {tuple(Z.shape)}"
        )
    if not B.is_symmetric(L):
        raise ValueError(
            "spectral_filter needs a symmetric L (eigh); symmetrize the affinity or use "
            "chebyshev_filter for a polynomial filter"
        )
    if L.shape[-1] > DENSE_LIMIT:
        raise ValueError(
            f"N = {L.shape[-1]} is too large for an exact eigendecomposition; use "
            "chebyshev_filter with chebyshev_coefficients(h, order) instead"
        )
    lam, U = B.xp(L).linalg.eigh(L)
    return U @ (h(lam)[..., :, None] * (B.transpose(U) @ Z))
