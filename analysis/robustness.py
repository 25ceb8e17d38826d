r"""Robustness and stability of nonlocal blocks: weight spectra, linearized maps, Jacobians.

Notation (row-vector convention, nodes × channels): the value projection
:math:`Z = X G + b` with :math:`G \in \mathbb R^{C \times C_s}`, the affinity-form filter
weights :math:`W_k \in \mathbb R^{C_s \times C}`, the output normalization's per-channel
scale :math:`S = \operatorname{diag}(s)` (BN in eval mode, or CC's :math:`\gamma`), and

.. math::

    Y = X + \big(\textstyle\sum_k B_k(\hat A)\, X G\, W_k\big) S + \text{const}.

Tao et al. (NeurIPS 2018) spectrum (:func:`tao_spectrum`)
    Eigenvalues of the symmetric part of the block's effective channel map
    :math:`W_{eff} = G W_k S` (``C x C``; :math:`k = 1`, the nonlocal term, by default), and
    the share of negative ones (their "damping" observation).

Linearized stability (:func:`linearized_stability`)
    With the affinity fixed, on an eigenvector of :math:`\hat A` with eigenvalue :math:`\mu`
    (Laplacian frequency :math:`\lambda = 1 - \mu`) a block maps the channel vector by

    .. math::

        M(\lambda) = I + G\, H(\lambda)\, S, \qquad H(\lambda) = \sum_k B_k(1 - \lambda) W_k

    (without the identity for modules that add no residual, e.g. attention). We report
    :math:`\max_\lambda \rho(M(\lambda))`, :math:`\max_\lambda \|M(\lambda)\|_2` and the growth
    :math:`\max_\lambda \|M(\lambda)^n\|_2` of a stack of ``n`` copies sharing the affinity,
    over the captured spectrum. For a symmetric :math:`\hat A` (orthonormal eigenvectors) the
    map is block diagonal in the eigenbasis, so these are exact. For a non-symmetric
    :math:`\hat A` the Schur form :math:`\hat A = U T U^H` makes the map block upper triangular
    with diagonal blocks :math:`M(\lambda_i)`, :math:`\lambda_i = 1 - T_{ii}`: the spectral
    radius is still exact, the reported norm is the largest diagonal-block norm (a lower bound
    of the true norm). A ReLU after the normalization is ignored (the linearization where it is
    active); biases do not enter.

Empirical measures
    :func:`jacobian_spectral_norm` (power iteration on :math:`J^TJ` with ``torch.func`` jvp/vjp),
    :func:`noise_sensitivity` (relative output change under Gaussian input noise),
    :func:`affinity_sensitivity` (filter-output change under a relative perturbation of the
    affinity's factors) and :func:`accuracy_under_noise` (a classifier under Gaussian noise).

Examples
--------
>>> import torch
>>> from graphfilters.graph import LowRankAffinity
>>> from analysis.capture import Capture
>>> from analysis.robustness import linearized_stability
>>> g = torch.Generator().manual_seed(0)
>>> aff = LowRankAffinity(torch.rand(1, 10, 2, generator=g), torch.rand(1, 10, 2, generator=g),
...                       symmetric=True)
>>> W0, W1 = 0.5 * torch.eye(2), torch.zeros(2, 2)
>>> cap = Capture("b", "block", "toy", aff, "sym", weights=[W0, W1],
...               value_weight=torch.eye(2), n_samples=1)
>>> st = linearized_stability(cap)                  # M = I + 0.5 I at every frequency
>>> round(st.radius, 6), round(float(st.growth[2]), 6)     # 1.5 and 1.5^3
(1.5, 3.375)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from graphfilters._backend import to_numpy
from graphfilters.filters import get_filter
from graphfilters.graph import Affinity

from .capture import Capture, _batch_input, model_device
from .observe import eval_mode, hold_affinities
from .recognizers import additive_mask
from .response import (
    _head_signal,
    _per_head,
    _weights_np,
    apply_filter,
    basis_terms,
    basis_values,
    filter_output,
    frequency_response,
)
from .spectra import AUTO_DENSE_LIMIT, Spectrum, spectrum

__all__ = [
    "value_projection",
    "effective_channel_map",
    "TaoSpectrum",
    "tao_spectrum",
    "Stability",
    "linear_maps",
    "linearized_stability",
    "per_frequency_stability",
    "SingularValues",
    "top_singular_values",
    "FrozenMap",
    "FrozenNorms",
    "frozen_norms",
    "Damping",
    "damping",
    "frozen_function",
    "StackFunction",
    "jacobian_singular_values",
    "JacobianReport",
    "jacobians",
    "stage_jacobians",
    "stack_jacobians",
    "backbone_jacobians",
    "block_function",
    "jacobian_spectral_norm",
    "noise_sensitivity",
    "affinity_sensitivity",
    "accuracy_under_noise",
]


def _np64(t: Any) -> np.ndarray:
    return to_numpy(t, np.float64)


def value_projection(capture: Capture, rtol: float = 1e-4) -> tuple[np.ndarray, str]:
    r"""The value projection :math:`G` (``C x C_s``) of a capture, and how it was obtained.

    From the module (``g`` convolution or attention ``in_proj``) when the capture has it;
    otherwise by least squares :math:`\min_{G, b}\|X G + b - Z\|` on the captured input and
    signal (exact for a linear projection).

    Raises
    ------
    ValueError
        If neither is possible or the least-squares fit leaves a relative residual above
        ``rtol`` (the projection is not linear, e.g. sub-sampled keys).

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(2, 3, 4, 4)                        # (S, C, H, W)
    >>> G = torch.randn(3, 2)
    >>> z = x.flatten(2).transpose(1, 2) @ G               # (S, N, C_s)
    >>> cap = Capture("b", "block", "toy", None, z=z, input=x)
    >>> G_hat, how = value_projection(cap)
    >>> bool(abs(G_hat - G.numpy()).max() < 1e-4), how.startswith("least squares")
    (True, True)
    """
    if capture.value_weight is not None:
        return _np64(capture.value_weight), "from the module"
    if capture.input is None or capture.z is None:
        raise ValueError(
            f"{capture.path}: no value projection recorded and no input/Z to estimate it"
        )
    x = _np64(capture.input)
    X = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1).reshape(-1, x.shape[1])
    Z = _np64(capture.z)
    if Z.shape[0] * Z.shape[1] != X.shape[0]:
        raise ValueError(
            f"{capture.path}: Z has {Z.shape[1]} nodes but the input {X.shape[0] // Z.shape[0]} "
            "(sub-sampled keys): the value projection is not a per-node linear map"
        )
    Z = Z.reshape(-1, Z.shape[-1])
    A = np.concatenate([X, np.ones((X.shape[0], 1))], 1)
    coef, *_ = np.linalg.lstsq(A, Z, rcond=None)
    res = np.linalg.norm(A @ coef - Z) / max(np.linalg.norm(Z), 1e-300)
    if res > rtol:
        raise ValueError(
            f"{capture.path}: Z is not a linear function of the input (least-squares "
            f"relative residual {res:.2e} > {rtol:g})"
        )
    return coef[:-1], f"least squares on the captured input (residual {res:.1e})"


def _scale(capture: Capture, include: bool, c_out: int) -> np.ndarray:
    if include and capture.output_scale is not None:
        return _np64(capture.output_scale).reshape(-1)
    return np.ones(c_out)


def effective_channel_map(
    capture: Capture, term: int = 1, include_output_scale: bool = True
) -> np.ndarray:
    r"""The ``C x C`` map :math:`G W_k S` of filter term ``k``.

    Examples
    --------
    >>> import torch
    >>> cap = Capture("b", "block", "toy", None, weights=[torch.zeros(1, 2), torch.ones(1, 2)],
    ...               value_weight=torch.ones(2, 1), output_scale=torch.tensor([1.0, 2.0]))
    >>> effective_channel_map(cap)
    array([[1., 2.],
           [1., 2.]])
    """
    if capture.weights is None:
        raise ValueError(f"{capture.path}: no filter weights captured")
    ws = _weights_np(capture.weights)
    if not 0 <= term < len(ws):
        raise ValueError(f"term must be in 0..{len(ws) - 1} (the filter order), got {term}")
    G, _ = value_projection(capture)
    W = ws[term]
    return G @ W * _scale(capture, include_output_scale, W.shape[1])[None, :]


@dataclass
class TaoSpectrum:
    """Eigenvalues of :math:`\\operatorname{sym}(G W_k S)` (ascending) and their signs.

    Attributes
    ----------
    eigenvalues : numpy array ``(C,)``
    negative_share : float
        Share of eigenvalues below ``-tol * max|eig|``.
    negative_mass : float
        :math:`\\sum_{\\mu < 0} |\\mu| / \\sum |\\mu|`: the weight of the negative part.
        With a bottleneck (:math:`C_s \\le C/2`), :math:`G W_k S` has rank
        :math:`r \\le C_s` and, by Sylvester's law of inertia, its symmetric part has at most
        :math:`r` positive and :math:`r` negative eigenvalues (exactly :math:`C/2` each for
        generic weights with :math:`C_s = C/2`): the *share* is then fixed by the shapes,
        while the *mass* still tells whether damping (negative) dominates.
    term : int
    how : str
        Where :math:`G` came from and whether :math:`S` was included.
    rank : int
        Numerical rank :math:`r` of :math:`G W_k S`.
    forced : bool
        The share is forced by the shapes: :math:`r \\le C/2` and the symmetric part has
        exactly :math:`r` negative and :math:`r` positive eigenvalues (share :math:`r/C`,
        1/2 for :math:`C_s = C/2`); flagged ``tao_forced`` in every table.
    """

    eigenvalues: np.ndarray
    negative_share: float
    term: int
    how: str
    negative_mass: float = float("nan")
    rank: int = -1
    forced: bool = False


def tao_spectrum(
    capture: Capture, term: int | None = None, include_output_scale: bool = True,
    tol: float = 1e-9,
) -> TaoSpectrum:
    r"""Tao et al.'s spectrum: eigenvalues of the symmetric part of :math:`G W_k S`.

    ``term`` defaults to 1 (the nonlocal term :math:`\hat A Z W_1`; 0 for order-0 filters).

    Examples
    --------
    >>> import torch
    >>> cap = Capture("b", "block", "toy", None, weights=[torch.zeros(2, 2), -torch.eye(2)],
    ...               value_weight=torch.eye(2))
    >>> tao_spectrum(cap).negative_share
    1.0
    """
    if capture.weights is None:
        raise ValueError(f"{capture.path}: no filter weights captured")
    k = (1 if len(capture.weights) > 1 else 0) if term is None else int(term)
    M = effective_channel_map(capture, k, include_output_scale)
    if M.shape[0] != M.shape[1]:
        raise ValueError(
            f"{capture.path}: the channel map is {M.shape[0]} x {M.shape[1]}, not square"
        )
    ev = np.linalg.eigvalsh((M + M.T) / 2)
    scale = max(float(np.abs(ev).max(initial=0.0)), 1e-300)
    share = float((ev < -tol * scale).mean()) if float(np.abs(ev).max(initial=0.0)) > 0 else 0.0
    total = float(np.abs(ev).sum())
    mass = float(np.abs(ev[ev < 0]).sum() / total) if total > 0 else 0.0
    _, how = value_projection(capture)
    how += "; output scale " + ("included" if include_output_scale and
                                capture.output_scale is not None else "not included")
    sv = np.linalg.svd(M, compute_uv=False)
    rank = int((sv > max(sv.max(initial=0.0), 1e-300) * M.shape[0] * 1e-12).sum())
    thr = tol * scale
    n_neg, n_pos = int((ev < -thr).sum()), int((ev > thr).sum())
    forced = bool(0 < rank <= M.shape[0] / 2 and n_neg == n_pos == rank)
    if forced:
        how += (f"; share forced by the rank ({rank} of {M.shape[0]}): Sylvester's law "
                "gives exactly r negative eigenvalues")
    return TaoSpectrum(ev, share, k, how, mass, rank, forced)


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
    ws = _weights_np(capture.weights)
    H = frequency_response(ws, lam, basis=capture.basis,
                           params=capture.basis_params)          # (n, C_s, C_out)
    s = _scale(capture, include_output_scale, ws[0].shape[1])
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

    def __repr__(self) -> str:
        from graphfilters.display import short_repr

        return short_repr("Stability", {"radius": self.radius, "norm": self.norm,
                                        "n_max": len(self.growth), "converged": self.converged})

    def _repr_html_(self) -> str:
        from graphfilters.display import card_html, stability_items

        return card_html("Stability (frozen affinity)", stability_items(self))


def _distinct(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values)
    if np.iscomplexobj(v) and np.abs(v.imag).max(initial=0.0) <= 1e-12:
        v = v.real
    r = np.round(v, 10)
    _, idx = np.unique(r, return_index=True)
    return v[np.sort(idx)]


def per_frequency_stability(
    capture: Capture, lam: Any, n_max: int = 10, include_output_scale: bool = True,
    chunk: int = 1024, max_work: float = 5e9,
) -> tuple[float, complex, np.ndarray]:
    r"""``(radius, argmax_lambda, growth_lower_bound)`` from the per-frequency maps
    :math:`M(\lambda)` (:func:`linear_maps`): :math:`\max_\lambda \rho(M(\lambda))` and
    :math:`\max_\lambda \|M(\lambda)^n\|_2`, ``n = 1 .. n_max``. The latter is the exact
    growth for a symmetric :math:`\hat A` and a lower bound (Schur diagonal blocks)
    otherwise. A filter with one nonzero term needs one eigen-solve of :math:`G W_k S`
    (and, without residual, one norm per ``n``). Otherwise one ``C x C`` eigen-solve per
    frequency: when ``frequencies * C**3`` exceeds ``max_work`` the values are NaN (too
    costly; the exact norms do not need them).

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
    ws = _weights_np(capture.weights) if capture.weights is not None else []
    nonzero = [k for k, w in enumerate(ws) if np.abs(w).max(initial=0.0) > 0]
    if len(nonzero) == 1 and lam.size:
        # one term: M(lambda) = [I +] b(mu) K, K = G W_k S. Eigenvalues [1 +] b(mu) nu(K):
        # one eigen-solve; without residual ||M^n|| = |b|^n ||K^n|| (one norm per n)
        k = nonzero[0]
        unit = [np.zeros((1, 1))] * len(ws)
        unit[k] = np.ones((1, 1))
        b = frequency_response(unit, lam, basis=capture.basis,
                               params=capture.basis_params)[:, 0, 0]
        K = effective_channel_map(capture, k, include_output_scale)
        nu = np.linalg.eigvals(K) if K.shape[0] == K.shape[1] else np.zeros(1)
        ev = np.abs((1.0 if capture.residual else 0.0) + b[:, None] * nu[None, :]).max(1)
        i = int(ev.argmax())
        radius, arg = float(ev[i]), complex(lam[i])
        if not capture.residual:
            if K.shape[0] != K.shape[1]:
                bound[:] = np.nan
                return radius, arg, bound
            P, bmax = K, float(np.abs(b).max())
            for n in range(n_max):
                if n > 0:
                    P = P @ K
                bound[n] = bmax ** (n + 1) * float(np.linalg.norm(P, 2))
            return radius, arg, bound
        if len(lam) * K.shape[0] ** 3 > max_work:
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
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 1:
        raise ValueError(f"n_max must be a positive integer, got {n_max!r}")
    if exact not in ("auto", "eigenbasis", "matrix-free"):
        raise ValueError(f"exact must be 'auto', 'eigenbasis' or 'matrix-free', got {exact!r}")
    spec = spectrum_result if spectrum_result is not None else spectrum(
        capture.affinity, "normalized", capture.normalization, method=method,
        dense_limit=dense_limit, progress=False)
    mus = _distinct(np.concatenate([np.asarray(e) for e in spec.eigenvalues]))
    lam = 1 - mus
    radius, arg, bound = per_frequency_stability(capture, lam, n_max, include_output_scale,
                                                 chunk)
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
                                  max_iter=max_iter, dtype=dtype)
                break
            except FloatingPointError:            # float32 overflow: the float64 products
                if dtype == dtypes[-1]:
                    raise
        growth, iters, resid, conv = fz.growth, fz.iterations, fz.residual, fz.converged
        how = (f"matrix-free: Krylov power iteration on the frozen map and its adjoint "
               f"({'float32' if dtype == torch.float32 else 'float64'} products, "
               f"tol {tol:g}, <= {max_iter} products per power, max residual "
               f"{float(resid.max()):.1e}, {'converged' if conv else 'NOT converged'}; "
               f"max over {fz.samples} sample(s))")
        if not conv:
            notes["convergence"] = "some norms did not reach the tolerance"
    else:
        growth, iters, resid, conv = bound.copy(), np.zeros(n_max, int), np.zeros(n_max), True
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
                     np.asarray(resid), bool(conv))


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


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


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
    k = _check_positive_int("k", k)
    max_iter = _check_positive_int("max_iter", max_iter)
    krylov = max(_check_positive_int("krylov", krylov), k + 1)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
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
                Um = Ub[:j]
                u = u - (Um @ u) @ Um
                u = u - (Um @ u) @ Um
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
            w = w - (Vm @ w) @ Vm
            w = w - (Vm @ w) @ Vm
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


