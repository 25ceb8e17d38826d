r"""Non-square affinities (N queries × M keys) read as bipartite graphs.

Sub-sampled keys (the non-local block's max-pooled ``phi``/``g``), spatial reduction
(SegFormer), a global context row (GCNet) and cross-attention apply an affinity
:math:`\hat A \in \mathbb R^{N \times M}` from M key nodes to N query nodes. It is not the
adjacency of one graph, so it has no eigenvalues; it is the biadjacency of a **bipartite
graph** on :math:`N + M` nodes with adjacency

.. math::

    B = \begin{pmatrix} 0 & \hat A \\ \hat A^T & 0 \end{pmatrix}.

Operator
--------
For a nonnegative :math:`\hat A` with positive degrees :math:`d_q = \hat A \mathbf 1`
(queries) and :math:`d_k = \hat A^T \mathbf 1` (keys), the normalized biadjacency

.. math::

    S = D_q^{-1/2} \hat A D_k^{-1/2}, \qquad S = U \Sigma V^T,

has singular values :math:`1 = \sigma_1 \ge \sigma_2 \ge \dots \ge 0` (the top pair is
:math:`\sqrt{d_q}, \sqrt{d_k}` normalized). The normalized Laplacian of :math:`B`,
:math:`I - D^{-1/2} B D^{-1/2}`, has eigenvalues :math:`1 \mp \sigma_i` (and 1 with
multiplicity :math:`|N - M|`): the **graph frequencies** used here are the lower half,
:math:`\lambda_i = 1 - \sigma_i \in [0, 1]`, with the right singular vectors :math:`V` as the
Fourier basis of signals on the keys and the left ones :math:`U` for signals on the queries.
Equivalently, :math:`\sigma_i^2` are the eigenvalues of the query graph
:math:`P = \hat A D_k^{-1} \hat A^T` (for a row-stochastic :math:`\hat A`, the two-step random
walk query → key → query, itself row-stochastic), so the square graph the keys induce on the
queries has the spectrum :math:`\sigma_i^2`.

An affinity with negative entries or an empty row/column (a dot-product kernel divided by
M) is not a graph: the singular values of :math:`\hat A` itself are reported, without degree
normalization, and the operator says so.

Everything here is exact (dense SVD, float64) up to :data:`DENSE_LIMIT` keys or queries; the
size check comes before any allocation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from graphfilters import _validate as V

from .capture_record import Capture
from .response import BlockResponse, FrequencyEnergy, block_response, pencil_gains
from .spectra import effective_rank

__all__ = ["BipartiteSpectrum", "bipartite_spectrum", "bipartite_energy", "bipartite_response",
           "DENSE_LIMIT"]

#: Largest ``min(N, M)`` of the dense SVD (the other side may be larger).
DENSE_LIMIT = 4096
#: Largest number of entries ``S N M`` of the dense float64 affinity.
MAX_ENTRIES = 2**27


@dataclass
class BipartiteSpectrum:
    r"""Singular values of a batch of N×M affinities as bipartite graphs.

    Attributes
    ----------
    singular_values : list of numpy arrays
        :math:`\sigma_i` of the operator (:math:`S` or :math:`\hat A`, see ``operator``),
        descending, ``min(N, M)`` per sample.
    raw_singular_max : numpy array ``(S,)``
        :math:`\|\hat A\|_2`, the largest singular value of the affinity itself.
    row_sum_deviation : numpy array ``(S,)``
        :math:`\max_i |(\hat A \mathbf 1)_i - 1|`.
    operator : str
        ``"normalized_biadjacency"`` (:math:`S = D_q^{-1/2} \hat A D_k^{-1/2}`) or
        ``"affinity"`` (not a graph: negative entries or an empty row or column).
    n, m : int
        Queries and keys.
    left, right : list of tensors or None
        :math:`U` ``(N, r)`` and :math:`V` ``(M, r)`` per sample (``vectors=True``).
    notes : dict
    """

    singular_values: list[np.ndarray]
    raw_singular_max: np.ndarray
    row_sum_deviation: np.ndarray
    operator: str
    n: int
    m: int
    left: list[Tensor] | None = None
    right: list[Tensor] | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def frequencies(self) -> list[np.ndarray]:
        r""":math:`\lambda_i = 1 - \sigma_i` per sample (the lower half of the bipartite
        normalized Laplacian's spectrum)."""
        return [1.0 - s for s in self.singular_values]

    @property
    def spectral_gap(self) -> np.ndarray:
        r""":math:`1 - \sigma_2 / \sigma_1` per sample (NaN with one singular value)."""
        return np.array([1.0 - s[1] / s[0] if s.size > 1 and s[0] > 0 else np.nan
                         for s in self.singular_values])

    @property
    def effective_rank(self) -> np.ndarray:
        """Entropy effective rank of the singular values per sample
        (:func:`analysis.metrics.effective_rank`)."""
        return np.array([effective_rank(s) for s in self.singular_values])

    def summary(self) -> dict[str, float]:
        """Row fields: ``singular_max`` (max over samples), ``spectral_gap`` and
        ``effective_rank`` (means), ``row_sum_deviation`` (max)."""
        gaps = self.spectral_gap
        return {"singular_max": float(np.max(self.raw_singular_max)),
                "spectral_gap": float(np.nanmean(gaps)) if np.isfinite(gaps).any()
                else float("nan"),
                "effective_rank": float(np.nanmean(self.effective_rank)),
                "row_sum_deviation": float(np.max(self.row_sum_deviation))}

    def describe(self) -> str:
        """One sentence: which operator, and what its frequencies are."""
        if self.operator == "normalized_biadjacency":
            return (f"{self.n} x {self.m} affinity read as a bipartite graph on "
                    f"{self.n} + {self.m} nodes: singular values of D_q^-1/2 A D_k^-1/2 "
                    "(exact SVD); graph frequencies 1 - sigma (bipartite normalized Laplacian); "
                    "sigma^2 are the eigenvalues of the query graph A D_k^-1 A^T")
        return (f"{self.n} x {self.m} affinity with negative entries or an empty row/column: "
                "not a graph; singular values of A itself (exact SVD), no degree normalization")


def _dense(affinity: Any) -> Tensor:
    """``(S, N, M)`` float64 dense affinity, the size checked before forming it."""
    if isinstance(affinity, Tensor):
        A = affinity
    elif hasattr(affinity, "dense"):
        base = getattr(affinity, "affinity", affinity)        # a NormalizedOperator's own
        n, m = int(base.n), int(base.n_cols)
        s = int(np.prod(getattr(base, "batch_shape", ()) or (1,)))
        _check_size(s, n, m)
        A = torch.as_tensor(affinity.dense())
    else:
        raise TypeError(f"affinity must be an Affinity, NormalizedOperator or tensor, got "
                        f"{type(affinity).__name__}")
    if A.dim() < 2:
        raise ValueError(f"affinity must have shape (..., N, M), got {tuple(A.shape)}")
    A = A.detach().reshape(-1, *A.shape[-2:]).to(torch.float64)
    _check_size(*A.shape)
    if not bool(torch.isfinite(A).all()):
        raise ValueError("affinity has non-finite entries")
    return A


def _check_size(s: int, n: int, m: int) -> None:
    if min(n, m) > DENSE_LIMIT or s * n * m > MAX_ENTRIES:
        raise ValueError(
            f"affinity of {s} x {n} x {m} is too large for the exact bipartite SVD "
            f"(min(N, M) <= {DENSE_LIMIT} and S N M <= {MAX_ENTRIES} entries)")


def bipartite_spectrum(affinity: Any, *, vectors: bool = False) -> BipartiteSpectrum:
    r"""Singular values of N×M affinities as bipartite graphs (see the module docstring).

    Parameters
    ----------
    affinity : Affinity, NormalizedOperator or tensor ``(..., N, M)``
        :math:`\hat A` (a capture's :meth:`~analysis.capture_record.Capture.operator`, or
        :meth:`~analysis.capture_record.Capture.dense_affinity`); leading axes are samples.
    vectors : bool
        Keep the singular vectors (for :func:`bipartite_energy`).

    Returns
    -------
    BipartiteSpectrum

    Raises
    ------
    ValueError
        Non-finite entries, or larger than :data:`DENSE_LIMIT` / :data:`MAX_ENTRIES`.

    Shapes
    ------
    ``affinity``: ``(S, N, M)`` → ``min(N, M)`` singular values per sample.

    Examples
    --------
    >>> import torch
    >>> A = torch.softmax(torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(0)), -1)
    >>> sp = bipartite_spectrum(A)
    >>> sp.operator, round(float(sp.singular_values[0][0]), 12)     # sigma_1 = 1 exactly
    ('normalized_biadjacency', 1.0)
    >>> bool(sp.spectral_gap[0] > 0), round(float(sp.row_sum_deviation[0]), 12)
    (True, 0.0)
    """
    A = _dense(affinity)
    S, N, M = A.shape
    d_q, d_k = A.sum(-1), A.sum(-2)
    graph = bool((A >= 0).all() and (d_q > 0).all() and (d_k > 0).all())
    op = A / d_q.sqrt()[..., :, None] / d_k.sqrt()[..., None, :] if graph else A
    if vectors:
        U, sv, Vh = torch.linalg.svd(op, full_matrices=False)
        left, right = list(U), list(Vh.transpose(-1, -2))
    else:
        sv, left, right = torch.linalg.svdvals(op), None, None
    raw = torch.linalg.matrix_norm(A, 2) if graph else sv[..., 0]
    dev = (d_q - 1).abs().amax(-1)
    out = BipartiteSpectrum(
        singular_values=[s.numpy() for s in sv], raw_singular_max=raw.numpy(),
        row_sum_deviation=dev.numpy(),
        operator="normalized_biadjacency" if graph else "affinity", n=N, m=M,
        left=left, right=right)
    out.notes["bipartite"] = out.describe()
    return out


def _band_energy(basis: Tensor, sigma: np.ndarray, signal: Tensor) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Energy of ``signal`` ``(n, C)`` along the columns of ``basis`` ``(n, r)`` at
    :math:`\\lambda = 1 - \\sigma`, the rest (the complement) at :math:`\\lambda = 1`."""
    coef = basis.T @ signal
    e = (coef * coef).sum(-1).numpy()
    rest = max(float((signal * signal).sum()) - float(e.sum()), 0.0)
    return np.append(1.0 - sigma, 1.0), np.append(e, rest)


#: The sides of a bipartite graph a signal can live on (:func:`bipartite_energy`).
SIDES = ("keys", "queries")


def _example_affinity() -> Tensor:
    return torch.softmax(torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(0)), -1)


def _example_capture() -> Capture:
    from graphfilters.graph import DenseAffinity

    return Capture("b", "block", "toy", DenseAffinity(_example_affinity()), "none",
                   z=torch.ones(1, 2, 2), weights=[torch.zeros(2, 2), torch.eye(2)])


@V.validate_params(
    {"spectrum": [V.InstanceOf(BipartiteSpectrum)], "signal": ["array-like"],
     "side": [V.StrOptions(SIDES)]},
    valid=lambda: {"spectrum": bipartite_spectrum(_example_affinity(), vectors=True),
                   "signal": torch.ones(1, 2, 1)},
)
def bipartite_energy(
    spectrum: BipartiteSpectrum, signal: Any, side: str = "keys"
) -> FrequencyEnergy:
    r"""Energy of a signal per bipartite graph frequency :math:`\lambda = 1 - \sigma`.

    Parameters
    ----------
    spectrum : BipartiteSpectrum
        With singular vectors (``bipartite_spectrum(..., vectors=True)``).
    signal : tensor ``(S, M, C)`` on the keys or ``(S, N, C)`` on the queries
        E.g. the values :math:`Z` (keys) or the filter output :math:`\hat A Z W` (queries).
    side : {"keys", "queries"}
        Which nodes carry the signal: the basis is :math:`V` (keys) or :math:`U` (queries);
        the energy outside their span (:math:`|N - M|` null directions) is put at
        :math:`\lambda = 1`.

    Returns
    -------
    FrequencyEnergy
        ``basis="bipartite-svd"``.

    Shapes
    ------
    ``signal``: ``(S, M, C)`` (keys) or ``(S, N, C)`` (queries).

    Examples
    --------
    >>> import torch
    >>> A = torch.full((1, 4, 2), 0.5)                       # every query averages both keys
    >>> sp = bipartite_spectrum(A, vectors=True)
    >>> e = bipartite_energy(sp, torch.ones(1, 2, 1), "keys")  # a constant: all at lambda = 0
    >>> [round(float(x), 12) for x in e.band_fractions()]
    [1.0, 0.0, 0.0]
    """
    if spectrum.left is None or spectrum.right is None:
        raise ValueError("spectrum has no singular vectors: use "
                         "bipartite_spectrum(..., vectors=True)")
    z = torch.as_tensor(signal).detach().to(torch.float64)
    if z.dim() == 2:
        z = z[None]
    n = spectrum.m if side == "keys" else spectrum.n
    count = len(spectrum.singular_values)
    if z.dim() != 3 or z.shape[1] != n or z.shape[0] != count:
        raise ValueError(f"signal must have shape ({count}, {n}, C) on the {side}, got "
                         f"{tuple(z.shape)}")
    bases = spectrum.right if side == "keys" else spectrum.left
    freqs, energy = [], []
    for basis, sigma, zi in zip(bases, spectrum.singular_values, z):
        f, e = _band_energy(basis, sigma, zi)
        freqs.append(f)
        energy.append(e)
    return FrequencyEnergy(freqs, energy, "bipartite-svd",
                           f"bipartite SVD basis on the {side} ({spectrum.operator})")


@V.validate_params(
    {"capture": [V.InstanceOf(Capture)], "spectrum": [V.InstanceOf(BipartiteSpectrum), None]},
    valid=lambda: {"capture": _example_capture()},
)
def bipartite_response(capture: Any, spectrum: BipartiteSpectrum | None = None
                       ) -> BlockResponse:
    r"""Frequency response of a block whose affinity is N×M (sub-sampled keys).

    The filter of such a block is of order one, :math:`F = \hat A Z W_1` (:math:`W_0 = 0`:
    :math:`Z` lives on the keys, :math:`F` on the queries), so its response is
    :math:`\sigma(H(\lambda)) = |1 - \lambda|\,\sigma(W_1)` at the bipartite frequencies
    :math:`\lambda_i = 1 - \sigma_i`: the block maps the i-th right singular vector of the
    graph to the i-th left one with gain :math:`\sigma_i \sigma(W_1)`. The response's
    ``eigenvalues`` are these frequencies; ``energy_z`` is the energy of :math:`Z` in the keys'
    basis :math:`V`, ``energy_out`` that of :math:`F` in the queries' basis :math:`U`
    (:func:`bipartite_energy`).

    Parameters
    ----------
    capture : Capture
        With an N×M affinity, ``z`` ``(S, M, C_s)`` and ``weights == [0, W_1]``.
    spectrum : BipartiteSpectrum, optional
        With singular vectors; computed if omitted.

    Returns
    -------
    BlockResponse

    Raises
    ------
    ValueError
        A square affinity, no weights or values, or a term :math:`W_0 \ne 0` (a signal on
        the keys cannot be added to one on the queries).

    Shapes
    ------
    ``capture.z``: ``(S, M, C_s)``; the filter output ``(S, N, C_out)``.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import DenseAffinity
    >>> from analysis.capture import Capture
    >>> A = torch.softmax(torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(0)), -1)
    >>> cap = Capture("b", "block", "toy", DenseAffinity(A), "none", z=torch.randn(1, 3, 2),
    ...               weights=[torch.zeros(2, 2), torch.eye(2)])
    >>> resp = bipartite_response(cap)
    >>> len(resp.eigenvalues[0]), resp.energy_z.basis
    (3, 'bipartite-svd')
    """
    aff = capture.affinity
    if aff is None or aff.n == aff.n_cols:
        raise ValueError(f"{capture.path}: the affinity is square; use block_response")
    if capture.weights is None or capture.z is None:
        raise ValueError(f"{capture.path}: the capture has no filter weights or values")
    ws = list(capture.weights)
    if len(ws) != 2 or bool(torch.as_tensor(ws[0]).ne(0).any()):
        raise ValueError(f"{capture.path}: an N x M affinity has an order-1 filter A Z W_1 "
                         f"(W_0 = 0); got {len(ws)} term(s) with W_0 != 0")
    if spectrum is None or spectrum.left is None:
        spectrum = bipartite_spectrum(capture.operator(), vectors=True)
    resp = block_response(capture, energies=False)
    freqs = spectrum.frequencies
    w = [torch.as_tensor(x).detach().double().cpu().numpy() for x in ws]
    resp.eigenvalues = freqs
    resp.gains_at_eigenvalues = [pencil_gains(w, f)[:, 0] for f in freqs]
    z = capture.z.detach().double()
    az = torch.as_tensor(capture.operator()(capture.z.detach())).double()
    out = az.reshape(z.shape[0], -1, z.shape[-1]) @ torch.as_tensor(ws[1]).detach().double()
    resp.energy_z = bipartite_energy(spectrum, z, "keys")
    resp.energy_out = bipartite_energy(spectrum, out, "queries")
    resp.notes.pop("energy", None)
    resp.notes["eigenvalues"] = spectrum.describe()
    resp.notes["energy_basis"] = ("Z in the keys' singular basis V, A Z W_1 in the queries' "
                                  "basis U (bipartite graph frequencies 1 - sigma)")
    return resp
