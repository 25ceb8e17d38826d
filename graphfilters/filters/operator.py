r"""The graph operator a filter acts on, and the shifted solve rational filters need.

Rational filters (:mod:`~graphfilters.filters.cayley`, :mod:`~graphfilters.filters.arma`)
reduce to solves of

.. math::

    (I - c\,S)\, Y = Z, \qquad c \in \mathbb C,

with :math:`S` the normalized affinity :math:`\hat A`. :class:`GraphOperator` does this
exactly or iteratively, never forming an ``N x N`` matrix unless one was given:

* **low rank** :math:`S = U V^T` (``U, V`` of shape ``(..., N, r)``: the SNL/gSNL affinity
  :math:`D^{-1/2}\operatorname{sym}(PQ^T)D^{-1/2}` has ``U = D^{-1/2}[P, Q]``,
  ``V = D^{-1/2}[Q, P]/2``, ``r = 2C_s``): the Woodbury identity

  .. math::

      (I - cUV^T)^{-1} Z = Z + c\, U (I_r - c V^T U)^{-1} V^T Z

  is exact, in :math:`O(N r^2 + N r C)` time and :math:`O(N r)` memory.
* **dense** (``materialize``): ``torch.linalg.solve``.
* **otherwise** (softmax, criss-cross, DNL affinities): the fixed-point (Jacobi / ARMA)
  recursion :math:`Y_{t+1} = Z + c\,S\,Y_t`, :math:`Y_0 = Z`. **Convergence condition:**
  :math:`q = |c|\,\|S\|_\infty < 1`. Then :math:`Y \mapsto Z + cSY` is a contraction in the
  :math:`\infty`-norm and

  .. math::

      \frac{\|Y_t - Y_\star\|_\infty}{\|Z\|_\infty} \le \frac{q^{t+1}}{1 - q},

  so :math:`t = \lceil \log(\varepsilon (1 - q)) / \log q \rceil - 1` iterations reach the
  relative tolerance :math:`\varepsilon`. For a row-stochastic softmax affinity
  :math:`\|S\|_\infty = 1`: ARMA needs :math:`|\psi| < 1`, and the Cayley solve, with
  :math:`c = h/(h + i)`, :math:`|c| = h/\sqrt{1 + h^2} < 1`, always converges. The bound
  :math:`\|S\|_\infty` is computed at run time from the affinity's absolute row sums (one
  structured product), and a violated condition raises ``ValueError``; so does a tolerance
  that needs more than ``max_iter`` iterations. Gradients flow through the unrolled
  iterations (the exact derivative of the computed approximation; it converges at the same
  rate).

Examples
--------
>>> import torch
>>> from graphfilters.graph import LowRankAffinity
>>> P, Q = torch.rand(2, 30, 3, dtype=torch.float64), torch.rand(2, 30, 3, dtype=torch.float64)
>>> norm = LowRankAffinity(P, Q, symmetric=True).normalized("sym")
>>> op = GraphOperator.from_normalized(norm)
>>> Z = torch.randn(2, 30, 4, dtype=torch.float64)
>>> Y = op.solve_shifted(0.7, Z)
>>> ref = torch.linalg.solve(torch.eye(30, dtype=torch.float64) - 0.7 * norm.dense(), Z)
>>> bool((Y - ref).abs().max() < 1e-12), op.method
(True, 'woodbury')
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import _validate as V
from ..graph import NormalizedOperator

__all__ = ["GraphOperator", "default_tolerance"]


def default_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of iterative solves: 1e-12 in float64, 1e-6 in float32/16."""
    return 1e-12 if dtype in (torch.float64, torch.complex128) else 1e-6