# ------------------------------------------------------------------------------------------
# The frozen-affinity block map and its exact norms
# ------------------------------------------------------------------------------------------


class FrozenMap:
    r"""The block map with the affinity fixed, on one captured sample:

    .. math::

        \mathcal M(X) = [X] + \Big(\sum_k B_k(\hat A)\, X G\, W_k\Big) S,

    ``X`` of shape ``(N, C)`` (the identity only for residual modules; biases and output
    shifts do not enter a linear map). With attention heads kept (``heads="keep"``) each
    head's affinity acts on its own slice of the value channels. Nothing of size
    :math:`NC \times NC` is formed. For ``N <= dense_limit`` the basis matrices
    :math:`B_k(\hat A)` (polynomials; for the rational Cayley and ARMA bases the family's
    terms with the capture's ``basis_params``, by dense shifted solves) are formed as
    ``N x N`` matrices (per head) and the map and its
    adjoint :math:`U \mapsto [U] + \sum_k B_k(\hat A)^T U S W_k^T G^T` are plain products
    (:math:`G W_k S` precomputed when :math:`C_s > C/2`; zero terms skipped): one product
    costs :math:`O(N C C_s + N^2 C_s)` per head and term. Beyond it the affinity is used only
    through its structured matrix product (and, for rational bases, the block's shifted
    solves: Woodbury for low-rank affinities, the fixed-point recursion otherwise), and the
    adjoint is that product's vector-Jacobian product (one recorded forward).

    Parameters
    ----------
    capture : Capture
    index : int
        Sample.
    include_output_scale : bool
    dtype : torch.dtype
        Working precision (float64 by default).
    dense_limit : int
        Largest ``N`` whose :math:`B_k(\hat A)` are formed densely.

    Shapes
    ------
    ``X``: ``(N, C)`` → ``(N, C_out)``.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import DenseAffinity
    >>> A = DenseAffinity(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    >>> cap = Capture("b", "block", "toy", A, "none", weights=[torch.zeros(1, 1),
    ...               torch.ones(1, 1)], value_weight=torch.ones(1, 1), n_samples=1)
    >>> M = FrozenMap(cap)
    >>> M(torch.tensor([[1.0], [0.0]], dtype=torch.float64)).flatten().tolist()
    [1.0, 1.0]
    """

    def __init__(self, capture: Capture, index: int = 0, include_output_scale: bool = True,
                 dtype: torch.dtype = torch.float64, dense_limit: int = 2048) -> None:
        if capture.affinity is None or capture.weights is None:
            raise ValueError(f"{capture.path}: the frozen map needs the affinity and weights")
        if capture.layout == "channel_position":
            raise ValueError(f"{capture.path}: CGNL filters act on a channel-position graph")
        if capture.sub_sampled or capture.affinity.n != capture.affinity.n_cols:
            raise ValueError(f"{capture.path}: sub-sampled keys: the map is not square")
        nb = max(capture.n_samples, 1)
        if not 0 <= index < nb:
            raise ValueError(f"sample index {index} out of range [0, {nb})")
        dev = capture.device if capture.device is not None else torch.device("cpu")
        self.path = capture.path
        self.residual = bool(capture.residual)
        G, _ = value_projection(capture)
        ws = _weights_np(capture.weights)
        self.G = torch.as_tensor(G, dtype=dtype, device=dev)
        self.weights = [torch.as_tensor(w, dtype=dtype, device=dev) for w in ws]
        self.scale = torch.as_tensor(_scale(capture, include_output_scale, ws[0].shape[1]),
                                     dtype=dtype, device=dev)
        self.basis = capture.basis
        self.params = capture.basis_params
        self.module = capture.module
        aff = capture.affinity
        keep = len(aff.batch_shape) >= 2 and capture.source == "attention"
        one = aff.select(index).map_fields(lambda t: torch.as_tensor(t).to(device=dev, dtype=dtype))
        self.op = one.normalized(capture.normalization)
        self.heads = int(one.batch_shape[0]) if keep else 0
        self.n, self.c = capture.affinity.n, self.G.shape[0]
        self.c_out = ws[0].shape[1]
        if self.residual and self.c_out != self.c:
            raise ValueError(f"{capture.path}: a residual block needs C_out = C")
        self._adj: Callable[[Tensor], Tensor] | None = None
        self.dense = self.n <= dense_limit
        if self.dense:
            # B_k(A_hat) as N x N matrices (per head): products both ways are plain matmuls
            D = self.op.dense()
            eye = torch.eye(self.n, dtype=dtype, device=dev).expand_as(D).contiguous()
            terms = basis_terms(self.op, eye, len(ws), self.basis, self.params, dense=D,
                                module=self.module)
            keep_k = [k for k, w in enumerate(ws) if np.abs(w).max(initial=0.0) > 0]
            self.terms = [terms[k] for k in keep_k]
            cs = self.G.shape[1]
            # G W_k S precomputed when it is cheaper than the factors (C_s > C / 2)
            self.fused = not self.heads and 2 * cs > self.c
            if self.fused:
                self.maps = [(self.G @ self.weights[k]) * self.scale for k in keep_k]
            else:
                self.maps = [self.weights[k] * self.scale for k in keep_k]
        #: one Kronecker term (X -> P X W): the norms of the powers factorize
        self.kronecker = (self.dense and not self.residual and not self.heads
                          and len(self.terms) == 1 and self.c_out == self.c)

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, C)``: the shape of an input."""
        return (self.n, self.c)

    def _apply_op(self, z: Tensor) -> Tensor:
        if self.heads:
            h = self.heads
            zh = z.reshape(z.shape[0], h, -1).transpose(0, 1)          # (H, N, d)
            return self.op(zh).transpose(0, 1).reshape(z.shape)
        return self.op(z)

    def _heads_apply(self, P: Tensor, z: Tensor) -> Tensor:
        if self.heads:
            zh = z.reshape(z.shape[0], self.heads, -1).transpose(0, 1)     # (H, N, d)
            return (P @ zh).transpose(0, 1).reshape(z.shape)
        return P @ z

    def __call__(self, X: Tensor) -> Tensor:
        if self.dense:
            if not self.terms:
                f = torch.zeros(X.shape[0], self.c_out, dtype=X.dtype, device=X.device)
            elif self.fused:
                f = sum(P @ (X @ Wc) for P, Wc in zip(self.terms, self.maps))
            else:
                z = X @ self.G
                f = sum(self._heads_apply(P, z) @ W for P, W in zip(self.terms, self.maps))
        else:
            z = X @ self.G
            op = self._apply_op if self.heads else self.op
            f = apply_filter(op, z, self.weights, self.basis, self.params,
                             module=self.module) * self.scale
        return X + f if self.residual else f

    def adjoint(self, U: Tensor) -> Tensor:
        r""":math:`\mathcal M^T U` (explicit with the dense :math:`B_k(\hat A)^T`; otherwise the
        vector-Jacobian product of the linear map)."""
        if self.dense:
            if not self.terms:
                f = torch.zeros(U.shape[0], self.c, dtype=U.dtype, device=U.device)
            elif self.fused:
                f = sum(P.mT @ (U @ Wc.T) for P, Wc in zip(self.terms, self.maps))
            else:
                f = sum(self._heads_apply(P.mT, U @ W.T) for P, W in zip(self.terms, self.maps)
                        ) @ self.G.T
            return U + f if self.residual else f
        if self._adj is None:
            with torch.enable_grad():
                x0 = torch.zeros(self.shape, dtype=self.G.dtype, device=self.G.device,
                                 requires_grad=True)
                y0 = self(x0)

            def adj(u: Tensor) -> Tensor:
                return torch.autograd.grad(y0, x0, u, retain_graph=True)[0]
            self._adj = adj
        return self._adj(U)

    def power(self, n: int) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        r"""``(matvec, rmatvec)`` of :math:`\mathcal M^n`."""
        def mv(x: Tensor) -> Tensor:
            for _ in range(n):
                x = self(x)
            return x

        def rmv(u: Tensor) -> Tensor:
            for _ in range(n):
                u = self.adjoint(u)
            return u
        return mv, rmv


def _kronecker_norms(M: FrozenMap, n_max: int, tol: float, max_iter: int, seed: int,
                    growth: np.ndarray, iters: np.ndarray, resid: np.ndarray) -> None:
    """``M^n = P^n (.) W^n`` (one term, no residual, one affinity): the norm of a Kronecker
    product is the product of the factors' norms."""
    P, W = M.terms[0], M.maps[0]
    if not M.fused:
        W = M.G @ W
    vp = vw = None
    for n in range(1, n_max + 1):
        def pw(A: Tensor, n: int = n) -> tuple[Callable[[Tensor], Tensor],
                                               Callable[[Tensor], Tensor]]:
            def mv(v: Tensor) -> Tensor:
                for _ in range(n):
                    v = A @ v
                return v

            def rmv(u: Tensor) -> Tensor:
                for _ in range(n):
                    u = A.mT @ u
                return u
            return mv, rmv
        sp = top_singular_values(*pw(P), P[:, 0], 1, tol / 2, max_iter, v0=vp, seed=seed)
        sw = top_singular_values(*pw(W), W[:, 0], 1, tol / 2, max_iter, v0=vw, seed=seed)
        vp, vw = sp.vector, sw.vector
        growth[n - 1] = max(growth[n - 1], sp.norm * sw.norm)
        iters[n - 1] = max(iters[n - 1], sp.iterations + sw.iterations)
        resid[n - 1] = max(resid[n - 1], sp.residual + sw.residual)


