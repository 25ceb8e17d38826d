r"""Intervals and the one verdict rule used by the sweep and by the report's claims.

Everything here is a thin, named use of :mod:`scipy.stats`:

- :func:`proportion_ci`: a 95% interval for a rate :math:`k/n` (divergences among seeds),
  Wilson's score interval by default (``scipy.stats.binomtest(k, n).proportion_ci``), or
  Clopper–Pearson's exact one (``method="exact"``). For :math:`k = 0` Wilson's upper bound is
  :math:`z^2/(n + z^2)`: 0.43 for 5 seeds, 0.28 for 10: zero divergences in 5 seeds does
  not show a rate below 0.43.
- :func:`mean_ci`: the mean and its Student-t interval
  :math:`\bar x \pm t_{0.975,\,n-1}\, s/\sqrt n` (``scipy.stats.t.interval``).
- :func:`median_spread`: median, quartiles and range (no interval: a description).
- :func:`log_mean_ci`: the t interval of :math:`\log x`, mapped back (an interval for the
  geometric mean; used for Jacobian norms, which vary over orders of magnitude).
- :func:`verdict`: the rule. A claim "a < b" **held** when a's interval lies entirely below
  b's, **did not hold** when it lies entirely above, and is **not separated** otherwise
  (overlapping or touching intervals, or an undefined one). Nothing is stated from point
  values alone.

Examples
--------
>>> lo, hi = proportion_ci(0, 5)
>>> round(lo, 4), round(hi, 4)
(0.0, 0.4345)
>>> verdict(proportion_ci(0, 10), proportion_ci(10, 10))
'held'
>>> verdict(proportion_ci(0, 2), proportion_ci(2, 2))
'not separated'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from numbers import Real
from typing import Any

import numpy as np
from scipy import stats as _st

from graphfilters import _validate as V

__all__ = ["CONFIDENCE", "VERDICTS", "log_mean_ci", "mean_ci", "median_spread",
           "proportion_ci", "verdict"]

#: Confidence level of every interval of the sweep and the report.
CONFIDENCE = 0.95

#: The three outcomes of :func:`verdict`.
VERDICTS = ("held", "did not hold", "not separated")

#: Methods of :func:`proportion_ci` (scipy's names).
PROPORTION_METHODS = ("wilson", "exact")


#: The declared constraint of every ``confidence`` argument.
_CONFIDENCE = [V.UNIT_TOL]


def _finite(values: Iterable[float], name: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in values if v is not None], dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers: {exc}") from None
    return arr[np.isfinite(arr)]


@V.validate_params(
    {"k": [V.NONNEG_INT], "n": [V.POS_INT], "confidence": _CONFIDENCE,
     "method": [V.StrOptions(PROPORTION_METHODS)]},
    valid=lambda: {"k": 1, "n": 2},
)
def proportion_ci(k: int, n: int, confidence: float = CONFIDENCE, method: str = "wilson"
                  ) -> tuple[float, float]:
    r"""Interval for a binomial rate from ``k`` successes in ``n`` trials.

    .. math::
        \text{Wilson: } \frac{\hat p + \frac{z^2}{2n} \pm z\sqrt{\frac{\hat p(1-\hat p)}{n}
        + \frac{z^2}{4n^2}}}{1 + z^2/n}, \qquad \hat p = k/n,\ z = \Phi^{-1}(1 - \alpha/2).

    Parameters
    ----------
    k, n : int
        ``0 <= k <= n``, ``n >= 1``.
    confidence : float
        Default 0.95.
    method : {"wilson", "exact"}
        Wilson's score interval (default) or Clopper–Pearson's (``"exact"``).

    Returns
    -------
    (float, float)
        Lower and upper bound.

    Examples
    --------
    >>> [round(v, 4) for v in proportion_ci(1, 2)]
    [0.0945, 0.9055]
    >>> [round(v, 4) for v in proportion_ci(0, 5, method="exact")]
    [0.0, 0.5218]
    """
    if k > n:
        raise ValueError(f"proportion_ci: need k <= n, got k={k}, n={n}")
    ci = _st.binomtest(int(k), int(n)).proportion_ci(float(confidence), method=method)
    return float(ci.low), float(ci.high)


@V.validate_params({"confidence": _CONFIDENCE}, valid=lambda: {"values": [0.8, 0.9, 1.0]})
def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE
            ) -> tuple[float, tuple[float, float]]:
    r"""Mean and Student-t interval :math:`\bar x \pm t_{1-\alpha/2,\,n-1}\,s/\sqrt n`.

    Non-finite values are dropped. One value: the interval is ``(nan, nan)`` (undefined,
    so never separated); identical values: the interval is the point.

    Returns
    -------
    (mean, (low, high))

    Examples
    --------
    >>> m, (lo, hi) = mean_ci([0.8, 0.9, 1.0])
    >>> round(m, 3), round(lo, 3), round(hi, 3)
    (0.9, 0.652, 1.148)
    """
    x = _finite(values, "values")
    conf = float(confidence)
    if x.size == 0:
        return math.nan, (math.nan, math.nan)
    mean = float(x.mean())
    if x.size == 1:
        return mean, (math.nan, math.nan)
    sem = float(_st.sem(x))
    if sem == 0:
        return mean, (mean, mean)
    lo, hi = _st.t.interval(conf, x.size - 1, loc=mean, scale=sem)
    return mean, (float(lo), float(hi))


@V.validate_params({"confidence": _CONFIDENCE}, valid=lambda: {"values": [0.8, 0.9, 1.0]})
def log_mean_ci(values: Iterable[float], confidence: float = CONFIDENCE
                ) -> tuple[float, tuple[float, float]]:
    r"""Geometric mean and the t interval of :math:`\log x` mapped back by :math:`\exp`.

    For positive quantities spread over orders of magnitude (Jacobian norms). Non-finite and
    non-positive values are dropped.

    Examples
    --------
    >>> g, (lo, hi) = log_mean_ci([1.0, 10.0, 100.0])
    >>> round(g, 6), lo < 10 < hi
    (10.0, True)
    """
    x = _finite(values, "values")
    m, (lo, hi) = mean_ci(np.log(x[x > 0]), confidence)
    return math.exp(m) if math.isfinite(m) else math.nan, (
        math.exp(lo) if math.isfinite(lo) else math.nan,
        math.exp(hi) if math.isfinite(hi) else math.nan)


def median_spread(values: Iterable[float]) -> dict[str, float]:
    """Median, quartiles (``q25``, ``q75``: numpy's linear interpolation) and range.

    Non-finite values are dropped; all NaN when none is left.

    Examples
    --------
    >>> median_spread([1.0, 2.0, 3.0, 10.0])
    {'median': 2.5, 'q25': 1.75, 'q75': 4.75, 'min': 1.0, 'max': 10.0, 'n': 4}
    """
    x = _finite(values, "values")
    if x.size == 0:
        return {"median": math.nan, "q25": math.nan, "q75": math.nan, "min": math.nan,
                "max": math.nan, "n": 0}
    q25, med, q75 = np.percentile(x, [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75),
            "min": float(x.min()), "max": float(x.max()), "n": int(x.size)}


class _Bounds(V.Constraint):
    """An interval ``(low, high)``: a pair of real numbers (NaN and infinite bounds allowed)
    with ``low <= high`` unless a bound is NaN."""

    def kind_ok(self, value: Any) -> bool:
        return isinstance(value, (tuple, list, np.ndarray)) and not isinstance(value, str)

    def is_satisfied_by(self, value: Any) -> bool:
        if not self.kind_ok(value) or len(value) != 2:
            return False
        if not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
            return False
        lo, hi = (float(v) for v in value)
        return math.isnan(lo) or math.isnan(hi) or lo <= hi

    def __str__(self) -> str:
        return "a (low, high) pair of numbers with low <= high"

    def invalid_values(self) -> list[Any]:
        return [0.5, (0.5,), (0.1, 0.2, 0.3), ("a", 1.0), (0.5, 0.1), "ab"]


@V.validate_params({"a": [_Bounds()], "b": [_Bounds()]},
                   valid=lambda: {"a": (0.0, 0.2), "b": (0.3, 0.9)})
def verdict(a: Sequence[float], b: Sequence[float]) -> str:
    """The verdict on the claim "a < b" from the two intervals ``(low, high)``.

    ``"held"`` when ``a[1] < b[0]`` (a's interval lies entirely below b's), ``"did not
    hold"`` when ``b[1] < a[0]``, otherwise ``"not separated"`` (overlap, touching bounds,
    or a NaN bound). Point values are intervals of width 0.

    Examples
    --------
    >>> verdict((0.0, 0.2), (0.3, 0.9)), verdict((0.5, 0.9), (0.1, 0.4))
    ('held', 'did not hold')
    >>> verdict((0.0, 0.4), (0.4, 0.9)), verdict((0.0, float("nan")), (0.5, 1.0))
    ('not separated', 'not separated')
    """
    a_lo, a_hi = (float(v) for v in a)
    b_lo, b_hi = (float(v) for v in b)
    if not all(math.isfinite(v) or math.isinf(v) for v in (a_lo, a_hi, b_lo, b_hi)):
        return "not separated"
    if a_hi < b_lo:
        return "held"
    if b_hi < a_lo:
        return "did not hold"
    return "not separated"
