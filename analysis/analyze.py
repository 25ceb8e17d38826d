r"""One call: :func:`analyze` a model's nonlocal blocks, one row per block.

For every nonlocal module that :func:`~analysis.capture.capture` finds, :func:`analyze`
computes the spectrum of :math:`\hat A` (method picked by structure and size and recorded),
the affinity metrics of :func:`~analysis.metrics.affinity_metrics`, the frequency response
and its class (:func:`~analysis.response.block_response`), Tao et al.'s weight spectrum,
the linearized stability and stack growth (:mod:`analysis.robustness`), the Jacobian's
spectral norm, and the output changes under input noise and affinity perturbation.

Each row has a ``status``: ``"ok"``; ``"partial"`` when some measures could not be computed
(``reason`` lists which and why, e.g. CGNL's channel-position graph has no per-frequency
channel map); ``"skipped"`` when nothing could be measured. A model without nonlocal modules
gives an empty table whose ``reason`` says so. Computations run on the model's device; the
rows hold plain Python floats and the kept captures are moved to the CPU.

Examples
--------
>>> import torch
>>> from analysis import analyze
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> mha = torch.nn.MultiheadAttention(4, 1, batch_first=True)
>>> class Net(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.attn = mha
...     def forward(self, x):
...         return x + self.attn(x, x, x)[0]
>>> table = analyze(Net(), torch.randn(2, 6, 4), progress=False)
>>> [(row.path, row.status, row.response_class) for row in table]
[('attn', 'ok', 'band-stop')]
>>> analyze(torch.nn.Linear(3, 3), torch.randn(2, 3), progress=False).reason[:24]
'no nonlocal module found'
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from graphfilters import _validate as V
from graphfilters._warnings import external_stacklevel
from graphfilters.display import card_html, fmt, pandas, table_html, table_text

from .capture import SELF_CHECK_TOL, Capture, Captures, _Batches, capture
from .config import AnalysisConfig
from .measures import APPROX_STABILITY, registered, run_measures
from .stability import (
    accuracy_under_noise,
    backbone_jacobians,
    block_function,
    stage_jacobians,
)

__all__ = ["BlockReport", "AnalysisTable", "analyze", "headline_columns"]

_NAN = float("nan")


@dataclass
class BlockReport:
    r"""One row of :func:`analyze`: every metric of one nonlocal block.

    Attributes
    ----------
    path, block, source : str
        Module path, block table name (or module class) and ``block``/``attention``/``adapter``.
    status, reason : str
        ``ok``, ``partial`` or ``skipped``, and what was skipped and why.
    affinity, normalization : str
        Affinity structure (``LowRankAffinity``, ...) and its normalization.
    n_nodes, n_samples, order : int
    spatial_shape : tuple of int
    symmetric : bool or None
        Whether :math:`\hat A` is symmetric.
    spectrum_method, spectrum_reason : str
        The eigen-solver used and why (see :func:`analysis.eigen.spectrum`).
    lambda_max, spectral_gap, complex_share, max_imag, asymmetry, row_sum_deviation,
    effective_rank, rank_collapse : float
        :func:`analysis.metrics.affinity_metrics` (max over samples for ``lambda_max``,
        ``max_imag``, ``asymmetry``, ``row_sum_deviation``; mean for the others).
    response_class : str
        :func:`analysis.response.classify_response` of the filter's largest singular value.
    response_low, response_mid, response_high : float
        Mean gains on the thirds of :math:`[0, \lambda_{max}]`.
    z_low_energy, out_low_energy : float
        Share of the energy of :math:`Z` and of the filter output at
        :math:`\lambda < 2/3` (graph Fourier transform, see :mod:`analysis.response`).
    tao_negative_share, tao_negative_mass, tao_min, tao_max : float
        Tao et al. spectrum of :math:`\operatorname{sym}(G W_1 S)` (see
        :class:`analysis.stability.channel.TaoSpectrum`).
    tao_forced : bool or None
        The share is forced by the bottleneck (rank :math:`r \le C/2` with exactly ``r``
        negative eigenvalues, Sylvester's law): it then carries no information.
    damping_share, damping_definite_share, damping_mass : float
        Sign-correct damping (:func:`analysis.stability.damping.damping`): share of graph
        frequencies whose step :math:`\operatorname{her}(G H(\lambda) S)` damps on balance,
        share where every direction damps, and the negative eigen-mass share.
    stability_radius : float
        :math:`\max_\lambda \rho(M(\lambda))` (exact) of the frozen-affinity map.
    stability_norm : float
        :math:`\|\mathcal M\|_2` of the frozen-affinity map (exact).
    stack_growth : tuple of float
        :math:`\|\mathcal M^n\|_2` for ``n = 1 .. n_max`` (exact; shown as ``growth@n``).
    stability_norm_lower_bound, stack_growth_lower_bound : float, tuple of float
        The per-frequency (Schur diagonal block) values: a lower bound for a non-symmetric
        :math:`\hat A`, equal to the exact ones for a symmetric one.
    stability_residual : float
        Largest relative residual of the matrix-free norms (0 for the eigenbasis).
    stability_converged : bool or None
    jacobian_full, jacobian_frozen : float
        Spectral norm of the Jacobian with the affinity recomputed from the input (what
        training sees) and with it frozen; for a ``stage`` row, of the whole stage (its
        units sharing the affinity of the stage input). Max over the samples used.
    jacobian_full_top, jacobian_frozen_top : tuple of float
        Their top singular values (sample 0).
    affinity_share : float
        :math:`\|J_{full} - J_{fix}\|_2 / \|J_{fix} - I\|_2` (attention without residual:
        :math:`/\|J_{fix}\|_2`).
    n_units : int
        Units of a ``stage`` row (0 for unit rows).
    noise_gain : float
        Relative output change per relative input noise.
    affinity_gain : float
        Relative filter-output change per relative change of :math:`\hat A Z`.
    notes : dict
        How each quantity was computed.
    singular_max : float
        Largest singular value of :math:`\hat A` for causal (triangular) affinities, whose
        eigenvalues are only their diagonal (``notes["triangular"]``), and for N×M affinities
        (read as bipartite graphs, :mod:`analysis.bipartite`; ``notes["bipartite"]``);
        ``nan`` otherwise.
    self_check_error : float
        How well the capture reproduces what the module computed
        (:attr:`analysis.capture_record.Capture.self_check_error`, what was compared in
        ``notes["self_check"]``); ``nan`` where not checked.
    reconstruction_error : float
        The module's output rebuilt from the captured filter against the module's own
        (:func:`analysis.reconstruct.reconstruction_error`, ``notes["reconstruction"]``): what
        the filter-based measures describe. Above ``RECONSTRUCTION_TOL`` for a head-averaged
        capture (``heads="mean"``) those measures are of the head-averaged filter, an
        approximation (``notes["approximate"]``); otherwise the row is ``partial``.
    extra : dict
        Columns of registered measures that are not fields of this class
        (:mod:`analysis.measures`).
    timings : dict
        Seconds spent on each measure (``spectrum``, ``response``, ``stability``,
        ``jacobian``...), to see what dominates.
    """

    path: str
    block: str
    source: str
    status: str = "ok"
    reason: str = ""
    affinity: str = ""
    normalization: str = ""
    n_nodes: int = 0
    spatial_shape: tuple[int, ...] = ()
    n_samples: int = 0
    order: int = -1
    symmetric: bool | None = None
    spectrum_method: str = ""
    spectrum_reason: str = ""
    lambda_max: float = _NAN
    spectral_gap: float = _NAN
    complex_share: float = _NAN
    max_imag: float = _NAN
    asymmetry: float = _NAN
    row_sum_deviation: float = _NAN
    effective_rank: float = _NAN
    rank_collapse: float = _NAN
    response_class: str = ""
    response_low: float = _NAN
    response_mid: float = _NAN
    response_high: float = _NAN
    z_low_energy: float = _NAN
    out_low_energy: float = _NAN
    tao_negative_share: float = _NAN
    tao_negative_mass: float = _NAN
    tao_min: float = _NAN
    tao_max: float = _NAN
    tao_forced: bool | None = None
    damping_share: float = _NAN
    damping_definite_share: float = _NAN
    damping_mass: float = _NAN
    stability_radius: float = _NAN
    stability_norm: float = _NAN
    stack_growth: tuple[float, ...] = ()
    stability_norm_lower_bound: float = _NAN
    stack_growth_lower_bound: tuple[float, ...] = ()
    stability_residual: float = _NAN
    stability_converged: bool | None = None
    jacobian_full: float = _NAN
    jacobian_frozen: float = _NAN
    jacobian_full_top: tuple[float, ...] = ()
    jacobian_frozen_top: tuple[float, ...] = ()
    affinity_share: float = _NAN
    n_units: int = 0
    noise_gain: float = _NAN
    affinity_gain: float = _NAN
    self_check_error: float = _NAN
    reconstruction_error: float = _NAN
    singular_max: float = _NAN
    notes: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def jacobian_norm(self) -> float:
        """Deprecated: the same value as ``jacobian_full`` (read that)."""
        warnings.warn("BlockReport.jacobian_norm is jacobian_full; read jacobian_full",
                      DeprecationWarning, stacklevel=external_stacklevel())
        return self.jacobian_full

    def _headline_items(self) -> dict[str, str]:
        cells = ((h, f, getattr(self, k) if k in _FIELDS else self.extra.get(k, _NAN))
                 for k, h, f in headline_columns()[len(IDENTITY_COLUMNS):]
                 if k != "jacobian_vs_backbone")
        return {_header(h, [self]): _fmt(v, f) for h, f, v in cells if _defined(v)}

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v}" for k, v in self._headline_items().items())
        return f"<BlockReport {self.path} ({self.block}) {self.status}: {items}>"

    def _repr_html_(self) -> str:
        return card_html(f"{self.path} ({self.block})", self._headline_items(),
                         status=self.status, notes=[self.reason])


_FIELDS = [f.name for f in fields(BlockReport)]


#: The columns that name a row (key, header, format), first in every headline.
IDENTITY_COLUMNS = (("path", "block", "s"), ("block", "kind", "s"), ("status", "status", "s"))
_LEFT = 4   # the text columns of the headline, left-aligned


def headline_columns(measures: Sequence[str] | None = None) -> tuple[tuple[str, str, str], ...]:
    """The headline columns, what a reader needs first: (key, header, format).

    :data:`IDENTITY_COLUMNS`, then the ``headline`` declared by each registered measure
    (:mod:`analysis.measures`; only ``measures`` when given), in registration order (a column
    that two measures fill for different captures, once, at its first place): the one
    declaration read by the table's display, :meth:`AnalysisTable.summary`,
    :meth:`AnalysisTable.to_markdown`, ``to_frame(columns="summary")`` and the report. A
    forced quantity (Tao's share) is not a headline; a column undefined in every row (e.g.
    no backbone to compare with) is left out. ``growth@n`` names its depth ``n``.

    Examples
    --------
    >>> [h for _, h, _ in headline_columns(["spectrum", "metrics"])]
    ['block', 'kind', 'status', 'spectrum', 'λ_max', 'complex']
    """
    cols: dict[str, tuple[str, str, str]] = {}
    for m in registered() if measures is None else registered(measures):
        for h in m.headline:
            cols.setdefault(h[0], h)
    return IDENTITY_COLUMNS + tuple(cols.values())


#: The headline of the built-in measures (at most 12 columns; :func:`headline_columns` is
#: the live one, with measures registered later).
HEADLINE_COLUMNS = headline_columns()


def _headline_columns(table: Any = None) -> tuple[tuple[str, str, str], ...]:
    """The headline columns of the measures that made ``table`` (all registered ones for a
    table not made by :func:`analyze`)."""
    made = getattr(table, "measure_headline", None)
    return IDENTITY_COLUMNS + tuple(made) if made is not None else headline_columns()


def _approx(row: BlockReport, key: str) -> str:
    """``"≈"`` before a headline value that is an approximation in this row."""
    return "≈" if key == "stack_growth" and APPROX_STABILITY in row.notes else ""


def _header(head: str, rows: Sequence[BlockReport]) -> str:
    """``growth@n`` headers name the depth ``n`` of the value shown."""
    if "@n" in head:
        n = max((len(r.stack_growth) for r in rows), default=0)
        return head.replace("@n", f"@{n}" if n else "@n")
    return head


def _defined(value: Any) -> bool:
    if isinstance(value, tuple):
        return bool(value)
    return value not in (None, "") and not (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, tuple):
        value = value[-1] if value else _NAN
    return fmt(value, spec)


class AnalysisTable(list):
    """The rows of :func:`analyze` (a list of :class:`BlockReport`).

    Attributes
    ----------
    reason : str
        Why the table is empty (empty string otherwise).
    accuracy : dict or None
        ``{noise level: accuracy}`` when ``accuracy_levels`` were given.
    captures : Captures or None
        The captures the rows were computed from (on the CPU), if kept.
    backbone : list of dict
        Full Jacobian norms of the backbone's own residual units
        (:func:`analysis.stability.jacobian.backbone_jacobians`): the reference a block's value is
        read against.
    """

    def __init__(self, rows: Iterable[BlockReport] = (), reason: str = "",
                 accuracy: dict[float, float] | None = None,
                 captures: Captures | None = None,
                 backbone: list[dict[str, Any]] | None = None) -> None:
        super().__init__(rows)
        self.reason = reason
        self.accuracy = accuracy
        self.captures = captures
        self.backbone = list(backbone or [])
        #: headline columns of the registered measures that made this table
        self.measure_headline: tuple[tuple[str, str, str], ...] | None = None

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per row (JSON-friendly: tuples become lists, notes included)."""
        out = []
        for r in self:
            d = asdict(r)
            for k in ("spatial_shape", "stack_growth", "stack_growth_lower_bound",
                      "jacobian_full_top", "jacobian_frozen_top"):
                d[k] = list(d[k])
            out.append(d)
        return out

    def _backbone_median(self) -> float:
        vals = [b["jacobian_full"] for b in self.backbone
                if math.isfinite(b.get("jacobian_full", _NAN))]
        return float(np.median(vals)) if vals else _NAN

    def _value(self, row: BlockReport, key: str) -> Any:
        if key == "jacobian_vs_backbone":
            return row.jacobian_full / self._backbone_median() if self.backbone else _NAN
        if key in row.extra or key not in _FIELDS:
            return row.extra.get(key, _NAN)
        return getattr(row, key)

    def columns(self, columns: str | Sequence[str] = "summary") -> list[str]:
        """The keys of ``columns``: ``"summary"`` (the headline columns defined in some row),
        ``"all"`` (every field of :class:`BlockReport` but ``notes`` and ``timings``) or a
        list of keys."""
        if isinstance(columns, str) and columns == "all":
            extra = list(dict.fromkeys(k for r in self for k in r.extra))
            return [f for f in _FIELDS if f not in ("notes", "extra", "timings")] + extra
        if isinstance(columns, str) and columns == "summary":
            return [k for k, _, _ in _headline_columns(self)
                    if k in ("path", "block", "status")
                    or any(_defined(self._value(r, k)) for r in self)]
        if isinstance(columns, str):
            raise ValueError(f"columns must be 'summary', 'all' or a list of keys, "
                             f"got {columns!r}")
        return list(columns)

    def to_frame(self, columns: str | Sequence[str] = "summary"):  # -> pandas.DataFrame
        """A pandas DataFrame, one row per block.

        Parameters
        ----------
        columns : {"summary", "all"} or list of str
            ``"summary"`` (default): the headline columns (:data:`HEADLINE_COLUMNS`, at most
            12, the ones defined in some row), as the table displays itself; ``"all"``: every
            field of :class:`BlockReport` (``notes``, ``timings`` left out) and the columns of
            registered measures.

        Raises
        ------
        ImportError
            If pandas is not installed (``pip install pandas``).
        """
        pd = pandas()
        cols = self.columns(columns)
        data = [{k: self._value(r, k) for k in cols} for r in self]
        frame = pd.DataFrame(data, columns=cols)
        frame.attrs["reason"] = self.reason
        return frame

    def _headline(self) -> tuple[list[str], list[list[str]]]:
        keys = self.columns("summary")
        spec = {k: (h, f) for k, h, f in _headline_columns(self)}
        heads = [_header(spec[k][0], self) for k in keys]
        rows = [[_approx(r, k) + _fmt(self._value(r, k), spec[k][1]) for k in keys]
                for r in self]
        return heads, rows

    def to_markdown(self) -> str:
        """The headline table as a markdown (pipe) table, the notes below it."""
        heads, rows = self._headline()
        esc = [[c.replace("|", "\\|") for c in r] for r in [heads, *rows]]
        lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
        notes = self._notes()
        return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))

    def headline_table(self) -> tuple[list[str], list[list[str]]]:
        """The headline columns' headers and formatted cells (what :meth:`summary`, the HTML
        display and :mod:`analysis.report` show)."""
        return self._headline()

    def headline(self) -> dict[str, Any]:
        """The model's headline numbers (WeightWatcher-style): blocks per status, the largest
        λ_max, complex share, growth, ‖J‖ full and affinity share over the blocks, the
        backbone's median ‖J‖ full and the accuracy under noise (those measured).

        Examples
        --------
        >>> AnalysisTable([BlockReport("a", "snl", "block", lambda_max=1.5)]).headline()
        {'blocks': 1, 'ok': 1, 'partial': 0, 'skipped': 0, 'max lambda_max': 1.5}
        """
        out: dict[str, Any] = {"blocks": len(self)}
        for status in ("ok", "partial", "skipped"):
            out[status] = sum(r.status == status for r in self)
        for key in ("lambda_max", "complex_share", "stack_growth", "jacobian_full",
                    "affinity_share"):
            vals = [v[-1] if isinstance(v, tuple) else v
                    for v in (getattr(r, key) for r in self) if _defined(v)]
            vals = [v for v in vals if math.isfinite(v)]
            if vals:
                out[f"max {key}"] = max(vals)
        if self.backbone:
            out["backbone median jacobian_full"] = self._backbone_median()
        if self.accuracy:
            out["accuracy"] = dict(self.accuracy)
        return out

    def _notes(self) -> list[str]:
        lines = [f"{row.path}: {row.status}: {row.reason}" for row in self if row.reason]
        n = max((len(r.stack_growth) for r in self), default=0)
        if n:
            lines.append(f"growth@{n}: exact ‖M^{n}‖ of {n} copies sharing the frozen affinity "
                         "(lower bounds and every other metric: to_frame(columns='all'))")
        if any(APPROX_STABILITY in r.notes for r in self):
            lines.append("≈: the layer's LayerNorm is folded at one mean scale in this map, an "
                         "approximation (notes['approximate.stability']); the exact frozen "
                         "norm is jacobian_frozen")
        if self.backbone:
            vals = np.array([b["jacobian_full"] for b in self.backbone])
            lines.append(f"backbone residual units ({len(vals)}): ‖J‖ full median "
                         f"{np.median(vals):.3f}, range {vals.min():.3f}-{vals.max():.3f}")
        if self.accuracy:
            acc = ", ".join(f"σ={s:g}: {a:.3f}" for s, a in self.accuracy.items())
            lines.append(f"accuracy under Gaussian input noise: {acc}")
        return lines

    def summary(self) -> str:
        """The headline table as fixed-width text (:data:`HEADLINE_COLUMNS`), the reasons of
        partial/skipped rows, the backbone reference and the accuracy under noise."""
        if not self:
            return f"no nonlocal blocks analysed: {self.reason}"
        heads, rows = self._headline()
        counts = ", ".join(f"{v} {k}" for k, v in self.headline().items()
                           if k in ("ok", "partial", "skipped") and v)
        return "\n".join([f"{len(self)} nonlocal block(s): {counts}",
                          table_text(heads, rows, left=_LEFT), *self._notes()])

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        if not self:
            return f"<div>no nonlocal blocks analysed: {html.escape(self.reason)}</div>"
        heads, rows = self._headline()
        return table_html(heads, rows, caption=f"analyze: {len(self)} nonlocal block(s)",
                          notes=self._notes(), status_column=2)


