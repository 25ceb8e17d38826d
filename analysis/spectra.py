r"""Eigenvalue spectra and per-affinity metrics of captured (or hand-made) affinities.

Operators
---------
For an affinity :math:`M` (any :class:`graphfilters.graph.Affinity`, a dense array, or a
:class:`~analysis.capture.Capture`) three operators are offered: ``"affinity"`` (:math:`M`),
``"normalized"`` (:math:`\hat A`, normalization ``kind`` in ``sym``, ``rw``, ``size``,
``none``) and ``"laplacian"`` (``kind`` in ``combinatorial``, ``sym``, ``rw``). All
normalization and Laplacian formulas are those of :mod:`graphfilters.graph`.

Methods (:func:`spectrum`)
--------------------------
``"eigh"`` / ``"eig"``
    Exact dense spectrum (symmetric: real, ascending; general: complex), one sample at a time.
``"structured"``
    Exact spectrum of a :class:`~graphfilters.graph.LowRankAffinity` from an ``r x r``
    (``2r x 2r`` symmetrized) problem; the other ``N - r`` eigenvalues are zero.
``"lanczos"`` / ``"arnoldi"``
    Extreme eigenvalues with scipy ``eigsh`` (symmetric, both ends) / ``eigs`` (largest
    modulus, largest and smallest real part). Operators whose products cost
    :math:`O(N^2)` per call (softmax, dense: ``Affinity.expensive_products``) are stored once
    (float64, or float32 above ``graphfilters.spectral.CACHE_BYTES``) and ARPACK runs on the
    copy; the others run matrix-free. For a torch affinity the products run on its device.
``"block_krylov"``
    Restarted block Krylov Rayleigh–Ritz (``n_blocks`` products of ``block_size`` vectors
    per cycle); the default for expensive operators too large to store.
``"auto"``
    ``structured`` for low-rank affinities; ``eigh``/``eig`` up to ``dense_limit`` nodes;
    beyond, ``lanczos`` (symmetric) or ``arnoldi``. The result records ``method`` and a
    ``reason``.

Certification
-------------
Every matrix-free eigenvalue comes with its relative residual
:math:`\|Av - \theta v\| / \|AV\|_2` computed with fresh float64 products of the true
operator (:mod:`graphfilters.spectral`); ``tol`` (default ``1e-6``) is the stated tolerance.
:attr:`Spectrum.status` is ``"exact"`` (dense/structured), ``"certified"`` or
``"uncertified"``; uncertified values are kept, flagged in :attr:`Spectrum.converged`, named
in the ``reason``, warned about, and shown in :func:`analysis.plots.plot_spectrum`'s title.

Spectral densities (:func:`spectral_density`, symmetric operators only) use stochastic
Lanczos quadrature (``"slq"``) or the kernel polynomial method (``"kpm"``, Jackson damping).

Metrics (:func:`affinity_metrics`)
----------------------------------
All on the operator :math:`\hat A` the filter uses, with "Laplacian" eigenvalues
:math:`\lambda = 1 - \mu` for eigenvalues :math:`\mu` of :math:`\hat A` (exactly those of
:math:`L_{sym}` / :math:`L_{rw}` for the ``sym`` / ``rw`` normalizations; for ``size`` and
``none`` they show whether the Chebyshev rescaling with :math:`\lambda_{max} = 2` is valid).

- ``lambda_max`` :math:`= \max_i |\lambda_i|`; ``spectral_gap``
  :math:`= \operatorname{Re}\lambda_{(2)} - \operatorname{Re}\lambda_{(1)}` with the
  eigenvalues sorted by real part (the algebraic connectivity for a symmetric Laplacian).
  From the full spectrum, or from the computed extremes for matrix-free methods.
- ``complex_share``: :func:`complex_share` (the one rule used in every table and figure):
  among the eigenvalues above the numerical null space
  (:math:`|\mu| > \text{floor}\cdot\rho`), the share with
  :math:`|\operatorname{Im}\mu| > \max(\text{rtol}\,|\mu|, \text{atol}\,\rho)`; and
  ``max_imag`` the largest :math:`|\operatorname{Im}\mu|`. Needs the full spectrum (dense or
  structured); with a matrix-free method it is the share among the computed extremes.
- ``asymmetry`` :math:`= \|\hat A - \hat A^T\|_F / \|\hat A\|_F`.
- ``row_sum_deviation`` :math:`= \max_i |(\hat A \mathbf 1)_i - 1|` (one matrix-free product).
- ``effective_rank`` :math:`= \exp(-\sum_i p_i \log p_i)`, :math:`p_i = |\mu_i| /
  \sum_j |\mu_j|`: the entropy of the normalized spectrum of :math:`\hat A`. Needs the full
  spectrum; for symmetric operators beyond the dense limit it is estimated by SLQ from
  :math:`\operatorname{tr}|\hat A|` and :math:`\operatorname{tr}(|\hat A|\log|\hat A|)`;
  otherwise NaN.
- ``rank_collapse``: the relative distance to the nearest rank-1 row-stochastic matrix,

  .. math::

      \rho = \min_{\pi \in \Delta_N} \frac{\|\hat A - \mathbf 1 \pi^T\|_F}{\|\hat A\|_F},
      \qquad \|\hat A - \mathbf 1\pi^T\|_F^2 = \|\hat A\|_F^2 - N\|\bar a\|^2
      + N \|\pi - \bar a\|^2,

  with :math:`\bar a = \hat A^T \mathbf 1 / N` the mean row, so :math:`\pi^\star` is the
  Euclidean projection of :math:`\bar a` onto the probability simplex (Duchi et al. 2008;
  :math:`\pi^\star = \bar a` for a row-stochastic :math:`\hat A`). 0 means every row is the
  same distribution (rank collapse); a permutation matrix gives
  :math:`\sqrt{1 - 1/N}`. Defined only for a row-stochastic :math:`\hat A`
  (``row_sum_deviation`` at most :data:`ROW_STOCHASTIC_TOL`): elsewhere it is NaN and
  ``notes["rank_collapse"]`` says why (the nearest rank-1 row-stochastic matrix says nothing
  about an operator whose rows do not sum to 1).

Frobenius quantities never form :math:`N \times N`: for low-rank affinities they come from
``r x r`` Gram matrices (``M = X C Y^T``: :math:`\|M\|_F^2 = \sum (C Y^TY C^T) \circ (X^TX)`,
:math:`\langle M, M^T\rangle = \operatorname{tr}(C Y^TX C Y^TX)`); for softmax, dense and
sums of those they are accumulated over ``tile x tile`` blocks (softmax rows normalized by a
precomputed log-sum-exp): :math:`O(N^2)` time, :math:`O(N \cdot tile)` memory. Other
structures (e.g. criss-cross) are materialized one sample at a time up to the dense limit.

Examples
--------
>>> import numpy as np
>>> from graphfilters.graph import LowRankAffinity
>>> from analysis.spectra import spectrum
>>> rng = np.random.default_rng(0)
>>> aff = LowRankAffinity(rng.random((300, 3)), rng.random((300, 3)), symmetric=True)
>>> s = spectrum(aff, "laplacian", "sym")
>>> s.method, s.complete, bool(s.eigenvalues[0].min() > -1e-12)
('structured', True, True)
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
from tqdm.auto import tqdm

from graphfilters import _validate as V
from graphfilters import spectral as S
from graphfilters._backend import to_numpy
from graphfilters.chebyshev import chebyshev_basis, jackson_damping
from graphfilters.graph import (
    LAPLACIAN_KINDS,
    NORMALIZATION_KINDS,
    Affinity,
    NormalizedOperator,
    as_affinity,
)
from graphfilters.spectral import DEFAULT_TOL, DENSE_LIMIT, Eigs

from .complex_share import (
    ComplexShare,
    complex_share,
    share_center,
)

__all__ = [
    "OPERATORS",
    "SPECTRUM_METHODS",
    "DENSITY_METHODS",
    "Spectrum",
    "SpectralDensity",
    "AffinityMetrics",
    "spectrum",
    "spectral_density",
    "affinity_metrics",
    "frobenius_stats",
    "project_simplex",
    "effective_rank",
    "ComplexShare",
    "complex_share",
    "share_center",
]

OPERATORS = ("affinity", "normalized", "laplacian")
SPECTRUM_METHODS = ("auto", "eigh", "eig", "structured", "lanczos", "arnoldi", "block_krylov")
DENSITY_METHODS = ("slq", "kpm")
#: Largest N that ``auto`` solves densely (an eig of N = 2048 takes seconds).
AUTO_DENSE_LIMIT = 2048
#: The spectral gap is read only where L = I - A_hat has an eigenvalue within this (relative)
#: distance of 0, i.e. where A_hat is a normalized graph operator (eigenvalue 1).
GAP_ZERO_TOL = 1e-6
#: Largest row-sum deviation of an operator treated as row-stochastic (``rank_collapse``).
ROW_STOCHASTIC_TOL = 1e-5


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------


def _unpack(source: Any, kind: str | None, operator: str) -> tuple[Affinity, str]:
    """The affinity of ``source`` and the normalization/Laplacian kind to use."""
    default = None
    if hasattr(source, "affinity") and hasattr(source, "normalization") and not isinstance(
        source, Affinity
    ):
        default = source.normalization
        source = source.affinity
        if source is None:
            raise ValueError("this capture holds no affinity")
    aff = as_affinity(source)
    if kind is None:
        if operator == "affinity":
            kind = "none"
        elif operator == "normalized":
            kind = default or ("sym" if aff.symmetric else "rw")
        else:
            kind = default if default in ("sym", "rw") else ("sym" if aff.symmetric else "rw")
    allowed = LAPLACIAN_KINDS if operator == "laplacian" else NORMALIZATION_KINDS
    if kind not in allowed:
        raise ValueError(
            f"unknown {'Laplacian' if operator == 'laplacian' else 'normalization'} {kind!r} "
            f"for operator {operator!r}; choose one of {list(allowed)}"
        )
    return aff, kind


def _as_float64(aff: Affinity) -> Affinity:
    """The affinity with float64 fields (torch stays on its device)."""
    def conv(x: Any) -> Any:
        if isinstance(x, Tensor):
            return x.detach().to(torch.float64)
        return np.asarray(x, dtype=np.float64)
    return aff.map_fields(conv)


def as_torch64(aff: Affinity) -> Affinity:
    """Torch float64 fields (numpy affinities go to the CPU)."""
    def conv(x: Any) -> Tensor:
        if isinstance(x, Tensor):
            return x.detach().to(torch.float64)
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    return aff.map_fields(conv)


def sample_indices(aff: Affinity) -> list[tuple[int, ...]]:
    return list(np.ndindex(*aff.batch_shape)) if aff.batch_shape else [()]


def _np(x: Any) -> np.ndarray:
    return to_numpy(x)


def _is_expensive(aff: Affinity) -> bool:
    """Products cost O(N^2 d) regardless of the number of vectors (softmax-type)."""
    return bool(aff.expensive_products)


def _is_symmetric(aff: Affinity, operator: str, kind: str) -> bool:
    return aff.operator_symmetric(kind, laplacian=operator == "laplacian")


class _Apply:
    """``X -> Op X`` for one sample, on the affinity's backend and device."""

    def __init__(self, aff: Affinity, operator: str, kind: str) -> None:
        self.aff = aff
        self.operator = operator
        self.kind = kind
        self.norm: NormalizedOperator | None = None
        if operator != "laplacian":
            self.norm = aff.normalized("none" if operator == "affinity" else kind)
        self.n = aff.n

    def __call__(self, X: Any) -> Any:
        if self.norm is not None:
            return self.norm(X)
        return self.aff.laplacian_matmul(X, self.kind)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the operator (float64 numpy)."""
        if self.norm is not None:
            return _np(self.norm.rows(start, stop))
        if self.kind == "combinatorial":
            out = -_np(self.aff.rows(start, stop))
            d = _np(self.aff.degrees())[start:stop]
        else:
            out = -_np(self.aff.normalized(self.kind).rows(start, stop))
            d = np.ones(stop - start)
        out[np.arange(stop - start), np.arange(start, stop)] += d
        return out


def linear_operator(aff: Affinity, operator: str = "normalized", kind: str = "sym"
                    ) -> spla.LinearOperator:
    r"""A scipy ``LinearOperator`` (float64) of one sample's operator.

    numpy affinities use the core's ``Affinity.as_linear_operator``; torch affinities apply
    the operator on their own device (e.g. the GPU) and copy only the vectors.

    Examples
    --------
    >>> import numpy as np
    >>> from graphfilters.graph import DenseAffinity
    >>> op = linear_operator(DenseAffinity(np.ones((3, 3))), "normalized", "sym")
    >>> np.allclose(op @ np.ones(3), 1)
    True
    """
    if aff.batch_shape:
        raise ValueError(f"linear_operator needs one sample, got batch shape {aff.batch_shape}")
    if not aff.is_torch:
        if operator == "laplacian":
            return aff.as_linear_operator(laplacian=kind)
        return aff.as_linear_operator("none" if operator == "affinity" else kind)
    aff64 = _as_float64(aff)
    apply = _Apply(aff64, operator, kind)
    dev = aff64.device

    def mm(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        vec = X.ndim == 1
        t = torch.as_tensor(X.reshape(X.shape[0], -1), device=dev)
        out = apply(t).cpu().numpy()
        return out.ravel() if vec else out

    return spla.LinearOperator((aff.n, aff.n), matvec=mm, matmat=mm, dtype=np.float64)


# ------------------------------------------------------------------------------------------
# Spectrum
# ------------------------------------------------------------------------------------------


@dataclass
class Spectrum:
    r"""Eigenvalues of one operator for every sample of a (batched) affinity.

    Attributes
    ----------
    eigenvalues : list of numpy arrays
        One 1-D array per sample (batch flattened in C order): real ascending for symmetric
        operators with exact methods, complex otherwise; extremes only for matrix-free methods.
    operator, kind : str
        ``"affinity"``, ``"normalized"`` or ``"laplacian"``, and the normalization or
        Laplacian kind.
    method, reason : str
        The method used and why ``auto`` chose it.
    n : int
        Number of nodes.
    complete : bool
        Whether all ``n`` eigenvalues are present.
    symmetric : bool
        Whether the operator is symmetric (real spectrum).
    batch_shape : tuple of int
    residuals : list of numpy arrays or None
        Relative residuals :math:`\|Av - \theta v\| / \|AV\|_2` of every matrix-free
        eigenvalue (``None`` for exact methods), see :mod:`graphfilters.spectral`.
    converged : list of numpy bool arrays or None
        ``residuals <= tol``: the certified eigenvalues.
    tol : float or None
        The stated tolerance of the matrix-free method.
    """

    eigenvalues: list[np.ndarray]
    operator: str
    kind: str
    method: str
    reason: str
    n: int
    complete: bool
    symmetric: bool
    batch_shape: tuple[int, ...] = ()
    residuals: list[np.ndarray] | None = None
    converged: list[np.ndarray] | None = None
    tol: float | None = None

    @property
    def n_samples(self) -> int:
        return len(self.eigenvalues)

    @property
    def n_uncertified(self) -> int:
        """Eigenvalues whose residual missed ``tol`` (0 for exact methods)."""
        if self.converged is None:
            return 0
        return int(sum((~np.asarray(c, bool)).sum() for c in self.converged))

    @property
    def certified(self) -> bool:
        """Every eigenvalue exact (dense/structured) or within the stated tolerance."""
        return self.n_uncertified == 0

    @property
    def status(self) -> str:
        """``"exact"``, ``"certified"`` or ``"uncertified"`` (for tables and figures)."""
        if self.converged is None:
            return "exact"
        return "certified" if self.certified else "uncertified"

    def max_residual(self) -> float:
        """Largest relative residual (0 for exact methods)."""
        if not self.residuals:
            return 0.0
        return float(max((np.max(r, initial=0.0) for r in self.residuals), default=0.0))

    @property
    def is_complex(self) -> bool:
        """Whether any eigenvalue has a non-negligible imaginary part."""
        for ev in self.eigenvalues:
            if np.iscomplexobj(ev):
                scale = max(1.0, float(np.abs(ev).max(initial=0.0)))
                if np.abs(ev.imag).max(initial=0.0) > 1e-9 * scale:
                    return True
        return False

    def all(self) -> np.ndarray:
        """Every sample's eigenvalues concatenated."""
        return np.concatenate(self.eigenvalues) if self.eigenvalues else np.zeros(0)

    def __repr__(self) -> str:
        return (
            f"Spectrum({self.operator}/{self.kind}, n={self.n}, samples={self.n_samples}, "
            f"method={self.method!r}, complete={self.complete}, complex={self.is_complex}, "
            f"status={self.status!r})"
        )

    def _repr_html_(self) -> str:
        from graphfilters.display import card_html, spectrum_items

        return card_html("Spectrum", spectrum_items(self), status=self.status)

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """:func:`analysis.plots.plot_spectrum` of this spectrum; returns ``(fig, ax)``."""
        from .plots import plot_spectrum

        return plot_spectrum(self, ax=ax, **kwargs)


