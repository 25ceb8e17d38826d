"""CGNL (Yue et al., NeurIPS 2018) as a configuration of the unified block."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import _validate as V
from ..kernels import taylor_rbf
from ._convert import WeightMap, bn_map, conv_map, copy_weights, match_module
from .record import OutputAffine
from .reference import CGNLRef
from .unified import GraphFilterNonlocal

__all__ = ["CGNL"]


class CGNL(GraphFilterNonlocal):
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
    biases, as in their code. The output norm is a zero-initialized BN (``norm="batch"``) or,
    as in the authors' code (and the official SNL code's ``cgnl``), a GroupNorm with
    ``groups`` groups (``norm="group"``, zero-initialized affine): then
    :math:`Y = X + \mathrm{GN}((A Z) W)`, whose statistics are per sample.

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
    norm : {"batch", "group"}
        Output normalization.

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
    >>> CGNL(8, norm="group").norm
    GroupNorm(1, 8, eps=1e-05, affine=True...)
    """

    @V.validate_params(
        {**{n: V.declared(GraphFilterNonlocal.__init__, n)
            for n in ("in_channels", "inter_channels", "groups", "dim")},
         "taylor_order": V.declared(taylor_rbf, "order"), "gamma": V.declared(taylor_rbf, "gamma"),
         "beta": [V.StrOptions({"code"}), *V.declared(taylor_rbf, "beta")],
         "norm": [V.StrOptions(("batch", "group"))]},
        valid=lambda: {"in_channels": 4, "dim": 1},
    )
    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        groups: int = 1,
        taylor_order: int = 2,
        gamma: float = 1e-4,
        beta: float | str | None = "code",
        dim: int = 2,
        norm: str = "batch",
        **options: Any,
    ) -> None:
        if "spec" in options:
            raise TypeError("CGNL fixes its spec; use GraphFilterNonlocal(spec=...) instead")
        if norm == "group" and options.get("out_norm") not in (None, "none"):
            raise ValueError("norm='group' sets the output normalization; do not pass out_norm")
        options.setdefault("bias", False)
        if norm == "group":
            options["out_norm"] = "none"
        opts = {"taylor_order": taylor_order, "gamma": gamma, "beta": beta}
        super().__init__(in_channels, inter_channels, dim=dim, spec="cgnl", groups=groups,
                         kernel_options=opts, **options)
        if norm == "group":
            self.out_norm = "group"
            self.norm = nn.GroupNorm(self.groups, self.in_channels)
            self._zero_group_norm()

    def _zero_group_norm(self) -> None:
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def reset_parameters(self) -> None:
        norm = getattr(self, "norm", None)
        if isinstance(norm, nn.GroupNorm):
            self.norm = None
            try:
                super().reset_parameters()
            finally:
                self.norm = norm
            self._zero_group_norm()
        else:
            super().reset_parameters()

    def output_affine(self, pre: Tensor) -> OutputAffine:
        """As :meth:`GraphFilterNonlocal.output_affine`; for ``norm="group"`` the GroupNorm's
        statistics are per sample: the affine of the first sample of the batch."""
        if not isinstance(self.norm, nn.GroupNorm):
            return super().output_affine(pre)
        gn, C = self.norm, self.in_channels
        with torch.no_grad():
            b = self.bias.detach() if self.bias is not None else pre.new_zeros(C)
            x = pre[0].reshape(gn.num_groups, -1)           # bias already included
            mean = x.mean(dim=1).repeat_interleave(C // gn.num_groups)
            var = x.var(dim=1, unbiased=False).repeat_interleave(C // gn.num_groups)
            scale = gn.weight / torch.sqrt(var + gn.eps)
            shift = gn.bias - mean * scale
            return OutputAffine(scale.detach().clone(), (shift + scale * b).detach().clone())

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
