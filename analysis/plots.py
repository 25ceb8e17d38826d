r"""Figures of the analysis: spectra, responses, attention maps, robustness curves.

Every function returns ``(fig, ax)`` (``(fig, axes)`` for several panels) and accepts
``ax=`` to draw into an existing Axes. Figures are built with
:class:`matplotlib.figure.Figure` directly (no pyplot state, no ``plt.show()``), so they work
with any backend, headless included; save them with ``fig.savefig(path)``.

In Jupyter (IPython running) a figure displays once, as a PNG, both when ``fig`` is the cell's
value and when a plot call is the cell's last expression: the returned pair is a
:class:`FigureAxes`, a tuple that unpacks as ``(fig, ax)`` and displays its figure. No
``%matplotlib`` magic is needed; importing this module registers a PNG formatter for
:class:`~matplotlib.figure.Figure` with the running IPython (unless one is registered already,
e.g. by ``%matplotlib inline``). Outside IPython nothing is registered and no pyplot state is
created.

Examples
--------
>>> import numpy as np
>>> from analysis.plots import plot_spectrum
>>> fig, ax = plot_spectrum(np.array([0.1, 0.5, 1.0, 1.9]))
>>> ax.get_xlabel()
'eigenvalue'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from graphfilters import _validate as V

from .complex_share import complex_share, share_center

__all__ = [
    "FigureAxes",
    "figure_png",
    "plot_spectrum",
    "plot_response",
    "plot_affinity_rows",
    "plot_growth",
    "plot_accuracy",
    "plot_energy",
    "plot_history",
    "plain_log_ticks",
    "plot_filter_families",
    "plot_block_responses",
    "plot_depth_profile",
    "DEPTH_QUANTITIES",
]


def figure_png(fig: Figure, dpi: float = 100) -> bytes:
    """The figure as PNG bytes, cropped to its artists (what a notebook displays).

    Examples
    --------
    >>> fig, ax = plot_growth([1.1, 1.2])
    >>> figure_png(fig)[:4]
    b'\\x89PNG'
    """
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


class FigureAxes(tuple):
    """``(fig, ax)`` as returned by every plot function: a plain tuple that, as a notebook
    cell's value, displays its figure (once, as PNG) instead of ``(<Figure>, <Axes>)``.

    Examples
    --------
    >>> fig, ax = plot_growth([1.1, 1.2])          # unpacks as before
    >>> out = plot_growth([1.1, 1.2])
    >>> out.fig is out[0], repr(out)
    (True, '(fig, ax): Figure 5.0x3.6 in, 1 Axes')
    """

    __slots__ = ()

    def __new__(cls, fig: Figure, ax: Any) -> FigureAxes:
        return super().__new__(cls, (fig, ax))

    @property
    def fig(self) -> Figure:
        return self[0]

    def __repr__(self) -> str:
        w, h = self[0].get_size_inches()
        return f"(fig, ax): Figure {w:.1f}x{h:.1f} in, {len(self[0].axes)} Axes"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_png_(self) -> bytes:
        return figure_png(self[0])


def _register_ipython_formatter() -> bool:
    """Register :func:`figure_png` as IPython's ``image/png`` formatter for Figure, if IPython
    is running and has none; returns whether a formatter is now registered."""
    import sys

    if "IPython" not in sys.modules:
        return False
    ip = sys.modules["IPython"].get_ipython()
    if ip is None or not hasattr(ip, "display_formatter"):
        return False
    png = ip.display_formatter.formatters["image/png"]
    try:
        png.lookup_by_type(Figure)
    except KeyError:
        png.for_type(Figure, figure_png)
    return True


_register_ipython_formatter()


#: ``ax=`` of a single-panel plot function: the Axes to draw into, or None (a new figure).
_AX = [V.InstanceOf(Axes, "a matplotlib Axes"), None]
#: A title or a legend label (None: the default).
_TEXT = [V.InstanceOf(str, "a str"), None]
#: ``bins=`` of a histogram: a count, one of numpy's rules, or the bin edges.
_BINS = [V.POS_INT, V.StrOptions({"auto", "fd", "doane", "scott", "stone", "rice", "sturges",
                                  "sqrt"}), V.ArrayLike(ndim=1)]


def _fig_ax(ax: Axes | None, figsize: tuple[float, float] = (5.0, 3.6)) -> tuple[Figure, Axes]:
    """A new figure and its Axes, or ``ax`` and its figure (every caller declares ``ax`` as
    :data:`_AX`)."""
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.add_subplot()
    return ax.figure, ax


@V.validate_params(
    {"ax": [V.InstanceOf(Axes, "a matplotlib Axes")], "axis": [V.StrOptions(("x", "y"))]},
    valid=lambda: {"ax": Figure().add_subplot(), "axis": "x"},
)
def plain_log_ticks(ax: Axes, axis: str = "y") -> Axes:
    """Label a log axis with plain numbers (``1.4``, ``20``, ``0.05``), not ``1.4×10⁰``.

    Matplotlib labels the minor ticks of a log axis that spans less than a decade in
    scientific notation; this labels them (and the decades) with ``{:g}``.

    Examples
    --------
    >>> fig, ax = plot_growth([1.1, 1.3, 1.6])
    >>> fig.draw_without_rendering()
    >>> [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()][:3]
    ['0.9', '1.1', '1.2']
    """
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:g}"

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(PlainLogFormatter())
    target.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    return ax


def _finite(values: Any, name: str) -> np.ndarray:
    """``values`` as an array, refusing empty or all-NaN data by the caller's argument name."""
    arr = np.asarray(values)
    if arr.size == 0 or not np.isfinite(arr).any():
        raise ValueError(f"{name} has no finite values to plot "
                         f"({'empty' if arr.size == 0 else 'all NaN or inf'})")
    return arr


