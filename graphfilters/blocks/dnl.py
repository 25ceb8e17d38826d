"""Disentangled non-local block (DNL, Yin et al. ECCV 2020) as a configuration of the unified
block."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import _validate as V
from ..graph import Affinity, DenseAffinity, LowRankAffinity, SumAffinity
from ..specs import BlockSpec, get_spec
from . import _utils as U
from ._convert import WeightMap, bn_map, conv_map, copy_weights, match_module
from .reference import DisentangledNonLocalRef
from .unified import GraphFilterNonlocal

__all__ = ["DisentangledNonLocal", "UnitAffinity"]


class DisentangledNonLocal(GraphFilterNonlocal):
    r"""Disentangled non-local block (Yin, Yao, Cao, Li, Zhang, Lin, Hu, ECCV 2020).

    .. math::

        M = \operatorname{softmax}_{row}\big(s(\Theta - \mu_\theta)(\Phi - \mu_\phi)^T\big)
        + \mathbf 1 \operatorname{softmax}(X w_m)^T, \qquad
        Y = X + \mathrm{BN}(D^{-1} M\, Z\, W_1 + b),

    a whitened pairwise softmax (SDPA, never ``N x N``) plus a rank-one unary term, with
    :math:`s = 1/(\tau\sqrt{C_s})` (``use_scale``) or :math:`1/\tau`. Rows of :math:`M` sum
    to 2, and the spec's ``rw`` normalization divides by that: so :math:`W_1` is **twice**
    the original ``conv_out`` weight (:meth:`from_reference` does the conversion).

    ``pairwise=`` replaces the whitened softmax by another table row's affinity (e.g.
    ``"snl"``) and adds the unary term to the *normalized* pairwise operator, with
    :math:`W_0 = 0`:

    .. math::

        Y = X + \rho\big(\mathrm{BN}\big((\hat A + \mathbf 1
        \operatorname{softmax}(X w_m)^T)\, Z\, W_1\big)\big),

    :math:`\hat A` the pairwise spec's normalized affinity. This is the ``dnl`` unit of the
    official SNL code (:mod:`graphfilters.official`), where :math:`\hat A` is SNL's
    :math:`D^{-1/2}\operatorname{sym}(M)D^{-1/2}` (CIFAR) or an unscaled softmax (ImageNet
    without ``--is_norm``). Here every unit owns its unary convolution ``unary`` (also a unit
    with ``shared_affinity=True``: the unary term is computed from the unit's own input), and
    the unit's spec has normalization ``none``, its affinity being the
    :class:`~graphfilters.graph.SumAffinity` of the normalized pairwise term and the rank-one
    unary term (what a :class:`~graphfilters.blocks.FilterRecord` stores).

    Parameters
    ----------
    in_channels : int
    inter_channels : int, optional
    temperature : float
        :math:`\tau` (0.05 in the authors' configs).
    use_scale : bool
    dim : {1, 2, 3}
    pairwise : str or BlockSpec, optional
        The pairwise term's table row (kernel, symmetrization, normalization; ``kernel=``,
        ``normalization=``, ``symmetrize=``, ``kernel_options=`` override it). ``None``
        (default): DNL's whitened softmax.

    Shapes
    ------
    - **input:** ``(B, C, *spatial)``; **output:** the same.

    Examples
    --------
    >>> import torch
    >>> block = DisentangledNonLocal(8)
    >>> block(torch.randn(2, 8, 4, 4)).shape
    torch.Size([2, 8, 4, 4])
    >>> unit = DisentangledNonLocal(8, pairwise="snl", bias=False)   # the official code's unit
    >>> unit.pairwise_normalization, unit.spec.normalization, sorted(unit.w)
    ('sym', 'none', ['1'])
    """

    @V.validate_params(
        {**{n: V.declared(GraphFilterNonlocal.__init__, n)
            for n in ("in_channels", "inter_channels", "dim")},
         "temperature": [V.POS_REAL], "use_scale": ["boolean"],
         "pairwise": [V.InstanceOf((str, BlockSpec), "a block name or a BlockSpec"), None]},
        valid=lambda: {"in_channels": 4, "dim": 1},
    )
    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        temperature: float = 0.05,
        use_scale: bool = True,
        dim: int = 2,
        pairwise: str | BlockSpec | None = None,
        **options: Any,
    ) -> None:
        if "spec" in options:
            raise TypeError("DisentangledNonLocal fixes its spec; use "
                            "GraphFilterNonlocal(spec=...)")
        self.pairwise_normalization: str | None = None
        if pairwise is not None:
            self._init_pairwise(in_channels, inter_channels, dim, pairwise, options)
            self.temperature, self.use_scale = None, None
            return
        cs = inter_channels if inter_channels is not None else max(in_channels // 2, 1)
        scale = 1.0 / temperature / (math.sqrt(cs) if use_scale else 1.0)
        options.setdefault("bias", True)
        super().__init__(in_channels, cs, dim=dim, spec="dnl", kernel_options={"scale": scale},
                         **options)
        self.temperature, self.use_scale = temperature, use_scale

    def _init_pairwise(self, in_channels: int, inter_channels: int | None, dim: int,
                       pairwise: str | BlockSpec, options: dict[str, Any]) -> None:
        over = {k: options.pop(k) for k in ("kernel", "normalization", "symmetrize")
                if options.get(k) is not None}
        for k in ("kernel", "normalization", "symmetrize"):
            options.pop(k, None)
        base = get_spec(pairwise, **over) if isinstance(pairwise, str) or over else pairwise
        if base.kernel in ("disentangled", "criss_cross", "taylor_rbf", "double_attention"):
            raise ValueError(
                f"pairwise={base.name!r} (kernel {base.kernel!r}) cannot carry the unary term; "
                "use a position-graph kernel (relu_dot, embedded_gaussian, dot_product, ...)"
            )
        if options.get("weight_constraint", "drop_order0") != "drop_order0":
            raise ValueError("the DNL unit has W_0 = 0 (weight_constraint='drop_order0')")
        options.pop("weight_constraint", None)
        if options.get("order", 1) != 1 or options.get("sub_sample", False):
            raise ValueError("the DNL unit is an order-1 filter without sub-sampling")
        options.pop("order", None)
        spec = get_spec(base, normalization="none", weight_constraint="drop_order0", order=1,
                        basis="chebyshev")
        options.setdefault("bias", True)
        super().__init__(in_channels, inter_channels, dim=dim, spec=spec, **options)
        self.pairwise_normalization = base.normalization
        self.unary = U.conv1x1(self.dim, self.in_channels, 1, bias=self.bias_projections)
        self.unary.reset_parameters()

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.pairwise_normalization is not None:
            text += (f", pairwise_normalization={self.pairwise_normalization}, "
                     "unary=after_normalization")
        return text

    def forward(self, x: Tensor, affinity: Affinity | None = None, **kwargs: Any):
        """As :meth:`GraphFilterNonlocal.forward`; with ``pairwise=``, ``affinity`` (raw, as a
        stage passes it) is normalized by the pairwise spec and the unary term of this
        unit's input is added."""
        if self.pairwise_normalization is None:
            return super().forward(x, affinity, **kwargs)
        U.check_input(x, self.dim, self.in_channels, type(self).__name__)
        if affinity is None:
            affinity = self.compute_affinity(x)
        elif not isinstance(affinity, Affinity):
            raise TypeError(
                "affinity must be a graphfilters.graph.Affinity (e.g. from compute_affinity), "
                f"got {type(affinity).__name__}"
            )
        if not isinstance(affinity, UnitAffinity):       # a raw (stage) affinity
            affinity = self.unit_affinity(x, affinity)
        return super().forward(x, affinity, **kwargs)

    def unit_affinity(self, x: Tensor, affinity: Affinity) -> Affinity:
        r""":math:`\hat A + \mathbf 1 \operatorname{softmax}(X w_m)^T` for the raw pairwise
        ``affinity`` and this unit's input ``x`` (``pairwise=`` blocks only).

        Shapes
        ------
        ``x``: ``(B, C, *spatial)``; the result is ``(B, N, N)`` (structured).

        Returns
        -------
        UnitAffinity
            Passed back to :meth:`forward` (e.g. held fixed by an analysis), it is used as is.
        """
        if self.pairwise_normalization is None:
            raise ValueError("unit_affinity needs a block built with pairwise=")
        pair = _normalized_as_affinity(affinity, self.pairwise_normalization)
        u = torch.softmax(self.unary(x).flatten(1), dim=-1)            # (B, N)
        ones = torch.ones_like(u)[..., None]
        return UnitAffinity([pair, LowRankAffinity(ones, u[..., None], check=False)])

    @staticmethod
    def reference_map(ref: DisentangledNonLocalRef) -> WeightMap:
        """``(unified, reference, scale)`` entries relating this block to ``ref``."""
        return (
            conv_map("g", "g", True) + conv_map("theta", "theta", True)
            + conv_map("phi", "phi", True) + conv_map("unary", "conv_mask", True)
            + [("w.1", "conv_out.weight", 2.0), ("bias", "conv_out.bias", 1.0)]
            + bn_map("norm", "bn")
        )

    @classmethod
    def from_reference(cls, ref: DisentangledNonLocalRef) -> DisentangledNonLocal:
        """The unified block computing exactly what ``ref`` computes (weights copied)."""
        block = cls(ref.in_channels, ref.inter_channels, temperature=ref.temperature,
                    use_scale=ref.use_scale, dim=ref.dim)
        copy_weights(match_module(block, ref), ref.state_dict(), cls.reference_map(ref))
        return block.train(ref.training)


class UnitAffinity(SumAffinity):
    r"""The affinity of a :class:`DisentangledNonLocal` unit built with ``pairwise=``: the
    normalized pairwise term plus the unary term, :math:`\hat A + \mathbf 1 u^T` (a
    :class:`~graphfilters.graph.SumAffinity`; normalization ``none``)."""

    def _map(self, fn):
        return UnitAffinity([t._map(fn) for t in self.terms])


def _normalized_as_affinity(affinity: Affinity, kind: str) -> Affinity:
    """The normalized operator of ``affinity`` as an :class:`Affinity` (structured when the
    affinity is low rank or already row-stochastic)."""
    op = affinity.normalized(kind)
    if op.left is None and op.right is None and op.factor == 1.0:
        return affinity
    if isinstance(affinity, LowRankAffinity) and op.factor == 1.0:
        return affinity.scaled(op.left, op.right)
    return DenseAffinity(op.dense(), check=False)
