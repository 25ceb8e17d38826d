r"""One configuration of :func:`analysis.analyze`, made of small frozen sub-configurations.

Every option of an analysis lives in exactly one place, is documented once (in its
sub-configuration's docstring) and is checked once, from a declaration (the constraints of
:mod:`graphfilters._validate`) when the configuration is built:

- ``capture``: :class:`CaptureConfig`, which modules, how many samples, heads, calls;
- ``spectrum``: :class:`SpectrumConfig`, the eigen-solver and its dense limit;
- ``stability``: :class:`StabilityConfig`, growth curve, frozen norms, their tolerance;
- ``jacobian``: :class:`JacobianConfig`, block, stage and backbone Jacobians;
- ``noise``: :class:`NoiseConfig`, sizes of the input and affinity perturbations;
- ``accuracy``: :class:`AccuracyConfig`, the accuracy-under-noise curve;

plus two fields of the run itself (``keep_captures``, ``blas_threads``).

The flat keyword names of earlier releases stay valid as overrides:
``analyze(model, x, tol=1e-4)`` is ``analyze(model, x, AnalysisConfig().replace(tol=1e-4))``
and sets ``config.stability.tol``; :data:`FLAT_NAMES` maps each flat name to its place. An
unknown name is a ``TypeError`` naming the argument and the known names.

Examples
--------
>>> cfg = AnalysisConfig().replace(tol=1e-4, method="exact_dense")
Traceback (most recent call last):
...
ValueError: AnalysisConfig.replace: method must be one of ['auto', ...], got 'exact_dense' (str)
>>> cfg = AnalysisConfig().replace(tol=1e-4, method="eigh")
>>> cfg.stability.tol, cfg.spectrum.method
(0.0001, 'eigh')
>>> cfg.replace(spectrum=SpectrumConfig(dense_limit=512)).spectrum.dense_limit
512
>>> AnalysisConfig(jacobian=JacobianConfig(enabled=False)).flat()["jacobian"]
False
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from graphfilters import _validate as V

from .capture import capture
from .eigen import AUTO_DENSE_LIMIT, spectrum
from .stability.empirical import accuracy_under_noise, affinity_sensitivity, noise_sensitivity
from .stability.jacobian import jacobian_singular_values
from .stability.linear import linearized_stability

__all__ = [
    "AccuracyConfig", "AnalysisConfig", "CaptureConfig", "FLAT_NAMES", "JacobianConfig",
    "NoiseConfig", "SpectrumConfig", "StabilityConfig",
]


@dataclass(frozen=True)
class CaptureConfig(V.DeclaredFields):
    """How the affinities are captured (:func:`analysis.capture.capture`).

    Parameters
    ----------
    blocks : sequence of str or type, optional
        Restrict to these module paths or types (default: every nonlocal module found).
    max_samples : int
        Samples captured per block.
    heads : {"mean", "keep"}
        Attention heads averaged or kept.
    forward : callable, optional
        ``forward(model, batch)`` for models that are not called as ``model(input)``.
    model_kwargs : dict, optional
        Keyword inputs added to every model call (e.g. ``{"src_key_padding_mask": mask}``).
    """

    blocks: Sequence[str | type] | None = None
    max_samples: int = 8
    heads: str = "mean"
    forward: Callable[..., Any] | None = None
    model_kwargs: Mapping[str, Any] | None = None

    constraints: ClassVar[dict[str, list[Any]]] = {
        name: V.declared(capture, name)
        for name in ("blocks", "max_samples", "heads", "forward", "model_kwargs")}


@dataclass(frozen=True)
class SpectrumConfig(V.DeclaredFields):
    """How each captured affinity's spectrum is computed (:func:`analysis.eigen.spectrum`).

    Parameters
    ----------
    method : str
        Spectrum method; ``auto`` records its choice in the row (``spectrum_method``).
    dense_limit : int
        Largest N solved densely by ``auto``.
    """

    method: str = "auto"
    dense_limit: int = AUTO_DENSE_LIMIT

    constraints: ClassVar[dict[str, list[Any]]] = {
        name: V.declared(spectrum, name) for name in ("method", "dense_limit")}


@dataclass(frozen=True)
class StabilityConfig(V.DeclaredFields):
    """The linearized stability of a block (:func:`analysis.stability.linear.linearized_stability`).

    Parameters
    ----------
    n_max : int
        Deepest stack of the growth curve.
    samples : int
        Samples over which the exact frozen norms are maximized.
    tol : float
        Relative residual of the matrix-free norms (stability *and* Jacobians): each value
        is certified within ``tol`` times the largest one (the precision of the tables; the
        Ritz values are usually far more accurate). Rows record the residual reached and
        whether it converged.
    """

    n_max: int = 10
    samples: int = 1
    tol: float = 1e-3

    constraints: ClassVar[dict[str, list[Any]]] = {
        "n_max": V.declared(linearized_stability, "n_max"), "samples": [V.POS_INT],
        "tol": V.declared(linearized_stability, "tol")}


@dataclass(frozen=True)
class JacobianConfig(V.DeclaredFields):
    """Jacobians of the module itself (autograd products, matrix-free).

    Parameters
    ----------
    enabled : bool
        Compute the block Jacobian norms and the noise gains (re-runs each block with
        autograd); ``False`` skips every module-stage measure, the stages and the backbone.
    samples : int
        Samples used for the full Jacobian norm (the max is reported).
    k : int
        Top singular values kept (``jacobian_full_top``, ``jacobian_frozen_top``). Default 1:
        the spectral norm converges in fewer products than a block of several values (on a
        ViT-B layer, k = 3 at ``tol=1e-3`` stopped at residual 4e-2 after 60 products).
    stages : bool
        Add one ``source="stage"`` row per shared-affinity stage (the whole stage's full and
        frozen Jacobians).
    backbone : bool
        Measure the backbone's own residual units (``table.backbone``), the reference.
    """

    enabled: bool = True
    samples: int = 1
    k: int = 1
    stages: bool = True
    backbone: bool = True

    constraints: ClassVar[dict[str, list[Any]]] = {
        "enabled": ["boolean"], "samples": [V.POS_INT],
        "k": V.declared(jacobian_singular_values, "k"),
        "stages": ["boolean"], "backbone": ["boolean"],
    }


@dataclass(frozen=True)
class NoiseConfig(V.DeclaredFields):
    """Empirical perturbation sizes (:func:`analysis.stability.empirical.noise_sensitivity`,
    :func:`analysis.stability.empirical.affinity_sensitivity`).

    Parameters
    ----------
    level : float
        Relative size of the input noise (noise gain).
    affinity : float
        Relative size of the affinity perturbation (affinity gain).
    """

    level: float = 0.1
    affinity: float = 0.1

    constraints: ClassVar[dict[str, list[Any]]] = {
        "level": V.declared(noise_sensitivity, "level"),
        "affinity": V.declared(affinity_sensitivity, "level")}


@dataclass(frozen=True)
class AccuracyConfig(V.DeclaredFields):
    """The accuracy-under-noise curve (:func:`analysis.stability.empirical.accuracy_under_noise`).

    Parameters
    ----------
    levels : sequence of float, optional
        Noise standard deviations. Default: ``(0, 0.05, 0.1, 0.2, 0.4)`` when targets are
        available (``labels`` or ``(input, target)`` batches); ``()`` skips it.
    batches : int
        Batches used per noise level.
    """

    levels: Sequence[float] | None = None
    batches: int = 8

    constraints: ClassVar[dict[str, list[Any]]] = {
        "levels": [*V.declared(accuracy_under_noise, "levels"), None], "batches": [V.POS_INT],
    }


_SUBS: dict[str, type] = {
    "capture": CaptureConfig, "spectrum": SpectrumConfig, "stability": StabilityConfig,
    "jacobian": JacobianConfig, "noise": NoiseConfig, "accuracy": AccuracyConfig,
}

#: The flat keyword names of :func:`analysis.analyze` -> (sub-configuration, field); a
#: top-level field of :class:`AnalysisConfig` has ``None`` as its sub-configuration.
FLAT_NAMES: dict[str, tuple[str | None, str]] = {
    "blocks": ("capture", "blocks"), "max_samples": ("capture", "max_samples"),
    "heads": ("capture", "heads"), "forward": ("capture", "forward"),
    "model_kwargs": ("capture", "model_kwargs"),
    "method": ("spectrum", "method"), "dense_limit": ("spectrum", "dense_limit"),
    "n_max": ("stability", "n_max"), "stability_samples": ("stability", "samples"),
    "tol": ("stability", "tol"),
    "jacobian": ("jacobian", "enabled"), "jacobian_samples": ("jacobian", "samples"),
    "jacobian_k": ("jacobian", "k"), "stages": ("jacobian", "stages"),
    "backbone": ("jacobian", "backbone"),
    "noise_level": ("noise", "level"), "affinity_noise": ("noise", "affinity"),
    "accuracy_levels": ("accuracy", "levels"), "accuracy_batches": ("accuracy", "batches"),
    "keep_captures": (None, "keep_captures"), "blas_threads": (None, "blas_threads"),
}


@dataclass(frozen=True)
class AnalysisConfig(V.DeclaredFields):
    """Everything :func:`analysis.analyze` can be told, in one frozen value.

    Parameters
    ----------
    capture, spectrum, stability, jacobian, noise, accuracy
        The sub-configurations (:class:`CaptureConfig`, :class:`SpectrumConfig`,
        :class:`StabilityConfig`, :class:`JacobianConfig`, :class:`NoiseConfig`,
        :class:`AccuracyConfig`), each documented there.
    keep_captures : bool
        Keep the captures (on the CPU) in ``table.captures`` for plots.
    blas_threads : int or None
        numpy's BLAS threads during the analysis (threadpoolctl, if installed; ``None``
        leaves them alone). 1 by default: the per-frequency problems are small, and BLAS
        threads competing with torch's oversubscribe the cores (more than 10x slower on 2).
    """

    capture: CaptureConfig = field(default_factory=CaptureConfig)
    spectrum: SpectrumConfig = field(default_factory=SpectrumConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    jacobian: JacobianConfig = field(default_factory=JacobianConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    keep_captures: bool = True
    blas_threads: int | None = 1

    constraints: ClassVar[dict[str, list[Any]]] = {
        **{name: [V.InstanceOf(cls)] for name, cls in _SUBS.items()},
        "keep_captures": ["boolean"], "blas_threads": [V.POS_INT, None],
    }

    def replace(self, **changes: Any) -> AnalysisConfig:
        """A copy with ``changes``: whole sub-configurations (``spectrum=SpectrumConfig()``)
        or flat names (``tol=1e-4``, see :data:`FLAT_NAMES`), each checked against its
        declaration and named in the error as given. ``jacobian`` is both: a
        :class:`JacobianConfig` replaces the sub-configuration, a bool sets its ``enabled``."""
        return self.replaced(changes, "AnalysisConfig.replace")

    def replaced(self, changes: Mapping[str, Any], where: str) -> AnalysisConfig:
        """:meth:`replace` with the caller's name ``where`` in its errors (``analyze``)."""
        _where = where
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if name in _SUBS and not (name in FLAT_NAMES
                                      and not isinstance(value, _SUBS[name])):
                V.check(value, name, [V.InstanceOf(_SUBS[name])], _where)
                top[name] = value
            elif name in FLAT_NAMES:
                sub, fname = FLAT_NAMES[name]
                owner = type(self) if sub is None else _SUBS[sub]
                cs = owner.constraints.get(fname)
                if cs is not None:
                    V.check(value, name, [V.make_constraint(c) for c in cs], _where)
                if sub is None:
                    top[fname] = value
                else:
                    nested.setdefault(sub, {})[fname] = value
            else:
                known = sorted([*_SUBS, *FLAT_NAMES])
                raise TypeError(f"{_where}: unknown option {name!r}; known options: "
                                f"{', '.join(known)}")
        for sub, vals in nested.items():
            base = top.get(sub, getattr(self, sub))
            top[sub] = dataclasses.replace(base, **vals)
        return dataclasses.replace(self, **top)

    def flat(self) -> dict[str, Any]:
        """The options by their flat names (what the measures read as ``ctx["tol"]``)."""
        return {name: getattr(self if sub is None else getattr(self, sub), fname)
                for name, (sub, fname) in FLAT_NAMES.items()}