def choose_method(
    aff: Affinity, operator: str, kind: str, dense_limit: int = AUTO_DENSE_LIMIT
) -> tuple[str, str]:
    """The method ``auto`` picks for this affinity and operator, and why.

    Examples
    --------
    >>> import numpy as np
    >>> from graphfilters.graph import SoftmaxAffinity
    >>> x = np.zeros((5000, 2))
    >>> choose_method(SoftmaxAffinity(x, x), "normalized", "rw")[0]
    'arnoldi'
    """
    n = aff.n
    structured_ok = aff.has_exact_spectrum and (
        operator != "laplacian" or kind in ("sym", "rw")
    )
    sym = _is_symmetric(aff, operator, kind)
    if structured_ok:
        return "structured", (
            f"low-rank affinity (rank <= {aff.rank}): exact spectrum from a "
            f"{aff.rank} x {aff.rank} problem, the other eigenvalues are "
            f"{'1' if operator == 'laplacian' else '0'}"
        )
    if n <= dense_limit:
        return ("eigh" if sym else "eig"), (
            f"N = {n} <= dense_limit = {dense_limit}: exact dense "
            f"{'symmetric (eigh)' if sym else 'general (eig, complex)'} spectrum"
        )
    how = ("Lanczos (eigsh)" if sym else "Arnoldi (eigs)")
    if _is_expensive(aff):
        return ("lanczos" if sym else "arnoldi"), (
            f"N = {n} > dense_limit = {dense_limit}; {type(aff).__name__} products cost "
            f"O(N^2) per call: {how} on a stored copy of the operator (float64, or float32 "
            "when it would exceed graphfilters.spectral.CACHE_BYTES) certified by float64 "
            "products"
        )
    return ("lanczos" if sym else "arnoldi"), (
        f"N = {n} > dense_limit = {dense_limit}: matrix-free {how} extremes")