def _values(spec: Any) -> tuple[np.ndarray, str, str]:
    """Eigenvalues (flattened), operator and kind from a Spectrum or an array."""
    operator, kind = "", ""
    if hasattr(spec, "eigenvalues") and hasattr(spec, "operator"):
        operator, kind = spec.operator, spec.kind
        ev = spec.all()
    elif isinstance(spec, (list, tuple)) and spec and hasattr(spec[0], "__len__"):
        ev = np.concatenate([np.asarray(e).ravel() for e in spec])
    else:
        ev = np.asarray(spec).ravel()
    if hasattr(ev, "detach"):
        ev = ev.detach().cpu().numpy()
    return np.asarray(ev), operator, kind


@V.validate_params(
    {"ax": _AX, "bins": _BINS, "imag_tol": [V.NONNEG_REAL], "title": _TEXT,
     "operator": [V.StrOptions(("normalized", "laplacian")), None], "log": ["boolean"]},
    valid=lambda: {"spectrum": np.array([0.1, 0.5, 1.0]), "bins": 3},
)
def plot_spectrum(
    spectrum: Any,
    ax: Axes | None = None,
    *,
    bins: int = 50,
    imag_tol: float = 1e-9,
    title: str | None = None,
    operator: str | None = None,
    log: bool = False,
    **kwargs: Any,
) -> tuple[Figure, Axes]:
    r"""Histogram of a real spectrum, or the complex plane with the disk it lies in.

    Parameters
    ----------
    spectrum : Spectrum, array or list of arrays
        Eigenvalues (all samples are pooled).
    ax : Axes, optional
    bins : int
        Histogram bins (real spectra).
    imag_tol : float
        Relative imaginary part below which the spectrum counts as real.
    operator : {"normalized", "laplacian"}, optional
        What the eigenvalues are of, for an array (a Spectrum says it itself): it places the
        circle of a complex spectrum.
    log : bool
        Logarithmic count axis for a real spectrum (low-rank operators: one tall bar of
        trivial eigenvalues). A complex spectrum keeps linear axes (a log imaginary axis has
        no meaning for values of both signs), so ``log`` does nothing there.
    **kwargs
        Passed to ``ax.hist`` or ``ax.scatter``.

    Notes
    -----
    For a normalized operator :math:`\hat A` the circle is :math:`|\mu| = 1` (every
    row-stochastic matrix's spectrum lies inside it); for its Laplacian
    :math:`\lambda = 1 - \mu` it is :math:`|\lambda - 1| = 1`. An array of unknown origin
    gets no circle. Axes are equal, so the circle is a circle. The legend gives the share of
    complex eigenvalues by :func:`analysis.complex_share.complex_share` (one rule for
    :math:`\hat A` and :math:`I - \hat A`).

    Examples
    --------
    >>> import numpy as np
    >>> fig, ax = plot_spectrum(np.array([0.5 + 0.2j, 0.5 - 0.2j, 1.0]))
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('Re', 'Im')
    """
    ev, spec_operator, kind = _values(spectrum)
    operator = spec_operator or operator or ""
    ev = _finite(ev, "spectrum")
    fig, ax = _fig_ax(ax)
    ev = ev[np.isfinite(ev)]
    scale = max(1.0, float(np.abs(ev).max(initial=0.0)))
    is_complex = np.iscomplexobj(ev) and np.abs(ev.imag).max(initial=0.0) > imag_tol * scale
    label = f"{operator} ({kind})" if spec_operator else (operator or "eigenvalues")
    if is_complex:
        if operator in ("laplacian", "normalized"):
            center = 1.0 if operator == "laplacian" else 0.0
            circle = r"$|\lambda - 1| = 1$" if operator == "laplacian" else r"$|\mu| = 1$"
            t = np.linspace(0, 2 * np.pi, 361)
            ax.plot(center + np.cos(t), np.sin(t), "--", color="0.6", lw=1, label=circle)
        ax.scatter(ev.real, ev.imag, s=kwargs.pop("s", 8), alpha=kwargs.pop("alpha", 0.6),
                   label=label, **kwargs)
        ax.axhline(0, color="0.8", lw=0.5)
        # a square window around the data and the circle, with room for the legend on top:
        # equal aspect in a square box (no datalim stretching, no gaps beside the panel)
        c0 = 1.0 if operator == "laplacian" else 0.0
        lo = min(float(ev.real.min()), c0 - 1) if operator else float(ev.real.min())
        hi = max(float(ev.real.max()), c0 + 1) if operator else float(ev.real.max())
        half = 0.55 * max(hi - lo, 2 * float(np.abs(ev.imag).max()), 1e-12)
        mid = (lo + hi) / 2
        ax.set_xlim(mid - half, mid + half)
        ax.set_ylim(-half, half * 1.45)
        ax.set_box_aspect(2.45 / 2)
        ax.set_xlabel("Re")
        ax.set_ylabel("Im")
        cs = complex_share(ev, center=share_center(operator, kind))
        ax.legend(loc="upper center", fontsize="x-small", ncols=2, borderaxespad=0.3,
                  title=f"{cs.share:.0%} complex ({cs.n_counted} counted)",
                  title_fontsize="x-small", handletextpad=0.3, columnspacing=1.0)
    else:
        ax.hist(np.real(ev), bins=bins, **kwargs)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("count")
        if log:
            ax.set_yscale("log")
            plain_log_ticks(ax, "y")
    ax.set_title(title if title is not None else f"spectrum of the {label}")
    n_bad = getattr(spectrum, "n_uncertified", 0)
    if n_bad:   # matrix-free values that missed their tolerance are shown, and said to be
        ax.set_title(f"{ax.get_title()}\n{n_bad} value(s) NOT certified "
                     f"(residual > tol = {spectrum.tol:g})", fontsize="small")
    return FigureAxes(fig, ax)