class GraphOperator:
    r"""The operator :math:`S` of a filter: products, and shifted solves :math:`(I - cS)^{-1}`.

    Parameters
    ----------
    apply : callable
        ``apply(X) = S X`` for ``X`` of shape ``(..., N, C)``.
    dense : Tensor ``(..., N, N)``, optional
        :math:`S` as a matrix (then solves are direct).
    factors : (Tensor, Tensor) or callable returning them, optional
        ``(U, V)`` with :math:`S = U V^T`, each ``(..., N, r)`` (then solves use Woodbury); a
        callable is called on the first solve.
    inf_norm : callable, optional
        Returns :math:`\|S\|_\infty` (per batch element, or a scalar) for the iterative
        solve's convergence check.
    tol : float, optional
        Relative tolerance of iterative solves (default :func:`default_tolerance`).
    max_iter : int
        Most iterations of an iterative solve.

    Attributes
    ----------
    method : str
        ``"woodbury"``, ``"dense"`` or ``"iterative"``.
    iterations : int
        Iterations of the last iterative solve (0 otherwise).
    """

    @V.validate_params({"apply": ["callable"], "max_iter": [V.POS_INT],
                        "tol": [V.UNIT_TOL, None]},
                       valid=lambda: {"apply": lambda X: X})
    def __init__(
        self,
        apply: Callable[[Tensor], Tensor],
        *,
        dense: Tensor | None = None,
        factors: tuple[Tensor, Tensor] | None = None,
        inf_norm: Callable[[], Any] | None = None,
        tol: float | None = None,
        max_iter: int = 2000,
    ) -> None:
        self.apply = apply
        self.dense = dense
        self._factors = factors
        self._inf_norm = inf_norm
        self._inf_norm_value: float | None = None
        self.tol = tol
        self.max_iter = max_iter
        self.method = "dense" if dense is not None else ("woodbury" if factors is not None
                                                         else "iterative")
        self.iterations = 0
        #: ``V^T Z`` ``(..., r, C)`` of the last Woodbury solve: NaN/Inf whenever ``Z`` or the
        #: factors are (what a block checks instead of scanning its input); else ``None``.
        self.reduced: Tensor | None = None

    def __call__(self, X: Tensor) -> Tensor:
        return self.apply(X)

    @property
    def factors(self) -> tuple[Tensor, Tensor] | None:
        """``(U, V)`` with :math:`S = UV^T` (low-rank operators), formed on first use: a
        polynomial filter never needs them, only the Woodbury solve."""
        if callable(self._factors):
            self._factors = tuple(self._factors())
        return self._factors

    @classmethod
    def from_normalized(
        cls, op: NormalizedOperator | None, *, materialize: bool = False,
        dense: Tensor | None = None, tol: float | None = None, max_iter: int = 2000,
    ) -> GraphOperator:
        """Wrap a :class:`~graphfilters.graph.NormalizedOperator`: its matrix ``dense`` when
        given (or formed, if ``materialize``: direct solves), Woodbury for low-rank affinities,
        the fixed-point recursion otherwise. The one place a filter's operator is built."""
        if dense is None and materialize:
            dense = op.dense()
        if dense is not None:
            return cls(lambda X: dense @ X, dense=dense, tol=tol, max_iter=max_iter)
        if op.lowrank is not None:
            return cls(op, factors=lambda: _woodbury_factors(op), tol=tol, max_iter=max_iter)
        return cls(op, inf_norm=lambda: _inf_norm(op), tol=tol, max_iter=max_iter)

    # ------------------------------------------------------------------------------------
    def inf_norm(self) -> float:
        r""":math:`\max_b \|S_b\|_\infty` (largest absolute row sum), computed once."""
        if self._inf_norm_value is None:
            if self._inf_norm is None:
                if self.dense is not None:
                    value = self.dense.abs().sum(-1).max()
                else:
                    raise ValueError(
                        "this GraphOperator has no way to bound ||S||_inf; pass inf_norm="
                    )
            else:
                value = self._inf_norm()
            self._inf_norm_value = float(torch.as_tensor(value).detach().max())
        return self._inf_norm_value

    def solve_shifted(self, c: Any, Z: Tensor) -> Tensor:
        r""":math:`(I - cS)^{-1} Z` for a real or complex scalar ``c`` (tensor or number).

        Shapes
        ------
        ``Z``: ``(..., N, C)`` → same (complex if ``c`` or ``Z`` is complex).
        """
        if self.dense is not None:
            S = self.dense.to(_dtype(Z, c))
            eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
            return torch.linalg.solve(eye - c * S, Z.to(S.dtype))
        if self.factors is not None:
            U, V = (f.to(_dtype(Z, c)) for f in self.factors)
            r = U.shape[-1]
            eye = torch.eye(r, dtype=U.dtype, device=U.device)
            core = eye - c * (V.transpose(-1, -2) @ U)              # (..., r, r)
            Zc = Z.to(U.dtype)
            self.reduced = V.transpose(-1, -2) @ Zc
            return Zc + c * (U @ torch.linalg.solve(core, self.reduced))
        return self._fixed_point(c, Z)

    def _fixed_point(self, c: Any, Z: Tensor) -> Tensor:
        cabs = float(abs(c.detach()) if isinstance(c, Tensor) else abs(c))
        norm = self.inf_norm()
        q = cabs * norm
        if not q < 1:
            raise ValueError(
                "iterative solve of (I - c S) Y = Z does not converge: it needs "
                f"|c| * ||S||_inf < 1, got |c| = {cabs:.4g}, ||S||_inf = {norm:.4g} "
                f"(q = {q:.4g}); use a normalized (row-stochastic) affinity, smaller poles, "
                "a low-rank affinity (exact Woodbury solve) or materialize=True"
            )
        tol = self.tol if self.tol is not None else default_tolerance(Z.dtype)
        if q == 0:
            n_iter = 0
        else:
            n_iter = max(0, math.ceil(math.log(tol * (1 - q)) / math.log(q)) - 1)
        if n_iter > self.max_iter:
            raise ValueError(
                f"iterative solve needs {n_iter} iterations for tolerance {tol:g} at contraction "
                f"factor q = |c| ||S||_inf = {q:.4g} > max_iter = {self.max_iter}; raise "
                "max_iter or tol, or keep |c| further from 1/||S||_inf"
            )
        Z = Z.to(_dtype(Z, c))
        Y = Z
        for _ in range(n_iter):
            Y = Z + c * self._apply_any(Y)
        self.iterations = n_iter
        return Y

    def _apply_any(self, Y: Tensor) -> Tensor:
        """``S Y`` for a real or complex ``Y`` (a real operator applied to both parts)."""
        if Y.is_complex():
            return torch.complex(self.apply(Y.real), self.apply(Y.imag))
        return self.apply(Y)


