r"""GFSA (Choi et al., AAAI 2024): a degree-2 polynomial filter of each head's softmax graph."""

from __future__ import annotations

from numbers import Real

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

__all__ = ["GFSA"]


class GFSA(AttentionFilterBlock):
    r"""Graph-filter-based self-attention, per head :math:`h`,

    .. math::

        F_h = \big(w_0 I + w_1 A + w_K (A + (K - 1)(A^2 - A))\big) V_h ,

    :math:`A^K` replaced by its first-order approximation: a monomial filter of order 2 for
    every ``K`` (coefficients :math:`w_0`, :math:`w_1 + (2 - K) w_K`, :math:`(K - 1) w_K`).
    As released: ``K = 4``, :math:`w_0 = 0`, :math:`w_1 = 1` fixed and one learned
    :math:`w_K` per head (zero at init); ``free=True`` learns all three per head. Applied as
    :math:`A(AV)` through ``scaled_dot_product_attention``: :math:`A^2` is never formed.

    Parameters
    ----------
    in_channels, heads, inter_channels, key_channels, dim, bias, materialize
        As in :class:`~graphfilters.blocks.attention.AttentionFilterBlock`.
    K : float
        The power :math:`A^K` approximated, ``>= 1`` (exact for ``K = 1, 2``).
    free : bool
        Learn :math:`w_0` and :math:`w_1` too (as released they are fixed buffers 0 and 1).

    Shapes
    ------
    - **input:** ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, T, H, W)``; **output:** the same.
    - **w_0, w_1, w_K:** ``(heads,)``.
    - **operator** (:meth:`operator`): ``(B, heads, N, N)``.

    Examples
    --------
    >>> import torch
    >>> block = GFSA(8, heads=2)
    >>> x = torch.randn(2, 8, 3, 3)
    >>> torch.equal(block(x), x)
    True
    """

    table_name = "gfsa"

    @V.validate_params({**ATTENTION_PARAMS, "K": [V.Interval(Real, 1, None, closed="left")],
                        "free": ["boolean"]}, valid=attention_valid)
    def __init__(self, in_channels: int, heads: int = 1, K: float = 4, free: bool = False,
                 inter_channels: int | None = None, key_channels: int | None = None,
                 dim: int = 2, bias: bool = True, materialize: bool = False) -> None:
        super().__init__(in_channels, heads=heads, inter_channels=inter_channels,
                         key_channels=key_channels, dim=dim, bias=bias,
                         materialize=materialize)
        self.K = float(K)
        self.free = bool(free)
        h = self.heads
        self.w_K = nn.Parameter(torch.zeros(h))
        if self.free:
            self.w_0 = nn.Parameter(torch.zeros(h))
            self.w_1 = nn.Parameter(torch.ones(h))
        else:
            self.register_buffer("w_0", torch.zeros(h))
            self.register_buffer("w_1", torch.ones(h))

    def coefficients(self) -> dict[str, Tensor]:
        return {"w_0": self.w_0, "w_1": self.w_1, "w_K": self.w_K}

    def _w(self) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(w[:, None, None] for w in (self.w_0, self.w_1, self.w_K))

    def head_filter(self, q: Tensor, k: Tensor, v: Tensor, dense: bool) -> Tensor:
        q, k = q[:, 0], k[:, 0]
        w0, w1, wk = self._w()
        av = softmax_apply(q, k, v, dense)
        aav = softmax_apply(q, k, av, dense)
        return w0 * v + w1 * av + wk * (av + (self.K - 1) * (aav - av))

    def head_operators(self, q: Tensor, k: Tensor) -> Tensor:
        a = softmax_affinity(q[:, 0], k[:, 0])
        w0, w1, wk = self._w()
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        return w0 * eye + w1 * a + wk * (a + (self.K - 1) * (a @ a - a))

    @classmethod
    def _reference_options(cls, ref: nn.Module) -> dict:
        return {"K": ref.K, "free": True}

    def _copy_coefficients(self, ref: nn.Module) -> None:
        self.w_0.copy_(ref.w_0)
        self.w_1.copy_(ref.w_1)
        self.w_K.copy_(ref.lamb)
