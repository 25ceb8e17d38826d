"""Tests of the symbolic layer: derivations, proofs, numeric checks, identify, responses, facts."""

from __future__ import annotations

import dataclasses
import io
import zlib

import matplotlib
import numpy as np
import pytest
import sympy as sp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.mathtext import MathTextParser

from graphfilters.specs import BLOCK_NAMES, NL_MODES, get_spec
from graphfilters.symbolic import (
    SYMBOLS,
    W0,
    W1,
    W2,
    A,
    Ahat,
    I,
    W,
    Z,
    all_facts,
    as_filter,
    chebyshev_parity,
    chebyshev_polynomial,
    derive,
    derive_all,
    difference,
    evaluate,
    generic_filter,
    identify,
    is_zero,
    lam,
    laplacian_weight,
    normalized_laplacian_spectrum,
    parse_equation,
    parse_filter,
    response,
    response_function,
    softmax_row_stochastic,
    stable_hypothesis_collapse,
    weight,
)
from graphfilters.symbolic.printing import latex, pretty
from graphfilters.symbolic.rules import apply_stable_hypothesis

matplotlib.use("Agg")

# polynomial rows (the rational ones, Cayley and ARMA, are derived on the spectrum:
# tests/test_filters.py)
CASES = [(name, mode) for name in BLOCK_NAMES for mode in (get_spec(name).modes or (None,))
         if get_spec(name).basis in ("chebyshev", "stable")]
IDS = [name if mode is None else f"{name}-{mode}" for name, mode in CASES]
MATHTEXT = MathTextParser("path")


def _renders(line: str) -> None:
    """Parse one line of an align environment with matplotlib mathtext (raises if not)."""
    text = line.replace("&", " ").strip().removesuffix("\\\\").strip()
    MATHTEXT.parse(f"${text}$")


# ----------------------------------------------------------------------------------------
# numeric data built the way each spec says
# ----------------------------------------------------------------------------------------


def _softmax(S: np.ndarray) -> np.ndarray:
    P = np.exp(S - S.max(1, keepdims=True))
    return P / P.sum(1, keepdims=True)


def _numeric_graph(spec, rng: np.random.Generator, n: int = 10) -> dict:
    """Affinity, operator value and Laplacian of ``spec`` on random data.

    The data satisfy the spec's stated assumptions (softmax rows, the 'size' rows of M
    summing to N, a regular graph for 'none', an idempotent Ahat for the stable basis).
    """
    I_n = np.eye(n)
    out: dict = {}
    if spec.normalization == "sym":
        if spec.basis == "stable":  # one-hot ReLU features: Ahat is a projection
            P = np.zeros((n, 3))
            P[np.arange(n), rng.integers(3, size=n)] = rng.uniform(0.5, 2.0, size=n)
            Q = P
        else:
            P = np.maximum(rng.normal(size=(n, 4)), 0) + 0.05
            Q = np.maximum(rng.normal(size=(n, 4)), 0) + 0.05
        M = P @ Q.T
        if spec.symmetrize:
            M = (M + M.T) / 2
        deg = M.sum(1)
        Dm12 = np.diag(deg**-0.5)
        out["Ahat"] = Dm12 @ M @ Dm12
        out["A"] = M
        laplacian = I_n - Dm12 @ M @ Dm12
    elif spec.normalization == "rw":
        if spec.unary:  # pairwise softmax + unary softmax broadcast to every row
            A_ = _softmax(rng.normal(size=(n, n))) + _softmax(rng.normal(size=(1, n)))
        elif spec.row_stochastic:
            A_ = _softmax(2 * rng.normal(size=(n, n)))
        else:
            A_ = rng.random((n, n))
        D_inv = np.diag(1 / A_.sum(1))
        out["A"], out["Ahat"] = A_, D_inv @ A_
        laplacian = I_n - D_inv @ A_
    elif spec.normalization == "size":  # A = M / N with rows of M summing to N
        M = rng.random((n, n))
        M = n * M / M.sum(1, keepdims=True)
        A_ = M / n
        out["A"] = A_
        laplacian = I_n - np.diag(1 / A_.sum(1)) @ A_
    else:  # 'none': a regular (circulant) graph of degree d, lambda_max := 2 d
        row = rng.random(n)
        A_ = np.stack([np.roll(row, i) for i in range(n)])
        out["A"] = A_
        out["lambda_max"] = 2 * row.sum()
        laplacian = np.diag(A_.sum(1)) - A_
    if spec.laplacian == "rw" and spec.normalization in ("rw", "size"):
        out["L_rw"] = laplacian
    if spec.laplacian == "sym":
        out["L_sym"] = laplacian
    out["L"] = laplacian
    out.setdefault("lambda_max", spec.lambda_max)
    return out


