r"""Multi-head attention blocks as graph filters, in the blocks' convention.

:class:`AttentionFilterBlock` is the shared frame of the attention-era blocks of the attention
table (:data:`graphfilters.specs.ATTENTION_BLOCKS`): 1×1 projections ``Q``, ``K``, ``V`` split
into ``heads`` heads, a per-head filter :math:`F_h` on the head's affinity (what each block
defines), the heads concatenated and mixed by :math:`W_{out}`, and the output of every block
of this toolkit,

.. math::

    Y = X + \mathrm{BN}\Big(\big[F_1(V_1) \,\|\, \dots \,\|\, F_H(V_H)\big] W_{out} + b\Big),

with the BN scale zero-initialized (a fresh block is the identity). Inputs ``(B, C, L)``,
``(B, C, H, W)`` or ``(B, C, T, H, W)`` are flattened to ``N`` tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from .. import _validate as V
from ..specs import AttentionSpec, get_attention_spec
from . import _utils as U

__all__ = ["AttentionFilterBlock", "softmax_affinity", "softmax_apply", "ATTENTION_PARAMS",
           "attention_valid"]

#: The constructor constraints every attention block shares (:func:`graphfilters._validate
#: .validate_params`); a block adds its own (``{**ATTENTION_PARAMS, "K": [...]}``).
ATTENTION_PARAMS: dict[str, list[Any]] = {
    "in_channels": [V.POS_INT], "heads": [V.POS_INT],
    "inter_channels": [V.POS_INT, None], "key_channels": [V.POS_INT, None],
    "dim": [V.Options(V.Integral, (1, 2, 3))], "bias": ["boolean"], "materialize": ["boolean"],
}


def attention_valid() -> dict[str, Any]:
    """A valid constructor call of every attention block (the generated validation tests)."""
    return {"in_channels": 4, "heads": 2, "dim": 1}


def softmax_affinity(q: Tensor, k: Tensor) -> Tensor:
    r"""Dense :math:`\operatorname{softmax}_{row}(Q K^T/\sqrt d)`, ``(..., N, N)``."""
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)


def softmax_apply(q: Tensor, k: Tensor, z: Tensor, dense: bool = False) -> Tensor:
    r""":math:`\operatorname{softmax}_{row}(Q K^T/\sqrt d)\, Z` without an ``N x N`` matrix
    (``scaled_dot_product_attention``), or through the dense affinity if ``dense``."""
    if dense:
        return softmax_affinity(q, k) @ z
    return nnf.scaled_dot_product_attention(q, k, z)


class AttentionFilterBlock(nn.Module):
    r"""Base of the multi-head attention filters (see the module docstring).

    Subclasses set ``table_name`` (a row of the attention table), ``n_affinities`` (query/key
    pairs per head) and implement :meth:`head_filter` (structured or dense) and
    :meth:`head_operators` (the dense per-head operator the filter applies).

    Parameters
    ----------
    in_channels : int
        ``C``.
    heads : int
        Number of heads ``H``.
    inter_channels : int, optional
        Channels of ``V`` (all heads), default ``C // 2``; ``H`` must divide it.
    key_channels : int, optional
        Channels of ``Q`` and ``K`` per affinity (all heads), default ``inter_channels``.
    dim : {1, 2, 3}
    bias : bool
        Biases of the projections.
    materialize : bool
        Default of :meth:`forward`'s ``materialize`` (dense per-head operators).

    Shapes
    ------
    - **input:** ``(B, C, *spatial)``; **output:** the same.
    - **affinity** (``return_affinity=True``): the per-head operator, ``(B, H, N, N)``.
    """

    table_name = ""
    n_affinities = 1

    # the base is abstract (no table row): its subclasses' registrations test these
    @V.validate_params(ATTENTION_PARAMS, valid=None)
    def __init__(
        self,
        in_channels: int,
        heads: int = 1,
        inter_channels: int | None = None,
        key_channels: int | None = None,
        dim: int = 2,
        bias: bool = True,
        materialize: bool = False,
    ) -> None:
        super().__init__()
        self.spec: AttentionSpec = get_attention_spec(self.table_name)
        self.dim = dim = int(dim)
        self.in_channels = C = int(in_channels)
        self.heads = H = int(heads)
        self.inter_channels = Cs = max(C // 2, H) if inter_channels is None else int(
            inter_channels)
        self.key_channels = Ck = Cs if key_channels is None else int(key_channels)
        if Cs % H or Ck % H:
            raise ValueError(
                f"heads={heads} must divide inter_channels={Cs} and key_channels={Ck}"
            )
        self.materialize = bool(materialize)
        m = self.n_affinities
        self.q = U.conv1x1(dim, C, m * Ck, bias=bias)
        self.k = U.conv1x1(dim, C, m * Ck, bias=bias)
        self.v = U.conv1x1(dim, C, Cs, bias=bias)
        self.out = U.conv1x1(dim, Cs, C, bias=bias)
        self.norm = U.batch_norm(dim, C)

    def extra_repr(self) -> str:
        coef = ", ".join(
            f"{k}=[{', '.join(f'{float(t):.3g}' for t in v.detach().reshape(-1))}]"
            for k, v in self.coefficients().items()
        )
        return (f"block={self.spec.name}, in_channels={self.in_channels}, heads={self.heads}, "
                f"inter_channels={self.inter_channels}, key_channels={self.key_channels}, "
                f"dim={self.dim}" + (f", {coef}" if coef else ""))

    # --------------------------------------------------------------------------------------
    def coefficients(self) -> dict[str, Tensor]:
        """The learned scalars of the filter (names of ``spec.coefficients``), per head."""
        return {}

    def _heads(self, t: Tensor, per_head: int) -> Tensor:
        """``(B, C', *spatial)`` → ``(B, m, H, N, per_head)`` with ``m = C' / (H per_head)``."""
        nodes = U.to_nodes(t)                                # (B, N, C')
        b, n, c = nodes.shape
        return nodes.reshape(b, n, c // (self.heads * per_head), self.heads, per_head) \
            .permute(0, 2, 3, 1, 4)

    def projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""``Q, K`` ``(B, m, H, N, d_k)`` (``m`` affinities) and ``V`` ``(B, H, N, d_v)``."""
        dk, dv = self.key_channels // self.heads, self.inter_channels // self.heads
        return (self._heads(self.q(x), dk), self._heads(self.k(x), dk),
                self._heads(self.v(x), dv)[:, 0])

    def head_filter(self, q: Tensor, k: Tensor, v: Tensor, dense: bool) -> Tensor:
        """Per-head filtered values ``(B, H, N, d_v)``."""
        raise NotImplementedError

    def head_operators(self, q: Tensor, k: Tensor) -> Tensor:
        """The dense per-head operator ``(B, H, N, N)`` the filter applies to ``V``."""
        raise NotImplementedError

    def affinities(self, x: Tensor) -> Tensor:
        r"""The softmax (or low-rank) affinities ``(B, m, H, N, N)``, dense, of ``x``."""
        U.check_input(x, self.dim, self.in_channels, type(self).__name__, self)
        q, k, _ = self.projections(x)
        return self.base_affinities(q, k)

    def base_affinities(self, q: Tensor, k: Tensor) -> Tensor:
        """Dense affinities of the projections ``q, k`` ``(B, m, H, N, d_k)``."""
        return softmax_affinity(q, k)

    def operator(self, x: Tensor) -> Tensor:
        r"""The per-head operator ``(B, H, N, N)`` the block applies to ``V`` on input ``x``."""
        U.check_input(x, self.dim, self.in_channels, type(self).__name__, self)
        q, k, _ = self.projections(x)
        return self.head_operators(q, k)

    def forward(
        self, x: Tensor, *, return_affinity: bool = False, materialize: bool | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Apply the block (``materialize``: through the dense per-head operators)."""
        U.check_input(x, self.dim, self.in_channels, type(self).__name__, self)
        spatial = tuple(x.shape[2:])
        q, k, v = self.projections(x)
        mat = self.materialize if materialize is None else bool(materialize)
        f = self.head_filter(q, k, v, dense=mat)                  # (B, H, N, d_v)
        b, h, n, d = f.shape
        merged = f.permute(0, 2, 1, 3).reshape(b, n, h * d)       # heads concatenated
        y = x + self.norm(self.out(U.from_nodes(merged, spatial)))
        if return_affinity:
            with torch.no_grad():
                return y, self.head_operators(q, k)
        return y

    @classmethod
    def from_reference(cls, ref: nn.Module) -> AttentionFilterBlock:
        """The block computing exactly what the original-form ``ref`` computes (the
        projections read by :meth:`_reference_projections`, ``ref.bn`` copied, then the
        block's own coefficients)."""
        options = {"heads": ref.heads, "inter_channels": ref.inter_channels, "dim": ref.dim,
                   **cls._reference_options(ref)}
        weights = cls._reference_projections(ref, options)
        block = cls(ref.in_channels, **options).to(weights["q"][0].dtype)
        shape = (1,) * block.dim
        with torch.no_grad():
            for name in ("q", "k", "v", "out"):
                conv, (w, bias) = getattr(block, name), weights[name]
                conv.weight.copy_(w.reshape(*w.shape, *shape))
                if conv.bias is not None:
                    conv.bias.copy_(bias)
            block.norm.load_state_dict(ref.bn.state_dict())
            block._copy_coefficients(ref)
        return block.train(ref.training)

    @classmethod
    def _reference_options(cls, ref: nn.Module) -> dict[str, Any]:
        return {}

    @classmethod
    def _reference_projections(cls, ref: nn.Module, options: dict[str, Any]
                               ) -> dict[str, tuple[Tensor, Tensor | None]]:
        """``{"q", "k", "v", "out"}`` -> ``(weight (C_out, C_in), bias)`` in the block's
        channel layout; default: ``ref.qkv`` split into ``[q | k | v]`` and ``ref.proj``."""
        m = cls.n_affinities
        cs = options["inter_channels"]
        ck = options.get("key_channels") or cs
        w, b = ref.qkv.weight, ref.qkv.bias
        parts = [m * ck, m * ck, cs]
        return {**{name: (wp, bp) for name, wp, bp in
                   zip("qkv", w.split(parts), b.split(parts))},
                "out": (ref.proj.weight, ref.proj.bias)}

    def _copy_coefficients(self, ref: nn.Module) -> None:
        pass