@V.validate_params(
    {"operator": [V.StrOptions(OPERATORS)], "method": [V.StrOptions(SPECTRUM_METHODS)],
     "k": [V.POS_INT], "dense_limit": [V.NONNEG_INT], "block_size": [V.POS_INT],
     "n_blocks": [V.POS_INT], "tol": [V.POS_REAL], "seed": [V.NONNEG_INT],
     "progress": ["boolean"]},
    valid=lambda: {"affinity": np.ones((3, 3)), "progress": False},
)
def spectrum(
    affinity: Any,
    operator: str = "normalized",
    kind: str | None = None,
    *,
    method: str = "auto",
    k: int = 6,
    dense_limit: int = AUTO_DENSE_LIMIT,
    block_size: int = 16,
    n_blocks: int = 8,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    progress: bool = True,
) -> Spectrum:
    r"""Eigenvalues of an affinity, its normalized form or its Laplacian, per sample.

    Parameters
    ----------
    affinity : Affinity, array ``(..., N, N)`` or Capture
        A capture supplies its affinity and normalization.
    operator : {"normalized", "affinity", "laplacian"}
    kind : str, optional
        Normalization (``sym``, ``rw``, ``size``, ``none``) or Laplacian (``combinatorial``,
        ``sym``, ``rw``). Default: the capture's normalization, else ``sym`` for symmetric
        and ``rw`` for other affinities.
    method : str
        One of :data:`SPECTRUM_METHODS` (see the module docstring).
    k : int
        Eigenvalues per end (``lanczos``, ``arnoldi``, ``block_krylov``).
    dense_limit : int
        Largest N that ``auto`` solves densely.
    block_size, n_blocks : int
        Block Krylov: vectors per block and products per restart cycle.
    tol : float
        Relative residual :math:`\|Av - \theta v\|/\|AV\|_2` an eigenvalue of a
        matrix-free method must meet to be certified (default ``1e-6``; the stored-copy
        float64 path typically reaches ``1e-12``). Values that miss it stay in the result,
        flagged in :attr:`Spectrum.converged`, counted in :attr:`Spectrum.status` and the
        ``reason``, with a :class:`~graphfilters.spectral.ConvergenceWarning`.
    seed : int
        Seed of the starting vectors.
    progress : bool
        tqdm bar over samples.

    Returns
    -------
    Spectrum

    Shapes
    ------
    Batched affinities ``(..., N, N)`` give one array per sample (``prod(batch)`` arrays).

    Examples
    --------
    >>> import numpy as np
    >>> from graphfilters.graph import SoftmaxAffinity
    >>> x = np.random.default_rng(0).standard_normal((2, 40, 3))
    >>> s = spectrum(SoftmaxAffinity(x, x), "normalized", "rw", progress=False)
    >>> s.method, s.n_samples, len(s.eigenvalues[0]), s.is_complex
    ('eig', 2, 40, False)
    """
    k, dense_limit = int(k), int(dense_limit)
    block_size, n_blocks = int(block_size), int(n_blocks)
    tol, seed = float(tol), int(seed)
    aff, kind = _unpack(affinity, kind, operator)
    aff.require_square()
    if aff.n == 0:
        raise ValueError("affinity has no nodes (N = 0): its spectrum is empty")
    if method in ("eigh", "eig"):
        S.check_dense_size(aff.n, f"spectrum(..., method={method!r})",
                           "use method 'auto' (certified matrix-free extremes) or 'structured'")
    aff = _as_float64(aff)
    sym = _is_symmetric(aff, operator, kind)
    if method == "auto":
        method, reason = choose_method(aff, operator, kind, dense_limit)
    else:
        reason = f"method {method!r} requested"
    n = aff.n
    if method == "structured":
        if not aff.has_exact_spectrum:
            raise ValueError(
                f"method 'structured' needs a LowRankAffinity, got {type(aff).__name__}; "
                "use 'auto', 'eigh'/'eig' or a matrix-free method"
            )
        if operator == "laplacian" and kind == "combinatorial":
            raise ValueError(
                "the combinatorial Laplacian D - M of a low-rank M is not low rank: use "
                "method 'eigh' (dense) or 'lanczos'"
            )
        if operator == "laplacian":
            ev = aff.laplacian_eigvals(kind)
        else:
            ev = aff.eigvals("none" if operator == "affinity" else kind)
        ev = _np(ev).reshape(-1, n)
        return Spectrum([_clean(e, sym) for e in ev], operator, kind, "structured", reason, n,
                        True, sym, aff.batch_shape)
    if method == "eigh" and not sym:
        raise ValueError(
            f"method 'eigh' needs a symmetric operator; {operator}/{kind} of this "
            f"{type(aff).__name__} is not symmetric: use 'eig' or 'arnoldi'"
        )
    idxs = sample_indices(aff)
    bar = tqdm(idxs, desc=f"spectrum ({method})", disable=not progress or len(idxs) < 2,
               leave=False)
    if method == "lanczos" and not sym:
        raise ValueError(
            "method 'lanczos' (eigsh) needs a symmetric operator; use 'arnoldi' or "
            "'block_krylov'"
        )
    values: list[np.ndarray] = []
    results: list[Eigs] = []
    for i, idx in enumerate(bar):
        single = aff.select(idx)
        if method in ("eigh", "eig"):
            values.append(_dense_spectrum(single, operator, kind, method, sym))
            continue
        if method in ("lanczos", "arnoldi"):
            res = _arpack(single, operator, kind, k, tol, seed + i, sym)
        else:
            res = _block_krylov(single, operator, kind, k, block_size, n_blocks, tol,
                                seed + i, sym)
        values.append(res.values)
        results.append(res)
    bar.close()
    complete = method in ("eigh", "eig")
    out = Spectrum(values, operator, kind, method, reason, n, complete, sym, aff.batch_shape,
                   [r.residuals for r in results] or None,
                   [r.converged for r in results] or None, tol if results else None)
    if out.n_uncertified:
        out.reason += (f"; {out.n_uncertified} eigenvalue(s) NOT certified (relative "
                       f"residual up to {out.max_residual():.1e} > tol = {tol:g})")
        warnings.warn(f"spectrum ({method}): {out.n_uncertified} eigenvalue(s) not certified "
                      f"(relative residual up to {out.max_residual():.1e} > tol = {tol:g})",
                      S.ConvergenceWarning, stacklevel=2)
    elif results:
        out.reason += f"; certified: relative residuals <= {out.max_residual():.1e}"
    return out


