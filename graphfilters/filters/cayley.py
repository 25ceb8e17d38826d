r"""Cayley filters (Levie, Monti, Bresson, Bronstein. CayleyNets. IEEE TSP 2018).

On the Laplacian :math:`L = I - S` (eigenvalues :math:`\lambda = 1 - \mu`) with a zoom
:math:`h > 0`, the Cayley transform :math:`C(\lambda) = (h\lambda - i)/(h\lambda + i)` maps
:math:`[0, \infty)` onto the unit circle, and a Cayley filter of order :math:`r` is

.. math::

    g(\lambda) = c_0 + 2\operatorname{Re}\sum_{j=1}^{r} c_j\, C(\lambda)^j,\qquad
    c_0 \in \mathbb R,\ c_j \in \mathbb C .

With :math:`c_j = a_j + i b_j`, :math:`2\operatorname{Re}(c_j C^j) = 2a_j \operatorname{Re}
C^j - 2b_j \operatorname{Im} C^j`, so with matrix weights the filter is a sum of ``2r + 1`` real
terms with the basis

.. math::

    B_0 = 1,\quad B_{2j-1} = \operatorname{Re} C(\lambda)^j,\quad
    B_{2j} = \operatorname{Im} C(\lambda)^j \qquad (j = 1..r),

real rational functions of :math:`\lambda`: e.g. :math:`\operatorname{Re}C =
(h^2\lambda^2 - 1)/(h^2\lambda^2 + 1)`, :math:`\operatorname{Im} C = -2h\lambda/(h^2\lambda^2+1)`.
On a signal, :math:`(hL + iI)^{-1} = ((h + i)(I - cS))^{-1}` with :math:`c = h/(h + i)`, so
each power costs one shifted solve (:meth:`GraphOperator.solve_shifted
<graphfilters.filters.operator.GraphOperator.solve_shifted>`) and one product:
:math:`C Y = ((h - i) Y - h S Y)` applied to :math:`(h+i)^{-1}(I - cS)^{-1} Y`.
:math:`|c| = h/\sqrt{1 + h^2} < 1`, so the iterative solve converges on any operator with
:math:`\|S\|_\infty \le 1` (row-stochastic softmax affinities).

The zoom is learned as :math:`h = \operatorname{softplus}(\eta)` (initial :math:`h = 1`).

Examples
--------
>>> import numpy as np
>>> from graphfilters.filters import get_filter
>>> v = get_filter("cayley").values(np.array([1.0]), 1, {"zoom": 1.0})   # lambda = 0
>>> v.round(12)                              # C(0) = -1: Re = -1, Im = 0
array([[ 1., -1.,  0.]])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import sympy as sp
import torch

from .._backend import Array
from .base import FilterFamily, check_order, numpy_params

__all__ = ["Cayley"]


def _softplus_inverse(y: float) -> float:
    return float(np.log(np.expm1(y)))


class Cayley(FilterFamily):
    name = "cayley"
    kind = "rational"
    reference = ("Levie, Monti, Bresson, Bronstein. CayleyNets: Graph Convolutional Neural "
                 "Networks with Complex Rational Spectral Filters. IEEE TSP 2018.")
    min_order = 1
    definition_latex = (r"B_0 = 1,\ B_{2j-1} = \operatorname{Re} C^j,\ "
                        r"B_{2j} = \operatorname{Im} C^j,\ C(\lambda) = "
                        r"\frac{h\lambda - i}{h\lambda + i}")

    def n_terms(self, order: int) -> int:
        return 2 * check_order(order, self.min_order) + 1

    def order_of(self, n_terms: int) -> int:
        return (n_terms - 1) // 2

    def parameter_shapes(self, order: int) -> dict[str, tuple[int, ...]]:
        return {"zoom": ()}

    def initial_parameters(self, order: int) -> dict[str, np.ndarray]:
        return {"zoom": np.array(_softplus_inverse(1.0))}

    def constrain(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        z = raw["zoom"]
        if isinstance(z, torch.Tensor):
            return {"zoom": torch.nn.functional.softplus(z)}
        return {"zoom": np.logaddexp(0.0, np.asarray(z, dtype=float))}

    def iter_terms(self, op: Callable[[Array], Array], Z: Array, order: int,
                   params: Mapping[str, Any] | None = None) -> Iterator[Array]:
        order = check_order(order, self.min_order)
        h = self.check_parameters(order, params)["zoom"]
        yield Z
        solve = self.shifted_solver(op, Z)
        if not isinstance(h, torch.Tensor):
            h = torch.tensor(float(h), dtype=Z.dtype, device=Z.device)
        c = h / (h + 1j)
        y = Z
        for _ in range(order):
            u = solve(c, y) / (h + 1j)                         # (hL + iI)^{-1} y
            y = (h - 1j) * u - h * op._apply_any(u)             # (hL - iI) u
            yield y.real
            yield y.imag

    def symbolic(self, order: int, x: Any, params: Mapping[str, Any] | None = None) -> list:
        order = check_order(order, self.min_order)
        h = (params or {}).get("zoom", self.parameter_symbols(order)["zoom"])
        lam = 1 - x
        # C^j = (h lam - i)^{2j} / (h^2 lam^2 + 1)^j: real and imaginary parts are rational.
        den = h**2 * lam**2 + 1
        t = sp.Dummy("t")
        out = [sp.Integer(1)]
        for j in range(1, order + 1):
            coeffs = sp.Poly(sp.expand((h * lam - t) ** (2 * j)), t).all_coeffs()[::-1]
            re = sum(c * (-1) ** (k // 2) for k, c in enumerate(coeffs) if k % 2 == 0)
            im = sum(c * (-1) ** (k // 2) for k, c in enumerate(coeffs) if k % 2 == 1)
            out += [sp.factor(re / den**j), sp.factor(im / den**j)]
        return out

    def values(self, mu: Any, order: int, params: Mapping[str, Any] | None = None) -> np.ndarray:
        order = check_order(order, self.min_order)
        h = np.asarray(self.check_parameters(order, numpy_params(params))["zoom"], dtype=float)
        lam = 1 - np.atleast_1d(np.asarray(mu))
        C = (h * lam - 1j) / (h * lam + 1j)
        # Re C^j and Im C^j as rational functions of lambda (|C| = 1 for real lambda, so
        # conj(C) = 1/C): (C^j + C^-j)/2 and (C^j - C^-j)/2i, valid for complex lambda too.
        cols = [np.ones(lam.shape, dtype=C.dtype)]
        for j in range(1, order + 1):
            Cj = C**j
            cols += [(Cj + 1 / Cj) / 2, (Cj - 1 / Cj) / 2j]
        out = np.stack(cols, axis=1)
        return out if np.iscomplexobj(mu) else out.real

    def parameter_symbols(self, order: int) -> dict[str, Any]:
        return {"zoom": sp.Symbol("h", positive=True)}

