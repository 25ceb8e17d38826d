r"""Efficient attention (Shen, Zhang, Zhao, Yi, Li, WACV 2021): a row-stochastic affinity of
rank at most :math:`d` applied without forming it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import _validate as V
from .attention import ATTENTION_PARAMS, AttentionFilterBlock, attention_valid

__all__ = ["EfficientAttention"]


class EfficientAttention(AttentionFilterBlock):
    r"""Efficient attention: per head :math:`h`,

    .. math::

        F_h = \rho_q(Q_h)\,\big(\rho_k(K_h)^T V_h\big), \qquad
        A_h = \rho_q(Q_h)\,\rho_k(K_h)^T ,

    with :math:`\rho_q` the softmax over the channels of each query position and
    :math:`\rho_k` the softmax over the positions of each key channel. Each row of
    :math:`\rho_q(Q)` and each column of :math:`\rho_k(K)` sums to 1, so
    :math:`A_h\mathbf 1 = \rho_q(Q_h)\mathbf 1_d = \mathbf 1`: a row-stochastic affinity of
    rank :math:`\le d` (the same structure as double attention's :math:`A^2`), an order-1
    filter :math:`F = A Z W_1`. The structured path computes the ``d x d_v`` context
    :math:`\rho_k(K)^T V` first, :math:`O(N d\, d_v)`: no ``N x N`` matrix.

    Parameters
    ----------
    in_channels, heads, inter_channels, key_channels, dim, bias, materialize
        As in :class:`~graphfilters.blocks.attention.AttentionFilterBlock`.

    Shapes
    ------
    - **input:** ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, T, H, W)``; **output:** the same.
    - **operator** (:meth:`operator`): ``(B, heads, N, N)``, row-stochastic.

    Examples
    --------
    >>> import torch
    >>> block = EfficientAttention(8, heads=2)
    >>> x = torch.randn(2, 8, 3, 3)
    >>> torch.equal(block(x), x)                  # identity at init
    True
    >>> op = block.operator(x)
    >>> torch.allclose(op.sum(-1), torch.ones(2, 2, 9))
    True
    """

    table_name = "efficient"

    @V.validate_params(ATTENTION_PARAMS, valid=attention_valid)
    def __init__(self, in_channels: int, heads: int = 1, inter_channels: int | None = None,
                 key_channels: int | None = None, dim: int = 2, bias: bool = True,
                 materialize: bool = False) -> None:
        super().__init__(in_channels, heads=heads, inter_channels=inter_channels,
                         key_channels=key_channels, dim=dim, bias=bias,
                         materialize=materialize)

    @staticmethod
    def _factors(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`\\rho_q(Q)`, :math:`\\rho_k(K)` of the first (only) affinity."""
        return torch.softmax(q[:, 0], dim=-1), torch.softmax(k[:, 0], dim=-2)

    def head_filter(self, q: Tensor, k: Tensor, v: Tensor, dense: bool) -> Tensor:
        if dense:
            return self.head_operators(q, k) @ v
        rq, rk = self._factors(q, k)
        return rq @ (rk.transpose(-1, -2) @ v)

    def head_operators(self, q: Tensor, k: Tensor) -> Tensor:
        rq, rk = self._factors(q, k)
        return rq @ rk.transpose(-1, -2)

    def base_affinities(self, q: Tensor, k: Tensor) -> Tensor:
        return self.head_operators(q, k)[:, None]

    @classmethod
    def _reference_options(cls, ref: nn.Module) -> dict[str, Any]:
        return {}