def _clean(ev: np.ndarray, sym: bool) -> np.ndarray:
    if sym and np.iscomplexobj(ev):
        ev = ev.real
    if sym:
        return np.sort(ev)
    return ev


def _dense_spectrum(single: Affinity, operator: str, kind: str, method: str, sym: bool
                    ) -> np.ndarray:
    S.check_dense_size(single.n, "spectrum", "use method 'auto', 'lanczos', 'arnoldi' or "
                       "'block_krylov' (certified matrix-free extremes)")
    if operator == "laplacian":
        M = single.laplacian_dense(kind)
    else:
        M = single.normalized("none" if operator == "affinity" else kind).dense()
    ev = _np(S.dense_eigvals(M, method == "eigh"))
    if method == "eigh":
        return np.sort(ev)
    ev = ev.astype(np.complex128)
    return ev[np.lexsort((ev.imag, ev.real))]


#: Criteria of the extremes of a general operator: largest modulus, largest and smallest
#: real part (the ends of the Laplacian spectrum 1 - mu).
GENERAL_WHICH = ("LM", "LR", "SR")


def _arpack(single: Affinity, operator: str, kind: str, k: int, tol: float, seed: int,
            sym: bool) -> Eigs:
    """ARPACK extremes: on a stored copy for operators with expensive products (when it fits
    :data:`graphfilters.spectral.CACHE_BYTES`), matrix-free otherwise."""
    n = single.n
    if n <= 3 * k + 3:
        ev = _dense_spectrum(single, operator, kind, "eigh" if sym else "eig", sym)
        return Eigs(ev, np.zeros(len(ev)), np.ones(len(ev), bool), tol)
    t_single = as_torch64(single)
    apply = _Apply(t_single, operator, kind)

    def certify(X: np.ndarray) -> np.ndarray:
        return _np(apply(torch.as_tensor(X, device=t_single.device)))

    if _is_expensive(single):
        M = S.cached_matrix(apply.rows, n)
        if M is not None:
            return S.cached_extremes(M, k, symmetric=sym, which=GENERAL_WHICH,
                                     certify=certify, tol=tol, seed=seed)
        # too large to store: block products cost one logit pass each (bench_analysis)
        return _block_krylov(single, operator, kind, k, 16, 8, tol, seed, sym)
    lin = linear_operator(single, operator, kind)
    return S.arpack_extremes(lin, k, symmetric=sym, which=GENERAL_WHICH, tol=tol, seed=seed)