def _chebyshev_numeric(Lt: np.ndarray, Z_: np.ndarray, Ws: list[np.ndarray]) -> np.ndarray:
    """sum_k T_k(Lt) Z W_k by the three-term recursion (independent of sympy)."""
    T_prev, T_cur = np.eye(len(Lt)), Lt
    out = Z_ @ Ws[0]
    if len(Ws) > 1:
        out = out + T_cur @ Z_ @ Ws[1]
    for W_k in Ws[2:]:
        T_prev, T_cur = T_cur, 2 * Lt @ T_cur - T_prev
        out = out + T_cur @ Z_ @ W_k
    return out


# ----------------------------------------------------------------------------------------
# derivations
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "mode"), CASES, ids=IDS)
def test_every_derivation_is_proved(name, mode):
    d = derive(name, mode=mode)
    assert d.verified is True
    assert all(isinstance(diff, sp.ZeroMatrix) for diff in d.differences)
    assert d.spec.name == name and d.spec.mode == (mode if name == "nl" else None)
    # the derivation starts from the generic filter of the spec's order...
    assert is_zero(difference(d.generic, generic_filter(d.order, stage="ltilde")))
    # ...and ends in the closed form, built from the operator and the weights only
    atoms = {s.name for s in d.derived.atoms(sp.MatrixSymbol)}
    assert atoms <= {"A", "Ahat", "Z", "W", "W_0", "W_1", "W_2"}
    assert "D" not in atoms and d.operator.name in atoms


@pytest.mark.parametrize(("name", "mode"), CASES, ids=IDS)
def test_steps_are_sympy_substitutions(name, mode):
    """Replaying every step's substitution on the previous expression gives the next one."""
    d = derive(name, mode=mode)
    assert len(d.steps) >= 5
    assert not d.steps[0].substitution
    for prev, step in zip(d.steps, d.steps[1:]):
        assert step.substitution, step.description
        if step.description == "stable hypothesis":
            replay = apply_stable_hypothesis(prev.expr, d.operator)
        else:
            replay = prev.expr.xreplace(dict(step.substitution))
        assert is_zero(difference(replay, step.expr)), step.description
    assert is_zero(difference(d.steps[-1].expr, d.derived))


def test_derivation_steps_named_in_the_issue():
    snl = derive("snl")
    subs = [dict(step.substitution) for step in snl.steps]
    assert any(sp.Symbol("lambda_max", positive=True) in s for s in subs)
    assert any(s.get(SYMBOLS["L"]) is not None for s in subs)  # L -> I - D^-1/2 A D^-1/2
    nl = derive("nl")
    constraint = [dict(s.substitution) for s in nl.steps if "constraint" in s.description]
    assert constraint == [{W0: sp.ZeroMatrix(*W0.shape)}]  # W_0 -> 0
    assert dict(nl.laplacian_weights)[laplacian_weight(1)] == -W  # Laplacian form W_1 = -W
    ns = derive("ns")
    assert pretty(ns.derived) == "(A - I)*Z*W"
    assert len(ns.closed_forms) == 2  # (A - I) Z W = -L_rw Z W, both proved


