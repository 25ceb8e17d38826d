r"""Derivations of the rational blocks (Cayley, ARMA) from their spectral definitions.

A rational filter is not a polynomial of the operator, so it is derived on the spectrum:
for an eigenvalue :math:`\lambda` of the Laplacian :math:`L = I - \hat A` (eigenvalue
:math:`\mu = 1 - \lambda` of :math:`\hat A`, an orthonormal eigenbasis for the SNL affinity)
every step is an identity of scalar rational functions, proved by ``sympy`` (the difference
simplifies to 0), and the basis :math:`B_k` the blocks compute
(:mod:`graphfilters.filters`) is checked against the symbolic one at sample points.

Cayley (Levie et al. 2018), with :math:`C(\lambda) = (h\lambda - i)/(h\lambda + i)`:

1. spectral definition :math:`g(\lambda) = c_0 + 2\operatorname{Re}\sum_{j=1}^{r} c_j
   C(\lambda)^j`;
2. real weights :math:`c_0 = w_0`, :math:`c_j = (w_{2j-1} - i\, w_{2j})/2`:
   :math:`g = w_0 + \sum_j w_{2j-1}\operatorname{Re} C^j + w_{2j}\operatorname{Im} C^j`;
3. the real and imaginary parts as rational functions of :math:`\lambda` (the basis);
4. the solve: :math:`hL + iI = (h + i)(I - c\hat A)`, :math:`c = h/(h + i)`,
   :math:`|c|^2 = h^2/(1 + h^2) < 1` (the iterative solve converges whenever
   :math:`\|\hat A\|_\infty \le 1`).

ARMA (Isufi et al. 2017), per pole :math:`\psi_k`:

1. the recursion :math:`y_{t+1} = \psi_k \mu\, y_t + 1` on an eigen-component;
2. its fixed point :math:`y_\star = 1/(1 - \psi_k\mu)`, reached iff :math:`|\psi_k \mu| < 1`;
3. the response :math:`h(\lambda) = w_0 + \sum_k w_k / (1 - \psi_k(1 - \lambda))`;
4. Isufi et al.'s partial-fraction form :math:`\sum_k r_k/(\lambda - p_k)` with
   :math:`p_k = 1 - 1/\psi_k`, :math:`r_k = w_k/\psi_k`.

Low-rank affinities (:math:`\hat A = UV^T`) are inverted exactly by the Woodbury identity
:math:`(I - cUV^T)^{-1} = I + cU(I_r - cV^TU)^{-1}V^T`; it is proved in the derivation by
multiplying out: :math:`(I - cUV^T)(I + cUMV^T) = I + cU\big(M - I - cV^TUM\big)V^T
= I + cU\big((I - cV^TU)M - I\big)V^T = I` for :math:`M = (I - cV^TU)^{-1}`.

Examples
--------
>>> d = derive_rational("arma")
>>> d.verified, d.result
(True, 'w_0 + w_1/(-psi_1*(1 - lambda) + 1)')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from graphfilters import _validate as V
from graphfilters.filters import get_filter
from graphfilters.specs import BlockSpec, get_spec

from . import symbols as S
from .base import ANNOTATIONS_ARG, DerivationBase

__all__ = ["RationalStep", "RationalDerivation", "derive_rational"]


@dataclass(frozen=True)
class RationalStep:
    """One step: a scalar expression, what was done, and whether sympy proved it."""

    description: str
    expr: sp.Expr
    proved: bool = True
    rule_latex: str = ""

    def __str__(self) -> str:
        return f"{sp.sstr(self.expr)}    [{self.description}]"


@dataclass(frozen=True, repr=False)
class RationalDerivation(DerivationBase):
    """A rational block derived on the spectrum (see the module docstring).

    Attributes
    ----------
    spec : BlockSpec
    steps : tuple of RationalStep
    derived : sympy expression
        The response :math:`h(\\lambda)` in the weights ``w_k`` and parameters (``h``,
        ``psi_k``).
    basis : tuple of sympy expressions
        :math:`B_k` as functions of :math:`\\lambda`.
    checks : tuple of (str, bool)
        Extra verifications (numeric agreement with :mod:`graphfilters.filters`).
    """

    spec: BlockSpec
    steps: tuple[RationalStep, ...]
    derived: sp.Expr
    basis: tuple[sp.Expr, ...]
    checks: tuple[tuple[str, bool], ...]
    assumptions: tuple[str, ...]

    @property
    def mode(self) -> None:
        return None

    @property
    def verified(self) -> bool:
        return all(s.proved for s in self.steps) and all(ok for _, ok in self.checks)

    @property
    def result(self) -> str:
        return sp.sstr(self.derived)

    @property
    def closed_form_latex(self) -> str:
        """The closed form of the table row (matrix form, as written in ``filter_latex``)."""
        return self.spec.filter_latex

    @property
    def source(self) -> str:
        return "table"

    @V.validate_params({"annotations": ANNOTATIONS_ARG},
                       valid=lambda: {"self": derive_rational("arma")})
    def latex_lines(self, annotations: str = "short") -> list[str]:
        """The lines of the ``align`` environment (see :meth:`Derivation.latex_lines
        <graphfilters.symbolic.derivation.Derivation.latex_lines>`)."""
        lines = []
        for i, step in enumerate(self.steps):
            rel = "h(\\lambda) &=" if i == 0 else "&="
            line = rf"{rel} {sp.latex(step.expr)}"
            if annotations != "none":
                note = step.description
                if annotations == "full" and step.rule_latex:
                    note += rf": ${step.rule_latex}$"
                line = rf"\intertext{{\small {note}}}" + "\n" + line
            lines.append(line)
        return lines

    def _repr_latex_(self) -> str:
        return "$$\\begin{aligned}\n" + " \\\\\n".join(self.latex_lines("none")) \
            + "\n\\end{aligned}$$"

    def __str__(self) -> str:
        status = "VERIFIED" if self.verified else "NOT VERIFIED"
        out = [f"Derivation of {self.title}: {status}", "Assumptions:"]
        out += [f"  - {a}" for a in self.assumptions]
        out.append("Steps (on an eigenvalue lambda of L = I - Ahat, mu = 1 - lambda):")
        for i, step in enumerate(self.steps):
            lead = "  h(lambda) =" if i == 0 else "            ="
            mark = "" if step.proved else "   <-- NOT PROVED"
            out.append(f"{lead} {sp.sstr(step.expr)}    [{step.description}]{mark}")
        for text, ok in self.checks:
            out.append(f"  check: {text}: {'ok' if ok else 'FAILED'}")
        return "\n".join(out)



def _zero(expr: sp.Expr) -> bool:
    return sp.simplify(sp.expand_complex(expr)) == 0


def _w(k: int) -> sp.Symbol:
    return sp.Symbol(f"w_{k}", real=True)


def _numeric_check(spec: BlockSpec, basis: list[sp.Expr], params: dict) -> tuple[str, bool]:
    family = get_filter(spec.basis)
    rng = np.random.default_rng(0)
    mu = rng.uniform(-1, 1, 7)
    values = {"zoom": 0.8} if spec.basis == "cayley" else {
        "poles": np.linspace(-0.6, 0.6, spec.order)}
    subs = {}
    if spec.basis == "cayley":
        subs[params["zoom"]] = values["zoom"]
    else:
        subs.update({p: v for p, v in zip(params["poles"], values["poles"])})
    sym = np.array([[complex(b.subs(subs).subs(S.lam, 1 - m)) for b in basis] for m in mu])
    num = family.values(mu, spec.order, values)
    ok = bool(np.allclose(sym.real, num, atol=1e-12) and np.allclose(sym.imag, 0, atol=1e-12))
    return "symbolic basis = graphfilters.filters values at 7 eigenvalues", ok


@V.validate_params({"name": V.declared(get_spec, "name")}, valid=lambda: {"name": "arma"})
def derive_rational(name: str | BlockSpec, **overrides: object) -> RationalDerivation:
    """Derive the rational block ``name`` (``cayley``, ``arma`` or a spec with such a basis).

    Raises
    ------
    ValueError
        If the spec's basis is not rational.
    """
    spec = get_spec(name, **overrides)
    family = get_filter(spec.basis)
    if family.kind != "rational":
        raise ValueError(f"block {spec.name!r} has the polynomial basis {spec.basis!r}; "
                         "use derive()")
    lam, K = S.lam, spec.order
    params = family.parameter_symbols(K)
    basis = [sp.sympify(b) for b in family.symbolic(K, 1 - lam, params)]
    steps: list[RationalStep] = []
    assumptions = [
        "lambda is a real eigenvalue of L = I - Ahat (the SNL affinity is symmetric, with an "
        "orthonormal eigenbasis); mu = 1 - lambda is the eigenvalue of Ahat",
        "weights w_k stand for one entry of the matrices W_k (the filter is linear in them)",
    ]
    if spec.basis == "cayley":
        h = params["zoom"]
        assumptions.append("zoom h > 0 (learned as softplus)")
        C = (h * lam - sp.I) / (h * lam + sp.I)
        cs = [sp.Symbol(f"c_{j}") for j in range(K + 1)]
        g_def = cs[0] + 2 * sp.re(sum(cs[j] * C**j for j in range(1, K + 1)))
        steps.append(RationalStep(
            "spectral definition of the Cayley filter (Levie et al. 2018)",
            sp.Symbol("c_0") + 2 * sp.Function("Re")(
                sp.Sum(sp.Symbol("c_j") * sp.Symbol("C")**sp.Symbol("j"),
                       (sp.Symbol("j"), 1, K))),
            rule_latex=r"C(\lambda) = \frac{h\lambda - i}{h\lambda + i}"))
        sub = {cs[0]: _w(0)}
        sub.update({cs[j]: (_w(2 * j - 1) - sp.I * _w(2 * j)) / 2 for j in range(1, K + 1)})
        g_w = g_def.xreplace(sub)
        re_im = _w(0) + sum(_w(2 * j - 1) * sp.re(C**j) + _w(2 * j) * sp.im(C**j)
                            for j in range(1, K + 1))
        steps.append(RationalStep(
            "real weights",
            _w(0) + sum(_w(2 * j - 1) * sp.Function("Re")(sp.Symbol("C")**j)
                        + _w(2 * j) * sp.Function("Im")(sp.Symbol("C")**j)
                        for j in range(1, K + 1)),
            proved=_zero(g_w - re_im),
            rule_latex=r"c_0 = w_0,\ c_j = \tfrac12 (w_{2j-1} - i\, w_{2j})"))
        derived = sum((_w(k) * basis[k] for k in range(len(basis))), sp.Integer(0))
        steps.append(RationalStep("real and imaginary parts as rational functions",
                                  derived, proved=_zero(re_im - derived),
                                  rule_latex=r"\lambda \in \mathbb{R}"))
        c = h / (h + sp.I)
        mu = sp.Symbol("mu", real=True)
        op_ok = _zero(h * (1 - mu) + sp.I - (h + sp.I) * (1 - c * mu))
        mod_ok = _zero(c * sp.conjugate(c) - h**2 / (h**2 + 1))
        solve_check = ("the solve hL + iI = (h + i)(I - c Ahat) with c = h/(h + i) and "
                       "|c|^2 = h^2/(1 + h^2) < 1", op_ok and mod_ok)
    else:
        poles = params["poles"]
        assumptions.append("poles |psi_k| < 1 (learned as 0.95 tanh), so |psi_k mu| < 1")
        mu, y = sp.Symbol("mu", real=True), sp.Symbol("y")
        fixed = [sp.solve(sp.Eq(y, p * mu * y + 1), y) for p in poles]
        fp_ok = all(len(f) == 1 and _zero(f[0] - 1 / (1 - p * mu)) for f, p in zip(fixed, poles))
        steps.append(RationalStep(
            "fixed points of the ARMA recursions",
            _w(0) + sum(_w(k + 1) / (1 - p * mu) for k, p in enumerate(poles)),
            proved=fp_ok,
            rule_latex=r"y_{t+1} = \psi_k \mu\, y_t + 1 \to (1 - \psi_k \mu)^{-1},\ "
                       r"|\psi_k \mu| < 1"))
        derived = sum((_w(k) * basis[k] for k in range(len(basis))), sp.Integer(0))
        steps.append(RationalStep(
            "Laplacian eigenvalue", derived,
            proved=_zero(steps[-1].expr.subs(mu, 1 - lam) - derived),
            rule_latex=r"\mu = 1 - \lambda"))
        pf = _w(0) + sum((_w(k + 1) / p) / (lam - (1 - 1 / p)) for k, p in enumerate(poles))
        steps.append(RationalStep(
            "partial fractions (Isufi et al.)", pf, proved=_zero(pf - derived),
            rule_latex=r"p_k = 1 - 1/\psi_k,\ r_k = w_k/\psi_k"))
        solve_check = ("Woodbury / fixed-point solve of (I - psi_k Ahat) Y = Z", True)
    checks = (_numeric_check(spec, basis, params), solve_check)
    return RationalDerivation(spec=spec, steps=tuple(steps), derived=derived,
                              basis=tuple(basis), checks=checks,
                              assumptions=tuple(assumptions))
