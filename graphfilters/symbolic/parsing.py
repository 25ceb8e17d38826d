"""Parse filter expressions written in LaTeX (the table's ``filter_latex``) or plain text.

One small recursive-descent parser reads both spellings with the symbol table of
:mod:`graphfilters.symbolic.symbols`: ``\\hat A``/``\\hat{A}``/``Ahat``, ``W_0``/``W_{0}``/
``W0``, ``W^{L}_{1}``, ``L_{rw}``/``L_rw``, ``\\tilde L``, ``\\lambda_{max}``, ``\\gamma``,
``\\frac{a}{b}``, ``^{2}``/``**2``, and implicit multiplication (``A Z W`` or ``AZW``). It
builds the expression with sympy operators, never with ``eval``. A function applied to a
matrix (``exp(A)``), an unknown name or a product whose shapes do not chain raises a
``ValueError`` that says so.

Examples
--------
>>> from graphfilters.symbolic.printing import pretty
>>> pretty(parse_filter(r"F = Z W_0 + \\hat A Z W_1 + (2\\hat A^{2} - I) Z W_2"))
'Z*W_0 + (-I + 2*Ahat**2)*Z*W_2 + Ahat*Z*W_1'
>>> [pretty(e) for e in parse_equation(r"F = (A - I) Z W = -L_{rw} Z W")]
['(-I + A)*Z*W', '-L_rw*Z*W']
>>> parse_filter("exp(A)*Z*W0")
Traceback (most recent call last):
...
ValueError: exp(...) applies a function to a matrix: not a polynomial filter of A...
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy as sp
from sympy import MatAdd, MatMul, MatPow

from graphfilters import _validate as V

from . import symbols as S
from .limits import MAX_DEPTH, MAX_POWER, MAX_TEXT, check_limit

__all__ = ["parse_filter", "parse_equation", "check_shapes"]

_SKIP = re.compile(
    r"\s+|\\[,;:! ]|\\q?quad(?![A-Za-z])|\\left(?![A-Za-z])|\\right(?![A-Za-z])"
    r"|\\[bB]igg?[lr]?(?![A-Za-z])|\\displaystyle(?![A-Za-z])"
)
# (regex, kind, builder) tried in order at each position.
_TOKENS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\\hat\s*(?:\{\s*A\s*\}|A(?![A-Za-z]))|Ahat(?![A-Za-z0-9_])"), "Ahat"),
    (re.compile(r"\\tilde\s*(?:\{\s*L\s*\}|L(?![A-Za-z]))|Ltilde(?![A-Za-z0-9_])"), "Ltilde"),
    (re.compile(r"W\s*\^\s*\{?\s*L\s*\}?\s*_\s*\{?\s*(\d+)\s*\}?"), "WL"),
    (re.compile(r"A_\{?\s*([12])\s*\}?(?![A-Za-z0-9_])"), "Aj"),
    (re.compile(r"W_\{?\s*P\s*\}?(?![A-Za-z0-9_])"), "W_P"),
    (re.compile(r"V_\{?\s*1\s*\}?(?![A-Za-z0-9_])"), "V_1"),
    (re.compile(r"W_\{\s*(\d+)\s*\}|W_?(\d+)"), "Wk"),
    (re.compile(r"w_\{?\s*(0|1|K)\s*\}?(?![A-Za-z0-9_])"), "wk"),
    (re.compile(r"\\?lambda_\{?\s*([hd])\s*\}?(?![A-Za-z0-9_])"), "lambda_hd"),
    (re.compile(r"\\lambda_\{?\s*(?:\\max|\\mathrm\{max\}|max)\s*\}?|lambda_max(?![A-Za-z0-9_])"),
     "lambda_max"),
    (re.compile(r"\\gamma(?![A-Za-z])|gamma(?![A-Za-z0-9_])"), "gamma"),
    (re.compile(r"\\?psi_\{?\s*(\d+)\s*\}?"), "psi"),
    (re.compile(r"L_\{?\s*(rw|sym)\s*\}?(?![A-Za-z0-9_])"), "Lsub"),
    (re.compile(r"\\frac(?![A-Za-z])"), "frac"),
    (re.compile(r"\\(?:cdot|times)(?![A-Za-z])"), "*"),
    (re.compile(r"\\(?:operatorname|mathrm)\s*\{\s*([A-Za-z]+)\s*\}|\\([A-Za-z]+)"), "command"),
    (re.compile(r"\d+(?:\.\d+)?"), "number"),
    (re.compile(r"[A-Za-z][A-Za-z0-9_]*"), "ident"),
    (re.compile(r"\*\*|[-+*/^(){}]"), "op"),
]
_SPLIT = re.compile(r"Ahat|Ltilde|W_?\d+|[ADILZWPK]")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "sym", "number", "op", "frac", "func"
    value: object
    text: str


def _symbol_token(kind: str, match: re.Match) -> sp.Basic:
    if kind == "Ahat":
        return S.Ahat
    if kind == "Ltilde":
        return S.Ltilde
    if kind == "WL":
        return S.laplacian_weight(int(match.group(1)))
    if kind == "Wk":
        return S.weight(int(match.group(1) or match.group(2)))
    if kind == "lambda_max":
        return S.lambda_max
    if kind == "Aj":
        return S.A_1 if match.group(1) == "1" else S.A_2
    if kind in ("W_P", "V_1"):
        return S.SYMBOLS[kind]
    if kind == "wk":
        return S.SYMBOLS[f"w_{match.group(1)}"]
    if kind == "lambda_hd":
        return S.lambda_h if match.group(1) == "h" else S.lambda_d
    if kind == "psi":                     # an ARMA pole (graphfilters.filters.arma)
        return sp.Symbol(f"psi_{match.group(1)}", real=True)
    if kind == "gamma":
        return S.gamma
    if kind == "Lsub":
        return S.L_rw if match.group(1) == "rw" else S.L_sym
    raise AssertionError(kind)


def _split_identifier(name: str) -> list[sp.Basic] | None:
    """``AZW`` -> [A, Z, W]; ``None`` if ``name`` is not a product of known symbols."""
    if name in S.SYMBOLS:
        return [S.SYMBOLS[name]]
    parts = _SPLIT.findall(name)
    if "".join(parts) != name:
        return None
    out = []
    for part in parts:
        if part in S.SYMBOLS:
            out.append(S.SYMBOLS[part])
        else:
            out.append(S.weight(int(part.lstrip("W_"))))
    return out


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        skip = _SKIP.match(text, pos)
        if skip and skip.end() > pos:
            pos = skip.end()
            continue
        for pattern, kind in _TOKENS:
            match = pattern.match(text, pos)
            if match is None or match.end() == pos:
                continue
            raw = match.group(0)
            nxt = text[match.end():].lstrip()
            if kind in ("command", "ident"):
                name = match.group(1) or match.group(2) if kind == "command" else raw
                if nxt.startswith("(") or (kind == "command" and nxt.startswith("{")):
                    tokens.append(_Tok("func", name, raw))
                elif kind == "command":
                    raise ValueError(
                        f"unknown LaTeX command {raw!r} in {text!r}; a filter is written with "
                        r"A, \hat A, D, L, L_{rw}, L_{sym}, \tilde L, I, Z, W, W_k, W^{L}_{k}, "
                        r"\gamma, \lambda_{max}, numbers, + - ( ) ^ and \frac"
                    )
                else:
                    parts = _split_identifier(raw)
                    if parts is None:
                        raise ValueError(
                            f"unknown name {raw!r} in {text!r}; known symbols: "
                            f"{', '.join(S.SYMBOLS)}, W_k (or Wk) and W^L_k"
                        )
                    tokens.extend(_Tok("sym", p, raw) for p in parts)
            elif kind == "number":
                tokens.append(_Tok("number", sp.nsimplify(raw), raw))
            elif kind == "op":
                tokens.append(_Tok("op", raw, raw))
            elif kind == "*":
                tokens.append(_Tok("op", "*", raw))
            elif kind == "frac":
                tokens.append(_Tok("frac", None, raw))
            else:
                tokens.append(_Tok("sym", _symbol_token(kind, match), raw))
            pos = match.end()
            break
        else:
            raise ValueError(f"cannot read {text[pos:pos + 10]!r} in {text!r}")
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        check_limit(len(text), MAX_TEXT, "expression length", "MAX_TEXT")
        depth = deepest = 0
        for char in text:                       # nesting, before any recursion
            depth += char in "({"
            depth -= char in ")}"
            deepest = max(deepest, depth)
        check_limit(deepest, MAX_DEPTH, "nesting depth", "MAX_DEPTH")
        self.text = text
        self.tokens = _tokenize(_expand_sums(text))
        self.pos = 0

    def peek(self) -> _Tok | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> _Tok:
        tok = self.peek()
        if tok is None or (value is not None and tok.value != value):
            want = f"{value!r}" if value else "more input"
            raise ValueError(f"expected {want} in {self.text!r}, got {tok.text if tok else 'end'}")
        self.pos += 1
        return tok

    def parse(self) -> sp.Basic:
        if not self.tokens:
            raise ValueError("empty filter expression")
        expr = self.expr()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek().text!r} in {self.text!r}")
        return expr

    def expr(self) -> sp.Basic:
        out = self.term()
        while (tok := self.peek()) is not None and tok.kind == "op" and tok.value in "+-":
            self.take()
            rhs = self.term()
            out = out + rhs if tok.value == "+" else out - rhs
        return out

    def _starts_factor(self, tok: _Tok | None) -> bool:
        if tok is None:
            return False
        return tok.kind in ("sym", "number", "frac", "func") or tok.value in ("(", "{")

    def term(self) -> sp.Basic:
        out = self.unary()
        while True:
            tok = self.peek()
            if tok is not None and tok.kind == "op" and tok.value in ("*", "/"):
                self.take()
                rhs = self.unary()
                if tok.value == "/":
                    if getattr(rhs, "is_Matrix", False):
                        raise ValueError(
                            f"division by the matrix {rhs} in {self.text!r}: divide by "
                            "scalars only (a filter has no matrix inverse)"
                        )
                    out = out / rhs
                else:
                    out = out * rhs
            elif self._starts_factor(tok):
                out = out * self.unary()
            else:
                return out

    def unary(self) -> sp.Basic:
        tok = self.peek()
        if tok is not None and tok.kind == "op" and tok.value in "+-":
            self.take()
            inner = self.unary()
            return -inner if tok.value == "-" else inner
        return self.power()

    def power(self) -> sp.Basic:
        base = self.atom()
        tok = self.peek()
        if tok is not None and tok.kind == "op" and tok.value in ("^", "**"):
            self.take()
            exp = self.exponent(latex=tok.value == "^")
            if getattr(exp, "is_Matrix", False):
                raise ValueError(f"matrix exponent in {self.text!r}: not a polynomial filter")
            if getattr(exp, "is_Integer", False):
                check_limit(abs(int(exp)), MAX_POWER, "power", "MAX_POWER")
            if getattr(base, "is_Matrix", False):
                return MatPow(base, exp).doit() if exp.is_Integer else MatPow(base, exp)
            return base**exp
        return base

    def exponent(self, latex: bool) -> sp.Basic:
        tok = self.peek()
        if tok is not None and tok.value in ("{", "("):
            return self.atom()
        if tok is not None and tok.value == "-":
            self.take()
            return -self.exponent(latex)
        return self.atom()

    def atom(self) -> sp.Basic:
        tok = self.take()
        if tok.kind in ("sym", "number"):
            return tok.value
        cheb = re.fullmatch(r"T_?(\d+)", str(tok.value)) if tok.kind == "func" else None
        if cheb:                                   # T_k(X): the Chebyshev polynomial
            k = int(cheb.group(1))
            check_limit(k, MAX_POWER, "Chebyshev degree", "MAX_POWER")
            self.take("(")
            inner = self.expr()
            self.take(")")
            from .generic import chebyshev_polynomial

            return chebyshev_polynomial(k, inner)
        if tok.kind == "func":
            raise ValueError(
                f"{tok.value}(...) applies a function to a matrix: not a polynomial filter of "
                "A. A polynomial filter is a sum of terms c * A^p * Z * W_k (c a scalar, p >= 0)"
            )
        if tok.kind == "frac":
            num = self._group()
            den = self._group()
            if getattr(den, "is_Matrix", False):
                raise ValueError(f"\\frac with a matrix denominator in {self.text!r}")
            return num / den
        if tok.value in ("(", "{"):
            inner = self.expr()
            self.take(")" if tok.value == "(" else "}")
            return inner
        raise ValueError(f"unexpected {tok.text!r} in {self.text!r}")

    def _group(self) -> sp.Basic:
        self.take("{")
        inner = self.expr()
        self.take("}")
        return inner


_SUM = re.compile(
    r"\\sum_\{?\s*([a-z])\s*=\s*(\d+)\s*\}?\^\{?\s*(\d+)\s*\}?\s*"
    r"T_\{?\s*\1\s*\}?\s*\(([^()]*)\)\s*(?:\\,\s*)?Z\s*(?:\\,\s*)?W_\{?\s*\1\s*\}?"
)


def _expand_sums(text: str) -> str:
    r"""``\sum_{k=0}^{K} T_k(X) Z W_k`` (the toolkit's notation) -> the explicit sum."""
    def expand(m: re.Match) -> str:
        lo, hi, X = int(m.group(2)), int(m.group(3)), m.group(4)
        check_limit(hi, MAX_POWER, "order of the sum", "MAX_POWER")
        return "(" + " + ".join(f"T_{j}({X}) Z W_{j}" for j in range(lo, hi + 1)) + ")"

    text = re.sub(r"T_\{\s*(\d+)\s*\}", r"T_\1", text)
    return _SUM.sub(expand, text)


def check_shapes(expr: sp.Basic) -> None:
    """Raise ``ValueError`` if a product or a sum in ``expr`` has shapes that do not chain.

    sympy cannot refute ``Z*A`` with symbolic shapes (``C_s`` vs ``N``); this check compares
    the symbolic dimensions structurally.

    Examples
    --------
    >>> from graphfilters.symbolic.symbols import A, Z, W0
    >>> check_shapes(A * Z * W0)
    >>> check_shapes(Z * A * W0)
    Traceback (most recent call last):
    ...
    ValueError: product Z*A: Z has C_s columns but A has N rows...
    """
    for node in sp.preorder_traversal(expr):
        if isinstance(node, MatMul):
            mats = [a for a in node.args if getattr(a, "is_Matrix", False)]
            for left, right in zip(mats, mats[1:]):
                if sp.expand(left.shape[1] - right.shape[0]) != 0:
                    raise ValueError(
                        f"product {left}*{right}: {left} has {left.shape[1]} columns but "
                        f"{right} has {right.shape[0]} rows; a filter term reads "
                        "(polynomial in A) * Z * W_k"
                    )
        elif isinstance(node, MatAdd):
            shapes = {tuple(a.shape) for a in node.args}
            if len(shapes) > 1:
                raise ValueError(
                    f"sum of matrices of shapes {sorted(map(str, shapes))} in {node}; every "
                    "term of a filter is N x C_out"
                )


@V.validate_params({"text": [V.InstanceOf(str, "a string (LaTeX or plain text)")]},
                   valid=lambda: {"text": "F = A Z W"})
def parse_equation(text: str) -> list[sp.Basic]:
    """Parse ``F = X = Y ...`` into the right-hand sides ``[X, Y, ...]``.

    A leading ``F`` or ``F(A, Z)`` is dropped; every side must parse and have chaining
    shapes.

    Examples
    --------
    >>> from graphfilters.symbolic.printing import pretty
    >>> [pretty(e) for e in parse_equation(r"F = \\gamma\\, A Z W")]
    ['gamma*A*Z*W']
    """
    check_limit(len(text), MAX_TEXT, "expression length", "MAX_TEXT")
    sides = [s.strip() for s in _expand_sums(text).split("=")]
    if len(sides) > 1 and re.fullmatch(r"F(\s*\(.*\))?", sides[0]):
        sides = sides[1:]
    out = []
    for side in sides:
        expr = _Parser(side).parse()
        check_shapes(expr)
        out.append(expr)
    return out


@V.validate_params({"text": V.declared(parse_equation, "text")},
                   valid=lambda: {"text": "A Z W"})
def parse_filter(text: str) -> sp.Basic:
    """Parse one filter expression (LaTeX or plain text), optionally prefixed by ``F =``.

    Examples
    --------
    >>> from graphfilters.symbolic.printing import pretty
    >>> pretty(parse_filter("Z*W0 - A*Z*W0"))
    'Z*W_0 - A*Z*W_0'
    >>> pretty(parse_filter(r"\\frac{2 L}{\\lambda_{max}} - I"))
    '-I + (2/lambda_max)*L'
    """
    sides = parse_equation(text)
    if len(sides) != 1:
        raise ValueError(
            f"{text!r} has {len(sides)} right-hand sides; use parse_equation for chains "
            "F = X = Y"
        )
    return sides[0]