@V.validate_params(
    {"ax": _AX, "all_singular_values": ["boolean"], "title": _TEXT},
    valid=lambda: {"response": (np.linspace(0.0, 2.0, 3), np.ones(3))},
)
def plot_response(
    response: Any,
    ax: Axes | None = None,
    *,
    eigenvalues: Any = None,
    all_singular_values: bool = True,
    title: str | None = None,
) -> tuple[Figure, Axes]:
    r"""Frequency response :math:`\sigma_i(H(\lambda))` with ticks at the captured eigenvalues.

    Parameters
    ----------
    response : BlockResponse or (lam, gains)
        ``gains`` is ``(G,)`` or ``(G, r)`` (singular values, descending; for an attention
        filter's per-head response, ``form == "heads"``, the head mean then the heads).
    eigenvalues : array, optional
        Laplacian eigenvalues to mark (default: the response's captured ones, real parts).
    all_singular_values : bool
        Draw every singular value (thin) besides the largest (thick).

    Examples
    --------
    >>> import numpy as np
    >>> lam = np.linspace(0, 2, 50)
    >>> fig, ax = plot_response((lam, np.abs(1 - lam)), eigenvalues=[0.0, 0.3, 1.2])
    >>> len(ax.lines) >= 2
    True
    """
    label, form = None, "filter"
    if hasattr(response, "lam") and hasattr(response, "gains"):
        lam, gains = response.lam, response.gains
        label, form = response.label, response.form
        if eigenvalues is None and response.eigenvalues:
            eigenvalues = np.concatenate([np.real(e) for e in response.eigenvalues])
    else:
        lam, gains = response
    lam = np.asarray(lam, dtype=float)
    gains = np.asarray(gains, dtype=float)
    if gains.ndim == 1:
        gains = gains[:, None]
    if gains.shape[0] != lam.shape[0]:
        raise ValueError(f"gains has {gains.shape[0]} rows but lam {lam.shape[0]} points")
    _finite(lam, "response (its lam)")
    _finite(gains, "response (its gains)")
    fig, ax = _fig_ax(ax)
    if all_singular_values and gains.shape[1] > 1:
        ax.plot(lam, gains[:, 1:], color="C0", lw=0.6, alpha=0.35)
    ax.plot(lam, gains[:, 0], color="C0", lw=2,
            label=r"head mean $|h_h(\lambda)|$ (thin: heads)" if form == "heads"
            else r"$\sigma_1(H(\lambda))$")
    if eigenvalues is not None:
        ev = np.real(np.asarray(eigenvalues)).ravel()
        ev = ev[np.isfinite(ev)]
        ax.plot(ev, np.zeros_like(ev), "|", color="C3", ms=10, alpha=0.5,
                transform=ax.get_xaxis_transform(), label="captured eigenvalues")
    ax.set_xlabel(r"Laplacian eigenvalue $\lambda$")
    ax.set_ylabel("gain |h|" if form == "heads" else "gain (singular values)")
    ax.set_xlim(lam.min(), lam.max())
    ax.set_ylim(bottom=0, top=1.25 * float(np.nanmax(gains, initial=0.0)) or 1.0)
    ax.legend(fontsize="x-small", loc="upper center", ncols=2, borderaxespad=0.3)
    ax.set_title(title if title is not None else
                 ("frequency response" + (f" ({label})" if label else "")))
    return FigureAxes(fig, ax)


def _image_hw(image: Any) -> np.ndarray:
    img = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    img = np.asarray(img, dtype=float)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (3, H, W), got {img.shape}")
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _example_capture() -> Any:
    """A stand-in for a :class:`~analysis.capture.Capture` of 4 nodes on a 2x2 grid (what
    :func:`plot_affinity_rows` reads of one), for its declaration's valid call."""
    return SimpleNamespace(spatial_shape=(2, 2), path="toy",
                           affinity_row=lambda query, index=0: np.full((2, 2), 0.25))