@dataclass
class FrozenNorms:
    r"""Exact :math:`\|\mathcal M^n\|_2`, ``n = 1 .. n_max`` (:func:`frozen_norms`).

    Attributes
    ----------
    growth : numpy array ``(n_max,)``
        Max over the samples used.
    iterations, residual : numpy arrays ``(n_max,)``
        Products with :math:`\mathcal M^n` and the relative residual (max over samples).
    converged : bool
        Every power met ``tol``.
    tol : float
    samples : int
    """

    growth: np.ndarray
    iterations: np.ndarray
    residual: np.ndarray
    converged: bool
    tol: float
    samples: int

    @property
    def norm(self) -> float:
        return float(self.growth[0])


def frozen_norms(
    capture: Capture,
    n_max: int = 10,
    *,
    samples: int | None = None,
    include_output_scale: bool = True,
    tol: float = 1e-6,
    max_iter: int = 200,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    dense_limit: int = 2048,
) -> FrozenNorms:
    r"""Exact spectral norms :math:`\|\mathcal M^n\|_2`, ``n = 1 .. n_max``, of the block
    map with the affinity frozen (:class:`FrozenMap`), for any affinity (symmetric or not).

    For every ``n``: :func:`top_singular_values` on :math:`\mathcal M^n` and its adjoint
    :math:`(\mathcal M^T)^n`, warm-started from the top right singular vector of
    :math:`\mathcal M^{n-1}`; at most ``max_iter`` products with :math:`\mathcal M^n`, to
    a relative residual ``tol``. A map with one term and no residual (attention with the
    head-averaged affinity) is a Kronecker product, :math:`\mathcal M^n(X) = P^n X W^n`, whose
    norm is :math:`\|P^n\|_2 \|W^n\|_2` (each factor by the same iteration). The maximum over
    the first ``samples`` samples (all by default) is reported.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import DenseAffinity
    >>> A = DenseAffinity(torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))   # nilpotent, not normal
    >>> cap = Capture("b", "block", "toy", A, "none", weights=[torch.zeros(1, 1),
    ...               torch.ones(1, 1)], value_weight=torch.ones(1, 1), n_samples=1)
    >>> fn = frozen_norms(cap, n_max=2, tol=1e-12)   # M = I + A: |M| = 1.618, |M^2| = 2.414
    >>> [round(float(g), 4) for g in fn.growth], fn.converged
    ([1.618, 2.4142], True)
    """
    n_max = _check_positive_int("n_max", n_max)
    nb = max(capture.n_samples, 1)
    ns = nb if samples is None else min(_check_positive_int("samples", samples), nb)
    growth = np.zeros(n_max)
    iters = np.zeros(n_max, dtype=int)
    resid = np.zeros(n_max)
    with torch.no_grad():
        for i in range(ns):
            M = FrozenMap(capture, i, include_output_scale, dtype, dense_limit)
            like = torch.zeros(M.shape, dtype=dtype, device=M.G.device)
            if M.kronecker:
                _kronecker_norms(M, n_max, tol, max_iter, seed, growth, iters, resid)
                continue
            v0 = None
            for n in range(1, n_max + 1):
                mv, rmv = M.power(n)
                sv = top_singular_values(mv, rmv, like, 1, tol, max_iter, v0=v0, seed=seed)
                v0 = sv.vector
                growth[n - 1] = max(growth[n - 1], sv.norm)
                iters[n - 1] = max(iters[n - 1], sv.iterations)
                resid[n - 1] = max(resid[n - 1], sv.residual)
    return FrozenNorms(growth, iters, resid, bool((resid <= tol).all()), float(tol), ns)


