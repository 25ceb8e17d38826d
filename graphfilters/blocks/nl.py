"""The non-local block (NL) of Wang et al. (CVPR 2018) as a configuration of the unified block."""

from __future__ import annotations

from typing import Any

from .. import _validate as V
from ..specs import NL_MODES, get_spec
from ._convert import WeightMap, bn_map, conv_map, copy_weights, match_module
from .reference import NonLocalRef
from .unified import GraphFilterNonlocal

__all__ = ["NonLocal"]


class NonLocal(GraphFilterNonlocal):
    r"""Non-local block (Wang, Girshick, Gupta, He, CVPR 2018).

    .. math::

        Y = X + \mathrm{BN}(A\, Z\, W + b), \qquad A = \operatorname{softmax}_{row}(\Theta
        \Phi^T) = D^{-1}M,

    an order-1 filter with :math:`W_0 = 0` on the random-walk normalized affinity (modes
    ``embedded_gaussian``, ``gaussian``: row-stochastic softmax, applied through
    ``scaled_dot_product_attention``; ``dot_product``: :math:`\Theta\Phi^T/N`, low rank;
    ``concatenation``: :math:`\operatorname{ReLU}(w_f^T[\theta_i;\phi_j])/N`, dense). With
    ``sub_sample`` the keys (``φ`` and ``Z``) are max-pooled by 2 over space. Projections have
    biases, as in the original.

    Parameters
    ----------
    in_channels : int
    inter_channels : int, optional
        Default ``C // 2``.
    mode : {"embedded_gaussian", "dot_product", "gaussian", "concatenation"}
    dim : {1, 2, 3}
    sub_sample : bool
    **options
        Other :class:`GraphFilterNonlocal` arguments.

    Shapes
    ------
    - **input:** ``(B, C, *spatial)``; **output:** the same.

    Examples
    --------
    >>> import torch
    >>> block = NonLocal(8, mode="dot_product", sub_sample=True)
    >>> y, A = block(torch.randn(2, 8, 4, 4), return_affinity=True)
    >>> y.shape, A.shape                              # 16 queries, 4 pooled keys
    (torch.Size([2, 8, 4, 4]), torch.Size([2, 16, 4]))
    """

    @V.validate_params(
        {**{n: V.declared(GraphFilterNonlocal.__init__, n)
            for n in ("in_channels", "inter_channels", "dim", "sub_sample")},
         "mode": [V.StrOptions(tuple(NL_MODES))]},
        valid=lambda: {"in_channels": 4, "dim": 1},
    )
    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        mode: str = "embedded_gaussian",
        dim: int = 2,
        sub_sample: bool = False,
        **options: Any,
    ) -> None:
        if "spec" in options:
            raise TypeError("NonLocal fixes its spec; use GraphFilterNonlocal(spec=...) instead")
        options.setdefault("bias", True)
        super().__init__(in_channels, inter_channels, dim=dim, sub_sample=sub_sample,
                         spec=get_spec("nl", mode=mode), **options)
        self.mode = mode

    @staticmethod
    def reference_map(ref: NonLocalRef) -> WeightMap:
        """``(unified, reference, scale)`` entries relating this block to ``ref``."""
        m = conv_map("g", "g", True)
        if ref.mode != "gaussian":
            m += conv_map("theta", "theta", True) + conv_map("phi", "phi", True)
        if ref.mode == "concatenation":
            m.append(("concat_weight", "concat_project.weight", 1.0))
        m += [("w.1", "W_z.weight", 1.0), ("bias", "W_z.bias", 1.0)]
        return m + bn_map("norm", "bn")

    @classmethod
    def from_reference(cls, ref: NonLocalRef) -> NonLocal:
        """The unified block computing exactly what ``ref`` computes (weights copied).

        Examples
        --------
        >>> import torch
        >>> from graphfilters.blocks.reference import NonLocalRef
        >>> ref = NonLocalRef(8).eval()
        >>> torch.nn.init.ones_(ref.bn.weight)
        Parameter containing: ...
        >>> x = torch.randn(1, 8, 4, 4)
        >>> torch.allclose(NonLocal.from_reference(ref).eval()(x), ref(x), atol=1e-5)
        True
        """
        block = cls(ref.in_channels, ref.inter_channels, mode=ref.mode, dim=ref.dim,
                    sub_sample=ref.sub_sample)
        copy_weights(match_module(block, ref), ref.state_dict(), cls.reference_map(ref))
        return block.train(ref.training)
