"""analysis.stats: intervals against hand-computed values, and the verdict rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.stats import log_mean_ci, mean_ci, median_spread, proportion_ci, verdict

Z = 1.959963984540054      # Phi^{-1}(0.975)
T4 = 2.7764451051977987    # t_{0.975, 4}


def wilson_by_hand(k, n, z=Z):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k, n, expected", [
    (0, 5, (0.0, Z * Z / (5 + Z * Z))),                 # 0.4345: no divergence in 5 seeds
    (5, 5, (5 / (5 + Z * Z), 1.0)),                     # 0.5655
    (1, 2, (0.5 - Z * math.sqrt(0.125 + Z * Z / 16) / (1 + Z * Z / 2),
            0.5 + Z * math.sqrt(0.125 + Z * Z / 16) / (1 + Z * Z / 2))),
    (3, 10, wilson_by_hand(3, 10)),
])
def test_wilson_matches_hand_computation(k, n, expected):
    lo, hi = proportion_ci(k, n)
    assert lo == pytest.approx(expected[0], abs=1e-12)
    assert hi == pytest.approx(expected[1], abs=1e-12)


def test_wilson_values_in_words():
    assert proportion_ci(0, 5)[1] == pytest.approx(0.43448, abs=1e-5)
    assert proportion_ci(1, 2) == pytest.approx((0.09453, 0.90547), abs=1e-5)
    # 0/2 against 2/2 (the old two-seed table) is not separated; 0/5 against 5/5 is
    assert verdict(proportion_ci(0, 2), proportion_ci(2, 2)) == "not separated"
    assert verdict(proportion_ci(0, 5), proportion_ci(5, 5)) == "held"


def test_clopper_pearson_matches_hand_computation():
    lo, hi = proportion_ci(0, 5, method="exact")
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 5), abs=1e-10)
    lo, hi = proportion_ci(5, 5, method="exact")
    assert lo == pytest.approx(0.025 ** (1 / 5), abs=1e-10) and hi == 1.0


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
@settings(max_examples=40, deadline=None)
def test_wilson_contains_the_rate_and_stays_in_0_1(kn):
    k, n = kn
    lo, hi = proportion_ci(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert (lo, hi) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)


def test_mean_ci_is_the_t_interval():
    x = [0.80, 0.85, 0.90, 0.95, 1.00]
    mean = sum(x) / 5
    s = math.sqrt(sum((v - mean) ** 2 for v in x) / 4)
    m, (lo, hi) = mean_ci(x)
    assert m == pytest.approx(0.9)
    assert lo == pytest.approx(mean - T4 * s / math.sqrt(5), abs=1e-12)
    assert hi == pytest.approx(mean + T4 * s / math.sqrt(5), abs=1e-12)
    assert mean_ci([0.1, 0.1, 0.1]) == (pytest.approx(0.1), (pytest.approx(0.1),
                                                              pytest.approx(0.1)))
    one = mean_ci([0.5, float("nan")])                  # one finite value: undefined interval
    assert one[0] == 0.5 and all(math.isnan(v) for v in one[1])
    assert verdict(one[1], (0.9, 1.0)) == "not separated"


def test_log_mean_ci_and_median_spread():
    g, (lo, hi) = log_mean_ci([1.0, 100.0, 10.0, float("nan"), -1.0])
    assert g == pytest.approx(10.0)
    s = math.sqrt(((0 - 1) ** 2 + (2 - 1) ** 2) / 2) * math.log(10)
    t2 = 4.302652729911275
    assert lo == pytest.approx(10 * math.exp(-t2 * s / math.sqrt(3)))
    assert hi == pytest.approx(10 * math.exp(t2 * s / math.sqrt(3)))
    d = median_spread([5.0, 1.0, 3.0, float("inf")])
    assert (d["median"], d["q25"], d["q75"], d["min"], d["max"], d["n"]) == (
        3.0, 2.0, 4.0, 1.0, 5.0, 3)
    assert median_spread([])["n"] == 0 and math.isnan(median_spread([])["median"])


def test_verdict_rule():
    assert verdict((0.0, 0.2), (0.3, 0.5)) == "held"
    assert verdict((0.3, 0.5), (0.0, 0.2)) == "did not hold"
    assert verdict((0.0, 0.3), (0.3, 0.5)) == "not separated"       # touching
    assert verdict((0.0, 0.4), (0.3, 0.5)) == "not separated"       # overlapping
    assert verdict((1.0, 1.0), (2.0, 2.0)) == "held"                # points
    assert verdict((float("nan"), 0.1), (0.3, 0.5)) == "not separated"
    assert verdict((-math.inf, 0.1), (0.3, math.inf)) == "held"


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="k <= n"):
        proportion_ci(3, 2)
    with pytest.raises(TypeError, match="proportion_ci: n must be an integer >= 1"):
        proportion_ci(1, 2.0)
    with pytest.raises(ValueError, match="method"):
        proportion_ci(1, 2, method="wald")
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="low <= high"):
        verdict((0.5, 0.1), (0.6, 0.7))
    with pytest.raises(TypeError, match="verdict: a must be a \\(low, high\\) pair"):
        verdict(0.5, (0.6, 0.7))
    with pytest.raises(ValueError, match="values must be numbers"):
        mean_ci(["a", 1.0])
