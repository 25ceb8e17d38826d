r"""Identify filters of the attention table: a projector term, two graphs, symbolic orders.

The blocks of :data:`graphfilters.specs.ATTENTION_BLOCKS` leave the one-operator polynomial
in two ways, and :func:`graphfilters.symbolic.identify` reads both through this module:

- **a projector term** (AttnScale): :math:`P = \mathbf 1\mathbf 1^T/N`, the DC projector.
  For a row-stochastic affinity :math:`X` (softmax rows), :math:`XP = P`, and :math:`P^2 = P`;
  these two rules are applied (and listed in ``assumptions``), :math:`PX` is kept as it is.
- **two graphs** (differential attention): words in :math:`A_1, A_2`.

The expression is read as :math:`F = \sum_w X_w Z\, C_w` over words :math:`w` of operators
(:math:`X_{()} = I`), and each coefficient :math:`C_w` is a combination of weights. When
every coefficient is a scalar multiple of one weight :math:`W`, ``scalars`` holds the scalar
of each word (the filter is :math:`p(\cdot) Z W`, as every attention block is per head).

The one-operator case with symbolic scalars (GFSA's :math:`K`) stays in
:func:`~graphfilters.symbolic.identify`; :func:`degeneracy` states where its order holds.

Examples
--------
>>> from graphfilters.symbolic import identify
>>> r = identify(r"(P + (1 + \lambda_h)(A - P)) Z W")
>>> r.operators, r.order, r.matches
(('A', 'P'), 1, ('attnscale',))
>>> r.scalars[("A",)], r.scalars[("P",)]
(lambda_h + 1, -lambda_h)
>>> identify(r"(A_1 - \lambda_d A_2) Z W").matches
('diffattn',)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import sympy as sp
from sympy import MatAdd, MatMul

from . import symbols as S
from .algebra import expand_matrix, terms
from .parsing import check_shapes
from .printing import pretty

__all__ = ["MultiOperatorIdentification", "identify_multi", "degeneracy", "MULTI_OPERATORS"]

#: The operators of the attention table beside ``A``: the DC projector and the two graphs.
MULTI_OPERATORS = ("P", "A_1", "A_2")
_ROW_STOCHASTIC = ("A", "A_1", "A_2")
_PROJECTOR_RULE = "X P = P for the row-stochastic affinities X (softmax rows), P^2 = P"


@dataclass(frozen=True)
class MultiOperatorIdentification:
    r"""What :func:`~graphfilters.symbolic.identify` found for a filter with a projector term
    or two graphs.

    Attributes
    ----------
    expression : sympy matrix expression
    operators : tuple of str
        The operators that occur (``"A"``, ``"P"``, ``"A_1"``, ``"A_2"``), sorted.
    coefficients : Mapping[tuple of str, expr]
        :math:`C_w` of every word :math:`w` (``()`` the order-0 term).
    scalars : Mapping[tuple of str, expr] or None
        The scalar of every word when all :math:`C_w` are multiples of one weight.
    order : int
        The longest word (:math:`P` counts as degree 1).
    matches : tuple of str
        Attention-table rows of this form (:data:`graphfilters.specs.ATTENTION_BLOCKS`).
    note, assumptions : str, tuple of str
    """

    expression: sp.Basic
    operators: tuple[str, ...]
    coefficients: Mapping[tuple[str, ...], sp.Basic] = field(repr=False)
    scalars: Mapping[tuple[str, ...], sp.Expr] | None = field(repr=False)
    order: int
    matches: tuple[str, ...]
    note: str = ""
    assumptions: tuple[str, ...] = ()

    @property
    def weight_constraint(self) -> str:
        """``"drop_order0"`` without an identity term, else ``"free"``."""
        return "drop_order0" if () not in self.coefficients else "free"

    def dc_gain(self) -> sp.Expr | None:
        r"""The eigenvalue on the constant vector :math:`\mathbf 1` (every row-stochastic
        affinity and :math:`P` map it to itself): the sum of ``scalars``; ``None`` without
        one shared weight."""
        if self.scalars is None:
            return None
        return sp.simplify(sum(self.scalars.values(), sp.Integer(0)))

    @property
    def attention_matches(self) -> tuple[str, ...]:
        """The same as ``matches`` (every row these forms can match is an attention row)."""
        return self.matches

    def _repr_markdown_(self) -> str:
        from graphfilters.display import identification_markdown

        return identification_markdown(self)

    def _repr_latex_(self) -> str:
        from graphfilters.display import identification_latex

        return identification_latex(self)

    def __str__(self) -> str:
        parts = [f"{'*'.join(w) or 'I'} Z ({pretty(c)})" for w, c in self.coefficients.items()]
        lines = [f"Filter of order {self.order} on {', '.join(self.operators)}",
                 f"  terms:             F = {' + '.join(parts)}",
                 f"  table rows:        {', '.join(self.matches) or 'none'}"]
        if self.scalars is not None:
            lines.insert(2, f"  gain on 1 (DC):    {pretty(self.dc_gain())}")
        if self.note:
            lines.append(f"  note:              {self.note}")
        lines += [f"  assumed:           {a}" for a in self.assumptions]
        return "\n".join(lines)


def _reduce(word: tuple[str, ...]) -> tuple[str, ...]:
    """Apply :math:`XP = P` (row-stochastic X) and :math:`P^2 = P` to a word of names."""
    out: list[str] = []
    for name in reversed(word):          # right to left: X P -> P
        if out and out[0] == "P" and (name in _ROW_STOCHASTIC or name == "P"):
            continue
        out.insert(0, name)
    return tuple(out)


def identify_multi(expression: sp.Basic, fail, substituted: tuple[str, ...] = ()
                   ) -> MultiOperatorIdentification:
    """Read ``expression`` (with ``P``, ``A_1`` or ``A_2``) as words times weights.

    ``fail(reason)`` builds the caller's error (:func:`~graphfilters.symbolic.identify`'s
    wording).
    """
    try:
        check_shapes(expression)
        poly = terms(expression)
    except ValueError as err:
        raise fail(str(err)) from err
    by_word: dict[tuple[str, ...], list] = {}
    used_rule = False
    for word, coeff in poly.items():
        if not all(sp.sympify(e).is_Integer and e > 0 for _, e in word):
            raise fail("only positive integer powers of the operators are polynomial")
        factors = [b for b, e in word for _ in range(int(e))]   # A**2 -> A, A
        names = [b.name for b in factors]
        if names.count("Z") != 1:
            raise fail(f"the term {pretty(MatMul(*factors))} does not use Z exactly once")
        iz = names.index("Z")
        ops, after = names[:iz], factors[iz + 1:]
        bad = [n for n in ops if n not in ("A", *MULTI_OPERATORS)]
        if bad:
            raise fail(f"the operator {bad[0]} cannot be combined with a projector or a "
                       "second graph (use A, P, A_1, A_2)")
        if len(after) != 1 or not (S.is_weight(after[0]) or after[0] in (S.W_P, S.V_1)):
            raise fail("Z must be followed by exactly one weight")
        reduced = _reduce(tuple(ops))
        used_rule |= reduced != tuple(ops)
        weight = after[0]
        by_word.setdefault(reduced, []).append(MatMul(coeff, weight) if coeff != 1 else weight)
    coefficients = {}
    for w, items in sorted(by_word.items(), key=lambda kv: (len(kv[0]), kv[0])):
        c = expand_matrix(items[0] if len(items) == 1 else MatAdd(*items))
        if c != sp.ZeroMatrix(S.C_s, S.C_out) and not getattr(c, "is_ZeroMatrix", False):
            coefficients[w] = c
    if not coefficients:
        raise fail("the expression is the zero filter")
    scalars = _shared_scalars(coefficients)
    operators = tuple(sorted({n for w in coefficients for n in w}))
    order = max(len(w) for w in coefficients)
    words = set(coefficients)
    matches = []
    if words <= {("A",), ("P",)} and words >= {("A",), ("P",)}:
        matches.append("attnscale")
    if words == {("A_1",), ("A_2",)}:
        matches.append("diffattn")
    note = "" if matches else (
        "no attention-table row has these terms (attnscale: A Z and P Z; diffattn: A_1 Z and "
        "A_2 Z, no order-0 term)")
    return MultiOperatorIdentification(
        expression=expression, operators=operators,
        coefficients=MappingProxyType(coefficients),
        scalars=None if scalars is None else MappingProxyType(scalars), order=order,
        matches=tuple(matches), note=note,
        assumptions=substituted + ((_PROJECTOR_RULE,) if used_rule or "P" in operators
                                   else ()))


def _shared_scalars(coefficients: Mapping[tuple[str, ...], sp.Basic]
                    ) -> dict[tuple[str, ...], sp.Expr] | None:
    """The scalar of each word when every coefficient is a multiple of one weight."""
    out, weight = {}, None
    for w, c in coefficients.items():
        split = terms(c)
        if len(split) != 1:
            return None
        (word, scalar), = split.items()
        if len(word) != 1 or (weight is not None and word[0][0] != weight):
            return None
        weight = word[0][0]
        out[w] = sp.simplify(scalar)
    return out


def degeneracy(leading: sp.Basic) -> tuple[str, ...]:
    r"""Where a symbolic leading coefficient vanishes: the conditions under which the order
    read by :func:`~graphfilters.symbolic.identify` holds.

    ``leading`` is the coefficient :math:`C_K` of the highest power (a combination of
    weights with scalar coefficients). Each scalar coefficient with free symbols that can
    vanish gives one condition; the order holds unless *all* vanish.

    Examples
    --------
    >>> from graphfilters.symbolic.symbols import K, W, w_K
    >>> degeneracy((K - 1) * w_K * W)
    ('K != 1', 'w_K != 0')
    >>> degeneracy(3 * W)
    ()
    """
    scalars = [c for word, c in terms(leading).items()]
    if not scalars or any(not sp.sympify(c).free_symbols for c in scalars):
        return ()
    if len(scalars) > 1:
        joint = sp.solve(scalars, dict=True)
        return tuple(" or ".join(f"{k} != {v}" for k, v in sol.items()) for sol in joint)
    out = []
    for factor in sp.factor_list(sp.factor(scalars[0]))[1]:
        base = factor[0]
        for sol in sp.solve(base, dict=True):
            out += [f"{k} != {v}" for k, v in sol.items()]
    return tuple(sorted(set(out)))
