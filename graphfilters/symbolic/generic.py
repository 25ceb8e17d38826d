r"""The generic Chebyshev graph filter, symbolically.

.. math::

    F(A, Z) = \sum_{k=0}^{K} T_k(\tilde L)\, Z\, W^L_k, \qquad
    \tilde L = \frac{2L}{\lambda_{\max}} - I,

with :math:`T_0 = I`, :math:`T_1 = \tilde L`, :math:`T_{k+1} = 2\tilde L T_k - T_{k-1}` (a
polynomial in one matrix, so the recursion holds for matrices), ``order`` :math:`K` the
polynomial degree, and the Laplacian one of (docs/theory.md, "Conventions")

* ``combinatorial``: :math:`L = D - A`,
* ``sym``: :math:`L = I - D^{-1/2} A D^{-1/2}`,
* ``rw``: :math:`L = I - D^{-1} A`.

:math:`\lambda_{\max}` defaults to 2 for the normalized Laplacians (their spectrum lies in
[0, 2], see :func:`graphfilters.symbolic.facts.normalized_laplacian_spectrum`) and to the
symbol :math:`\lambda_{\max}` for the combinatorial one (bounded only by :math:`2 d_{max}`).
This is the *Laplacian form*; its weights are :math:`W^L_k = (-1)^k W_k` with the
affinity-form weights of the block table.

Examples
--------
>>> from graphfilters.symbolic.printing import pretty
>>> pretty(generic_filter(2, stage="ltilde"))
'Z*W^L_0 + Ltilde*Z*W^L_1 + (2*Ltilde**2 - I)*Z*W^L_2'
>>> pretty(generic_filter(1, laplacian="rw"))
'Z*W^L_0 - D**(-1)*A*Z*W^L_1'
"""

from __future__ import annotations

import sympy as sp
from sympy import MatAdd, MatMul, MatrixSymbol, Rational, ZeroMatrix

from graphfilters import _validate as V
from graphfilters.specs import LAPLACIANS

from . import symbols as S
from .algebra import Terms, from_terms, terms

__all__ = [
    "chebyshev_polynomial",
    "laplacian",
    "default_lambda_max",
    "scaled_laplacian",
    "generic_filter",
    "as_filter",
    "weight_terms",
    "collect_powers",
]

_HALF = Rational(1, 2)
#: ``lambda_max`` of the generic filter: ``"auto"``, a number > 0 or a sympy expression (a
#: sympy number must be positive: checked where it is simplified, :func:`_lambda`).
_LAMBDA_MAX = [V.StrOptions(("auto",)), V.POS_REAL, V.InstanceOf(sp.Expr, "a sympy expression")]


def _degree(word: tuple) -> sp.Expr:
    return sum((e for _, e in word if e.is_number and e > 0), sp.Integer(0))


def _degree_desc(word: tuple) -> tuple:
    """Sort key: highest degree first, the identity last."""
    return (-_degree(word), str(word))


@V.validate_params({"k": [V.NONNEG_INT]}, valid=lambda: {"k": 2, "X": S.Ahat})
def chebyshev_polynomial(k: int, X: sp.Basic) -> sp.Basic:
    r"""The matrix Chebyshev polynomial :math:`T_k(X)`, expanded.

    Parameters
    ----------
    k : int
        Degree, ``k >= 0``.
    X : sympy square matrix expression

    Examples
    --------
    >>> from graphfilters.symbolic.printing import pretty
    >>> from graphfilters.symbolic.symbols import Ahat
    >>> pretty(chebyshev_polynomial(3, Ahat))
    '4*Ahat**3 - 3*Ahat'
    """
    k = int(k)
    rows = X.shape[0]
    prev: Terms = {(): sp.Integer(1)}
    if k == 0:
        return from_terms(prev, (rows, rows))
    x = terms(X)
    cur = x
    for _ in range(k - 1):
        nxt: Terms = {}
        for w, c in terms(MatMul(2, X, from_terms(cur, (rows, rows)))).items():
            nxt[w] = nxt.get(w, 0) + c
        for w, c in prev.items():
            nxt[w] = nxt.get(w, 0) - c
        prev, cur = cur, {w: c for w, c in ((w, sp.expand(c)) for w, c in nxt.items()) if c != 0}
    return from_terms(cur, (rows, rows), key=_degree_desc)


