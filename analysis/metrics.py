r"""Affinity metrics from a spectrum: :math:`\lambda_{max}`, spectral gap, complex share,
asymmetry, row-sum deviation, effective rank and rank collapse, and the Frobenius statistics
computed without forming the N x N matrix.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from graphfilters import _validate as V
from graphfilters._warnings import external_stacklevel
from graphfilters.graph import (
    NORMALIZATION_KINDS,
    Affinity,
    NormalizedOperator,
    SoftmaxAffinity,
)
from graphfilters.spectral import DENSE_LIMIT

from .complex_share import (
    complex_share,
)
from .density import spectral_density
from .eigen import AUTO_DENSE_LIMIT, Spectrum, as_torch64, sample_indices, spectrum, unpack_source

#: The spectral gap is read only where L = I - A_hat has an eigenvalue within this (relative)
#: distance of 0, i.e. where A_hat is a normalized graph operator (eigenvalue 1).
__all__ = [
    "GAP_ZERO_TOL",
    "ROW_STOCHASTIC_TOL",
    "project_simplex",
    "frobenius_stats",
    "effective_rank",
    "METRIC_NAMES",
    "AffinityMetrics",
    "affinity_metrics",
]

GAP_ZERO_TOL = 1e-6
#: Largest row-sum deviation of an operator treated as row-stochastic (``rank_collapse``).
ROW_STOCHASTIC_TOL = 1e-5


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


def _example_affinity() -> SoftmaxAffinity:
    q, k = np.random.default_rng(0).standard_normal((2, 6, 2))
    return SoftmaxAffinity(q, k)


@V.validate_params(
    {"op": [V.InstanceOf(NormalizedOperator)], "tile": [V.POS_INT],
     "dense_limit": [V.NONNEG_INT]},
    valid=lambda: {"op": _example_affinity().normalized("rw"), "tile": 4},
)
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


@V.validate_params(
    {"normalization": [V.StrOptions(NORMALIZATION_KINDS), None],
     "spectrum_result": [V.InstanceOf(Spectrum), None],
     "method": V.declared(spectrum, "method"), "imag_tol": V.declared(complex_share, "rtol"),
     "tile": V.declared(frobenius_stats, "tile"),
     "dense_limit": V.declared(spectrum, "dense_limit"),
     "estimate_effective_rank": ["boolean"], "progress": ["boolean"]},
    valid=lambda: {"affinity": _example_affinity(), "progress": False},
)
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
    aff, kind = unpack_source(affinity, normalization, "normalized")
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
        warnings.warn("some spectra were empty: lambda_max is NaN there",
                      stacklevel=external_stacklevel())
    return AffinityMetrics(**arrays, normalization=kind, spectrum=spec, notes=notes)
