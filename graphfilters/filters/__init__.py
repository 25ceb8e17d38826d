r"""Graph filters as objects: one abstraction for polynomial and rational filters.

A filter is :math:`F(S, Z) = \sum_k B_k(S) Z W_k` with a *family* of bases :math:`B_k`
(:class:`~graphfilters.filters.base.FilterFamily`) and matrix weights :math:`W_k`; its
response at an eigenvalue :math:`\mu` of :math:`S` (Laplacian eigenvalue
:math:`\lambda = 1 - \mu`) is :math:`H = \sum_k B_k(\mu) W_k`. The registry
:data:`FILTERS` is the one list of bases: ``BlockSpec.basis``, the blocks, the records, the
analysis (:func:`analysis.response.basis_values`) and the symbolic layer all read it.

=============  ==========  =========================================================
name           kind        :math:`B_k`
=============  ==========  =========================================================
``chebyshev``  polynomial  :math:`T_k(x)`
``stable``     polynomial  :math:`T_k` under :math:`x^2 = x` (gSNL 2019)
``monomial``   polynomial  :math:`x^k`
``cayley``     rational    :math:`1, \operatorname{Re} C^j, \operatorname{Im} C^j`,
                           :math:`C = (h\lambda - i)/(h\lambda + i)` (Levie et al. 2018)
``arma``       rational    :math:`1, (1 - \psi_k x)^{-1}` (Isufi et al. 2017)
=============  ==========  =========================================================

A new family is one module (a :class:`FilterFamily` subclass) plus one row of
:data:`FILTERS`.

Examples
--------
>>> import numpy as np
>>> from graphfilters.filters import get_filter, filter_sum
>>> S = np.array([[0.0, 1.0], [1.0, 0.0]])
>>> fam = get_filter("chebyshev")
>>> filter_sum(fam.terms(lambda X: S @ X, np.eye(2), 2), [0.0, 1.0, 1.0])   # S + (2S^2 - I)
array([[1., 1.],
       [1., 1.]])
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .. import _validate as V
from .arma import ARMA
from .base import FilterFamily, check_order, filter_sum
from .cayley import Cayley
from .operator import GraphOperator, default_tolerance
from .polynomial import Chebyshev, Monomial, Stable

__all__ = [
    "FILTERS",
    "FILTER_NAMES",
    "FilterFamily",
    "GraphOperator",
    "filter_sum",
    "get_filter",
    "check_order",
    "default_tolerance",
]

#: The registry: name -> family (one row per family).
FILTERS: Mapping[str, FilterFamily] = MappingProxyType({
    f.name: f for f in (Chebyshev(), Stable(), Monomial(), Cayley(), ARMA())
})
#: Names of :data:`FILTERS` (``BlockSpec.basis`` takes one of them).
FILTER_NAMES: tuple[str, ...] = tuple(FILTERS)


@V.validate_params(
    {"name": [V.InstanceOf(str, "a basis name (str)"), V.InstanceOf(FilterFamily)]},
    valid=lambda: {"name": "chebyshev"},
)
def get_filter(name: str | FilterFamily) -> FilterFamily:
    """The family called ``name`` (a family is returned as is).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    if isinstance(name, FilterFamily):
        return name
    if name not in FILTERS:
        raise ValueError(f"unknown basis {name!r}; choose one of {list(FILTER_NAMES)}")
    return FILTERS[name]
