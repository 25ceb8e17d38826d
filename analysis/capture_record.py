r"""The capture record: what one nonlocal module computed on a batch, as a graph filter.

A :class:`Capture` holds the affinity (structured, never N x N unless it was dense), the
normalization, the filter weights and basis, the value signal, the module and its input, and
the result of the self-check against the module's own output; :class:`Captures` maps module
paths to them (:func:`analysis.capture.capture` makes them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from graphfilters import _validate as V
from graphfilters._backend import to_numpy
from graphfilters.filters import get_filter
from graphfilters.graph import (
    Affinity,
    NormalizedOperator,
)
from graphfilters.specs import BlockSpec

__all__ = ["Capture", "Captures", "SELF_CHECK_TOL", "affinity_rows", "example_capture"]

#: Largest self-check error (relative) of a capture that is used (float32 rounding of
#: softmax maps is ~1e-7; a missed bias or mask is orders of magnitude above).
SELF_CHECK_TOL = 1e-4


@dataclass(eq=False)
class Capture:
    r"""What one nonlocal module did on the captured samples.

    Attributes
    ----------
    path : str
        Module path in ``model.named_modules()`` (``{path}.units.{u}`` for stage units;
        ``"(root)"`` when the model itself is the block).
    source : str
        ``"block"`` (graphfilters block), ``"attention"`` (``nn.MultiheadAttention``) or
        ``"adapter"``.
    module_type : str
        Class name of the module.
    affinity : graphfilters.graph.Affinity
        The raw affinity structure actually used, batch shape ``(S,)`` (``(S, H)`` for
        attention with ``heads="keep"``, ``(S, groups)`` for CGNL).
    normalization : str
        :math:`\hat A` = ``affinity.normalized(normalization)``.
    spec : BlockSpec or None
        The block's table row (:data:`analysis.capture.MHA_SPEC` for attention).
    z : Tensor ``(S, N_keys, C_s)`` or None
        The signal the filter acts on (attention: the projected values, all heads).
    weights : list of Tensor ``(C_s, C_out)`` or None
        Affinity-form filter weights :math:`W_k` (zeros for dropped terms).
    spatial_shape : tuple of int
        ``(L,)``, ``(H, W)`` or ``(T, H, W)`` of the queries.
    input : Tensor ``(S, C, *spatial_shape)`` or None
        The input of the captured map, always in this layout (token sequences ``(S, L, C)``
        are transposed): the module input, or the layer input ``x`` when the capture is the
        residual branch of a transformer layer (``info["layer"]``).
    output_scale, output_shift : Tensor ``(C_out,)`` or None
        Effective per-channel affine of the output normalization (BN in eval mode, or CC's
        :math:`\gamma`); ``None`` means scale 1, shift 0.
    value_weight, value_bias : Tensor or None
        The value projection :math:`Z = X G + b` with ``G`` of shape ``(C, C_s)``, when the
        module exposes it (``g`` convolution, attention ``in_proj``); with sub-sampled keys
        (``info["sub_sampled"]``) ``Z`` is max-pooled after the projection. For a pre-LN
        transformer layer ``G`` is the linearization of ``LN`` then the projection at the
        captured statistics, :math:`G = \bar s\, P \operatorname{diag}(\gamma) G_v` with
        :math:`P = I - \mathbf 1\mathbf 1^T/C` and :math:`\bar s` the mean of the tokens'
        :math:`1/\sigma_i` (``info["layernorm"]``).
    residual : bool
        Whether the captured map adds its input (``Y = X + ...``): true for graphfilters
        blocks, for ``NonLocal2d`` and for attention inside a transformer layer that the
        recognizer identified (the residual branch, ``info["layer"]`` says which form and
        ``info["layernorm"]`` how the LayerNorm is treated); false for a bare attention module.
    relu_after_norm : bool
        A ReLU follows the output normalization (official SNL classification code).
    heads : str or None
        ``"mean"`` or ``"keep"`` for attention.
    info : dict
        Block-specific facts (``node_layout``, ``groups``, ``sign``, ``sub_sampled``,
        ``num_heads``, ...); ``repeated_calls`` when the module ran more than once per
        forward (shared weights): only its first call of each batch is kept.
    module : nn.Module
        The module itself (not moved; used by the empirical robustness measures).
    n_samples : int
        Number of captured samples ``S``.
    call : callable or None
        How the measures re-run what was captured: ``call(x, **kw)`` takes ``x`` in the
        layout of ``input``, ``(b, C, *spatial_shape)``, with ``kw`` the ``call_kwargs`` of
        the same ``b`` samples, and returns one tensor in that layout (the module's own
        layout, tuple outputs and keyword arguments are handled inside). When ``residual`` is
        true it computes the whole residual branch (e.g. ``x + Attn(LN(x))`` for a pre-LN
        transformer layer). ``None``: ``module(x)`` (graphfilters blocks, modules taking
        ``(B, C, *spatial)``). An adapter may supply its own; it is kept.
    call_kwargs : dict of str to Tensor
        Per-sample keyword tensors for ``call`` (batch first: padding masks, ...).
    basis_params : dict of str to Tensor or None
        The constrained parameters of a rational basis (the Cayley zoom ``{"zoom": h}``, the
        ARMA poles ``{"poles": psi}``), detached: the record's ``params`` or the block's
        ``filter_parameters()``; ``None`` for polynomial bases (and foreign modules). Every
        measure that evaluates the filter passes them on
        (:meth:`graphfilters.filters.FilterFamily.values`, ``terms``).
    self_check_error, self_check : float and str
        How well the capture reproduces what the module computed, and what was compared:
        for a recognizer's capture the largest difference between its affinity and the
        affinity the model applied (watched, :mod:`analysis.observe`), relative to the
        largest entry; for an observed capture the recorded affinity times the recorded
        values against the module's own product. ``nan``: not checked (graphfilters blocks,
        adapters, or no affinity observed). Above :data:`SELF_CHECK_TOL` the capture is not
        used: an observed one replaces it, or the row says the check failed.
    freeze : callable or None
        The recognizer's own way of holding the attention fixed
        (:attr:`analysis.registry.Recognizer.freeze`); ``None``: the watcher's hold.

    Shapes
    ------
    ``N = prod(spatial_shape)`` nodes (CGNL: ``C_s / groups * N`` channel-position nodes).
    """

    path: str
    source: str
    module_type: str
    affinity: Affinity | None
    normalization: str = "none"
    spec: BlockSpec | None = None
    z: Tensor | None = None
    weights: list[Tensor] | None = None
    spatial_shape: tuple[int, ...] = ()
    input: Tensor | None = None
    output_scale: Tensor | None = None
    output_shift: Tensor | None = None
    value_weight: Tensor | None = None
    value_bias: Tensor | None = None
    residual: bool = True
    relu_after_norm: bool = False
    heads: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = field(default=None, repr=False)
    n_samples: int = 0
    call: Callable[..., Tensor] | None = field(default=None, repr=False)
    call_kwargs: dict[str, Tensor] = field(default_factory=dict, repr=False)
    basis_params: dict[str, Tensor] | None = None
    self_check_error: float = float("nan")
    self_check: str = ""
    freeze: Callable[[Any], Any] | None = field(default=None, repr=False)

    # -- derived facts -------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of graph nodes of the affinity."""
        return 0 if self.affinity is None else self.affinity.n

    @property
    def order(self) -> int | None:
        """Order of the filter (``None`` without weights): the polynomial degree ``K =
        len(weights) - 1`` for polynomial bases, the Cayley order ``r`` (``2r + 1`` weights)
        or the number of ARMA poles (:meth:`graphfilters.filters.FilterFamily.order_of`)."""
        if self.weights is None:
            return None
        return get_filter(self.basis).order_of(len(self.weights))

    @property
    def basis(self) -> str:
        """Name of the filter family in :data:`graphfilters.filters.FILTERS` (from the spec;
        ``"chebyshev"`` without one)."""
        return self.spec.basis if self.spec is not None else "chebyshev"

    @property
    def device(self) -> torch.device | None:
        return None if self.affinity is None else self.affinity.device

    @property
    def layout(self) -> str:
        """How the graph's nodes are laid out: ``"positions"`` (the default), ``"image"``
        (windows scattered back on the grid), ``"window"`` (windows in window order) or
        ``"channel_position"`` (CGNL's channel-position nodes)."""
        return str(self.info.get("node_layout", "positions"))

    @property
    def sub_sampled(self) -> bool:
        """The keys are sub-sampled (an N x M affinity, ``info["sub_sampled"]``)."""
        return bool(self.info.get("sub_sampled", False))

    @property
    def square_graph(self) -> bool:
        """The filter acts on one square graph over the positions (not CGNL's
        channel-position nodes, not sub-sampled or N x M keys)."""
        return (self.affinity is not None and self.layout != "channel_position"
                and not self.sub_sampled and self.affinity.n == self.affinity.n_cols)

    @property
    def num_heads(self) -> int:
        """Attention heads (``info["num_heads"]``; 1 where not given)."""
        return int(self.info.get("num_heads", 1) or 1)

    @property
    def layernorm(self) -> str | None:
        """Where the captured transformer layer normalizes: ``"pre"`` (pre-LN, folded into
        the filter at one scale), ``"post"`` (after the residual sum, outside the filter) or
        ``None`` (no LayerNorm; ``info["layernorm"]``)."""
        where = self.info.get("layernorm")
        return None if where is None else str(where)

    @property
    def repeated_calls(self) -> int:
        """How many times the module ran per forward when more than once (shared weights;
        its first call is the one captured), else 0 (``info["repeated_calls"]``)."""
        return int(self.info.get("repeated_calls", 0) or 0)

    @property
    def applications(self) -> int:
        """How many times one observed call applied its affinity (GFSA's :math:`A(AV)`
        applies it twice; ``info["applications"]``, 1 by default)."""
        return int(self.info.get("applications", 1) or 1)

    @property
    def heads_averaged(self) -> bool:
        """A multi-head capture whose affinity is the head average (``heads="mean"``): its
        filter is an approximation of the per-head one the module computes."""
        return (self.heads == "mean" and self.num_heads > 1 and self.affinity is not None
                and len(self.affinity.batch_shape) == 1)

    def dense_affinity(self, heads: str | None = None) -> Tensor:
        r"""The affinity the module applied, as a dense tensor ``(S, N, M)``.

        ``heads="mean"`` averages per-head affinities (what ``average_attn_weights=True``
        returns), ``"keep"`` keeps them ``(S, H, N, M)``; default: as captured. This is
        :math:`\hat A` (the capture's normalization applied), the map to compare with a
        library's own attention weights. CGNL's channel-position graphs have their own
        nodes (``(S, groups, n, n)``).
        """
        A = self.operator().dense()
        A = torch.as_tensor(A)
        per_head = self.heads == "keep" and A.dim() == 4 and self.layout != "channel_position"
        if (heads or self.heads) == "mean" and per_head:
            A = A.mean(1)
        return A

    def operator(self) -> NormalizedOperator:
        r"""The normalized operator :math:`\hat A` (applied without forming it)."""
        if self.affinity is None:
            raise ValueError(f"capture {self.path!r} holds no affinity")
        return self.affinity.normalized(self.normalization)

    def to(self, device: torch.device | str) -> Capture:
        """A copy with every tensor (and the affinity) on ``device``."""
        dev = torch.device(device)

        def mv(t: Any) -> Any:
            return t.to(dev) if isinstance(t, Tensor) else t

        aff = None
        if self.affinity is not None:
            aff = self.affinity.map_fields(mv) if self.affinity.is_torch else self.affinity
        return replace(
            self,
            affinity=aff,
            z=mv(self.z),
            weights=None if self.weights is None else [mv(w) for w in self.weights],
            basis_params=None if self.basis_params is None else {
                k: mv(v) for k, v in self.basis_params.items()},
            input=mv(self.input),
            output_scale=mv(self.output_scale),
            output_shift=mv(self.output_shift),
            value_weight=mv(self.value_weight),
            value_bias=mv(self.value_bias),
            info=dict(self.info),
            call_kwargs={k: mv(v) for k, v in self.call_kwargs.items()},
        )

    @V.validate_params(
        {"query": [V.NONNEG_INT, V.InstanceOf(
            (tuple, list, np.ndarray, Tensor), "a position (a sequence of coordinates)")],
         "index": [V.NONNEG_INT]},
        valid=lambda: {"self": example_capture(), "query": 0},
    )
    def affinity_row(self, query: int | Sequence[int], index: int = 0) -> np.ndarray:
        r"""Row ``query`` of :math:`\hat A` for sample ``index``, on the spatial grid.

        ``query`` is a flat node index or a spatial position (e.g. ``(row, col)``). Computed
        from the structure (one row; never the ``N x N`` matrix for low-rank and softmax
        affinities). For attention with ``heads="keep"`` the heads are averaged.

        Returns
        -------
        numpy array of shape ``spatial_shape`` (``(N_keys,)`` for sub-sampled keys).
        """
        if self.layout == "channel_position":
            raise ValueError(
                f"{self.path}: the nodes of this affinity are (channel, position) pairs (CGNL), "
                "so a row is not a map over the image grid"
            )
        op = self.operator()
        n = op.n
        if isinstance(query, (int, np.integer)):
            flat = int(query)
        else:
            q = tuple(int(v) for v in query)
            if len(q) != len(self.spatial_shape):
                raise ValueError(
                    f"query {tuple(query)} must be a flat index or a position with "
                    f"{len(self.spatial_shape)} coordinates (spatial shape {self.spatial_shape})"
                )
            flat = int(np.ravel_multi_index(q, self.spatial_shape))
        if not 0 <= flat < n:
            raise ValueError(f"query node {flat} is out of range [0, {n})")
        if index >= self.n_samples:
            raise ValueError(f"sample index {index} is out of range [0, {self.n_samples})")
        row = affinity_rows(op, [flat], index)[0]
        row = row.reshape(-1, row.shape[-1]).mean(0) if row.ndim > 1 else row
        if row.shape[-1] == math.prod(self.spatial_shape):
            return row.reshape(self.spatial_shape)
        return row

    def __repr__(self) -> str:
        from graphfilters.display import capture_items, short_repr

        items = capture_items(self)
        return short_repr(f"Capture {self.path}", {k: items[k] for k in (
            "module", "affinity", "normalization", "grid")})

    def _repr_html_(self) -> str:
        from graphfilters.display import capture_items, card_html

        return card_html(f"Capture {self.path}", capture_items(self))

    def plot(self, queries: Sequence[Any], image: Any = None, **kwargs: Any) -> Any:
        """:func:`analysis.plots.plot_affinity_rows` of this capture; returns ``(fig, axes)``."""
        from .plots import plot_affinity_rows

        return plot_affinity_rows(self, queries, image, **kwargs)


