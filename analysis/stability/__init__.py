r"""Stability of nonlocal blocks, one concept per module.

- :mod:`~analysis.stability.channel`: the value projection, the effective channel map and
  Tao et al.'s spectrum;
- :mod:`~analysis.stability.linear`: the linearized stability over the captured spectrum;
- :mod:`~analysis.stability.frozen`: the frozen-affinity block map and its exact norms;
- :mod:`~analysis.stability.damping`: damping, sign-correct;
- :mod:`~analysis.stability.jacobian`: full and frozen Jacobians of a unit, stage, stack and
  backbone;
- :mod:`~analysis.stability.empirical`: noise, affinity-perturbation and accuracy measures.

The matrix-free SVD they share is :func:`graphfilters.spectral.top_singular_values`, beside
the other solvers; the attention-freezing mechanism is :mod:`analysis.frozen_attention`.
:mod:`analysis.robustness` re-exports all of it under its earlier name.
"""

from .channel import (
    TaoSpectrum,
    distinct_values,
    effective_channel_map,
    output_scale_vector,
    tao_spectrum,
    value_projection,
)
from .damping import (
    Damping,
    damping,
)
from .empirical import (
    accuracy_under_noise,
    affinity_sensitivity,
    noise_sensitivity,
)
from .frozen import (
    FrozenMap,
    FrozenNorms,
    frozen_norms,
)
from .jacobian import (
    AFFINITY_MODES,
    BACKBONE_UNITS,
    JacobianReport,
    StackFunction,
    affinity_path,
    backbone_jacobians,
    block_function,
    frozen_function,
    frozen_map_starts,
    jacobian_singular_values,
    jacobian_spectral_norm,
    jacobians,
    stack_jacobians,
    stage_jacobians,
)
from .linear import (
    Stability,
    linear_maps,
    linearized_stability,
    per_frequency_stability,
)

__all__ = [
    "value_projection",
    "output_scale_vector",
    "effective_channel_map",
    "TaoSpectrum",
    "tao_spectrum",
    "distinct_values",
    "linear_maps",
    "Stability",
    "per_frequency_stability",
    "linearized_stability",
    "FrozenMap",
    "FrozenNorms",
    "frozen_norms",
    "Damping",
    "damping",
    "AFFINITY_MODES",
    "BACKBONE_UNITS",
    "block_function",
    "jacobian_spectral_norm",
    "frozen_function",
    "frozen_map_starts",
    "affinity_path",
    "StackFunction",
    "jacobian_singular_values",
    "JacobianReport",
    "jacobians",
    "stage_jacobians",
    "stack_jacobians",
    "backbone_jacobians",
    "noise_sensitivity",
    "affinity_sensitivity",
    "accuracy_under_noise",
]