def test_gsnl_stable_shows_order1_reparametrization():
    d = derive("gsnl_stable")
    assert d.verified
    assert pretty(d.collapsed) == "Z*(W_0 - W_2) + Ahat*Z*(W_1 + 2*W_2)"
    assert "order-1" in d.to_latex() and "W_1 + 2*W_2" in str(d)
    exact = derive("gsnl")
    assert pretty(exact.derived) == "Z*W_0 + Ahat*Z*W_1 + (2*Ahat**2 - I)*Z*W_2"
    assert exact.collapsed is None


def test_cgnl_keeps_lambda_max_symbolic():
    d = derive("cgnl")
    assert d.verified
    lam_max = sp.Symbol("lambda_max", positive=True)
    assert any(lam_max in step.expr.free_symbols for step in d.steps)
    assert lam_max in dict(d.laplacian_weights)[laplacian_weight(1)].free_symbols
    assert any(a.key == "lambda_max" and not a.exact for a in d.assumptions)


@pytest.mark.parametrize(("name", "mode"), CASES, ids=IDS)
def test_numeric_generic_filter_equals_closed_form(name, mode):
    """Random matrices into both sides: the constrained generic filter and the closed form."""
    d = derive(name, mode=mode)
    rng = np.random.default_rng(zlib.crc32(f"{name}-{mode}".encode()))
    graph = _numeric_graph(d.spec, rng)
    n, c_s, c_out = len(graph["L"]), 3, 2
    values = dict(graph)
    values["Z"] = rng.normal(size=(n, c_s))
    values["W"] = rng.normal(size=(c_s, c_out))
    for k in range(d.order + 1):
        values[f"W_{k}"] = rng.normal(size=(c_s, c_out))
    values["gamma"] = 0.7
    # Laplacian-form weights W^L_k from the closed-form weights (constraint applied)
    WL = [evaluate(d.laplacian_weights[laplacian_weight(k)], values)
          for k in range(d.order + 1)]
    Lt = 2 * graph["L"] / values["lambda_max"] - np.eye(n)
    generic = _chebyshev_numeric(Lt, values["Z"], WL)
    for form in d.closed_forms:
        closed = evaluate(form, values)
        np.testing.assert_allclose(generic, closed, rtol=0, atol=1e-10)
    np.testing.assert_allclose(generic, evaluate(d.derived, values), rtol=0, atol=1e-10)
    # the constrained generic filter, evaluated symbolically-then-numerically, agrees too
    lt_values = dict(values, Ltilde=Lt)
    np.testing.assert_allclose(evaluate(d.constrained_generic, lt_values), generic, atol=1e-10)


@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        ("nl", r"F = Z W_0 + A Z W"),
        ("ns", r"F = (I - A) Z W"),
        ("snl", r"F = Z W_0 - \hat A Z W_1"),
        ("gsnl", r"F = Z W_0 + \hat A Z W_1 + (2\hat A - I) Z W_2"),  # stable form != exact
        ("gsnl_stable", r"F = Z W_0 + \hat A Z W_1 + (2\hat A^{2} - I) Z W_2"),
        ("cc", r"F = A Z W"),  # gamma missing
        ("cgnl", r"F = Z A W"),  # operator on the wrong side (shapes do not even chain)
    ],
)
def test_wrong_closed_form_is_not_verified(name, wrong):
    try:
        d = derive(name, closed_form=wrong)
    except ValueError as err:  # a closed form that is not even well-formed
        assert "rows" in str(err)
        return
    assert d.verified is False
    assert not isinstance(d.differences[0], sp.ZeroMatrix)
    assert "NOT VERIFIED" in str(d) and r"\neq" in d.to_latex()


def test_wrong_closed_form_as_sympy_expression():
    assert derive("snl", closed_form=Z * W0 + A * Z * W1).verified is False  # A, not Ahat
    assert derive("snl", closed_form=Z * W0 + Ahat * Z * W1).verified is True
    assert derive("ns", closed_form=[(A - I) * Z * W, A * Z * W - Z * W]).verified is True