@V.validate_params(
    {"index": [V.NONNEG_INT], "alpha": [V.Interval(V.Real, 0, 1, closed="both")],
     "cmap": [V.InstanceOf(str, "a colormap name"),
              V.InstanceOf(Colormap, "a matplotlib Colormap")],
     "colorbar": ["boolean"], "title": _TEXT},
    valid=lambda: {"capture": _example_capture(), "queries": [0], "colorbar": False},
)
def plot_affinity_rows(
    capture: Any,
    queries: Sequence[Any],
    image: Any = None,
    *,
    index: int = 0,
    ax: Axes | Sequence[Axes] | None = None,
    alpha: float = 0.6,
    cmap: str = "viridis",
    colorbar: bool = True,
    title: str | None = None,
) -> tuple[Figure, Any]:
    r"""Rows of :math:`\hat A` for query positions, as heat maps over the input image
    (the ICCV paper's Figure 2 style).

    Parameters
    ----------
    capture : Capture
        From :func:`analysis.capture.capture` (2-D ``spatial_shape``; 1-D draws curves).
    queries : sequence
        Query positions ``(row, col)`` on the block's grid, or flat node indices.
    image : array or tensor, optional
        The input image, ``(H, W)``, ``(H, W, 3)`` or ``(3, H, W)``, of any resolution
        (the heat map is stretched over it).
    index : int
        Sample of the capture.
    ax : Axes or sequence of Axes, optional
        One Axes per query (a single Axes for a single query).
    cmap : str
        A perceptually uniform colormap (default ``"viridis"``).
    colorbar : bool
        One colorbar for all panels: every panel is drawn on one shared scale
        :math:`[0, \max]` over the rows shown, so panels compare.
    title : str, optional
        Prefix of the panel titles (default: the capture's module path).

    Notes
    -----
    A query that is an isolated node (its row of :math:`\hat A` is zero, e.g. a ReLU kernel
    whose embedding vanishes there: zero degree, and the normalization gives 0, never NaN)
    has nothing to draw: its panel says so instead of staying blank.

    Returns
    -------
    (fig, axes) with ``axes`` a list (one per query).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import SoftmaxAffinity
    >>> from analysis.capture import Capture
    >>> q = torch.randn(1, 12, 2)
    >>> cap = Capture("b", "block", "toy", SoftmaxAffinity(q, q), "rw", spatial_shape=(3, 4),
    ...               n_samples=1)
    >>> fig, axes = plot_affinity_rows(cap, [(0, 0), (2, 3)])
    >>> len(axes)
    2
    """
    queries = list(queries)
    if not queries:
        raise ValueError("give at least one query position")
    if ax is None:
        fig = Figure(figsize=(3.0 * len(queries), 3.2), layout="constrained")
        axes = [fig.add_subplot(1, len(queries), i + 1) for i in range(len(queries))]
    else:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if len(axes) != len(queries):
            raise ValueError(f"got {len(axes)} Axes for {len(queries)} queries")
        if not all(isinstance(a, Axes) for a in axes):
            raise TypeError("ax must be a matplotlib Axes or a sequence of them")
        fig = axes[0].figure
    shape = tuple(capture.spatial_shape)
    img = _image_hw(image) if image is not None else None
    rows = [np.asarray(capture.affinity_row(q, index), dtype=float) for q in queries]
    finite = [r[np.isfinite(r)] for r in rows]
    vmax = max((float(f.max()) for f in finite if f.size), default=0.0) or 1.0
    name = title if title is not None else getattr(capture, "path", "")
    mappable = None
    for a, q, row in zip(axes, queries, rows):
        flat = int(q) if np.isscalar(q) else int(np.ravel_multi_index(tuple(q), shape))
        pos = np.unravel_index(flat, shape)
        if not np.any(row):
            a.text(0.5, 0.5, "isolated node:\nits row of $\\hat A$ is 0\n(zero degree)",
                   transform=a.transAxes, ha="center", va="center", fontsize="small",
                   bbox={"boxstyle": "round", "fc": "white", "ec": "0.6", "alpha": 0.9},
                   zorder=5)
        if row.ndim == 1:
            a.plot(row, color="C0")
            a.axvline(pos[0], color="C3", ls="--")
            a.set_xlabel("position")
            a.set_ylabel("affinity")
        else:
            h, w = row.shape
            if img is not None:
                H, W = img.shape[:2]
                a.imshow(img, cmap="gray" if img.ndim == 2 else None, extent=(0, W, H, 0))
            else:
                H, W = h, w
            mappable = a.imshow(row, cmap=cmap, alpha=alpha if img is not None else 1.0,
                                extent=(0, W, H, 0), interpolation="bilinear", vmin=0.0,
                                vmax=vmax)
            a.plot((pos[1] + 0.5) * W / w, (pos[0] + 0.5) * H / h, marker="*", color="white",
                   ms=14, mec="black")
            a.set_xticks([])
            a.set_yticks([])
        a.set_title((f"{name}: " if name else "") + f"query {tuple(int(p) for p in pos)}",
                    fontsize="medium")
    if colorbar and mappable is not None:
        from matplotlib.cm import ScalarMappable

        solid = ScalarMappable(norm=mappable.norm, cmap=mappable.cmap)  # not faded by alpha
        fig.colorbar(solid, ax=axes, shrink=0.85, pad=0.02, label=r"row of $\hat A$")
    return FigureAxes(fig, axes)


