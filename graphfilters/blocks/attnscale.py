r"""AttnScale (Wang et al., ICLR 2022): each head's softmax graph with its DC part kept and the
rest rescaled by a learned :math:`1 + \lambda_h`."""

from __future__ import annotations

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

__all__ = ["AttnScale"]


class AttnScale(AttentionFilterBlock):
    r"""Attention scaling: per head :math:`h`, with the DC projector
    :math:`P = \mathbf 1\mathbf 1^T/N`,

    .. math::

        F_h = \big(P + (1 + \lambda_h)(A - P)\big) V_h
            = (1 + \lambda_h)\, A V_h - \lambda_h\, \mathbf 1\, \bar v_h^T ,
        \qquad \bar v_h = \tfrac1N V_h^T \mathbf 1 ,

    the affinity split into its DC part :math:`P` (the mean over tokens) and the rest
    :math:`A - P`, which is amplified (:math:`\lambda_h > 0`) or damped. One learned
    :math:`\lambda_h` per head, zero at init (the released code's ``lamb``), so a fresh filter
    is plain attention; the block as a whole is the identity at init (zero BN scale, see
    :class:`~graphfilters.blocks.attention.AttentionFilterBlock`). The structured path
    applies :math:`A V_h` through ``scaled_dot_product_attention`` and :math:`P V_h` as the
    mean over tokens: no ``N x N`` matrix.

    Spectrally (:mod:`graphfilters.symbolic`): :math:`A` is row-stochastic, so
    :math:`A\mathbf 1 = \mathbf 1` and, by Brauer's theorem on rank-one updates, the operator
    has the eigenvalue 1 on the DC (where :math:`A` has its Perron eigenvalue 1) and
    :math:`(1 + \lambda_h)\mu_j` for every other eigenvalue :math:`\mu_j` of :math:`A`.

    Parameters
    ----------
    in_channels, heads, inter_channels, key_channels, dim, bias, materialize
        As in :class:`~graphfilters.blocks.attention.AttentionFilterBlock`.

    Shapes
    ------
    - **input:** ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, T, H, W)``; **output:** the same.
    - **lambda_h:** ``(heads,)``.
    - **operator** (:meth:`operator`): ``(B, heads, N, N)``.

    Examples
    --------
    >>> import torch
    >>> block = AttnScale(8, heads=2)
    >>> x = torch.randn(2, 8, 3, 3)
    >>> torch.equal(block(x), x)
    True
    >>> op = block.operator(x)                    # lambda_h = 0: plain softmax attention
    >>> torch.allclose(op.sum(-1), torch.ones(2, 2, 9))
    True
    """

    table_name = "attnscale"

    @V.validate_params(ATTENTION_PARAMS, valid=attention_valid)
    def __init__(self, in_channels: int, heads: int = 1, inter_channels: int | None = None,
                 key_channels: int | None = None, dim: int = 2, bias: bool = True,
                 materialize: bool = False) -> None:
        super().__init__(in_channels, heads=heads, inter_channels=inter_channels,
                         key_channels=key_channels, dim=dim, bias=bias,
                         materialize=materialize)
        self.lambda_h = nn.Parameter(torch.zeros(self.heads))

    def coefficients(self) -> dict[str, Tensor]:
        return {"lambda_h": self.lambda_h}

    def head_filter(self, q: Tensor, k: Tensor, v: Tensor, dense: bool) -> Tensor:
        lam = self.lambda_h[:, None, None]
        if dense:
            return self.head_operators(q, k) @ v
        av = softmax_apply(q[:, 0], k[:, 0], v)
        return (1 + lam) * av - lam * v.mean(dim=-2, keepdim=True)

    def head_operators(self, q: Tensor, k: Tensor) -> Tensor:
        a = softmax_affinity(q[:, 0], k[:, 0])
        lam = self.lambda_h[:, None, None]
        p = torch.full_like(a, 1.0 / a.shape[-1])
        return p + (1 + lam) * (a - p)

    @classmethod
    def _reference_options(cls, ref: nn.Module) -> dict[str, Any]:
        return {}

    def _copy_coefficients(self, ref: nn.Module) -> None:
        self.lambda_h.copy_(ref.lamb)
