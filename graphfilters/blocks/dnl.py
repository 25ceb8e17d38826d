"""Disentangled non-local block (DNL, Yin et al. ECCV 2020) as a configuration of the unified
block."""

from __future__ import annotations

import math
from typing import Any

from ._convert import WeightMap, bn_map, conv_map, copy_weights, match_module
from .reference import DisentangledNonLocalRef
from .unified import ChebyshevNonlocal

__all__ = ["DisentangledNonLocal"]


class DisentangledNonLocal(ChebyshevNonlocal):
    r"""Disentangled non-local block (Yin, Yao, Cao, Li, Zhang, Lin, Hu, ECCV 2020).

    .. math::

        M = \operatorname{softmax}_{row}\big(s(\Theta - \mu_\theta)(\Phi - \mu_\phi)^T\big)
        + \mathbf 1 \operatorname{softmax}(X w_m)^T, \qquad
        Y = X + \mathrm{BN}(D^{-1} M\, Z\, W_1 + b),

    a whitened pairwise softmax (SDPA, never ``N x N``) plus a rank-one unary term, with
    :math:`s = 1/(\tau\sqrt{C_s})` (``use_scale``) or :math:`1/\tau`. Rows of :math:`M` sum
    to 2, and the spec's ``rw`` normalization divides by that: so :math:`W_1` is **twice**
    the original ``conv_out`` weight (:meth:`from_reference` does the conversion).

    Parameters
    ----------
    in_channels : int
    inter_channels : int, optional
    temperature : float
        :math:`\tau` (0.05 in the authors' configs).
    use_scale : bool
    dim : {1, 2, 3}

    Shapes
    ------
    - **input:** ``(B, C, *spatial)``; **output:** the same.

    Examples
    --------
    >>> import torch
    >>> block = DisentangledNonLocal(8)
    >>> block(torch.randn(2, 8, 4, 4)).shape
    torch.Size([2, 8, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        temperature: float = 0.05,
        use_scale: bool = True,
        dim: int = 2,
        **options: Any,
    ) -> None:
        if "spec" in options:
            raise TypeError("DisentangledNonLocal fixes its spec; use ChebyshevNonlocal(spec=...)")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        cs = inter_channels if inter_channels is not None else max(in_channels // 2, 1)
        scale = 1.0 / temperature / (math.sqrt(cs) if use_scale else 1.0)
        options.setdefault("bias", True)
        super().__init__(in_channels, cs, dim=dim, spec="dnl", kernel_options={"scale": scale},
                         **options)
        self.temperature, self.use_scale = temperature, use_scale

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