@V.validate_params(
    {"ax": _AX, "label": _TEXT, "show_radius": ["boolean"], "show_lower_bound": ["boolean"]},
    valid=lambda: {"stability": [1.1, 1.21, 1.331]},
)
def plot_growth(
    stability: Any,
    ax: Axes | None = None,
    *,
    label: str | None = None,
    show_radius: bool = True,
    show_lower_bound: bool = False,
) -> tuple[Figure, Axes]:
    r"""Exact growth :math:`\|\mathcal M^n\|_2` of ``n`` stacked copies of a block sharing its
    frozen affinity (log scale).

    Parameters
    ----------
    stability : Stability, BlockReport or array ``(n_max,)``
        A :class:`~analysis.stability.linear.Stability` (``growth``), a row of
        :func:`analysis.analyze` (``stack_growth``) or the growth values.
    show_radius : bool
        Also draw :math:`\rho^n` (a Stability only).
    show_lower_bound : bool
        Also draw the per-frequency lower bound (dotted, labelled "lower bound") where it
        differs from the exact value.

    Examples
    --------
    >>> fig, ax = plot_growth([1.1, 1.21, 1.331], label="block")
    >>> ax.get_yscale()
    'log'
    """
    radius = None
    bound = None
    if hasattr(stability, "growth"):
        growth = np.asarray(stability.growth, dtype=float)
        radius = np.asarray(stability.radius_growth, dtype=float)
        bound = np.asarray(getattr(stability, "growth_lower_bound", ()), dtype=float)
    elif hasattr(stability, "stack_growth"):
        growth = np.asarray(stability.stack_growth, dtype=float)
        bound = np.asarray(getattr(stability, "stack_growth_lower_bound", ()), dtype=float)
        label = label or getattr(stability, "path", None)
    else:
        growth = np.asarray(stability, dtype=float).ravel()
    _finite(growth, "stability (its growth values)")
    fig, ax = _fig_ax(ax)
    n = np.arange(1, growth.size + 1)
    line = ax.plot(n, growth, marker="o",
                   label=(label + " (exact)") if label else r"$\|M^n\|_2$ (exact)")[0]
    if show_radius and radius is not None:
        ax.plot(n, radius, ls="--", color=line.get_color(), alpha=0.6, label=r"$\rho^n$")
    if show_lower_bound and bound is not None and bound.size == growth.size \
            and np.isfinite(bound).all() and not np.allclose(bound, growth, rtol=1e-6):
        ax.plot(n, bound, ls=":", color=line.get_color(), alpha=0.8,
                label=(label + ": " if label else "") + "lower bound (per frequency)")
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set_yscale("log")
    plain_log_ticks(ax, "y")
    ax.set_xlabel("number of stacked blocks n")
    ax.set_ylabel(r"$\|M^n\|_2$, frozen affinity")
    ax.legend(fontsize="small")
    ax.set_title("stack growth (exact)")
    return FigureAxes(fig, ax)


@V.validate_params({"ax": _AX, "label": _TEXT},
                   valid=lambda: {"accuracy": {0.0: 0.9, 0.1: 0.8}})
def plot_accuracy(
    accuracy: Mapping[float, float] | Any,
    ax: Axes | None = None,
    *,
    label: str | None = None,
) -> tuple[Figure, Axes]:
    """Accuracy against the standard deviation of Gaussian input noise.

    Parameters
    ----------
    accuracy : mapping level -> accuracy, or an AnalysisTable (its ``accuracy``)

    Examples
    --------
    >>> fig, ax = plot_accuracy({0.0: 0.9, 0.1: 0.8, 0.2: 0.5}, label="SNL")
    >>> bool(ax.get_ylim()[1] <= 1.05)
    True
    """
    if hasattr(accuracy, "accuracy") and not isinstance(accuracy, Mapping):
        accuracy = accuracy.accuracy
    if not accuracy:
        raise ValueError("accuracy has no values to plot (pass {noise level: accuracy})")
    _finite(list(accuracy.values()), "accuracy")
    levels = np.array(sorted(accuracy), dtype=float)
    acc = np.array([accuracy[k] for k in sorted(accuracy)], dtype=float)
    fig, ax = _fig_ax(ax)
    ax.plot(levels, acc, marker="o", label=label)
    ax.set_xlabel(r"input noise $\sigma$")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    if label:
        ax.legend(fontsize="small")
    ax.set_title("accuracy under Gaussian input noise")
    return FigureAxes(fig, ax)


def _example_energy() -> Any:
    """A stand-in for a :class:`~analysis.response.FrequencyEnergy` (what
    :func:`plot_energy` reads of one), for its declaration's valid call."""
    return SimpleNamespace(basis="eigh",
                           band_fractions=lambda edges: np.full(len(edges) - 1, 0.05))


@V.validate_params({"ax": _AX, "bins": [V.POS_INT], "label": _TEXT},
                   valid=lambda: {"energy": _example_energy()})
