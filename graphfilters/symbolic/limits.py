"""Resource limits of the symbolic layer: inputs beyond them fail at once, with a clear error.

Symbolic expansion grows quickly with the order (the Chebyshev recursion of order ``K`` in a
non-commutative algebra) and with the size of an expression; rather than running for minutes,
:func:`~graphfilters.symbolic.derive`, the parser and :func:`~graphfilters.symbolic.identify`
check these limits first (each check costs microseconds). Measured on one CPU core:
``derive(..., order=12)`` about 2 s, ``identify`` of a 200-term sum about 1 s (linear in the
number of terms).

Examples
--------
>>> from graphfilters.symbolic import derive
>>> derive("snl", order=50)
Traceback (most recent call last):
...
graphfilters.symbolic.limits.SymbolicLimitError: order 50 exceeds the symbolic limit ...
"""

from __future__ import annotations

__all__ = ["SymbolicLimitError", "MAX_ORDER", "MAX_TEXT", "MAX_DEPTH", "MAX_POWER", "MAX_TERMS",
           "check_limit"]

#: Largest filter order :func:`derive` expands.
MAX_ORDER = 12
#: Longest expression string the parser reads (characters).
MAX_TEXT = 20_000
#: Deepest nesting of parentheses/braces.
MAX_DEPTH = 24
#: Largest integer power of a matrix.
MAX_POWER = 32
#: Most terms of a sum :func:`identify` expands.
MAX_TERMS = 500


class SymbolicLimitError(ValueError):
    """An input beyond a limit of :mod:`graphfilters.symbolic.limits`."""


def check_limit(value: int, limit: int, what: str, name: str, hint: str = "") -> None:
    """Raise :class:`SymbolicLimitError` if ``value > limit``."""
    if value > limit:
        raise SymbolicLimitError(
            f"{what} {value} exceeds the symbolic limit {name} = {limit} "
            f"(graphfilters.symbolic.limits){'; ' + hint if hint else ''}"
        )
