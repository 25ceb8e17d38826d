"""Double attention (A²) of Chen et al. (NeurIPS 2018) as a configuration of the unified block."""

from __future__ import annotations

from typing import Any

from .. import _validate as V
from ._convert import WeightMap, bn_map, conv_map, copy_weights, match_module
from .reference import DoubleAttentionRef
from .unified import GraphFilterNonlocal

__all__ = ["DoubleAttention"]


class DoubleAttention(GraphFilterNonlocal):
    r"""Double attention block (Chen, Kalantidis, Li, Yan, Feng, NeurIPS 2018).

    .. math::

        Y = X + \mathrm{BN}(A\, Z\, W + b), \qquad A = S_d S_g^T,

    :math:`S_g` = softmax over positions of the gathering maps (``φ``, ``c_n`` of them),
    :math:`S_d` = softmax over the ``c_n`` descriptors of the distribution vectors (``θ``).
    Rank :math:`\le c_n`, row-stochastic; applied as :math:`S_d(S_g^T Z)`: never ``N x N``.
    ``Z`` (``c_m`` channels) is the original's feature map ``A``.

    Parameters
    ----------
    in_channels : int
    c_m : int, optional
        Feature channels (``inter_channels``), default ``C // 2``.
    c_n : int, optional
        Number of global descriptors (``affinity_channels``), default ``c_m``.
    dim : {1, 2, 3}

    Shapes
    ------
    - **input:** ``(B, C, *spatial)``; **output:** the same.

    Examples
    --------
    >>> import torch
    >>> block = DoubleAttention(8, c_m=4, c_n=2)
    >>> block(torch.randn(2, 8, 5, 5)).shape
    torch.Size([2, 8, 5, 5])
    """

    @V.validate_params(
        {"in_channels": V.declared(GraphFilterNonlocal.__init__, "in_channels"),
         "c_m": V.declared(GraphFilterNonlocal.__init__, "inter_channels"),
         "c_n": V.declared(GraphFilterNonlocal.__init__, "affinity_channels"),
         "dim": V.declared(GraphFilterNonlocal.__init__, "dim")},
        valid=lambda: {"in_channels": 4, "dim": 1},
    )
    def __init__(
        self,
        in_channels: int,
        c_m: int | None = None,
        c_n: int | None = None,
        dim: int = 2,
        **options: Any,
    ) -> None:
        if "spec" in options:
            raise TypeError("DoubleAttention fixes its spec; use GraphFilterNonlocal(spec=...)")
        c_m = options.pop("inter_channels", None) or c_m
        c_n = options.pop("affinity_channels", None) or c_n
        options.setdefault("bias", True)
        super().__init__(in_channels, c_m, dim=dim, spec="a2", affinity_channels=c_n, **options)

    @staticmethod
    def reference_map(ref: DoubleAttentionRef) -> WeightMap:
        """``(unified, reference, scale)`` entries relating this block to ``ref``."""
        return (
            conv_map("g", "convA", True) + conv_map("theta", "convV", True)
            + conv_map("phi", "convB", True)
            + [("w.1", "conv_out.weight", 1.0), ("bias", "conv_out.bias", 1.0)]
            + bn_map("norm", "bn")
        )

    @classmethod
    def from_reference(cls, ref: DoubleAttentionRef) -> DoubleAttention:
        """The unified block computing exactly what ``ref`` computes (weights copied)."""
        block = cls(ref.in_channels, ref.c_m, ref.c_n, dim=ref.dim)
        copy_weights(match_module(block, ref), ref.state_dict(), cls.reference_map(ref))
        return block.train(ref.training)
