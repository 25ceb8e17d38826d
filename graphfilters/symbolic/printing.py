"""LaTeX and plain-text printing of matrix expressions, in the order the terms were built.

sympy's default printers sort the terms of a sum and write the identity as
:math:`\\mathbb{I}`; derivations read better with terms in the order of the filter
(:math:`Z W_0 + \\hat A Z W_1 + \\dots`) and the identity as :math:`I`.

Examples
--------
>>> from sympy import MatAdd, MatMul
>>> from graphfilters.symbolic.symbols import Ahat, I, Z, W0, W2
>>> expr = MatAdd(MatMul(Z, W0), MatMul(MatAdd(2 * Ahat**2, -I), Z, W2))
>>> latex(expr)
'Z W_{0} + \\\\left(2 \\\\hat{A}^{2} - I\\\\right) Z W_{2}'
>>> pretty(expr)
'Z*W_0 + (2*Ahat**2 - I)*Z*W_2'
"""

from __future__ import annotations

import sympy as sp
from sympy import MatAdd
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

__all__ = ["latex", "pretty", "text_latex", "latex_to_text"]


class _MatrixTerms:
    """Matrix products and sums printed in construction order, ``I`` for the identity.

    Subclasses set how factors are joined (``_times``), how a sum or a coefficient is put in
    parentheses (``_paren``) and which coefficients need them (``_bare_coefficient``).
    """

    _times = " "

    def __init__(self) -> None:
        super().__init__({"order": "none"})

    def _paren(self, text: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _bare_coefficient(self, coeff: sp.Expr) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _print_Identity(self, expr: sp.Basic) -> str:
        return "I"

    def _print_ZeroMatrix(self, expr: sp.Basic) -> str:
        return "0"

    def _print_MatMul(self, expr: sp.Basic) -> str:
        coeff, mats = expr.as_coeff_matrices()
        parts = []
        for factor in mats:
            text = self._print(factor)
            parts.append(self._paren(text) if isinstance(factor, MatAdd) else text)
        body = self._times.join(parts)
        sign, coeff = _split_sign(coeff)
        if coeff == 1:
            return sign + body
        text = self._print(coeff)
        if not self._bare_coefficient(coeff):
            text = self._paren(text)
        return f"{sign}{text}{self._times}{body}"

    def _print_MatAdd(self, expr: sp.Basic) -> str:
        return _join_terms([self._print(t) for t in expr.args])


class _Latex(_MatrixTerms, LatexPrinter):
    def _paren(self, text: str) -> str:
        return rf"\left({text}\right)"

    def _print_Symbol(self, expr: sp.Symbol, style: str = "plain") -> str:
        if expr.name == "lambda_max":
            return r"\lambda_{\max}"
        return super()._print_Symbol(expr, style=style)

    def _print_MatPow(self, expr: sp.Basic) -> str:
        # one notation for fractional powers (of D): D^{-1/2}, as in the rules' LaTeX
        base, exp = expr.args
        if isinstance(exp, sp.Rational) and not exp.is_Integer:
            return rf"{self._print(base)}^{{{exp.p}/{exp.q}}}"
        return super()._print_MatPow(expr)

    def _bare_coefficient(self, coeff: sp.Expr) -> bool:
        return not coeff.is_Add


class _Str(_MatrixTerms, StrPrinter):
    _times = "*"

    def _paren(self, text: str) -> str:
        return f"({text})"

    def _bare_coefficient(self, coeff: sp.Expr) -> bool:
        return bool(coeff.is_Integer or coeff.is_Symbol)


def _split_sign(coeff: sp.Expr) -> tuple[str, sp.Expr]:
    coeff = sp.sympify(coeff)
    if coeff.could_extract_minus_sign():
        return "-", -coeff
    return "", coeff


def _join_terms(texts: list[str]) -> str:
    out = texts[0]
    for text in texts[1:]:
        if text.startswith("-"):
            out += " - " + text[1:].lstrip()
        else:
            out += " + " + text
    return out


def latex(expr: sp.Basic) -> str:
    """LaTeX of ``expr``, terms in construction order, identity written ``I``.

    Examples
    --------
    >>> from graphfilters.symbolic.symbols import A, Z, W
    >>> latex(A * Z * W / 2)
    '\\\\frac{1}{2} A Z W'
    """
    return _Latex().doprint(expr)


def pretty(expr: sp.Basic) -> str:
    """Plain text of ``expr``, terms in construction order.

    Examples
    --------
    >>> from graphfilters.symbolic.symbols import A, Z, W
    >>> pretty(-A * Z * W)
    '-A*Z*W'
    """
    return _Str().doprint(expr)


def text_latex(text: str) -> str:
    r"""``\text{...}`` of plain ``text``, with LaTeX's special characters escaped.

    Renders with LaTeX and with matplotlib's mathtext (``^`` becomes ``**``).

    Examples
    --------
    >>> print(text_latex("degree rule 'row_stochastic', 50%"))
    \text{degree rule 'row\_stochastic', 50\%}
    """
    for char in "\\{}":
        text = text.replace(char, "")
    for char in "_%&#$":
        text = text.replace(char, "\\" + char)
    return r"\text{" + text.replace("^", "**").replace("~", " ") + "}"


_TEXT_RULES = (
    (r"\\operatorname\{([^{}]*)\}", r"\1"),
    (r"\\(?:mathrm|text|mathbf)\{([^{}]*)\}", r"\1"),
    (r"\\hat\s*\{?A\}?", "Ahat"),
    (r"\\in\b", " in "),
    (r"\\tilde\{?L\}?", "Ltilde"),
    (r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)"),
    (r"\\tfrac(\d)(\d)", r"\1/\2"),
    (r"\\lambda_\{\\max\}", "lambda_max"),
    (r"\^\{([^{}]*)\}", r"^\1"),
    (r"_\{([^{}]*)\}", r"_\1"),
    (r"\\(?:,|;|:|!|quad|qquad)|\\ ", " "),
    (r"\\approx", "~"),
    (r"\\sum", "sum"),
    (r"\\mathcal\{?([A-Z])\}?", r"\1"),
    (r"\\(Theta|Phi|beta|gamma|theta|phi|mu|lambda|psi|sigma)", r"\1"),
    (r"\\left|\\right", ""),
    (r"\\mathbf\{?1\}?", "1"),
)


def latex_to_text(text: str) -> str:
    r"""Readable plain text of a LaTeX fragment (for ``print``): ``\hat A`` -> ``Ahat``,
    ``\operatorname{sym}`` -> ``sym``, ``D^{-1/2}`` -> ``D^-1/2``, spacing commands dropped.

    Examples
    --------
    >>> latex_to_text(r"\hat A = D^{-1/2} \operatorname{sym}(M) D^{-1/2},\ M = \Theta \Phi^{T}")
    'Ahat = D^-1/2 sym(M) D^-1/2, M = Theta Phi^T'
    """
    import re

    for _ in range(3):                      # nested groups
        for pattern, repl in _TEXT_RULES:
            text = re.sub(pattern, repl, text)
    text = text.replace("{", "").replace("}", "")
    return re.sub(r"\s+", " ", text).strip()