def _dtype(Z: Tensor, c: Any) -> torch.dtype:
    complex_c = (c.is_complex() if isinstance(c, Tensor) else isinstance(c, complex))
    if not (complex_c or Z.is_complex()):
        return Z.dtype
    return torch.complex128 if Z.dtype in (torch.float64, torch.complex128) else torch.complex64


def _woodbury_factors(op: NormalizedOperator) -> tuple[Tensor, Tensor]:
    """``(U, V)`` of the low-rank :math:`\\hat A = U V^T`: ``U = D^{-1/2}[P, Q]``,
    ``V = D^{-1/2}[Q, P]/2`` (symmetric) or ``U = lP``, ``V = rQ``."""
    lr = op.lowrank
    if lr.symmetric:
        U = lr.stacked
        r = lr.P.shape[-1]
        V = torch.cat([U[..., r:], U[..., :r]], -1) / 2
    else:
        U, V = lr.P, lr.Q
    if op.factor != 1.0:
        U = U * op.factor
    return U, V


def _inf_norm(op: NormalizedOperator) -> Tensor:
    r""":math:`\|\operatorname{diag}(l) M \operatorname{diag}(r) f\|_\infty` bound: exact when
    ``r`` is absent (``rw``/``size``/``none``), else an upper bound with :math:`\max|r|`."""
    s = op.affinity.abs_row_sums()
    if op.right is not None:
        s = s * op.right.abs().amax(-1, keepdim=True)
    if op.left is not None:
        s = op.left.abs() * s
    return s.amax(-1) * abs(op.factor)
