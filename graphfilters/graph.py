r"""Graphs from affinities: degrees, Laplacians, normalization, :math:`\lambda_{max}`, operators.

An affinity :math:`A \in \mathbb{R}^{N \times N}` between N positions is read as the adjacency
of a weighted graph. Conventions (see the docs page "Design and conventions", docs/design.md):

- degree :math:`d_i = \sum_j A_{ij}` (row sums); where :math:`d_i = 0` the inverse and the
  inverse square root are 0 (an isolated node), never NaN;
- :math:`\operatorname{sym}(M) = (M + M^T)/2`;
- Laplacians: combinatorial :math:`L = D - A`, symmetric
  :math:`L_{sym} = I - D^{-1/2} A D^{-1/2}`, random walk :math:`L_{rw} = I - D^{-1} A`.

Every function takes numpy arrays or torch tensors (batched ``(..., N, N)``; torch stays on its
device and is differentiable) and returns the same kind.

Structured affinities (:class:`LowRankAffinity`, :class:`SoftmaxAffinity`,
:class:`SumAffinity`) give degrees, normalized products and spectra without forming the
``N x N`` matrix; :class:`DenseAffinity` has the same interface for the matrices users inspect.

Examples
--------
>>> import numpy as np
>>> from graphfilters.graph import LowRankAffinity, laplacian
>>> rng = np.random.default_rng(0)
>>> P, Q = rng.random((500, 4)), rng.random((500, 4))
>>> op = LowRankAffinity(P, Q, symmetric=True)
>>> lam = op.laplacian_eigvals("sym")          # exact, no 500 x 500 matrix
>>> bool(lam.min() > -1e-12 and lam.max() < 2 + 1e-12)
True
>>> np.allclose(lam, np.linalg.eigvalsh(laplacian(op.dense(), "sym")))
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import torch

from . import _backend as B
from . import _validate as V
from . import spectral as S
from ._backend import Array
from ._warnings import external_stacklevel
from .spectral import DENSE_LIMIT

__all__ = [
    "DENSE_LIMIT",
    "LAPLACIAN_KINDS",
    "NORMALIZATION_KINDS",
    "degrees",
    "symmetrize",
    "inv_degree_power",
    "laplacian",
    "normalized_affinity",
    "lambda_max",
    "Affinity",
    "DenseAffinity",
    "LowRankAffinity",
    "SoftmaxAffinity",
    "SumAffinity",
    "NormalizedOperator",
    "as_affinity",
]

LAPLACIAN_KINDS = ("combinatorial", "sym", "rw")
NORMALIZATION_KINDS = ("sym", "rw", "size", "none")
LAMBDA_MAX_METHODS = ("exact", "lanczos", "power", "bound")


def _check_kind(kind: str, allowed: tuple[str, ...], what: str) -> str:
    return V.choice(kind, allowed, what)


def _structured_hint(op: Affinity) -> str:
    """What to use instead of a dense eigen-solve of ``op``."""
    if op.has_exact_spectrum:
        return ("use the 'sym' or 'rw' Laplacian (exact structured spectrum of this "
                f"{type(op).__name__}) or method='lanczos'")
    return "use lambda_max(..., method='lanczos'), 'power' or 'bound'"


# --------------------------------------------------------------------------------------------
# Functions on dense affinities
# --------------------------------------------------------------------------------------------


@V.validate_params({"A": ["array-like"]}, valid=lambda: {"A": np.ones((3, 3))})
def degrees(A: Array) -> Array:
    r"""Degrees :math:`d_i = \sum_j A_{ij}` (row sums).

    Shapes
    ------
    ``A``: ``(..., N, N)`` → ``(..., N)``.

    Examples
    --------
    >>> degrees([[0.0, 1.0], [1.0, 0.0]])
    array([1., 1.])
    """
    A = B.check_square(A)
    return V.downcast(V.upcast(A).sum(-1), A, "A", "degrees (row sums)")


@V.validate_params({"A": ["array-like"]}, valid=lambda: {"A": np.ones((3, 3))})
def symmetrize(A: Array) -> Array:
    r""":math:`\operatorname{sym}(A) = (A + A^T)/2`.

    Examples
    --------
    >>> symmetrize([[0.0, 2.0], [0.0, 0.0]])
    array([[0., 1.],
           [1., 0.]])
    """
    A = B.check_square(A)
    return (A + B.transpose(A)) / 2


@V.validate_params({"d": ["array-like"], "power": [V.REAL]},
                   valid=lambda: {"d": np.ones(3), "power": 0.5})
def inv_degree_power(d: Array, power: float) -> Array:
    r""":math:`d^{-p}` elementwise, with 0 where :math:`d = 0` (isolated nodes).

    Gradients are finite everywhere (no ``inf * 0``). Degrees within a few ulps of zero
    count as zero.

    Raises
    ------
    ValueError
        If a degree is negative: :math:`D^{-p}` needs non-negative weights.

    Examples
    --------
    >>> inv_degree_power([4.0, 0.0], 0.5)
    array([0.5, 0. ])
    """
    power = float(power)
    d = B.as_array(d, "d")
    B.check_finite(d, "d")
    if d.ndim == 0 or d.shape[-1] == 0 or any(s == 0 for s in d.shape):
        return d
    scale = B.scalar(abs(d).max())
    tol = 64 * B.eps(d) * max(scale, 1e-300)
    low = d < -tol
    if bool(low.any()):
        i = int(B.to_numpy(low).reshape(-1, d.shape[-1]).any(0).argmax())
        raise ValueError(
            f"d has a negative degree {B.scalar(d.min()):.3g} (node {i}): D^(-{power:g}) needs "
            "non-negative affinity weights. Use a non-negative kernel (relu_dot, softmax) or "
            "the 'size'/'none' normalization."
        )
    pos = d > tol
    safe = B.where(pos, d, 1.0)
    return B.where(pos, safe ** (-power), 0.0)


@V.validate_params({"A": ["array-like"], "kind": [V.StrOptions(LAPLACIAN_KINDS)]},
                   valid=lambda: {"A": np.ones((3, 3))})
def laplacian(A: Array, kind: str = "sym") -> Array:
    r"""Graph Laplacian of the affinity ``A``.

    .. math::

        L = D - A, \qquad L_{sym} = I - D^{-1/2} A D^{-1/2}, \qquad L_{rw} = I - D^{-1} A.

    Parameters
    ----------
    A : array or tensor, shape ``(..., N, N)``
    kind : {"combinatorial", "sym", "rw"}

    Examples
    --------
    >>> laplacian([[0.0, 1.0], [1.0, 0.0]], "combinatorial")
    array([[ 1., -1.],
           [-1.,  1.]])
    """
    return as_affinity(A).laplacian_dense(kind)


@V.validate_params({"A": ["array-like"], "kind": [V.StrOptions(NORMALIZATION_KINDS)]},
                   valid=lambda: {"A": np.ones((3, 3))})
def normalized_affinity(A: Array, kind: str = "sym") -> Array:
    r"""The normalized affinity :math:`\hat A`.

    ``"sym"``: :math:`D^{-1/2} A D^{-1/2}`; ``"rw"``: :math:`D^{-1} A`;
    ``"size"``: :math:`A / N`; ``"none"``: ``A``.

    Examples
    --------
    >>> normalized_affinity([[1.0, 1.0], [1.0, 3.0]], "rw")
    array([[0.5 , 0.5 ],
           [0.25, 0.75]])
    """
    return as_affinity(A).normalized(kind).dense()


@V.validate_params(
    {"A": ["array-like", V.InstanceOf(lambda: Affinity, "an Affinity")],
     "laplacian": [V.StrOptions(LAPLACIAN_KINDS)],
     "method": [V.StrOptions(LAMBDA_MAX_METHODS)],
     "n_iter": [V.POS_INT], "tol": [V.POS_REAL], "seed": [V.NONNEG_INT],
     "margin": [V.NONNEG_REAL]},
    valid=lambda: {"A": np.ones((3, 3)), "method": "power"},
)
def lambda_max(
    A: Array | Affinity,
    laplacian: str = "sym",
    method: str = "exact",
    *,
    n_iter: int = 1000,
    tol: float = 1e-6,
    seed: int = 0,
    margin: float = 0.0,
) -> Array:
    r"""Largest eigenvalue modulus of the Laplacian of ``A``, the :math:`\lambda_{max}` of
    the Chebyshev rescaling :math:`\tilde L = 2L/\lambda_{max} - I`.

    Methods
    -------
    ``"exact"``
        Dense eigendecomposition (``eigvalsh`` when symmetric), or the exact structured
        spectrum for a :class:`LowRankAffinity` with a normalized Laplacian.
    ``"lanczos"``
        scipy ``eigsh`` (symmetric) or ``eigs`` (general) on a matrix-free operator.
    ``"power"``
        Power iteration on :math:`L` until the relative residual
        :math:`\|Lx - \theta x\|/|\theta|` is at most ``tol`` (default ``1e-6``); a
        :class:`~graphfilters.spectral.ConvergenceWarning` when ``n_iter`` steps do not
        reach it (power iteration approaches :math:`\lambda_{max}` from below).
    ``"bound"``
        No eigen-solve: 2 for ``sym`` and ``rw`` (any non-negative affinity), and for the
        combinatorial Laplacian the Gershgorin-type bound

        .. math::

            \lambda_{max} \le \max_i \Big(|L_{ii}| + \sum_{j \ne i} |L_{ij}|\Big)
            \le \max_i \Big(|d_i| + \sum_j |A_{ij}|\Big),

        which is :math:`2 \max_i d_i` for a non-negative affinity with zero diagonal.

    Parameters
    ----------
    margin : float
        Safety margin: the estimate is multiplied by ``1 + margin`` (PyGSP's
        ``estimate_lmax`` uses 0.01), so that an iterative estimate is an upper bound.

    Notes
    -----
    Half-precision inputs are computed in float32 and the result is float32.
    A dense request above :data:`DENSE_LIMIT` is refused before any allocation, naming
    the structured alternative.

    Returns
    -------
    float array or tensor of shape ``A.shape[:-2]`` (same backend as ``A``).

    Examples
    --------
    >>> A = [[0.0, 1.0], [1.0, 0.0]]
    >>> float(lambda_max(A, "combinatorial")), float(lambda_max(A, "combinatorial", "bound"))
    (2.0, 2.0)
    """
    n_iter, tol, seed, margin = int(n_iter), float(tol), int(seed), float(margin)
    if not isinstance(A, Affinity) and method == "exact":
        shape = getattr(A, "shape", None) or np.shape(A)
        if len(shape) >= 2:     # a dense request too large: refused before the NaN scan
            S.check_dense_size(int(shape[-1]), "lambda_max(..., method='exact')",
                               "use method='lanczos', 'power' or 'bound'")
    op = as_affinity(A)
    op.require_square()
    if op.n == 0:
        raise ValueError("A has no nodes (N = 0): lambda_max is undefined")
    if op.is_torch and op.dtype in V.HALF_DTYPES:
        op = op._map(lambda x: x.float())
    if method == "bound":
        if laplacian in ("sym", "rw"):
            return op._full(op.batch_shape, 2.0)
        return B.amax(abs(op.degrees()) + op.abs_row_sums(), -1)
    if method == "exact":
        if not (op.has_exact_spectrum and laplacian in ("sym", "rw")):
            S.check_dense_size(op.n, "lambda_max(..., method='exact')", _structured_hint(op))
        out = B.amax(abs(op.laplacian_eigvals(laplacian)), -1)
    elif method == "power":
        out = _power_lambda_max(op, laplacian, n_iter, tol, seed)
    else:
        out = _lanczos_lambda_max(op, laplacian, tol, seed)
    return out * (1 + margin) if margin else out


def _power_lambda_max(op: Affinity, kind: str, n_iter: int, tol: float, seed: int) -> Array:
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((*op.batch_shape, op.n, 1))
    x = torch.as_tensor(x0, dtype=op.dtype, device=op.device) if op.is_torch else x0.astype(
        op.dtype
    )
    symmetric = op.operator_symmetric(kind, laplacian=True)
    est, _, _ = S.power_extreme(lambda v: op.laplacian_matmul(v, kind), x, n_iter=n_iter,
                                tol=tol, symmetric=symmetric)
    return est


def _lanczos_lambda_max(op: Affinity, kind: str, tol: float, seed: int) -> Array:
    values = []
    for idx in np.ndindex(*op.batch_shape):
        single = op.select(idx)
        symmetric = single.operator_symmetric(kind, laplacian=True)
        if op.n < 8:
            values.append(float(abs(single.numpy().laplacian_eigvals(kind)).max()))
            continue
        lin = single.as_linear_operator(laplacian=kind)
        res = S.arpack_extremes(lin, 1, symmetric=symmetric, which=("LM",),
                                tol=min(tol, 1e-8), seed=seed)
        if not res.certified:
            import warnings

            warnings.warn(f"lambda_max (lanczos): relative residual {res.residuals.max():.1e} "
                          f"above tol = {tol:g}", S.ConvergenceWarning,
                          stacklevel=external_stacklevel())
        values.append(float(np.abs(res.values).max()))
    out = np.asarray(values, dtype=np.float64).reshape(op.batch_shape)
    if op.is_torch:
        return torch.as_tensor(out, dtype=op.dtype, device=op.device)
    return out


# --------------------------------------------------------------------------------------------
# Affinity structures
# --------------------------------------------------------------------------------------------


class Affinity:
    """Interface shared by every affinity structure.

    An affinity represents a (batched) matrix :math:`M` of shape ``(..., N, N)`` without
    necessarily storing it. Subclasses implement :meth:`degrees`, :meth:`matmul`,
    :meth:`dense` and :meth:`abs_row_sums`; spectra, normalization, Laplacians and scipy
    operators are derived here once.
    """

    #: names of the array attributes, used by :meth:`select` and :meth:`numpy`
    _fields: tuple[str, ...] = ()
    #: attributes that cache facts about the arrays (reset by :meth:`concat`)
    _caches: tuple[str, ...] = ()
    row_stochastic: bool = False
    #: products cost O(N^2) per call whatever the number of vectors (softmax, dense): block
    #: solvers and a stored copy pay off (see :mod:`graphfilters.spectral`)
    expensive_products: bool = False
    #: an exact spectrum without the N x N matrix (:meth:`eigvals` of a low-rank structure)
    has_exact_spectrum: bool = False

    # -- operator protocol (what analysis code asks of any structure) -----------------------
    def rows(self, start: int, stop: int) -> Array:
        """Rows ``start:stop`` of :math:`M`, shape ``(..., stop - start, N)``; a structure
        overrides this to avoid the whole matrix."""
        return self.dense()[..., start:stop, :]

    def tile(self, rows: slice, cols: slice) -> Array:
        """The block ``M[rows, cols]`` (one sample)."""
        return self.rows(rows.start or 0, min(rows.stop, self.n))[..., cols]

    def nonnegative(self) -> bool:
        """Whether every entry of :math:`M` is known to be >= 0 (row-stochastic structures,
        non-negative factors or entries)."""
        return bool(self.row_stochastic)

    @property
    def has_rows(self) -> bool:
        """Whether :meth:`rows`/:meth:`tile` avoid the whole matrix (the structure
        implements them)."""
        return type(self).rows is not Affinity.rows

    # -- to implement -------------------------------------------------------------------
    def degrees(self) -> Array:  # pragma: no cover - abstract
        """Row sums :math:`d = M \\mathbf{1}`, shape ``(..., N)``."""
        raise NotImplementedError

    def matmul(self, Z: Array) -> Array:  # pragma: no cover - abstract
        """:math:`M Z` for ``Z`` of shape ``(..., N, C)``."""
        raise NotImplementedError

    def dense(self) -> Array:  # pragma: no cover - abstract
        """The matrix :math:`M`, shape ``(..., N, N)``."""
        raise NotImplementedError

    def abs_row_sums(self) -> Array:  # pragma: no cover - abstract
        r"""Upper bound of :math:`\sum_j |M_{ij}|` per row (exact for dense)."""
        raise NotImplementedError

    @property
    def symmetric(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shape and backend ---------------------------------------------------------------
    @property
    def _first(self) -> Array:
        return getattr(self, self._fields[0])

    @property
    def is_torch(self) -> bool:
        return B.is_torch(self._first)

    @property
    def dtype(self):
        return self._first.dtype

    @property
    def device(self):
        return self._first.device if self.is_torch else None

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self._first.shape[:-2])

    @property
    def n(self) -> int:
        """Number of nodes ``N`` (rows)."""
        return int(self._first.shape[-2])

    @property
    def n_cols(self) -> int:
        """Number of columns (equals :attr:`n` except for sub-sampled keys)."""
        return self.n

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.batch_shape, self.n, self.n_cols)

    def _full(self, shape: tuple[int, ...], value: float) -> Array:
        if self.is_torch:
            return torch.full(shape, value, dtype=self.dtype, device=self.device)
        return np.full(shape, value, dtype=self.dtype)

    def _map(self, fn: Callable[[Array], Array]) -> Affinity:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for name in self._fields:
            setattr(new, name, fn(getattr(self, name)))
        return new

    def map_fields(self, fn: Callable[[Array], Array]) -> Affinity:
        """The same structure with ``fn`` applied to every stored array (dtype or device
        conversion, slicing the batch)."""
        return self._map(fn)

    def concat(self, others: Sequence[Affinity]) -> Affinity:
        """This affinity and ``others`` stacked along the first batch axis.

        Affinities of the same type and settings keep their structure (the stored arrays
        are concatenated, cached facts recomputed); otherwise the dense matrices are stacked
        into a :class:`DenseAffinity`.

        Examples
        --------
        >>> import torch
        >>> a = LowRankAffinity(torch.rand(1, 5, 2), torch.rand(1, 5, 2))
        >>> b = a.concat([a, a])
        >>> type(b).__name__, b.batch_shape
        ('LowRankAffinity', (3,))
        """
        parts = [self, *others]
        settings = self._settings()
        if self._fields and all(type(p) is type(self) and p._settings() == settings
                                for p in parts):
            new = self._map(lambda x: x)
            for name in self._fields:
                arrays = [getattr(p, name) for p in parts]
                setattr(new, name, torch.cat(arrays, 0) if self.is_torch
                        else np.concatenate(arrays, 0))
            for name in self._caches:
                setattr(new, name, None)
            return new
        dense = [p.dense() for p in parts]
        return DenseAffinity(torch.cat([torch.as_tensor(d) for d in dense], 0) if self.is_torch
                             else np.concatenate([B.to_numpy(d) for d in dense], 0))

    def _settings(self) -> dict[str, Any]:
        skip = set(self._fields) | set(self._caches)
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def require_square(self) -> None:
        """Raise ``ValueError`` unless the affinity is ``N x N`` (a graph)."""
        if self.n != self.n_cols:
            raise ValueError(
                f"this affinity is {self.n} x {self.n_cols} (sub-sampled keys): graph "
                "Laplacians and spectra need a square affinity"
            )

    def select(self, index: int | tuple[int, ...]) -> Affinity:
        """The affinity of one sample of the batch (itself for the empty index ``()``)."""
        if index == ():
            return self
        return self._map(lambda x: x[index])

    def operator_symmetric(self, kind: str, laplacian: bool = False) -> bool:
        """Whether the normalized operator (or, with ``laplacian=True``, the Laplacian) of
        kind ``kind`` is symmetric: ``sym``/``size``/``none`` (``combinatorial``/``sym``)
        of a symmetric affinity; ``rw`` of a non-regular graph is not."""
        allowed = ("combinatorial", "sym") if laplacian else ("sym", "size", "none")
        return self.symmetric and kind in allowed

    def numpy(self) -> Affinity:
        """A detached numpy float64 copy."""
        return self._map(lambda x: B.to_numpy(x).astype(np.float64))

    def detach(self) -> Affinity:
        """A copy without autograd history (torch); itself for numpy."""
        return self._map(lambda x: x.detach()) if self.is_torch else self

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, symmetric={self.symmetric}, "
            f"backend={'torch' if self.is_torch else 'numpy'})"
        )

    def _repr_html_(self) -> str:
        from .display import affinity_items, card_html

        return card_html(type(self).__name__, affinity_items(self))

    # -- derived operations ------------------------------------------------------------
    def normalized(self, kind: str = "sym") -> NormalizedOperator:
        """The normalized operator :math:`\\hat A` (see :func:`normalized_affinity`)."""
        return NormalizedOperator(self, kind)

    def eigvals(self, kind: str | None = None, nonzero: bool = False) -> Array:
        """Exact eigenvalues of :math:`M` (``kind=None``) or of its normalized form.

        Real and ascending for symmetric operators, complex otherwise.
        """
        return self.normalized(kind or "none").eigvals(nonzero=nonzero)

    def laplacian_matmul(self, X: Array, kind: str = "sym") -> Array:
        """:math:`L X` for the Laplacian ``kind`` without forming it."""
        _check_kind(kind, LAPLACIAN_KINDS, "laplacian")
        self.require_square()
        X = check_signal(X, self.n, "X")
        if kind == "combinatorial":
            return self.degrees()[..., None] * X - self.matmul(X)
        return X - self.normalized(kind)(X)

    def laplacian_dense(self, kind: str = "sym") -> Array:
        """The dense Laplacian ``(..., N, N)``."""
        _check_kind(kind, LAPLACIAN_KINDS, "laplacian")
        self.require_square()
        if kind == "combinatorial":
            d = self.degrees()
            return d[..., None] * B.eye(self.n, d) - self.dense()
        Ahat = self.normalized(kind).dense()
        return B.eye(self.n, Ahat) - Ahat

    def laplacian_eigvals(self, kind: str = "sym") -> Array:
        """Exact Laplacian eigenvalues (real ascending when symmetric, complex otherwise).

        For ``sym``/``rw`` these are :math:`1 - \\mu` for the eigenvalues :math:`\\mu` of
        :math:`\\hat A`, so structured spectra carry over.
        """
        _check_kind(kind, LAPLACIAN_KINDS, "laplacian")
        self.require_square()
        if kind == "combinatorial":
            S.check_dense_size(self.n, "the combinatorial Laplacian spectrum",
                               _structured_hint(self))
            L = self.laplacian_dense(kind)
            return _dense_eigvals(L, self.symmetric)
        mu = self.eigvals(kind)
        lam = 1 - mu
        if not B.is_torch(lam) and np.isrealobj(lam):
            return np.sort(lam, axis=-1)
        if B.is_torch(lam) and not lam.is_complex():
            return torch.sort(lam, dim=-1).values
        return lam

    def as_linear_operator(
        self, kind: str | None = None, *, laplacian: str | None = None, index: int = 0
    ) -> spla.LinearOperator:
        """A scipy ``LinearOperator`` (float64, one sample) for matrix-free solvers.

        Parameters
        ----------
        kind : str, optional
            Normalization (``sym``, ``rw``, ``size``, ``none``); ``None`` gives :math:`M`.
        laplacian : str, optional
            If given, the operator is that Laplacian instead.
        index : int
            Sample of the batch.
        """
        batch = self.batch_shape
        idx = index if isinstance(index, tuple) else (index,)
        if batch and (len(idx) > len(batch) or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool) and -b <= i < b
                for i, b in zip(idx, batch))):
            raise ValueError(f"index {index!r} is outside the batch of shape {batch}")
        single = self.select(index) if batch else self
        single = single.numpy()
        if laplacian is not None:
            single.require_square()

            def mv(x: np.ndarray) -> np.ndarray:
                return single.laplacian_matmul(x.reshape(-1, 1), laplacian).ravel()
            shape = (single.n, single.n)
        else:
            op = single.normalized(kind or "none")

            def mv(x: np.ndarray) -> np.ndarray:
                return op(x.reshape(-1, 1)).ravel()
            shape = (single.n, single.n_cols)
        return spla.LinearOperator(shape, matvec=mv, dtype=np.float64)


def _dense_eigvals(M: Array, symmetric: bool) -> Array:
    S.check_dense_size(M.shape[-1], "eigenvalues", "use LowRankAffinity for low-rank "
                       "affinities (exact structured spectrum), lambda_max(..., "
                       "method='lanczos'), or analysis.spectra's matrix-free methods")
    return S.dense_eigvals(M, symmetric)


def check_signal(Z: Array, n: int, name: str = "Z") -> Array:
    Z = B.as_array(Z, name)
    if Z.ndim < 2 or Z.shape[-2] != n:
        raise ValueError(
            f"{name} must have shape (..., N, C) with N = {n} nodes, got shape {tuple(Z.shape)}"
        )
    return Z


class DenseAffinity(Affinity):
    """A stored (batched) affinity matrix ``(..., N, N)``.

    Examples
    --------
    >>> op = DenseAffinity([[0.0, 1.0], [1.0, 0.0]])
    >>> op.normalized("sym").eigvals()
    array([-1.,  1.])
    """

    _fields = ("A",)
    _caches = ("_symmetric",)
    expensive_products = True

    def __init__(self, A: Array, *, check: bool = True) -> None:
        if check:
            A = B.as_array(A, "A")
            if A.ndim < 2:
                raise ValueError(
                    f"A must have shape (..., N, M), got shape {tuple(A.shape)}"
                )
            V.nonempty(A, "A")
            B.check_finite(A, "A")
        self.A = A
        self._symmetric: bool | None = None

    @property
    def n_cols(self) -> int:
        return int(self.A.shape[-1])

    @property
    def symmetric(self) -> bool:
        if self.n != self.n_cols:
            return False
        if self._symmetric is None:
            self._symmetric = B.is_symmetric(self.A)
        return self._symmetric

    def degrees(self) -> Array:
        return V.downcast(V.upcast(self.A).sum(-1), self.A, "A", "degrees (row sums)")

    def matmul(self, Z: Array) -> Array:
        return self.A @ check_signal(Z, self.n_cols)

    def dense(self) -> Array:
        return self.A

    def rows(self, start: int, stop: int) -> Array:
        return self.A[..., start:stop, :]

    def nonnegative(self) -> bool:
        return bool((self.A >= 0).all())

    def abs_row_sums(self) -> Array:
        return abs(self.A).sum(-1)


class LowRankAffinity(Affinity):
    r"""The affinity :math:`M = P Q^T` or, if ``symmetric``, :math:`\operatorname{sym}(PQ^T)
    = (PQ^T + QP^T)/2`, never formed.

    Degrees :math:`(P(Q^T\mathbf 1) + Q(P^T \mathbf 1))/2`, products
    :math:`(P(Q^TZ) + Q(P^TZ))/2` and the exact nonzero spectrum (from a
    :math:`2r \times 2r` problem, via a QR factorization of :math:`[P, Q]`) cost
    :math:`O(N r C)` and :math:`O(N r^2)`.

    Shapes
    ------
    ``P``, ``Q``: ``(..., N, r)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> P, Q = rng.random((6, 2)), rng.random((6, 2))
    >>> op = LowRankAffinity(P, Q, symmetric=True)
    >>> np.allclose(op.dense(), (P @ Q.T + Q @ P.T) / 2)
    True
    >>> op.eigvals(nonzero=True).shape      # 2r eigenvalues carry every nonzero one
    (4,)
    """

    _fields = ("P", "Q")
    _caches = ("_stacked",)
    has_exact_spectrum = True

    def __init__(self, P: Array, Q: Array, symmetric: bool = False, *, check: bool = True) -> None:
        P, Q = B.as_array(P, "P"), B.as_array(Q, "Q")
        # Q may have M != N rows (sub-sampled keys: an N x M affinity) unless symmetric.
        if (
            P.ndim < 2
            or P.ndim != Q.ndim
            or P.shape[:-2] != Q.shape[:-2]
            or P.shape[-1] != Q.shape[-1]
            or (symmetric and P.shape != Q.shape)
        ):
            raise ValueError(
                "low-rank factors P and Q must have the same shape (..., N, r) (or Q "
                "(..., M, r) for M sub-sampled keys, when not symmetric), got "
                f"{tuple(P.shape)} and {tuple(Q.shape)}"
            )
        if check:  # check=False: factors already validated (one pass less per forward)
            V.nonempty(P, "P")
            V.nonempty(Q, "Q")
            B.check_finite(P, "P")
            B.check_finite(Q, "Q")
        self.P, self.Q = P, Q
        self._sym = bool(symmetric)
        self._stacked: tuple[Array, Array, Array] | None = None   # ([P, Q], P, Q)

    @classmethod
    def from_stacked(cls, U: Array, rank: int, symmetric: bool = False, *,
                     check: bool = True) -> LowRankAffinity:
        r"""The affinity of the stacked factors ``U = [P, Q]`` ``(..., N, 2r)``: ``P`` and
        ``Q`` are views of ``U`` (no copy), and the symmetric products and degrees run as
        one product with ``U`` instead of one with each factor.

        Examples
        --------
        >>> import numpy as np
        >>> U = np.random.default_rng(0).random((5, 4))
        >>> op = LowRankAffinity.from_stacked(U, 2, symmetric=True)
        >>> np.allclose(op.dense(), (U[:, :2] @ U[:, 2:].T + U[:, 2:] @ U[:, :2].T) / 2)
        True
        """
        U = B.as_array(U, "U")
        r = int(rank)
        if U.ndim < 2 or U.shape[-1] != 2 * r or r < 1:
            raise ValueError(
                f"stacked factors U = [P, Q] must have shape (..., N, 2r) with r = {rank!r}, "
                f"got shape {tuple(U.shape)}"
            )
        new = cls(U[..., :r], U[..., r:], symmetric=symmetric, check=check)
        new._stacked = (U, new.P, new.Q)
        return new

    @property
    def stacked(self) -> Array:
        r"""``[P, Q]`` ``(..., N, 2r)``: a view when the factors were given stacked
        (:meth:`from_stacked`), else a concatenation."""
        U = self._stacked_view()
        if U is not None:
            return U
        return (torch.cat if self.is_torch else np.concatenate)([self.P, self.Q], -1)

    def _fast_stacked(self) -> Array | None:
        """The stacked ``[P, Q]`` of symmetric factors computed in their own dtype (not half
        precision, which goes through :meth:`_factors`), else ``None``."""
        U = self._stacked_view() if self._sym else None
        return U if U is not None and V.upcast(U) is U else None

    def _stacked_view(self) -> Array | None:
        """The stacked ``[P, Q]`` if ``P`` and ``Q`` are still its two halves."""
        st = self._stacked
        if st is None or st[1] is not self.P or st[2] is not self.Q:
            return None
        return st[0]

    def _map(self, fn: Callable[[Array], Array]) -> Affinity:
        U = self._stacked_view()
        if U is None:
            new = super()._map(fn)
            new._stacked = None
            return new
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        r = self.P.shape[-1]
        mapped = fn(U)
        new.P, new.Q = mapped[..., :r], mapped[..., r:]
        new._stacked = (mapped, new.P, new.Q)
        return new

    @property
    def symmetric(self) -> bool:
        return self._sym

    @property
    def n_cols(self) -> int:
        return int(self.Q.shape[-2])

    @property
    def rank(self) -> int:
        """Upper bound of the rank (``2r`` when symmetrized)."""
        return int(self.P.shape[-1]) * (2 if self._sym else 1)

    def symmetrized(self) -> LowRankAffinity:
        r""":math:`\operatorname{sym}(PQ^T)` as a low-rank affinity."""
        self.require_square()
        U = self._stacked_view()
        if U is not None:
            return LowRankAffinity.from_stacked(U, self.P.shape[-1], symmetric=True, check=False)
        return LowRankAffinity(self.P, self.Q, symmetric=True, check=False)

    def _factors(self) -> tuple[Array, Array]:
        """``P, Q`` in their compute dtype (float32 for half-precision factors)."""
        return V.upcast(self.P), V.upcast(self.Q)

    def _half(self, out: Array, what: str) -> Array:
        """``out`` back in a half-precision factor's dtype, refusing an overflow."""
        return V.downcast(out, self.P, "the low-rank factors (P, Q; a kernel's theta, phi)",
                          what)

    def degrees(self) -> Array:
        U = self._fast_stacked()
        if U is not None:      # [P, Q] [Q^T 1; P^T 1] / 2: one product
            w = _swap_halves(U.sum(-2), self.P.shape[-1], -1) / 2
            # as (w^T U^T)^T: the gradient of U comes out in U^T's (the projection's) layout
            return (w[..., None, :] @ B.transpose(U))[..., 0, :]
        P, Q = self._factors()
        d = P @ Q.sum(-2)[..., None]
        if self._sym:
            d = (d + Q @ P.sum(-2)[..., None]) / 2
        return self._half(d[..., 0], "degrees (row sums)")

    def matmul(self, Z: Array) -> Array:
        Z = check_signal(Z, self.n_cols)
        return self._matmul(Z)[0]

    def _matmul(self, Z: Array, W: Array | None = None) -> tuple[Array, Array | None]:
        """``(M Z, T)``; ``T`` is the small reduction ``[P, Q]^T Z`` ``(..., 2r, C)`` of the
        stacked symmetric product, else ``Q^T Z`` ``(..., r, C)``: every entry of it sums over
        all rows of ``Z``.

        With ``W`` ``(C, C_out)`` (stacked symmetric factors only): ``((M Z W)^T, T)``, the
        ``(..., C_out, N)`` product with ``W`` folded into the ``2r x C_out`` factor."""
        U = self._fast_stacked()
        if U is not None:      # [P, Q] [Q^T Z; P^T Z] / 2: two products instead of four
            T = B.transpose(U) @ Z
            Mt = B.transpose(_swap_halves(T, self.P.shape[-1], -2) / 2)
            if W is not None:
                Mt = B.transpose(W) @ Mt
                return Mt @ B.transpose(U), T
            # as (M^T U^T)^T: U^T is the layout blocks store (channels first), and so are the
            # result and the gradient of U (no transposed copies in backward)
            return B.transpose(Mt @ B.transpose(U)), T
        if W is not None:
            raise ValueError("a weighted product needs stacked symmetric factors")
        P, Q = self._factors()
        Zc = V.upcast(Z)
        T = B.transpose(Q) @ Zc
        out = P @ T
        if self._sym:
            out = (out + Q @ (B.transpose(P) @ Zc)) / 2
        return self._half(out, "product A Z"), T

    def dense(self) -> Array:
        P, Q = self._factors()
        M = P @ B.transpose(Q)
        return self._half((M + B.transpose(M)) / 2 if self._sym else M, "largest entry")

    def rows(self, start: int, stop: int) -> Array:
        P, Q = self._factors()
        M = P[..., start:stop, :] @ B.transpose(Q)
        if self._sym:
            M = (M + Q[..., start:stop, :] @ B.transpose(P)) / 2
        return self._half(M, "largest entry")

    def tile(self, rows: slice, cols: slice) -> Array:
        P, Q = self._factors()
        M = P[..., rows, :] @ B.transpose(Q[..., cols, :])
        if self._sym:
            M = (M + Q[..., rows, :] @ B.transpose(P[..., cols, :])) / 2
        return self._half(M, "largest entry")

    def nonnegative(self) -> bool:
        return self.row_stochastic or (bool((self.P >= 0).all()) and bool((self.Q >= 0).all()))

    def abs_row_sums(self) -> Array:
        aP, aQ = abs(self.P), abs(self.Q)
        s = aP @ aQ.sum(-2)[..., None]
        if self._sym:
            s = (s + aQ @ aP.sum(-2)[..., None]) / 2
        return s[..., 0]

    def scaled(self, left: Array | None, right: Array | None) -> LowRankAffinity:
        r""":math:`\operatorname{diag}(l)\, M \operatorname{diag}(r)` as a low-rank affinity."""
        P, Q = self.P, self.Q
        U = self._stacked_view() if self._sym and left is right else None
        if U is not None:
            sU = U if left is None else left[..., None] * U
            return LowRankAffinity.from_stacked(sU, P.shape[-1], symmetric=True, check=False)
        lP = P if left is None else left[..., None] * P
        rQ = Q if right is None else right[..., None] * Q
        if not self._sym:
            return LowRankAffinity(lP, rQ, check=False)
        if left is right:      # derived from checked factors and scales: no second scan
            return LowRankAffinity(lP, rQ, symmetric=True, check=False)
        lQ = Q if left is None else left[..., None] * Q
        rP = P if right is None else right[..., None] * P
        cat = torch.cat if self.is_torch else np.concatenate
        return LowRankAffinity(cat([lP, lQ], -1) / 2, cat([rQ, rP], -1), check=False)

    def _structured_eigvals(self, left: Array | None, right: Array | None,
                            nonzero: bool) -> Array:
        r"""Exact eigenvalues of :math:`\operatorname{diag}(l) M \operatorname{diag}(r)`."""
        return self.scaled(left, right)._eigvals(nonzero)

    def _eigvals(self, nonzero: bool) -> Array:
        """Exact eigenvalues of this low-rank matrix."""
        P, Q = self.P, self.Q
        if self._sym:
            U = self.stacked
            R = (torch.linalg.qr(U, mode="reduced") if self.is_torch else np.linalg.qr(U))[1]
            r = P.shape[-1]
            # S = 1/2 [[0, I], [I, 0]]: R S R^T = (R_1 R_2^T + R_2 R_1^T) / 2
            R1, R2 = R[..., :r], R[..., r:]
            core = R1 @ B.transpose(R2)
            core = (core + B.transpose(core)) / 2
            ev = torch.linalg.eigvalsh(core) if self.is_torch else np.linalg.eigvalsh(core)
        else:
            # Q^T P (r x r) shares the nonzero eigenvalues of P Q^T; with r > N it has r - N
            # extra zeros, so the N x N product is the smaller core
            core = B.transpose(Q) @ P if P.shape[-1] <= self.n else P @ B.transpose(Q)
            ev = S.dense_eigvals(core, False)            # torch or numpy, as core is
        if nonzero:
            return ev
        pad = self.n - ev.shape[-1]
        if pad <= 0:
            return ev
        zeros = (
            torch.zeros((*ev.shape[:-1], pad), dtype=ev.dtype, device=ev.device)
            if self.is_torch
            else np.zeros((*ev.shape[:-1], pad), dtype=ev.dtype)
        )
        full = torch.cat([ev, zeros], -1) if self.is_torch else np.concatenate([ev, zeros], -1)
        if self._sym:
            return torch.sort(full, -1).values if self.is_torch else np.sort(full, -1)
        return full