def _block_krylov(
    single: Affinity, operator: str, kind: str, k: int, block_size: int, n_blocks: int,
    tol: float, seed: int, sym: bool,
) -> Eigs:
    """Restarted block Krylov extremes (:func:`graphfilters.spectral.krylov_extremes`)."""
    t_aff = as_torch64(single)
    apply = _Apply(t_aff, operator, kind)
    which = ("LA", "SA") if sym else GENERAL_WHICH
    return S.krylov_extremes(apply, single.n, k, symmetric=sym, which=which,
                             block_size=block_size, n_blocks=n_blocks, tol=tol, seed=seed,
                             device=t_aff.device, warn=False)


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
    aff, kind = _unpack(affinity, kind, operator)
    aff.require_square()
    if not _is_symmetric(aff, operator, kind):
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
        apply = _Apply(single, operator, kind)
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
    A = _np(torch.stack(alphas))                          # (steps, m)
    Bt = _np(torch.stack(betas))[:-1]
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


# ------------------------------------------------------------------------------------------
# Frobenius statistics without N x N
# ------------------------------------------------------------------------------------------


def project_simplex(v: Tensor) -> Tensor:
    r"""Euclidean projection of ``v`` (last axis) onto the probability simplex
    :math:`\{\pi \ge 0, \sum \pi = 1\}` (Duchi et al., ICML 2008).

    Examples
    --------
    >>> import torch
    >>> project_simplex(torch.tensor([0.5, 0.5, 0.5]))
    tensor([0.3333, 0.3333, 0.3333])
    """
    u = torch.sort(v, dim=-1, descending=True).values
    css = u.cumsum(-1) - 1
    j = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    cond = u - css / j > 0
    rho = cond.to(torch.int64).cumsum(-1).argmax(-1, keepdim=True)
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return torch.clamp(v - theta, min=0)