def _row_base(cap: Capture) -> BlockReport:
    aff = cap.affinity
    return BlockReport(
        path=cap.path,
        block=cap.spec.name if cap.spec is not None else cap.module_type,
        source=cap.source,
        affinity=type(aff).__name__ if aff is not None else "",
        normalization=cap.normalization,
        n_nodes=cap.n,
        spatial_shape=tuple(cap.spatial_shape),
        n_samples=cap.n_samples,
        order=cap.order if cap.order is not None else -1,
    )


def _analyze_one(cap: Capture, config: AnalysisConfig,
                 measures: Sequence[str] | None = None) -> BlockReport:
    row = _row_base(cap)
    row.self_check_error = float(cap.self_check_error)
    if cap.self_check:
        row.notes["self_check"] = cap.self_check
    if "recognizer" in cap.info:
        row.notes["recognizer"] = cap.info["recognizer"] + "; read as observed attention"
    if cap.source == "observed":
        row.notes["observed"] = str(cap.info.get("note", ""))
    if cap.affinity is None:
        row.status, row.reason = "skipped", "no affinity captured"
        return row
    withhold = None
    if cap.self_check_error > SELF_CHECK_TOL:     # the capture does not reproduce the module
        withhold = (f"self-check failed: {cap.self_check}; the measures of the captured "
                    "affinity are not reported (the Jacobians are of the module itself)")
    failed = run_measures(cap, row, config,
                          registered() if measures is None else registered(measures), withhold)
    if failed:
        measured = not math.isnan(row.lambda_max) or row.response_class or not math.isnan(
            row.jacobian_full)
        row.status = "partial" if measured else "skipped"
        row.reason = "; ".join(failed)
    return row


