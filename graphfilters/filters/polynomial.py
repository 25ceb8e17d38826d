r"""Polynomial filter families: Chebyshev, monomial, and Chebyshev under the stable hypothesis.

* ``chebyshev``: :math:`B_k = T_k`, :math:`T_0 = 1`, :math:`T_1 = x`,
  :math:`T_{k+1} = 2xT_k - T_{k-1}` (Defferrard et al. 2016; the blocks' default).
* ``monomial``: :math:`B_k = x^k`.
* ``stable``: Chebyshev polynomials under the stable hypothesis :math:`S^2 = S` (gSNL's 2019
  code), :math:`B_k = T_k(0) I + (1 - T_k(0)) S`, e.g. :math:`B_2 = 2S - I`.

Examples
--------
>>> import numpy as np
>>> from graphfilters.filters import get_filter
>>> get_filter("chebyshev").values([0.5], 3)
array([[ 1. ,  0.5, -0.5, -1. ]])
>>> get_filter("stable").values([0.5], 2)
array([[1. , 0.5, 0. ]])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import sympy as sp

from .._backend import Array
from .base import FilterFamily, check_order

__all__ = ["Chebyshev", "Monomial", "Stable"]


class Chebyshev(FilterFamily):
    name = "chebyshev"
    kind = "polynomial"
    reference = "Defferrard, Bresson, Vandergheynst. NeurIPS 2016."
    definition_latex = r"B_k(x) = T_k(x),\ T_{k+1} = 2xT_k - T_{k-1}"

    def iter_terms(self, op: Callable[[Array], Array], Z: Array, order: int,
                   params: Mapping[str, Any] | None = None) -> Iterator[Array]:
        order = check_order(order)
        yield Z
        if order == 0:
            return
        prev, cur = Z, op(Z)
        yield cur
        for _ in range(2, order + 1):
            prev, cur = cur, 2 * op(cur) - prev
            yield cur

    def symbolic(self, order: int, x: Any, params: Mapping[str, Any] | None = None) -> list:
        return [sp.chebyshevt(k, x).expand() for k in range(check_order(order) + 1)]


class Monomial(FilterFamily):
    name = "monomial"
    kind = "polynomial"
    reference = "Bruna, Zaremba, Szlam, LeCun. ICLR 2014 (spectral networks); Wu et al. 2019."
    definition_latex = r"B_k(x) = x^k"

    def iter_terms(self, op: Callable[[Array], Array], Z: Array, order: int,
                   params: Mapping[str, Any] | None = None) -> Iterator[Array]:
        order = check_order(order)
        cur = Z
        yield cur
        for _ in range(order):
            cur = op(cur)
            yield cur

    def symbolic(self, order: int, x: Any, params: Mapping[str, Any] | None = None) -> list:
        return [x**k for k in range(check_order(order) + 1)]


class Stable(FilterFamily):
    name = "stable"
    kind = "polynomial"
    reference = "Zhu et al. A Spectral Nonlocal Block for Neural Networks. arXiv 1911.01059."
    definition_latex = r"B_k(x) = T_k(0) + (1 - T_k(0))\,x \quad (x^2 := x)"

    def iter_terms(self, op: Callable[[Array], Array], Z: Array, order: int,
                   params: Mapping[str, Any] | None = None) -> Iterator[Array]:
        # S^2 = S: T_k(S) = T_k(0) I + (T_k(1) - T_k(0)) S, with T_k(1) = 1.
        order = check_order(order)
        yield Z
        if order == 0:
            return
        SZ = op(Z)
        yield SZ
        for k in range(2, order + 1):
            t0 = float(np.cos(k * np.pi / 2).round())
            yield t0 * Z + (1 - t0) * SZ

    def symbolic(self, order: int, x: Any, params: Mapping[str, Any] | None = None) -> list:
        out = []
        for k in range(check_order(order) + 1):
            t0 = sp.chebyshevt(k, 0)
            out.append(sp.Integer(1) if k == 0 else (x if k == 1 else t0 + (1 - t0) * x))
        return out