class _Tiles:
    """Tiles ``M[I, J]`` of a raw affinity of one sample (torch float64), asked of the
    structure (:meth:`graphfilters.graph.Affinity.tile`)."""

    def __init__(self, aff: Affinity, chunk: int) -> None:
        self.aff = aff
        self.chunk = chunk

    @property
    def supported(self) -> bool:
        return bool(self.aff.has_rows)

    def tile(self, I: slice, J: slice) -> Tensor:
        return self.aff.tile(I, J)


def _lowrank_gram_stats(lr: Affinity, factor: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(||M||_F^2, <M, M^T>, M^T 1)`` of ``factor * lr`` from Gram matrices."""
    P, Q = lr.P, lr.Q
    if lr.symmetric:
        X = Y = torch.cat([P, Q], -1)
        r = P.shape[-1]
        C = torch.zeros(2 * r, 2 * r, dtype=P.dtype, device=P.device)
        C[:r, r:] = 0.5 * torch.eye(r, dtype=P.dtype, device=P.device)
        C[r:, :r] = 0.5 * torch.eye(r, dtype=P.dtype, device=P.device)
    else:
        X, Y = P, Q
        C = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    GX, GY, YX = X.T @ X, Y.T @ Y, Y.T @ X
    fro2 = ((C @ GY @ C.T) * GX).sum()
    inner = torch.trace(C @ YX @ C @ YX)
    colsum = Y @ (C.T @ X.sum(0))
    return fro2 * factor**2, inner * factor**2, colsum * factor


def frobenius_stats(
    op: NormalizedOperator, tile: int = 2048, dense_limit: int = DENSE_LIMIT
) -> dict[str, Any]:
    r"""Frobenius norm, :math:`\langle \hat A, \hat A^T\rangle` and column sums of one
    sample's :math:`\hat A` without an ``N x N`` matrix.

    Returns
    -------
    dict with ``fro2`` (:math:`\|\hat A\|_F^2`), ``inner`` (:math:`\langle\hat A,\hat
    A^T\rangle`), ``colsum`` (:math:`\hat A^T\mathbf 1`, a tensor) and ``how``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from graphfilters.graph import SoftmaxAffinity
    >>> x = torch.randn(50, 4, dtype=torch.float64)
    >>> op = SoftmaxAffinity(x, x).normalized("rw")
    >>> st = frobenius_stats(op, tile=16)
    >>> A = op.dense()
    >>> bool(torch.isclose(st["fro2"], (A * A).sum()))
    True
    >>> bool(torch.isclose(st["inner"], (A * A.T).sum()))
    True
    """
    aff = op.affinity
    if aff.batch_shape:
        raise ValueError(f"frobenius_stats needs one sample, got batch shape {aff.batch_shape}")
    if not aff.is_torch or aff.dtype != torch.float64:
        aff = as_torch64(aff)
        op = aff.normalized(op.kind)
    left, right, factor = op.left, op.right, op.factor
    if aff.has_exact_spectrum:
        lr = aff.scaled(left, right) if (left is not None or right is not None) else aff
        fro2, inner, colsum = _lowrank_gram_stats(lr, factor)
        return {"fro2": fro2, "inner": inner, "colsum": colsum,
                "how": "closed form from r x r Gram matrices"}
    tiles = _Tiles(aff, tile)
    n = aff.n
    if not tiles.supported:
        if n > dense_limit:
            raise ValueError(
                f"Frobenius statistics of a {type(aff).__name__} with N = {n} > {dense_limit} "
                "need its dense matrix; raise dense_limit or use a structured affinity"
            )
        M = op.dense()
        return {"fro2": (M * M).sum(), "inner": (M * M.T).sum(), "colsum": M.sum(0),
                "how": "dense (no tiled access for this structure)"}
    fro2 = inner = 0.0
    colsum = torch.zeros(n, dtype=torch.float64, device=aff.device)
    starts = list(range(0, n, tile))

    def scaled_tile(I: slice, J: slice) -> Tensor:
        T = tiles.tile(I, J)
        if left is not None:
            T = left[I, None] * T
        if right is not None:
            T = T * right[None, J]
        return T * factor

    for a_i, i0 in enumerate(starts):
        I = slice(i0, i0 + tile)
        for j0 in starts[a_i:]:
            J = slice(j0, j0 + tile)
            T_ij = scaled_tile(I, J)
            colsum[J] += T_ij.sum(0)
            if i0 == j0:
                fro2 = fro2 + (T_ij * T_ij).sum()
                inner = inner + (T_ij * T_ij.T).sum()
            else:
                T_ji = scaled_tile(J, I)
                colsum[I] += T_ji.sum(0)
                fro2 = fro2 + (T_ij * T_ij).sum() + (T_ji * T_ji).sum()
                inner = inner + 2 * (T_ij * T_ji.T).sum()
    how = "dense" if len(starts) == 1 else f"tiled ({tile} x {tile} blocks, O(N^2) time)"
    return {"fro2": fro2, "inner": inner, "colsum": colsum, "how": how}


def effective_rank(eigenvalues: np.ndarray) -> float:
    r"""Entropy effective rank :math:`\exp(-\sum p_i \log p_i)`, :math:`p_i = |\mu_i| /
    \sum_j |\mu_j|`.

    Examples
    --------
    >>> effective_rank([1.0, 0.0, 0.0]), round(effective_rank([1.0, -1.0, 1.0, 1.0]), 6)
    (1.0, 4.0)
    """
    a = np.abs(np.asarray(eigenvalues))
    s = a.sum()
    if not 0 < s < np.inf:
        return float("nan")
    p = a / s
    p = p[p > 0]                           # after the division: tiny |mu| underflow to 0
    return float(np.exp(-(p * np.log(p)).sum()))


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------

METRIC_NAMES = ("lambda_max", "spectral_gap", "complex_share", "max_imag", "asymmetry",
                "row_sum_deviation", "effective_rank", "rank_collapse")


@dataclass
class AffinityMetrics:
    """Per-sample metrics of an affinity (see the module docstring for the definitions).

    Attributes
    ----------
    lambda_max, spectral_gap, complex_share, max_imag, asymmetry, row_sum_deviation,
    effective_rank, rank_collapse : numpy arrays ``(S,)``
    normalization : str
    spectrum : Spectrum
        The spectrum of :math:`\\hat A` the spectral metrics come from.
    notes : dict
        How each metric was computed (or why it is NaN).
    """

    lambda_max: np.ndarray
    spectral_gap: np.ndarray
    complex_share: np.ndarray
    max_imag: np.ndarray
    asymmetry: np.ndarray
    row_sum_deviation: np.ndarray
    effective_rank: np.ndarray
    rank_collapse: np.ndarray
    normalization: str
    spectrum: Spectrum
    notes: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Aggregates over samples: the max of ``lambda_max``, ``max_imag``,
        ``asymmetry`` and ``row_sum_deviation``, the mean of the others."""
        out = {}
        for name in METRIC_NAMES:
            v = np.asarray(getattr(self, name), dtype=float)
            if v.size == 0 or np.all(np.isnan(v)):
                out[name] = float("nan")
            elif name in ("lambda_max", "max_imag", "asymmetry", "row_sum_deviation"):
                out[name] = float(np.nanmax(v))
            else:
                out[name] = float(np.nanmean(v))
        return out


def affinity_metrics(
    affinity: Any,
    normalization: str | None = None,
    *,
    spectrum_result: Spectrum | None = None,
    method: str = "auto",
    imag_tol: float = 1e-3,
    tile: int = 2048,
    dense_limit: int = AUTO_DENSE_LIMIT,
    estimate_effective_rank: bool = True,
    progress: bool = True,
) -> AffinityMetrics:
    r"""λ_max, spectral gap, complex share, asymmetry, row sums, effective rank and rank
    collapse of :math:`\hat A` for every sample.

    Parameters
    ----------
    affinity : Affinity, array or Capture
    normalization : str, optional
        The normalization giving :math:`\hat A` (default: the capture's, else ``sym`` for
        symmetric and ``rw`` for other affinities).
    spectrum_result : Spectrum, optional
        A precomputed spectrum of :math:`\hat A` (``operator="normalized"``).
    method : str
        Spectrum method (see :func:`spectrum`).
    imag_tol : float
        ``rtol`` of :func:`complex_share` (relative threshold of a non-real eigenvalue).
    tile : int
        Tile size of the Frobenius accumulations.
    estimate_effective_rank : bool
        Estimate the effective rank by SLQ when the spectrum is incomplete and symmetric.

    Returns
    -------
    AffinityMetrics

    Examples
    --------
    >>> import numpy as np
    >>> from graphfilters.graph import SoftmaxAffinity
    >>> q, k = np.random.default_rng(0).standard_normal((2, 30, 4))
    >>> m = affinity_metrics(SoftmaxAffinity(q, k), progress=False)
    >>> bool(m.complex_share[0] > 0), bool(m.row_sum_deviation[0] < 1e-12)
    (True, True)
    """
    aff, kind = _unpack(affinity, normalization, "normalized")
    aff.require_square()
    spec = spectrum_result if spectrum_result is not None else spectrum(
        aff, "normalized", kind, method=method, dense_limit=dense_limit, progress=progress)
    t_aff = as_torch64(aff)
    notes: dict[str, str] = {
        "spectrum": f"{spec.method}: {spec.reason}",
        "lambda_max": "max |1 - mu| over " + ("all eigenvalues" if spec.complete or
                                              spec.method == "structured" else
                                              "the computed extremes"),
    }
    idxs = sample_indices(t_aff)
    if len(idxs) != spec.n_samples:
        raise ValueError(
            f"the spectrum has {spec.n_samples} samples but the affinity {len(idxs)}"
        )
    full = spec.complete or spec.method == "structured"
    vals: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    not_stochastic: list[float] = []
    slq_rank = None
    if not full and spec.symmetric and estimate_effective_rank:
        dens = spectral_density(t_aff, "normalized", kind, method="slq", n_vectors=16,
                                n_steps=40, grid=8, progress=False)
        tr_abs = dens.trace(np.abs, aff.n)
        tr_ent = dens.trace(lambda t: np.abs(t) * np.log(np.maximum(np.abs(t), 1e-300)),
                            aff.n)
        slq_rank = np.exp(np.log(tr_abs) - tr_ent / tr_abs)
        notes["effective_rank"] = "SLQ estimate (16 vectors, 40 steps)"
    elif full:
        notes["effective_rank"] = f"exact ({spec.method})"
    else:
        notes["effective_rank"] = "unavailable: needs the full spectrum (N <= dense limit)"
    notes["complex_share"] = complex_share(np.zeros(0), rtol=imag_tol).rule + (
        "; over all eigenvalues" if full else "; among the computed extremes only")
    how_fro = ""
    bar = tqdm(list(enumerate(idxs)), desc="metrics", disable=not progress or len(idxs) < 2,
               leave=False)
    no_zero: list[float] = []
    for i, idx in bar:
        mu = np.asarray(spec.eigenvalues[i])
        lam = 1 - mu
        vals["lambda_max"].append(float(np.abs(lam).max()) if lam.size else float("nan"))
        lr = np.sort(lam.real) if lam.size else lam.real
        has_zero = lam.size > 0 and float(np.abs(lam).min()) <= GAP_ZERO_TOL * max(
            1.0, float(np.abs(lam).max()))
        if lr.size > 1 and not has_zero and full:
            no_zero.append(float(np.abs(lam).min()))
        vals["spectral_gap"].append(float(lr[1] - lr[0]) if lr.size > 1 and (has_zero or not full)
                                    else float("nan"))
        im = np.abs(mu.imag) if np.iscomplexobj(mu) else np.zeros(mu.shape)
        cs = complex_share(mu, rtol=imag_tol)
        vals["complex_share"].append(cs.share)
        vals["max_imag"].append(float(im.max(initial=0.0)))
        if full:
            vals["effective_rank"].append(effective_rank(mu))
        elif slq_rank is not None:
            vals["effective_rank"].append(float(slq_rank[i]))
        else:
            vals["effective_rank"].append(float("nan"))
        single = t_aff.select(idx)
        op = single.normalized(kind)
        n = single.n
        ones = torch.ones(n, 1, dtype=torch.float64, device=single.device)
        rows = op(ones)[:, 0]
        deviation = float((rows - 1).abs().max())
        vals["row_sum_deviation"].append(deviation)
        stochastic = deviation <= ROW_STOCHASTIC_TOL
        if not stochastic:
            not_stochastic.append(deviation)
        try:
            st = frobenius_stats(op, tile=tile)
        except ValueError as exc:
            how_fro = f"unavailable: {exc}"
            vals["asymmetry"].append(float("nan"))
            vals["rank_collapse"].append(float("nan"))
            continue
        how_fro = st["how"]
        fro2 = float(st["fro2"])
        fro = math.sqrt(max(fro2, 0.0))
        if fro == 0:
            vals["asymmetry"].append(float("nan"))
            vals["rank_collapse"].append(float("nan"))
            continue
        asym2 = max(2 * fro2 - 2 * float(st["inner"]), 0.0)
        vals["asymmetry"].append(0.0 if single.operator_symmetric(kind)
                                 else math.sqrt(asym2) / fro)
        abar = st["colsum"] / n
        pi = project_simplex(abar)
        dist2 = fro2 - n * float((abar * abar).sum()) + n * float(((pi - abar) ** 2).sum())
        vals["rank_collapse"].append(math.sqrt(max(dist2, 0.0)) / fro if stochastic
                                     else float("nan"))
    bar.close()
    notes["asymmetry"] = notes["rank_collapse"] = how_fro
    if no_zero:
        notes["spectral_gap"] = (
            f"n/a for {len(no_zero)} sample(s): L = I - A_hat has no zero eigenvalue (min |lambda| "
            f"= {min(no_zero):.2g}), so A_hat is not the normalized operator of a graph and "
            "lambda_2 - lambda_1 is no graph gap")
    if not_stochastic:
        notes["rank_collapse"] = (
            f"n/a for {len(not_stochastic)} sample(s): the operator is not row-stochastic "
            f"(max |A_hat 1 - 1| = {max(not_stochastic):.2g} > {ROW_STOCHASTIC_TOL:g})")
    notes["row_sum_deviation"] = "one matrix-free product"
    arrays = {k: np.asarray(v, dtype=float) for k, v in vals.items()}
    if not np.isfinite(arrays["lambda_max"]).all():
        warnings.warn("some spectra were empty: lambda_max is NaN there", stacklevel=2)
    return AffinityMetrics(**arrays, normalization=kind, spectrum=spec, notes=notes)

