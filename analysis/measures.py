r"""The measures of an :func:`~analysis.analyze` row, as a registry.

A :class:`Measure` names the row columns it fills and how (``run(capture, context)``
returns ``{column: value}``); it declares what it needs from the work other measures share
(``needs``: the square graph's ``"spectrum"``, the ``"bipartite"`` spectrum of an N×M
affinity), which the context holds so that it is computed once. :func:`analyze` runs the
registered measures in order, each isolated: one that raises gives its row ``partial`` with
the reason and the others still run.

Two stages:

- ``"affinity"``: measures of the captured affinity and filter (spectra, metrics, responses,
  Tao, damping, linearized stability, affinity sensitivity). They are withheld when the
  capture fails its self-check (it does not reproduce the module).
- ``"module"``: measures of the map the model runs, re-run as a black box (Jacobians, noise
  gain); they run when ``analyze(jacobian=True)`` and the capture holds a module and input.

Columns a measure fills that are not fields of :class:`~analysis.analyze.BlockReport` go to
``row.extra`` and appear in ``to_frame("all")``; ``headline`` columns also appear in the summary
table, its HTML display and :meth:`~analysis.analyze.AnalysisTable.to_markdown`.

Examples
--------
Adding a measure is one function and one registration:

>>> import torch
>>> from analysis import analyze
>>> from graphfilters.blocks import make_block
>>> def trace(cap, ctx):                       # the trace of the affinity, mean over samples
...     A = cap.dense_affinity()
...     return {"affinity_trace": float(A.diagonal(dim1=-2, dim2=-1).sum(-1).mean())}
>>> register(Measure("trace", ("affinity_trace",), trace,
...                  headline=(("affinity_trace", "tr A", ".3f"),)))
>>> table = analyze(make_block("snl", 4), torch.randn(2, 4, 3, 3), progress=False,
...                 backbone=False, jacobian=False)
>>> "tr A" in table.summary() and "affinity_trace" in table.to_frame("all").columns
True
>>> unregister("trace")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from graphfilters.graph import DenseAffinity

from .attention_response import attention_response, is_attention_filter
from .bipartite import bipartite_response, bipartite_spectrum
from .capture import Capture
from .config import AnalysisConfig
from .reconstruct import RECONSTRUCTION_TOL, reconstruction_error
from .response import block_response
from .spectra import affinity_metrics, spectrum
from .stability import (
    affinity_sensitivity,
    block_function,
    damping,
    frozen_map_starts,
    jacobian_singular_values,
    jacobians,
    linearized_stability,
    noise_sensitivity,
    tao_spectrum,
)

__all__ = ["Measure", "MeasureContext", "register", "unregister", "registered",
           "APPROX_STABILITY"]

_NAN = float("nan")

#: the note of a row whose linearized stability folds a pre-LN LayerNorm at one mean scale
APPROX_STABILITY = "approximate.stability"


@dataclass(frozen=True)
class Measure:
    r"""One measure of an analyze row.

    Attributes
    ----------
    name : str
        Its name (timings, failure reasons, :func:`unregister`).
    columns : tuple of str
        The row columns it fills.
    run : callable
        ``run(capture, context) -> {column: value} or None``; it may write notes
        (``context.notes``) and failures (``context.fail``). An exception is the row's
        ``partial`` reason ``"name: message"``.
    stage : {"affinity", "module"}
        See the module docstring.
    needs : tuple of str
        Shared products it uses (``"spectrum"``, ``"bipartite"``); it is skipped when one is
        missing (its producer failed or does not apply).
    when : callable, optional
        ``when(capture, context) -> bool``: whether it applies to this capture.
    headline : tuple of (column, header, format)
        Columns shown in the summary table (formats as in :func:`format`).
    """

    name: str
    columns: tuple[str, ...]
    run: Callable[[Capture, MeasureContext], Mapping[str, Any] | None]
    stage: str = "affinity"
    needs: tuple[str, ...] = ()
    when: Callable[[Capture, MeasureContext], bool] | None = None
    headline: tuple[tuple[str, str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        if self.stage not in ("affinity", "module"):
            raise ValueError(f"stage must be 'affinity' or 'module', got {self.stage!r}")
        if not callable(self.run):
            raise TypeError("run must be callable as run(capture, context)")
        if isinstance(self.columns, str) or not all(isinstance(c, str) for c in self.columns):
            raise TypeError(f"columns must be a tuple of str, got {self.columns!r}")


@dataclass
class MeasureContext:
    """What the measures of one row share: the options of :func:`analyze` (``config``, an
    :class:`~analysis.config.AnalysisConfig`, and the same by flat name: ``ctx["tol"]`` is
    ``ctx.config.stability.tol``), the row's notes, the failures so far and the shared
    products (``shared["spectrum"]``...)."""

    options: Mapping[str, Any]
    notes: dict[str, str]
    timings: dict[str, float]
    failed: list[str] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)
    config: AnalysisConfig | None = None

    def fail(self, message: str) -> None:
        """Record a failure (the row becomes ``partial`` with it)."""
        self.failed.append(message)

    def __getitem__(self, key: str) -> Any:
        return self.options[key]


_MEASURES: list[Measure] = []


def register(measure: Measure, *, before: str | None = None) -> None:
    """Add ``measure`` (replacing one of the same name), at the end or before ``before``."""
    if not isinstance(measure, Measure):
        raise TypeError(f"measure must be a Measure, got {type(measure).__name__}")
    unregister(measure.name)
    names = [m.name for m in _MEASURES]
    if before is not None and before not in names:
        raise ValueError(f"before={before!r} is not a registered measure; known: "
                         f"{', '.join(names)}")
    _MEASURES.insert(names.index(before) if before is not None else len(_MEASURES), measure)


def unregister(name: str) -> None:
    """Remove the measure ``name`` (no error if none)."""
    _MEASURES[:] = [m for m in _MEASURES if m.name != name]


def registered(names: Sequence[str] | None = None) -> list[Measure]:
    """The registered measures in order (only ``names`` when given; unknown names raise)."""
    if names is None:
        return list(_MEASURES)
    known = {m.name: m for m in _MEASURES}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown measure(s) {bad}; known: {', '.join(known)}")
    return [m for m in _MEASURES if m.name in set(names)]


def run_measures(cap: Capture, row: Any, config: AnalysisConfig,
                 measures: Sequence[Measure], withhold: str | None = None) -> list[str]:
    """Run ``measures`` on ``cap`` into ``row`` with the options of ``config`` (affinity-stage
    ones skipped with the reason ``withhold``); returns the failures."""
    ctx = MeasureContext(config.flat(), row.notes, row.timings, config=config)
    if withhold:
        ctx.fail(withhold)
    module_ok = config.jacobian.enabled and cap.module is not None and cap.input is not None
    for m in measures:
        if (m.stage == "affinity" and withhold) or (m.stage == "module" and not module_ok):
            continue
        if any(ctx.shared.get(n) is None for n in m.needs):
            continue
        if m.when is not None and not m.when(cap, ctx):
            continue
        t0 = time.perf_counter()
        try:
            values = m.run(cap, ctx)
        except (ValueError, TypeError, RuntimeError, NotImplementedError,
                np.linalg.LinAlgError) as exc:
            ctx.fail(f"{m.name}: {exc}")
            values = None
        except Exception as exc:  # noqa: BLE001 - one measure's failure must not stop the rest
            ctx.fail(f"{m.name}: {type(exc).__name__}: {exc}")
            values = None
        finally:
            row.timings[m.name] = row.timings.get(m.name, 0.0) + time.perf_counter() - t0
        own = {f.name for f in fields(row)} - {"extra", "notes", "timings"}
        for k, v in (values or {}).items():
            if k in own:
                setattr(row, k, v)
            else:
                row.extra[k] = v
    return ctx.failed


# ------------------------------------------------------------------------------------------
# The built-in measures, in the order of the table
# ------------------------------------------------------------------------------------------

def _square(cap: Capture) -> bool:
    return cap.affinity.n == cap.affinity.n_cols


#: What an N x M affinity's row leaves out, and why.
NXM_NA = ("lambda_max, complex_share, max_imag, asymmetry, rank_collapse, damping and "
          "linearized stability: defined on the square graph of a square affinity; this "
          "N x M affinity is read as a bipartite graph (notes['bipartite']: singular values, "
          "spectral_gap = 1 - sigma_2/sigma_1, effective_rank of sigma, singular_max = "
          "||A_hat||_2), the block's stability by its full and frozen Jacobians")


def _reconstruction(cap: Capture, ctx: MeasureContext) -> dict[str, Any]:
    err, how = reconstruction_error(cap)
    ctx.notes["reconstruction"] = how
    if err > RECONSTRUCTION_TOL and cap.heads_averaged:
        ctx.notes["approximate"] = (
            f"response, Tao spectrum, damping and linearized stability are of the "
            f"head-averaged filter, which reproduces the module's output only to "
            f"{err:.1e}; analyze(..., heads='keep') measures the per-head "
            "filter the module computes")
    elif err > RECONSTRUCTION_TOL:
        ctx.fail(f"reconstruction: {how} (above {RECONSTRUCTION_TOL:g}: the "
                 "filter-based measures do not describe this module)")
    return {"reconstruction_error": err}


def _triangular(cap: Capture, ctx: MeasureContext) -> dict[str, Any] | None:
    """Causal (triangular) affinities: their eigenvalues are the diagonal, which says little
    about the map, so the singular values are reported beside them."""
    A = cap.dense_affinity()
    if A.dim() < 2 or not bool((A.triu(1) == 0).all()) or bool((A.tril(-1) == 0).all()):
        return None
    sv = torch.linalg.svdvals(A.double())
    s = float(sv[..., 0].max())
    ctx.notes["triangular"] = (
        "causal (lower-triangular) affinity: its eigenvalues are its diagonal entries, so the "
        "spectrum and complex share describe only the diagonal; singular_max is the largest "
        f"singular value of A_hat (exact, max over samples): {s:.4g}")
    return {"singular_max": s}


def _spectrum(cap: Capture, ctx: MeasureContext) -> dict[str, Any] | None:
    if not _square(cap):                # N x M (sub-sampled keys): a bipartite graph
        bip = bipartite_spectrum(cap.operator(), vectors=cap.weights is not None)
        ctx.shared["bipartite"] = bip
        out = dict(bip.summary())
        out.update(spectrum_method="bipartite-svd", spectrum_reason=bip.describe())
        ctx.notes["bipartite"] = bip.describe()
        ctx.notes["n/a"] = NXM_NA
        return out
    spec = spectrum(cap.affinity, "normalized", cap.normalization, method=ctx["method"],
                    dense_limit=ctx["dense_limit"], progress=False)
    ctx.shared["spectrum"] = spec
    if spec.status == "uncertified":   # flagged values stay, the row says so
        ctx.fail(f"spectrum: {spec.n_uncertified} eigenvalue(s) not certified "
                 f"(relative residual up to {spec.max_residual():.1e} > tol = {spec.tol:g})")
    return {"spectrum_method": spec.method, "spectrum_reason": spec.reason,
            "symmetric": spec.symmetric}


def _metrics(cap: Capture, ctx: MeasureContext) -> dict[str, Any]:
    m = affinity_metrics(cap.affinity, cap.normalization,
                         spectrum_result=ctx.shared["spectrum"], progress=False)
    ctx.notes.update({f"metrics.{k}": v for k, v in m.notes.items()})
    return dict(m.summary())


def _response(cap: Capture, ctx: MeasureContext) -> dict[str, Any]:
    resp = (block_response(cap, spectrum_result=ctx.shared.get("spectrum")) if _square(cap)
            else bipartite_response(cap, ctx.shared.get("bipartite")))
    out = {"response_class": resp.label, "response_low": resp.stats["low"],
           "response_mid": resp.stats["mid"], "response_high": resp.stats["high"]}
    if resp.energy_z is not None and resp.energy_out is not None:
        out["z_low_energy"] = float(resp.energy_z.band_fractions()[0])
        out["out_low_energy"] = float(resp.energy_out.band_fractions()[0])
        ctx.notes["energy"] = resp.energy_z.reason
    ctx.notes.update({f"response.{k}": v for k, v in resp.notes.items()})
    if "energy" in resp.notes:
        ctx.fail(f"energy: {resp.notes['energy']}")
    return out


def _tao(cap: Capture, ctx: MeasureContext) -> dict[str, Any]:
    tao = tao_spectrum(cap)
    ctx.notes["tao"] = tao.how
    return {"tao_negative_share": tao.negative_share, "tao_negative_mass": tao.negative_mass,
            "tao_min": float(tao.eigenvalues[0]), "tao_max": float(tao.eigenvalues[-1]),
            "tao_forced": tao.forced}


def _damping(cap: Capture, ctx: MeasureContext) -> dict[str, Any]:
    dm = damping(cap, spectrum_result=ctx.shared["spectrum"])
    ctx.notes["damping"] = dm.how
    return {"damping_share": dm.share, "damping_mass": dm.mass,
            "damping_definite_share": dm.definite_share}


def _stability(cap: Capture, ctx: MeasureContext) -> dict[str, Any]:
    st = linearized_stability(cap, spectrum_result=ctx.shared["spectrum"], n_max=ctx["n_max"],
                              samples=ctx["stability_samples"], tol=ctx["tol"])
    ctx.notes["stability"] = st.how
    ctx.shared["frozen_vector"] = st.vector         # a warm start for the Jacobians
    ctx.notes.update({f"stability.{k}": v for k, v in st.notes.items()})
    if cap.layernorm == "pre":
        ctx.notes[APPROX_STABILITY] = (
            "stability_radius, stability_norm and stack_growth are of the "
            "filter with the pre-LN LayerNorm folded at one mean scale ("
            + str(cap.info.get("layernorm_fold", "")) + "; tokens' 1/sigma "
            + str(cap.info.get("layernorm_scales", "")) + "): an approximation "
            "of the layer's frozen map, whose exact norm is jacobian_frozen")
    return {"stability_radius": st.radius, "stability_norm": st.norm,
            "stack_growth": tuple(float(g) for g in st.growth),
            "stability_norm_lower_bound": st.norm_lower_bound,
            "stack_growth_lower_bound": tuple(float(g) for g in st.growth_lower_bound),
            "stability_residual": float(np.max(st.residual, initial=0.0)),
            "stability_converged": st.converged}


def _affinity_gain(cap: Capture, ctx: MeasureContext) -> dict[str, Any]:
    return {"affinity_gain": float(affinity_sensitivity(cap, ctx["affinity_noise"])["gain"])}


def _no_weights(cap: Capture, ctx: MeasureContext) -> None:
    if cap.source == "observed":
        ctx.notes["n/a"] = ("" if _square(cap) else NXM_NA + "; ") + (
            ("" if _attention_filter(cap, ctx) else "response, ")
            + "Tao spectrum, damping, linearized stability and affinity sensitivity: "
            "observed attention (the owner's weights are not read; its Jacobians are "
            "measured as a black box)")
    else:
        ctx.fail("response/stability: no filter weights captured")


def _attention_filter(cap: Capture, ctx: MeasureContext) -> bool:
    return is_attention_filter(cap.module) and cap.module.table_name != "diffattn"


def _attention_response(cap: Capture, ctx: MeasureContext) -> dict[str, Any]:
    spec = ctx.shared.get("spectrum")
    eigs = None if spec is None else [1 - np.asarray(mu) for mu in spec.eigenvalues]
    resp = attention_response(cap.module, eigenvalues=eigs)
    ctx.notes.update({f"response.{k}": v for k, v in resp.notes.items()})
    ctx.notes["response.heads"] = ", ".join(resp.head_labels)
    return {"response_class": resp.label, "response_low": resp.stats["low"],
            "response_mid": resp.stats["mid"], "response_high": resp.stats["high"]}


def _learned(cap: Capture, ctx: MeasureContext) -> bool:
    coefficients = getattr(cap.module, "coefficients", None)
    return callable(coefficients) and bool(coefficients())


def _coefficients(cap: Capture, ctx: MeasureContext) -> dict[str, Any]:
    r"""The learned scalars of an attention filter block (GFSA's :math:`w`'s, AttnScale's
    :math:`\lambda_h`, Differential attention's :math:`\lambda` and its four vectors), per
    head, as the block's ``coefficients()`` gives them."""
    module = cap.module
    values = {name: [float(v) for v in torch.as_tensor(t).detach().reshape(-1).cpu()]
              for name, t in module.coefficients().items()}
    if callable(getattr(module, "lambda_full", None)):
        values["lambda"] = float(module.lambda_full().detach())
    return {"coefficients": values}


def _jacobian(cap: Capture, ctx: MeasureContext) -> dict[str, Any]:
    tol, k = ctx["tol"], ctx["jacobian_k"]
    out: dict[str, Any] = {}
    fn, x = block_function(cap, 0)
    starts = (frozen_map_starts(cap, x, tol, top=ctx.shared.get("frozen_vector"))
              if cap.weights is not None else None)
    try:
        rep = jacobians(fn, x, k, residual=cap.residual, tol=tol, max_iter=60, starts=starts)
    except ValueError as exc:          # no frozen form of this module: full only
        ctx.fail(f"jacobian_frozen: {exc}")
        full = jacobian_singular_values(fn, x, k, tol=tol, max_iter=60)
    else:
        full = rep.full
        out.update(jacobian_frozen=rep.frozen.norm, affinity_share=rep.affinity_share,
                   jacobian_frozen_top=tuple(float(v) for v in rep.frozen.values))
    out["jacobian_full_top"] = tuple(float(v) for v in full.values)
    norms = [full.norm]
    for i in range(1, min(ctx["jacobian_samples"], cap.n_samples)):
        fn, x = block_function(cap, i)
        norms.append(jacobian_singular_values(fn, x, 1, tol=tol, max_iter=60).norm)
    out["jacobian_full"] = max(norms)
    ctx.notes["jacobian"] = (
        f"Krylov power iteration on J^T J (tol {tol:g}, residual "
        f"{full.residual:.1e}{'' if full.converged else ', NOT converged'}); "
        f"full: max over {len(norms)} sample(s); frozen and affinity share: sample 0")
    return out


def _noise(cap: Capture, ctx: MeasureContext) -> dict[str, Any]:
    fn, x = block_function(cap, 0)
    return {"noise_gain": float(noise_sensitivity(fn, x, ctx["noise_level"])["gain"])}


def _weights(cap: Capture, ctx: MeasureContext) -> bool:
    return cap.weights is not None


for _m in (
    Measure("reconstruction", ("reconstruction_error",), _reconstruction, when=_weights),
    Measure("triangular", ("singular_max",), _triangular,
            when=lambda c, x: _square(c) and c.affinity.n <= x["dense_limit"]
            and isinstance(c.affinity, DenseAffinity)),
    Measure("spectrum", ("spectrum_method", "spectrum_reason", "symmetric", "singular_max",
                         "spectral_gap", "effective_rank", "row_sum_deviation"), _spectrum,
            headline=(("spectrum_method", "spectrum", "s"),)),
    Measure("metrics", ("lambda_max", "spectral_gap", "complex_share", "max_imag",
                        "asymmetry", "row_sum_deviation", "effective_rank", "rank_collapse"),
            _metrics, needs=("spectrum",),
            headline=(("lambda_max", "λ_max", ".3f"), ("complex_share", "complex", ".0%"))),
    Measure("response", ("response_class", "response_low", "response_mid", "response_high",
                         "z_low_energy", "out_low_energy"), _response, when=_weights,
            headline=(("response_class", "response", "s"),)),
    Measure("tao", ("tao_negative_share", "tao_negative_mass", "tao_min", "tao_max",
                    "tao_forced"), _tao, when=_weights),
    Measure("damping", ("damping_share", "damping_mass", "damping_definite_share"), _damping,
            needs=("spectrum",), when=_weights, headline=(("damping_share", "damping", ".0%"),)),
    Measure("stability", ("stability_radius", "stability_norm", "stack_growth",
                          "stability_norm_lower_bound", "stack_growth_lower_bound",
                          "stability_residual", "stability_converged"), _stability,
            needs=("spectrum",), when=_weights, headline=(("stack_growth", "growth@n", ".3g"),)),
    Measure("affinity_sensitivity", ("affinity_gain",), _affinity_gain, when=_weights),
    Measure("filter_weights", (), _no_weights, when=lambda c, x: c.weights is None),
    Measure("coefficients", ("coefficients",), _coefficients, when=_learned),
    Measure("attention_response", ("response_class", "response_low", "response_mid",
                                   "response_high"), _attention_response,
            when=_attention_filter, headline=(("response_class", "response", "s"),)),
    Measure("jacobian", ("jacobian_full", "jacobian_frozen", "jacobian_full_top",
                         "jacobian_frozen_top", "affinity_share"), _jacobian,
            stage="module",
            headline=(("jacobian_full", "‖J‖ full", ".3f"),
                      ("jacobian_vs_backbone", "‖J‖ / backbone median", ".2f"),
                      ("affinity_share", "affinity share", ".2f"))),
    Measure("noise", ("noise_gain",), _noise, stage="module"),
):
    register(_m)
del _m