def test_new_row_of_an_existing_kind_needs_no_code():
    """A row that is not in the table derives from its fields alone."""
    snl = get_spec("snl")
    rw_row = dataclasses.replace(snl, name="snl_rw", normalization="rw", laplacian="rw",
                                 symmetrize=False, filter_latex=r"F = Z W_0 + \hat A Z W_1")
    d = derive(rw_row)
    assert d.verified and d.operator == Ahat
    assert any("D^{-1} A" in s.rule_latex for s in d.steps)
    cubic = dataclasses.replace(snl, name="snl3", order=3, filter_latex=(
        r"F = Z W_0 + \hat A Z W_1 + (2\hat A^2 - I) Z W_2 + (4\hat A^3 - 3\hat A) Z W_3"))
    assert derive(cubic).verified
    assert derive("snl", order=3).verified  # overrides: closed form built from the fields
    assert derive("snl", order=3).source == "fields"
    stable4 = derive("gsnl_stable", order=4)
    assert stable4.verified
    assert pretty(stable4.collapsed) == "Z*(W_0 - W_2 + W_4) + Ahat*Z*(W_1 + 2*W_2 + W_3)"


def test_errors():
    with pytest.raises(ValueError, match="known blocks: nl, ns, a2, cgnl, cc, dnl, snl"):
        derive("foo")
    with pytest.raises(ValueError, match="unknown mode"):
        derive("nl", mode="softmax")
    with pytest.raises(ValueError, match="order >= 1"):
        derive("nl", order=0)  # drop_order0 with an order-0 filter
    with pytest.raises(ValueError, match="degree matrix D"):
        derive("snl", laplacian="rw")  # sym normalization with the rw Laplacian
    with pytest.raises(TypeError, match="closed_form"):
        derive("snl", closed_form=3.0)


def test_derive_all_and_performance_smoke():
    derivations = derive_all()
    assert len(derivations) == len(CASES) + 2 == 14
    assert [d.mode for d in derivations if d.name == "nl"] == list(NL_MODES)
    assert all(d.verified for d in derivations)


# ----------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "mode"), CASES, ids=IDS)
def test_latex_renders_and_contains_each_step(name, mode):
    d = derive(name, mode=mode)
    tex = d.to_latex(annotations="none")
    assert tex.startswith("\\begin{align*}\n") and tex.endswith("\n\\end{align*}")
    lines = d.latex_lines("none")
    # a closed form equal to the last step is not repeated (its proof annotates that step)
    assert 1 + len(d.steps) <= len(lines) <= (
        1 + len(d.steps) + len(d.closed_forms) + (d.collapsed is not None))
    assert tex.count("\\\\\n") == len(lines) - 1
    for line in lines:
        _renders(line)
    for step in d.steps:
        body = latex(step.expr)
        assert body in tex
        # LaTeX round trip: the printed step parses back to the same expression
        assert is_zero(difference(parse_filter(body), step.expr))
    assert d._repr_latex_().startswith("$$\\begin{aligned}")
    text = str(d)
    assert "VERIFIED" in text and d.spec.title in text
    assert all(pretty(step.expr) in text for step in d.steps)
    assert "Assumptions:" in text and len(d.assumptions) >= 5


def test_latex_renders_to_png():
    fig = Figure(figsize=(14, 1))
    FigureCanvasAgg(fig)
    d = derive("gsnl")
    fig.text(0.01, 0.5, "$" + d.latex_lines()[-1].replace("&", "") + "$")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------
