r"""Linearized stability of a block with its affinity fixed: the per-frequency maps
:math:`M(\lambda) = I + G H(\lambda) S`, their spectral radius, norm and the growth of a stack
sharing the affinity, exact over the captured spectrum (see :mod:`analysis.robustness`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from graphfilters import _validate as V

from ..capture import Capture
from ..capture_record import example_capture
from ..eigen import SPECTRUM_METHODS
from ..response import (
    frequency_response,
    weights_float64,
)
from ..spectra import AUTO_DENSE_LIMIT, Spectrum, spectrum
from .channel import (
    distinct_values,
    effective_channel_map,
    output_scale_vector,
    single_term,
    value_projection,
)
from .frozen import frozen_norms
from .schur import QuasiTriangular

__all__ = [
    "linear_maps",
    "Stability",
    "per_frequency_stability",
    "linearized_stability",
]


@V.validate_params(
    {"capture": [V.InstanceOf(Capture)], "include_output_scale": ["boolean"]},
    valid=lambda: {"capture": example_capture(), "lam": [0.0, 1.5]},
)
def linear_maps(
    capture: Capture, lam: Any, include_output_scale: bool = True
) -> np.ndarray:


    r"""The per-frequency channel maps :math:`M(\lambda) = I + G H(\lambda) S` (no identity
    without a residual), complex for complex ``lam``.

    Shapes
    ------
    ``lam``: ``(n,)`` → ``(n, C, C)``.

    Examples
    --------
    >>> import torch
    >>> cap = Capture("b", "block", "toy", None, weights=[torch.eye(2), torch.eye(2)],
    ...               value_weight=torch.eye(2))
    >>> linear_maps(cap, [0.0, 2.0])[:, 0, 0]             # 1 + (1 + (1 - lam))
    array([3., 1.])
    """
    if capture.weights is None:
        raise ValueError(f"{capture.path}: no filter weights captured")
    G, _ = value_projection(capture)
    ws = weights_float64(capture.weights)
    H = frequency_response(ws, lam, basis=capture.basis,
                           params=capture.basis_params)          # (n, C_s, C_out)
    s = output_scale_vector(capture, include_output_scale, ws[0].shape[1])
    M = np.einsum("ci,nio->nco", G, H) * s[None, None, :]
    if capture.residual:
        if M.shape[1] != M.shape[2]:
            raise ValueError(
                f"{capture.path}: a residual block needs C_out = C, got {M.shape[1:]}"
            )
        M = M + np.eye(M.shape[1])[None]
    return M


@dataclass
class Stability:
    r"""Linearized stability of one block with the affinity frozen.

    Attributes
    ----------
    radius : float
        :math:`\max_\lambda \rho(M(\lambda))` (exact: the spectral radius of the frozen map).
    norm : float
        :math:`\|\mathcal M\|_2` of the frozen map (exact; :func:`frozen_norms`).
    growth : numpy array ``(n_max,)``
        :math:`\|\mathcal M^n\|_2`, ``n = 1 .. n_max`` (exact): ``n`` copies of the unit
        sharing the affinity.
    radius_growth : numpy array ``(n_max,)``
        ``radius ** n``.
    argmax_lambda : complex
        The frequency attaining ``radius``.
    n_frequencies : int
        Distinct frequencies used.
    how : str
        How ``norm``/``growth`` were obtained (eigenbasis or matrix-free) and their accuracy.
    norm_lower_bound, growth_lower_bound : float, numpy array
        :math:`\max_\lambda \|M(\lambda)^n\|_2` over the per-frequency (Schur diagonal)
        blocks: equal to the exact values for a symmetric :math:`\hat A`, only a lower bound
        otherwise.
    iterations, residual : numpy arrays ``(n_max,)``
        Products and relative residual of the matrix-free norms (zeros for the eigenbasis).
    converged : bool
        Every norm met ``tol``.
    vector : Tensor or None
        The top right singular vector of :math:`\mathcal M` on sample 0 (``(N, C)``;
        matrix-free path only): a warm start for the Jacobians of the same block.
    """

    radius: float
    norm: float
    growth: np.ndarray
    radius_growth: np.ndarray
    argmax_lambda: complex
    n_frequencies: int
    how: str
    notes: dict[str, str] = field(default_factory=dict)
    norm_lower_bound: float = float("nan")
    growth_lower_bound: np.ndarray = field(default_factory=lambda: np.zeros(0))
    iterations: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    residual: np.ndarray = field(default_factory=lambda: np.zeros(0))
    converged: bool = True
    vector: Any = field(default=None, repr=False)

    def __repr__(self) -> str:
        from graphfilters.display import short_repr

        return short_repr("Stability", {"radius": self.radius, "norm": self.norm,
                                        "n_max": len(self.growth), "converged": self.converged})

    def _repr_html_(self) -> str:
        from graphfilters.display import card_html, stability_items

        return card_html("Stability (frozen affinity)", stability_items(self))


def per_frequency_stability(
    capture: Capture, lam: Any, n_max: int = 10, include_output_scale: bool = True,
    chunk: int = 1024, max_work: float = 5e9, channel: QuasiTriangular | None = None,
) -> tuple[float, complex, np.ndarray]:
    r"""``(radius, argmax_lambda, growth_lower_bound)`` from the per-frequency maps
    :math:`M(\lambda)` (:func:`linear_maps`): :math:`\max_\lambda \rho(M(\lambda))` and
    :math:`\max_\lambda \|M(\lambda)^n\|_2`, ``n = 1 .. n_max``. The latter is the exact
    growth for a symmetric :math:`\hat A` and a lower bound (Schur diagonal blocks)
    otherwise. A filter with one nonzero term needs one eigen-solve of :math:`G W_k S`
    (and, without residual, one norm per ``n``; ``channel``: the real Schur form of that
    :math:`G W_k S` when the caller has it, whose eigenvalues are used). Otherwise one
    ``C x C`` eigen-solve per frequency: when ``frequencies * C**3`` exceeds ``max_work`` the
    values are NaN (too costly; the exact norms do not need them).

    Examples
    --------
    >>> import torch
    >>> cap = Capture("b", "block", "toy", None, weights=[torch.zeros(1, 1),
    ...               -0.5 * torch.ones(1, 1)], value_weight=torch.ones(1, 1))
    >>> r, lam, g = per_frequency_stability(cap, [2.0, 0.0], n_max=2)   # M = 1.5, 0.5
    >>> r, lam, g.tolist()
    (1.5, (2+0j), [1.5, 2.25])
    """
    lam = np.asarray(lam)
    radius, arg = -1.0, 0j
    bound = np.zeros(n_max)
    ws = weights_float64(capture.weights) if capture.weights is not None else []
    k = single_term(capture)
    if k is not None and lam.size:
        # one term: M(lambda) = [I +] b(mu) K, K = G W_k S. Eigenvalues [1 +] b(mu) nu(K):
        # one eigen-solve; without residual ||M^n|| = |b|^n ||K^n|| (one norm per n)
        unit = [np.zeros((1, 1))] * len(ws)
        unit[k] = np.ones((1, 1))
        b = frequency_response(unit, lam, basis=capture.basis,
                               params=capture.basis_params)[:, 0, 0]
        K = None if channel is not None else effective_channel_map(capture, k,
                                                                    include_output_scale)
        if K is None:
            nu = channel.eigenvalues
        else:
            nu = np.linalg.eigvals(K) if K.shape[0] == K.shape[1] else np.zeros(1)
        ev = np.abs((1.0 if capture.residual else 0.0) + b[:, None] * nu[None, :]).max(1)
        i = int(ev.argmax())
        radius, arg = float(ev[i]), complex(lam[i])
        if not capture.residual:
            if K is None:
                K = effective_channel_map(capture, k, include_output_scale)
            if K.shape[0] != K.shape[1]:
                bound[:] = np.nan
                return radius, arg, bound
            P, bmax = K, float(np.abs(b).max())
            for n in range(n_max):
                if n > 0:
                    P = P @ K
                bound[n] = bmax ** (n + 1) * float(np.linalg.norm(P, 2))
            return radius, arg, bound
        if len(lam) * (channel.n if K is None else K.shape[0]) ** 3 > max_work:
            bound[:] = np.nan
            return radius, arg, bound
    elif ws and len(lam) * ws[0].shape[1] ** 3 > max_work:
        return float("nan"), complex("nan"), np.full(n_max, np.nan)
    if ws:
        chunk = max(1, min(chunk, 2 ** 22 // max(ws[0].shape[0] * ws[0].shape[1], 1)))
    for s0 in range(0, len(lam), chunk):
        M = linear_maps(capture, lam[s0:s0 + chunk], include_output_scale)
        ev = np.abs(np.linalg.eigvals(M)).max(-1)
        i = int(ev.argmax())
        if ev[i] > radius:
            radius, arg = float(ev[i]), complex(lam[s0 + i])
        P = M
        for n in range(n_max):
            if n > 0:
                P = P @ M
            g = float(np.linalg.norm(P, ord=2, axis=(-2, -1)).max())
            bound[n] = max(bound[n], g)
    return radius, arg, bound


@V.validate_params(
    {"capture": [V.InstanceOf(Capture)], "spectrum_result": [V.InstanceOf(Spectrum), None],
     "n_max": [V.POS_INT], "include_output_scale": ["boolean"],
     "method": [V.StrOptions(SPECTRUM_METHODS)], "dense_limit": [V.NONNEG_INT],
     "chunk": [V.POS_INT],
     "exact": [V.StrOptions(("auto", "eigenbasis", "matrix-free"))],
     "samples": [V.POS_INT, None], "tol": [V.UNIT_TOL], "max_iter": [V.POS_INT]},
    valid=lambda: {"capture": example_capture()},
)
def linearized_stability(
    capture: Capture,
    spectrum_result: Spectrum | None = None,
    n_max: int = 10,
    include_output_scale: bool = True,
    method: str = "auto",
    dense_limit: int = AUTO_DENSE_LIMIT,
    chunk: int = 1024,
    *,
    exact: str = "auto",
    samples: int | None = None,
    tol: float = 1e-6,
    max_iter: int = 200,
) -> Stability:
    r"""Spectral radius, exact norm and stack growth of the block with the affinity frozen.

    ``norm`` and ``growth`` are :math:`\|\mathcal M^n\|_2` of the frozen map
    :math:`X \mapsto [X] + \sum_k B_k(\hat A) X G W_k S`:

    - ``exact="eigenbasis"``: from the per-frequency blocks :math:`M(\lambda)`; exact only
      for a symmetric :math:`\hat A` with its complete spectrum;
    - ``exact="matrix-free"``: :func:`frozen_norms` (Krylov power iteration on the map and
      its adjoint, any :math:`\hat A`; tolerance ``tol``, at most ``max_iter`` products per
      power, the max over ``samples`` samples, all by default; float32 products when
      ``tol >= 1e-4``, whose rounding is far below the certified residual, and float64 when
      they overflow or the tolerance is tighter);
    - ``"auto"``: the eigenbasis when it is exact, matrix-free otherwise.

    The per-frequency block maxima are always returned as ``norm_lower_bound`` and
    ``growth_lower_bound`` (named so: for a non-symmetric :math:`\hat A` they are the Schur
    diagonal blocks, a lower bound that can be several times too small).

    Parameters
    ----------
    capture : Capture
    spectrum_result : Spectrum, optional
        Spectrum of :math:`\hat A` (``operator="normalized"``); computed if omitted.
    n_max : int
        Largest stack depth.
    include_output_scale : bool
        Use the output normalization's scale (the real map; default).
    chunk : int
        Frequencies processed at once.

    Returns
    -------
    Stability

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import DenseAffinity
    >>> A = DenseAffinity(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))    # mu = -1, 1
    >>> cap = Capture("b", "block", "toy", A, "sym", weights=[torch.zeros(1, 1),
    ...               -0.5 * torch.ones(1, 1)], value_weight=torch.ones(1, 1), n_samples=1)
    >>> st = linearized_stability(cap, n_max=2)          # M = 1 - 0.5 mu: 1.5 and 0.5
    >>> st.radius, st.argmax_lambda, [float(g) for g in st.growth]
    (1.5, (2+0j), [1.5, 2.25])
    """
    if capture.layout == "channel_position":
        raise ValueError(
            f"{capture.path}: CGNL filters act on a channel-position graph; the per-frequency "
            "channel map is not defined"
        )
    if capture.sub_sampled:
        raise ValueError(f"{capture.path}: sub-sampled keys: no square graph, no spectrum")
    spec = spectrum_result if spectrum_result is not None else spectrum(
        capture.affinity, "normalized", capture.normalization, method=method,
        dense_limit=dense_limit, progress=False)
    mus = distinct_values(np.concatenate([np.asarray(e) for e in spec.eigenvalues]))
    lam = 1 - mus
    # one term with the residual, on the CPU: the Schur form of G W_k S gives the radius's
    # eigenvalues and the frozen norms' coordinates (one decomposition for both)
    cpu = capture.device is None or torch.device(capture.device).type == "cpu"
    k = single_term(capture) if capture.residual and cpu else None
    K = None if k is None else effective_channel_map(capture, k, include_output_scale)
    channel = QuasiTriangular(K, torch.float64) if K is not None and (
        K.shape[0] == K.shape[1]) else None
    radius, arg, bound = per_frequency_stability(capture, lam, n_max, include_output_scale,
                                                 chunk, channel=channel)
    complete = spec.complete or spec.method == "structured"
    heads_kept = capture.source == "attention" and capture.heads == "keep"
    eig_exact = spec.symmetric and complete and not heads_kept and bool(np.isfinite(bound).all())
    if exact == "eigenbasis" and not eig_exact:
        raise ValueError(f"{capture.path}: the eigenbasis is exact only for a symmetric "
                         "operator with its complete spectrum; use exact='matrix-free'")
    notes = {}
    if exact == "matrix-free" or (exact == "auto" and not eig_exact):
        # float32 products certify a relative residual >= 1e-4 with room to spare (its
        # rounding is ~1e-7); tighter tolerances run in float64
        dtypes = (torch.float32, torch.float64) if tol >= 1e-4 else (torch.float64,)
        for dtype in dtypes:
            try:
                fz = frozen_norms(capture, n_max, samples=samples,
                                  include_output_scale=include_output_scale, tol=tol,
                                  max_iter=max_iter, dtype=dtype, channel=channel)
                break
            except FloatingPointError:            # float32 overflow: the float64 products
                if dtype == dtypes[-1]:
                    raise
        growth, iters, resid, conv = fz.growth, fz.iterations, fz.residual, fz.converged
        vector = fz.vector
        how = (f"matrix-free: Krylov power iteration on the frozen map and its adjoint "
               f"({'float32' if dtype == torch.float32 else 'float64'} products"
               f"{' in real Schur coordinates' if fz.schur else ''}, "
               f"tol {tol:g}, <= {max_iter} products per power, max residual "
               f"{float(resid.max()):.1e}, {'converged' if conv else 'NOT converged'}; "
               f"max over {fz.samples} sample(s))")
        if not conv:
            notes["convergence"] = "some norms did not reach the tolerance"
    else:
        growth, iters, resid, conv = bound.copy(), np.zeros(n_max, int), np.zeros(n_max), True
        vector = None
        how = "symmetric: exact in the orthonormal eigenbasis"
    if not spec.symmetric:
        notes["lower_bound"] = ("norm_lower_bound/growth_lower_bound: Schur diagonal blocks, "
                                "a lower bound for this non-symmetric operator")
    if heads_kept:
        bound[:] = np.nan
        notes["lower_bound"] = "per-head affinities: no per-frequency bound"
    elif np.isnan(bound).any():
        notes["lower_bound"] = ("per-frequency values not computed: one C x C eigen-solve per "
                                "frequency is too costly here")
    if not complete:
        how += f"; radius over the computed extremes only ({spec.method})"
    if capture.relu_after_norm:
        notes["relu"] = "the ReLU after the normalization is ignored (active-set linearization)"
    if capture.heads_averaged:
        notes["heads"] = "attention heads averaged: an approximation of the per-head filter"
    return Stability(radius, float(growth[0]), growth, radius ** np.arange(1, n_max + 1), arg,
                     len(lam), how, notes, float(bound[0]), bound, np.asarray(iters),
                     np.asarray(resid), bool(conv), vector)
