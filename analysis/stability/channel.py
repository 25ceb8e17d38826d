r"""The channel maps of a block with its affinity fixed, read from its capture: the value
projection :math:`G`, the output scale :math:`s`, the effective channel map
:math:`W_{eff} = G W_k S` and Tao et al.'s (NeurIPS 2018) spectrum of its symmetric part
(see :mod:`analysis.robustness` for the notation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphfilters import _validate as V
from graphfilters._backend import to_numpy64

from ..capture import Capture
from ..capture_record import example_capture
from ..response import (
    weights_float64,
)

__all__ = [
    "value_projection",
    "output_scale_vector",
    "effective_channel_map",
    "TaoSpectrum",
    "tao_spectrum",
    "distinct_values",
]


@V.validate_params(
    {"capture": [V.InstanceOf(Capture)], "rtol": [V.POS_REAL]},
    valid=lambda: {"capture": example_capture()},
)
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
        return to_numpy64(capture.value_weight), "from the module"
    if capture.input is None or capture.z is None:
        raise ValueError(
            f"{capture.path}: no value projection recorded and no input/Z to estimate it"
        )
    x = to_numpy64(capture.input)
    X = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1).reshape(-1, x.shape[1])
    Z = to_numpy64(capture.z)
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


def output_scale_vector(capture: Capture, include: bool, c_out: int) -> np.ndarray:
    if include and capture.output_scale is not None:
        return to_numpy64(capture.output_scale).reshape(-1)
    return np.ones(c_out)


@V.validate_params(
    {"capture": [V.InstanceOf(Capture)], "term": [V.NONNEG_INT],
     "include_output_scale": ["boolean"]},
    valid=lambda: {"capture": example_capture()},
)
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
    ws = weights_float64(capture.weights)
    if not 0 <= term < len(ws):
        raise ValueError(f"term must be in 0..{len(ws) - 1} (the filter order), got {term}")
    G, _ = value_projection(capture)
    W = ws[term]
    return G @ W * output_scale_vector(capture, include_output_scale, W.shape[1])[None, :]


def single_term(capture: Capture) -> int | None:
    """The index of the filter's only nonzero term, or ``None`` (no weights, several terms or
    none).

    Examples
    --------
    >>> import torch
    >>> cap = Capture("b", "block", "toy", None, weights=[torch.zeros(1, 1), torch.ones(1, 1)],
    ...               value_weight=torch.ones(1, 1))
    >>> single_term(cap)
    1
    """
    if capture.weights is None:
        return None
    nonzero = [k for k, w in enumerate(weights_float64(capture.weights))
               if np.abs(w).max(initial=0.0) > 0]
    return nonzero[0] if len(nonzero) == 1 else None


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


@V.validate_params(
    {"capture": [V.InstanceOf(Capture)], "term": [V.NONNEG_INT, None],
     "include_output_scale": ["boolean"], "tol": [V.NONNEG_REAL]},
    valid=lambda: {"capture": example_capture()},
)
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


def distinct_values(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values)
    if np.iscomplexobj(v) and np.abs(v.imag).max(initial=0.0) <= 1e-12:
        v = v.real
    r = np.round(v, 10)
    _, idx = np.unique(r, return_index=True)
    return v[np.sort(idx)]