def plot_energy(
    energy: Any,
    ax: Axes | None = None,
    *,
    bins: int = 20,
    label: str | None = None,
    range_: tuple[float, float] = (0.0, 2.0),
) -> tuple[Figure, Axes]:
    r"""Share of a signal's energy per graph-frequency band (from
    :func:`analysis.energy.graph_frequency_energy`), averaged over samples.

    Examples
    --------
    >>> import numpy as np
    >>> from analysis.response import FrequencyEnergy
    >>> e = FrequencyEnergy([np.array([0.0, 1.0, 2.0])], [np.array([3.0, 1.0, 0.0])], "eigh")
    >>> fig, ax = plot_energy(e)
    >>> ax.get_xlabel()
    'Laplacian eigenvalue $\\lambda$'
    """
    edges = np.linspace(range_[0], range_[1], bins + 1)
    frac = energy.band_fractions(edges)
    fig, ax = _fig_ax(ax)
    centers = (edges[:-1] + edges[1:]) / 2
    ax.step(centers, frac, where="mid", label=label)
    ax.set_xlabel(r"Laplacian eigenvalue $\lambda$")
    ax.set_ylabel("energy share")
    if label:
        ax.legend(fontsize="small")
    ax.set_title(f"graph-frequency energy ({energy.basis})")
    return FigureAxes(fig, ax)


@V.validate_params({"ax": _AX, "title": _TEXT},
                   valid=lambda: {"history": [{"epoch": 1, "train_loss": 1.0}]})