# generic filter
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sym", "rw", "combinatorial"])
@pytest.mark.parametrize("order", [0, 1, 2, 4])
def test_generic_filter_matches_numpy(kind, order, rng):
    n = 7
    M = rng.random((n, n))
    M = (M + M.T) / 2
    deg = M.sum(1)
    L_num = {
        "sym": np.eye(n) - np.diag(deg**-0.5) @ M @ np.diag(deg**-0.5),
        "rw": np.eye(n) - np.diag(1 / deg) @ M,
        "combinatorial": np.diag(deg) - M,
    }[kind]
    lam_max = 2.0 if kind != "combinatorial" else float(np.linalg.eigvalsh(L_num).max())
    values = {"A": M, "D": np.diag(deg), "Z": rng.normal(size=(n, 2)), "lambda_max": lam_max}
    Ws = [rng.normal(size=(2, 3)) for _ in range(order + 1)]
    values.update({f"W^L_{k}": Ws[k] for k in range(order + 1)})
    expr = generic_filter(order, laplacian=kind)
    expected = _chebyshev_numeric(2 * L_num / lam_max - np.eye(n), values["Z"], Ws)
    np.testing.assert_allclose(evaluate(expr, values), expected, atol=1e-10)
    assert len(expr.args if isinstance(expr, sp.MatAdd) else [expr]) == order + 1


def test_generic_filter_parameters():
    lam_max = sp.Symbol("lambda_max", positive=True)
    assert lam_max in generic_filter(1, laplacian="combinatorial").free_symbols
    assert lam_max not in generic_filter(1, laplacian="sym").free_symbols
    assert lam_max in generic_filter(1, laplacian="sym", lambda_max=lam_max).free_symbols
    assert pretty(generic_filter(1, laplacian="sym", lambda_max=4)) == (
        "Z*W^L_0 + (-(1/2)*D**(-1/2)*A*D**(-1/2) - (1/2)*I)*Z*W^L_1")
    assert pretty(chebyshev_polynomial(4, Ahat)) == "8*Ahat**4 - 8*Ahat**2 + I"
    with pytest.raises(ValueError, match="generic_filter: order must be"):
        generic_filter(-1)
    with pytest.raises(ValueError, match="generic_filter: laplacian must be"):
        generic_filter(1, laplacian="normalized")


# ----------------------------------------------------------------------------------------
# identify
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "mode"), CASES, ids=IDS)
def test_identify_recovers_every_row(name, mode):
    spec = get_spec(name, mode=mode)
    effective = spec.order if spec.basis == "chebyshev" else 1
    first_side = spec.filter_latex.split("=")[1]
    for expression in (derive(name, mode=mode).derived, first_side):
        result = identify(expression)
        assert result.order == effective
        assert result.weight_constraint == spec.weight_constraint
        assert name in result.matches


def test_identify_examples():
    for expression in (Z * W0 - A * Z * W0, "Z*W0 - A*Z*W0", r"Z W_0 - A Z W_0"):
        result = identify(expression)
        assert (result.order, result.weight_constraint, result.matches) == (1, "tied", ("ns",))
        assert result.chebyshev_coefficients[0] == W0
        assert result.chebyshev_coefficients[1] == -W0
        assert result.laplacian_coefficients[1] == W0
    gsnl = identify(Z * W0 + Ahat * Z * W1 + (2 * Ahat**2 - I) * Z * W2)
    assert (gsnl.order, gsnl.weight_constraint, gsnl.matches) == (2, "free", ("gsnl",))
    # the raw affinity A is not gSNL's normalized operator: same order, no match, a note
    raw = identify(Z * W0 + A * Z * W1 + (2 * A**2 - I) * Z * W2)
    assert raw.matches == () and "act on Ahat" in raw.note
    assert gsnl.chebyshev_coefficients[2] == W2 and gsnl.chebyshev_coefficients[0] == W0
    square = identify(A**2 * Z * W0)  # x^2 = (T_0 + T_2) / 2
    assert square.power_coefficients[2] == W0
    assert pretty(square.chebyshev_coefficients[0]) == pretty(square.chebyshev_coefficients[2])
    assert square.weight_constraint == "constrained" and "W'_1 = 0" in square.relations_text
    other = identify("Z*W0 + A*Z*W0")
    assert other.weight_constraint == "constrained" and other.matches == ()
    assert "W'_0 - W'_1 = 0" in other.relations_text and "order 1" in str(other)


