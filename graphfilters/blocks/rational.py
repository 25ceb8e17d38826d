r"""Rational nonlocal blocks: Cayley (Levie et al. 2018) and ARMA (Isufi et al. 2017) filters
on the affinity graph.

.. math::

    \text{Cayley:}\quad F = Z W_0 + \sum_{j=1}^{r} \big(\operatorname{Re}(C^j) Z W_{2j-1}
    + \operatorname{Im}(C^j) Z W_{2j}\big),\quad C = (hL - iI)(hL + iI)^{-1},\ L = I - \hat A,

    \text{ARMA:}\quad F = Z W_0 + \sum_{k=1}^{K} (I - \psi_k \hat A)^{-1} Z W_k .

``affinity="snl"`` (default): the SNL affinity :math:`\hat A = D^{-1/2}\operatorname{sym}(M)
D^{-1/2}`, :math:`M = \operatorname{ReLU}(\Theta)\operatorname{ReLU}(\Phi)^T`, low rank, so
every inverse is exact through the Woodbury identity in :math:`O(N C_s^2)` (no ``N x N``
tensor). ``affinity="softmax"``: the NL affinity :math:`\operatorname{softmax}_{row}(\Theta
\Phi^T)`, row-stochastic; inverses by the fixed-point (ARMA) recursion, which converges
because :math:`\|\hat A\|_\infty = 1` and :math:`|c| < 1` (:math:`c = \psi_k`, or
:math:`h/(h+i)` for Cayley); the condition is checked at run time
(:class:`~graphfilters.filters.GraphOperator`). Both start as the identity (zero BN scale).

Examples
--------
>>> import torch
>>> from graphfilters.blocks import make_block
>>> block = make_block("arma", 8, order=2)
>>> x = torch.randn(2, 8, 4, 4)
>>> torch.equal(block(x), x), len(block.filter_weights())
(True, 3)
>>> make_block("cayley", 8, affinity="softmax").spec.kernel
'embedded_gaussian'
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .unified import GraphFilterNonlocal

__all__ = ["CayleyNonlocal", "ARMANonlocal", "RATIONAL_AFFINITIES"]

#: Affinities offered to the rational blocks: name -> spec overrides.
RATIONAL_AFFINITIES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "snl": MappingProxyType({}),
    "softmax": MappingProxyType({
        "kernel": "embedded_gaussian", "normalization": "rw", "symmetrize": False,
        "laplacian": "rw",
    }),
})


def _rational_options(spec: str, affinity: str, options: dict[str, Any]) -> dict[str, Any]:
    if "spec" in options:
        raise TypeError(f"the {spec} block fixes its spec; use GraphFilterNonlocal(spec=...)")
    if affinity not in RATIONAL_AFFINITIES:
        raise ValueError(
            f"unknown affinity {affinity!r}; choose one of {list(RATIONAL_AFFINITIES)}"
        )
    for key, value in RATIONAL_AFFINITIES[affinity].items():
        options.setdefault(key, value)
    options.setdefault("bias", False)
    return options


class CayleyNonlocal(GraphFilterNonlocal):
    r"""Nonlocal block with a Cayley filter of order ``order`` (``2 order + 1`` weights) and a
    learned zoom :math:`h = \operatorname{softplus}(\eta) > 0`.

    Parameters
    ----------
    in_channels : int
    inter_channels : int, optional
    order : int
        Cayley order :math:`r \ge 1`.
    affinity : {"snl", "softmax"}
    dim : {1, 2, 3}
    **options
        Other :class:`~graphfilters.blocks.GraphFilterNonlocal` arguments (``solver_tol``, ...).

    Shapes
    ------
    ``(B, C, *spatial)`` → same.
    """

    def __init__(self, in_channels: int, inter_channels: int | None = None, order: int = 1,
                 affinity: str = "snl", dim: int = 2, **options: Any) -> None:
        options = _rational_options("cayley", affinity, options)
        super().__init__(in_channels, inter_channels, order=order, dim=dim, spec="cayley",
                         **options)
        self.affinity = affinity


class ARMANonlocal(GraphFilterNonlocal):
    r"""Nonlocal block with a parallel ARMA filter of ``order`` poles
    :math:`|\psi_k| < 0.95` (``order + 1`` weights).

    Parameters
    ----------
    in_channels : int
    inter_channels : int, optional
    order : int
        Number of poles :math:`K \ge 1`.
    affinity : {"snl", "softmax"}
    dim : {1, 2, 3}
    **options
        Other :class:`~graphfilters.blocks.GraphFilterNonlocal` arguments.

    Shapes
    ------
    ``(B, C, *spatial)`` → same.
    """

    def __init__(self, in_channels: int, inter_channels: int | None = None, order: int = 1,
                 affinity: str = "snl", dim: int = 2, **options: Any) -> None:
        options = _rational_options("arma", affinity, options)
        super().__init__(in_channels, inter_channels, order=order, dim=dim, spec="arma",
                         **options)
        self.affinity = affinity
