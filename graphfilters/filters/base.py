r"""The filter abstraction: a family of bases :math:`B_k` and the one filter sum.

Every filter of the toolkit, polynomial or rational, is written

.. math::

    F(S, Z) = \sum_{k} B_k(S)\, Z\, W_k, \qquad
    H(\mu) = \sum_k B_k(\mu)\, W_k \in \mathbb R^{C_s \times C_{out}},

where :math:`S` is the graph operator (the normalized affinity :math:`\hat A` in the
*affinity form* of :mod:`graphfilters.specs`; the Laplacian is :math:`L = I - S` and its
eigenvalue :math:`\lambda = 1 - \mu`), :math:`B_k` are the scalar basis functions of a
*family* (Chebyshev polynomials, monomials, the Cayley rational functions, ARMA partial
fractions, ...), possibly depending on a few scalar parameters :math:`\vartheta` (the Cayley
zoom, the ARMA poles), and :math:`W_k` are the (matrix) weights. A family knows

* ``n_terms(order)`` and ``parameter_shapes(order)``,
* ``iter_terms(op, Z, order, params)``: the signals :math:`B_k(S) Z`, given an operator (a
  callable; rational families also solve :math:`(I - cS)Y = Z` through
  :class:`~graphfilters.filters.operator.GraphOperator`),
* ``values(mu, order, params)``: :math:`B_k(\mu)` at (complex) eigenvalues of :math:`S`,
* ``symbolic(order, x, params)``: :math:`B_k(x)` as sympy expressions,

and :func:`filter_sum` is the only place where :math:`\sum_k B_k(S) Z W_k` is summed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import sympy as sp
import torch

from .. import _validate as V
from .._backend import Array

__all__ = ["FilterFamily", "filter_sum", "check_order"]


def check_order(order: int, minimum: int = 0, what: str = "order") -> int:
    """Validate an integer order ``>= minimum`` (bools rejected): the declared integer
    check (:func:`graphfilters._validate.integer`), named ``what``."""
    return V.integer(order, what, minimum=minimum)


class FilterFamily:
    r"""A family of filter bases :math:`B_k(S)` (subclass per family, one instance per row
    of :data:`graphfilters.filters.FILTERS`).

    Attributes
    ----------
    name : str
        Registry name (also ``BlockSpec.basis``).
    kind : {"polynomial", "rational"}
    reference : str
        The paper the family comes from.
    min_order : int
        Smallest allowed ``order``.
    """

    name: str = ""
    kind: str = "polynomial"
    reference: str = ""
    min_order: int = 0
    #: LaTeX of the definition of :math:`B_k` (for tables and derivations).
    definition_latex: str = ""

    # -- structure -------------------------------------------------------------------------
    def first_order_is_operator(self) -> bool:
        """Whether :math:`B_0 = 1` and :math:`B_1(x) = x` (an order-1 filter is then
        :math:`Z W_0 + S Z W_1`), read from :meth:`symbolic`."""
        if self.kind != "polynomial":
            return False
        x = sp.Symbol("x")
        return [sp.expand(b) for b in self.symbolic(1, x)] == [1, x]

    def n_terms(self, order: int) -> int:
        """Number of basis terms (weights) of a filter of this ``order``."""
        return check_order(order, self.min_order) + 1

    def order_of(self, n_terms: int) -> int:
        """Inverse of :meth:`n_terms`."""
        return n_terms - 1

    def parameter_shapes(self, order: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the scalar parameters :math:`\\vartheta` (none for polynomials)."""
        return {}

    def initial_parameters(self, order: int) -> dict[str, np.ndarray]:
        """Initial *unconstrained* parameters (the values a block learns)."""
        return {}

    def constrain(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Map unconstrained parameters to the family's domain (identity by default)."""
        return dict(raw)

    def default_parameters(self, order: int) -> dict[str, np.ndarray]:
        """Constrained parameters at initialization (numpy)."""
        return {k: np.asarray(v) for k, v in
                self.constrain({k: np.asarray(v, dtype=float)
                                for k, v in self.initial_parameters(order).items()}).items()}

    def check_parameters(self, order: int, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check that ``params`` holds exactly the family's parameters, with their shapes.

        A rational filter's response depends on them, so they are never silently defaulted:
        pass a block's :meth:`~graphfilters.blocks.GraphFilterNonlocal.filter_parameters`, a
        record's ``params`` or :meth:`default_parameters`.
        """
        shapes = self.parameter_shapes(order)
        params = dict(params or {})
        unknown = set(params) - set(shapes)
        missing = set(shapes) - set(params)
        if unknown or missing:
            raise ValueError(
                f"filter {self.name!r} of order {order} takes the parameters {sorted(shapes)}"
                + (f"; missing {sorted(missing)}" if missing else "")
                + (f"; unknown {sorted(unknown)}" if unknown else "")
                + " (a block's filter_parameters() or a record's params)"
            )
        for key, shape in shapes.items():
            if tuple(np.shape(params[key])) != tuple(shape):
                raise ValueError(
                    f"filter {self.name!r}: parameter {key!r} must have shape {shape} for "
                    f"order {order}, got {tuple(np.shape(params[key]))}"
                )
        return params

    def shifted_solver(self, op: Any, Z: Any = None) -> Callable[[Any, Array], Array]:
        r"""``op.solve_shifted`` (:math:`(c, Z) \mapsto (I - cS)^{-1} Z`), which rational
        families need; a clear error for a plain callable, and for a signal ``Z`` in half
        precision (torch has no float16/bfloat16 LU or complex-half division)."""
        dtype = getattr(Z, "dtype", None)
        if dtype in (torch.float16, torch.bfloat16):
            raise TypeError(
                f"the {self.name} filter solves shifted linear systems, which torch does not "
                f"implement in {dtype}; run the block in float32 (block.float(), x.float())")
        solve = getattr(op, "solve_shifted", None)
        if solve is None:
            raise TypeError(
                f"the {self.name} filter needs an operator with solve_shifted (a "
                "graphfilters.filters.GraphOperator), got a plain callable"
            )
        return solve

    # -- numerics --------------------------------------------------------------------------
    def iter_terms(
        self, op: Callable[[Array], Array], Z: Array, order: int,
        params: Mapping[str, Any] | None = None,
    ) -> Iterator[Array]:  # pragma: no cover - abstract
        """Yield :math:`B_k(S) Z` for ``k = 0 .. n_terms - 1``."""
        raise NotImplementedError

    def terms(self, op: Callable[[Array], Array], Z: Array, order: int,
              params: Mapping[str, Any] | None = None) -> list[Array]:
        """:math:`[B_0(S)Z, \\dots]` (see :meth:`iter_terms`)."""
        return list(self.iter_terms(op, Z, order, params))

    def values(self, mu: Any, order: int, params: Mapping[str, Any] | None = None) -> np.ndarray:
        """:math:`B_k(\\mu)` for eigenvalues ``mu`` ``(n,)`` of :math:`S`: ``(n, n_terms)``."""
        mu = np.atleast_1d(np.asarray(mu))
        ones = np.ones((mu.shape[0], 1), dtype=np.result_type(mu.dtype, float))
        cols = self.terms(lambda X: mu[:, None] * X, ones, order,
                          numpy_params(params))
        return np.concatenate(cols, axis=1)

    def symbolic(self, order: int, x: Any, params: Mapping[str, Any] | None = None) -> list:
        """:math:`[B_0(x), \\dots]` as sympy expressions of the scalar ``x``; ``params``
        default to sympy symbols (``h``, ``psi_k``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def parameter_symbols(self, order: int) -> dict[str, Any]:
        """sympy symbols of the parameters (none for polynomials)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r})"


def numpy_params(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Filter parameters as numpy arrays (tensors detached and moved to the CPU)."""
    if params is None:
        return None
    out = {}
    for k, v in params.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        out[k] = np.asarray(v)
    return out


def filter_sum(
    terms: Sequence[Array] | Iterator[Array],
    weights: Sequence[Any],
    *,
    channels_first: bool = False,
) -> Array:
    r""":math:`\sum_k T_k W_k` over the terms :math:`T_k = B_k(S) Z`: the one filter sum.

    Parameters
    ----------
    terms : sequence of arrays ``(..., N, C_s)``
        :math:`B_k(S) Z` (e.g. from :meth:`FilterFamily.iter_terms`).
    weights : sequence
        One per term: a matrix ``(C_s, C_out)``, a scalar, or ``None`` (a dropped term).
    channels_first : bool
        Return :math:`\sum_k W_k^T T_k^T`, shape ``(B, C_out, N)`` (torch, 3-D terms; what a
        block's output normalization wants), computed by batched matmuls without a transposed
        copy of the result.

    Shapes
    ------
    ``(..., N, C_s)`` terms → ``(..., N, C_out)`` (or ``(B, C_out, N)`` channels first).

    Examples
    --------
    >>> import numpy as np
    >>> filter_sum([np.ones((2, 1)), 2 * np.ones((2, 1))], [np.array([[1.0]]), None])
    array([[1.],
           [1.]])
    >>> filter_sum([np.ones((2, 1)), np.ones((2, 1))], [0.5, 2.0])
    array([[2.5],
           [2.5]])
    """
    out = None
    n_w = len(weights)
    count = 0
    for k, term in enumerate(terms):
        if k >= n_w:
            break
        count += 1
        W = weights[k]
        if W is None:
            continue
        if getattr(W, "ndim", 0) == 2:
            if channels_first:
                t = term.transpose(1, 2)                       # (B, C_s, N), a view
                contrib = W.t().expand(t.shape[0], -1, -1).bmm(t)
            else:
                contrib = term @ W
        else:
            contrib = (term * W).transpose(1, 2) if channels_first else term * W
        out = contrib if out is None else out + contrib
    if count < n_w:
        raise ValueError(f"{n_w} weights for {count} filter terms")
    if out is None:
        raise ValueError("every weight is None: the filter is identically zero")
    return out