@pytest.mark.parametrize(
    "bad",
    ["Z*A*W0", "A*W0*Z", "exp(A)*Z*W0", r"\exp(A) Z W_0", "A**-1*Z*W0", "A**(1/2)*Z*W0",
     "D*Z*W0", "Z*W0 - Z*W0", "A*Z", "A", "foo*Z*W0", "A*Z*W0 + Ahat*Z*W1", "Z*W0*W1",
     "L*Z*W0 + A*Z*W1"],
)
def test_identify_rejects_non_polynomial_strings(bad):
    with pytest.raises(ValueError, match="not a polynomial filter"):
        identify(bad)


def test_identify_rejects_non_polynomial_expressions():
    n = sp.Symbol("n")
    A_, Z_, W_ = (sp.MatrixSymbol(s, n, n) for s in ("A", "Z", "W_0"))
    assert identify(A_ * Z_ * W_).order == 1  # square symbols with the same names work
    for bad in (Z_ * A_ * W_, A_ * W_ * Z_, sp.exp(A), A_.T * Z_ * W_, A_**-1 * Z_ * W_):
        with pytest.raises(ValueError, match="not a polynomial filter"):
            identify(bad)
    with pytest.raises(TypeError, match="identify: expression must be"):
        identify(3)


# ----------------------------------------------------------------------------------------
# frequency responses
# ----------------------------------------------------------------------------------------


def test_responses_closed_forms():
    w0, w1, w2 = sp.symbols("w_0 w_1 w_2", real=True)
    expected = {
        "nl": 1 - lam,
        "ns": -lam,
        "a2": 1 - lam,
        "cc": 1 - lam,
        "snl": w0 + w1 * (1 - lam),
        "gsnl": w0 + w1 * (1 - lam) + w2 * (2 * (1 - lam) ** 2 - 1),
        "gsnl_stable": w0 + w1 * (1 - lam) + w2 * (2 * (1 - lam) - 1),
        "dnl": 2 * (1 - lam),
        "cgnl": sp.Symbol("lambda_max", positive=True) / 2 - lam,
    }
    for name, h in expected.items():
        assert sp.simplify(response(name) - h) == 0, name
    for mode in NL_MODES:
        assert sp.simplify(response("nl", mode) - (1 - lam)) == 0
    assert sp.simplify(response("cc", unit_weight=False)
                       - sp.Symbol("gamma", real=True) * sp.Symbol("w", real=True) * (1 - lam)) == 0


@pytest.mark.parametrize(("name", "mode"), CASES, ids=IDS)
def test_response_is_the_filter_on_the_spectrum(name, mode, rng):
    """F with 1x1 weights equals V diag(h(lambda)) V^-1 Z on the block's Laplacian."""
    d = derive(name, mode=mode)
    graph = _numeric_graph(d.spec, rng, n=8)
    weights = {f"w_{k}": float(rng.normal()) for k in range(d.order + 1)}
    params = {k: v for k, v in weights.items() if sp.Symbol(k, real=True)
              in response(name, mode).free_symbols}
    if d.spec.lambda_max is None:
        params["lambda_max"] = graph["lambda_max"]
    h = response_function(name, mode, **params)
    values = dict(graph, Z=rng.normal(size=(8, 1)), W=np.ones((1, 1)), gamma=1.0)
    values.update({f"W_{k}": np.array([[w]]) for k, w in enumerate(weights.values())})
    filtered = evaluate(d.derived, values)
    eigval, V = np.linalg.eig(graph["L"])
    spectral = V @ np.diag(h(eigval.real) if np.allclose(eigval.imag, 0) else
                           _complex_response(name, mode, params, eigval)) @ np.linalg.inv(V)
    np.testing.assert_allclose(filtered, (spectral @ values["Z"]).real, atol=1e-8)


def _complex_response(name, mode, params, eigval):
    h = response(name, mode).subs({sp.Symbol(k, real=True) if k != "lambda_max" else
                                   sp.Symbol(k, positive=True): v for k, v in params.items()})
    return sp.lambdify(lam, h, "numpy")(eigval) * np.ones_like(eigval)