# ------------------------------------------------------------------------------------------
# Damping, sign-correct
# ------------------------------------------------------------------------------------------


@dataclass
class Damping:
    r"""Per-frequency eigenvalues of the symmetric (Hermitian) part of the step
    :math:`K(\lambda) = G H(\lambda) S` (:func:`damping`).

    Attributes
    ----------
    frequencies : numpy array ``(n,)``
        The distinct Laplacian frequencies :math:`\lambda` whose eigenvalues were computed.
    negative_mass, positive_mass : numpy arrays ``(n,)``
        :math:`\sum_{\mu<0}|\mu|` and :math:`\sum_{\mu>0}\mu` of
        :math:`\operatorname{her}(K(\lambda))` per frequency.
    min_eig, max_eig : numpy arrays ``(n,)``
    share : float
        Share of frequencies that damp on balance (negative mass above positive mass, i.e.
        :math:`\operatorname{tr}\operatorname{her}K(\lambda) < 0`).
    definite_share : float
        Share of frequencies where every direction damps (:math:`\max\mu \le 0`).
    mass : float
        Negative eigen-mass over total eigen-mass, all frequencies together.
    how : str
    """

    frequencies: np.ndarray
    negative_mass: np.ndarray
    positive_mass: np.ndarray
    min_eig: np.ndarray
    max_eig: np.ndarray
    share: float
    definite_share: float
    mass: float
    how: str


def _hermitian_eigs_low_rank(G: np.ndarray, a: np.ndarray) -> np.ndarray:
    r"""Eigenvalues of :math:`\operatorname{her}(G a_i)` for a batch ``a`` ``(n, C_s, C)``,
    ``2 C_s < C``: the nonzero ones from :math:`R J R^H`, :math:`[G, a_i^H] = Q R`,
    :math:`J = \tfrac12\begin{pmatrix}0 & I\\ I & 0\end{pmatrix}` (rank ``<= 2 C_s``)."""
    n, cs, c = a.shape
    F = np.concatenate([np.broadcast_to(G.astype(a.dtype), (n, c, cs)),
                        np.conj(np.swapaxes(a, 1, 2))], 2)            # (n, C, 2 C_s)
    R = np.linalg.qr(F, mode="r")                                    # (n, 2 C_s, 2 C_s)
    J = np.zeros((2 * cs, 2 * cs))
    J[:cs, cs:] = J[cs:, :cs] = np.eye(cs) / 2
    core = R @ J @ np.conj(np.swapaxes(R, 1, 2))
    ev = np.linalg.eigvalsh((core + np.conj(np.swapaxes(core, 1, 2))) / 2)
    return np.concatenate([ev, np.zeros((n, c - 2 * cs))], 1)


