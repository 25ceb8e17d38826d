r"""Capture the affinities and filters that a model's nonlocal blocks actually use.

:func:`capture` runs a model in eval mode under :func:`torch.no_grad` on some inputs and
returns, for every nonlocal module found (keyed by its module path), a :class:`Capture`: the
affinity structure (dense, or its low-rank / softmax factors when the block has them), the
signal :math:`Z`, the affinity-form filter weights :math:`W_k`, the block spec and the spatial
shape, so that

.. math::

    F = \sum_{k=0}^{K} B_k(\hat A)\, Z\, W_k, \qquad \hat A = \text{normalize}(A),

can be rebuilt, analysed spectrally, and a row of :math:`\hat A` drawn on the image grid.

Three kinds of modules are recognized (the first match wins, outermost module first):

1. **adapters** registered with :func:`register_adapter` (checked first, so they can
   override the built-in handling);
2. **graphfilters blocks**: any module with a ``spec`` (:class:`~graphfilters.specs.BlockSpec`)
   and ``filter_weights()``; ``block.record`` is switched on during the run and the
   ``FilterRecord`` of every forward is read. A stage of units sharing one affinity
   (``last_records``) gives one capture per unit, ``{path}.units.{u}``;
3. modules of a **recognizer** family (:class:`Recognizer`, :func:`register_recognizer`;
   built in, see :mod:`analysis.recognizers`: :class:`torch.nn.MultiheadAttention` and
   ``nn.TransformerEncoderLayer``, Hugging Face ``transformers`` self-attention, timm
   ``Attention``, mmcv ``NonLocal2d``): the attention is *recomputed* from the module's call
   arguments and weights (fused kernels never form it), with the call's masks.
   ``heads="mean"`` averages the heads (what ``average_attn_weights=True`` returns, a dense
   ``(B, L, S)`` affinity); ``heads="keep"`` keeps one row-stochastic affinity per head
   (batch shape ``(B, H)``, a :class:`~graphfilters.graph.SoftmaxAffinity` without mask).
   Inside a transformer layer the capture is the layer's residual branch (``residual=True``,
   ``info["layer"]``, ``info["layernorm"]``).

PyTorch's native MHA fast path (nested tensors for padding masks) is switched off during the
run and restored. Everything is computed where the model lives; the results are moved to
``device`` (the CPU by default). Hooks are removed and the ``record`` flags and train/eval
modes of every module are restored afterwards, also when the forward raises.

Examples
--------
>>> import torch
>>> from analysis.capture import capture
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
>>> class Net(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.attn = mha
...     def forward(self, x):
...         return self.attn(x, x, x)[0]
>>> caps = capture(Net(), torch.randn(3, 5, 8), progress=False)
>>> list(caps), caps["attn"].affinity.shape, caps["attn"].n_samples
(['attn'], (3, 5, 5), 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from graphfilters._backend import to_numpy
from graphfilters.filters import get_filter
from graphfilters.graph import (
    Affinity,
    DenseAffinity,
    NormalizedOperator,
)
from graphfilters.specs import BlockSpec, get_spec

from .observe import AffinityWatcher, Observation, reading
from .observed import applied_affinity, observed_capture
from .registry import (
    CallContext,
    Recognizer,
    adapter_for,
    recognizer_for,
    recognizers,
    register_adapter,
    register_recognizer,
    unregister_adapter,
    unregister_recognizer,
)

__all__ = [
    "Capture",
    "Captures",
    "capture",
    "register_adapter",
    "unregister_adapter",
    "Recognizer",
    "CallContext",
    "register_recognizer",
    "unregister_recognizer",
    "recognizers",
    "run_batch",
    "find_nonlocal_modules",
    "MHA_SPEC",
    "ROOT",
    "affinity_rows",
    "model_device",
]

#: The block-table row that describes :class:`torch.nn.MultiheadAttention` as a graph filter:
#: softmax (row-stochastic) affinity, order 1, :math:`W_0 = 0`, :math:`F = A Z W`.
MHA_SPEC: BlockSpec = replace(
    get_spec("nl"),
    name="mha",
    title="Multi-head attention (torch.nn.MultiheadAttention)",
    reference="Vaswani et al. Attention Is All You Need. NeurIPS 2017.",
    modes=(),
    mode=None,
    affinity_latex=r"A_h = \operatorname{softmax}_{row}(Q_h K_h^{T} / \sqrt{d})",
    filter_latex=r"F = [A_1 Z_1, \dots, A_H Z_H]\, W_o",
)

#: The path given to the model itself when it is the nonlocal module.
ROOT = "(root)"
#: Largest self-check error (relative) of a capture that is used (float32 rounding of
#: softmax maps is ~1e-7; a missed bias or mask is orders of magnitude above).
SELF_CHECK_TOL = 1e-4


def _is_block(module: nn.Module) -> bool:
    return isinstance(getattr(module, "spec", None), BlockSpec) and callable(
        getattr(module, "filter_weights", None)
    ) and hasattr(module, "record")


def _kind(module: nn.Module) -> str | None:
    if adapter_for(module) is not None:
        return "adapter"
    if _is_block(module):
        return "block"
    if recognizer_for(module) is not None:
        return "attention"
    return None


def find_nonlocal_modules(
    model: nn.Module, blocks: Sequence[str | type] | None = None
) -> list[tuple[str, nn.Module, str]]:
    """The nonlocal modules of ``model`` as ``(path, module, kind)``, outermost first.

    ``kind`` is ``"adapter"``, ``"block"`` or ``"attention"`` (a module read by a
    :class:`Recognizer`). Modules inside a found module are not listed again. ``blocks``
    restricts the result to those module paths or types.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.MultiheadAttention(4, 1))
    >>> [(p, k) for p, _, k in find_nonlocal_modules(net)]
    [('1', 'attention')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found: list[tuple[str, nn.Module, str]] = []
    for path, module in model.named_modules():
        if any(p == ROOT or path.startswith(p + ".") for p, _, _ in found):
            continue
        kind = _kind(module)
        if kind is not None:
            found.append((path or ROOT, module, kind))
    if blocks is None:
        return found
    wanted_paths = {b for b in blocks if isinstance(b, str)}
    wanted_types = tuple(b for b in blocks if isinstance(b, type))
    bad = [b for b in blocks if not isinstance(b, (str, type))]
    if bad:
        raise TypeError(f"blocks must hold module paths (str) or module types, got {bad!r}")
    known = {p for p, _, _ in found}
    missing = sorted(wanted_paths - known)
    if missing:
        raise ValueError(
            f"no nonlocal module at path(s) {missing}; found: {sorted(known) or 'none'}"
        )
    return [
        (p, m, k) for p, m, k in found
        if p in wanted_paths or (wanted_types and isinstance(m, wanted_types))
    ]


# ------------------------------------------------------------------------------------------
# The capture record
# ------------------------------------------------------------------------------------------


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
        The block's table row (:data:`MHA_SPEC` for attention).
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
        if not 0 <= index < self.n_samples:
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


# ------------------------------------------------------------------------------------------
# Extraction from graphfilters blocks
# ------------------------------------------------------------------------------------------


def _value_projection(module: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """``(G, b)`` with ``Z = X G + b`` from a block's ``g`` 1x1 convolution, if linear."""
    g = getattr(module, "g", None)
    if g is None:
        return None, None
    w = getattr(g, "weight", None)
    if not isinstance(w, Tensor) or getattr(g, "groups", 1) != 1:
        return None, None
    if w.ndim >= 2 and all(s == 1 for s in w.shape[2:]):
        G = w.detach().reshape(w.shape[0], w.shape[1]).T.clone()
        b = getattr(g, "bias", None)
        return G, (b.detach().clone() if isinstance(b, Tensor) else None)
    return None, None


def _from_record(path: str, module: nn.Module, rec: Any, unit: nn.Module | None = None) -> Capture:
    """A :class:`Capture` from a block's ``FilterRecord`` (or a record-like object)."""
    owner = unit if unit is not None else module
    spec = getattr(rec, "spec", None) or getattr(owner, "spec", None)
    scale = shift = None
    affine = getattr(rec, "output_scale", None)
    if isinstance(affine, tuple) and len(affine) == 2:
        scale, shift = affine
    elif isinstance(affine, dict):
        scale, shift = affine.get("scale"), affine.get("shift")
    elif isinstance(affine, Tensor):
        scale = affine
    G, b = _value_projection(owner)
    info = dict(getattr(rec, "info", {}) or {})
    aff = getattr(rec, "affinity", None)
    if isinstance(aff, Tensor):
        aff = DenseAffinity(aff.detach())
    weights = getattr(rec, "weights", None)
    return Capture(
        path=path,
        source="block",
        module_type=type(owner).__name__,
        affinity=aff,
        normalization=str(getattr(rec, "normalization", None)
                          or (spec.normalization if spec is not None else "none")),
        spec=spec,
        z=_detach(getattr(rec, "z", None)),
        weights=None if weights is None else [_detach(w) for w in weights],
        basis_params=_basis_params(rec, owner),
        spatial_shape=tuple(getattr(rec, "spatial_shape", ()) or ()),
        input=_detach(getattr(rec, "input", None)),
        output_scale=_detach(scale),
        output_shift=_detach(shift),
        value_weight=G,
        value_bias=b,
        residual=True,
        relu_after_norm=bool(getattr(rec, "relu_after_norm", False)),
        info=info,
        module=owner,
    )


def _detach(t: Any) -> Any:
    return t.detach() if isinstance(t, Tensor) else t


def _basis_params(rec: Any, owner: nn.Module) -> dict[str, Tensor] | None:
    """The rational basis parameters of a record (``params``), else of its block
    (``filter_parameters()``), detached copies; ``None`` when there are none."""
    params = getattr(rec, "params", None)
    if not params:
        fp = getattr(owner, "filter_parameters", None)
        if callable(fp):
            with torch.no_grad():
                params = fp()
    if not params:
        return None
    return {str(k): torch.as_tensor(v).detach().clone() for k, v in dict(params).items()}


def _from_adapter_result(path: str, module: nn.Module, res: Any) -> Capture | None:
    if res is None:
        return None
    if isinstance(res, Capture):
        # a module or call supplied by the adapter (e.g. a wrapper) is kept
        cap = replace(res, path=path, source="adapter",
                      module=res.module if res.module is not None else module,
                      module_type=type(module).__name__)
        if isinstance(cap.affinity, Tensor):
            cap.affinity = DenseAffinity(cap.affinity.detach())
        return cap
    if isinstance(res, (Affinity, Tensor)):
        aff = res.detach() if isinstance(res, Affinity) else DenseAffinity(res.detach())
        return Capture(path=path, source="adapter", module_type=type(module).__name__,
                       affinity=aff, normalization="none", module=module, residual=False)
    if hasattr(res, "affinity"):
        cap = _from_record(path, module, res)
        cap.source = "adapter"
        if getattr(res, "normalization", None) is None:
            cap.normalization = "none"
        cap.residual = bool(getattr(res, "residual", False))
        if callable(getattr(res, "call", None)):
            cap.call = res.call
            cap.call_kwargs = dict(getattr(res, "call_kwargs", None) or {})
        return cap
    raise TypeError(
        f"the adapter for {type(module).__name__} returned {type(res).__name__}; return an "
        "Affinity, a (B, N, N) tensor, a Capture, a record with an 'affinity' attribute, or None"
    )


# ------------------------------------------------------------------------------------------
# Merging batches
# ------------------------------------------------------------------------------------------


def _cat_affinities(parts: list[Affinity]) -> Affinity:
    return parts[0] if len(parts) == 1 else parts[0].concat(parts[1:])


def _take(aff: Affinity, k: int) -> Affinity:
    return aff.map_fields(lambda t: t[:k])


def _merge(pieces: list[Capture], device: torch.device | None) -> Capture:
    first = pieces[0]
    aff = _cat_affinities([p.affinity for p in pieces]) if first.affinity is not None else None

    def cat(name: str) -> Tensor | None:
        vals = [getattr(p, name) for p in pieces]
        if any(v is None for v in vals):
            return None
        return torch.cat(vals, 0)

    n = sum(p.n_samples for p in pieces)
    kw = {k: torch.cat([p.call_kwargs[k] for p in pieces], 0) for k in first.call_kwargs
          if all(k in p.call_kwargs for p in pieces)}
    cap = replace(first, affinity=aff, z=cat("z"), input=cat("input"), n_samples=n,
                  call_kwargs=kw)
    return cap.to(device) if device is not None else cap


def batch_input(batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch:
        return batch[0]
    if isinstance(batch, Mapping):
        for key in _INPUT_KEYS:
            if key in batch:
                return batch[key]
    raise TypeError(
        f"cannot find the model input in a batch of type {type(batch).__name__}: pass a "
        "tensor, an iterable of tensors or of (input, target) pairs, a dict of keyword "
        "inputs, or forward=fn(model, batch)"
    )


#: Keys of a dict batch read as the one positional input; other dicts are keyword inputs.
_INPUT_KEYS = ("input", "inputs", "x", "image", "images")


def _batch_size(x: Any) -> int:
    """The leading size of the first tensor in ``x`` (tensor, sequence or mapping)."""
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.dim() > 0 else 1
    values = list(x.values()) if isinstance(x, Mapping) else (
        list(x) if isinstance(x, (list, tuple)) else [])
    for v in values:
        if isinstance(v, Tensor) and v.dim() > 0:
            return int(v.shape[0])
    raise TypeError(f"cannot infer the batch size of a {type(x).__name__} input")


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def _as_batches(data: Any) -> Any:
    """One batch (tensor or dict of keyword inputs) as a list; an iterable as it is."""
    return [data] if isinstance(data, (Tensor, Mapping)) else data


def run_batch(
    model: nn.Module,
    batch: Any,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[Any, int]:
    r"""Call ``model`` on one batch the way :func:`capture` and :func:`~analysis.analyze`
    do, and return ``(output, batch size)``.

    ``forward(model, batch)`` when given; a dict without an input key (``"input"``,
    ``"x"``, ``"image"``...) as keyword inputs, ``model(**batch, **model_kwargs)``
    (Hugging Face style: ``input_ids``, ``attention_mask``, ``pixel_values``); otherwise the
    batch's input tensor, ``model(x, **model_kwargs)``. Tensors go to the model's device.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)
    >>> run_batch(lin, {"input": torch.randn(4, 3)})[1]
    4
    """
    dev = model_device(model)
    kw = _to_device(dict(model_kwargs or {}), dev)
    if forward is not None:
        b = _to_device(batch, dev)
        return forward(model, b), _batch_size(b)
    if isinstance(batch, Mapping) and not any(k in batch for k in _INPUT_KEYS):
        b = _to_device(batch, dev)
        return model(**b, **kw), _batch_size(b)
    x = _to_device(batch_input(batch), dev)
    return model(x, **kw), _batch_size(x)


def _parents(model: nn.Module) -> dict[str, nn.Module]:
    """``{path: parent module}`` for every submodule path (the root has none)."""
    mods = dict(model.named_modules())
    out = {}
    for path in mods:
        if path:
            head = path.rsplit(".", 1)[0] if "." in path else ""
            out[path] = mods[head]
    return out


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU if it has none).

    Examples
    --------
    >>> model_device(nn.ReLU())
    device(type='cpu')
    """
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _slice_capture(cap: Capture, k: int) -> Capture:
    """Keep the first ``k`` samples of a one-batch capture."""
    if cap.n_samples <= k:
        return cap
    return replace(
        cap,
        affinity=_take(cap.affinity, k) if cap.affinity is not None else None,
        z=None if cap.z is None else cap.z[:k],
        input=None if cap.input is None else cap.input[:k],
        n_samples=k,
        call_kwargs={name: v[:k] for name, v in cap.call_kwargs.items()},
    )


def _affinity_batch(aff: Affinity | None, default: int) -> int:
    if aff is None or not aff.batch_shape:
        return default
    return int(aff.batch_shape[0])


def capture(
    model: nn.Module,
    inputs_or_loader: Tensor | Iterable[Any],
    blocks: Sequence[str | type] | None = None,
    max_samples: int = 16,
    *,
    heads: str = "mean",
    device: torch.device | str | None = "cpu",
    forward: Callable[[nn.Module, Any], Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Captures:
    r"""Run ``model`` and capture what its nonlocal modules compute.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode under :func:`torch.no_grad`; its train/eval modes are restored.
    inputs_or_loader : Tensor, dict or iterable
        One input batch, or an iterable of batches (tensors, ``(input, target, ...)``
        tuples, dicts with an ``"input"`` key, or dicts of keyword inputs such as a Hugging
        Face ``BatchEncoding``: ``model(**batch)``), e.g. a ``DataLoader``. Inputs are moved
        to the model's device (see :func:`run_batch`).
    blocks : sequence of str or type, optional
        Module paths or module types to capture (default: every nonlocal module found).
    max_samples : int
        Stop after this many samples (the last batch is truncated).
    heads : {"mean", "keep"}
        For ``nn.MultiheadAttention``: average the heads' attention or keep one affinity
        per head.
    device : device or None
        Where the results are put (default the CPU; ``None``: stay on the model's device).
    forward : callable, optional
        ``forward(model, batch)`` for models that do not take ``model(input)``.
    model_kwargs : dict, optional
        Keyword inputs added to every call, e.g. ``{"src_key_padding_mask": mask}``.
    progress : bool
        Show a tqdm bar over batches.

    Returns
    -------
    Captures
        ``{path: Capture}``; empty (with ``.reason``) when the model has no nonlocal module.

    Raises
    ------
    TypeError, ValueError
        For a non-module model, unknown block paths, bad ``max_samples`` or ``heads``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))
    >>> caps = capture(net, torch.randn(2, 3, 4, 4), progress=False)
    >>> len(caps), caps.reason[:24]
    (0, 'no nonlocal module found')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}")
    if heads not in ("mean", "keep"):
        raise ValueError(f"heads must be 'mean' or 'keep', got {heads!r}")
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
    missing_error: ValueError | None = None
    try:
        found = find_nonlocal_modules(model, blocks)
    except ValueError as exc:                 # a wanted path may still be observed
        missing_error = exc
        found = [f for f in find_nonlocal_modules(model)
                 if f[0] in {b for b in blocks if isinstance(b, str)}]  # type: ignore[union-attr]
    out_device = None if device is None else torch.device(device)
    pieces: dict[str, list[Capture]] = {}
    order: list[str] = []
    state: dict[str, Any] = {"take": 0, "paths": set(), "batch": 0}
    records: dict[nn.Module, Any] = {}
    parent_calls: dict[int, tuple[tuple, dict]] = {}
    parents = _parents(model)
    names = {m: (p or ROOT) for p, m in model.named_modules()}
    watcher = AffinityWatcher()
    failures: dict[str, str] = {}          # path -> why its recognizer's capture was not used
    covered = {p for p, _, _ in found}     # paths whose observations a capture accounts for

    def under(owner: str, path: str) -> bool:
        return path == ROOT or owner == path or owner.startswith(path + ".")

    def repeated(path: str) -> None:           # a module called twice in one forward
        first = pieces[path][-1]
        first.info["repeated_calls"] = first.info.get("repeated_calls", 1) + 1

    def add(cap: Capture | None) -> None:
        if cap is None:
            return
        if cap.path in state["paths"]:
            repeated(cap.path)
            return
        state["paths"].add(cap.path)
        cap.n_samples = _affinity_batch(cap.affinity, cap.n_samples or state["take"])
        cap = _slice_capture(cap, state["take"])
        if cap.path not in pieces:
            pieces[cap.path] = []
            order.append(cap.path)
        pieces[cap.path].append(cap)

    def block_hook(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            recs = getattr(module, "last_records", None)
            units = getattr(module, "units", None)
            if isinstance(recs, (list, tuple)) and len(recs) > 1:
                for u, rec in enumerate(recs):
                    if rec is not None:
                        unit = units[u] if units is not None else None
                        add(_from_record(f"{path}.units.{u}", module, rec, unit))
                return
            rec = getattr(module, "last_record", None)
            if rec is None:
                return
            unit = units[0] if units is not None and len(units) == 1 else None
            cap = _from_record(path, module, rec, unit)
            if unit is not None:
                cap.module = module
            add(cap)
        return paused(hook)

    def adapter_hook(path: str, fn: Callable[..., Any]) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            add(_from_adapter_result(path, module, fn(module, inputs, output)))
        return paused(hook)

    def paused(hook: Callable[..., None]) -> Callable[..., None]:
        def run(*a: Any, **k: Any) -> None:
            with watcher.pause():
                hook(*a, **k)
        return run

    def parent_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        parent_calls[id(module)] = (args, kwargs)

    def recognizer_hook(path: str, rec: Recognizer) -> Callable[..., None]:
        parent = parents.get(path)

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if state.get("rechecking"):
                return
            if path in state["paths"]:
                return repeated(path)
            if path in failures:
                return None
            pargs, pkw = parent_calls.get(id(parent), (None, None)) if parent is not None \
                else (None, None)
            ctx = CallContext(path, module, args, kwargs, output, heads, parent, pargs, pkw)
            try:
                cap = rec.build(ctx)
            except Exception as exc:  # noqa: BLE001 - one module's failure is its own row
                failures[path] = f"recognizer {rec.name!r} failed: {type(exc).__name__}: {exc}"
                return
            if cap is None:
                return
            cap.path, cap.source = path, rec.source
            cap.module_type, cap.module = type(module).__name__, module
            cap.freeze = rec.freeze
            cap.info.setdefault("family", rec.name)
            seen_here = [o for o in watcher.observations if under(o.owner or ROOT, path)
                         and o.call == watcher.calls.get(o.owner, 0)]
            applied = [o.affinity for o in seen_here]
            what = "watched: " + ", ".join(sorted({o.kind for o in seen_here}))
            if not applied and isinstance(module, nn.MultiheadAttention):
                state["rechecking"] = True
                what = "its own need_weights=True weights"
                try:
                    applied = _mha_applied(module, args, kwargs)
                except Exception:  # noqa: BLE001 - no check is better than a broken forward
                    applied = []
                finally:
                    state["rechecking"] = False
            if applied:
                try:
                    err, how = _cross_check(cap, applied, module, state["batch"], what)
                except Exception as exc:  # noqa: BLE001 - not comparable: say so, keep it
                    err, how = float("nan"), (f"not checked: the applied affinity could not be "
                                              f"laid out ({type(exc).__name__}: {exc})")
                cap.self_check_error, cap.self_check = err, how
                if err > SELF_CHECK_TOL:
                    failures[path] = (f"recognizer {rec.name!r} does not reproduce the module: "
                                      f"{how}")
                    return
            add(cap)
        return paused(hook)

    def add_observed() -> None:
        groups: dict[str, list[Observation]] = {}
        for o in watcher.observations:
            owner = o.owner or ROOT
            if o.call != 0:
                continue
            if any(under(owner, p) for p in covered if p not in failures):
                continue
            groups.setdefault(owner, []).append(o)
        for owner, obs in groups.items():
            module = obs[0].owner_module
            try:
                key = "" if owner == ROOT else owner
                res = watcher.residuals.get(key)
                fields = observed_capture(
                    owner, module, obs, watcher.call_args.get(key), state["batch"], heads,
                    res, None if res is None else watcher.call_args.get(res.layer),
                    own_residual=key in watcher.own_residual)
            except Exception as exc:  # noqa: BLE001
                failures.setdefault(owner, f"observed attention not read: {exc}")
                continue
            why = next((r for p, r in failures.items() if under(owner, p)), None)
            cap = Capture(**fields)
            if why is not None:
                cap.info["recognizer"] = why
            add(cap)

    seen = 0
    paths = {m: ("" if p == ROOT else p) for m, p in names.items()}
    try:
        with reading(model, watcher, paths) as handles:
            for path, module, kind in found:
                if kind == "adapter":
                    handles.append(module.register_forward_hook(
                        adapter_hook(path, adapter_for(module))))
                elif kind == "block":
                    records[module] = module.record
                    module.record = True
                    handles.append(module.register_forward_hook(block_hook(path)))
                else:
                    parent = parents.get(path)
                    if parent is not None:
                        handles.append(parent.register_forward_pre_hook(parent_hook,
                                                                        with_kwargs=True))
                    handles.append(module.register_forward_hook(
                        recognizer_hook(path, recognizer_for(module)), with_kwargs=True))
            batches = _as_batches(inputs_or_loader)
            try:
                total = len(batches)  # type: ignore[arg-type]
            except TypeError:
                total = None
            bar = tqdm(batches, desc="capture", total=total, disable=not progress, leave=False)
            with torch.no_grad():
                for batch in bar:
                    b = batch if forward is not None else (
                        batch if isinstance(batch, Mapping) else batch_input(batch))
                    state["batch"] = _batch_size(b)
                    state["take"] = min(state["batch"], max_samples - seen)
                    state["paths"] = set()
                    parent_calls.clear()
                    watcher.reset()
                    with watcher:
                        run_batch(model, batch, forward, model_kwargs)
                    with watcher.pause():
                        add_observed()
                    seen += state["take"]
                    if seen >= max_samples:
                        break
            bar.close()
    finally:
        for module, flag in records.items():
            module.record = flag
        watcher.reset()
    result = Captures(n_samples=seen)
    for path in order:
        if blocks is not None and not _wanted(path, pieces[path][0], blocks):
            continue
        result[path] = _merge(pieces[path], out_device)
    if missing_error is not None and not result:
        raise missing_error
    result.failures = {p: r for p, r in failures.items() if not any(
        under(q, p) for q in result)}
    if not result:
        result.reason = _nothing_found(model, found, failures, blocks)
    return result


def _wanted(path: str, cap: Capture, blocks: Sequence[str | type]) -> bool:
    return any((isinstance(b, str) and b == path)
               or (isinstance(b, type) and isinstance(cap.module, b)) for b in blocks)


#: where the how-to for models the toolkit does not read is documented
HOWTO = "docs/howto-analyse-your-model.md (adapters and recognizers)"
_ATTENTION_WORDS = ("attn", "attention", "nonlocal", "non_local", "selfattn", "context",
                    "crisscross")


def _nothing_found(model: nn.Module, found: list, failures: dict[str, str],
                   blocks: Any) -> str:
    """Why nothing was captured: the modules that looked like attention and why each was not
    read, and where the how-to is."""
    if blocks is not None:
        return f"no module matches blocks={blocks!r}"
    if found:
        return ("nonlocal modules were found but none ran on these inputs: "
                + ", ".join(p for p, _, _ in found))
    lines = [f"{p}: {r}" for p, r in failures.items()]
    for path, m in model.named_modules():
        name = type(m).__name__.lower()
        if path and any(w in name for w in _ATTENTION_WORDS) and not any(
                path == p or path.startswith(p + ".") for p in failures):
            lines.append(f"{path} ({type(m).__name__}): no affinity over positions was applied "
                         "in its forward (watched: softmax, scaled_dot_product_attention, "
                         "normalized products)")
    head = ("no nonlocal module found (no graphfilters block, no recognized or adapted module, "
            "and no affinity over positions applied to values was seen in the forward pass)")
    listing = ("; looked like attention: " + "; ".join(lines[:12])) if lines else ""
    return f"{head}{listing}; see {HOWTO}"


def _mha_applied(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> list[Tensor]:
    """``nn.MultiheadAttention`` computes inside one opaque function: its applied attention is
    what it returns with ``need_weights=True, average_attn_weights=False`` on the same call."""
    kw = dict(kwargs)
    kw.update(need_weights=True, average_attn_weights=False)
    _, w = module(*args, **kw)
    if w is None:
        return []
    return [w.detach().unsqueeze(0) if w.dim() == 3 else w.detach()]   # unbatched (H, L, S)


def _cross_check(cap: Capture, applied: list[Tensor], module: nn.Module, batch: int,
                 what: str) -> tuple[float, str]:
    """A recognizer's affinity against the one the model applied (head averages), as the
    largest entry difference relative to the largest entry."""
    nh = getattr(module, "num_heads", None)
    nh = nh if isinstance(nh, int) else None
    try:                          # the model's samples (windows of one image are one sample)
        A_obs = applied_affinity(applied, batch, nh)[0]
    except ValueError:            # e.g. a sequence-first input: the capture's own samples
        A_obs = applied_affinity(applied, _affinity_batch(cap.affinity, batch), nh)[0]
    A_obs = A_obs.mean(1).double()
    A_rec = cap.dense_affinity(heads="mean").double()
    if tuple(A_obs.shape) != tuple(A_rec.shape):
        return float("inf"), (f"the recognizer's affinity has shape {tuple(A_rec.shape)}, the "
                              f"applied one {tuple(A_obs.shape)}")
    err = float((A_rec - A_obs).abs().max() / A_obs.abs().max().clamp_min(1e-300))
    return err, (f"max |A_recognized - A_applied| / max |A_applied| = {err:.1e} (the affinity "
                 f"the model applied: {what})")
