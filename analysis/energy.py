r"""Graph Fourier energy: how a signal's energy spreads over the graph frequencies of
:math:`\hat A` (:func:`graph_frequency_energy`).

Symmetric :math:`\hat A`: the orthonormal eigenvectors :math:`U` (dense ``eigh``; for low-rank
affinities the ``2r`` structured eigenvectors :math:`U = Q_X V` from a QR of
:math:`X = [P, Q]` and the eigenvectors :math:`V` of the small core — the rest of the space is
the eigenvalue 0 of :math:`\hat A`, i.e. :math:`\lambda = 1`, and gets the remaining energy).
The energy at frequency :math:`\lambda_i` is :math:`\sum_c (u_i^T z_c)^2` (Parseval: it sums
to :math:`\|Z\|_F^2`). Non-symmetric :math:`\hat A` (softmax): by default the eigenvectors of
the symmetrized operator :math:`\operatorname{sym}(\hat A) = (\hat A + \hat A^T)/2` (real
frequencies, an orthonormal basis; structured for low-rank), or with
``nonsymmetric="schur"`` the complex Schur vectors :math:`\hat A = U T U^H` (frequencies
:math:`1 - T_{ii}`, complex; an orthonormal basis ordered by the eigenvalues, but the Schur
form couples the frequencies through :math:`T`'s upper triangle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from graphfilters import _validate as V
from graphfilters.graph import DENSE_LIMIT, NORMALIZATION_KINDS, LowRankAffinity, as_affinity

from .spectra import as_torch64, sample_indices

__all__ = ["FrequencyEnergy", "graph_frequency_energy"]


@dataclass
class FrequencyEnergy:
    r"""Energy of a graph signal per graph frequency, per sample.

    Attributes
    ----------
    frequencies : list of numpy arrays
        Laplacian frequencies :math:`\lambda = 1 - \mu` per sample (complex for ``schur``).
    energy : list of numpy arrays
        :math:`\sum_c |\hat z_c(\lambda)|^2` per frequency, per sample.
    basis : str
        ``"eigh"``, ``"structured"``, ``"symmetrized"`` (+ ``-structured``) or ``"schur"``.
    reason : str
    """

    frequencies: list[np.ndarray]
    energy: list[np.ndarray]
    basis: str
    reason: str = ""

    def band_fractions(self, edges: Sequence[float] = (0.0, 2 / 3, 4 / 3, 2.0)) -> np.ndarray:
        """Mean over samples of the energy share in each band of ``Re λ`` (the last band is
        closed on the right; energy outside the edges goes to the nearest band)."""
        edges = np.asarray(edges, dtype=float)
        out = []
        for lam, e in zip(self.frequencies, self.energy):
            idx = np.clip(np.searchsorted(edges, np.real(lam), side="right") - 1, 0,
                          len(edges) - 2)
            tot = e.sum()
            out.append(np.bincount(idx, weights=e, minlength=len(edges) - 1) / max(tot, 1e-300))
        return np.mean(out, 0) if out else np.full(len(edges) - 1, np.nan)


def _structured_eig(lr: LowRankAffinity, factor: float) -> tuple[Tensor, Tensor]:
    """Eigenpairs ``(theta, U)`` of a symmetric low-rank ``factor * sym(P Q^T)``."""
    P, Q = lr.P, lr.Q
    X = torch.cat([P, Q], -1)
    r = P.shape[-1]
    Qx, R = torch.linalg.qr(X, mode="reduced")
    core = R[:, :r] @ R[:, r:].T
    core = factor * (core + core.T) / 2
    theta, V = torch.linalg.eigh(core)
    return theta, Qx @ V


def _signal(z: Any, n: int, n_samples: int) -> Tensor:
    z = torch.as_tensor(z) if not isinstance(z, Tensor) else z.detach()
    z = z.to(torch.float64)
    if z.ndim == 2:
        z = z.unsqueeze(0)
    if z.ndim != 3 or z.shape[1] != n:
        raise ValueError(
            f"the signal must have shape (S, N, C) with N = {n} nodes, got {tuple(z.shape)}"
        )
    if z.shape[0] != n_samples:
        raise ValueError(
            f"the signal has {z.shape[0]} samples but the affinity {n_samples}"
        )
    return z


#: The graph Fourier bases of a non-symmetric affinity (``nonsymmetric``).
NONSYMMETRIC_BASES = ("symmetrize", "schur")


def _example() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {"affinity": LowRankAffinity(rng.random((1, 6, 2)), rng.random((1, 6, 2)),
                                        symmetric=True),
            "signal": rng.standard_normal((1, 6, 2))}


@V.validate_params(
    {"signal": ["array-like"], "normalization": [V.StrOptions(NORMALIZATION_KINDS), None],
     "nonsymmetric": [V.StrOptions(NONSYMMETRIC_BASES)], "dense_limit": [V.NONNEG_INT]},
    valid=_example,
)
def graph_frequency_energy(
    affinity: Any,
    signal: Any,
    normalization: str | None = None,
    *,
    nonsymmetric: str = "symmetrize",
    dense_limit: int = DENSE_LIMIT,
) -> FrequencyEnergy:
    r"""Energy of ``signal`` per graph frequency of :math:`\hat A` (see the module docstring).

    Parameters
    ----------
    affinity : Affinity or array, batch ``(S,)``
    signal : ``(S, N, C)`` tensor or array
    normalization : str, optional
        Default ``sym`` for symmetric affinities, ``rw`` otherwise.
    nonsymmetric : {"symmetrize", "schur"}
        GFT basis for non-symmetric :math:`\hat A`.
    dense_limit : int
        Largest N for dense eigenvectors (low-rank affinities never need them).

    Returns
    -------
    FrequencyEnergy

    Examples
    --------
    >>> import numpy as np
    >>> from graphfilters.graph import LowRankAffinity
    >>> rng = np.random.default_rng(0)
    >>> aff = LowRankAffinity(rng.random((1, 50, 2)), rng.random((1, 50, 2)), symmetric=True)
    >>> z = rng.standard_normal((1, 50, 3))
    >>> e = graph_frequency_energy(aff, z, "sym")
    >>> e.basis, bool(np.isclose(e.energy[0].sum(), (z ** 2).sum()))     # Parseval
    ('structured', True)
    """
    aff = as_affinity(affinity)
    aff.require_square()
    kind = normalization or ("sym" if aff.symmetric else "rw")
    t_aff = as_torch64(aff)
    idxs = sample_indices(t_aff)
    z = _signal(signal, aff.n, len(idxs)).to(t_aff.device)
    sym = t_aff.operator_symmetric(kind)
    freqs, energies = [], []
    basis = ""
    for i, idx in enumerate(idxs):
        single = t_aff.select(idx)
        op = single.normalized(kind)
        zi = z[i]
        if single.has_exact_spectrum and (sym or nonsymmetric == "symmetrize"):
            lr = single.scaled(op.left, op.right) if (op.left is not None or
                                                      op.right is not None) else single
            if not lr.symmetric:
                lr = LowRankAffinity(lr.P, lr.Q, symmetric=True)   # sym(X Y^T)
            theta, U = _structured_eig(lr, op.factor)
            coef = U.T @ zi
            e = (coef**2).sum(1)
            rest = max(float((zi**2).sum() - e.sum()), 0.0)
            freqs.append(np.r_[1 - theta.cpu().numpy(), 1.0])
            energies.append(np.r_[e.cpu().numpy(), rest])
            basis = "structured" if sym else "symmetrized-structured"
            continue
        if single.n > dense_limit:
            raise ValueError(
                f"the graph Fourier basis of a {type(single).__name__} with N = {single.n} > "
                f"{dense_limit} needs dense eigenvectors; raise dense_limit or skip energies"
            )
        M = op.dense()
        if sym or nonsymmetric == "symmetrize":
            theta, U = torch.linalg.eigh((M + M.T) / 2)
            coef = U.T @ zi
            freqs.append((1 - theta).cpu().numpy())
            energies.append((coef**2).sum(1).cpu().numpy())
            basis = "eigh" if sym else "symmetrized"
        else:
            import scipy.linalg as sla

            T, U = sla.schur(M.cpu().numpy(), output="complex")
            coef = U.conj().T @ zi.cpu().numpy()
            freqs.append(1 - np.diag(T))
            energies.append((np.abs(coef) ** 2).sum(1))
            basis = "schur"
    reason = {
        "structured": "eigenvectors of the symmetric low-rank operator (2r of them) + null space",
        "symmetrized-structured": "non-symmetric: eigenvectors of sym(A_hat), low-rank",
        "eigh": "orthonormal eigenvectors (eigh)",
        "symmetrized": "non-symmetric: eigenvectors of sym(A_hat) = (A_hat + A_hat^T)/2",
        "schur": "non-symmetric: complex Schur vectors, frequencies 1 - diag(T)",
    }.get(basis, "")
    return FrequencyEnergy(freqs, energies, basis, reason)
