"""CGNL (Yue et al., NeurIPS 2018) as a configuration of the unified block."""

from __future__ import annotations

from typing import Any

from ._convert import WeightMap, bn_map, conv_map, copy_weights, match_module
from .reference import CGNLRef
from .unified import ChebyshevNonlocal

__all__ = ["CGNL"]


class CGNL(ChebyshevNonlocal):
    r"""Compact generalized non-local block (Yue, Sun, Yuan, Zhou, Ding, Xu, NeurIPS 2018).

    The graph's nodes are the (channel, position) pairs of each of ``groups`` channel groups
    (``C_s / G · N`` scalar nodes per group, channel-major as in the authors' code). The
    affinity is the Gaussian RBF expanded to Taylor order ``P``,

    .. math::

        A_{ij} = \beta_{ij} \sum_{p=0}^{P} \frac{(2\gamma)^p}{p!}\, \theta_i^p\, \phi_j^p,
        \qquad Y = X + \mathrm{BN}\big((A\, Z) W\big),

    rank ``P + 1`` (a :class:`~graphfilters.graph.LowRankAffinity`: never formed), with the
    grouped output convolution as a block-diagonal :math:`W` (``filter_weights`` returns it
    expanded). ``beta="code"`` uses the authors' constant :math:`\beta = e^{-2\gamma}`,
    ``beta=None`` the exact envelope :math:`e^{-\gamma\theta_i^2}e^{-\gamma\phi_j^2}`. No
    biases, as in their code; the output norm is a zero-initialized BN (theirs: GroupNorm).

    In a :class:`~graphfilters.blocks.FilterRecord` the affinity has batch shape
    ``(B, groups)`` and ``info["node_layout"] == "channel_position"``.

    Parameters
    ----------
    in_channels : int
    inter_channels : int, optional
    groups : int
    taylor_order : int
        ``P`` (not the filter order, which is 1).
    gamma : float
    beta : "code", None or float
    dim : {1, 2, 3}

    Shapes
    ------
    - **input:** ``(B, C, *spatial)``; **output:** the same.

    Examples
    --------
    >>> import torch
    >>> block = CGNL(8, groups=2)
    >>> block(torch.randn(2, 8, 4, 4)).shape
    torch.Size([2, 8, 4, 4])
    >>> block.filter_weights()[1].shape                 # block-diagonal (C_s, C)
    torch.Size([4, 8])
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        groups: int = 1,
        taylor_order: int = 2,
        gamma: float = 1e-4,
        beta: float | str | None = "code",
        dim: int = 2,
        **options: Any,
    ) -> None:
        if "spec" in options:
            raise TypeError("CGNL fixes its spec; use ChebyshevNonlocal(spec=...) instead")
        options.setdefault("bias", False)
        opts = {"taylor_order": taylor_order, "gamma": gamma, "beta": beta}
        super().__init__(in_channels, inter_channels, dim=dim, spec="cgnl", groups=groups,
                         kernel_options=opts, **options)

    @staticmethod
    def reference_map(ref: CGNLRef) -> WeightMap:
        """``(unified, reference, scale)`` entries relating this block to ``ref``."""
        return (
            conv_map("theta", "t", False) + conv_map("phi", "p", False)
            + conv_map("g", "g", False) + [("w.1", "z.weight", 1.0)] + bn_map("norm", "bn")
        )

    @classmethod
    def from_reference(cls, ref: CGNLRef) -> CGNL:
        """The unified block computing exactly what ``ref`` computes (weights copied)."""
        block = cls(ref.in_channels, ref.inter_channels, groups=ref.groups,
                    taylor_order=ref.taylor_order, gamma=ref.gamma, beta=ref.beta, dim=ref.dim)
        copy_weights(match_module(block, ref), ref.state_dict(), cls.reference_map(ref))
        return block.train(ref.training)