@V.validate_params({"kind": [V.StrOptions(LAPLACIANS)]}, valid=lambda: {"kind": "rw"})
def laplacian(kind: str = "sym") -> sp.Basic:
    r"""The Laplacian ``kind`` in terms of the affinity ``A`` and the degree matrix ``D``.

    Examples
    --------
    >>> from graphfilters.symbolic.printing import pretty
    >>> pretty(laplacian("sym"))
    'I - D**(-1/2)*A*D**(-1/2)'
    >>> pretty(laplacian("combinatorial"))
    'D - A'
    """
    if kind == "combinatorial":
        return MatAdd(S.D, MatMul(-1, S.A))
    if kind == "sym":
        return MatAdd(S.I, MatMul(-1, S.D**-_HALF, S.A, S.D**-_HALF))
    return MatAdd(S.I, MatMul(-1, S.D**-1, S.A))                  # "rw"


@V.validate_params({"kind": V.declared(laplacian, "kind")}, valid=lambda: {"kind": "sym"})
def default_lambda_max(kind: str) -> sp.Expr:
    """2 for the normalized Laplacians, the symbol :math:`\\lambda_{\\max}` otherwise.

    Examples
    --------
    >>> default_lambda_max("rw"), default_lambda_max("combinatorial")
    (2, lambda_max)
    """
    return S.lambda_max if kind == "combinatorial" else sp.Integer(2)


def _lambda(kind: str, lambda_max: float | sp.Expr | str) -> sp.Expr:
    if isinstance(lambda_max, str):                 # "auto" (declared by the callers)
        return default_lambda_max(kind)
    # numpy scalars and 0-d arrays/tensors as Python floats (sympy reads those)
    value = sp.nsimplify(lambda_max if isinstance(lambda_max, (sp.Basic, int))
                         else float(lambda_max))
    if value.is_number and not value.is_positive:
        raise ValueError(f"lambda_max must be positive, got {lambda_max!r}")
    return value


@V.validate_params({"kind": V.declared(laplacian, "kind"), "lambda_max": _LAMBDA_MAX},
                   valid=lambda: {"kind": "sym", "lambda_max": 2})
def scaled_laplacian(kind: str = "sym", lambda_max: float | sp.Expr | str = "auto") -> sp.Basic:
    r"""The scaled Laplacian :math:`\tilde L = 2L/\lambda_{\max} - I` in terms of ``A``, ``D``.

    Examples
    --------
    >>> from graphfilters.symbolic.printing import pretty
    >>> pretty(scaled_laplacian("sym"))
    '-D**(-1/2)*A*D**(-1/2)'
    """
    lam = _lambda(kind, lambda_max)
    return from_terms(terms(MatAdd(MatMul(2 / lam, laplacian(kind)), MatMul(-1, S.I))),
                      (S.N, S.N), key=_degree_desc)


def weight_terms(expr: sp.Basic) -> dict[MatrixSymbol, Terms] | None:
    """Split a filter ``sum_j P_j Z W_j`` into ``{W_j: terms of P_j}``.

    Returns ``None`` when some term does not end in ``Z`` times one weight symbol.

    Examples
    --------
    >>> from graphfilters.symbolic.symbols import A, I, Z, W0, W1
    >>> split = weight_terms(Z * W0 + (A - I) * Z * W1)
    >>> sorted(str(w) for w in split)
    ['W_0', 'W_1']
    """
    out: dict[MatrixSymbol, Terms] = {}
    for word, coeff in terms(expr).items():
        if len(word) < 2 or word[-2] != (S.Z, 1) or word[-1][1] != 1:
            return None
        w = word[-1][0]
        if not (S.is_weight(w) or S.is_laplacian_weight(w)):
            return None
        poly = out.setdefault(w, {})
        poly[word[:-2]] = poly.get(word[:-2], 0) + coeff
    return out


def _weight_key(w: MatrixSymbol) -> tuple:
    index = S.weight_index(w)
    return (-1 if index is None else index, w.name)


def as_filter(expr: sp.Basic) -> sp.Basic:
    """Rewrite a filter as ``sum_j P_j Z W_j``: one term per weight, ``P_j`` expanded.

    Falls back to the plain expansion when ``expr`` is not of that form.

    Examples
    --------
    >>> from graphfilters.symbolic.printing import pretty
    >>> from graphfilters.symbolic.symbols import Ahat, I, Z, W0, W2
    >>> pretty(as_filter(2 * Ahat * Ahat * Z * W2 + Z * W0 - Z * W2))
    'Z*W_0 + (2*Ahat**2 - I)*Z*W_2'
    """
    split = weight_terms(expr)
    if split is None:
        return from_terms(terms(expr), expr.shape)
    parts = []
    for w in sorted(split, key=_weight_key):
        poly = {k: c for k, c in ((k, sp.expand(c)) for k, c in split[w].items()) if c != 0}
        if not poly:
            continue
        if len(poly) == 1:
            ((word, coeff),) = poly.items()
            factors = [b if e == 1 else b**e for b, e in word]
            parts.append(MatMul(*factors, S.Z, w) if coeff == 1
                         else MatMul(coeff, *factors, S.Z, w))
        else:
            parts.append(MatMul(from_terms(poly, (S.N, S.N), key=_degree_desc), S.Z, w))
    if not parts:
        return ZeroMatrix(*expr.shape)
    return parts[0] if len(parts) == 1 else MatAdd(*parts)


