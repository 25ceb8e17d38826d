r"""Derive every nonlocal block of the table from the generic Chebyshev filter, with proof.

:func:`derive` reads one row of :mod:`graphfilters.specs` and substitutes, step by step
(each step a sympy substitution on non-commutative matrix symbols):

1. the generic filter :math:`\sum_{k=0}^{K} T_k(\tilde L) Z W^L_k`, expanded by the
   Chebyshev recursion;
2. :math:`\tilde L \to 2L/\lambda_{\max} - I`, then :math:`\lambda_{\max}` (2 for the
   normalized Laplacians, kept symbolic when the row says ``None``);
3. :math:`L \to` its definition in :math:`A, D`;
4. the degree rule (:math:`D \to I`, :math:`2I`, :math:`\tfrac{\lambda_{\max}}{2}I`) or the
   definition of :math:`\hat A` (see :mod:`graphfilters.symbolic.rules`);
5. sign absorption :math:`W^L_k \to (-1)^k W_k` (:math:`T_k(-x) = (-1)^k T_k(x)`);
6. the stable hypothesis :math:`\hat A^2 \to \hat A` when ``basis == "stable"``;
7. the weight constraint (:math:`W_0 \to 0` or :math:`W_0 \to -W_1`);
8. naming the single learned weight :math:`W` when the closed form has one (absorbing a
   scalar factor and CC's :math:`\gamma`).

The closed form is parsed from the row's ``filter_latex`` (every side of ``F = X = Y``), its
Laplacian symbols are rewritten by the same rules, and the proof is that
``derived - closed_form`` expands to the zero matrix in the free algebra of the symbols
(:func:`graphfilters.symbolic.algebra.difference`).

Examples
--------
>>> d = derive("snl")
>>> d.verified
True
>>> d.result
'Z*W_0 + Ahat*Z*W_1'
>>> derive("nl", mode="dot_product").verified
True
>>> derive("gsnl", closed_form=r"Z W_0 + \hat A Z W_1 + (2\hat A - I) Z W_2").verified
False
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import sympy as sp
from sympy import MatAdd, MatMul

from graphfilters import _validate as V
from graphfilters.filters import get_filter
from graphfilters.specs import (
    ATTENTION_BLOCKS,
    BLOCK_NAMES,
    AttentionSpec,
    BlockSpec,
    get_attention_spec,
    get_spec,
)

from . import symbols as S
from .algebra import difference, expand_matrix
from .base import ANNOTATIONS_ARG, DerivationBase, align
from .generic import (
    as_filter,
    chebyshev_polynomial,
    collect_powers,
    generic_filter,
    laplacian,
    weight_terms,
)
from .identify import power_to_chebyshev
from .limits import MAX_ORDER, check_limit
from .parsing import parse_equation
from .printing import latex, latex_to_text, pretty, text_latex
from .rational import RationalDerivation, derive_rational
from .rules import (
    Assumption,
    apply_spec_rules,
    apply_stable_hypothesis,
    assumptions,
    constraint_substitution,
    degree_rule,
    lambda_value,
    operator_rule,
)

__all__ = ["Step", "Derivation", "derive", "derive_all", "closed_form_from_fields",
           "derive_attention", "gfsa_chebyshev_coefficients"]

_STRUCTURE_FIELDS = {"order", "weight_constraint", "basis"}


@dataclass(frozen=True)
class Step:
    """One step of a derivation.

    Attributes
    ----------
    description : str
        What the step does and why (plain text).
    rule_latex : str
        The substitution in LaTeX (``""`` for the generic filter).
    substitution : Mapping
        The sympy substitution applied (old -> new); empty for the first step.
    expr : sympy matrix expression
        The filter after the step.
    """

    description: str
    rule_latex: str
    substitution: Mapping[sp.Basic, sp.Basic]
    expr: sp.Basic
    #: The description for papers (LaTeX text mode, math in ``$...$``); default: escaped
    #: ``description``.
    description_latex: str = ""

    def __str__(self) -> str:
        return f"{pretty(self.expr)}    [{self.description}]"

    @property
    def paper_text(self) -> str:
        """The description in LaTeX text mode."""
        return self.description_latex or text_latex(self.description)[len(r"\text{"):-1]


@dataclass(frozen=True, repr=False)
class Derivation(DerivationBase):
    """A block derived from the generic Chebyshev filter, with its proof.

    Attributes
    ----------
    spec : BlockSpec
        The table row.
    assumptions : tuple of Assumption
    steps : tuple of Step
        From the generic filter (first) to the derived closed form (last).
    derived : sympy matrix expression
        The filter after the last step.
    closed_forms : tuple of sympy matrix expressions
        The closed form(s) claimed, as written (parsed from ``filter_latex`` unless given);
        Laplacian symbols such as ``L_rw`` are rewritten by the spec rules for the proof.
    closed_form_latex : str
        The closed form as written in the table (or as given).
    source : str
        Where the closed form comes from: ``"table"`` (``filter_latex``), ``"fields"``
        (:func:`closed_form_from_fields`, for structural overrides) or ``"given"``.
    differences : tuple
        ``derived - closed_form``, expanded and simplified, for each closed form.
    verified : bool
        Whether every difference is the zero matrix.
    operator : MatrixSymbol
        The operator of the closed form, ``A`` or ``Ahat``.
    laplacian_weights : Mapping
        The Laplacian-form weights :math:`W^L_k` in terms of the closed-form weights.
    laplacian_in_operator : sympy matrix expression
        The block's Laplacian expressed in ``operator`` (linear: :math:`\\alpha I + \\beta X`).
    collapsed : sympy matrix expression or None
        For ``basis == "stable"``: the derived filter collected by powers of the operator,
        an order-1 filter with reparametrized weights.
    """

    spec: BlockSpec
    assumptions: tuple[Assumption, ...]
    steps: tuple[Step, ...]
    derived: sp.Basic
    closed_forms: tuple[sp.Basic, ...]
    closed_form_latex: str
    differences: tuple[sp.Basic, ...]
    verified: bool
    operator: sp.Basic
    source: str
    laplacian_weights: Mapping[sp.Basic, sp.Basic] = field(repr=False)
    laplacian_in_operator: sp.Basic = field(repr=False)
    collapsed: sp.Basic | None = field(default=None, repr=False)

    @property
    def mode(self) -> str | None:
        return self.spec.mode

    @property
    def closed_form(self) -> sp.Basic:
        """The first closed form."""
        return self.closed_forms[0]

    @property
    def result(self) -> str:
        """Plain text of the derived filter."""
        return pretty(self.derived)

    @property
    def generic(self) -> sp.Basic:
        """The generic filter the derivation starts from (in :math:`\\tilde L`)."""
        return self.steps[0].expr

    @property
    def constrained_generic(self) -> sp.Basic:
        """The generic filter with the constraint applied: :math:`W^L_k` replaced by
        :attr:`laplacian_weights` (still in :math:`\\tilde L`)."""
        return as_filter(self.generic.xreplace(dict(self.laplacian_weights)))

    @V.validate_params({"annotations": ANNOTATIONS_ARG}, valid=lambda: {"self": derive("nl")})
    def latex_lines(self, annotations: str = "short") -> list[str]:
        """The lines of the ``align`` environment (without the trailing ``\\\\``).

        ``annotations``: ``"none"``, ``"short"`` (what each step does) or ``"full"`` (and
        the substitution), set as ``\\intertext`` between the lines (never wider than the
        text).
        """
        K = self.spec.order
        lines = [rf"F &= \sum_{{k=0}}^{{{K}}} T_{{k}}(\tilde{{L}})\, Z\, W^{{L}}_{{k}}"]
        notes = []
        for step in self.steps:
            note = step.paper_text
            if annotations == "full" and step.rule_latex:
                note += rf": ${step.rule_latex}$"
            notes.append(note)
            lines.append(rf"&= {latex(step.expr)}")
        last = latex(self.steps[-1].expr) if self.steps else ""
        extra = []
        for cf, diff in zip(self.closed_forms, self.differences):
            proved = _is_zero_matrix(diff)
            what = "the table's" if self.source == "table" else (
                "the fields'" if self.source == "fields" else "the given")
            if proved and latex(cf) == last:
                notes[-1] += f"; this is {what} closed form (proved: derived $-$ closed form $= 0$)"
                continue
            if proved:
                extra.append((rf"&= {latex(cf)}",
                              f"{what} closed form (proved: derived $-$ closed form $= 0$)"))
            else:
                extra.append((rf"&\neq {latex(cf)}",
                              f"{what} closed form does NOT match: derived $-$ closed form "
                              rf"$= {latex(diff)}$"))
        if self.collapsed is not None:
            extra.append((rf"&= {latex(self.collapsed)}",
                          "collected by powers: an order-1 filter"))
        for line, note in extra:
            lines.append(line)
            notes.append(note)
        if annotations == "none":
            return lines
        out = [lines[0]]
        for line, note in zip(lines[1:], notes):
            out.append(rf"\intertext{{\small {note}}}" + "\n" + line)
        return out

    def to_latex(self, numbered: bool = False, annotations: str = "short") -> str:
        """LaTeX for papers: one ``align`` line per step.

        Parameters
        ----------
        numbered : bool
            ``False``: ``align*``. ``True``: ``align`` with one equation number, on the final
            line.
        annotations : {"none", "short", "full"}
            No notes, what each step does, or that and its substitution (as
            ``\\intertext``, so nothing is wider than the text).

        Examples
        --------
        >>> print(derive("snl").to_latex(annotations="none"))
        \\begin{align*}
        F &= \\sum_{k=0}^{1} T_{k}(\\tilde{L})\\, Z\\, W^{L}_{k} \\\\
        &= Z W^{L}_{0} + \\tilde{L} Z W^{L}_{1} \\\\
        &= Z W^{L}_{0} + \\left(\\frac{2}{\\lambda_{\\max}} L - I\\right) Z W^{L}_{1} \\\\
        &= Z W^{L}_{0} + \\left(L - I\\right) Z W^{L}_{1} \\\\
        &= Z W^{L}_{0} - D^{-1/2} A D^{-1/2} Z W^{L}_{1} \\\\
        &= Z W^{L}_{0} - \\hat{A} Z W^{L}_{1} \\\\
        &= Z W_{0} + \\hat{A} Z W_{1}
        \\end{align*}
        """
        return align(self.latex_lines(annotations), numbered)

    def _repr_latex_(self) -> str:
        from graphfilters.display import derivation_latex

        return derivation_latex(self)

    def _repr_markdown_(self) -> str:
        from graphfilters.display import derivation_markdown

        return derivation_markdown(self)

    def __str__(self) -> str:
        status = "VERIFIED" if self.verified else "NOT VERIFIED"
        out = [f"Derivation of {self.title}: {status}", "Assumptions:"]
        out += [f"  - {latex_to_text(str(a))}" for a in self.assumptions]
        out.append("Steps:")
        out.append(f"  F = sum_{{k=0}}^{{{self.order}}} T_k(Ltilde) Z W^L_k"
                   "    [generic Chebyshev filter, Laplacian form]")
        out += [f"    = {step}" for step in self.steps]
        forms = " = ".join(pretty(cf) for cf in self.closed_forms)
        out.append(f"Closed form ({self.source}): F = {forms}")
        for cf, diff in zip(self.closed_forms, self.differences):
            out.append(f"  {pretty(self.derived)}  -  ({pretty(cf)})  =  {pretty(diff)}")
        if self.collapsed is not None:
            out.append(f"Collected by powers (order-1 filter): F = {pretty(self.collapsed)}")
        return "\n".join(out)



#: Paper wording of the spec values the steps name (no Python names in the LaTeX).
_LAPLACIAN_TEXT = {"sym": "symmetric normalized Laplacian $L_{sym}$",
                   "rw": "random-walk Laplacian $L_{rw}$",
                   "combinatorial": "combinatorial Laplacian $L = D - A$"}
_DEGREE_TEXT = {"unary": "degrees of a pairwise plus a unary softmax (rows sum to 2)",
                "row_stochastic": "degrees of a row-stochastic (softmax) affinity",
                "size": r"normalization by the size $N$ read as $D := I$",
                "none": r"raw affinity: degrees read as $\tfrac{\lambda_{\max}}{2} I$"}
_NORMALIZATION_TEXT = {"sym": "symmetric normalization of the affinity",
                       "rw": "random-walk normalization of the affinity"}
_CONSTRAINT_TEXT = {"drop_order0": "weight constraint: no order-0 term",
                    "tied": "weight constraint: tied weights $W_0 = -W_1$",
                    "free": "free weights"}


def _rule_tex(mapping: Mapping) -> str:
    """A substitution in LaTeX: ``old \to new`` pairs."""
    return r",\ ".join(rf"{latex(k)} \to {latex(v)}" for k, v in mapping.items())


def _is_zero_matrix(expr: sp.Basic) -> bool:
    return isinstance(expr, sp.ZeroMatrix) or expr == 0


def closed_form_from_fields(spec: BlockSpec) -> sp.Basic:
    r"""The affinity-form filter built from the spec fields alone.

    .. math:: F = \sum_{k \in \text{free}} B_k(X)\, Z\, W_k

    with :math:`X = -\tilde L` after the spec rules (``A``, ``Ahat``, ``A/2``, ...), the
    Chebyshev or stable basis, and the weight constraint. Used when ``order``,
    ``weight_constraint`` or ``basis`` are overridden (the table's ``filter_latex`` then no
    longer applies).

    Examples
    --------
    >>> from graphfilters.specs import get_spec
    >>> pretty(closed_form_from_fields(get_spec("snl", order=2)))
    'Z*W_0 + Ahat*Z*W_1 + (2*Ahat**2 - I)*Z*W_2'
    """
    X = _affinity_operator(spec)
    parts = []
    for k in range(spec.order + 1):
        B = chebyshev_polynomial(k, X)
        if spec.basis == "stable":
            B = apply_stable_hypothesis(B, _operator_symbol(spec))
        parts.append(MatMul(B, S.Z, S.weight(k)))
    expr = parts[0] if len(parts) == 1 else MatAdd(*parts)
    return as_filter(expr.xreplace(constraint_substitution(spec)))


def _operator_symbol(spec: BlockSpec) -> sp.Basic:
    return S.Ahat if operator_rule(spec) is not None else S.A


def _affinity_operator(spec: BlockSpec) -> sp.Basic:
    """The affinity-form operator :math:`X = -\\tilde L` of ``spec`` after its rules."""
    lam = lambda_value(spec)
    Lt = MatAdd(MatMul(2 / lam, S.L), MatMul(-1, S.I))
    return expand_matrix(MatMul(-1, apply_spec_rules(Lt, spec)))


_CLOSED_FORM = "a LaTeX/plain string, a sympy matrix expression or a list of them"


def _parse_closed_forms(closed_form: object) -> tuple[tuple[sp.Basic, ...], str]:
    if isinstance(closed_form, str):
        return tuple(parse_equation(closed_form)), closed_form
    if isinstance(closed_form, sp.Basic):
        return (closed_form,), f"F = {latex(closed_form)}"
    if isinstance(closed_form, Sequence):
        forms = tuple(_parse_closed_forms(c)[0][0] for c in closed_form)
        return forms, "F = " + " = ".join(latex(c) for c in forms)
    raise TypeError(f"closed_form must be {_CLOSED_FORM}, got {type(closed_form).__name__}")


@V.validate_params(
    {"name": V.declared(get_spec, "name"), "mode": V.declared(get_spec, "mode"),
     "closed_form": [V.InstanceOf((str, sp.Basic, Sequence), _CLOSED_FORM), None]},
    valid=lambda: {"name": "nl"},
)
def derive(name: str | BlockSpec, mode: str | None = None, *,
           closed_form: object = None, **overrides: object
           ) -> Derivation | RationalDerivation:
    """Derive block ``name`` from the generic Chebyshev filter and prove the closed form.

    Parameters
    ----------
    name : str or BlockSpec
        A table name (``nl``, ``ns``, ``a2``, ``cgnl``, ``cc``, ``dnl``, ``snl``, ``gsnl``,
        ``gsnl_stable``) or a spec.
    mode : str, optional
        For ``nl``: ``embedded_gaussian`` (default), ``dot_product``, ``gaussian``,
        ``concatenation``.
    closed_form : str, sympy expression or list, optional
        The closed form to prove; default: the row's ``filter_latex`` (or, when ``order``,
        ``weight_constraint`` or ``basis`` are overridden, :func:`closed_form_from_fields`).
        A wrong closed form gives ``verified == False``.
    **overrides
        Spec fields to override (validated by :func:`graphfilters.specs.get_spec`).

    Returns
    -------
    Derivation, or RationalDerivation for a rational basis (``cayley``, ``arma``: derived
    on the spectrum, :func:`graphfilters.symbolic.rational.derive_rational`).

    Raises
    ------
    ValueError
        Unknown block or mode (the message lists the known ones), an inconsistent spec, or a
        spec whose rules leave the degree matrix in the filter.

    Examples
    --------
    >>> d = derive("gsnl_stable")
    >>> d.verified, d.result
    (True, 'Z*W_0 + Ahat*Z*W_1 + (2*Ahat - I)*Z*W_2')
    >>> derive("foo")
    Traceback (most recent call last):
    ...
    ValueError: unknown block 'foo'; known blocks: nl, ns, a2, cgnl, cc, dnl, snl, gsnl, ...
    """
    if overrides.get("lambda_max") is not None:       # 0 gives zoo, < 0 a wrong rescaling
        V.check(overrides["lambda_max"], "lambda_max", [V.POS_REAL], "derive")
    if isinstance(overrides.get("order"), int):       # before any work: fail in microseconds
        check_limit(overrides["order"], MAX_ORDER, "order", "MAX_ORDER",
                    "the numeric blocks take any order; the symbolic expansion grows with it")
    if isinstance(name, str) and name.lower() in ATTENTION_BLOCKS and not (
            mode or overrides or closed_form is not None):
        return derive_attention(name.lower())
    spec = get_spec(name, mode=mode, **overrides)
    check_limit(spec.order, MAX_ORDER, "order", "MAX_ORDER")
    if get_filter(spec.basis).kind == "rational":
        if closed_form is not None:
            raise ValueError(f"block {spec.name!r} is a rational filter: it is derived on the "
                             "spectrum and takes no matrix closed_form")
        return derive_rational(spec)
    K = spec.order
    lam = lambda_value(spec)
    steps: list[Step] = []

    def record(description: str, rule_latex: str, mapping: Mapping, expr: sp.Basic,
               paper: str = "") -> sp.Basic:
        expr = as_filter(expr)
        steps.append(Step(description, rule_latex, MappingProxyType(dict(mapping)), expr,
                          paper))
        return expr

    expr = record("Chebyshev recursion",
                  r"T_{0} = I,\ T_{1} = \tilde{L},\ T_{k+1} = 2 \tilde{L} T_{k} - T_{k-1}",
                  {}, generic_filter(K, stage="ltilde"))
    sub = {S.Ltilde: MatAdd(MatMul(2 / S.lambda_max, S.L), MatMul(-1, S.I))}
    expr = record("scaled Laplacian", _rule_tex(sub), sub, expr.xreplace(sub))
    if spec.lambda_max is not None:
        sub = {S.lambda_max: lam}
        expr = record("lambda_max of the normalized Laplacian (spectrum in [0, 2])",
                      _rule_tex(sub), sub, expr.xreplace(sub),
                      r"$\lambda_{\max}$ of the normalized Laplacian (spectrum in $[0, 2]$)")
    sub = {S.L: laplacian(spec.laplacian)}
    expr = record(f"Laplacian '{spec.laplacian}'", _rule_tex(sub), sub, expr.xreplace(sub),
                  _LAPLACIAN_TEXT[spec.laplacian])
    drule = degree_rule(spec)
    if drule is not None:
        sub = {S.D: drule.value_for(lam)}
        expr = record(f"degree rule '{drule.name}'", drule.rule_latex, sub, expr.xreplace(sub),
                      _DEGREE_TEXT.get(drule.name, ""))
    orule = operator_rule(spec)
    if orule is not None and S.D in expr.atoms(sp.MatrixSymbol):
        sub = {S.A: orule.substitution}
        expr = record(f"normalization '{orule.normalization}'", orule.rule_latex, sub,
                      expr.xreplace(sub), _NORMALIZATION_TEXT.get(orule.normalization, ""))
    if S.D in expr.atoms(sp.MatrixSymbol):
        raise ValueError(
            f"block {spec.name!r}: normalization {spec.normalization!r} with Laplacian "
            f"{spec.laplacian!r} leaves the degree matrix D in the filter "
            f"({pretty(expr)}); the filter is then not a polynomial of one operator. Use the "
            "Laplacian that matches the normalization (sym -> 'sym', rw -> 'rw') or add a "
            "degree rule in graphfilters.symbolic.rules"
        )
    op = _operator_symbol(spec)
    sub = {S.laplacian_weight(k): S.weight(k) if k % 2 == 0 else MatMul(-1, S.weight(k))
           for k in range(K + 1)}
    expr = record("sign absorption into the affinity-form weights",
                  r"T_{k}(-x) = (-1)^{k} T_{k}(x):\ W^{L}_{k} \to (-1)^{k} W_{k}", sub,
                  expr.xreplace(sub))
    weights: dict[sp.Basic, sp.Basic] = dict(sub)
    if spec.basis == "stable":
        before = expr
        expr = apply_stable_hypothesis(expr, op)
        if expr != before:
            expr = record("stable hypothesis", rf"{latex(op)}^{{2}} \to {latex(op)}",
                          {op**2: op}, expr)
    sub = constraint_substitution(spec)
    if sub:
        expr = record(f"weight constraint '{spec.weight_constraint}'", _rule_tex(sub), sub,
                      expr.xreplace(sub), _CONSTRAINT_TEXT.get(spec.weight_constraint, ""))
        weights = {k: v.xreplace(sub) for k, v in weights.items()}

    if closed_form is None:
        if _STRUCTURE_FIELDS & set(overrides) and "filter_latex" not in overrides:
            forms = (closed_form_from_fields(spec),)
            cf_latex, source = "F = " + latex(forms[0]), "fields"
        else:
            forms, cf_latex = _parse_closed_forms(spec.filter_latex)
            source = "table"
    else:
        forms, cf_latex = _parse_closed_forms(closed_form)
        source = "given"
    applied = tuple(apply_spec_rules(f, spec) for f in forms)

    rename = _rename_single_weight(expr, applied, spec)
    if rename is not None:
        sub, description = rename
        expr = record(description, _rule_tex(sub), sub, expr.xreplace(sub),
                      description.replace(" W", " $W$").replace("gamma", r"$\gamma$"))
        weights = {k: v.xreplace(sub) for k, v in weights.items()}

    weights = {k: expand_matrix(v) for k, v in weights.items()}
    diffs = tuple(difference(expr, f) for f in applied)
    verified = all(_is_zero_matrix(d) for d in diffs)
    L_op = _laplacian_in_operator(spec)
    return Derivation(
        spec=spec,
        assumptions=assumptions(spec),
        steps=tuple(steps),
        derived=expr,
        closed_forms=tuple(as_filter(f) for f in forms),
        closed_form_latex=cf_latex,
        differences=diffs,
        verified=verified,
        operator=op,
        source=source,
        laplacian_weights=MappingProxyType(weights),
        laplacian_in_operator=L_op,
        collapsed=collect_powers(expr) if spec.basis == "stable" else None,
    )


def _laplacian_in_operator(spec: BlockSpec) -> sp.Basic:
    return expand_matrix(apply_spec_rules(S.L, spec))


def _rename_single_weight(expr: sp.Basic, forms: tuple[sp.Basic, ...], spec: BlockSpec):
    """``W_j -> (scale) W`` when the closed form has the single weight ``W``."""
    form_symbols = set().union(*(f.atoms(sp.MatrixSymbol) for f in forms))
    if S.W not in form_symbols:
        return None
    split = weight_terms(expr)
    if split is None or len(split) != 1:
        return None
    (wj, poly), = split.items()
    if wj == S.W:
        return None
    # leading coefficient: the term of highest degree in the operator
    word = max(poly, key=lambda w: (sum(e for _, e in w if e.is_number and e > 0), str(w)))
    c = sp.simplify(poly[word])
    scale = 1 / c
    parts = []
    if c != 1:
        parts.append("absorb the scalar factor")
    if spec.output == "gamma":
        scale = S.gamma * scale
        parts.append("output scaled by the learned gamma")
    description = "name the single learned weight W" + (f" ({', '.join(parts)})" if parts else "")
    return {wj: MatMul(scale, S.W) if scale != 1 else S.W}, description


def derive_all() -> tuple[Derivation | RationalDerivation, ...]:
    """Every table row, ``nl`` once per mode.

    Examples
    --------
    >>> all(d.verified for d in derive_all())
    True
    >>> len(derive_all())
    14
    """
    out = []
    for name in BLOCK_NAMES:
        spec = get_spec(name)
        for mode in spec.modes or (None,):
            out.append(derive(name, mode=mode))
    return tuple(out)

# ------------------------------------------------------------------------------------------
# The attention table (graphfilters.specs.ATTENTION_BLOCKS)
# ------------------------------------------------------------------------------------------
#
# Each row is derived as the one-operator derivation of its polynomial part (derive() on the
# softmax row's rules: D = I, L_rw = I - A, lambda_max = 2), followed by the steps that say
# what it is a special case of (see derive_attention). The proof is the same as for the
# table's blocks: derived - closed_form expands to the zero matrix.


def gfsa_chebyshev_coefficients() -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    r""":math:`(c_0, c_1, c_2)` with :math:`w_0 + w_1 x + w_K(x + (K - 1)(x^2 - x)) =
    \sum_k c_k T_k(x)`.

    Examples
    --------
    >>> gfsa_chebyshev_coefficients()
    (K*w_K/2 + w_0 - w_K/2, -K*w_K + w_1 + 2*w_K, K*w_K/2 - w_K/2)
    """
    x = sp.Symbol("x")
    poly = sp.Poly(sp.expand(S.w_0 + S.w_1 * x + S.w_K * (x + (S.K - 1) * (x**2 - x))), x)
    a = power_to_chebyshev(2)
    return tuple(sp.expand(sum(poly.coeff_monomial(x**p) * a[p][k] for p in range(3)))
                 for k in range(3))


def _step(description: str, paper: str, sub: dict, expr: sp.Basic) -> Step:
    return Step(description, _rule_tex(sub), MappingProxyType(dict(sub)),
                as_filter(expand_matrix(expr)), paper)


def derive_attention(name: str | AttentionSpec) -> Derivation:
    """Derive the attention-table row ``name`` and prove its closed form.

    Parameters
    ----------
    name : str or AttentionSpec
        ``gfsa``, ``attnscale``, ``diffattn`` or ``efficient``.

    Returns
    -------
    Derivation
        Its ``spec`` is the attention row; its steps are those of the polynomial part
        followed by the special-case steps:

        - ``gfsa``: the order-2 filter with one shared weight per head, :math:`W_k \to c_k W`
          (:func:`gfsa_chebyshev_coefficients`);
        - ``attnscale``: the order-1 filter with no order-0 term, extended by one term in the
          DC projector :math:`P = \\mathbf 1\\mathbf 1^T/N`, :math:`P Z W_P`, then
          :math:`W \to (1 + \\lambda_h) W`, :math:`W_P \to -\\lambda_h W`;
        - ``diffattn``: the same filter on a second graph added, :math:`A \to A_1` and
          :math:`+ A_2 Z V_1`, then :math:`V_1 \to -\\lambda_d W`;
        - ``efficient``: the order-1 filter of a row-stochastic affinity.

    Examples
    --------
    >>> d = derive("attnscale")
    >>> d.verified, d.result
    (True, '((1 + lambda_h)*A - lambda_h*P)*Z*W')
    """
    spec = name if isinstance(name, AttentionSpec) else get_attention_spec(name)
    softmax = get_spec("nl")          # the rules of a row-stochastic softmax affinity
    if spec.name == "efficient":
        return derive(spec)
    if spec.name == "gfsa":
        base = derive(get_spec(softmax, order=2, weight_constraint="free"),
                      closed_form=r"Z W_0 + A Z W_1 + (2A^{2} - I) Z W_2")
        c = gfsa_chebyshev_coefficients()
        sub = {S.weight(k): MatMul(c[k], S.W) for k in range(3)}
        extra = [_step("GFSA: one shared weight per head, W_k -> c_k W with c_k the Chebyshev "
                       "coefficients of w_0 + w_1 x + w_K (x + (K - 1)(x^2 - x))",
                       r"GFSA: one shared weight per head, $W_k \to c_k W$ with $c_k$ the "
                       r"Chebyshev coefficients of $w_0 + w_1 x + w_K(x + (K - 1)(x^2 - x))$",
                       sub,
                       base.derived.xreplace(sub))]
    else:
        base = derive(softmax)        # F = A Z W
        if spec.name == "attnscale":
            grown = MatAdd(base.derived, S.P * S.Z * S.W_P)
            sub = {S.W: MatMul(1 + S.lambda_h, S.W), S.W_P: MatMul(-S.lambda_h, S.W)}
            extra = [_step("extend the generic filter by a DC projector term P Z W_P "
                           "(P = 1 1^T / N; A P = P for a row-stochastic A)",
                           r"extend the generic filter by a DC projector term $P Z W_P$ "
                           r"($P = \mathbf 1\mathbf 1^T/N$; $AP = P$ for a row-stochastic $A$)",
                           {}, grown),
                     _step("AttnScale: W -> (1 + lambda_h) W, W_P -> -lambda_h W",
                           r"AttnScale: $W \to (1 + \lambda_h) W$, $W_P \to -\lambda_h W$",
                           sub, grown.xreplace(sub))]
        else:                         # diffattn
            grown = MatAdd(base.derived.xreplace({S.A: S.A_1}), S.A_2 * S.Z * S.V_1)
            sub = {S.V_1: MatMul(-S.lambda_d, S.W)}
            extra = [_step("a second graph: A -> A_1 and the same order-1 filter on A_2 "
                           "added, A_2 Z V_1",
                           r"a second graph: $A \to A_1$ and the same order-1 filter on $A_2$ "
                           r"added, $A_2 Z V_1$", {S.A: S.A_1}, grown),
                     _step("differential attention: V_1 -> -lambda_d W",
                           r"differential attention: $V_1 \to -\lambda_d W$", sub,
                           grown.xreplace(sub))]
    derived = extra[-1].expr
    forms, cf_latex = _parse_closed_forms(spec.filter_latex)
    diffs = tuple(difference(derived, f) for f in forms)
    return replace(
        base, spec=spec, steps=base.steps + tuple(extra), derived=derived,
        closed_forms=tuple(as_filter(f) for f in forms), closed_form_latex=cf_latex,
        differences=diffs, verified=all(_is_zero_matrix(d) for d in diffs), source="table")
