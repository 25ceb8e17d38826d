r"""Analysis of nonlocal blocks in trained models: capture, spectra, responses, robustness.

The main entry point is :func:`analyze`, one row per nonlocal block, with its options in one
:class:`AnalysisConfig` (:mod:`analysis.config`):

>>> import torch
>>> from analysis import analyze
>>> table = analyze(torch.nn.Linear(2, 2), torch.zeros(1, 2), progress=False)
>>> len(table), table.summary()[:27]
(0, 'no nonlocal blocks analysed')

Modules: :mod:`analysis.capture` (what the blocks compute), :mod:`analysis.spectra`
(eigenvalues, densities, affinity metrics), :mod:`analysis.depth` (oversmoothing by depth:
rank collapse, high-frequency share, spectral gap), :mod:`analysis.response` (frequency
responses, graph Fourier energies), :mod:`analysis.stability` (linearized stability, frozen
norms, damping, Jacobians, noise; gathered under its earlier name :mod:`analysis.robustness`),
:mod:`analysis.measures` (the registry of the table's measures), :mod:`analysis.config` (the
options of :func:`analyze`), :mod:`analysis.plots` (figures, ``(fig, ax)``).
"""

# the built-in recognizers (MultiheadAttention, transformers, timm, mmcv...) register themselves
from . import recognizers as _recognizers  # noqa: F401
from .analyze import AnalysisTable, BlockReport, analyze
from .attention_response import attention_response
from .capture import (
    MHA_SPEC,
    Capture,
    Captures,
    capture,
    find_nonlocal_modules,
    register_adapter,
    unregister_adapter,
)
from .config import (
    AccuracyConfig,
    AnalysisConfig,
    CaptureConfig,
    JacobianConfig,
    NoiseConfig,
    SpectrumConfig,
    StabilityConfig,
)
from .depth import DepthProfile, DepthRow, depth_profile
from .response import (
    BlockResponse,
    FrequencyEnergy,
    block_response,
    classify_response,
    filter_output,
    frequency_response,
    graph_frequency_energy,
    laplacian_weights,
    response_gains,
)
from .spectra import (
    AffinityMetrics,
    SpectralDensity,
    Spectrum,
    affinity_metrics,
    effective_rank,
    frobenius_stats,
    project_simplex,
    spectral_density,
    spectrum,
)
from .stability import (
    Stability,
    TaoSpectrum,
    accuracy_under_noise,
    affinity_sensitivity,
    block_function,
    effective_channel_map,
    jacobian_spectral_norm,
    linearized_stability,
    noise_sensitivity,
    tao_spectrum,
    value_projection,
)
from .sweep import sweep

__all__ = [
    "analyze", "AnalysisTable", "BlockReport",
    "AnalysisConfig", "CaptureConfig", "SpectrumConfig", "StabilityConfig", "JacobianConfig",
    "NoiseConfig", "AccuracyConfig",
    "capture", "Capture", "Captures", "register_adapter", "unregister_adapter",
    "find_nonlocal_modules", "MHA_SPEC",
    "spectrum", "spectral_density", "affinity_metrics", "frobenius_stats", "effective_rank",
    "project_simplex", "Spectrum", "SpectralDensity", "AffinityMetrics",
    "frequency_response", "laplacian_weights", "response_gains", "classify_response",
    "graph_frequency_energy", "block_response", "filter_output", "BlockResponse",
    "FrequencyEnergy", "attention_response",
    "tao_spectrum", "effective_channel_map", "value_projection", "linearized_stability",
    "jacobian_spectral_norm", "noise_sensitivity", "affinity_sensitivity",
    "accuracy_under_noise", "block_function", "TaoSpectrum", "Stability",
    "sweep",
    "depth_profile", "DepthProfile", "DepthRow",
]
