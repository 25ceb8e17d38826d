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

This module gathers, under its earlier name, what lives in modules of one concept each:
:mod:`analysis.stability.channel` (value projection, effective channel map, Tao's spectrum),
:mod:`analysis.stability.linear` (linearized stability), :mod:`analysis.stability.frozen`
(the frozen map and its exact norms), :mod:`analysis.stability.damping`,
:mod:`analysis.stability.jacobian` (full and frozen Jacobians),
:mod:`analysis.stability.empirical` (noise, affinity perturbation, accuracy),
:mod:`analysis.frozen_attention` (attention held fixed) and
:func:`graphfilters.spectral.top_singular_values` (the matrix-free SVD).
"""

from __future__ import annotations

from graphfilters.spectral import SingularValues, top_singular_values

from .frozen_attention import attention_held_fixed
from .stability import (
    Damping,
    FrozenMap,
    FrozenNorms,
    JacobianReport,
    Stability,
    StackFunction,
    TaoSpectrum,
    accuracy_under_noise,
    affinity_sensitivity,
    backbone_jacobians,
    block_function,
    damping,
    effective_channel_map,
    frozen_function,
    frozen_norms,
    jacobian_singular_values,
    jacobian_spectral_norm,
    jacobians,
    linear_maps,
    linearized_stability,
    noise_sensitivity,
    per_frequency_stability,
    stack_jacobians,
    stage_jacobians,
    tao_spectrum,
    value_projection,
)

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
    "attention_held_fixed",
]
