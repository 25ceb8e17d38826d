r"""The facts the spectral argument rests on, each checked (symbolically, and numerically).

Each function returns a :class:`Fact`: a statement, whether it was verified, and the
evidence (every identity checked, every numeric test run).

1. :func:`normalized_laplacian_spectrum`: the normalized Laplacian of a symmetric
   non-negative affinity has its spectrum in :math:`[0, 2]`, so :math:`\lambda_{\max} := 2` is
   a valid Chebyshev rescaling on any graph.
2. :func:`softmax_row_stochastic`: softmax affinities are row-stochastic, :math:`D = I`,
   hence :math:`L_{rw} = I - A`.
3. :func:`chebyshev_parity`: :math:`T_k(-x) = (-1)^k T_k(x)`, so the signs of the
   Laplacian form are absorbed by the learned weights.
4. :func:`stable_hypothesis_collapse`: under :math:`\hat A^2 = \hat A` a Chebyshev filter of
   any order is an order-1 filter, with reparametrized weights.

Examples
--------
>>> all(fact.verified for fact in all_facts())
True
>>> print(chebyshev_parity(3).statement)
T_k(-x) = (-1)^k T_k(x) for every k <= 3 (scalars and non-commuting matrices)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy import MatAdd, MatMul

from graphfilters import _validate as V

from . import symbols as S
from .algebra import difference, expand_matrix, is_zero
from .generic import chebyshev_polynomial, collect_powers, laplacian
from .printing import latex, pretty, text_latex

__all__ = [
    "Evidence",
    "Fact",
    "normalized_laplacian_spectrum",
    "softmax_row_stochastic",
    "chebyshev_parity",
    "stable_hypothesis_collapse",
    "all_facts",
]


@dataclass(frozen=True)
class Evidence:
    """One checked item: what was checked, as text and LaTeX, and whether it holds."""

    description: str
    text: str
    latex: str
    holds: bool

    def __str__(self) -> str:
        return f"[{'ok' if self.holds else 'FAILED'}] {self.description}: {self.text}"


@dataclass(frozen=True)
class Fact:
    """A checked statement.

    Attributes
    ----------
    name : str
    statement : str
        Plain text.
    statement_latex : str
    evidence : tuple of Evidence
    verified : bool
        Every piece of evidence holds.
    """

    name: str
    statement: str
    statement_latex: str
    evidence: tuple[Evidence, ...]

    @property
    def verified(self) -> bool:
        return all(e.holds for e in self.evidence)

    def to_latex(self) -> str:
        """An ``align`` environment: the statement, then one line per piece of evidence."""
        status = "verified" if self.verified else "NOT verified"
        lines = [rf"& {self.statement_latex} && " + text_latex(f"{self.name}: {status}")]
        for e in self.evidence:
            mark = "holds" if e.holds else "FAILS"
            lines.append(rf"& {e.latex} && " + text_latex(f"{e.description}: {mark}"))
        return "\\begin{align}\n" + " \\\\\n".join(lines) + "\n\\end{align}"

    def _repr_latex_(self) -> str:
        return "$$" + self.to_latex().replace("{align}", "{aligned}") + "$$"

    def __str__(self) -> str:
        status = "VERIFIED" if self.verified else "NOT VERIFIED"
        return "\n".join([f"{self.name}: {self.statement} [{status}]"]
                         + [f"  {e}" for e in self.evidence])


def _quadratic_forms(n: int):
    """Symbolic affinity, degrees, and the two quadratic forms for an n-node graph."""
    a = {}
    for i in range(n):
        for j in range(i, n):
            a[i, j] = a[j, i] = sp.Symbol(f"a_{i}{j}", nonnegative=True)
    u = sp.symbols(f"u_0:{n}", real=True)
    d = [sum(a[i, j] for j in range(n)) for i in range(n)]
    return a, u, d


@V.validate_params(
    {"n": [V.Interval(V.Integral, 2, None, closed="left")], "numeric_trials": [V.NONNEG_INT],
     "seed": [V.NONNEG_INT, None]},
    valid=lambda: {"n": 2, "numeric_trials": 1},
)
def normalized_laplacian_spectrum(n: int = 3, numeric_trials: int = 20, seed: int = 0
                                  ) -> Fact:
    r"""The spectrum of :math:`L_{sym}` of a symmetric non-negative affinity lies in [0, 2].

    Proof checked by sympy for a generic ``n``-node graph (symbolic non-negative
    :math:`a_{ij} = a_{ji}`, self-loops allowed, positive degrees): with
    :math:`x = D^{1/2} u`,

    .. math::

        x^T L_{sym} x = \tfrac12 \sum_{ij} a_{ij} (u_i - u_j)^2 \ge 0, \qquad
        x^T (2I - L_{sym}) x = \tfrac12 \sum_{ij} a_{ij} (u_i + u_j)^2 \ge 0,

    (:math:`u_i = x_i/\sqrt{d_i}`), so the Rayleigh quotient of the symmetric
    :math:`L_{sym}` lies in [0, 2]. Isolated nodes (:math:`d_i = 0`, inverse square root 0
    by convention) contribute the eigenvalue 1. Plus a numeric check on random graphs with
    isolated nodes.

    Examples
    --------
    >>> normalized_laplacian_spectrum(n=2, numeric_trials=3).verified
    True
    """
    n, numeric_trials = int(n), int(numeric_trials)
    a, u, d = _quadratic_forms(n)
    pairs = [(i, j) for i in range(n) for j in range(n)]
    # x^T L_sym x with x = D^{1/2} u, computed with explicit matrices
    Am = sp.Matrix(n, n, lambda i, j: a[i, j])
    sqrt_d = [sp.sqrt(di) for di in d]
    x = sp.Matrix([sqrt_d[i] * u[i] for i in range(n)])
    Dm12 = sp.diag(*[1 / s for s in sqrt_d])
    L_sym = sp.eye(n) - Dm12 * Am * Dm12
    quad_L = sp.expand((x.T * L_sym * x)[0])
    quad_2mL = sp.expand((x.T * (2 * sp.eye(n) - L_sym) * x)[0])
    low = sp.Rational(1, 2) * sum(a[i, j] * (u[i] - u[j]) ** 2 for i, j in pairs)
    high = sp.Rational(1, 2) * sum(a[i, j] * (u[i] + u[j]) ** 2 for i, j in pairs)
    ok_low = sp.simplify(quad_L - sp.expand(low)) == 0
    ok_high = sp.simplify(quad_2mL - sp.expand(high)) == 0
    evidence = [
        Evidence(f"quadratic form of L_sym, n = {n} symbolic nodes",
                 "x^T L_sym x = 1/2 sum_ij a_ij (x_i/sqrt(d_i) - x_j/sqrt(d_j))^2",
                 r"x^{T} L_{sym} x = \frac{1}{2}\sum_{ij} a_{ij}\left(\frac{x_i}{\sqrt{d_i}}"
                 r" - \frac{x_j}{\sqrt{d_j}}\right)^{2}", ok_low),
        Evidence(f"quadratic form of 2I - L_sym, n = {n} symbolic nodes",
                 "x^T (2I - L_sym) x = 1/2 sum_ij a_ij (x_i/sqrt(d_i) + x_j/sqrt(d_j))^2",
                 r"x^{T} (2I - L_{sym}) x = \frac{1}{2}\sum_{ij} a_{ij}\left("
                 r"\frac{x_i}{\sqrt{d_i}} + \frac{x_j}{\sqrt{d_j}}\right)^{2}", ok_high),
        Evidence("both sums are non-negative (a_ij >= 0, squares of reals)",
                 f"sympy: is_nonnegative = {low.is_nonnegative} and {high.is_nonnegative}",
                 r"a_{ij} \geq 0 \Rightarrow 0 \leq \frac{x^{T} L_{sym} x}{x^{T} x} \leq 2",
                 bool(low.is_nonnegative and high.is_nonnegative)),
    ]
    rng = np.random.default_rng(seed)
    worst_low, worst_high = np.inf, -np.inf
    for trial in range(numeric_trials):
        m = int(rng.integers(2, 40))
        W = rng.random((m, m)) * (rng.random((m, m)) < rng.uniform(0.1, 1.0))
        M = np.triu(W) + np.triu(W, 1).T
        if trial % 3 == 0:  # isolate a node
            k = int(rng.integers(m))
            M[k, :] = M[:, k] = 0.0
        deg = M.sum(1)
        inv_sqrt = np.zeros_like(deg)
        inv_sqrt[deg > 0] = deg[deg > 0] ** -0.5
        eig = np.linalg.eigvalsh(np.eye(m) - inv_sqrt[:, None] * M * inv_sqrt[None, :])
        worst_low, worst_high = min(worst_low, eig.min()), max(worst_high, eig.max())
    ok_num = worst_low >= -1e-10 and worst_high <= 2 + 1e-10
    evidence.append(Evidence(
        f"numeric: {numeric_trials} random graphs (2-39 nodes, some isolated nodes)",
        f"eigenvalues in [{worst_low:.3g}, {worst_high:.3g}]",
        rf"\lambda \in [{worst_low:.3g}, {worst_high:.3g}] \subseteq [0, 2]", ok_num))
    return Fact(
        "normalized_laplacian_spectrum",
        "the normalized Laplacian L_sym = I - D^-1/2 A D^-1/2 of a symmetric non-negative "
        "affinity has its spectrum in [0, 2], so lambda_max := 2 is valid on any graph",
        r"A = A^{T} \geq 0 \Rightarrow \operatorname{spec}(L_{sym}) \subseteq [0, 2]",
        tuple(evidence),
    )


def softmax_row_stochastic(n: int = 3, numeric_trials: int = 10, seed: int = 0) -> Fact:
    r"""Softmax affinities are row-stochastic: :math:`D = I`, so :math:`L_{rw} = I - A`.

    Checked for ``n`` symbolic scores per row: :math:`\sum_j e^{s_{ij}} / \sum_k e^{s_{ik}}
    = 1` and every entry is positive; then the substitution :math:`D \to I` in
    :math:`L_{rw} = I - D^{-1}A`; plus a numeric check.

    Examples
    --------
    >>> softmax_row_stochastic(n=2, numeric_trials=2).verified
    True
    """
    s = sp.Matrix(n, n, lambda i, j: sp.Symbol(f"s_{i}{j}", real=True))
    A = sp.Matrix(n, n, lambda i, j: sp.exp(s[i, j]) / sum(sp.exp(s[i, k]) for k in range(n)))
    sums = [sp.cancel(sum(A[i, j] for j in range(n))) for i in range(n)]
    positive = all(A[i, j].is_positive for i in range(n) for j in range(n))
    L_rw = expand_matrix(laplacian("rw").xreplace({S.D: S.I}))
    ok_L = is_zero(MatAdd(L_rw, MatMul(-1, S.I - S.A)))
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(numeric_trials):
        m = int(rng.integers(2, 50))
        scores = rng.normal(scale=3.0, size=(m, m))
        P = np.exp(scores - scores.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        worst = max(worst, float(np.abs(P.sum(1) - 1).max()))
    evidence = (
        Evidence(f"row sums, n = {n} symbolic scores per row", f"row sums = {sums}",
                 r"\sum_{j} \frac{e^{s_{ij}}}{\sum_{k} e^{s_{ik}}} = 1", all(x == 1 for x in sums)),
        Evidence("entries are positive", f"is_positive = {positive}",
                 r"A_{ij} = \frac{e^{s_{ij}}}{\sum_{k} e^{s_{ik}}} > 0", bool(positive)),
        Evidence("D = I in the random-walk Laplacian", f"{pretty(L_rw)} = I - A",
                 rf"L_{{rw}} = I - D^{{-1}} A \overset{{D = I}}{{=}} {latex(L_rw)}", ok_L),
        Evidence(f"numeric: {numeric_trials} random softmax affinities",
                 f"max |row sum - 1| = {worst:.2e}", rf"\max_i |d_i - 1| = {worst:.2e}",
                 worst < 1e-12),
    )
    return Fact(
        "softmax_row_stochastic",
        "softmax affinities are row-stochastic (D = I), so L_rw = I - A; they are not "
        "symmetric, so their spectrum is complex in general",
        r"A = \operatorname{softmax}_{row}(S) \Rightarrow D = I,\ L_{rw} = I - A",
        evidence,
    )


@V.validate_params({"order": [V.NONNEG_INT]}, valid=lambda: {"order": 1})
def chebyshev_parity(order: int = 6) -> Fact:
    r"""Sign absorption: :math:`T_k(-x) = (-1)^k T_k(x)` for :math:`k \le` ``order``.

    Checked on scalar polynomials and on non-commuting matrix polynomials
    (:math:`T_k(-\hat A)` against :math:`(-1)^k T_k(\hat A)`). With :math:`\tilde L =
    -\hat A` it gives :math:`\sum_k T_k(\tilde L) Z W^L_k = \sum_k T_k(\hat A) Z W_k`,
    :math:`W_k = (-1)^k W^L_k`.

    Examples
    --------
    >>> chebyshev_parity(4).verified
    True
    """
    order = int(order)
    x = sp.Symbol("x")
    scalar_ok = all(
        sp.expand(sp.chebyshevt(k, -x) - (-1) ** k * sp.chebyshevt(k, x)) == 0
        for k in range(order + 1)
    )
    matrix_ok = all(
        is_zero(MatAdd(chebyshev_polynomial(k, MatMul(-1, S.Ahat)),
                       MatMul(-((-1) ** k), chebyshev_polynomial(k, S.Ahat))))
        for k in range(order + 1)
    )
    evidence = (
        Evidence(f"scalar Chebyshev polynomials, k = 0..{order}",
                 "expand(T_k(-x) - (-1)^k T_k(x)) = 0",
                 r"T_{k}(-x) - (-1)^{k} T_{k}(x) = 0", scalar_ok),
        Evidence(f"matrix Chebyshev polynomials (non-commutative), k = 0..{order}",
                 "T_k(-Ahat) - (-1)^k T_k(Ahat) = 0",
                 r"T_{k}(-\hat{A}) - (-1)^{k} T_{k}(\hat{A}) = 0", matrix_ok),
    )
    return Fact(
        "chebyshev_parity",
        f"T_k(-x) = (-1)^k T_k(x) for every k <= {order} (scalars and non-commuting matrices)",
        r"T_{k}(-x) = (-1)^{k} T_{k}(x)",
        evidence,
    )


@V.validate_params(
    {"order": [V.Interval(V.Integral, 1, None, closed="left")], "seed": [V.NONNEG_INT, None]},
    valid=lambda: {"order": 1},
)
def stable_hypothesis_collapse(order: int = 2, seed: int = 0) -> Fact:
    r"""Under :math:`\hat A^2 = \hat A` a Chebyshev filter of any order is order 1.

    An idempotent :math:`\hat A` has eigenvalues 0 and 1, so
    :math:`T_k(\hat A) = T_k(0)(I - \hat A) + T_k(1)\hat A` and

    .. math::

        \sum_{k=0}^{K} T_k(\hat A) Z W_k = Z W'_0 + \hat A Z W'_1, \qquad
        W'_0 = \sum_k T_k(0) W_k, \quad W'_1 = \sum_k (1 - T_k(0)) W_k .

    For gSNL (:math:`K = 2`): :math:`Z(W_0 - W_2) + \hat A Z (W_1 + 2W_2)`. Checked
    symbolically (substituting :math:`\hat A^2 \to \hat A` in the expanded filter) and
    numerically with an idempotent normalized affinity (one-hot ReLU features).

    Examples
    --------
    >>> fact = stable_hypothesis_collapse()
    >>> fact.verified
    True
    >>> fact.evidence[0].text
    'Z*(W_0 - W_2) + Ahat*Z*(W_1 + 2*W_2)'
    """
    from .rules import apply_stable_hypothesis

    order = int(order)
    full = MatAdd(*[MatMul(chebyshev_polynomial(k, S.Ahat), S.Z, S.weight(k))
                    for k in range(order + 1)])
    stable = apply_stable_hypothesis(full, S.Ahat)
    t0 = [sp.chebyshevt(k, 0) for k in range(order + 1)]
    W0p = MatAdd(*[MatMul(t0[k], S.weight(k)) for k in range(order + 1) if t0[k] != 0])
    W1p = MatAdd(*[MatMul(1 - t0[k], S.weight(k)) for k in range(order + 1) if t0[k] != 1])
    claimed = MatAdd(MatMul(S.Z, W0p), MatMul(S.Ahat, S.Z, W1p))
    collapsed = collect_powers(stable)
    ok_sym = is_zero(difference(stable, claimed))
    # numeric: idempotent Ahat from one-hot ReLU features (clusters)
    rng = np.random.default_rng(seed)
    n, clusters, c = 12, 3, 2
    P = np.zeros((n, clusters))
    P[np.arange(n), rng.integers(clusters, size=n)] = rng.uniform(0.5, 2.0, size=n)
    M = P @ P.T
    deg = M.sum(1)
    Ahat = M / np.sqrt(np.outer(deg, deg))
    Z = rng.normal(size=(n, c))
    Ws = [rng.normal(size=(c, c)) for _ in range(order + 1)]
    T_prev, T_cur = np.eye(n), Ahat
    lhs = Z @ Ws[0] + (Ahat @ Z @ Ws[1] if order >= 1 else 0)
    for k in range(2, order + 1):
        T_prev, T_cur = T_cur, 2 * Ahat @ T_cur - T_prev
        lhs = lhs + T_cur @ Z @ Ws[k]
    W0n = sum(float(t0[k]) * Ws[k] for k in range(order + 1))
    W1n = sum((1 - float(t0[k])) * Ws[k] for k in range(order + 1))
    rhs = Z @ W0n + Ahat @ Z @ W1n
    err = float(np.abs(lhs - rhs).max())
    idem = float(np.abs(Ahat @ Ahat - Ahat).max())
    evidence = (
        Evidence(f"symbolic: order-{order} filter, stable hypothesis, collected by powers",
                 pretty(collapsed), rf"F = {latex(collapsed)}", ok_sym),
        Evidence("reparametrized weights", f"W'_0 = {pretty(W0p)}, W'_1 = {pretty(W1p)}",
                 rf"W'_{{0}} = {latex(W0p)},\ W'_{{1}} = {latex(W1p)}", ok_sym),
        Evidence("numeric: idempotent normalized affinity from one-hot ReLU features",
                 f"|Ahat^2 - Ahat| = {idem:.1e}, max error = {err:.1e}",
                 rf"\max |F - F'| = {err:.1e}", err < 1e-10 and idem < 1e-12),
    )
    return Fact(
        "stable_hypothesis_collapse",
        f"under the stable hypothesis Ahat^2 = Ahat, an order-{order} Chebyshev filter is the "
        f"order-1 filter Z W'_0 + Ahat Z W'_1",
        r"\hat{A}^{2} = \hat{A} \Rightarrow \sum_{k} T_{k}(\hat{A}) Z W_{k} = Z W'_{0} + "
        r"\hat{A} Z W'_{1}",
        evidence,
    )


def all_facts() -> tuple[Fact, ...]:
    """The four facts with their default arguments."""
    return (
        normalized_laplacian_spectrum(),
        softmax_row_stochastic(),
        chebyshev_parity(),
        stable_hypothesis_collapse(),
    )
