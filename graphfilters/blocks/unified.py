r"""The unified nonlocal block: a graph filter on the affinity graph.

Every nonlocal block of :mod:`graphfilters.specs` is a configuration of
:class:`GraphFilterNonlocal` (its basis, polynomial or rational, from
:mod:`graphfilters.filters`); :class:`~graphfilters.blocks.stage.NonlocalStage` shares one
affinity between several of them. This module imports no other block module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from .. import _validate as V
from .. import kernels
from .._warnings import external_stacklevel
from ..filters import GraphOperator, filter_sum, get_filter
from ..graph import Affinity, DenseAffinity, LowRankAffinity, NormalizedOperator
from ..specs import BlockSpec, get_spec
from . import _utils as U
from .record import FilterRecord, OutputAffine

__all__ = ["GraphFilterNonlocal", "OUT_NORMS", "KERNEL_OPTIONS"]

#: Output normalizations: ``batch`` (BatchNorm, zero-initialized scale), ``gamma`` (a learned
#: scalar, zero-initialized; CCNet), ``none``.
OUT_NORMS = ("batch", "gamma", "none")
#: Options each kernel accepts in ``kernel_options`` (with their defaults), from the kernel
#: registry :data:`graphfilters.kernels.BLOCK_KERNELS`.
KERNEL_OPTIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: MappingProxyType(dict(k.options)) for name, k in kernels.BLOCK_KERNELS.items()}
)
#: Kernels whose keys may be sub-sampled (the NL family).
_SUBSAMPLE_KERNELS = tuple(n for n, k in kernels.BLOCK_KERNELS.items() if k.subsample)


class GraphFilterNonlocal(nn.Module):
    r"""Nonlocal block as a Chebyshev graph filter on the affinity graph.

    .. math::

        Y = X + \rho\Big(\operatorname{Norm}\Big(\sum_{k=0}^{K} B_k(\sigma \hat A)\,
        Z\, W_k + b\Big)\Big), \qquad Z = g(X),\quad \hat A = \operatorname{norm}(
        \kappa(\theta(X), \phi(X))),

    in the affinity form of :mod:`graphfilters.specs`: :math:`\kappa` the kernel, ``norm`` the
    normalization (``sym``: :math:`D^{-1/2} M D^{-1/2}`, ``rw``: :math:`D^{-1}M`, ``size``:
    :math:`M/N`, ``none``), :math:`B_k` the basis of the spec (a family of
    :mod:`graphfilters.filters`: the Chebyshev polynomials :math:`T_k` by default, the
    stable-hypothesis basis with :math:`B_2 = 2\hat A - I`, monomials, or the rational
    Cayley and ARMA bases with learned parameters, :meth:`filter_parameters`), :math:`W_k \in
    \mathbb R^{C_s \times C}` with the spec's constraint (``free``; ``drop_order0``:
    :math:`W_0 = 0`; ``tied``: :math:`W_0 = -W_1`). ``Norm`` is a BatchNorm whose scale starts
    at zero (or CCNet's :math:`\gamma`), so a fresh block is the identity; :math:`\rho` is a
    ReLU if ``relu_after_norm`` (the official SNL classification code).

    ``sign = -1`` is the segmentation-head variant of the official SNL code: the weight of
    term ``k`` is multiplied by :math:`(-1)^k` (for order 1, :math:`F = ZW_0 - \hat A Z W_1`);
    for the Chebyshev basis this is the filter of the scaled Laplacian
    :math:`\tilde L = -\hat A`, i.e. the Laplacian form. :meth:`filter_weights` returns the
    weights with the sign folded in.

    The affinity is never formed as an ``N x N`` matrix for the low-rank kernels (ReLU-dot,
    dot product, A², CGNL: :class:`~graphfilters.graph.LowRankAffinity`), the softmax kernels
    (:class:`~graphfilters.graph.SoftmaxAffinity`: ``scaled_dot_product_attention``) and
    criss-cross attention (:class:`~graphfilters.criss_cross.CrissCrossAffinity`), unless
    ``materialize=True`` or ``return_affinity=True``. Only the concatenation kernel (and a
    symmetrized softmax) are dense.

    Parameters
    ----------
    in_channels : int
        ``C``.
    inter_channels : int, optional
        ``C_s``, channels of ``Z = g(X)``; default ``C // 2``.
    order, kernel, laplacian, symmetrize, weight_constraint : optional
        Override the fields of ``spec`` (``None``: the spec's value). ``order`` is the
        polynomial degree ``K`` (``K + 1`` terms).
    shared_affinity : bool, optional
        ``True``: the block has no ``θ``/``φ`` and uses the affinity passed to
        :meth:`forward` (a unit of a :class:`NonlocalStage`). ``None``/``False``: it
        computes its own.
    dim : {1, 2, 3}
        Inputs ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, T, H, W)``.
    sub_sample : bool
        Max-pool the keys (``φ`` and ``Z``) by 2 over space (NL). Needs an order-1 filter
        with ``W_0 = 0`` (the affinity is then ``N x N/4``, not a graph).
    out_norm : {"batch", "gamma", "none"}, optional
        Default from the spec's ``output``.
    relu_after_norm : bool
    sign : {+1, -1}
    spec : str or BlockSpec, optional
        A table row (default ``"snl"``); see :meth:`from_spec`.
    normalization, basis : str, optional
        Override the spec's.
    affinity_channels : int, optional
        Channels of ``θ`` and ``φ`` (A²: the number of descriptors); default ``C_s``.
    groups : int
        Grouped output weights (block-diagonal ``W_k``); for the ``taylor_rbf`` kernel also
        the channel groups of CGNL's channel×position graph.
    bias : bool
        Biases of the 1×1 projections.
    out_bias : bool, optional
        A bias ``b`` after the filter (default: ``bias``).
    out_projection : bool
        ``False``: no learned ``W_k`` (every free ``W_k = I``; needs ``C_s = C``), as in
        CCNet.
    kernel_options : mapping, optional
        See :data:`KERNEL_OPTIONS` (e.g. ``{"scale": "sqrt"}`` for softmax kernels,
        ``{"taylor_order": 3, "gamma": 0.5}`` for ``taylor_rbf``).
    materialize : bool
        Default of :meth:`forward`'s ``materialize``.
    solver_tol, solver_max_iter : optional
        Relative tolerance (default 1e-12 in float64, 1e-6 otherwise) and iteration cap of
        the iterative shifted solves of rational bases (Cayley, ARMA) on affinities that are
        not low rank; see :class:`~graphfilters.filters.GraphOperator` for the convergence
        condition :math:`|c|\,\|\hat A\|_\infty < 1`, checked at run time.

    Attributes
    ----------
    spec : BlockSpec
        The configuration actually used.
    record : bool
        If ``True``, each forward stores a :class:`~graphfilters.blocks.FilterRecord` in
        ``last_record``.

    Shapes
    ------
    - **input:** ``(B, C, *spatial)`` with ``len(spatial) = dim``
    - **output:** same as the input; with ``return_affinity=True`` also :math:`\hat A`,
      ``(B, N, N)`` with ``N = prod(spatial)`` (``(B, N, N_keys)`` with sub-sampled keys;
      ``(B, G, C_s N / G, C_s N / G)`` for CGNL's channel×position graph).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.blocks import GraphFilterNonlocal
    >>> block = GraphFilterNonlocal(16, spec="gsnl")
    >>> block
    GraphFilterNonlocal(
      block=gsnl, in_channels=16, inter_channels=8, kernel=relu_dot, ...
    )
    >>> x = torch.randn(2, 16, 8, 8)
    >>> torch.equal(block(x), x)                        # identity at initialization
    True
    >>> [tuple(w.shape) for w in block.filter_weights()]
    [(8, 16), (8, 16), (8, 16)]
    """

    @V.validate_params(
        {"in_channels": [V.POS_INT], "inter_channels": [V.POS_INT, None],
         "order": [V.NONNEG_INT, None], "symmetrize": ["boolean", None],
         "shared_affinity": ["boolean", None], "dim": [V.Options(int, (1, 2, 3))],
         "sub_sample": ["boolean"], "out_norm": [V.StrOptions(OUT_NORMS), None],
         "relu_after_norm": ["boolean"], "sign": [V.Options(int, (1, -1))],
         "affinity_channels": [V.POS_INT, None], "groups": [V.POS_INT], "bias": ["boolean"],
         "out_bias": ["boolean", None], "out_projection": ["boolean"],
         "kernel_options": [V.MAPPING, None],
         "materialize": ["boolean"], "solver_tol": [V.POS_REAL, None],
         "solver_max_iter": [V.POS_INT]},
        valid=lambda: {"in_channels": 4},
    )
    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        order: int | None = None,
        kernel: str | None = None,
        laplacian: str | None = None,
        symmetrize: bool | None = None,
        weight_constraint: str | None = None,
        shared_affinity: bool | None = None,
        dim: int = 2,
        sub_sample: bool = False,
        out_norm: str | None = None,
        relu_after_norm: bool = False,
        sign: int = 1,
        *,
        spec: str | BlockSpec | None = None,
        normalization: str | None = None,
        basis: str | None = None,
        affinity_channels: int | None = None,
        groups: int = 1,
        bias: bool = False,
        out_bias: bool | None = None,
        out_projection: bool = True,
        kernel_options: Mapping[str, Any] | None = None,
        materialize: bool = False,
        solver_tol: float | None = None,
        solver_max_iter: int = 2000,
    ) -> None:
        super().__init__()
        self.spec = _resolve_spec(
            spec, order=order, kernel=kernel, laplacian=laplacian, symmetrize=symmetrize,
            weight_constraint=weight_constraint, normalization=normalization, basis=basis,
        )
        s = self.spec
        self.dim = int(dim)
        self.in_channels = C = int(in_channels)
        default_cs = C if not out_projection else max(C // 2, 1)
        self.inter_channels = Cs = default_cs if inter_channels is None else int(inter_channels)
        self.affinity_channels = Ca = Cs if affinity_channels is None else int(affinity_channels)
        self.groups = int(groups)
        if Cs % self.groups or C % self.groups:
            raise ValueError(
                f"groups={groups} must divide inter_channels={Cs} and in_channels={C}"
            )
        self.block_kernel = kernels.BLOCK_KERNELS[s.kernel]
        if self.block_kernel.channel_nodes and Ca != Cs:
            raise ValueError(
                "the taylor_rbf kernel (CGNL) puts theta, phi and Z on the same channel x "
                f"position nodes: affinity_channels ({Ca}) must equal inter_channels ({Cs})"
            )
        self.shared_affinity = bool(shared_affinity)
        self.sub_sample = bool(sub_sample)
        if self.sub_sample:
            if s.kernel not in _SUBSAMPLE_KERNELS:
                raise ValueError(
                    f"sub_sample=True is only available for the kernels {_SUBSAMPLE_KERNELS} "
                    f"(NL), not {s.kernel!r}"
                )
            if s.order != 1 or s.weight_constraint != "drop_order0":
                raise ValueError(
                    "sub_sample=True makes the affinity N x N/4 (keys pooled), which is not a "
                    "graph: only the order-1 filter with W_0 = 0 (weight_constraint="
                    f"'drop_order0') is defined; got order {s.order}, constraint "
                    f"{s.weight_constraint!r}"
                )
        self.family = get_filter(s.basis)
        #: B_0 = 1, B_1(S) = S: an order-1 filter Z W_0 + S Z W_1 may fold W_1 (see _filter)
        self._first_order_is_operator = self.family.first_order_is_operator()
        if sign == -1 and self.family.kind != "polynomial":
            raise ValueError(
                f"sign=-1 (weights times (-1)^k, the Laplacian form of a Chebyshev filter) is "
                f"defined for polynomial bases, not {s.basis!r}"
            )
        if self.sub_sample and self.family.kind != "polynomial":
            raise ValueError(
                f"sub_sample=True needs a polynomial basis, got {s.basis!r} (a rational filter "
                "solves (I - c A) Y = Z, which needs a square affinity)"
            )
        self.out_norm = {"batchnorm": "batch"}.get(s.output, s.output) if out_norm is None \
            else out_norm
        self.relu_after_norm = bool(relu_after_norm)
        self.sign = int(sign)
        self.out_projection = bool(out_projection)
        if not self.out_projection and (Cs != C or self.groups != 1):
            raise ValueError(
                "out_projection=False (W_k = I, as in CCNet) needs inter_channels == in_channels "
                f"and groups == 1, got inter_channels={Cs}, in_channels={C}, groups={groups}"
            )
        self.kernel_options = _resolve_kernel_options(s.kernel, kernel_options)
        self.materialize = bool(materialize)
        self.solver_tol = None if solver_tol is None else float(solver_tol)
        self.solver_max_iter = int(solver_max_iter)
        self.bias_projections = bool(bias)
        out_bias = self.bias_projections if out_bias is None else bool(out_bias)

        d = self.dim
        self.theta: nn.Module | None = None
        self.phi: nn.Module | None = None
        self.unary: nn.Module | None = None
        self.concat_weight: nn.Parameter | None = None
        needs = () if self.shared_affinity else self.block_kernel.projections
        if "theta" in needs:
            self.theta = U.conv1x1(d, C, Ca, bias=self.bias_projections)
        if "phi" in needs:
            self.phi = U.conv1x1(d, C, Ca, bias=self.bias_projections)
        if "concat" in needs:
            self.concat_weight = nn.Parameter(torch.empty(2 * Ca))
        if "unary" in needs:
            self.unary = U.conv1x1(d, C, 1, bias=self.bias_projections)
        self.g = U.conv1x1(d, C, Cs, bias=self.bias_projections)
        self.w = nn.ParameterDict()
        if self.out_projection:
            for k in s.free_orders:
                self.w[str(k)] = nn.Parameter(torch.empty(C, Cs // self.groups))
        #: Unconstrained parameters of a rational basis (Cayley zoom, ARMA poles).
        self.filter_params = nn.ParameterDict({
            k: nn.Parameter(torch.empty(shape))
            for k, shape in self.family.parameter_shapes(s.order).items()
        })
        self.bias = nn.Parameter(torch.empty(C)) if out_bias else None
        self.norm = U.batch_norm(d, C) if self.out_norm == "batch" else None
        self.gamma = nn.Parameter(torch.zeros(1)) if self.out_norm == "gamma" else None
        self.pool = U.max_pool(d) if self.sub_sample else None
        self.record = False
        self.last_record: FilterRecord | None = None
        self.reset_parameters()

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_spec(
        cls, spec: str | BlockSpec, in_channels: int, **options: Any
    ) -> GraphFilterNonlocal:
        """The block of a table row: ``spec`` decides kernel, normalization, order,
        constraint and basis; ``options`` are the other constructor arguments.

        Examples
        --------
        >>> from graphfilters.specs import get_spec
        >>> GraphFilterNonlocal.from_spec(get_spec("snl", order=3), 8).spec.n_terms
        4
        """
        if "spec" in options:
            raise TypeError("from_spec got spec twice")
        return cls(in_channels, spec=spec, **options)

    def reset_parameters(self) -> None:
        """Default initialization; the output normalization's scale (or ``γ``) is zero, so
        the block is the identity until trained."""
        for conv in (self.theta, self.phi, self.unary, self.g):
            if conv is not None:
                conv.reset_parameters()
        if self.concat_weight is not None:
            bound = 1.0 / math.sqrt(self.concat_weight.numel())
            nn.init.uniform_(self.concat_weight, -bound, bound)
        for w in self.w.values():
            U.kaiming_(w)
        with torch.no_grad():
            for k, v in self.family.initial_parameters(self.spec.order).items():
                self.filter_params[k].copy_(torch.as_tensor(v))
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if self.norm is not None:
            self.norm.reset_running_stats()
            nn.init.zeros_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)
        if self.gamma is not None:
            nn.init.zeros_(self.gamma)
        self.last_record = None

    def extra_repr(self) -> str:
        s = self.spec
        parts = [
            f"block={s.name}" + (f"[{s.mode}]" if s.mode else ""),
            f"in_channels={self.in_channels}",
            f"inter_channels={self.inter_channels}",
            f"kernel={s.kernel}",
            f"normalization={s.normalization}",
            f"order={s.order}",
            f"constraint={s.weight_constraint}",
        ]
        if s.basis != "chebyshev":
            parts.append(f"basis={s.basis}")
        for k, v in self.filter_parameters().items():
            vals = ", ".join(f"{float(t):.3g}" for t in v.detach().reshape(-1))
            parts.append(f"{k}=[{vals}]" if v.ndim else f"{k}={vals}")
        if self.affinity_channels != self.inter_channels:
            parts.append(f"affinity_channels={self.affinity_channels}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        parts += [f"dim={self.dim}", f"out_norm={self.out_norm}"]
        if self.relu_after_norm:
            parts.append("relu_after_norm=True")
        if self.sign != 1:
            parts.append("sign=-1")
        if self.sub_sample:
            parts.append("sub_sample=True")
        if self.shared_affinity:
            parts.append("shared_affinity=True")
        return ", ".join(parts)

    # ------------------------------------------------------------------------------------
    def _weight_matrix(self, k: int) -> Tensor:
        """Free weight of order ``k`` as a ``(C_s, C)`` matrix (block-diagonal if grouped)."""
        if not self.out_projection:
            return torch.eye(self.inter_channels, dtype=self.g.weight.dtype,
                             device=self.g.weight.device)
        w = self.w[str(k)]                                  # (C, C_s / G)
        if self.groups == 1:
            return w.t()
        co = self.in_channels // self.groups
        return torch.block_diag(*[w[i * co:(i + 1) * co].t() for i in range(self.groups)])

    def filter_weights(self) -> list[Tensor]:
        r"""The ``n_terms`` weights :math:`W_k` (``K + 1`` for polynomial bases) of shape
        ``(C_s, C)`` in the affinity form.

        Constraints applied (zeros for a dropped term, :math:`W_0 = -W_1` when tied), the
        ``sign`` folded in (:math:`(-1)^k`), grouped weights expanded (block-diagonal).
        Differentiable (they are functions of the parameters).
        """
        s = self.spec
        free = {k: self._weight_matrix(k) for k in s.free_orders}
        out = []
        for k in range(s.n_terms):
            if k in free:
                w = free[k]
            elif s.weight_constraint == "tied":
                w = -free[1]
            else:
                w = torch.zeros_like(free[min(free)])
            out.append(-w if (self.sign == -1 and k % 2 == 1) else w)
        return out

    def filter_parameters(self) -> dict[str, Tensor]:
        r"""The constrained parameters of the basis (Cayley zoom :math:`h > 0`, ARMA poles
        :math:`|\psi_k| < 0.95`); empty for polynomial bases. Differentiable."""
        if not self.filter_params:
            return {}
        return self.family.constrain(dict(self.filter_params))

    def graph_operator(self, op: NormalizedOperator, dense: Tensor | None = None) -> GraphOperator:
        """The operator the filter acts on: dense if ``dense`` is given, Woodbury for low-rank
        affinities, iterative shifted solves otherwise."""
        return GraphOperator.from_normalized(op, dense=dense, tol=self.solver_tol,
                                             max_iter=self.solver_max_iter)

    # ------------------------------------------------------------------------------------
    def _nodes_to_graph(self, z: Tensor) -> Tensor:
        """CGNL: ``(B, N, C_s)`` → ``(B, G, C_s/G · N, 1)`` channel-major scalar nodes."""
        if not self.block_kernel.channel_nodes:
            return z
        b, n, c = z.shape
        return z.transpose(1, 2).reshape(b, self.groups, (c // self.groups) * n, 1)

    def _graph_to_nodes(self, t: Tensor, n: int) -> Tensor:
        if not self.block_kernel.channel_nodes:
            return t
        b = t.shape[0]
        return t.reshape(b, self.inter_channels, n).transpose(1, 2)

    def _project(self, x: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
        """Node signals ``(B, N, c)`` of the 1×1 projections ``names`` (of ``theta``, ``phi``,
        ``unary``, ``g``), computed by one matmul; with sub-sampling, ``phi`` and ``g`` are
        max-pooled over space (keys)."""
        mods = [(n, getattr(self, n)) for n in names if getattr(self, n) is not None]
        if not mods:
            return {}
        if self.pool is not None:
            return {n: U.to_nodes(self.pool(m(x)) if n in ("phi", "g") else m(x))
                    for n, m in mods}
        weight = torch.cat([m.weight.reshape(m.out_channels, -1) for _, m in mods])
        xf = x.flatten(2)                         # (B, C, N)
        y = torch.bmm(weight.expand(xf.shape[0], *weight.shape), xf)   # (B, total, N)
        if self.bias_projections:
            y = y + torch.cat([m.bias for _, m in mods])[:, None]
        sizes = [m.out_channels for _, m in mods]
        stack = len(mods) > 1 and mods[0][0] == "theta" and mods[1][0] == "phi"
        if stack:   # [theta, phi] as one (B, N, 2 C_a) part: a kernel on both needs no cat
            sizes = [sizes[0] + sizes[1], *sizes[2:]]
        parts = list(y.split(sizes, dim=1))              # one split: one gradient, no zeros
        out: dict[str, Tensor] = {}
        if stack:
            tp = parts.pop(0)
            out["theta_phi"] = tp.transpose(1, 2)
            parts = [*tp.split([mods[0][1].out_channels, mods[1][1].out_channels], dim=1),
                     *parts]
        out.update((n, t.transpose(1, 2)) for (n, _), t in zip(mods, parts))  # (B, N, c) views
        return out

    def compute_affinity(self, x: Tensor) -> Affinity:
        r"""The raw affinity :math:`M` of ``x`` (symmetrized if the spec says so), structured.

        Returns a :class:`~graphfilters.graph.Affinity`; ``operator(affinity)`` gives
        :math:`\hat A`.
        """
        U.check_input(x, self.dim, self.in_channels, type(self).__name__, self)
        self._require_own_affinity()
        return self._affinity(x, self._project(x, ("theta", "phi", "unary")))

    def _require_own_affinity(self) -> None:
        if self.shared_affinity:
            raise ValueError(
                f"this {type(self).__name__} is a unit with shared_affinity=True: it has no "
                "theta/phi; pass affinity= (its NonlocalStage computes it from the stage input)"
            )

    def _affinity(self, x: Tensor, proj: dict[str, Tensor]) -> Affinity:
        s = self.spec
        xn = xk = None
        if "theta" not in self.block_kernel.projections:     # kernels on the input itself
            xn = U.to_nodes(x)
            xk = xn if self.pool is None else U.to_nodes(self.pool(x))
        unary = proj.get("unary")
        inputs = kernels.KernelInputs(
            theta=proj.get("theta"), phi=proj.get("phi"), x=xn, x_keys=xk,
            unary=None if unary is None else unary[..., 0],
            concat_weight=self.concat_weight, spatial=tuple(x.shape[2:]), groups=self.groups,
            normalization=s.normalization, theta_phi=proj.get("theta_phi"),
        )
        aff = self.block_kernel.build(inputs, **self.kernel_options)
        if s.symmetrize:
            aff = _symmetrized(aff)
        return aff

    def operator(self, affinity: Affinity) -> NormalizedOperator:
        r"""The normalized operator :math:`\hat A` of ``affinity`` (spec's normalization)."""
        return affinity.normalized(self.spec.normalization)

    def forward(
        self,
        x: Tensor,
        affinity: Affinity | None = None,
        *,
        return_affinity: bool = False,
        materialize: bool | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Apply the block.

        Parameters
        ----------
        x : Tensor ``(B, C, *spatial)``
        affinity : Affinity, optional
            Use this (raw) affinity instead of computing one from ``x`` (stages).
        return_affinity : bool
            Also return the normalized operator :math:`\hat A` actually used, as a dense
            tensor (this forms it).
        materialize : bool, optional
            Apply :math:`\hat A` as a dense matrix (reference path; equal to the structured
            one). Default: the constructor's ``materialize``.
        """
        owner = type(self).__name__
        U.check_input(x, self.dim, self.in_channels, owner, self, finite=False)
        try:
            y, dense = self._forward(x, affinity, return_affinity, materialize, owner)
        except ValueError:
            # a NaN/Inf input or parameter: say so, not what it broke
            U.check_finite_input(x, owner)
            U.check_finite_parameters(self, owner)
            raise
        return (y, dense) if return_affinity else y

    def _forward(self, x: Tensor, affinity: Affinity | None, return_affinity: bool,
                 materialize: bool | None, owner: str) -> tuple[Tensor, Tensor | None]:
        spatial = tuple(x.shape[2:])
        n = U.numel(spatial)
        if affinity is None:
            self._require_own_affinity()
            proj = self._project(x, ("theta", "phi", "unary", "g"))
            affinity = self._affinity(x, proj)
        elif not isinstance(affinity, Affinity):
            raise TypeError(
                "affinity must be a graphfilters.graph.Affinity (e.g. from compute_affinity), "
                f"got {type(affinity).__name__}"
            )
        else:
            proj = self._project(x, ("g",))
        op = self.operator(affinity)
        mat = self.materialize if materialize is None else bool(materialize)
        dense = op.dense() if (mat or return_affinity) else None
        apply = self.graph_operator(op, dense if mat else None)
        z = proj["g"]                                         # (B, N_keys, C_s)
        pre = self._filter(apply, z, n, op)                   # (B, C, N), channels first
        # NaN/Inf input: the small low-rank reduction (D^{-1/2}[P, Q]^T Z for SNL, Q^T Z, or
        # the Woodbury V^T Z) shows it, no scan of x; other operators scan x once
        probe = None if mat else (op.reduced if op.reduced is not None else apply.reduced)
        U.check_finite_folded(x, probe, owner, self)
        if self.bias is not None:
            pre = pre + self.bias[:, None]
        out = pre.reshape(*pre.shape[:2], *spatial)
        if self.norm is not None:
            out = self.norm(out)
        elif self.gamma is not None:
            out = self.gamma * out
        if self.relu_after_norm:
            out = torch.relu(out)
        y = x + out
        if self.record:
            self.last_record = self._make_record(x, affinity, z, pre.detach())
        return y, dense

    def _filter(self, apply: GraphOperator, z: Tensor, n: int,
                op: NormalizedOperator | None = None) -> Tensor:
        s = self.spec
        if (op is not None and apply.dense is None and s.order == 1 and self.out_projection
                and self._first_order_is_operator and not self.sub_sample
                and not self.block_kernel.channel_nodes and op.fused):
            # Z W_0 + (A Z) W_1 with W_1 folded into the low-rank factor (SNL): two products
            # with N rows, the second accumulated into the first
            weights = self.filter_weights()
            zt = z.transpose(1, 2)                                       # (B, C_s, N)
            pre = op.matmul_weighted_t(z, weights[1])                    # (B, C, N)
            if s.weight_constraint == "drop_order0":
                return pre
            return torch.baddbmm(pre, weights[0].t().expand(zt.shape[0], -1, -1), zt)
        if self.sub_sample:
            terms = [None, apply(z)]
        else:
            zg = self._nodes_to_graph(z)
            terms = (self._graph_to_nodes(t, n) for t in
                     self.family.iter_terms(apply, zg, s.order, self.filter_parameters()))
        if not self.out_projection:          # every W_k is +-I (or 0): scalar weights
            weights = [None] * s.n_terms
            for k in range(s.n_terms):
                if k == 0 and s.weight_constraint == "drop_order0":
                    continue
                c = -1.0 if (k == 0 and s.weight_constraint == "tied") else 1.0
                weights[k] = -c if (self.sign == -1 and k % 2 == 1) else c
        else:
            # sum_k W_k^T B_k(A) Z^T: the output comes out channels-first, as BN wants it
            weights = self.filter_weights()
            if s.weight_constraint == "drop_order0":
                weights[0] = None
        return filter_sum(terms, weights, channels_first=True)

    # ------------------------------------------------------------------------------------
    def output_affine(self, pre: Tensor) -> OutputAffine:
        """Effective per-channel ``(scale, shift)`` of the output normalization for the
        pre-normalization signal ``pre`` ``(B, C, N)`` (bias included), detached."""
        C = self.in_channels
        with torch.no_grad():
            b = self.bias.detach() if self.bias is not None else pre.new_zeros(C)
            if self.norm is not None:
                bn = self.norm
                use_batch = bn.training or bn.running_mean is None
                if use_batch:
                    mean = pre.mean(dim=(0, 2))
                    var = pre.var(dim=(0, 2), unbiased=False)
                else:
                    mean, var = bn.running_mean, bn.running_var
                w = bn.weight if bn.weight is not None else pre.new_ones(C)
                beta = bn.bias if bn.bias is not None else pre.new_zeros(C)
                scale = w / torch.sqrt(var + bn.eps)
                shift = beta - mean * scale
            elif self.gamma is not None:
                scale = self.gamma.expand(C).clone()
                shift = pre.new_zeros(C)
            else:
                scale, shift = pre.new_ones(C), pre.new_zeros(C)
            return OutputAffine(scale.detach().clone(), (shift + scale * b).detach().clone())

    def _make_record(self, x: Tensor, affinity: Affinity, z: Tensor, pre: Tensor) -> FilterRecord:
        with torch.no_grad():
            weights = [w.detach().clone() for w in self.filter_weights()]
        info = {
            "node_layout": "channel_position" if self.block_kernel.channel_nodes else "position",
            "groups": self.groups,
            "sign": self.sign,
            "sub_sampled": self.sub_sample,
        }
        return FilterRecord(
            spec=self.spec,
            affinity=affinity.detach(),
            normalization=self.spec.normalization,
            z=z.detach(),
            weights=weights,
            spatial_shape=tuple(x.shape[2:]),
            input=x.detach(),
            output_scale=self.output_affine(pre),
            relu_after_norm=self.relu_after_norm,
            info=info,
            params={k: v.detach().clone() for k, v in self.filter_parameters().items()},
        )


def _symmetrized(aff: Affinity) -> Affinity:
    """``sym(M)``: structured for low-rank affinities, dense otherwise."""
    if isinstance(aff, LowRankAffinity):
        return aff if aff.symmetric else aff.symmetrized()
    M = aff.dense()
    return DenseAffinity((M + M.transpose(-1, -2)) / 2, check=False)


def _resolve_spec(spec: str | BlockSpec | None, **overrides: Any) -> BlockSpec:
    base = "snl" if spec is None else spec
    if isinstance(base, str):
        base = get_spec(base)
    if not isinstance(base, BlockSpec):
        raise TypeError(
            f"spec must be a block name or a BlockSpec, got {type(spec).__name__}"
        )
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "order" in changes:
        V.integer(changes["order"], "order", minimum=0)     # the degree K: K + 1 terms
    if "kernel" in changes and changes["kernel"] != base.kernel and base.mode is not None:
        changes["mode"] = None
    return get_spec(base, **changes) if changes else base


def _resolve_kernel_options(kernel: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    allowed = dict(KERNEL_OPTIONS[kernel])
    given = dict(options or {})
    unknown = set(given) - set(allowed)
    if unknown:
        raise ValueError(
            f"unknown kernel option(s) {sorted(unknown)} for kernel {kernel!r}; it accepts "
            f"{sorted(allowed) or 'none'}"
        )
    allowed.update(given)
    return allowed


def __getattr__(name: str) -> object:
    """``ChebyshevNonlocal``, the earlier name of :class:`GraphFilterNonlocal` (it also runs
    Cayley and ARMA filters), still importable with a ``DeprecationWarning``."""
    if name == "ChebyshevNonlocal":
        import warnings

        warnings.warn("ChebyshevNonlocal is now GraphFilterNonlocal (it runs every filter "
                      "family, not only Chebyshev polynomials)", DeprecationWarning,
                      stacklevel=external_stacklevel())
        return GraphFilterNonlocal
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
