r"""ARMA filters (Isufi, Loukas, Simonetto, Leus. IEEE TSP 2017; Bianchi, Grattarola,
Livi, Alippi. IEEE TPAMI 2021).

The parallel ARMA filter of order :math:`K` is a sum of :math:`K` first-order ARMA filters:
the recursion :math:`Y_{t+1} = \psi_k S Y_t + Z` has, for :math:`|\psi_k|\,\|S\| < 1`, the
steady state :math:`Y_\star = (I - \psi_k S)^{-1} Z`, whose response at an eigenvalue
:math:`\mu = 1 - \lambda` of :math:`S` is :math:`1/(1 - \psi_k \mu)`. With matrix weights and
a direct (order-0) term,

.. math::

    F = Z W_0 + \sum_{k=1}^{K} (I - \psi_k S)^{-1} Z W_k, \qquad
    H(\lambda) = W_0 + \sum_{k=1}^{K} \frac{W_k}{1 - \psi_k (1 - \lambda)},

a rational response with the poles :math:`\lambda = 1 - 1/\psi_k` outside :math:`[0, 2]`
when :math:`|\psi_k| < 1` (Isufi et al.'s partial-fraction form
:math:`\sum_k r_k/(\lambda - p_k)`, with :math:`p_k = 1 - 1/\psi_k`, :math:`r_k =
-W_k/\psi_k`). The poles are learned as :math:`\psi_k = \psi_{\max}\tanh(\eta_k)`,
:math:`\psi_{\max} = 0.95`, initialized evenly in :math:`(-\psi_{\max}/2, \psi_{\max}/2)`;
for a row-stochastic affinity (:math:`\|S\|_\infty = 1`) the ARMA recursion then converges
geometrically with rate :math:`|\psi_k|` (see :mod:`graphfilters.filters.operator`).

Examples
--------
>>> import numpy as np
>>> from graphfilters.filters import get_filter
>>> get_filter("arma").values(np.array([0.0, 1.0]), 1, {"poles": np.array([0.5])})
array([[1., 1.],
       [1., 2.]])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import sympy as sp
import torch

from .._backend import Array
from .base import FilterFamily, check_order, numpy_params

__all__ = ["ARMA", "POLE_BOUND"]

#: :math:`\psi_{\max}`: learned poles satisfy :math:`|\psi_k| < \psi_{\max}`.
POLE_BOUND = 0.95


class ARMA(FilterFamily):
    name = "arma"
    kind = "rational"
    reference = ("Isufi, Loukas, Simonetto, Leus. Autoregressive Moving Average Graph "
                 "Filtering. IEEE TSP 2017; Bianchi, Grattarola, Livi, Alippi. Graph Neural "
                 "Networks with Convolutional ARMA Filters. IEEE TPAMI 2021.")
    min_order = 1
    definition_latex = r"B_0 = 1,\ B_k(x) = \frac{1}{1 - \psi_k x}"

    def parameter_shapes(self, order: int) -> dict[str, tuple[int, ...]]:
        return {"poles": (check_order(order, self.min_order),)}

    def initial_parameters(self, order: int) -> dict[str, np.ndarray]:
        K = check_order(order, self.min_order)
        psi = np.linspace(-0.5, 0.5, K + 2)[1:-1] if K > 1 else np.array([0.25])
        return {"poles": np.arctanh(psi)}

    def constrain(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        p = raw["poles"]
        if isinstance(p, torch.Tensor):
            return {"poles": POLE_BOUND * torch.tanh(p)}
        return {"poles": POLE_BOUND * np.tanh(np.asarray(p, dtype=float))}

    def iter_terms(self, op: Callable[[Array], Array], Z: Array, order: int,
                   params: Mapping[str, Any] | None = None) -> Iterator[Array]:
        order = check_order(order, self.min_order)
        poles = self.check_parameters(order, params)["poles"]
        yield Z
        solve = self.shifted_solver(op, Z)
        for k in range(order):
            yield solve(poles[k], Z)

    def values(self, mu: Any, order: int, params: Mapping[str, Any] | None = None) -> np.ndarray:
        order = check_order(order, self.min_order)
        poles = np.asarray(self.check_parameters(order, numpy_params(params))["poles"], dtype=float)
        mu = np.atleast_1d(np.asarray(mu))
        cols = [np.ones(mu.shape, dtype=np.result_type(mu.dtype, float))]
        cols += [1 / (1 - p * mu) for p in poles]
        return np.stack(cols, axis=1)

    def symbolic(self, order: int, x: Any, params: Mapping[str, Any] | None = None) -> list:
        order = check_order(order, self.min_order)
        poles = (params or {}).get("poles", self.parameter_symbols(order)["poles"])
        return [sp.Integer(1)] + [1 / (1 - poles[k] * x) for k in range(order)]

    def parameter_symbols(self, order: int) -> dict[str, Any]:
        return {"poles": [sp.Symbol(f"psi_{k}", real=True)
                          for k in range(1, check_order(order, self.min_order) + 1)]}

