r"""Eigenvalues of a captured operator: the inputs (an affinity or a capture), the operator
(affinity, :math:`\hat A`, or its Laplacian) as a matrix-free product, the :class:`Spectrum`
and :func:`spectrum` with its solvers (structured low-rank, dense, Lanczos/Arnoldi, block
Krylov). :mod:`analysis.spectra` gathers this with the densities and the metrics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import torch
from torch import Tensor
from tqdm.auto import tqdm

from graphfilters import _validate as V
from graphfilters import spectral as S
from graphfilters._backend import to_numpy
from graphfilters._warnings import external_stacklevel
from graphfilters.graph import (
    LAPLACIAN_KINDS,
    NORMALIZATION_KINDS,
    Affinity,
    DenseAffinity,
    NormalizedOperator,
    as_affinity,
)
from graphfilters.spectral import DEFAULT_TOL, Eigs

__all__ = [
    "OPERATORS",
    "SPECTRUM_METHODS",
    "AUTO_DENSE_LIMIT",
    "unpack_source",
    "as_torch64",
    "sample_indices",
    "operator_is_symmetric",
    "OperatorApply",
    "linear_operator",
    "Spectrum",
    "choose_method",
    "spectrum",
    "GENERAL_WHICH",
]

OPERATORS = ("affinity", "normalized", "laplacian")
SPECTRUM_METHODS = ("auto", "eigh", "eig", "structured", "lanczos", "arnoldi", "block_krylov")
#: Largest N that ``auto`` solves densely (an eig of N = 2048 takes seconds).
AUTO_DENSE_LIMIT = 2048


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------


def unpack_source(source: Any, kind: str | None, operator: str) -> tuple[Affinity, str]:
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


def operator_is_symmetric(aff: Affinity, operator: str, kind: str) -> bool:
    return aff.operator_symmetric(kind, laplacian=operator == "laplacian")


class OperatorApply:
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


@V.validate_params(
    {"aff": [V.InstanceOf(Affinity)], "operator": [V.StrOptions(OPERATORS)]},
    valid=lambda: {"aff": DenseAffinity(np.ones((3, 3)))},
)
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
    apply = OperatorApply(aff64, operator, kind)
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
    sym = operator_is_symmetric(aff, operator, kind)
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
    aff, kind = unpack_source(affinity, kind, operator)
    aff.require_square()
    if aff.n == 0:
        raise ValueError("affinity has no nodes (N = 0): its spectrum is empty")
    if method in ("eigh", "eig"):
        S.check_dense_size(aff.n, f"spectrum(..., method={method!r})",
                           "use method 'auto' (certified matrix-free extremes) or 'structured'")
    aff = _as_float64(aff)
    sym = operator_is_symmetric(aff, operator, kind)
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
                      S.ConvergenceWarning, stacklevel=external_stacklevel())
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
    apply = OperatorApply(t_single, operator, kind)

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
    apply = OperatorApply(t_aff, operator, kind)
    which = ("LA", "SA") if sym else GENERAL_WHICH
    return S.krylov_extremes(apply, single.n, k, symmetric=sym, which=which,
                             block_size=block_size, n_blocks=n_blocks, tol=tol, seed=seed,
                             device=t_aff.device, warn=False)