def plot_history(
    history: Sequence[Mapping[str, Any]],
    ax: Axes | None = None,
    *,
    title: str | None = None,
) -> tuple[Figure, Axes]:
    """Training curves from a checkpoint's history: loss (left axis) and accuracy (right).

    Parameters
    ----------
    history : sequence of dict
        One entry per epoch with ``epoch``, ``train_loss``, ``train_acc`` and, where
        evaluated, ``test_acc`` (as written by :mod:`graphfilters.training`); entries without
        ``epoch`` (e.g. a divergence record) are skipped.

    Examples
    --------
    >>> hist = [{"epoch": 1, "train_loss": 2.0, "train_acc": 0.3, "test_acc": 0.4},
    ...         {"epoch": 2, "train_loss": 1.0, "train_acc": 0.7, "test_acc": 0.8}]
    >>> fig, ax = plot_history(hist)
    >>> ax.get_ylabel()
    'training loss'
    >>> [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    ['train loss', 'train acc', 'test acc']
    """
    epochs = [h for h in history if "epoch" in h and "train_loss" in h]
    if not epochs:
        raise ValueError("history has no epoch entries with a train_loss to plot")
    _finite([h["train_loss"] for h in epochs], "history (its train_loss)")
    fig, ax = _fig_ax(ax)
    x = [h["epoch"] for h in epochs]
    ax.plot(x, [h["train_loss"] for h in epochs], color="C0", marker="o", ms=3,
            label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    twin = ax.twinx()
    twin.plot(x, [h.get("train_acc", np.nan) for h in epochs], color="C1", ls="--",
              label="train acc")
    tests = [(h["epoch"], h["test_acc"]) for h in epochs if h.get("test_acc") is not None]
    if tests:
        twin.plot(*zip(*tests), color="C2", marker="s", ms=3, label="test acc")
    twin.set_ylabel("accuracy")
    twin.set_ylim(0, 1.02)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    twin.legend(handles=handles, fontsize="small", loc="center right")
    ax.set_title(title or "training")
    return FigureAxes(fig, ax)


#: Parameter choices drawn by :func:`plot_block_responses` for blocks whose response has free
#: symbols (learned weights, CGNL's unnormalized :math:`\lambda_{\max}`, Cayley's zoom, ARMA's
#: pole); a block with none is drawn once, for unit weight.
BLOCK_RESPONSE_EXAMPLES: dict[str, list[dict[str, float]]] = {
    "snl": [dict(w_0=1.0, w_1=1.0), dict(w_0=1.0, w_1=-1.0), dict(w_0=0.5, w_1=0.0)],
    "gsnl": [dict(w_0=0.5, w_1=0.0, w_2=-0.5), dict(w_0=0.0, w_1=1.0, w_2=0.5)],
    "gsnl_stable": [dict(w_0=0.5, w_1=0.0, w_2=-0.5), dict(w_0=0.0, w_1=1.0, w_2=0.5)],
    "cgnl": [dict(lambda_max=2.0)],
    "cayley": [dict(h=1.0, w_0=0.0, w_1=1.0, w_2=0.0), dict(h=2.0, w_0=0.0, w_1=1.0, w_2=0.0),
               dict(h=1.0, w_0=0.5, w_1=0.0, w_2=0.5)],
    "arma": [dict(psi_1=0.5, w_0=0.0, w_1=0.5), dict(psi_1=-0.5, w_0=0.0, w_1=1.5)],
}


@V.validate_params({"n": [V.POS_INT], "ncols": [V.POS_INT]},
                   valid=lambda: {"names": ["snl"], "n": 5, "ncols": 1})
def plot_block_responses(
    names: Sequence[str] | None = None,
    examples: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
    *,
    n: int = 201,
    ncols: int = 3,
    axes: np.ndarray | None = None,
) -> tuple[Figure, np.ndarray]:
    r"""The frequency response :math:`h(\lambda)`, :math:`\lambda \in [0, 2]`, of every block
    of the table, one panel each, read off its symbolic derivation
    (:func:`graphfilters.symbolic.response_function`), titled with its closed form.

    Parameters
    ----------
    names : sequence of str, optional
        Blocks (default: every row of :data:`graphfilters.specs.BLOCK_NAMES`).
    examples : mapping, optional
        Parameter choices per block (default :data:`BLOCK_RESPONSE_EXAMPLES`).
    n : int
        Grid points.
    ncols : int
        Panels per row when ``axes`` is not given.
    axes : array of Axes, optional
        At least ``len(names)`` axes to draw into.

    Returns
    -------
    fig, axes

    Examples
    --------
    >>> fig, axes = plot_block_responses(["snl", "arma"], ncols=2)
    >>> [len(ax.get_lines()) for ax in axes.flat]      # the curves and the zero line
    [4, 3]
    """
    from graphfilters.specs import BLOCK_NAMES
    from graphfilters.symbolic import latex, response, response_function

    names = list(BLOCK_NAMES if names is None else names)
    examples = BLOCK_RESPONSE_EXAMPLES if examples is None else examples
    if axes is None:
        nrows = -(-len(names) // ncols)
        fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
    else:
        axes = np.asarray(axes)
        fig = axes.flat[0].figure
    if axes.size < len(names):
        raise ValueError(f"axes has {axes.size} panels for {len(names)} blocks")
    lam = np.linspace(0.0, 2.0, int(n))
    for ax, name in zip(axes.flat, names):
        for params in examples.get(name, [{}]):
            label = ", ".join(f"{k}={v:g}" for k, v in params.items()) or "unit weight"
            ax.plot(lam, np.broadcast_to(response_function(name, **params)(lam), lam.shape),
                    label=label)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_title(f"{name}\n$h = {latex(response(name))}$", fontsize="medium")
        ax.legend(fontsize="x-small", loc="best")
    used = list(axes.flat)[:len(names)]
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    for col in range(axes.shape[-1] if axes.ndim > 1 else 1):   # the lowest panel per column
        column = [ax for i, ax in enumerate(used) if axes.ndim == 1 or i % axes.shape[-1] == col]
        if column:
            column[-1].set_xlabel(r"Laplacian eigenvalue $\lambda$")
            column[-1].xaxis.set_tick_params(labelbottom=True)
    return FigureAxes(fig, axes)


#: Default curves of :func:`plot_filter_families`: (label, basis, order, weights, params).
FILTER_FAMILY_CURVES: tuple[tuple[str, str, int, tuple[float, ...], Mapping[str, Any]], ...] = (
    (r"Chebyshev $T_1(1-\lambda)$", "chebyshev", 1, (0.0, 1.0), {}),
    (r"Chebyshev $T_2(1-\lambda)$", "chebyshev", 2, (0.0, 0.0, 1.0), {}),
    (r"Chebyshev $T_3(1-\lambda)$", "chebyshev", 3, (0.0, 0.0, 0.0, 1.0), {}),
    (r"Cayley $\mathrm{Re}\,C(\lambda)$, $h = 2$", "cayley", 1, (0.0, 1.0, 0.0), {"zoom": 2.0}),
    (r"ARMA $\frac{1 - \psi}{1 - \psi(1-\lambda)}$, $\psi = 0.8$", "arma", 1, (0.0, 0.2),
     {"poles": np.array([0.8])}),
)


@V.validate_params({"lambda_max": [V.POS_REAL], "n": [V.POS_INT], "ax": _AX},
                   valid=lambda: {"n": 5})
def plot_filter_families(
    curves: Sequence[tuple[str, str, int, Sequence[float], Mapping[str, Any]]] | None = None,
    *,
    lambda_max: float = 2.0,
    n: int = 401,
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    r"""Scalar responses :math:`h(\lambda) = \sum_k w_k B_k(1 - \lambda)` of filter families
    on one axis (default: Chebyshev orders 1-3, a Cayley and an ARMA filter).

    Every curve is evaluated by the filter registry
    (:meth:`graphfilters.filters.FilterFamily.values`), i.e. exactly what the blocks compute
    on an eigenvector of :math:`\hat A` with eigenvalue :math:`1 - \lambda`.

    Parameters
    ----------
    curves : sequence of (label, basis, order, weights, params), optional
        Default :data:`FILTER_FAMILY_CURVES`; ``weights`` has one scalar per basis term.
    lambda_max : float
        End of the Laplacian spectrum (2 for the normalized Laplacian).
    n : int
        Grid points.
    ax : Axes, optional

    Examples
    --------
    >>> fig, ax = plot_filter_families()
    >>> len(ax.get_legend().get_texts()), ax.get_xlabel()
    (5, 'Laplacian eigenvalue $\\lambda$')
    """
    from graphfilters.filters import get_filter

    fig, ax = _fig_ax(ax, (7.6, 3.6))
    lam = np.linspace(0.0, lambda_max, int(n))
    for label, basis, order, weights, params in (curves or FILTER_FAMILY_CURVES):
        family = get_filter(basis)
        w = np.asarray(weights, dtype=float)
        if w.shape != (family.n_terms(order),):
            raise ValueError(
                f"curve {label!r}: {family.name} of order {order} has {family.n_terms(order)} "
                f"terms, got {w.size} weights"
            )
        h = family.values(1 - lam, order, dict(params) or None) @ w
        ax.plot(lam, h, label=label, lw=1.6, ls="--" if family.kind == "rational" else "-")
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel(r"Laplacian eigenvalue $\lambda$")
    ax.set_ylabel(r"response $h(\lambda)$")
    ax.set_xlim(0, lambda_max)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.set_title("polynomial (solid) and rational (dashed) filters", fontsize=10)
    return FigureAxes(fig, ax)


#: Quantities :func:`plot_depth_profile` draws (columns of :class:`analysis.depth.DepthRow`)
#: and their legend labels.
DEPTH_QUANTITIES: dict[str, str] = {
    "residual_in": r"$\|X_l - \mathbf{1}\bar x^T\|_F / \|X_l\|_F$ (input)",
    "residual_out": r"$\|Y_l - \mathbf{1}\bar y^T\|_F / \|Y_l\|_F$ (output)",
    "residual_l1inf_at_mean_in": r"$\|X_l - \mathbf{1}\bar x^T\|_{1,\infty} / "
                                 r"\|X_l\|_{1,\infty}$ (input, at mean)",
    "residual_l1inf_at_mean_out": r"$\|Y_l - \mathbf{1}\bar y^T\|_{1,\infty} / "
                                  r"\|Y_l\|_{1,\infty}$ (output, at mean)",
    "hf_share_in": "high-frequency share (input)",
    "hf_share_out": "high-frequency share (output)",
    "hf_share_branch": "high-frequency share (residual branch)",
    "absolute_gap": r"$1 - |\mu_2(A_h)|$ (mean over heads $\pm$ std)",
}


#: One key of :data:`DEPTH_QUANTITIES`.
_QUANTITY = V.StrOptions(tuple(DEPTH_QUANTITIES))


@V.validate_params(
    {"ax": _AX, "quantities": [_QUANTITY, V.Each(_QUANTITY)],
     "label": _TEXT, "log": ["boolean"], "title": _TEXT},
    valid=lambda: {"profile": [SimpleNamespace(depth=0, residual_in=0.5)],
                   "quantities": "residual_in"},
)
def plot_depth_profile(
    profile: Any,
    ax: Axes | None = None,
    *,
    quantities: str | Sequence[str] = ("residual_in", "hf_share_out", "absolute_gap"),
    label: str | None = None,
    log: bool = False,
    title: str | None = None,
) -> tuple[Figure, Axes]:
    r"""Measures of :func:`analysis.depth_profile` against depth (one line per quantity).

    Parameters
    ----------
    profile : DepthProfile or sequence of DepthRow
    quantities : str or sequence of str
        Keys of :data:`DEPTH_QUANTITIES`. ``absolute_gap`` has error bars: its standard
        deviation over heads.
    label : str, optional
        Prefix of every legend entry (to compare models on one ``ax``).
    log : bool
        Logarithmic y axis (residuals that collapse); values that are 0 (identical tokens
        in the model's precision) cannot be drawn there and are left out.
    title : str, optional

    Examples
    --------
    >>> from analysis.depth import DepthProfile, DepthRow
    >>> p = DepthProfile([DepthRow(0, "a", residual_in=0.9, absolute_gap=0.5),
    ...                   DepthRow(1, "b", residual_in=0.4, absolute_gap=0.7)])
    >>> fig, ax = plot_depth_profile(p, quantities=["residual_in", "absolute_gap"])
    >>> len(ax.lines) >= 2, ax.get_xlabel()
    (True, 'attention layer (forward order)')
    """
    rows = list(profile) if isinstance(profile, (list, tuple)) else None
    if rows is None or not all(hasattr(r, "depth") and hasattr(r, "residual_in")
                               for r in rows):
        raise TypeError(f"profile must be a DepthProfile (analysis.depth_profile) or a list "
                        f"of DepthRow, got {type(profile).__name__}")
    if not rows:
        raise ValueError(f"profile is empty: nothing to plot "
                         f"({getattr(profile, 'reason', '') or 'no rows'})")
    keys = [quantities] if isinstance(quantities, str) else list(quantities)
    depth = np.array([r.depth for r in rows], dtype=float)
    values = {q: np.array([float(getattr(r, q)) for r in rows]) for q in keys}
    _finite(np.concatenate(list(values.values())), "profile (the chosen quantities)")
    fig, ax = _fig_ax(ax)
    markers = "osD^v<>p"
    for i, q in enumerate(keys):
        v = values[q]
        if log:
            v = np.where(v > 0, v, np.nan)
        name = (f"{label}: " if label else "") + DEPTH_QUANTITIES[q]
        if q == "absolute_gap":
            err = np.array([float(r.absolute_gap_std) for r in rows])
            ax.errorbar(depth, v, yerr=np.where(np.isfinite(err), err, 0.0), marker=markers[i],
                        ms=4, capsize=2, label=name)
        else:
            ax.plot(depth, v, marker=markers[i % len(markers)], ms=4, label=name)
    if log:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("attention layer (forward order)")
    ax.set_ylabel("value")
    ax.legend(fontsize="x-small")
    ax.set_title(title if title is not None else "depth profile")
    return FigureAxes(fig, ax)
