r"""The reverse direction: which Chebyshev filter (order, weight constraint) is an expression?

A polynomial filter of the operator :math:`X` (``A`` or ``Ahat``) is a sum of terms
:math:`c\, X^p Z W_j` (:math:`c` scalar, :math:`p \ge 0`). :func:`identify` collects the
coefficient :math:`C_p` of every power,

.. math:: F = \sum_p X^p Z C_p = \sum_{k=0}^{K} T_k(X)\, Z\, W'_k ,

converts to the Chebyshev basis with :math:`x^p = \sum_k a_{pk} T_k(x)`, and reads the weight
constraint from the linear relations between the :math:`W'_k` (affinity form; the Laplacian
form has :math:`W^L_k = (-1)^k W'_k`).

Examples
--------
>>> from graphfilters.symbolic.symbols import A, Z, W0
>>> result = identify(Z * W0 - A * Z * W0)
>>> result.order, result.weight_constraint, result.matches
(1, 'tied', ('ns',))
>>> identify("Z*A*W0")
Traceback (most recent call last):
...
ValueError: not a polynomial filter of A: product Z*A: Z has C_s columns but A has N rows...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType

import sympy as sp
from sympy import Inverse, MatAdd, MatMul, ZeroMatrix

from graphfilters import _validate as V
from graphfilters.specs import ATTENTION_BLOCKS, BLOCK_NAMES, get_spec

from . import symbols as S
from .algebra import expand_matrix, terms
from .identify_attention import (
    MULTI_OPERATORS,
    MultiOperatorIdentification,
    _shared_scalars,
    degeneracy,
    identify_multi,
)
from .limits import MAX_TERMS, SymbolicLimitError, check_limit
from .parsing import check_shapes, parse_equation, parse_filter
from .printing import pretty

__all__ = ["Identification", "RationalIdentification", "identify", "power_to_chebyshev"]

_OPERATORS = ("A", "Ahat")


@cache
def power_to_chebyshev(order: int) -> tuple[tuple[sp.Rational, ...], ...]:
    r"""Rows ``a[p]`` with :math:`x^p = \sum_k a_{pk} T_k(x)`, for ``p <= order``.

    Examples
    --------
    >>> power_to_chebyshev(2)[2]
    (1/2, 0, 1/2)
    """
    x = sp.Symbol("x")
    T = [sp.Poly(sp.chebyshevt(k, x), x) for k in range(order + 1)]
    rows = []
    for p in range(order + 1):
        rest = sp.Poly(x**p, x)
        coeffs = [sp.Integer(0)] * (order + 1)
        for k in range(p, -1, -1):
            lead = rest.coeff_monomial(x**k)
            if lead != 0:
                c = lead / T[k].coeff_monomial(x**k)
                coeffs[k] = c
                rest = rest - T[k] * c
        rows.append(tuple(coeffs))
    return tuple(rows)


@dataclass(frozen=True)
class Identification:
    """What :func:`identify` found.

    Attributes
    ----------
    expression : sympy matrix expression
    operator : MatrixSymbol
        ``A`` or ``Ahat``.
    order : int
        Polynomial degree :math:`K` in the operator.
    power_coefficients : Mapping[int, expr]
        :math:`C_p` with :math:`F = \\sum_p X^p Z C_p`.
    chebyshev_coefficients : Mapping[int, expr]
        :math:`W'_k` with :math:`F = \\sum_k T_k(X) Z W'_k` (affinity form).
    laplacian_coefficients : Mapping[int, expr]
        :math:`W^L_k = (-1)^k W'_k` (Laplacian form with :math:`\\lambda_{max} = 2`).
    weight_constraint : str
        ``"free"``, ``"drop_order0"``, ``"tied"`` (the table's constraints) or
        ``"constrained"`` (other linear relations, see ``relations``).
    relations : tuple of sympy.Eq
        The linear relations satisfied by the :math:`W'_k` (equations;
        :attr:`relations_text`, :attr:`relations_latex`).
    matches : tuple of str
        Table rows with the same effective order and constraint (``gsnl_stable`` counts as
        order 1: its stable basis collapses, see
        :func:`graphfilters.symbolic.facts.stable_hypothesis_collapse`).
    """

    expression: sp.Basic
    operator: sp.Basic
    order: int
    power_coefficients: Mapping[int, sp.Basic] = field(repr=False)
    chebyshev_coefficients: Mapping[int, sp.Basic] = field(repr=False)
    laplacian_coefficients: Mapping[int, sp.Basic] = field(repr=False)
    weight_constraint: str
    relations: tuple[sp.Eq, ...]
    matches: tuple[str, ...]
    #: Why no (or which) table row matched, when that needs saying.
    note: str = ""
    #: Substitutions made before matching (Laplacian symbols in the operator).
    assumptions: tuple[str, ...] = ()
    #: Rows of the attention table (:data:`graphfilters.specs.ATTENTION_BLOCKS`) of this form.
    attention_matches: tuple[str, ...] = ()
    #: Where the order holds when the leading coefficient has symbolic scalars (GFSA's
    #: ``K != 1``; :func:`~graphfilters.symbolic.identify_attention.degeneracy`).
    conditions: tuple[str, ...] = ()

    @property
    def scalars(self) -> Mapping[int, sp.Expr] | None:
        """The scalar of each power :math:`p` when every :math:`C_p` is a multiple of one
        weight :math:`W` (the filter is :math:`p(X) Z W`, as GFSA's per head); else ``None``.

        Examples
        --------
        >>> identify(r"(w_0 I + w_1 A) Z W").scalars
        {0: w_0, 1: w_1}
        >>> identify("Z*W0 + A*Z*W1").scalars is None
        True
        """
        zero = sp.ZeroMatrix(S.C_s, S.C_out)
        return _shared_scalars({p: c for p, c in self.power_coefficients.items()
                                if c != zero})

    @property
    def relations_text(self) -> tuple[str, ...]:
        """The relations as plain-text equations (``W'_0 - 3*W'_2 = 0``)."""
        return tuple(f"{sp.sstr(r.lhs)} = {sp.sstr(r.rhs)}" for r in self.relations)

    @property
    def relations_latex(self) -> tuple[str, ...]:
        """The relations as LaTeX equations (``W'_{0} - 3 W'_{2} = 0``)."""
        return tuple(sp.latex(r) for r in self.relations)

    def _repr_markdown_(self) -> str:
        from graphfilters.display import identification_markdown

        return identification_markdown(self)

    def _repr_latex_(self) -> str:
        from graphfilters.display import identification_latex

        return identification_latex(self)

    def __str__(self) -> str:
        X = pretty(self.operator)
        power = " + ".join(f"{X}^{p} Z ({pretty(c)})" for p, c in
                           self.power_coefficients.items())
        cheb = " + ".join(f"T_{k}({X}) Z ({pretty(c)})" for k, c in
                          self.chebyshev_coefficients.items())
        rel = "; ".join(self.relations_text) or "none"
        return "\n".join([
            f"Polynomial filter of order {self.order} in {X}",
            f"  power basis:       F = {power}",
            f"  Chebyshev basis:   F = {cheb}   (affinity form)",
            f"  weight constraint: {self.weight_constraint} (relations: {rel})",
            f"  table rows:        {', '.join(self.matches) or 'none'}",
            *([f"  attention rows:    {', '.join(self.attention_matches)}"]
              if self.attention_matches else []),
            *([f"  order holds if:    {', '.join(self.conditions)}"] if self.conditions
              else []),
            *([f"  note:              {self.note}"] if self.note else []),
            *[f"  assumed:           {a}" for a in self.assumptions],
        ])


def _fail(reason: str) -> ValueError:
    reason = reason.split(". A polynomial filter is")[0]
    return ValueError(
        f"not a polynomial filter of A: {reason}. A polynomial filter is a sum of terms "
        "c * A^p * Z * W_k (c a scalar, p >= 0; or the same in Ahat)"
    )


def _split_term(word: tuple) -> tuple[sp.Basic, int, sp.Basic]:
    """``(operator or None, power, weight)`` of one word ``X^p Z W``."""
    names = [b.name for b, _ in word]
    text = "*".join(n if e == 1 else f"{n}**{e}" for n, e in zip(names, (e for _, e in word)))
    if "Z" not in names:
        raise _fail(f"the term {text} has no Z")
    iz = names.index("Z")
    if word[iz][1] != 1 or names.count("Z") > 1:
        raise _fail(f"the term {text} uses Z more than once (a filter is linear in Z)")
    op, power = None, 0
    for base, exp in word[:iz]:
        if S.is_weight(base):
            raise _fail(f"in {text}, the weight {base.name} comes before Z")
        if base.name not in _OPERATORS:
            hint = (" (substitute the normalization first, e.g. with derive())"
                    if base.name == "D" else " (write the filter in A or Ahat)")
            raise _fail(f"the term {text} contains {base.name}{hint}")
        if not (sp.sympify(exp).is_Integer and exp > 0):
            raise _fail(f"the term {text} has the power {base.name}**{exp}; only non-negative "
                        "integer powers are polynomial")
        if op is not None and base != op:
            raise _fail(f"{text} mixes A and Ahat; use one operator")
        op, power = base, power + int(exp)
    after = word[iz + 1:]
    if len(after) != 1 or not S.is_weight(after[0][0]) or after[0][1] != 1:
        culprit = after[0][0].name if after else "nothing"
        if after and after[0][0].name in _OPERATORS:
            raise _fail(f"in {text}, {culprit} multiplies Z from the right; the operator acts "
                        "on Z from the left (A^p Z W_k)")
        raise _fail(f"in {text}, Z must be followed by exactly one weight W_k, found "
                    f"{', '.join(b.name for b, _ in after) or culprit}")
    return op, power, after[0][0]


def _coefficients(combo: sp.Basic, weights: list) -> list[sp.Expr]:
    coeffs = {w: sp.Integer(0) for w in weights}
    for word, c in terms(combo).items():
        coeffs[word[0][0]] += c
    return [sp.simplify(coeffs[w]) for w in weights]


@V.validate_params(
    {"expression": [V.InstanceOf((str, sp.Basic), "a string or a sympy matrix expression")]},
    valid=lambda: {"expression": "A*Z*W"},
)
def identify(expression: sp.Basic | str
             ) -> Identification | RationalIdentification | MultiOperatorIdentification:
    """Identify ``expression`` as a Chebyshev filter: order, coefficients, constraint, rows.

    Parameters
    ----------
    expression : sympy matrix expression or str
        In ``A`` (or ``Ahat``), ``Z`` and weights ``W``/``W_k``, built from the symbols of
        :mod:`graphfilters.symbolic.symbols` (or any matrix symbols with those names), or a
        string in LaTeX or plain text (``"Z*W0 - A*Z*W0"``).

    Returns
    -------
    Identification, MultiOperatorIdentification for a filter with the DC projector ``P`` or
    the two graphs ``A_1``, ``A_2`` of the attention table (see
    :mod:`graphfilters.symbolic.identify_attention`), or RationalIdentification for an
    expression with resolvents
    :math:`(aI + bX)^{-1} Z W` (an ARMA filter). Laplacian symbols (``L``, ``L_sym``,
    ``L_rw``, ``Ltilde``) are rewritten in :math:`\\hat A` first (listed in ``assumptions``);
    ``A`` and ``Ahat`` are kept distinct when matching table rows, and ``note`` says what
    could not be matched.

    Raises
    ------
    ValueError
        If ``expression`` is not a polynomial filter of one operator: a function of a matrix
        (``exp(A)``), the operator to the right of ``Z`` (``Z*A*W0``), a weight before ``Z``
        (``A*W0*Z``), a negative power, the degree matrix, the zero filter.

    Examples
    --------
    >>> identify(r"Z W_0 + \\hat A Z W_1").matches
    ('snl', 'gsnl_stable')
    >>> result = identify(r"(2\\hat A^{2} - I) Z W_2")
    >>> result.order, result.weight_constraint
    (2, 'constrained')
    >>> result.relations_text
    ("W'_0 = 0", "W'_1 = 0")
    >>> result.relations_latex
    ("W'_{0} = 0", "W'_{1} = 0")
    """
    if isinstance(expression, str):
        try:
            expression = parse_filter(expression)
        except SymbolicLimitError:
            raise
        except ValueError as err:
            raise _fail(str(err)) from err
    if not getattr(expression, "is_Matrix", False):
        raise _fail(f"{expression!r} is not a matrix expression (a function of a matrix, or a "
                    "scalar)")
    if expression.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise _fail(f"{expression} has an undefined or infinite coefficient (a division by "
                    "zero?)")
    if isinstance(expression, MatAdd):
        check_limit(len(expression.args), MAX_TERMS, "number of terms", "MAX_TERMS")
    expression, substituted = _laplacians_to_operator(expression)
    if {a.name for a in expression.atoms(sp.MatrixSymbol)} & set(MULTI_OPERATORS):
        return identify_multi(expression, _fail, substituted)
    if expression.has(Inverse):
        return _identify_rational(expression, substituted)
    try:
        check_shapes(expression)
        poly = terms(expression)
    except ValueError as err:
        raise _fail(str(err)) from err
    poly = {w: c for w, c in poly.items() if sp.simplify(c) != 0}
    if not poly:
        raise _fail("the expression is the zero filter")
    op = None
    by_power: dict[int, list] = {}
    for word, coeff in poly.items():
        term_op, power, weight = _split_term(word)
        if term_op is not None:
            if op is not None and term_op != op:
                raise _fail("the expression mixes A and Ahat; use one operator")
            op = term_op
        by_power.setdefault(power, []).append(MatMul(coeff, weight) if coeff != 1 else weight)
    op = op if op is not None else S.A
    order = max(by_power)
    zero = ZeroMatrix(S.C_s, S.C_out)

    def combo(items: list) -> sp.Basic:
        if not items:
            return zero
        return expand_matrix(items[0] if len(items) == 1 else MatAdd(*items))

    power_coeffs = {p: combo(by_power.get(p, [])) for p in range(order + 1)}
    a = power_to_chebyshev(order)
    cheb = {k: combo([MatMul(a[p][k], power_coeffs[p]) for p in range(order + 1)
                      if a[p][k] != 0 and power_coeffs[p] != zero])
            for k in range(order + 1)}
    laplacian = {k: combo([MatMul((-1) ** k, c)]) if c != zero else zero
                 for k, c in cheb.items()}
    weights = sorted({w for c in cheb.values() for w in c.atoms(sp.MatrixSymbol)},
                     key=lambda w: (S.weight_index(w) or -1, w.name))
    M = sp.Matrix([_coefficients(cheb[k], weights) for k in range(order + 1)])
    constraint, relations = _constraint(M, order)
    same = [name for name in BLOCK_NAMES if _effective(name) == (order, constraint)]
    matches = tuple(n for n in same if order == 0 or op.name in _row_operators(n))
    note = ""
    if same and not matches:
        note = (f"rows {', '.join(same)} have order {order} and constraint {constraint!r} but "
                f"act on {' or '.join(sorted(_row_operators(same[0])))}, not {op.name} (A is the "
                "raw affinity, Ahat the normalized one)")
    elif not same:
        note = f"no table row has order {order} with the weight constraint {constraint!r}"
    shared = _shared_scalars({p: c for p, c in power_coeffs.items() if c != zero})
    attention = tuple(
        n for n, row in ATTENTION_BLOCKS.items()
        if row.operators == 1 and not row.projector and row.order == order
        and (row.weight_constraint == constraint
             or (row.weight_constraint == "free" and shared is not None and order >= 1)))
    conditions = degeneracy(power_coeffs[order]) if order >= 1 else ()
    return Identification(
        expression=expression,
        operator=op,
        order=order,
        power_coefficients=MappingProxyType(power_coeffs),
        chebyshev_coefficients=MappingProxyType(cheb),
        laplacian_coefficients=MappingProxyType(laplacian),
        weight_constraint=constraint,
        relations=relations,
        matches=matches,
        note=note,
        assumptions=substituted,
        attention_matches=attention,
        conditions=conditions,
    )


@dataclass(frozen=True)
class RationalIdentification:
    r"""What :func:`identify` found for a rational expression: a parallel ARMA filter

    .. math:: F = P(X) Z + \sum_k (I - \psi_k X)^{-1} Z V_k .

    Attributes
    ----------
    expression : sympy matrix expression
    operator : MatrixSymbol
    poles : tuple
        :math:`\psi_k` (sympy scalars).
    weights : tuple
        :math:`V_k` (the weight of each resolvent term, scale of :math:`a` in
        :math:`(aI + bX)^{-1} = a^{-1}(I - \psi X)^{-1}` absorbed).
    polynomial : Identification or None
        The polynomial part :math:`P`.
    matches : tuple of str
        ``("arma",)`` when the operator and the polynomial part fit the table's ARMA row.
    note : str
    assumptions : tuple of str
    """

    expression: sp.Basic
    operator: sp.Basic
    poles: tuple
    weights: tuple
    polynomial: Identification | None
    matches: tuple[str, ...]
    note: str = ""
    assumptions: tuple[str, ...] = ()

    @property
    def order(self) -> int:
        """Number of poles (the ARMA order)."""
        return len(self.poles)

    def _repr_markdown_(self) -> str:
        from graphfilters.display import identification_markdown

        return identification_markdown(self)

    def _repr_latex_(self) -> str:
        from graphfilters.display import identification_latex

        return identification_latex(self)

    def __str__(self) -> str:
        X = pretty(self.operator)
        parts = [f"(I - ({pretty(p)})*{X})^-1 Z ({pretty(w)})"
                 for p, w in zip(self.poles, self.weights)]
        lines = [f"Rational (ARMA) filter with {self.order} pole(s) in {X}",
                 f"  resolvent terms:   F = {' + '.join(parts)}" + (" + polynomial part"
                                                                    if self.polynomial else ""),
                 f"  poles psi_k:       {', '.join(pretty(p) for p in self.poles)}",
                 f"  table rows:        {', '.join(self.matches) or 'none'}"]
        if self.polynomial is not None:
            lines.append(f"  polynomial part:   order {self.polynomial.order}, "
                         f"{self.polynomial.weight_constraint}")
        if self.note:
            lines.append(f"  note:              {self.note}")
        lines += [f"  assumed:           {a}" for a in self.assumptions]
        return "\n".join(lines)


def _identify_rational(expression: sp.Basic, substituted: tuple[str, ...]
                       ) -> RationalIdentification:
    parts = expression.args if isinstance(expression, MatAdd) else (expression,)
    poles, weights, rest, op = [], [], [], None
    for term in parts:
        if not term.has(Inverse):
            rest.append(term)
            continue
        coeff, mats = term.as_coeff_matrices()
        if (len(mats) != 3 or not isinstance(mats[0], Inverse) or mats[1] != S.Z
                or not (S.is_weight(mats[2]) or mats[2] == S.W)):
            raise _fail(f"the rational term {pretty(term)} is not (a I + b X)^-1 Z W_k "
                        "(an ARMA resolvent); nested or products of inverses are not filters "
                        "of the table")
        try:
            inner = terms(mats[0].arg)
        except ValueError as err:
            raise _fail(f"in {pretty(term)}: {err}") from err
        a = sp.sympify(inner.pop((), 0))
        if len(inner) != 1:
            raise _fail(f"the inverse in {pretty(term)} is not of (a I + b X) with one operator")
        (word, b), = inner.items()
        if len(word) != 1 or word[0][1] != 1 or word[0][0].name not in _OPERATORS or a == 0:
            raise _fail(f"the inverse in {pretty(term)} is not of (a I + b X), a != 0")
        x = word[0][0]
        if op is not None and x != op:
            raise _fail("the expression mixes A and Ahat; use one operator")
        op = x
        poles.append(sp.simplify(-b / a))
        weights.append(expand_matrix(MatMul(coeff / a, mats[2])))
    polynomial = None
    if rest:
        polynomial = identify(rest[0] if len(rest) == 1 else MatAdd(*rest))
        if polynomial.order >= 1 and polynomial.operator != op:
            raise _fail("the polynomial and the rational parts use different operators")
    notes = []
    bad = [p for p in poles if p.is_number and abs(complex(p)) >= 1]
    if bad:
        notes.append(f"pole(s) {', '.join(pretty(p) for p in bad)} with |psi| >= 1: the ARMA "
                     "recursion does not converge (|psi| ||Ahat|| < 1 needed); the Woodbury "
                     "solve of a low-rank affinity stays exact where I - psi X is invertible")
    fits = polynomial is None or polynomial.order == 0
    matches = ("arma",) if (op.name == "Ahat" and fits) else ()
    if not matches:
        why = ("the table's ARMA row acts on Ahat (normalized), this on A (raw)"
               if op.name != "Ahat" else "the polynomial part has order >= 1")
        notes.append(f"no table row: {why}")
    return RationalIdentification(expression, op, tuple(poles), tuple(weights), polynomial,
                                  matches, "; ".join(notes), substituted)


_LAPLACIAN_SUBS = (
    (S.L_sym, "L_sym = I - Ahat (Ahat = D^-1/2 A D^-1/2)"),
    (S.L_rw, "L_rw = I - Ahat (Ahat = D^-1 A)"),
    (S.L, "L = I - Ahat (the normalized Laplacian of the block)"),
    (S.Ltilde, "Ltilde = -Ahat (lambda_max = 2)"),
)


def _laplacians_to_operator(expr: sp.Basic) -> tuple[sp.Basic, tuple[str, ...]]:
    """Rewrite Laplacian symbols in the normalized operator; say which."""
    atoms = expr.atoms(sp.MatrixSymbol)
    sub, notes = {}, []
    for symbol, note in _LAPLACIAN_SUBS:
        if symbol in atoms:
            sub[symbol] = -S.Ahat if symbol == S.Ltilde else S.I - S.Ahat
            notes.append(note)
    return (expr.xreplace(sub), tuple(notes)) if sub else (expr, ())


@cache
def _row_operators(name: str) -> frozenset[str]:
    """Operators a row's filter may be written in: the one of its closed form
    (``filter_latex``), and both for a row-stochastic ``rw`` row (``D = I``: ``A = Ahat``)."""
    spec = get_spec(name)
    if spec.normalization == "rw" and spec.row_stochastic:
        return frozenset({"A", "Ahat"})
    try:
        forms = parse_equation(spec.filter_latex)
    except ValueError:          # pragma: no cover - every polynomial row parses
        return frozenset({"A", "Ahat"})
    names = {s.name for f in forms for s in f.atoms(sp.MatrixSymbol)}
    return frozenset({"Ahat"} if "Ahat" in names else {"A"})


def _effective(name: str) -> tuple[int, str] | None:
    spec = get_spec(name)
    if spec.basis not in ("chebyshev", "stable"):      # rational rows: not a polynomial
        return None
    order = spec.order if spec.basis == "chebyshev" else min(spec.order, 1)
    return order, spec.weight_constraint


def _constraint(M: sp.Matrix, order: int) -> tuple[str, tuple[str, ...]]:
    rows = [M.row(k) for k in range(order + 1)]
    nonzero = [any(x != 0 for x in r) for r in rows]
    relations = []
    for vec in M.T.nullspace():
        vec = vec / next(x for x in vec if x != 0)
        relations.append(sp.Eq(sum(c * sp.Symbol(f"W'_{k}", commutative=True)
                                   for k, c in enumerate(vec) if c != 0), 0))
    relations = tuple(relations)
    if order == 1 and nonzero[1] and sp.simplify(rows[0] + rows[1]).is_zero_matrix:
        return "tied", relations
    if order >= 1 and not nonzero[0] and M[1:, :].rank() == order:
        return "drop_order0", relations
    if all(nonzero) and M.rank() == order + 1:
        return "free", relations
    return "constrained", relations