def damping(
    capture: Capture,
    spectrum_result: Spectrum | None = None,
    include_output_scale: bool = True,
    method: str = "auto",
    dense_limit: int = AUTO_DENSE_LIMIT,
    chunk: int = 1024,
    max_frequencies: int | None = None,
    max_work: float = 2e9,
) -> Damping:
    r"""Sign-correct damping: on the graph frequency :math:`\lambda` a residual step adds
    :math:`x \mapsto x K(\lambda)`, :math:`K(\lambda) = G H(\lambda) S`, and
    :math:`\|x(I + K)\|^2 = \|x\|^2 + 2\,x\operatorname{her}(K)x^H + \|xK\|^2`: the directions
    of negative eigenvalues of :math:`\operatorname{her}(K(\lambda))` are damped (to first
    order). Unlike Tao et al.'s :math:`\operatorname{sym}(G W_1 S)` this includes the filter's
    dependence on :math:`\lambda`, so NS (:math:`H = -\lambda W`, damping with a *positive*
    :math:`G W S`), NL and SNL read the same way.

    ``K`` has rank :math:`r \le C_s`: the nonzero eigenvalues come from a
    :math:`2C_s \times 2C_s` problem per frequency (batched). Complex frequencies of a
    non-symmetric :math:`\hat A` use the Hermitian part (the Schur-diagonal view). The share
    (sign of :math:`\operatorname{tr}\operatorname{her}K(\lambda)`) is exact for every
    frequency; the eigenvalues (mass, definite share, ``frequencies`` of the arrays) are
    computed on at most ``max_frequencies`` evenly spaced frequencies, and on fewer when
    ``frequencies * min(C, 2 C_s)**3`` would exceed ``max_work`` (``how`` says so).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import DenseAffinity
    >>> A = DenseAffinity(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))    # mu = -1, 1
    >>> cap = Capture("b", "block", "toy", A, "sym", weights=[-torch.eye(2), torch.eye(2)],
    ...               value_weight=torch.eye(2), n_samples=1)        # H = -lambda I
    >>> d = damping(cap)
    >>> d.share, d.definite_share, d.mass          # lambda = 0 adds nothing (not counted)
    (1.0, 1.0, 1.0)
    """
    if capture.weights is None:
        raise ValueError(f"{capture.path}: no filter weights captured")
    if capture.layout == "channel_position" or capture.sub_sampled:
        raise ValueError(f"{capture.path}: no square position graph (CGNL or sub-sampled keys)")
    spec = spectrum_result if spectrum_result is not None else spectrum(
        capture.affinity, "normalized", capture.normalization, method=method,
        dense_limit=dense_limit, progress=False)
    lam = 1 - _distinct(np.concatenate([np.asarray(e) for e in spec.eigenvalues]))
    G, how = value_projection(capture)
    ws = _weights_np(capture.weights)
    s = _scale(capture, include_output_scale, ws[0].shape[1])
    if G.shape[0] != ws[0].shape[1]:
        raise ValueError(f"{capture.path}: the step K is {G.shape[0]} x {ws[0].shape[1]}, "
                         "not square")
    # K(lambda) = sum_k b_k(mu) M_k, M_k = G W_k S: a pencil in the basis values. Its trace
    # tr her K = Re sum_k b_k(mu) tr(M_k) is exact for every frequency; for 2 C_s >= C the
    # C x C matrices M_k are formed once (n_terms C^2 work per frequency, not C^2 C_s)
    low_rank = 2 * G.shape[1] < G.shape[0]
    nz = [k for k, w in enumerate(ws) if np.abs(w).max(initial=0.0) > 0]
    maps = None if low_rank else np.stack([G @ ws[k] * s[None, :] for k in nz])
    if maps is not None:        # her(b M) = Re(b) sym(M) + i Im(b) skew(M), M real
        sym_maps = (maps + np.swapaxes(maps, 1, 2)) / 2
        skew_maps = (maps - np.swapaxes(maps, 1, 2)) / 2
    traces = [np.ones((1, 1)) * float(np.sum(G * (w * s[None, :]).T)) for w in ws]
    params = capture.basis_params
    trace = np.real(frequency_response(traces, lam, basis=capture.basis,
                                       params=params)[:, 0, 0])
    dim = min(G.shape[0], 2 * G.shape[1])
    n_eig = len(lam) if max_frequencies is None else int(max_frequencies)
    n_eig = max(1, min(len(lam), n_eig, int(max_work // max(dim ** 3, 1))))
    pick = np.unique(np.linspace(0, len(lam) - 1, n_eig).round().astype(int))
    chunk = max(1, min(chunk, 2 ** 22 // max(G.shape[1] * G.shape[0], 1)))
    neg, pos, lo, hi = [], [], [], []
    for s0 in range(0, len(pick), chunk):
        sel = lam[pick[s0:s0 + chunk]]
        if low_rank:
            a = frequency_response(ws, sel, basis=capture.basis,
                                   params=params) * s[None, None, :]
            ev = _hermitian_eigs_low_rank(G, a)
        else:
            order = get_filter(capture.basis).order_of(len(ws))
            b = basis_values(order, 1 - sel, capture.basis, params)[:, nz]       # (n, terms)
            her = np.einsum("nt,tij->nij", b.real, sym_maps, optimize=True)
            if np.iscomplexobj(b) and np.any(b.imag != 0):
                her = her + 1j * np.einsum("nt,tij->nij", b.imag, skew_maps, optimize=True)
            ev = np.linalg.eigvalsh(her)
        neg.append(np.where(ev < 0, -ev, 0).sum(1))
        pos.append(np.where(ev > 0, ev, 0).sum(1))
        lo.append(ev.min(1))
        hi.append(ev.max(1))
    neg_m, pos_m = np.concatenate(neg), np.concatenate(pos)
    lo_a, hi_a = np.concatenate(lo), np.concatenate(hi)
    scale = max(float(np.abs(np.concatenate([lo_a, hi_a])).max(initial=0.0)), 1e-300)
    tol = 1e-9 * scale
    t_scale = max(float(np.abs(trace).max(initial=0.0)), 1e-300)
    active_all = np.abs(trace) > 1e-9 * t_scale
    active = (neg_m + pos_m) > tol
    share = float((trace < -1e-9 * t_scale).sum() / active_all.sum()) if active_all.any() \
        else 0.0
    definite = float(((hi_a <= tol) & active).sum() / max(active.sum(), 1)) \
        if active.any() else 0.0
    total = float((neg_m + pos_m).sum())
    mass = float(neg_m.sum() / total) if total > 0 else 0.0
    how += ("; share: sign of tr her K(lambda) over the frequencies where it is not zero "
            f"({int(active_all.sum())} of {len(lam)})")
    if len(pick) < len(lam):
        how += (f"; eigenvalues (mass, definite share) on {len(pick)} evenly spaced of the "
                f"{len(lam)} frequencies (cost: {dim}^3 per frequency)")
    lam = lam[pick]
    return Damping(np.real_if_close(lam), neg_m, pos_m, lo_a, hi_a, share, definite, mass, how)


# ------------------------------------------------------------------------------------------
# Empirical measures
# ------------------------------------------------------------------------------------------


def _module_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    for p in module.parameters():
        return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


class _Bound(nn.Module):
    """A module called with extra fixed arguments (eval-mode switching reaches it)."""

    def __init__(self, module: nn.Module, call: Callable[[nn.Module, Tensor], Tensor],
                 freeze: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.inner = module
        self._call = call
        self.freeze = freeze              # the recognizer's own hold, see frozen_function

    def forward(self, x: Tensor) -> Tensor:
        out = self._call(self.inner, x)
        return out[0] if isinstance(out, (tuple, list)) else out


def _attention_call(capture: Capture, index: int, device: torch.device
                    ) -> Callable[[nn.Module, Tensor], Tensor]:
    """How sample ``index`` of ``capture`` is re-run: its ``call`` with that sample's
    ``call_kwargs`` (masks...), or, for older captures of ``nn.MultiheadAttention`` without a
    ``call``, self-attention on the query in the ``(1, E, L)`` layout."""
    if capture.call is not None:
        fn = capture.call
        kw = {k: v[index:index + 1].to(device) for k, v in capture.call_kwargs.items()}
        return lambda module, t: fn(t, **kw)
    batch_first = getattr(capture.module, "batch_first", False)

    def call(module: nn.Module, t: Tensor) -> Tensor:
        q = t.permute(0, 2, 1) if batch_first else t.permute(2, 0, 1)
        out = module(q, q, q, need_weights=False)[0]
        return out.permute(0, 2, 1) if batch_first else out.permute(1, 2, 0)
    return call


def block_function(capture: Capture, index: int = 0) -> tuple[nn.Module, Tensor]:
    r"""``(f, x)``: the captured map as a function of its input (an ``nn.Module``, so
    :func:`jacobian_spectral_norm` runs it in eval mode), and sample ``index``'s input
    ``(1, C, *spatial)`` on the module's device.

    The map is ``capture.call`` when the capture has one (attention of other libraries:
    tuple outputs, keyword inputs such as masks, and the module's own layout are handled
    there; for a transformer layer it is the residual branch, e.g. ``x + Attn(LN(x))``),
    with sample ``index``'s ``call_kwargs``. Units of a stage that share the stage's affinity
    are called with the captured affinity (held fixed). Otherwise the module itself.

    Examples
    --------
    >>> import torch
    >>> from analysis.capture import capture
    >>> from graphfilters.blocks import make_block
    >>> cap = capture(make_block("snl", 4), torch.randn(2, 4, 3, 3), progress=False)["(root)"]
    >>> fn, x = block_function(cap, index=1)
    >>> x.shape, torch.equal(fn(x), x)                   # a new block is the identity
    (torch.Size([1, 4, 3, 3]), True)
    """
    module = capture.module
    if module is None or capture.input is None:
        raise ValueError(f"{capture.path}: the capture holds no module or input to re-run")
    if not 0 <= index < max(capture.n_samples, 1):
        raise ValueError(f"sample index {index} out of range [0, {capture.n_samples})")
    dtype, dev = _module_dtype_device(module)
    x = capture.input[index:index + 1].to(device=dev, dtype=dtype)
    if capture.call is not None or isinstance(module, nn.MultiheadAttention):
        owner = module if not isinstance(capture.call, nn.Module) else nn.ModuleList(
            [module, capture.call])                       # eval mode reaches the layer too
        freeze = None if capture.freeze is None else (lambda: capture.freeze(capture))
        return _Bound(owner, _attention_call(capture, index, dev), freeze), x
    if getattr(module, "shared_affinity", False) and getattr(module, "theta", 1) is None \
            and capture.affinity is not None:
        aff = capture.affinity.map_fields(lambda t: t[index:index + 1].to(dev))
        return _Bound(module, lambda m, t: m(t, aff)), x
    return _Bound(module, lambda m, t: m(t)), x


def jacobian_spectral_norm(
    fn: Callable[[Tensor], Tensor] | nn.Module,
    x: Tensor,
    n_iter: int = 50,
    tol: float = 1e-6,
    seed: int = 0,
    mode: str = "autograd",
    affinity: str = "full",
) -> float:
    r"""Largest singular value of the Jacobian :math:`J = \partial f / \partial x` at ``x``.

    Krylov-accelerated power iteration on :math:`J^T J` (:func:`top_singular_values`, at most
    ``n_iter`` products, relative residual ``tol``). Products with :math:`J^T` are
    vector-Jacobian products; products with :math:`J` are Jacobian-vector products, computed
    with ``mode="autograd"`` by the double-backward identity :math:`J v = \partial_u
    \langle J^T u, v\rangle` on one recorded forward (fast), or with ``mode="func"`` by
    ``torch.func.jvp`` (forward-mode AD) and ``torch.func.vjp``. If double backward is not
    implemented for an operation, it retries with PyTorch's math attention kernel, then uses
    ``func``. ``affinity="full"`` differentiates the module as it runs (affinity recomputed
    from the input); ``"frozen"`` holds the affinity of ``x`` fixed (:func:`frozen_function`).
    Modules run in eval mode (restored afterwards); everything runs on ``x``'s device.
    :func:`jacobian_singular_values` returns the top few values and the convergence.

    Shapes
    ------
    ``x``: any shape (the whole tensor is the input vector, batch included).

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 3, bias=False)
    >>> x = torch.randn(1, 3)
    >>> est = jacobian_spectral_norm(lin, x)
    >>> bool(abs(est - torch.linalg.matrix_norm(lin.weight, 2).item()) < 1e-4)
    True
    """
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
    return jacobian_singular_values(fn, x, 1, affinity=affinity, tol=tol, max_iter=n_iter,
                                    seed=seed, mode=mode).norm


def _autograd_products(fn: Callable[[Tensor], Tensor], x: Tensor
                       ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        y = fn(xr)
        u0 = torch.zeros_like(y, requires_grad=True)
        (gx,) = torch.autograd.grad(y, xr, u0, create_graph=True)

    def jvp(v: Tensor) -> Tensor:
        return torch.autograd.grad(gx, u0, v, retain_graph=True)[0].detach()

    def vjp(u: Tensor) -> Tensor:
        return torch.autograd.grad(y, xr, u, retain_graph=True)[0].detach()

    jvp(torch.zeros_like(x))                     # fail now if double backward is missing
    return jvp, vjp


def _func_products(fn: Callable[[Tensor], Tensor], x: Tensor
                   ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    _, vjp_fn = torch.func.vjp(fn, x)

    def jvp(v: Tensor) -> Tensor:
        return torch.func.jvp(fn, (x,), (v,))[1].detach()

    def vjp(u: Tensor) -> Tensor:
        return vjp_fn(u)[0].detach()

    return jvp, vjp


# ------------------------------------------------------------------------------------------
# Jacobians: full (affinity recomputed) and frozen (affinity fixed), unit / stage / stack
# ------------------------------------------------------------------------------------------

AFFINITY_MODES = ("full", "frozen")


def _mha_frozen(module: nn.MultiheadAttention, x: Tensor) -> Callable[[Tensor], Tensor]:
    """Self-attention in the ``(B, E, L)`` layout with the attention weights of ``x`` fixed."""
    E, H = module.embed_dim, module.num_heads
    if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
        raise ValueError("affinity='frozen' supports nn.MultiheadAttention with a packed "
                         "in_proj and no bias_k/add_zero_attn")
    w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    b_q, b_k, b_v = (module.in_proj_bias.chunk(3) if module.in_proj_bias is not None
                     else (None, None, None))
    d = E // H

    def heads(t: Tensor) -> Tensor:                       # (B, L, E) -> (B, H, L, d)
        return t.reshape(t.shape[0], t.shape[1], H, d).transpose(1, 2)

    with torch.no_grad():
        q0 = x.transpose(1, 2)
        qh = heads(nn.functional.linear(q0, w_q, b_q))
        kh = heads(nn.functional.linear(q0, w_k, b_k))
        probs = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), -1).detach()

    def fn(t: Tensor) -> Tensor:
        vh = heads(nn.functional.linear(t.transpose(1, 2), w_v, b_v))
        o = (probs @ vh).transpose(1, 2).reshape(t.shape[0], t.shape[2], E)
        return module.out_proj(o).transpose(1, 2)
    return fn


def frozen_function(fn: Callable[[Tensor], Tensor] | nn.Module, x: Tensor
                    ) -> Callable[[Tensor], Tensor]:
    r"""``fn`` with its affinity computed from ``x`` and then held fixed.

    Supported: graphfilters blocks (:class:`~graphfilters.blocks.unified.ChebyshevNonlocal`
    and everything with ``compute_affinity`` and an ``affinity`` argument), stages
    (:class:`~graphfilters.blocks.NonlocalStage`: one affinity of the stage input for all
    units), a shared-affinity unit as returned by :func:`block_function` (already frozen),
    ``nn.MultiheadAttention`` called by :func:`block_function` (``(1, E, L)`` layout), and
    :class:`StackFunction` (each member frozen at its input along ``x``'s trajectory).
    The result is linear in its input up to constants: its Jacobian is
    :math:`J_{fix}`.

    Raises
    ------
    ValueError
        For a module whose affinity cannot be separated from its input.
    """
    from graphfilters.blocks import NonlocalStage

    inner = fn.inner if isinstance(fn, _Bound) else fn
    if isinstance(fn, StackFunction):
        frozen, t = [], x
        with torch.no_grad():
            for m in fn.members:
                frozen.append(frozen_function(m, t))
                t = m(t)
        members = frozen

        def stack(t: Tensor) -> Tensor:
            for f in members:
                t = f(t)
            return t
        return stack
    if isinstance(inner, nn.MultiheadAttention):
        return _mha_frozen(inner, x)
    if isinstance(fn, _Bound):
        if getattr(inner, "shared_affinity", False):
            return fn                                     # called with a fixed affinity
        if hasattr(inner, "compute_affinity"):             # a graphfilters block, called plainly
            return frozen_function(inner, x)

        if fn.freeze is not None:                         # the recognizer's own hold
            def own(t: Tensor) -> Tensor:
                with fn.freeze() as hold:
                    out = fn(t)
                if not getattr(hold, "held", 0):
                    raise ValueError(
                        f"{type(inner).__name__}: its recognizer's freeze held no affinity, so "
                        "its frozen Jacobian would be the full one")
                return out
            return own

        def held(t: Tensor) -> Tensor:                    # attention of another library
            watcher = hold_affinities()
            before = _patch_holds()
            with attention_held_fixed(), watcher:
                out = fn(t)
            if watcher.held == 0 and _patch_holds() == before:
                raise ValueError(
                    f"{type(inner).__name__}: no affinity was held fixed in its forward (none "
                    "seen applied), so its frozen Jacobian would be the full one")
            return out
        return held
    if isinstance(fn, NonlocalStage):
        with torch.no_grad():
            aff = fn.compute_affinity(x).detach()

        def stage(t: Tensor) -> Tensor:
            for u in fn.units:
                t = u(t, aff)
            return t
        return stage
    if isinstance(fn, nn.Module) and hasattr(fn, "compute_affinity") \
            and not getattr(fn, "shared_affinity", False):
        with torch.no_grad():
            aff = fn.compute_affinity(x).detach()
        return lambda t: fn(t, aff)
    raise ValueError(
        f"affinity='frozen' needs a graphfilters block or stage or nn.MultiheadAttention, got "
        f"{type(fn).__name__}"
    )


_HELD = threading.local()            # per thread: how deep inside attention_held_fixed()
_PATCH_LOCK = threading.Lock()
_PATCH_USERS = 0
_ORIGINALS: tuple[Any, ...] = ()


def _held() -> bool:
    return getattr(_HELD, "depth", 0) > 0


def _patch_holds() -> int:
    """How many softmax/SDPA results the wrappers detached in this thread."""
    return getattr(_HELD, "count", 0)


def _detached(out: Tensor) -> Tensor:
    if not _held():
        return out
    _HELD.count = _patch_holds() + 1
    return out.detach()


def _held_softmax(*args: Any, **kwargs: Any) -> Tensor:
    return _detached(_ORIGINALS[0](*args, **kwargs))


def _held_f_softmax(*args: Any, **kwargs: Any) -> Tensor:
    return _detached(_ORIGINALS[1](*args, **kwargs))


def _held_t_softmax(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return _detached(_ORIGINALS[2](self, *args, **kwargs))


def _held_sdpa(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> Tensor:
    if not _held():                  # (enable_gqa passed only when set: torch < 2.5 lacks it)
        extra = {"enable_gqa": True} if enable_gqa else {}
        return _ORIGINALS[3](query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                             is_causal=is_causal, scale=scale, **extra)
    if dropout_p:
        raise ValueError("attention_held_fixed: dropout in attention (run in eval mode)")
    L, S = query.shape[-2], key.shape[-2]
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(rep, -3)
        value = value.repeat_interleave(rep, -3)
    s = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = (query @ key.transpose(-2, -1)) * s
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        logits = logits + additive_mask(causal, "attend", logits.dtype)
    if attn_mask is not None:            # SDPA's boolean masks: True = attend
        logits = logits + additive_mask(attn_mask, "attend", logits.dtype)
    return _detached(_ORIGINALS[0](logits, -1)) @ value


@contextmanager
def attention_held_fixed() -> Iterable[None]:
    r"""Within this context, attention probabilities are constants for autograd.

    Every way the supported libraries form attention probabilities is wrapped so that its
    result is detached: ``torch.softmax``, ``torch.nn.functional.softmax`` and
    ``Tensor.softmax`` (eager attention: Hugging Face ``eager``, ``nn.MultiheadAttention`` with
    weights, mmcv ``NonLocal2d``), and ``torch.nn.functional.scaled_dot_product_attention``
    (Hugging Face ``sdpa``, timm, ``nn.MultiheadAttention`` without weights), replaced by
    :math:`\operatorname{sg}(\operatorname{softmax}(QK^T s + M))\,V`. A module run inside it
    computes its usual output, and its derivative at the input is the frozen-affinity
    Jacobian :math:`J_{fix}` (the affinity's dependence on the input dropped); used by
    :func:`frozen_function` for captures re-run through ``Capture.call``.

    Only the thread that entered the context is affected: the wrappers are installed while
    any thread is inside one, and detach only for a thread that is (other threads, e.g. a
    training loop, keep their gradients). Contexts nest.

    Examples
    --------
    >>> import torch
    >>> q = torch.randn(1, 1, 3, 2, requires_grad=True)
    >>> with attention_held_fixed():
    ...     out = torch.nn.functional.scaled_dot_product_attention(q, q.detach(), q.detach())
    >>> out.requires_grad                 # only through the values
    False
    """
    import torch.nn.functional as F

    global _PATCH_USERS, _ORIGINALS
    with _PATCH_LOCK:
        if _PATCH_USERS == 0:
            _ORIGINALS = (torch.softmax, F.softmax, torch.Tensor.softmax,
                          F.scaled_dot_product_attention)
            torch.softmax, F.softmax, torch.Tensor.softmax = (
                _held_softmax, _held_f_softmax, _held_t_softmax)
            F.scaled_dot_product_attention = _held_sdpa
        _PATCH_USERS += 1
    _HELD.depth = getattr(_HELD, "depth", 0) + 1
    try:
        yield
    finally:
        _HELD.depth -= 1
        with _PATCH_LOCK:
            _PATCH_USERS -= 1
            if _PATCH_USERS == 0:
                (torch.softmax, F.softmax, torch.Tensor.softmax,
                 F.scaled_dot_product_attention) = _ORIGINALS


class StackFunction(nn.Module):
    r"""Modules applied one after another (a trained stack of blocks), as one function.

    Examples
    --------
    >>> import torch
    >>> f = StackFunction([torch.nn.Identity(), torch.nn.Identity()])
    >>> torch.equal(f(torch.ones(2)), torch.ones(2))
    True
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        for m in self.members:
            x = m(x)
        return x


def _products(fn: Callable[[Tensor], Tensor], x: Tensor, mode: str
              ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    if mode not in ("autograd", "func"):
        raise ValueError(f"mode must be 'autograd' or 'func', got {mode!r}")
    if mode == "autograd":
        try:
            return _autograd_products(fn, x)
        except (RuntimeError, NotImplementedError):
            # fused attention kernels lack double backward: retry with the math kernel
            try:
                with sdpa_kernel([SDPBackend.MATH]):
                    return _autograd_products(fn, x)
            except (RuntimeError, NotImplementedError):
                pass
    return _func_products(fn, x)


def jacobian_singular_values(
    fn: Callable[[Tensor], Tensor] | nn.Module,
    x: Tensor,
    k: int = 1,
    *,
    affinity: str = "full",
    tol: float = 1e-6,
    max_iter: int = 100,
    seed: int = 0,
    mode: str = "autograd",
) -> SingularValues:
    r"""The ``k`` largest singular values of :math:`J = \partial f/\partial x` at ``x``,
    matrix-free (:func:`top_singular_values` with Jacobian-vector and vector-Jacobian
    products).

    ``affinity="full"``: the module as it runs (the affinity recomputed from the input, what
    training sees). ``affinity="frozen"``: the affinity computed from ``x`` and held fixed
    (:func:`frozen_function`): :math:`J_{fix}`. Modules run in eval mode (restored
    afterwards); everything runs on ``x``'s device.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 3, bias=False).double()
    >>> sv = jacobian_singular_values(lin, torch.randn(1, 3, dtype=torch.float64), k=3,
    ...                               tol=1e-10)
    >>> ref = torch.linalg.svdvals(lin.weight.detach()).numpy()
    >>> bool(abs(sv.values - ref).max() < 1e-8)
    True
    """
    if affinity not in AFFINITY_MODES:
        raise ValueError(f"affinity must be one of {AFFINITY_MODES}, got {affinity!r}")
    max_iter = _check_positive_int("max_iter", max_iter)
    x = x.detach()
    with eval_mode(fn) if isinstance(fn, nn.Module) else nullcontext():
        f = frozen_function(fn, x) if affinity == "frozen" else fn
        jvp, vjp = _products(f, x, mode)
        return top_singular_values(jvp, vjp, x, k, tol, max_iter, seed=seed)


@dataclass
class JacobianReport:
    r"""Full and frozen Jacobians of one function at one input (:func:`jacobians`).

    Attributes
    ----------
    full, frozen : SingularValues
        :math:`J_{full}` (affinity recomputed) and :math:`J_{fix}` (affinity frozen).
    affinity_share : float
        :math:`\|J_{full} - J_{fix}\|_2 / \|J_{fix} - I\|_2` (residual functions;
        :math:`/\|J_{fix}\|_2` otherwise): how much the affinity's dependence on the input
        adds, relative to what the block adds with the affinity fixed.
    residual : bool
    """

    full: SingularValues
    frozen: SingularValues
    affinity_share: float
    residual: bool


def jacobians(
    fn: Callable[[Tensor], Tensor] | nn.Module,
    x: Tensor,
    k: int = 3,
    *,
    residual: bool = True,
    tol: float = 1e-6,
    max_iter: int = 100,
    seed: int = 0,
    mode: str = "autograd",
) -> JacobianReport:
    r"""Full and frozen Jacobian singular values of ``fn`` at ``x``, and the affinity's
    share :math:`\|J_{full} - J_{fix}\| / \|J_{fix} - I\|` (all matrix-free).

    ``fn`` is a unit (:func:`block_function`), a stage
    (:class:`~graphfilters.blocks.NonlocalStage`: the affinity computed from the stage
    input and shared by its units) or a :class:`StackFunction` of trained blocks.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.blocks import make_block
    >>> block = make_block("snl", 4).double()
    >>> rep = jacobians(block, torch.randn(1, 4, 3, 3, dtype=torch.float64), k=1)
    >>> round(rep.full.norm, 6), round(rep.frozen.norm, 6)     # new block: the identity
    (1.0, 1.0)
    """
    x = x.detach()
    with eval_mode(fn) if isinstance(fn, nn.Module) else nullcontext():
        jf, vf = _products(fn, x, mode)
        jz, vz = _products(frozen_function(fn, x), x, mode)
        # warm starts along related maps (each mixed with a random part, see
        # top_singular_values): J_fix - I -> J_fix -> J_full. A ViT-B layer: 23 + 23 + 9
        # products instead of 23 + 29 + 30; J_fix's products are the cheaper ones.
        start = None
        if residual:
            rest = top_singular_values(lambda v: jz(v) - v, lambda u: vz(u) - u, x, 1, tol,
                                       max_iter, seed=seed)
            start = rest.vector
        frozen = top_singular_values(jz, vz, x, k, tol, max_iter, v0=start, seed=seed)
        base = rest.norm if residual else frozen.norm
        full = top_singular_values(jf, vf, x, k, tol, max_iter, v0=frozen.vector, seed=seed)
        diff = top_singular_values(lambda v: jf(v) - jz(v), lambda u: vf(u) - vz(u), x, 1,
                                   tol, max_iter, seed=seed)
    share = diff.norm / base if base > 0 else (0.0 if diff.norm == 0 else float("inf"))
    return JacobianReport(full, frozen, float(share), residual)


def stage_jacobians(stage: nn.Module, x: Tensor, k: int = 3, **options: Any) -> JacobianReport:
    r"""Full and frozen Jacobians of a whole stage: ``k`` units sharing the affinity
    computed from the stage input (:class:`~graphfilters.blocks.NonlocalStage`), at the
    stage input ``x`` (see :func:`jacobians`).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.blocks import NonlocalStage
    >>> stage = NonlocalStage(4, n_units=3).double()
    >>> rep = stage_jacobians(stage, torch.randn(1, 4, 3, 3, dtype=torch.float64), k=1)
    >>> round(rep.full.norm, 6)                          # a new stage is the identity
    1.0
    """
    if not hasattr(stage, "units") or not hasattr(stage, "compute_affinity"):
        raise TypeError(f"stage must be a NonlocalStage, got {type(stage).__name__}")
    return jacobians(stage, x, k, residual=True, **options)


def stack_jacobians(modules: Sequence[nn.Module], x: Tensor, k: int = 3,
                    **options: Any) -> JacobianReport:
    r"""Full and frozen Jacobians of trained blocks applied one after another
    (:class:`StackFunction`; frozen: each block's affinity fixed at its own input along
    ``x``'s trajectory).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.blocks import make_block
    >>> blocks = [make_block("nl", 4).double() for _ in range(2)]
    >>> rep = stack_jacobians(blocks, torch.randn(1, 4, 3, 3, dtype=torch.float64), k=1)
    >>> round(rep.frozen.norm, 6)
    1.0
    """
    return jacobians(StackFunction(list(modules)), x, k, residual=True, **options)


#: Residual units of backbones measured by :func:`backbone_jacobians` (by class name).
BACKBONE_UNITS = ("PreActBasicBlock", "PreActBottleneck", "BasicBlock", "Bottleneck")


def backbone_jacobians(
    model: nn.Module,
    x: Tensor,
    *,
    unit_types: Sequence[type | str] = BACKBONE_UNITS,
    k: int = 1,
    tol: float = 1e-4,
    max_iter: int = 60,
    progress: bool = False,
) -> list[dict[str, Any]]:
    r"""Full Jacobian spectral norms of the backbone's own residual units (e.g.
    :class:`~graphfilters.models.PreActBasicBlock`), each at its input on the first sample of
    ``x``: the reference a nonlocal block's value is read against.

    Returns
    -------
    list of dict
        ``{"path", "type", "jacobian_full", "iterations", "residual", "converged"}`` per unit
        (empty when the model has none).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.models import PreResNet
    >>> rows = backbone_jacobians(PreResNet(depth=8, num_classes=3, width=4),
    ...                           torch.randn(2, 3, 8, 8))
    >>> len(rows) > 0, rows[0]["jacobian_full"] > 0
    (True, True)
    """
    names = {t for t in unit_types if isinstance(t, str)}
    types = tuple(t for t in unit_types if isinstance(t, type))
    units = [(p, m) for p, m in model.named_modules()
             if (types and isinstance(m, types)) or type(m).__name__ in names]
    if not units:
        return []
    inputs: dict[str, Tensor] = {}
    handles = []
    for p, m in units:
        def hook(mod: nn.Module, args: tuple, p: str = p) -> None:
            if p not in inputs and args and isinstance(args[0], Tensor):
                inputs[p] = args[0][:1].detach()
        handles.append(m.register_forward_pre_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:1].to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
    rows = []
    for p, m in tqdm(units, desc="backbone", disable=not progress, leave=False):
        if p not in inputs:
            continue
        sv = jacobian_singular_values(m, inputs[p], k, tol=tol, max_iter=max_iter)
        rows.append({"path": p, "type": type(m).__name__, "jacobian_full": sv.norm,
                     "iterations": sv.iterations, "residual": sv.residual,
                     "converged": sv.converged})
    return rows


def noise_sensitivity(
    fn: Callable[[Tensor], Tensor] | nn.Module,
    x: Tensor,
    level: float = 0.1,
    n_draws: int = 4,
    seed: int = 0,
) -> dict[str, float]:
    r"""Relative output change under Gaussian input noise of relative size ``level``.

    :math:`\delta = \text{level}\,\|x\|\,\epsilon/\|\epsilon\|`, and the result averages
    :math:`\|f(x + \delta) - f(x)\| / \|f(x)\|` over ``n_draws`` draws; ``gain`` divides it by
    ``level``.

    Examples
    --------
    >>> import torch
    >>> out = noise_sensitivity(torch.nn.Identity(), torch.ones(2, 3), level=0.1)
    >>> round(out["relative_change"], 6), round(out["gain"], 6)
    (0.1, 1.0)
    """
    if not level > 0:
        raise ValueError(f"level must be > 0, got {level!r}")
    x = x.detach()
    with eval_mode(fn) if isinstance(fn, nn.Module) else nullcontext():
        gen = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            y = fn(x)
            changes = []
            for _ in range(n_draws):
                eps = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
                delta = level * x.norm() * eps / eps.norm()
                changes.append(float((fn(x + delta) - y).norm() / y.norm().clamp_min(1e-30)))
    rel = float(np.mean(changes))
    return {"relative_change": rel, "gain": rel / level}


def _perturb(aff: Affinity, level: float, gen: torch.Generator) -> Affinity:
    def noisy(t: Tensor) -> Tensor:
        eps = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
        return t * torch.exp(level * eps)
    return aff.map_fields(noisy)


def affinity_sensitivity(
    capture: Capture, level: float = 0.1, n_draws: int = 4, seed: int = 0
) -> dict[str, float]:
    r"""Filter-output change when the affinity is perturbed, :math:`Z` and :math:`W_k` fixed.

    Every array that defines the affinity (low-rank factors, queries/keys, dense entries) is
    multiplied elementwise by :math:`e^{\text{level}\,\epsilon}`, :math:`\epsilon \sim
    \mathcal N(0, 1)` (a relative perturbation that keeps signs, hence non-negative degrees).
    Returns the mean relative change of the operator's action
    :math:`\|\hat A' Z - \hat A Z\| / \|\hat A Z\|`, of the filter output
    :math:`\|F' - F\| / \|F\|`, and their ratio ``gain``. An N×M affinity (sub-sampled
    keys) has the order-1 filter :math:`F = \hat A Z W_1`.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import LowRankAffinity
    >>> g = torch.Generator().manual_seed(0)
    >>> aff = LowRankAffinity(torch.rand(1, 8, 2, generator=g), torch.rand(1, 8, 2, generator=g),
    ...                       symmetric=True)
    >>> cap = Capture("b", "block", "toy", aff, "sym", z=torch.randn(1, 8, 3, generator=g),
    ...               weights=[torch.zeros(3, 3), torch.eye(3)])
    >>> out = affinity_sensitivity(cap, level=0.01)     # F = A_hat Z: gain 1
    >>> round(out["gain"], 6)
    1.0
    """
    if capture.affinity is None or capture.z is None or capture.weights is None:
        raise ValueError(f"{capture.path}: needs the affinity, Z and the weights")
    if capture.layout == "channel_position":
        raise ValueError(f"{capture.path}: no position graph (CGNL channel-position nodes)")
    aff = capture.affinity
    z = capture.z
    ws = list(capture.weights)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    square = aff.n == aff.n_cols
    if not square and (len(ws) != 2 or bool(ws[0].ne(0).any())):
        raise ValueError(f"{capture.path}: an N x M affinity has an order-1 filter A Z W_1 "
                         "(W_0 = 0)")

    def run(a: Affinity) -> tuple[Tensor, Tensor]:
        op = a.normalized(capture.normalization)
        if not square:                      # N x M (sub-sampled keys): F = (A_hat Z) W_1
            az = op(z)
            return az, az @ ws[1].to(az.dtype)
        if _per_head(capture):              # one affinity per head acts on its own values
            c = replace(capture, affinity=a)
            return op(_head_signal(c)), filter_output(c)
        return op(z), apply_filter(op, z, ws, capture.basis, capture.basis_params,
                                   module=capture.module)

    with torch.no_grad():
        az, f = run(aff)
        op_changes, out_changes = [], []
        for _ in range(n_draws):
            az2, f2 = run(_perturb(aff, level, gen))
            op_changes.append(float((az2 - az).norm() / az.norm().clamp_min(1e-30)))
            out_changes.append(float((f2 - f).norm() / f.norm().clamp_min(1e-30)))
    op_c, out_c = float(np.mean(op_changes)), float(np.mean(out_changes))
    return {"operator_change": op_c, "output_change": out_c,
            "gain": out_c / op_c if op_c > 0 else float("nan")}


def accuracy_under_noise(
    model: nn.Module,
    data: Iterable[Any],
    levels: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.4),
    *,
    relative: bool = False,
    max_batches: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[float, float]:
    r"""Top-1 accuracy of a classifier when :math:`\mathcal N(0, \sigma^2)` noise is added to
    its inputs, for each :math:`\sigma` in ``levels``.

    Parameters
    ----------
    model : nn.Module
        Maps inputs to logits ``(B, classes)``; run in eval mode under ``no_grad`` on its
        device (modes restored).
    data : iterable of ``(input, target)`` batches
    levels : sequence of float
        Noise standard deviations (in input units, or times each input's standard deviation
        when ``relative=True``).
    max_batches : int, optional
        Batches used per level.

    Returns
    -------
    dict level -> accuracy in [0, 1]

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2))
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); y = torch.tensor([0, 1])
    >>> accuracy_under_noise(model, [(x, y)], levels=(0.0,), progress=False)
    {0.0: 1.0}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    levels = [float(s) for s in levels]
    if any(s < 0 for s in levels):
        raise ValueError(f"noise levels must be >= 0, got {levels}")
    dev = model_device(model)
    batches = []
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
            raise TypeError("accuracy_under_noise needs (input, target) batches")
        batches.append((_batch_input(batch), batch[1]))
    if not batches:
        raise ValueError("no batches in data")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: dict[float, float] = {}
    with eval_mode(model), torch.no_grad():
        bar = tqdm(levels, desc="accuracy vs noise", disable=not progress, leave=False)
        for s in bar:
            correct = total = 0
            for x, y in batches:
                x = x.to(dev)
                eps = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(dev)
                if relative:
                    std = x.flatten(1).std(1).reshape(-1, *([1] * (x.ndim - 1)))
                    eps = eps * std
                pred = model(x + s * eps).argmax(-1)
                correct += int((pred.cpu() == y.cpu()).sum())
                total += int(y.numel())
            out[s] = correct / total
        bar.close()
    return out