def _unread_rows(caps: Captures) -> list[BlockReport]:
    """One ``skipped`` row per module that could not be read (see ``Captures.failures``)."""
    return [BlockReport(path=path, block="", source="unread", status="skipped", reason=why)
            for path, why in getattr(caps, "failures", {}).items()]


def _isolated(cap: Capture, run: Callable[[], BlockReport]) -> BlockReport:
    """One block's analysis; an exception in it is that block's ``skipped`` row."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - one block's failure must not stop the rest
        row = _row_base(cap)
        row.status, row.reason = "skipped", f"analysis failed: {type(exc).__name__}: {exc}"
        return row


def _stage_rows(model: nn.Module, caps: Captures, tol: float, k: int) -> list[BlockReport]:
    """One row per shared-affinity stage (``{path}.units.0`` captured): the whole stage's
    full and frozen Jacobians at the stage input."""
    rows = []
    for path, cap in caps.items():
        if not path.endswith(".units.0") or cap.input is None:
            continue
        spath = path[: -len(".units.0")]
        try:
            stage = model.get_submodule(spath)
        except AttributeError:
            continue
        if not hasattr(stage, "compute_affinity") or not hasattr(stage, "units"):
            continue
        row = BlockReport(path=spath, block=cap.spec.name if cap.spec else type(stage).__name__,
                          source="stage", affinity=type(cap.affinity).__name__,
                          normalization=cap.normalization, n_nodes=cap.n,
                          spatial_shape=tuple(cap.spatial_shape), n_samples=cap.n_samples,
                          order=cap.order if cap.order is not None else -1,
                          n_units=len(stage.units))
        try:
            fn, x = block_function(cap, 0)
            rep = stage_jacobians(stage, x, k, tol=tol, max_iter=60)
        except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:
            row.status, row.reason = "skipped", f"stage jacobian: {exc}"
        else:
            row.jacobian_full = rep.full.norm
            row.jacobian_frozen = rep.frozen.norm
            row.jacobian_full_top = tuple(float(v) for v in rep.full.values)
            row.jacobian_frozen_top = tuple(float(v) for v in rep.frozen.values)
            row.affinity_share = rep.affinity_share
            row.notes["jacobian"] = (f"the whole stage ({len(stage.units)} units sharing the "
                                     "affinity of the stage input), sample 0")
        rows.append(row)
    return rows


def _first_input(data: Any) -> Tensor | None:
    if isinstance(data, Tensor):
        return data[:1]
    try:
        batch = next(iter(data))
    except (TypeError, StopIteration):
        return None
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return x[:1] if isinstance(x, Tensor) else None


@V.validate_params(
    {"model": V.declared(capture, "model"), "data": [_Batches()],
     "config": [V.InstanceOf(AnalysisConfig, "an AnalysisConfig"), None],
     "progress": ["boolean"]},
    valid=lambda: {"model": nn.Linear(3, 3), "data": torch.ones(2, 3), "progress": False},
)
def analyze(
    model: nn.Module,
    data: Tensor | Iterable[Any],
    config: AnalysisConfig | None = None,
    *,
    labels: Tensor | None = None,
    measures: Sequence[str] | None = None,
    progress: bool = True,
    **options: Any,
) -> AnalysisTable:
    r"""Analyse every nonlocal block of ``model`` on ``data``: one :class:`BlockReport` each.

    Parameters
    ----------
    model : torch.nn.Module
        Any model; its nonlocal modules are found by :func:`analysis.capture.capture`.
    data : Tensor, dict or iterable
        One input batch or batches (``DataLoader``, list of ``(input, target)``, dicts of
        keyword inputs such as a Hugging Face ``BatchEncoding``: ``model(**batch)``); use a
        re-iterable object when the accuracy curve runs (it is read twice).
    config : AnalysisConfig, optional
        Every option of the analysis (:mod:`analysis.config`: capture, spectrum, stability,
        Jacobian, noise and accuracy sub-configurations); default ``AnalysisConfig()``.
    labels : Tensor, optional
        Targets of ``data`` when it is one input tensor (enables the accuracy curve).
    measures : sequence of str, optional
        Run only these registered measures (:mod:`analysis.measures`; default: all, in
        registration order).
    progress : bool
        tqdm bars.
    **options
        Flat overrides of ``config`` by the names of :data:`analysis.config.FLAT_NAMES`
        (``tol=1e-4`` sets ``config.stability.tol``, ``jacobian=False`` sets
        ``config.jacobian.enabled``); an unknown name is a ``TypeError`` listing the known
        ones.

    Returns
    -------
    AnalysisTable
        A list of :class:`BlockReport` with ``.to_frame()`` and ``.summary()``; empty with a
        ``reason`` for a model without nonlocal modules.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.blocks import make_block
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), make_block("snl", 8))
    >>> table = analyze(model, torch.randn(2, 3, 4, 4), progress=False)
    >>> row = table[0]
    >>> row.path, row.status, row.spectrum_method, row.response_class
    ('1', 'ok', 'structured', 'all-pass')
    >>> row.stability_radius                 # BN scale 0 at initialization: the identity
    1.0
    >>> from analysis.config import SpectrumConfig
    >>> cfg = AnalysisConfig(spectrum=SpectrumConfig(method="eigh"))
    >>> analyze(model, torch.randn(2, 3, 4, 4), cfg, jacobian=False,
    ...         progress=False)[0].spectrum_method
    'eigh'
    """
    if config is None:
        config = AnalysisConfig()
    if options:
        config = config.replaced(options, "analyze")
    if measures is not None:
        if isinstance(measures, str):
            raise TypeError("measures must be a sequence of measure names, not a str")
        try:
            registered(measures)
        except ValueError as exc:
            raise ValueError(f"measures: {exc}") from None
    with _blas_threads(config.blas_threads):
        return _analyze(model, data, config, labels, measures, progress)


def _blas_threads(n: int | None) -> Any:
    """Cap numpy's BLAS threads (threadpoolctl, when installed) while torch keeps its own:
    the many small eigen-problems otherwise oversubscribe the cores."""
    if n is None:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is an optional dependency
        return nullcontext()
    return threadpool_limits(limits=int(n), user_api="blas")


def _analyze(model: nn.Module, data: Any, config: AnalysisConfig, labels: Tensor | None,
             measures: Sequence[str] | None, progress: bool) -> AnalysisTable:
    cc, jc = config.capture, config.jacobian
    # one bar per call: the blocks, then stages/backbone/accuracy; sub-steps as its postfix
    bar = tqdm(total=None, desc="analyze", disable=not progress, leave=False, unit="step")
    bar.set_postfix_str("capture")
    caps = capture(model, data, cc.blocks, cc.max_samples, heads=cc.heads, device=None,
                   forward=cc.forward, model_kwargs=cc.model_kwargs, progress=False)
    bar.total = len(caps) + 3
    bar.refresh()
    if not caps:
        table = AnalysisTable(_unread_rows(caps), reason=caps.reason,
                              captures=caps if config.keep_captures else None)
    else:
        rows = []
        for cap in caps.values():
            bar.set_postfix_str(cap.path)
            rows.append(_isolated(cap, lambda cap=cap: _analyze_one(cap, config, measures)))
            bar.update()
        rows += _unread_rows(caps)
        bar.set_postfix_str("stages")
        if jc.enabled and jc.stages:
            rows += _stage_rows(model, caps, config.stability.tol, jc.k)
        kept = None
        if config.keep_captures:
            kept = Captures({p: c.to("cpu") for p, c in caps.items()},
                            n_samples=caps.n_samples)
        ref: list[dict[str, Any]] = []
        if jc.enabled and jc.backbone:
            first = next(iter(caps.values()))
            x0 = _first_input(data)
            if x0 is not None and first is not None:
                bar.update()
                bar.set_postfix_str("backbone")
                try:
                    ref = backbone_jacobians(model, x0, tol=config.stability.tol,
                                             progress=False)
                except (ValueError, TypeError, RuntimeError, NotImplementedError):
                    ref = []
        table = AnalysisTable(rows, captures=kept, backbone=ref)
        table.measure_headline = headline_columns(measures)[len(IDENTITY_COLUMNS):]
    if isinstance(data, Tensor) and labels is not None:
        if labels.shape[0] != data.shape[0]:
            raise ValueError(
                f"labels has {labels.shape[0]} entries but data {data.shape[0]} samples"
            )
        batches: Any = [(data[i:i + 64], labels[i:i + 64]) for i in range(0, len(data), 64)]
    elif isinstance(data, (Tensor, Mapping)) or cc.forward is not None or cc.model_kwargs:
        batches = None
    else:
        batches = data
    accuracy_levels = config.accuracy.levels
    if accuracy_levels is None:
        accuracy_levels = (0.0, 0.05, 0.1, 0.2, 0.4) if batches is not None else ()
    if accuracy_levels:
        if batches is None:
            raise ValueError(
                "accuracy_levels needs targets: pass labels= or (input, target) batches"
            )
        bar.n = max(bar.n, (bar.total or 3) - 1)
        bar.set_postfix_str("accuracy under noise")
        try:
            table.accuracy = accuracy_under_noise(model, batches, accuracy_levels,
                                                  max_batches=config.accuracy.batches,
                                                  progress=False)
        except (TypeError, ValueError, RuntimeError) as exc:
            table.accuracy = None
            note = f"accuracy under noise skipped: {exc}"
            table.reason = f"{table.reason}; {note}" if table.reason else note
    bar.close()
    return table