def affinity_rows(op: NormalizedOperator, rows: Sequence[int], index: int = 0) -> np.ndarray:
    r"""Rows ``rows`` of the normalized operator :math:`\hat A` of sample ``index``.

    Uses the structure: low-rank :math:`P_i Q^T`, softmax :math:`\operatorname{softmax}(s\,
    q_i K^T)`, dense slicing, sums of those; anything else through products with the
    transpose-free identity :math:`e_i^T \hat A` computed by dense materialization of that
    sample only.

    Shapes
    ------
    Returns ``(len(rows), *extra_batch, N_keys)`` (``extra_batch`` = heads or groups).

    Examples
    --------
    >>> import numpy as np
    >>> from graphfilters.graph import LowRankAffinity
    >>> rng = np.random.default_rng(0)
    >>> aff = LowRankAffinity(rng.random((6, 2)), rng.random((6, 2)), symmetric=True)
    >>> op = aff.normalized("sym")
    >>> np.allclose(affinity_rows(op, [2]), op.dense()[2])
    True
    """
    aff = op.affinity
    single = aff.select(index) if aff.batch_shape else aff
    if op.left is not None or op.right is not None:
        left = op.left[index] if (op.left is not None and aff.batch_shape) else op.left
        right = op.right[index] if (op.right is not None and aff.batch_shape) else op.right
    else:
        left = right = None
    idx = list(rows)
    raw = _raw_rows(single, idx)                 # (*extra, R, N_keys)
    if left is not None:
        raw = raw * _to_np(left)[..., idx, None]
    if right is not None:
        raw = raw * _to_np(right)[..., None, :]
    raw = raw * op.factor
    return np.moveaxis(raw, -2, 0)


