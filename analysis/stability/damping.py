r"""Damping, sign-correct: per-frequency eigenvalues of the symmetric (Hermitian) part of
the step map of a block with its affinity fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphfilters import _validate as V
from graphfilters.filters import get_filter

from ..capture import Capture
from ..capture_record import example_capture
from ..eigen import SPECTRUM_METHODS
from ..response import (
    basis_values,
    frequency_response,
    weights_float64,
)
from ..spectra import AUTO_DENSE_LIMIT, Spectrum, spectrum
from .channel import distinct_values, output_scale_vector, value_projection

__all__ = [
    "Damping",
    "damping",
]


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


@V.validate_params(
    {"capture": [V.InstanceOf(Capture)], "include_output_scale": ["boolean"],
     "method": [V.StrOptions(SPECTRUM_METHODS)], "dense_limit": [V.NONNEG_INT],
     "chunk": [V.POS_INT],
     "max_frequencies": [V.POS_INT, None], "max_work": [V.POS_REAL]},
    valid=lambda: {"capture": example_capture()},
)
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
    lam = 1 - distinct_values(np.concatenate([np.asarray(e) for e in spec.eigenvalues]))
    G, how = value_projection(capture)
    ws = weights_float64(capture.weights)
    s = output_scale_vector(capture, include_output_scale, ws[0].shape[1])
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
            # a real b gives a real symmetric her(K): a real eigen-solve, a quarter of the
            # work of the complex Hermitian one the complex frequencies need
            cplx = np.any(b.imag != 0, axis=1) if np.iscomplexobj(b) else np.zeros(len(b), bool)
            ev = np.empty((len(b), maps.shape[1]))
            for rows in (~cplx, cplx):
                if rows.any():
                    her = np.einsum("nt,tij->nij", b[rows].real, sym_maps, optimize=True)
                    if rows is cplx:
                        her = her + 1j * np.einsum("nt,tij->nij", b[rows].imag, skew_maps,
                                                   optimize=True)
                    ev[rows] = np.linalg.eigvalsh(her)
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
