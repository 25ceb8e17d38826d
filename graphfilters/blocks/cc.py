"""Criss-cross attention (CCNet, Huang et al. ICCV 2019) as a configuration of the unified
block."""

from __future__ import annotations

from typing import Any

from .. import _validate as V
from ._convert import WeightMap, conv_map, copy_weights, match_module
from .reference import CrissCrossRef
from .unified import GraphFilterNonlocal

__all__ = ["CrissCross"]


class CrissCross(GraphFilterNonlocal):
    r"""Criss-cross attention (Huang, Wang, Huang, Huang, Wei, Liu, ICCV 2019).

    .. math::

        Y = X + \gamma\, A Z, \qquad A_{uv} = \operatorname{softmax}_{v \in \mathcal C(u)}
        (\theta_u^T \phi_v),

    :math:`\mathcal C(u)` the row and column of :math:`u` (``H + W - 1`` positions; lines along
    every axis for ``dim`` 1 and 3): a sparse row-stochastic graph, applied as a structured
    row + column product (:class:`~graphfilters.criss_cross.CrissCrossAffinity`), never
    ``N x N``. As in CCNet there is no output projection (:math:`W_1 = I`, values keep all
    ``C`` channels) and the output is scaled by a learned, zero-initialized :math:`\gamma`.
    One application; CCNet's RCCA applies the module twice with shared weights.

    Parameters
    ----------
    in_channels : int
    qk_channels : int, optional
        Channels of queries and keys, default ``C // 8`` (at least 1).
    dim : {1, 2, 3}

    Shapes
    ------
    - **input:** ``(B, C, *spatial)``; **output:** the same.

    Examples
    --------
    >>> import torch
    >>> block = CrissCross(16)
    >>> x = torch.randn(2, 16, 5, 6)
    >>> torch.equal(block(x), x)                        # gamma = 0 at initialization
    True
    """

    @V.validate_params(
        {"in_channels": V.declared(GraphFilterNonlocal.__init__, "in_channels"),
         "qk_channels": V.declared(GraphFilterNonlocal.__init__, "affinity_channels"),
         "dim": V.declared(GraphFilterNonlocal.__init__, "dim")},
        valid=lambda: {"in_channels": 4, "dim": 1},
    )
    def __init__(
        self, in_channels: int, qk_channels: int | None = None, dim: int = 2, **options: Any
    ) -> None:
        if "spec" in options:
            raise TypeError("CrissCross fixes its spec; use GraphFilterNonlocal(spec=...) instead")
        inter = options.pop("inter_channels", None)
        if inter is not None and inter != in_channels:
            raise ValueError(
                f"CrissCross keeps all {in_channels} channels in its values (CCNet has no "
                f"output projection); got inter_channels={inter}"
            )
        qk = options.pop("affinity_channels", None) or qk_channels or max(in_channels // 8, 1)
        options.setdefault("bias", True)
        options.setdefault("out_bias", False)
        super().__init__(in_channels, in_channels, dim=dim, spec="cc", affinity_channels=qk,
                         out_projection=False, **options)

    @staticmethod
    def reference_map(ref: CrissCrossRef) -> WeightMap:
        """``(unified, reference, scale)`` entries relating this block to ``ref``."""
        return (
            conv_map("theta", "query_conv", True) + conv_map("phi", "key_conv", True)
            + conv_map("g", "value_conv", True) + [("gamma", "gamma", 1.0)]
        )

    @classmethod
    def from_reference(cls, ref: CrissCrossRef) -> CrissCross:
        """The unified block computing exactly what ``ref`` computes (weights copied)."""
        block = cls(ref.in_channels, ref.qk_channels, dim=ref.dim)
        copy_weights(match_module(block, ref), ref.state_dict(), cls.reference_map(ref))
        return block.train(ref.training)