@V.validate_params(
    {"order": [V.NONNEG_INT], "laplacian": V.declared(laplacian, "kind"),
     "lambda_max": _LAMBDA_MAX, "stage": [V.StrOptions(("ltilde", "laplacian", "affinity"))]},
    valid=lambda: {"order": 1},
)
def generic_filter(order: int, laplacian: str = "sym",
                   lambda_max: float | sp.Expr | str = "auto", stage: str = "affinity"
                   ) -> sp.Basic:
    r"""The generic Chebyshev filter :math:`\sum_{k=0}^{K} T_k(\tilde L) Z W^L_k`.

    Parameters
    ----------
    order : int
        Polynomial degree :math:`K` (``K + 1`` terms).
    laplacian : {"sym", "rw", "combinatorial"}
    lambda_max : "auto", number or sympy expression
        ``"auto"``: 2 for ``sym``/``rw``, the symbol :math:`\lambda_{\max}` for
        ``combinatorial``.
    stage : {"ltilde", "laplacian", "affinity"}
        How far to substitute: in terms of :math:`\tilde L`, of :math:`L` and
        :math:`\lambda_{\max}`, or of :math:`A` and :math:`D` (default).

    Returns
    -------
    sympy matrix expression (:math:`N \times C_{out}`), Laplacian-form weights ``W^L_k``.

    Examples
    --------
    >>> from graphfilters.symbolic.printing import pretty
    >>> pretty(generic_filter(1, laplacian="combinatorial", stage="laplacian"))
    'Z*W^L_0 + ((2/lambda_max)*L - I)*Z*W^L_1'
    """
    lam = _lambda(laplacian, lambda_max)
    if stage == "ltilde":
        X = S.Ltilde
    elif stage == "laplacian":
        X = MatAdd(MatMul(2 / lam, S.L), MatMul(-1, S.I))
    else:
        X = scaled_laplacian(laplacian, lam)
    parts = [MatMul(chebyshev_polynomial(k, X), S.Z, S.laplacian_weight(k))
             for k in range(int(order) + 1)]
    return as_filter(parts[0] if len(parts) == 1 else MatAdd(*parts))


def collect_powers(expr: sp.Basic) -> sp.Basic:
    """Rewrite a filter as ``sum_p X^p Z (sum_j c_pj W_j)``: one term per operator word.

    The reparametrized weights :math:`W'_p = \\sum_j c_{pj} W_j` show which polynomial the
    filter really is (e.g. gSNL under the stable hypothesis is an order-1 filter).

    Examples
    --------
    >>> from graphfilters.symbolic.printing import pretty
    >>> from graphfilters.symbolic.symbols import Ahat, I, Z, W0, W1, W2
    >>> pretty(collect_powers(Z * W0 + Ahat * Z * W1 + (2 * Ahat - I) * Z * W2))
    'Z*(W_0 - W_2) + Ahat*Z*(W_1 + 2*W_2)'
    """
    split = weight_terms(expr)
    if split is None:
        raise ValueError(f"{expr} is not a filter sum_j P_j Z W_j")
    by_word: dict[tuple, list] = {}
    for w in sorted(split, key=_weight_key):
        for word, coeff in split[w].items():
            coeff = sp.expand(coeff)
            if coeff != 0:
                by_word.setdefault(word, []).append(w if coeff == 1 else MatMul(coeff, w))
    parts = []
    for word in sorted(by_word, key=lambda w: (_degree(w), str(w))):
        combo = by_word[word]
        weights = combo[0] if len(combo) == 1 else MatAdd(*combo)
        factors = [b if e == 1 else b**e for b, e in word]
        parts.append(MatMul(*factors, S.Z, weights))
    if not parts:
        return ZeroMatrix(*expr.shape)
    return parts[0] if len(parts) == 1 else MatAdd(*parts)
