r"""Oversmoothing by depth: rank collapse, high-frequency share and spectral gap per layer.

:func:`depth_profile` finds a model's attention layers with :func:`~analysis.capture.capture`
(graphfilters blocks, recognized attention, attention observed in the forward pass), puts them
in the order the forward pass calls them, and measures for each layer :math:`l`, on its token
input :math:`X_l \in \mathbb R^{N \times C}` (one per sample) and on what the captured map
outputs:

**Rank-collapse residual** (Dong, Cordonnier and Loukas, ICML 2021). With
:math:`\operatorname{res}(X) = X - \mathbf 1 x^T`, :math:`x` minimizing the norm,

.. math::

    r_F(X) = \frac{\|X - \mathbf 1 \bar x^T\|_F}{\|X\|_F}, \qquad
    \bar x = \tfrac1N X^T \mathbf 1 ,

the Frobenius norm, for which the token mean :math:`\bar x` *is* the minimizer (columns
``residual_in``, ``residual_out``). Dong et al. state their bounds in the composite norm
:math:`\|M\|_{1,\infty} = \sqrt{\|M\|_1 \|M\|_\infty}` (largest column and row absolute
sums); ``residual_l1inf_at_mean_*`` is :math:`\|X - \mathbf 1\bar x^T\|_{1,\infty} /
\|X\|_{1,\infty}`, the residual *at the token mean*, as the authors' released code computes
it. The mean does not minimize the composite norm, so this is an upper bound of the
minimized residual of the paper (the name says "at mean"); the minimum is not computed.

**High-frequency share** (AttnScale, Wang et al., ICLR 2022): the DC component of a token
signal is its token mean, the HC component the rest,

.. math::

    s(X) = \frac{\|\operatorname{HC}(X)\|_F^2}{\|X\|_F^2}, \qquad
    \operatorname{HC}(X) = X - \mathbf 1 \bar x^T ,

so :math:`s(X) = r_F(X)^2` exactly: the two columns of the token input carry the same
information, reported under both names because both literatures use them. ``hf_share_out``
is the share of the captured map's output (the attention module's output; for a transformer
layer's residual branch, of :math:`x + \operatorname{SA}(\operatorname{LN}(x))`: column
``map``), and ``hf_share_branch`` that of the branch alone (output minus input) where the
capture knows the map adds its input.

**Absolute spectral gap** of each head's affinity :math:`\hat A_h` (the map as applied):
:math:`\gamma_h = 1 - |\mu_2(\hat A_h)|`, :math:`\mu_2` the eigenvalue of second largest
modulus (the largest is 1 for a row-stochastic matrix). :math:`\hat A_h^k \to \mathbf 1
\pi^T` as :math:`(1 - \gamma_h)^k`: a large gap is a fast-mixing, strongly smoothing graph.
Defined only for square, nonnegative, row-stochastic affinities (row sums within
:data:`~analysis.metrics.ROW_STOCHASTIC_TOL`); elsewhere ``n/a`` with the reason. This is
not the ``spectral_gap`` of :func:`~analysis.metrics.affinity_metrics` (the gap
:math:`\operatorname{Re}\lambda_{(2)} - \operatorname{Re}\lambda_{(1)}` of the Laplacian).
An affinity applied twice in one call (GFSA's :math:`A(AV)`) is one graph: counted once.

Values are averaged over samples (residuals, shares; ``*_std`` the standard deviation over
samples) and over heads (gap: the mean of the per-head sample means, ``absolute_gap_std``
the standard deviation over heads, ``absolute_gap_heads`` the per-head values).

Examples
--------
>>> import torch
>>> from analysis import depth_profile
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> class Pure(torch.nn.Module):              # attention only: no skip, no MLP
...     def __init__(self):
...         super().__init__()
...         self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
...     def forward(self, x):
...         return self.attn(x, x, x, need_weights=False)[0]
>>> net = torch.nn.Sequential(Pure(), Pure(), Pure())
>>> profile = depth_profile(net, torch.randn(4, 10, 8))
>>> [row.path for row in profile]
['0.attn', '1.attn', '2.attn']
>>> res = [row.residual_in for row in profile] + [profile[-1].residual_out]
>>> all(b < a for a, b in zip(res, res[1:]))     # the residual shrinks with depth
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from graphfilters import _validate as V
from graphfilters.display import pandas, table_text

from .capture import Capture, _Batches, capture, run_batch
from .observe import AffinityWatcher, reading
from .spectra import ROW_STOCHASTIC_TOL, spectrum

__all__ = ["DepthRow", "DepthProfile", "depth_profile", "token_residual", "hf_share",
           "absolute_gap", "DEPTH_COLUMNS"]

_NAN = float("nan")
#: Relative tolerance under which two applied affinities of one call are the same graph.
SAME_AFFINITY_RTOL = 1e-6


# ------------------------------------------------------------------------------------------
# The measures on one token signal / one affinity
# ------------------------------------------------------------------------------------------


def _composite(M: Tensor) -> Tensor:
    r""":math:`\sqrt{\|M\|_1 \|M\|_\infty}` of ``(..., N, C)``: largest column and row sums."""
    a = M.abs()
    return torch.sqrt(a.sum(-2).amax(-1) * a.sum(-1).amax(-1))


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, _NAN))


#: The norms of :func:`token_residual`.
RESIDUAL_NORMS = ("fro", "l1inf")


@V.validate_params(
    {"X": [V.InstanceOf(Tensor, "a torch.Tensor (..., N, C)")],
     "norm": [V.StrOptions(RESIDUAL_NORMS)]},
    valid=lambda: {"X": torch.eye(3)},
)
def token_residual(X: Tensor, norm: str = "fro") -> Tensor:
    r"""Relative rank-collapse residual :math:`\|X - \mathbf 1 \bar x^T\| / \|X\|` of token
    signals, at the token mean :math:`\bar x`.

    Parameters
    ----------
    X : Tensor ``(..., N, C)``
        Token signals (``N`` tokens, ``C`` channels).
    norm : {"fro", "l1inf"}
        ``"fro"``: Frobenius, for which the mean is the minimizing :math:`x` (the exact
        residual of Dong et al.'s definition in that norm); ``"l1inf"``: the composite norm
        :math:`\sqrt{\|\cdot\|_1\|\cdot\|_\infty}` of Dong et al. at the mean (an upper bound
        of their minimized residual, what their released code computes).

    Returns
    -------
    Tensor ``(...)``
        In float64 (float32 where the device has no float64); NaN where :math:`X = 0`.

    Examples
    --------
    >>> X = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    >>> float(token_residual(X))                      # identical tokens: rank one
    0.0
    >>> round(float(token_residual(torch.eye(2))), 4)
    0.7071
    """
    X = _as_float(_tokens_arg(X, "X"))
    R = X - X.mean(-2, keepdim=True)
    if norm == "fro":
        return _ratio(torch.linalg.vector_norm(R, dim=(-2, -1)),
                      torch.linalg.vector_norm(X, dim=(-2, -1)))
    return _ratio(_composite(R), _composite(X))


def hf_share(X: Tensor) -> Tensor:
    r"""AttnScale's high-frequency share :math:`\|X - \mathbf 1\bar x^T\|_F^2 / \|X\|_F^2`
    of token signals ``(..., N, C)`` (DC = the token mean; equal to
    ``token_residual(X) ** 2``).

    Examples
    --------
    >>> round(float(hf_share(torch.eye(2))), 4)
    0.5
    """
    X = _as_float(_tokens_arg(X, "X"))
    R = X - X.mean(-2, keepdim=True)
    return _ratio((R * R).sum((-2, -1)), (X * X).sum((-2, -1)))


def absolute_gap(eigenvalues: Any) -> float:
    r""":math:`1 - |\mu_2|` of a row-stochastic matrix's eigenvalues (all, or the extremes
    including the two largest in modulus); NaN for fewer than two.

    Examples
    --------
    >>> absolute_gap(np.array([1.0, -0.5, 0.25]))
    0.5
    """
    mu = np.sort(np.abs(np.asarray(eigenvalues).ravel()))[::-1]
    return float(1.0 - mu[1]) if mu.size > 1 else _NAN


def _tokens_arg(X: Any, name: str) -> Tensor:
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (..., N, C), got {type(X).__name__}")
    if X.dim() < 2:
        raise ValueError(f"{name} must have shape (..., N, C), got {tuple(X.shape)}")
    return X


def _as_float(X: Tensor) -> Tensor:
    return X.to(torch.float32 if X.device.type == "mps" else torch.float64)


def _to_tokens(t: Any, n: int) -> tuple[Tensor | None, str]:
    """``(S, N, C)`` tokens of a capture's input or output (``(S, C, *spatial)`` with
    ``prod(spatial) = N``, or ``(S, N, C)``), or ``None`` and why not."""
    if not isinstance(t, Tensor):
        return None, f"not a tensor ({type(t).__name__})"
    if t.dim() == 3:
        if t.shape[2] == n:                    # (S, C, N): the capture's documented layout
            return t.transpose(1, 2), ""
        if t.shape[1] == n:
            return t, ""
    elif t.dim() >= 4 and math.prod(t.shape[2:]) == n:
        return t.reshape(t.shape[0], t.shape[1], n).transpose(1, 2), ""
    return None, (f"shape {tuple(t.shape)} is not one sequence of the affinity's N = {n} "
                  "tokens per sample (windowed or channel-position attention)")


# ------------------------------------------------------------------------------------------
# The result
# ------------------------------------------------------------------------------------------


@dataclass
class DepthRow:
    r"""One attention layer of :func:`depth_profile` (see the module docstring for the
    definitions).

    Attributes
    ----------
    depth : int
        Position in the forward pass (0 = the first attention layer called).
    path, source, module_type : str
        The capture's module path, source (``block``, ``attention``, ``observed``,
        ``adapter``) and module class.
    map : str
        What ``*_in`` and ``*_out`` are measured on (the module, or a transformer layer's
        residual branch).
    n_tokens, heads, n_samples : int
        Tokens ``N``, distinct affinities per sample (heads), samples.
    residual_in, residual_in_std, residual_out, residual_out_std : float
        Frobenius rank-collapse residual :math:`r_F` of the map's input and output.
    residual_l1inf_at_mean_in, residual_l1inf_at_mean_out : float
        Composite-norm residual at the token mean (an upper bound of the minimized one).
    hf_share_in, hf_share_out, hf_share_branch : float
        High-frequency share of the input (:math:`= r_F^2`), the output, and the residual
        branch (output minus input; NaN unless the capture's map adds its input).
    hf_share_out_std : float
    absolute_gap, absolute_gap_std : float
        :math:`1 - |\mu_2|`, mean over heads of the per-head sample means, and its standard
        deviation over heads.
    absolute_gap_heads : tuple of float
        Per head.
    status : str
        ``"ok"``, ``"partial"`` (some measure ``n/a``: ``reason``) or ``"skipped"``.
    reason : str
    notes : dict of str to str
        How each measure was obtained or why it is ``n/a``.
    """

    depth: int
    path: str
    source: str = ""
    module_type: str = ""
    map: str = ""
    n_tokens: int = 0
    heads: int = 0
    n_samples: int = 0
    residual_in: float = _NAN
    residual_in_std: float = _NAN
    residual_out: float = _NAN
    residual_out_std: float = _NAN
    residual_l1inf_at_mean_in: float = _NAN
    residual_l1inf_at_mean_out: float = _NAN
    hf_share_in: float = _NAN
    hf_share_out: float = _NAN
    hf_share_out_std: float = _NAN
    hf_share_branch: float = _NAN
    absolute_gap: float = _NAN
    absolute_gap_std: float = _NAN
    absolute_gap_heads: tuple[float, ...] = ()
    status: str = "ok"
    reason: str = ""
    notes: dict[str, str] = field(default_factory=dict)


#: Columns of :meth:`DepthProfile.to_frame` (every field of :class:`DepthRow` but ``notes``).
DEPTH_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(DepthRow) if f.name != "notes")
_SUMMARY = (("depth", "depth", "d"), ("path", "layer", "s"), ("heads", "heads", "d"),
            ("residual_in", "res_F in", ".3g"), ("residual_out", "res_F out", ".3g"),
            ("residual_l1inf_at_mean_in", "res_1,inf@mean in", ".3g"),
            ("hf_share_out", "HF share out", ".3g"), ("absolute_gap", "1-|mu2|", ".3g"),
            ("absolute_gap_std", "± (heads)", ".2g"), ("status", "status", "s"))


def _cell(v: Any, spec: str) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else format(v, spec)
    return format(v, spec) if spec == "d" else str(v)


class DepthProfile(list):
    """The rows of :func:`depth_profile` (a list of :class:`DepthRow`, in depth order).

    Attributes
    ----------
    reason : str
        Why it is empty (empty string otherwise).
    norms : str
        Which norms the residual columns use.
    """

    def __init__(self, rows: Iterable[DepthRow] = (), reason: str = "") -> None:
        super().__init__(rows)
        self.reason = reason
        self.norms = ("residual_*: Frobenius, at the token mean (its minimizer); "
                      "residual_l1inf_at_mean_*: Dong et al.'s composite l1/l_inf norm at the "
                      "token mean (an upper bound of their minimized residual)")

    def values(self, column: str) -> np.ndarray:
        """One column as a float array, in depth order.

        Examples
        --------
        >>> DepthProfile([DepthRow(0, "a", residual_in=0.5)]).values("residual_in")
        array([0.5])
        """
        if column not in DEPTH_COLUMNS or column in ("path", "source", "module_type", "map",
                                                     "status", "reason",
                                                     "absolute_gap_heads"):
            raise ValueError(f"column must be a numeric column of DEPTH_COLUMNS, got "
                             f"{column!r}")
        return np.array([float(getattr(r, column)) for r in self], dtype=float)

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per row (notes included; tuples become lists)."""
        out = []
        for r in self:
            d = asdict(r)
            d["absolute_gap_heads"] = list(d["absolute_gap_heads"])
            out.append(d)
        return out

    def to_frame(self, columns: str | Sequence[str] = "all"):  # -> pandas.DataFrame
        """A pandas DataFrame, one row per layer.

        Parameters
        ----------
        columns : {"all", "summary"} or list of str
            ``"all"``: :data:`DEPTH_COLUMNS`; ``"summary"``: the columns of :meth:`summary`.

        Raises
        ------
        ImportError
            If pandas is not installed (``pip install pandas``).
        """
        pd = pandas()
        if isinstance(columns, str):
            if columns == "all":
                cols = list(DEPTH_COLUMNS)
            elif columns == "summary":
                cols = [k for k, _, _ in _SUMMARY]
            else:
                raise ValueError(f"columns must be 'all', 'summary' or a list of column "
                                 f"names, got {columns!r}")
        else:
            cols = list(columns)
            bad = [c for c in cols if c not in DEPTH_COLUMNS]
            if bad:
                raise ValueError(f"unknown column(s) {bad}; known: {list(DEPTH_COLUMNS)}")
        frame = pd.DataFrame([{k: getattr(r, k) for k in cols} for r in self], columns=cols)
        frame.attrs["reason"] = self.reason
        frame.attrs["norms"] = self.norms
        return frame

    def summary(self) -> str:
        """A fixed-width text table of the headline columns, then the reasons of rows that
        are not ``ok``."""
        if not self:
            return f"no attention layers profiled: {self.reason}"
        heads = [h for _, h, _ in _SUMMARY]
        rows = [[_cell(getattr(r, k), f) for k, _, f in _SUMMARY] for r in self]
        lines = [f"depth profile of {len(self)} attention layer(s)",
                 table_text(heads, rows, left=2)]
        lines += [f"{r.path}: {r.status}: {r.reason}" for r in self if r.reason]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """:func:`analysis.plots.plot_depth_profile` of this profile; returns ``(fig, ax)``."""
        from .plots import plot_depth_profile

        return plot_depth_profile(self, ax=ax, **kwargs)


# ------------------------------------------------------------------------------------------
# The entry point
# ------------------------------------------------------------------------------------------


def _example_encoder() -> nn.Module:
    with torch.random.fork_rng(devices=[]):          # the caller's random state is kept
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(4, 1, 8, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)


@V.validate_params(
    {"model": V.declared(capture, "model"), "data": [_Batches()],
     "max_samples": V.declared(capture, "max_samples"),
     "forward": V.declared(capture, "forward"),
     "model_kwargs": V.declared(capture, "model_kwargs"), "progress": ["boolean"]},
    valid=lambda: {"model": _example_encoder(), "data": torch.ones(1, 3, 4)},
)
def depth_profile(
    model: nn.Module,
    data: Tensor | Mapping[str, Any] | Iterable[Any],
    *,
    max_samples: int = 16,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> DepthProfile:
    r"""Per attention layer, in depth order: rank-collapse residual, high-frequency share
    and absolute spectral gap (see :mod:`analysis.depth` for the definitions).

    .. math::

        r_F(X_l) = \frac{\|X_l - \mathbf 1\bar x_l^T\|_F}{\|X_l\|_F}, \qquad
        s(Y) = \frac{\|Y - \mathbf 1\bar y^T\|_F^2}{\|Y\|_F^2}, \qquad
        \gamma_h = 1 - |\mu_2(\hat A_h)| .

    Parameters
    ----------
    model : torch.nn.Module
        Read in eval mode under :func:`torch.no_grad` (modes restored).
    data : Tensor, dict or iterable
        As for :func:`~analysis.capture.capture`: one batch, or an iterable of batches.
    max_samples : int
        Samples measured.
    forward : callable, optional
        ``forward(model, batch)`` for models that do not take ``model(input)``.
    model_kwargs : dict, optional
        Keyword inputs added to every call.
    progress : bool
        Progress bar of the capture.

    Returns
    -------
    DepthProfile
        One :class:`DepthRow` per captured attention layer, ordered by the first call of
        its module in the forward pass; empty, with ``reason``, when nothing was captured.

    Raises
    ------
    TypeError
        If ``model`` is not a module or ``data`` is ``None``.
    ValueError
        For a bad ``max_samples`` (from :func:`~analysis.capture.capture`).

    Shapes
    ------
    - token signals: the capture's input ``(S, C, *spatial)`` (or ``(S, N, C)`` for an
      observed module that takes tokens) read as ``S`` sequences of ``N`` tokens;
    - affinities: ``(S, H, N, N)``, one per head (``capture(..., heads="keep")``).

    Examples
    --------
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    >>> enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    >>> p = depth_profile(enc, torch.randn(3, 7, 16))
    >>> [(r.path, r.heads, r.status) for r in p]
    [('layers.0.self_attn', 2, 'ok'), ('layers.1.self_attn', 2, 'ok')]
    >>> bool(0 < p[0].absolute_gap <= 1)
    True
    """
    caps = capture(model, data, max_samples=max_samples, heads="keep", device=None,
                   forward=forward, model_kwargs=model_kwargs, progress=progress)
    if not caps:
        reason = caps.reason
        if caps.failures:
            reason += "; " + "; ".join(f"{p}: {r}" for p, r in caps.failures.items())
        return DepthProfile(reason=reason)
    ordered = _forward_order(model, data, list(caps.values()), forward, model_kwargs)
    rows = []
    with reading(model, AffinityWatcher()), torch.no_grad():
        for depth, cap in enumerate(ordered):
            rows.append(_row(depth, cap))
    return DepthProfile(rows)


def _first_batch(data: Any) -> Any:
    if isinstance(data, (Tensor, Mapping)):
        return data
    return next(iter(data))


def _forward_order(model: nn.Module, data: Any, caps: list[Capture],
                   forward: Callable[[nn.Module, Any], Any] | None,
                   model_kwargs: Mapping[str, Any] | None) -> list[Capture]:
    """The captures sorted by the first call of their module in one forward pass of the
    first batch (captures whose module did not run there keep their order, last)."""
    first: dict[int, int] = {}
    handles = []

    def hook(module: nn.Module, args: tuple) -> None:
        first.setdefault(id(module), len(first))

    for m in {id(c.module): c.module for c in caps if c.module is not None}.values():
        handles.append(m.register_forward_pre_hook(hook))
    try:
        with reading(model, AffinityWatcher()), torch.no_grad():
            run_batch(model, _first_batch(data), forward, model_kwargs)
    finally:
        for h in handles:
            h.remove()
    big = len(first) + len(caps)
    keyed = [(first.get(id(c.module), big), i, c) for i, c in enumerate(caps)]
    return [c for _, _, c in sorted(keyed, key=lambda t: (t[0], t[1]))]


def _token_measures(X: Tensor) -> tuple[float, float, float, float, float]:
    """Frobenius residual (mean, std), l1/l_inf residual at the mean (mean), high-frequency
    share (mean, std) of one token signal ``(S, N, C)`` over its samples."""
    Xf = _as_float(X)
    res, res_std = _mean_std(token_residual(Xf))
    hf, hf_std = _mean_std(hf_share(Xf))
    return res, res_std, _mean_std(token_residual(Xf, "l1inf"))[0], hf, hf_std


def _mean_std(v: Tensor) -> tuple[float, float]:
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return _NAN, _NAN
    return float(v.mean()), float(v.std(unbiased=False)) if v.numel() > 1 else 0.0


def _run_map(cap: Capture, x: Tensor) -> Any:
    if cap.call is not None:
        return cap.call(x, **cap.call_kwargs)
    if cap.module is None:
        raise ValueError("the capture has neither a call nor a module to re-run")
    out = cap.module(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def _row(depth: int, cap: Capture) -> DepthRow:
    row = DepthRow(depth, cap.path, cap.source, cap.module_type,
                   map=str(cap.info.get("layer", "the module")), n_samples=cap.n_samples)
    notes = row.notes
    missing: list[str] = []
    aff = cap.affinity
    n = aff.n if aff is not None else 0
    row.n_tokens = n
    # -- token signals ---------------------------------------------------------------------
    X, why = _to_tokens(cap.input, n) if cap.input is not None else (None, "no input kept")
    if X is None:
        missing.append(f"residuals and shares: the input {why}")
    else:
        row.residual_in, row.residual_in_std, row.residual_l1inf_at_mean_in, \
            row.hf_share_in, _ = _token_measures(X)
        notes["input"] = (f"the captured map's input, {tuple(cap.input.shape)} read as "
                          f"{X.shape[0]} x {X.shape[1]} tokens x {X.shape[2]} channels")
        try:
            out = _run_map(cap, cap.input)
        except Exception as exc:  # noqa: BLE001 - one layer's failure is its own row
            out, why_out = None, f"re-running the map failed: {type(exc).__name__}: {exc}"
        else:
            why_out = ""
        Y, why2 = _to_tokens(out, n) if out is not None else (None, why_out)
        if Y is None:
            missing.append(f"output measures: {why2}")
        else:
            row.residual_out, row.residual_out_std, row.residual_l1inf_at_mean_out, \
                row.hf_share_out, row.hf_share_out_std = _token_measures(Y)
            notes["output"] = "the captured map re-run on its input (eval mode)"
            if cap.residual and Y.shape == X.shape:
                row.hf_share_branch = _mean_std(hf_share(_as_float(Y) - _as_float(X)))[0]
                notes["hf_share_branch"] = "output minus input: the residual branch alone"
            else:
                notes["hf_share_branch"] = ("n/a: the capture does not identify a skip "
                                            "connection around this map")
    # -- spectral gap ----------------------------------------------------------------------
    gaps, heads, why_gap = _gaps(cap)
    row.heads = heads
    if gaps is None:
        missing.append(f"absolute_gap: {why_gap}")
    else:
        per_head = np.nanmean(gaps, axis=0) if np.isfinite(gaps).any() else gaps[0]
        row.absolute_gap_heads = tuple(float(g) for g in per_head)
        fin = per_head[np.isfinite(per_head)]
        if fin.size:
            row.absolute_gap = float(fin.mean())
            row.absolute_gap_std = float(fin.std()) if fin.size > 1 else 0.0
        notes["absolute_gap"] = why_gap
        if fin.size < per_head.size:
            missing.append(f"absolute_gap: {why_gap}")
    if cap.repeated_calls:
        notes["repeated_calls"] = (f"the module ran {cap.repeated_calls} times per "
                                   "forward (shared weights): its first call is measured")
    if missing:
        measured = any(math.isfinite(v) for v in (row.residual_in, row.absolute_gap))
        row.status = "partial" if measured else "skipped"
        row.reason = "; ".join(missing)
    return row


def _distinct_heads(cap: Capture) -> tuple[list[int], str]:
    """Head indices of distinct affinities: an observed call that applied one affinity
    several times (GFSA's ``A(AV)``) stacks it once per application."""
    batch = cap.affinity.batch_shape
    total = batch[1] if len(batch) >= 2 else 1
    apps = cap.applications
    if apps <= 1 or total % apps or len(batch) < 2:
        return list(range(total)), ""
    per = total // apps
    A = torch.as_tensor(cap.affinity.dense())
    keep = list(range(per))
    dropped = 0
    for g in range(1, apps):
        block = A[:, g * per:(g + 1) * per]
        if not any(torch.allclose(block, A[:, h * per:(h + 1) * per],
                                  rtol=SAME_AFFINITY_RTOL, atol=SAME_AFFINITY_RTOL
                                  * float(A.abs().max())) for h in range(g)):
            keep += list(range(g * per, (g + 1) * per))
        else:
            dropped += 1
    note = (f"{apps} applications in one call, {dropped} of them the same affinity again "
            "(applied to its own output, as GFSA's A(AV)): counted once") if dropped else ""
    return keep, note


def _gaps(cap: Capture) -> tuple[np.ndarray | None, int, str]:
    """Per (sample, head) absolute gaps ``(S, H)``, the number of heads, and how (or why
    not)."""
    aff = cap.affinity
    if aff is None:
        return None, 0, "no affinity captured"
    if cap.layout == "channel_position":
        return None, 0, ("the nodes are (channel, position) pairs (CGNL), not tokens: no "
                         "graph over the tokens")
    if aff.n != aff.n_cols:
        return None, 0, (f"the affinity is {aff.n} x {aff.n_cols} (cross-attention or "
                         "sub-sampled keys): not a graph, no eigenvalues")
    heads, how_heads = _distinct_heads(cap)
    batch = aff.batch_shape
    S = batch[0] if batch else 1
    total = batch[1] if len(batch) >= 2 else 1
    if len(batch) > 2:
        return None, len(heads), f"batch shape {batch}: more than (samples, heads)"
    if not aff.nonnegative():
        return None, len(heads), ("the affinity has negative entries: not a Markov matrix, "
                                  "1 - |mu_2| has no mixing meaning")
    op = cap.operator()
    if aff.is_torch:
        ones: Any = torch.ones(*batch, aff.n_cols, 1, dtype=aff.dtype, device=aff.device)
    else:
        ones = np.ones((*batch, aff.n_cols, 1))
    dev = np.abs(np.asarray(_np(op(ones)))[..., 0] - 1.0).max(-1).reshape(S, total)
    spec = spectrum(cap, "normalized", progress=False)
    ev = spec.eigenvalues
    gaps = np.full((S, len(heads)), _NAN)
    bad = 0
    for s in range(S):
        for j, h in enumerate(heads):
            if dev[s, h] > ROW_STOCHASTIC_TOL:
                bad += 1
                continue
            gaps[s, j] = absolute_gap(ev[s * total + h])
    how = (f"1 - |mu_2| of each head's A_hat ({cap.normalization} normalization), "
           f"eigenvalues by {spec.method}")
    if not spec.complete:
        how += " (the largest-modulus extremes)"
    if spec.n_uncertified:
        how += f"; {spec.n_uncertified} eigenvalue(s) not certified"
    if how_heads:
        how += "; " + how_heads
    if bad:
        how += (f"; n/a for {bad} (sample, head) pair(s): not row-stochastic "
                f"(max |A_hat 1 - 1| = {dev.max():.2g} > {ROW_STOCHASTIC_TOL:g})")
    return gaps, len(heads), how


def _np(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)
