r"""The complex-share rule: which eigenvalues count as complex, used by every table and figure.

An eigenvalue :math:`\mu` of a real operator with spectral radius :math:`\rho` is *counted*
when :math:`|\mu| > \text{floor}\,\rho` (the numerical zeros of a low-rank operator are left
out), and *complex* when :math:`|\operatorname{Im}\mu| > \max(\text{rtol}\,|\mu|,
\text{atol}\,\rho)`; the share is complex / counted. A leaf module (numpy and the shared
argument checks only), so that the figures and the spectra read the one rule without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from graphfilters import _validate as V

__all__ = ["COMPLEX_ATOL", "COMPLEX_FLOOR", "COMPLEX_RTOL", "ComplexShare", "complex_share",
           "share_center"]

#: Default thresholds of :func:`complex_share`.
COMPLEX_RTOL, COMPLEX_ATOL, COMPLEX_FLOOR = 1e-3, 1e-9, 1e-6


@dataclass
class ComplexShare:
    r"""Result of :func:`complex_share`.

    Attributes
    ----------
    share : float
        Complex eigenvalues / counted eigenvalues (NaN when none is counted).
    n_complex, n_counted, n_null : int
        Complex ones, counted ones, and those ignored as numerical null space.
    rtol, atol, floor : float
        The thresholds (relative to :math:`|\mu|`, to :math:`\rho`, and the floor relative
        to :math:`\rho`).
    radius : float
        :math:`\rho = \max|\mu|`.
    """

    share: float
    n_complex: int
    n_counted: int
    n_null: int
    rtol: float
    atol: float
    floor: float
    radius: float

    @property
    def rule(self) -> str:
        """The rule in words (for table notes and legends)."""
        return (f"complex: |Im mu| > max({self.rtol:g} |mu|, {self.atol:g} rho), over "
                f"|mu| > {self.floor:g} rho (numerical null space ignored)")


def share_center(operator: str, kind: str = "") -> float:
    r"""The ``center`` of :func:`complex_share` for eigenvalues of ``operator``: 1 for a
    normalized Laplacian (``"laplacian"`` of kind ``sym``/``rw``, or of unknown kind), 0
    otherwise (the affinity, :math:`\hat A`, a combinatorial Laplacian).

    Examples
    --------
    >>> share_center("laplacian", "sym"), share_center("normalized", "rw")
    (1.0, 0.0)
    """
    return 1.0 if operator == "laplacian" and kind in ("sym", "rw", "") else 0.0


@V.validate_params(
    {"rtol": [V.NONNEG_REAL], "floor": [V.NONNEG_REAL], "atol": [V.NONNEG_REAL],
     "center": [V.REAL]},
    valid=lambda: {"eigs": np.array([1.0, 0.5 + 0.5j, 0.5 - 0.5j])},
)
def complex_share(
    eigs: Any, rtol: float = COMPLEX_RTOL, floor: float = COMPLEX_FLOOR,
    atol: float = COMPLEX_ATOL, center: float = 0.0,
) -> ComplexShare:
    r"""Share of non-real eigenvalues, ignoring the numerical null space.

    The rule is stated for the eigenvalues :math:`\mu` of a normalized operator
    :math:`\hat A`. For the eigenvalues :math:`\lambda = c - \mu` of a shifted operator
    (the normalized Laplacian :math:`L = I - \hat A`: ``center=1``) it is applied to
    :math:`\mu = c - \lambda`, so :math:`\hat A` and :math:`I - \hat A` give the same share
    (same eigenvalues counted, same ones complex). With :math:`\rho = \max_i |\mu_i|`, an
    eigenvalue is *counted* when
    :math:`|\mu| > \text{floor}\cdot\rho` and *complex* when
    :math:`|\operatorname{Im}\mu| > \max(\text{rtol}\,|\mu|,\ \text{atol}\,\rho)`.
    Round-off eigenvalues of a rank-deficient matrix (a low-rank or strongly contracting
    affinity has a large numerical null space whose eigenvalues scatter in the complex plane
    at :math:`10^{-8}`) are not counted. This is the rule of every table, legend and figure
    of the toolkit.

    Parameters
    ----------
    eigs : array-like
        Eigenvalues (real or complex; NaNs are dropped).
    rtol : float
        Imaginary part relative to :math:`|\mu|`.
    floor : float
        Null-space floor relative to :math:`\rho`.
    atol : float
        Imaginary part relative to :math:`\rho` (round-off of the large eigenvalues).
    center : float
        :math:`c`: 0 for eigenvalues of :math:`\hat A`, 1 for those of
        :math:`I - \hat A` (see :func:`share_center`).

    Returns
    -------
    ComplexShare

    Examples
    --------
    >>> import numpy as np
    >>> mu = np.array([1.0, 0.5 + 0.5j, 0.5 - 0.5j, 1e-9 + 1e-9j, 1e-10j, 0.2 + 1e-7j])
    >>> cs = complex_share(mu)
    >>> cs.share, cs.n_complex, cs.n_counted, cs.n_null
    (0.5, 2, 4, 2)
    >>> complex_share(1 - mu, center=1.0).share       # L = I - Â: the same eigenvalues
    0.5
    """
    mu = np.asarray(eigs).reshape(-1)
    mu = mu[np.isfinite(mu)]
    if center:
        mu = center - mu
    mag = np.abs(mu)
    rho = float(mag.max(initial=0.0))
    im = np.abs(mu.imag) if np.iscomplexobj(mu) else np.zeros(mu.shape)
    counted = mag > floor * rho if rho > 0 else np.zeros(mu.shape, bool)
    cplx = counted & (im > np.maximum(rtol * mag, atol * rho))
    n_counted = int(counted.sum())
    share = float(cplx.sum() / n_counted) if n_counted else float("nan")
    return ComplexShare(share, int(cplx.sum()), n_counted, int(mu.size - n_counted),
                        float(rtol), float(atol), float(floor), rho)