def _to_np(x: Any) -> np.ndarray:
    return to_numpy(x, np.float64)


def _raw_rows(aff: Affinity, idx: list[int]) -> np.ndarray:
    """Rows ``idx`` of the raw affinity ``M`` of one sample, ``(*extra, R, N_keys)``, by the
    affinity's own :meth:`~graphfilters.graph.Affinity.rows` (no N x N matrix)."""
    return np.concatenate([_to_np(aff.rows(i, i + 1)) for i in idx], -2)


def example_capture(n: int = 10, channels: int = 2, seed: int = 0) -> Capture:
    r"""A small capture of a symmetric low-rank affinity with weights :math:`W_0 = I/2`,
    :math:`W_1 = 0`, an identity value projection and a value signal: the valid argument of
    the declared checks (:mod:`graphfilters._validate`) and of short examples.

    Examples
    --------
    >>> cap = example_capture()
    >>> cap.affinity.n, cap.n_samples, len(cap.weights)
    (10, 1, 2)
    """
    from graphfilters.graph import LowRankAffinity

    g = torch.Generator().manual_seed(seed)
    aff = LowRankAffinity(torch.rand(1, n, channels, generator=g),
                          torch.rand(1, n, channels, generator=g), symmetric=True)
    eye = torch.eye(channels)
    return Capture("b", "block", "toy", aff, "sym", weights=[0.5 * eye, 0.0 * eye],
                   value_weight=eye, z=torch.rand(1, n, channels, generator=g), n_samples=1)


class Captures(dict):
    """Captures keyed by module path (a ``dict``), with the reason when it is empty.

    Attributes
    ----------
    reason : str
        Why nothing was captured (empty string otherwise).
    n_samples : int
        Samples seen.
    failures : dict of str to str
        Modules that could not be read at all, with the reason (a recognizer that raised
        and no observed affinity to fall back on): :func:`~analysis.analyze` gives each a
        ``skipped`` row.
    """

    def __init__(self, *args: Any, reason: str = "", n_samples: int = 0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.reason = reason
        self.n_samples = n_samples
        self.failures: dict[str, str] = {}

    def __repr__(self) -> str:
        if not self:
            return f"Captures(empty: {self.reason})"
        items = ", ".join(
            f"{p!r}: {c.module_type}(N={c.n}, {type(c.affinity).__name__})"
            for p, c in self.items()
        )
        return f"Captures({items}; {self.n_samples} samples)"
