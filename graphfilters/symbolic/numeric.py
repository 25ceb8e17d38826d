"""Evaluate symbolic filters on numbers: substitute numpy arrays for the matrix symbols.

Used to check derivations numerically (random affinities into both sides of a proof) and to
turn a closed form into a function of data.

Degree-matrix powers follow the project convention (docs/theory.md): for a diagonal matrix,
:math:`d^{p}` with :math:`p < 0` is 0 where :math:`d = 0` (isolated node), never NaN.

Examples
--------
>>> import numpy as np
>>> from graphfilters.symbolic.symbols import A, I, Z, W
>>> out = evaluate((A - I) * Z * W, {"A": np.eye(3) / 2, "Z": np.ones((3, 2)), "W": np.eye(2)})
>>> out[0]
array([-0.5, -0.5])
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import sympy as sp
from scipy.linalg import fractional_matrix_power

from .algebra import terms
from .symbols import SYMBOLS, laplacian_weight, weight

__all__ = ["evaluate"]

_ALIASES = (
    (re.compile(r"^W(\d+)$"), r"W_\1"),
    (re.compile(r"^WL_?(\d+)$"), r"W^L_\1"),
)


def _name(key: object) -> str:
    name = key if isinstance(key, str) else getattr(key, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"values must be keyed by symbols or names, got {key!r}")
    for pattern, repl in _ALIASES:
        name = pattern.sub(repl, name)
    return name


def _symbol_for(name: str) -> sp.MatrixSymbol | None:
    if name in SYMBOLS and isinstance(SYMBOLS[name], sp.MatrixSymbol):
        return SYMBOLS[name]
    match = re.match(r"^W(\^L)?_(\d+)$", name)
    if match:
        k = int(match.group(2))
        return laplacian_weight(k) if match.group(1) else weight(k)
    return None


def _power(M: np.ndarray, exp: sp.Expr) -> np.ndarray:
    if exp == 1:
        return M
    if exp.is_Integer and exp > 0:
        return np.linalg.matrix_power(M, int(exp))
    p = float(exp)
    if np.count_nonzero(M - np.diag(np.diagonal(M))) == 0:
        d = np.diagonal(M).astype(float)
        out = np.zeros_like(d)
        nz = d != 0
        out[nz] = d[nz] ** p
        return np.diag(out)
    if exp.is_Integer:
        return np.linalg.matrix_power(np.linalg.inv(M), int(-exp))
    return np.real(fractional_matrix_power(M, p))


def evaluate(expr: sp.Basic, values: Mapping[object, object]) -> np.ndarray:
    """Evaluate the matrix expression ``expr`` with numpy.

    Parameters
    ----------
    expr : sympy matrix expression
        Built from the symbols of :mod:`graphfilters.symbolic.symbols` (any polynomial that
        :func:`graphfilters.symbolic.algebra.terms` expands).
    values : mapping
        Symbol (or its name: ``"A"``, ``"Ahat"``, ``"W_0"``/``"W0"``, ``"W^L_1"``/``"WL1"``,
        ``"lambda_max"``, ``"gamma"``) -> array or scalar. Shapes fix ``N``, ``C_s``,
        ``C_out``.

    Returns
    -------
    numpy.ndarray
        Float64 array of the expression's shape.

    Raises
    ------
    ValueError
        A symbol without a value, or shapes that contradict each other.

    Examples
    --------
    >>> import numpy as np
    >>> from graphfilters.symbolic.symbols import D, A, Z, W0
    >>> from sympy import Rational
    >>> h = Rational(1, 2)
    >>> vals = {"A": np.ones((2, 2)), "D": np.diag([2.0, 2.0]), "Z": np.eye(2), "W0": np.eye(2)}
    >>> evaluate(D**-h * A * D**-h * Z * W0, vals)
    array([[0.5, 0.5],
           [0.5, 0.5]])
    """
    named = {_name(k): v for k, v in values.items()}
    dims: dict[sp.Symbol, int] = {}
    matrices: dict[str, np.ndarray] = {}
    # every known matrix in ``values`` fixes the sizes, even if ``expr`` does not use it
    known = [_symbol_for(name) for name in named]
    symbols = set(expr.atoms(sp.MatrixSymbol)) | {k for k in known if k is not None}
    for sym in sorted(symbols, key=lambda m: m.name):
        if sym.name not in named:
            raise ValueError(
                f"no value for the matrix {sym.name!r} (shape {sym.shape}); pass it in values"
            )
        M = np.asarray(named[sym.name], dtype=float)
        if M.ndim == 0 and sym not in expr.atoms(sp.MatrixSymbol):
            continue
        if M.ndim != 2:
            raise ValueError(f"value of {sym.name!r} must be a 2-d array, got shape {M.shape}")
        for dim, size in zip(sym.shape, M.shape):
            if dim.is_Integer:
                if int(dim) != size:
                    raise ValueError(f"{sym.name!r} must have size {dim}, got {M.shape}")
            elif dims.setdefault(dim, size) != size:
                raise ValueError(
                    f"inconsistent sizes for {dim}: {dims[dim]} and {size} (from {sym.name!r})"
                )
        matrices[sym.name] = M
    scalars = {}
    for sym in expr.free_symbols:
        if isinstance(sym, sp.Symbol) and sym not in dims and sym.name in named:
            scalars[sym] = sp.Float(float(named[sym.name]))
    rows, cols = (int(sp.sympify(d).xreplace(dims)) for d in expr.shape)
    out = np.zeros((rows, cols))
    for word, coeff in terms(expr).items():
        c = sp.sympify(coeff).xreplace(scalars)
        if c.free_symbols:
            raise ValueError(f"no value for the scalar(s) {sorted(map(str, c.free_symbols))}")
        prod = np.eye(rows)
        for base, exp in word:
            prod = prod @ _power(matrices[base.name], sp.sympify(exp))
        out += float(c) * prod
    return out
