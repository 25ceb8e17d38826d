r"""What a block records for the analysis layer, without recomputation.

With ``block.record = True`` every forward of a block stores a :class:`FilterRecord` in
``block.last_record``: the affinity structure it actually used, its normalization, the signal
``Z``, the filter weights in the affinity form and the effective output affine, all detached.
That is enough to rebuild the block's output exactly (:meth:`FilterRecord.block_output`) and
to linearize it around the recorded input:

.. math::

    Y = X + \rho\Big(s \odot \sum_{k=0}^{K} B_k(\hat A)\, Z\, W_k + t\Big),

with :math:`\hat A` = ``affinity.normalized(normalization)``, :math:`B_k` the basis of
``spec.basis`` (a family of :mod:`graphfilters.filters`, with the parameters ``params``),
``(s, t) = output_scale`` and :math:`\rho` the ReLU if ``relu_after_norm``
else the identity.

Examples
--------
>>> import torch
>>> from graphfilters.blocks import SNL
>>> block = SNL(8).eval()
>>> block.record = True
>>> y = block(torch.randn(2, 8, 4, 4))
>>> rec = block.last_record
>>> rec.z.shape, len(rec.weights), rec.weights[1].shape
(torch.Size([2, 16, 4]), 2, torch.Size([4, 8]))
>>> torch.allclose(rec.block_output(), y, atol=1e-6)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..filters import GraphOperator, filter_sum, get_filter
from ..graph import Affinity, NormalizedOperator
from ..specs import BlockSpec

__all__ = ["FilterRecord", "OutputAffine"]


class OutputAffine(NamedTuple):
    r"""The effective per-channel affine of the block's output normalization.

    ``norm(F + b) = scale * F + shift`` per output channel (the filter's output bias ``b``
    is folded into ``shift``). For BatchNorm in training mode the batch statistics of that
    forward are used, in eval mode the running statistics; for criss-cross attention
    ``scale = γ``; without a normalization ``scale = 1``.

    Shapes
    ------
    ``scale``, ``shift``: ``(C_out,)``.
    """

    scale: Tensor
    shift: Tensor


@dataclass
class FilterRecord:
    r"""The filter a block applied in its last forward (all tensors detached).

    Attributes
    ----------
    spec : BlockSpec
        The block's configuration (kernel, normalization, order, constraint, basis).
    affinity : graphfilters.graph.Affinity
        The raw affinity structure actually used (``DenseAffinity``, ``LowRankAffinity``,
        ``SoftmaxAffinity``, ``SumAffinity`` or
        :class:`~graphfilters.criss_cross.CrissCrossAffinity`), detached; symmetrized already
        when the spec symmetrizes. Batch shape ``(B,)``, except for CGNL (see ``info``).
    normalization : str
        How ``affinity`` becomes :math:`\hat A`: ``affinity.normalized(normalization)``.
    z : Tensor, ``(B, N_keys, C_s)``
        The signal the filter acts on (``N_keys = N`` unless keys are sub-sampled).
    weights : list of Tensor
        ``K + 1`` matrices ``W_k`` of shape ``(C_s, C_out)`` in the affinity form, with the
        weight constraint applied (zeros for a dropped term, ``W_0 = -W_1`` when tied), the
        block's ``sign`` folded in (``sign**k``) and grouped outputs expanded to
        block-diagonal matrices.
    spatial_shape : tuple of int
        ``(L,)``, ``(H, W)`` or ``(T, H, W)`` of the input (the queries).
    input : Tensor, ``(B, C, *spatial_shape)``
    output_scale : OutputAffine
        ``(scale, shift)`` of shape ``(C_out,)``.
    relu_after_norm : bool
        Whether a ReLU follows the normalization (the official SNL classification code).
    params : dict of Tensor
        Constrained parameters of a rational basis (``"zoom"`` for Cayley, ``"poles"`` for
        ARMA); empty for polynomial bases.
    info : dict
        Block-specific facts. ``"node_layout"``: ``"position"`` (nodes are the ``N``
        positions) or ``"channel_position"`` (CGNL: within each of ``info["groups"]`` channel
        groups every (channel, position) pair is a node, channel-major, so the affinity has
        batch shape ``(B, groups)`` over ``C_s / groups * N`` nodes and the filter acts on
        ``z`` reshaped to ``(B, groups, C_s / groups * N, 1)``); ``"groups"``; ``"sign"``;
        ``"sub_sampled"`` (the affinity is ``N x N_keys``); ``"unit"`` (index in a stage).
    """

    spec: BlockSpec
    affinity: Affinity
    normalization: str
    z: Tensor
    weights: list[Tensor]
    spatial_shape: tuple[int, ...]
    input: Tensor
    output_scale: OutputAffine
    relu_after_norm: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Tensor] = field(default_factory=dict)

    @property
    def order(self) -> int:
        """Order of the filter (polynomial degree ``K = len(weights) - 1`` for polynomial
        bases; see :meth:`graphfilters.filters.FilterFamily.order_of`)."""
        return get_filter(self.spec.basis).order_of(len(self.weights))

    def operator(self) -> NormalizedOperator:
        r"""The normalized operator :math:`\hat A` (applied without forming it)."""
        return self.affinity.normalized(self.normalization)

    def _to_graph(self, z: Tensor) -> Tensor:
        if self.info.get("node_layout") != "channel_position":
            return z
        b, n, c = z.shape
        g = int(self.info.get("groups", 1))
        return z.transpose(1, 2).reshape(b, g, (c // g) * n, 1)

    def _from_graph(self, t: Tensor, like: Tensor) -> Tensor:
        if self.info.get("node_layout") != "channel_position":
            return t
        b, n, c = like.shape
        return t.reshape(b, c, n).transpose(1, 2)

    def terms(self, materialize: bool = False) -> list[Tensor]:
        r"""The basis terms :math:`B_k(\hat A) Z`, each ``(B, N, C_s)``."""
        apply = GraphOperator.from_normalized(self.operator(), materialize=materialize)
        zg = self._to_graph(self.z)
        if self.order >= 1 and self.info.get("sub_sampled"):
            n = math.prod(self.spatial_shape)
            return [self.z.new_zeros(self.z.shape[0], n, self.z.shape[2]), apply(zg)]
        family = get_filter(self.spec.basis)
        return [self._from_graph(t, self.z)
                for t in family.iter_terms(apply, zg, self.order, self.params or None)]

    def filter_output(self, materialize: bool = False) -> Tensor:
        r""":math:`F = \sum_k B_k(\hat A) Z W_k`, shape ``(B, N, C_out)``."""
        return filter_sum(self.terms(materialize), self.weights)

    def block_output(self, materialize: bool = False) -> Tensor:
        """The block's output rebuilt from the record, ``(B, C, *spatial_shape)``."""
        f = self.filter_output(materialize)
        scale, shift = self.output_scale
        out = f * scale + shift
        if self.relu_after_norm:
            out = torch.relu(out)
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], *self.spatial_shape)
        return self.input + out