def test_response_function_errors_and_shapes():
    f = response_function("gsnl", w0=0.0, w1=0.0, w2=1.0)  # short names accepted
    np.testing.assert_allclose(f(np.array([0.0, 1.0, 2.0])), [1.0, -1.0, 1.0])
    assert response_function("ns")(np.zeros((2, 3))).shape == (2, 3)
    np.testing.assert_allclose(response_function("cc", w=2.0, gamma=0.5)([0.0]), [1.0])
    with pytest.raises(ValueError, match=r"missing value\(s\) for \['w_1'\]"):
        response_function("snl", w_0=1.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        response_function("nl", w_5=1.0)
    with pytest.raises(ValueError, match="lambda_max"):
        response_function("cgnl")


# ----------------------------------------------------------------------------------------
# facts
# ----------------------------------------------------------------------------------------


def test_facts_are_verified_and_render():
    facts = all_facts()
    assert [f.name for f in facts] == ["normalized_laplacian_spectrum", "softmax_row_stochastic",
                                       "chebyshev_parity", "stable_hypothesis_collapse"]
    for fact in facts:
        assert fact.verified is True
        assert fact.evidence and all(e.holds for e in fact.evidence)
        tex = fact.to_latex()
        assert tex.startswith("\\begin{align}")
        for line in tex.splitlines()[1:-1]:
            _renders(line)
        assert fact.statement in str(fact) and "VERIFIED" in str(fact)
        assert fact._repr_latex_().startswith("$$")


def test_fact_parameters():
    assert normalized_laplacian_spectrum(n=4, numeric_trials=5).verified
    assert softmax_row_stochastic(n=4, numeric_trials=3).verified
    assert chebyshev_parity(10).verified
    collapse = stable_hypothesis_collapse(3)
    assert collapse.verified and "W_1 + 2*W_2 + W_3" in collapse.evidence[1].text
    with pytest.raises(ValueError):
        stable_hypothesis_collapse(0)
    with pytest.raises(ValueError):
        normalized_laplacian_spectrum(n=1)


# ----------------------------------------------------------------------------------------
# parsing, algebra, numeric evaluation
# ----------------------------------------------------------------------------------------


def test_parser_spellings():
    same = [r"\hat A Z W_1", r"\hat{A} Z W_{1}", "Ahat*Z*W1", "AhatZW_1"]
    exprs = [parse_filter(s) for s in same]
    assert all(is_zero(difference(e, Ahat * Z * W1)) for e in exprs)
    sides = parse_equation(r"F = (A - I) Z W = -L_{rw} Z W")
    assert len(sides) == 2
    assert is_zero(difference(parse_filter(r"\frac{2 L}{\lambda_{max}} - I"),
                              2 * SYMBOLS["L"] / sp.Symbol("lambda_max", positive=True) - I))
    with pytest.raises(ValueError, match="unknown LaTeX command"):
        parse_filter(r"\sigma A Z W")
    with pytest.raises(ValueError, match="right-hand sides"):
        parse_filter("F = A Z W = A Z W")


def test_noncommutative_algebra():
    assert is_zero((A + I) ** 2 * Z * W - (A**2 + 2 * A + I) * Z * W)
    assert not is_zero(A * Ahat * Z * W - Ahat * A * Z * W)  # nothing commutes
    assert pretty(as_filter(Z * W0 + A * Z * W0)) == "(A + I)*Z*W_0"
    assert weight(7).name == "W_7"


def test_evaluate_errors():
    with pytest.raises(ValueError, match="no value for the matrix"):
        evaluate(A * Z * W, {"A": np.eye(2), "Z": np.eye(2)})
    with pytest.raises(ValueError, match="inconsistent sizes"):
        evaluate(A * Z * W, {"A": np.eye(2), "Z": np.eye(3), "W": np.eye(3)})
