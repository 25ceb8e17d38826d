r"""Differential attention (Ye et al., "Differential Transformer", ICLR 2025): the difference
of two softmax affinities, a filter on two graphs."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .. import _validate as V
from .attention import (
    ATTENTION_PARAMS,
    AttentionFilterBlock,
    attention_valid,
    softmax_affinity,
    softmax_apply,
)

__all__ = ["DiffAttention", "lambda_init"]


def lambda_init(depth: int) -> float:
    r""":math:`\lambda_{init} = 0.8 - 0.6\, e^{-0.3 (l - 1)}` of layer ``depth`` = :math:`l`
    (the paper's schedule).

    Examples
    --------
    >>> round(lambda_init(1), 6), round(lambda_init(12), 4)
    (0.2, 0.7779)
    """
    return 0.8 - 0.6 * math.exp(-0.3 * (depth - 1))


class DiffAttention(AttentionFilterBlock):
    r"""Differential attention: per head :math:`h`, two softmax affinities
    :math:`A_{1,h} = \operatorname{softmax}(Q_{1,h}K_{1,h}^T/\sqrt d)` and :math:`A_{2,h}`
    from the two halves of the query and key projections, and

    .. math::

        F_h = (1 - \lambda_{init})\,\operatorname{RMSNorm}\big((A_{1,h} - \lambda A_{2,h})
        V_h\big), \qquad
        \lambda = e^{\lambda_{q1}\cdot\lambda_{k1}} - e^{\lambda_{q2}\cdot\lambda_{k2}}
        + \lambda_{init},

    one learned :math:`\lambda` for the block (reparametrized by the vectors
    :math:`\lambda_{q1}, \lambda_{k1}, \lambda_{q2}, \lambda_{k2} \in \mathbb R^{d}`, as the
    released code), :math:`\lambda_{init}` from the layer's ``depth`` (:func:`lambda_init`)
    and a per-head RMSNorm with a learned weight (``subln``).

    As a graph filter it is an order-1 filter on **two** operators,
    :math:`F = (A_1 - \lambda A_2) Z W`: not a polynomial in one affinity. The operator
    :math:`A_1 - \lambda A_2` has row sums :math:`1 - \lambda` and may have negative entries
    (no graph of its own). The RMSNorm after it is a per-token rescaling, not part of the
    filter (:meth:`head_operators` returns the operator before it). The structured path
    applies both affinities through ``scaled_dot_product_attention``.

    Parameters
    ----------
    in_channels, heads, inter_channels, key_channels, dim, bias, materialize
        As in :class:`~graphfilters.blocks.attention.AttentionFilterBlock`;
        ``key_channels`` is per affinity.
    depth : int
        The layer index :math:`l \ge 1` of :math:`\lambda_{init}`.

    Shapes
    ------
    - **input:** ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, T, H, W)``; **output:** the same.
    - **operator** (:meth:`operator`): ``(B, heads, N, N)``.

    Examples
    --------
    >>> import torch
    >>> block = DiffAttention(8, heads=2)
    >>> x = torch.randn(2, 8, 3, 3)
    >>> torch.equal(block(x), x)                  # identity at init
    True
    >>> lam = float(block.lambda_full())
    >>> torch.allclose(block.operator(x).sum(-1), torch.full((2, 2, 9), 1 - lam))
    True
    """

    table_name = "diffattn"
    n_affinities = 2

    @V.validate_params({**ATTENTION_PARAMS, "depth": [V.POS_INT]}, valid=attention_valid)
    def __init__(self, in_channels: int, heads: int = 1, inter_channels: int | None = None,
                 key_channels: int | None = None, dim: int = 2, bias: bool = True,
                 materialize: bool = False, depth: int = 1) -> None:
        super().__init__(in_channels, heads=heads, inter_channels=inter_channels,
                         key_channels=key_channels, dim=dim, bias=bias,
                         materialize=materialize)
        self.depth = int(depth)
        self.lambda_init = lambda_init(self.depth)
        dk, dv = self.key_channels // self.heads, self.inter_channels // self.heads
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            setattr(self, name, nn.Parameter(torch.zeros(dk).normal_(0, 0.1)))
        self.subln_weight = nn.Parameter(torch.ones(dv))
        self.subln_eps = 1e-5

    def coefficients(self) -> dict[str, Tensor]:
        return {"lambda_q1": self.lambda_q1, "lambda_k1": self.lambda_k1,
                "lambda_q2": self.lambda_q2, "lambda_k2": self.lambda_k2}

    def lambda_full(self) -> Tensor:
        r""":math:`\lambda` (a 0-d tensor)."""
        return (torch.exp((self.lambda_q1 * self.lambda_k1).sum())
                - torch.exp((self.lambda_q2 * self.lambda_k2).sum()) + self.lambda_init)

    def _subln(self, t: Tensor) -> Tensor:
        rms = torch.rsqrt(t.square().mean(-1, keepdim=True) + self.subln_eps)
        return t * rms * self.subln_weight * (1 - self.lambda_init)

    def head_filter(self, q: Tensor, k: Tensor, v: Tensor, dense: bool) -> Tensor:
        lam = self.lambda_full()
        if dense:
            return self._subln(self.head_operators(q, k) @ v)
        a1v = softmax_apply(q[:, 0], k[:, 0], v)
        a2v = softmax_apply(q[:, 1], k[:, 1], v)
        return self._subln(a1v - lam * a2v)

    def head_operators(self, q: Tensor, k: Tensor) -> Tensor:
        a = softmax_affinity(q, k)                                # (B, 2, H, N, N)
        return a[:, 0] - self.lambda_full() * a[:, 1]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", depth={self.depth}"

    @classmethod
    def _reference_options(cls, ref: nn.Module) -> dict[str, Any]:
        return {"depth": ref.depth}

    def _copy_coefficients(self, ref: nn.Module) -> None:
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            getattr(self, name).copy_(getattr(ref, name))
        self.subln_weight.copy_(ref.subln.weight)