def _swap_halves(T: Array, r: int, axis: int) -> Array:
    """``[T_2; T_1]`` for ``T = [T_1; T_2]`` split at ``r`` along ``axis`` (a small array)."""
    a, b = (T[..., :r], T[..., r:]) if axis == -1 else (T[..., :r, :], T[..., r:, :])
    return (torch.cat if B.is_torch(T) else np.concatenate)([b, a], axis)


class SoftmaxAffinity(Affinity):
    r"""The row-stochastic affinity :math:`A = \operatorname{softmax}_{row}(s\, Q K^T)`.

    Products use the fused kernels of :func:`torch.nn.functional.scaled_dot_product_attention`
    (torch on an accelerator, and on the CPU under autograd; 4-D layout, equal widths) or row
    chunks of ``chunk_size`` rows (numpy, and torch on the CPU without autograd), so memory
    stays :math:`O(N \cdot chunk)` in forward and :math:`O(N)` saved for backward; the
    ``N x M`` matrix is only formed by :meth:`dense`. Degrees are exactly one (``D = I``).

    Parameters
    ----------
    query : (..., N, d)
    key : (..., M, d)
        ``M = N`` for a graph; ``M < N`` for sub-sampled keys.
    scale : float
        The factor ``s`` of the logits (``1/sqrt(d)`` in transformers, 1 in NL).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> A = SoftmaxAffinity(x, x).dense()
    >>> np.allclose(A.sum(-1), 1)
    True
    """

    _fields = ("query", "key")
    row_stochastic = True
    expensive_products = True

    @V.validate_params(
        {"query": ["array-like"], "key": ["array-like"], "scale": [V.REAL],
         "chunk_size": [V.POS_INT]},
        valid=lambda: {"query": np.ones((3, 2)), "key": np.ones((3, 2))},
    )
    def __init__(
        self, query: Array, key: Array, scale: float = 1.0, chunk_size: int = 1024
    ) -> None:
        query, key = B.as_array(query, "query"), B.as_array(key, "key")
        if query.ndim < 2 or key.ndim != query.ndim or query.shape[-1] != key.shape[-1]:
            raise ValueError(
                "query and key must have shapes (..., N, d) and (..., M, d), got "
                f"{tuple(query.shape)} and {tuple(key.shape)}"
            )
        self.scale = float(scale)
        self.chunk_size = int(chunk_size)
        V.nonempty(query, "query")
        V.nonempty(key, "key")
        B.check_finite(query, "query")
        B.check_finite(key, "key")
        self.query, self.key = query, key

    @property
    def n_cols(self) -> int:
        return int(self.key.shape[-2])

    @property
    def symmetric(self) -> bool:
        return False

    def _logits(self, rows: slice = slice(None), cols: slice = slice(None)) -> Array:
        # half precision: logits and softmax in float32 (fp16 logits overflow at 65504)
        q, k = V.upcast(self.query[..., rows, :]), V.upcast(self.key[..., cols, :])
        return self.scale * (q @ B.transpose(k))

    def rows(self, start: int, stop: int) -> Array:
        out = B.softmax(self._logits(slice(start, stop)), -1)
        return out.to(self.query.dtype) if self.is_torch else out

    def tile(self, rows: slice, cols: slice) -> Array:
        lse = self.__dict__.get("_lse")
        if lse is None:   # log-sum-exp of every row, once per (single-sample) affinity
            parts = []
            for s in range(0, self.n, self.chunk_size):
                lg = self._logits(slice(s, s + self.chunk_size))
                parts.append(torch.logsumexp(lg, -1) if self.is_torch else
                             np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1))
                             + lg.max(-1))
            lse = torch.cat(parts, -1) if self.is_torch else np.concatenate(parts, -1)
            self.__dict__["_lse"] = lse
        e = self._logits(rows, cols) - lse[..., rows, None]
        return torch.exp(e) if self.is_torch else np.exp(e)

    def degrees(self) -> Array:
        return self._full((*self.batch_shape, self.n), 1.0)

    def matmul(self, Z: Array) -> Array:
        Z = check_signal(Z, self.n_cols)
        if self.is_torch and (
            self.query.device.type != "cpu"
            or (torch.is_grad_enabled()
                and (self.query.requires_grad or self.key.requires_grad or Z.requires_grad))
        ):
            # Fused attention (O(N) memory in forward and backward). Without autograd on the
            # CPU the row chunks below are as good; with autograd they would keep every
            # chunk's softmax (the whole N x M matrix) for the backward pass.
            return _fused_attention(self.query, self.key, Z, self.scale)
        out = []
        Zc = V.upcast(Z)
        for start in range(0, self.n, self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            out.append(B.softmax(self._logits(rows), -1) @ Zc)
        if not out:
            return Z[..., :0, :]
        res = torch.cat(out, -2) if self.is_torch else np.concatenate(out, -2)
        return V.downcast(res, Z, "Z", "product A Z")

    def dense(self) -> Array:
        return self.rows(0, self.n)

    def abs_row_sums(self) -> Array:
        return self.degrees()


def _fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """``softmax(scale q k^T) v`` by ``scaled_dot_product_attention`` in the layout its fused
    kernels need: 4-D ``(batch, 1, N, d)`` inputs (3-D ones fall back to the kernel that forms
    the N x M matrix) and, for flash attention on the CPU, equal query and value widths
    (zero columns appended to ``q`` and ``k`` leave ``q k^T`` unchanged; zero value columns
    are sliced off), contiguous."""
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    dq, dv = q.shape[-1], v.shape[-1]
    d = max(dq, dv)
    pad = torch.nn.functional.pad
    if dq < d:
        q, k = pad(q, (0, d - dq)), pad(k, (0, d - dq))
    if dv < d:
        v = pad(v, (0, d - dv))
    q4, k4, v4 = (t.expand(*batch, *t.shape[-2:]).reshape(-1, 1, *t.shape[-2:]).contiguous()
                  for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q4, k4, v4, scale=scale)
    return out.reshape(*batch, q.shape[-2], d)[..., :dv]


class SumAffinity(Affinity):
    """The sum of affinities (e.g. DNL's pairwise plus unary terms).

    Examples
    --------
    >>> import numpy as np
    >>> a = DenseAffinity(np.eye(3))
    >>> SumAffinity([a, a]).degrees()
    array([2., 2., 2.])
    """

    def __init__(self, terms: list[Affinity]) -> None:
        terms = list(terms)
        if not terms or not all(isinstance(t, Affinity) for t in terms):
            raise TypeError("SumAffinity needs a non-empty list of Affinity objects")
        if len({t.shape for t in terms}) != 1:
            raise ValueError(f"terms must share one shape, got {[t.shape for t in terms]}")
        self.terms = terms

    @property
    def _first(self) -> Array:
        return self.terms[0]._first

    @property
    def n(self) -> int:
        return self.terms[0].n

    @property
    def n_cols(self) -> int:
        return self.terms[0].n_cols

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.terms[0].batch_shape

    @property
    def symmetric(self) -> bool:
        return all(t.symmetric for t in self.terms)

    def _map(self, fn: Callable[[Array], Array]) -> Affinity:
        return SumAffinity([t._map(fn) for t in self.terms])

    def concat(self, others: Sequence[Affinity]) -> Affinity:
        """Term by term when every part is a sum of as many terms; dense otherwise."""
        parts = [self, *others]
        if all(isinstance(p, SumAffinity) and len(p.terms) == len(self.terms) for p in parts):
            return SumAffinity([t.concat([p.terms[i] for p in parts[1:]])  # type: ignore[union-attr]
                                for i, t in enumerate(self.terms)])
        return super().concat(others)

    def degrees(self) -> Array:
        return sum(t.degrees() for t in self.terms)

    def matmul(self, Z: Array) -> Array:
        return sum(t.matmul(Z) for t in self.terms)

    def dense(self) -> Array:
        return sum(t.dense() for t in self.terms)

    def rows(self, start: int, stop: int) -> Array:
        return sum(t.rows(start, stop) for t in self.terms)

    def tile(self, rows: slice, cols: slice) -> Array:
        return sum(t.tile(rows, cols) for t in self.terms)

    def nonnegative(self) -> bool:
        return all(t.nonnegative() for t in self.terms)

    @property
    def expensive_products(self) -> bool:  # type: ignore[override]
        return any(t.expensive_products for t in self.terms)

    @property
    def has_rows(self) -> bool:
        return all(t.has_rows for t in self.terms)

    def abs_row_sums(self) -> Array:
        return sum(t.abs_row_sums() for t in self.terms)


def as_affinity(A: Array | Affinity) -> Affinity:
    """Wrap a dense square matrix as :class:`DenseAffinity`; pass structures through."""
    return A if isinstance(A, Affinity) else DenseAffinity(B.check_square(A), check=False)


class NormalizedOperator:
    r"""The normalized affinity :math:`\hat A = \operatorname{diag}(l)\, M
    \operatorname{diag}(r)` of an :class:`Affinity`, applied without forming it.

    ``sym``: :math:`l = r = d^{-1/2}`; ``rw``: :math:`l = d^{-1}` (nothing to do for a
    row-stochastic affinity); ``size``: :math:`1/N`; ``none``: :math:`M`. The scale vectors
    are computed once, so repeated products (Chebyshev recursion) cost one product each.

    Examples
    --------
    >>> import numpy as np
    >>> op = DenseAffinity(np.ones((3, 3))).normalized("sym")
    >>> np.allclose(op(np.eye(3)), np.ones((3, 3)) / 3)
    True
    """

    def __init__(self, affinity: Affinity, kind: str = "sym") -> None:
        self.affinity = affinity
        self.kind = _check_kind(kind, NORMALIZATION_KINDS, "normalization")
        self.left: Array | None = None
        self.right: Array | None = None
        self.factor: float = 1.0
        #: The small reduction (``Q^T Z``, or ``D^{-1/2}[P, Q]^T Z`` on the stacked path of
        #: :meth:`__call__`, ``(..., r, C)``) of the last product with a low-rank affinity:
        #: every entry sums over all rows of ``Z`` and of the factors, so it is NaN/Inf
        #: whenever one of them is (a block checks it instead of scanning its input); ``None``
        #: for other structures.
        self.reduced: Array | None = None
        self._lowrank: LowRankAffinity | None = None
        if kind == "sym":
            affinity.require_square()
            s = inv_degree_power(affinity.degrees(), 0.5)
            self.left = self.right = s
        elif kind == "rw" and not affinity.row_stochastic:
            self.left = inv_degree_power(affinity.degrees(), 1.0)
        elif kind == "size":
            self.factor = 1.0 / affinity.n_cols

    @property
    def symmetric(self) -> bool:
        return self.affinity.operator_symmetric(self.kind)

    @property
    def n(self) -> int:
        return self.affinity.n

    def __repr__(self) -> str:
        from .display import operator_items, short_repr

        return short_repr("NormalizedOperator", operator_items(self))

    def _repr_html_(self) -> str:
        from .display import card_html, operator_items

        return card_html("NormalizedOperator", operator_items(self))

    @property
    def lowrank(self) -> LowRankAffinity | None:
        r""":math:`\operatorname{diag}(l) M \operatorname{diag}(r)` as a
        :class:`LowRankAffinity` (computed once; the factor not included), or ``None`` if the
        affinity is not low rank or not square."""
        if self._lowrank is None:
            aff = self.affinity
            if not (isinstance(aff, LowRankAffinity) and aff.n == aff.n_cols):
                return None
            self._lowrank = aff.scaled(self.left, self.right)
        return self._lowrank

    @property
    def fused(self) -> bool:
        """Whether products run on the stacked scaled factors (see :meth:`__call__`) and
        :meth:`matmul_weighted_t` is available."""
        aff = self.affinity
        return (self.left is self.right and isinstance(aff, LowRankAffinity)
                and aff._fast_stacked() is not None)

    def matmul_weighted_t(self, Z: Array, W: Array) -> Array:
        r""":math:`(\hat A Z W)^T`, shape ``(..., C_{out}, N)``, for ``Z`` ``(..., N, C)`` and
        ``W`` ``(C, C_{out})``: :math:`W^T [\tilde Q^T Z; \tilde P^T Z]^T \tilde U^T / 2`,
        the weight folded into the small factor (one product with :math:`\tilde U`, no
        ``(N, C)`` intermediate). Only where :attr:`fused`; sets :attr:`reduced`."""
        if not self.fused:
            raise ValueError("matmul_weighted_t needs a symmetric low-rank affinity with stacked "
                             "factors (LowRankAffinity.from_stacked) and equal left/right scales")
        out, self.reduced = self.lowrank._matmul(check_signal(Z, self.affinity.n_cols), W)
        return out * self.factor if self.factor != 1.0 else out

    def __call__(self, Z: Array) -> Array:
        """:math:`\\hat A Z`, ``Z`` of shape ``(..., N, C)``.

        For a symmetric low-rank affinity with its factors stacked
        (:meth:`LowRankAffinity.from_stacked`) and the ``sym`` normalization, the product is
        :math:`\\tilde U [\\tilde Q^T Z; \\tilde P^T Z]/2` with the scaled factors
        :math:`\\tilde U = D^{-1/2}[P, Q]` formed once: two products, no scaling of ``Z``;
        :attr:`reduced` then holds :math:`\\tilde U^T Z` of the last call.
        """
        aff = self.affinity
        if self.fused:
            out, self.reduced = self.lowrank._matmul(check_signal(Z, aff.n_cols))
            return out * self.factor if self.factor != 1.0 else out
        if self.right is not None:
            Z = self.right[..., None] * check_signal(Z, aff.n_cols)
        if isinstance(aff, LowRankAffinity):
            out, self.reduced = aff._matmul(check_signal(Z, aff.n_cols))
        else:
            out = aff.matmul(Z)
        if self.left is not None:
            out = self.left[..., None] * out
        return out * self.factor if self.factor != 1.0 else out

    matmul = __call__

    def dense(self) -> Array:
        M = self.affinity.dense()
        if self.left is not None:
            M = self.left[..., :, None] * M
        if self.right is not None:
            M = M * self.right[..., None, :]
        return M * self.factor if self.factor != 1.0 else M

    def eigvals(self, nonzero: bool = False) -> Array:
        """Exact eigenvalues (structured for low-rank affinities, dense otherwise)."""
        self.affinity.require_square()
        if self.affinity.has_exact_spectrum:
            ev = self.affinity._structured_eigvals(self.left, self.right, nonzero)
            return ev * self.factor if self.factor != 1.0 else ev
        if nonzero:
            raise ValueError(
                "nonzero=True needs a low-rank affinity (LowRankAffinity); use nonzero=False"
            )
        S.check_dense_size(self.n, "eigvals", "use analysis.eigen.spectrum (matrix-free, "
                           "certified extremes) or a LowRankAffinity")
        return _dense_eigvals(self.dense(), self.symmetric)

    def rows(self, start: int, stop: int) -> Array:
        r"""Rows ``start:stop`` of :math:`\hat A` (one block of a stored copy)."""
        M = self.affinity.rows(start, stop)
        if self.left is not None:
            M = self.left[..., start:stop, None] * M
        if self.right is not None:
            M = M * self.right[..., None, :]
        return M * self.factor if self.factor != 1.0 else M

    def as_linear_operator(self, index: int = 0) -> spla.LinearOperator:
        """A scipy ``LinearOperator`` of one sample (float64)."""
        return self.affinity.as_linear_operator(self.kind, index=index)
