r"""Eigenvalue spectra and per-affinity metrics of captured (or hand-made) affinities.

Operators
---------
For an affinity :math:`M` (any :class:`graphfilters.graph.Affinity`, a dense array, or a
:class:`~analysis.capture_record.Capture`) three operators are offered: ``"affinity"`` (:math:`M`),
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

The code lives in modules of one concept each, gathered here: :mod:`analysis.eigen` (the
inputs, :class:`~analysis.eigen.Spectrum` and :func:`~analysis.eigen.spectrum` with its
solvers), :mod:`analysis.density` (SLQ and KPM densities), :mod:`analysis.metrics` (the
affinity metrics and Frobenius statistics) and :mod:`analysis.complex_share` (the one rule for
complex eigenvalues).
"""

from __future__ import annotations

from .complex_share import ComplexShare, complex_share, share_center
from .density import (
    DENSITY_METHODS,
    SpectralDensity,
    spectral_density,
)
from .eigen import (
    AUTO_DENSE_LIMIT,
    GENERAL_WHICH,
    OPERATORS,
    SPECTRUM_METHODS,
    OperatorApply,
    Spectrum,
    as_torch64,
    choose_method,
    linear_operator,
    operator_is_symmetric,
    sample_indices,
    spectrum,
    unpack_source,
)
from .metrics import (
    GAP_ZERO_TOL,
    METRIC_NAMES,
    ROW_STOCHASTIC_TOL,
    AffinityMetrics,
    affinity_metrics,
    effective_rank,
    frobenius_stats,
    project_simplex,
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
    "AUTO_DENSE_LIMIT",
    "unpack_source",
    "as_torch64",
    "sample_indices",
    "operator_is_symmetric",
    "OperatorApply",
    "linear_operator",
    "choose_method",
    "GENERAL_WHICH",
    "GAP_ZERO_TOL",
    "ROW_STOCHASTIC_TOL",
    "METRIC_NAMES",
]
