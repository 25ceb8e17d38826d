r"""What the spec fields imply: assumptions and substitution rules, keyed by field values.

A derivation never asks for a block *name*. It reads the fields of a
:class:`graphfilters.specs.BlockSpec` row and looks up:

* the value of :math:`\lambda_{\max}` (``lambda_max``; ``None`` keeps the symbol),
* the Laplacian definition (``laplacian``),
* a **degree rule** :math:`D \to c\, I` (keyed by ``normalization`` and the ``row_stochastic``
  / ``unary`` flags): softmax rows sum to one (:math:`D = I`), DNL's pairwise plus unary
  softmax rows sum to two (:math:`D = 2I`), ``size`` reads :math:`A = M/N` as
  :math:`D^{-1}M`, ``none`` reads the raw affinity as the operator
  (:math:`D := \tfrac{\lambda_{\max}}{2} I`),
* otherwise an **operator rule** defining :math:`\hat A` (``sym``:
  :math:`\hat A := D^{-1/2} A D^{-1/2}`; ``rw``: :math:`\hat A := D^{-1} A`),
* the **weight constraint** (``weight_constraint``) and the **basis** (``basis``),
* assumption text for the kernel and the flags (rank, sparsity, shared affinity, output
  scale).

Adding a table row of an existing kind therefore needs no code here.

Examples
--------
>>> from graphfilters.specs import get_spec
>>> rule = degree_rule(get_spec("nl"))
>>> rule.name, str(rule.value)
('row_stochastic', 'I')
>>> operator_rule(get_spec("snl")).rule_latex
'\\hat{A} := D^{-1/2} A D^{-1/2}'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp
from sympy import MatMul, MatPow, Rational, ZeroMatrix

from graphfilters.specs import BlockSpec

from . import symbols as S
from .generic import laplacian

__all__ = [
    "Assumption",
    "DegreeRule",
    "OperatorRule",
    "DEGREE_RULES",
    "OPERATOR_RULES",
    "KERNEL_NOTES",
    "lambda_value",
    "degree_rule",
    "operator_rule",
    "constraint_substitution",
    "apply_stable_hypothesis",
    "apply_spec_rules",
    "assumptions",
]

_HALF = Rational(1, 2)


@dataclass(frozen=True)
class Assumption:
    """One assumption of a derivation: which spec field it comes from and what it says.

    ``exact`` is ``False`` for modelling choices the block makes (an approximation or a
    hypothesis), ``True`` for facts that hold for every input.
    """

    key: str
    text: str
    exact: bool = True

    def __str__(self) -> str:
        return f"[{self.key}] {self.text}" + ("" if self.exact else " (approximation)")


@dataclass(frozen=True)
class DegreeRule:
    """A substitution :math:`D \\to` ``value(lambda_max)`` selected by ``when(spec)``."""

    name: str
    when: Callable[[BlockSpec], bool]
    value_fn: Callable[[sp.Expr], sp.Basic]
    rule_tex: str
    text: str
    exact: bool

    def value_for(self, lam: sp.Expr) -> sp.Basic:
        return self.value_fn(lam)

    @property
    def value(self) -> sp.Basic:
        return self.value_fn(S.lambda_max)

    @property
    def rule_latex(self) -> str:
        return self.rule_tex


@dataclass(frozen=True)
class OperatorRule:
    """Definition of the normalized operator :math:`\\hat A` for a ``normalization``."""

    normalization: str
    substitution: sp.Basic  # what A becomes, in terms of Ahat and D
    rule_latex: str
    text: str


#: Degree rules, first match wins (keyed by normalization and the spec flags).
DEGREE_RULES: tuple[DegreeRule, ...] = (
    DegreeRule(
        "unary",
        lambda s: s.normalization == "rw" and s.unary,
        lambda lam: MatMul(2, S.I),
        "D = 2 I",
        "pairwise softmax plus a unary softmax broadcast to every row: both terms are "
        "row-stochastic, so every row of A sums to 2 and D = 2I",
        True,
    ),
    DegreeRule(
        "row_stochastic",
        lambda s: s.normalization == "rw" and s.row_stochastic,
        lambda lam: S.I,
        "D = I",
        "softmax (row-stochastic) affinity: every row of A sums to 1, so D = I and "
        "L_rw = I - A",
        True,
    ),
    DegreeRule(
        "size",
        lambda s: s.normalization == "size",
        lambda lam: S.I,
        "D := I",
        "normalization 'size' divides M by N instead of by the degrees: A = M/N is read as "
        "the normalized operator D^-1 M, i.e. D := I (exact when the rows of M sum to N)",
        False,
    ),
    DegreeRule(
        "none",
        lambda s: s.normalization == "none",
        lambda lam: MatMul(lam / 2, S.I) if lam != 2 else S.I,
        r"D := \frac{\lambda_{\max}}{2} I",
        "normalization 'none': the block applies its raw affinity A as the filter operator, "
        "which reads the Laplacian as D - A with D := (lambda_max/2) I (exact for a regular "
        "graph of degree lambda_max/2). lambda_max(D - A) <= 2 d_max is unbounded as the "
        "affinity scales, so lambda_max stays a generic symbol and the factor 2/lambda_max is "
        "absorbed by the learned weight",
        False,
    ),
)

#: Definitions of the normalized operator, used when no degree rule removes ``D``.
OPERATOR_RULES: dict[str, OperatorRule] = {
    "sym": OperatorRule(
        "sym",
        MatMul(S.D**_HALF, S.Ahat, S.D**_HALF),
        r"\hat{A} := D^{-1/2} A D^{-1/2}",
        "normalized affinity Ahat := D^-1/2 A D^-1/2, i.e. A = D^1/2 Ahat D^1/2",
    ),
    "rw": OperatorRule(
        "rw",
        MatMul(S.D, S.Ahat),
        r"\hat{A} := D^{-1} A",
        "normalized affinity Ahat := D^-1 A, i.e. A = D Ahat",
    ),
}

#: What each kernel contributes to the assumptions (text only, no substitution).
KERNEL_NOTES: dict[str, str] = {
    "embedded_gaussian": "softmax over each row of Theta Phi^T: row-stochastic and not "
                         "symmetric, so the spectrum is complex in general",
    "gaussian": "softmax over each row of X X^T: row-stochastic and not symmetric",
    "dot_product": "Theta Phi^T / N: entries can be negative, the degrees need not be those "
                   "of a graph",
    "concatenation": "ReLU(w_f^T [theta_i; phi_j]) / N: non-negative, divided by N",
    "relu_dot": "ReLU(Theta) ReLU(Phi)^T: every entry and degree is non-negative, so D^-1/2 "
                "is real (isolated nodes get 0)",
    "double_attention": "A = S_d S_g^T, a product of two softmaxes: row-stochastic with "
                        "rank <= m (the number of global descriptors)",
    "taylor_rbf": "Taylor-expanded Gaussian RBF on the (N*C)-node position x channel graph: "
                  "low rank (<= expansion order + 1), not normalized",
    "criss_cross": "softmax over the H+W-1 positions in the same row and column: a sparse, "
                   "row-stochastic graph",
    "disentangled": "whitened pairwise softmax plus a unary softmax shared by every row",
}


def lambda_value(spec: BlockSpec) -> sp.Expr:
    """:math:`\\lambda_{\\max}` of ``spec``: its number, or the symbol when ``None``.

    Examples
    --------
    >>> from graphfilters.specs import get_spec
    >>> lambda_value(get_spec("snl")), lambda_value(get_spec("cgnl"))
    (2, lambda_max)
    """
    return S.lambda_max if spec.lambda_max is None else sp.nsimplify(spec.lambda_max)


def degree_rule(spec: BlockSpec) -> DegreeRule | None:
    """The first :data:`DEGREE_RULES` entry that applies to ``spec`` (or ``None``)."""
    for rule in DEGREE_RULES:
        if rule.when(spec):
            return rule
    return None


def operator_rule(spec: BlockSpec) -> OperatorRule | None:
    """The :math:`\\hat A` definition for ``spec`` when no degree rule applies."""
    if degree_rule(spec) is not None:
        return None
    return OPERATOR_RULES.get(spec.normalization)


def constraint_substitution(spec: BlockSpec) -> dict[sp.Basic, sp.Basic]:
    """The affinity-form weight constraint as a substitution.

    Examples
    --------
    >>> from graphfilters.specs import get_spec
    >>> constraint_substitution(get_spec("ns"))
    {W_0: -W_1}
    """
    if spec.weight_constraint == "drop_order0":
        return {S.W0: ZeroMatrix(S.C_s, S.C_out)}
    if spec.weight_constraint == "tied":
        return {S.W0: MatMul(-1, S.W1)}
    return {}


def apply_stable_hypothesis(expr: sp.Basic, op: sp.Basic) -> sp.Basic:
    """Replace every power :math:`\\mathrm{op}^p`, :math:`p \\ge 2`, by ``op``."""
    return expr.replace(
        lambda e: isinstance(e, MatPow) and e.base == op and e.exp.is_Integer and e.exp > 1,
        lambda e: op,
    )


def laplacian_symbols(spec: BlockSpec) -> dict[sp.Basic, sp.Basic]:
    """Definitions of the Laplacian symbols a closed form may use (``L``, ``L_rw``, ...)."""
    lam = lambda_value(spec)
    mapping = {S.L: laplacian(spec.laplacian), S.L_rw: laplacian("rw"),
               S.L_sym: laplacian("sym")}
    mapping[S.Ltilde] = MatMul(2 / lam, mapping[S.L]) - S.I
    return mapping


def apply_spec_rules(expr: sp.Basic, spec: BlockSpec) -> sp.Basic:
    """Apply, in one go, everything the spec implies about ``L``, ``D`` and ``lambda_max``.

    Returns ``expr`` in terms of the block's operator (``A`` or ``Ahat``).

    Examples
    --------
    >>> from graphfilters.specs import get_spec
    >>> from graphfilters.symbolic.algebra import pretty_expand
    >>> pretty_expand(apply_spec_rules(S.L_rw, get_spec("ns")))
    'I - A'
    >>> pretty_expand(apply_spec_rules(S.L, get_spec("snl")))
    'I - Ahat'
    """
    lam = lambda_value(spec)
    expr = expr.xreplace(laplacian_symbols(spec)).xreplace({S.lambda_max: lam})
    rule = degree_rule(spec)
    if rule is not None:
        expr = expr.xreplace({S.D: rule.value_for(lam)})
    orule = operator_rule(spec)
    if orule is not None:
        expr = expr.xreplace({S.A: orule.substitution})
    return expr


def assumptions(spec: BlockSpec) -> tuple[Assumption, ...]:
    """The assumptions a derivation of ``spec`` rests on, in reading order."""
    out = [Assumption("affinity", f"{spec.affinity_latex} (kernel '{spec.kernel}'"
                      + (f", mode '{spec.mode}')" if spec.mode else ")"))]
    if spec.kernel in KERNEL_NOTES:
        out.append(Assumption("kernel", KERNEL_NOTES[spec.kernel]))
    if spec.symmetrize:
        out.append(Assumption("symmetrize", "the raw affinity is symmetrized, "
                              "sym(M) = (M + M^T)/2, so Ahat is symmetric with a real spectrum"))
    out.append(Assumption("normalization", f"normalization '{spec.normalization}', "
                          f"Laplacian '{spec.laplacian}'"))
    if spec.lambda_max is None:
        out.append(Assumption("lambda_max", "lambda_max is a generic positive symbol (no "
                              "bound independent of the affinity)", exact=False))
    else:
        out.append(Assumption("lambda_max", f"lambda_max := {lambda_value(spec)} (the "
                              "normalized Laplacian has its spectrum in [0, 2])"))
    rule = degree_rule(spec)
    if rule is not None:
        out.append(Assumption("degree", rule.text, exact=rule.exact))
    orule = operator_rule(spec)
    if orule is not None:
        out.append(Assumption("operator", orule.text))
    out.append(Assumption("order", f"order K = {spec.order} ({spec.n_terms} terms), basis "
                          f"'{spec.basis}'"))
    if spec.basis == "stable":
        out.append(Assumption("basis", "stable hypothesis Ahat^2 = Ahat (the steady state of "
                              "deep nonlocal stacks): every power Ahat^p, p >= 2, becomes Ahat",
                              exact=False))
    constraint_text = {
        "free": "all W_k independent",
        "drop_order0": "W_0 = 0 (the order-0 term is dropped)",
        "tied": "W_0 = -W_1 (tied weights: F = (A - I) Z W)",
    }[spec.weight_constraint]
    out.append(Assumption("weight_constraint", f"{spec.weight_constraint}: {constraint_text} "
                          "(affinity form, W^L_k = (-1)^k W_k)"))
    if spec.output == "gamma":
        out.append(Assumption("output", "the output is scaled by a learned scalar gamma, "
                              "absorbed as W_1 = gamma W"))
    if spec.unary:
        out.append(Assumption("unary", "the affinity carries an added unary (per-key) term"))
    if spec.low_rank:
        out.append(Assumption("low_rank", "the affinity has a low-rank factorization "
                              "(no N x N matrix needed; does not change the filter)"))
    if spec.shared_affinity:
        out.append(Assumption("shared_affinity", "the affinity is computed once from the "
                              "stage input and shared by the stage's blocks (each block is "
                              "the same filter of that affinity)"))
    return tuple(out)
