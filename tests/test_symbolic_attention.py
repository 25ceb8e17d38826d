"""identify() on the attention table: GFSA's symbolic K, AttnScale's projector term and
differential attention's two graphs, checked against the blocks' own operators."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from graphfilters.blocks import make_block
from graphfilters.specs import ATTENTION_BLOCKS
from graphfilters.symbolic import MultiOperatorIdentification, identify
from graphfilters.symbolic import symbols as S
from graphfilters.symbolic.identify_attention import degeneracy

GFSA_FREE = (S.Z * S.W0 + S.A * S.Z * S.W1
             + ((S.K - 1) * S.A**2 + (2 - S.K) * S.A) * S.Z * S.W2)


def test_gfsa_is_order_two_for_symbolic_k_and_says_where():
    r = identify(GFSA_FREE)
    assert r.order == 2 and r.weight_constraint == "free"
    assert r.attention_matches == ("gfsa",)
    assert r.conditions == ("K != 1",)
    assert sp.simplify(r.power_coefficients[2] - (S.K - 1) * S.W2) == sp.ZeroMatrix(S.C_s, S.C_out)
    # the condition is the truth: at K = 1 the order drops, at K = 4 it is 2
    assert identify(GFSA_FREE.subs(S.K, 1)).order == 1
    assert identify(GFSA_FREE.subs(S.K, 4)).order == 2
    assert identify(GFSA_FREE.subs(S.K, 4)).conditions == ()


@pytest.mark.parametrize("name", list(ATTENTION_BLOCKS))
def test_every_attention_row_is_identified_as_itself(name):
    r = identify(ATTENTION_BLOCKS[name].filter_latex.split("=", 1)[1])
    assert name in r.attention_matches
    assert r.order == ATTENTION_BLOCKS[name].order
    assert isinstance(r, MultiOperatorIdentification) == (
        ATTENTION_BLOCKS[name].projector or ATTENTION_BLOCKS[name].operators == 2)


def _numeric(r, ops: dict[str, np.ndarray], subs: dict) -> np.ndarray:
    """Sum over words of scalar * product of the numeric operators."""
    n = next(iter(ops.values())).shape[0]
    out = np.zeros((n, n))
    for word, c in r.scalars.items():       # words, or powers of A (Identification)
        word = ("A",) * word if isinstance(word, int) else word
        m = np.eye(n)
        for name in word:
            m = m @ ops[name]
        out += float(sp.sympify(c).subs(subs)) * m
    return out


@torch.no_grad()
def test_identified_forms_equal_the_blocks_operators():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    n = 12
    P = np.full((n, n), 1.0 / n)
    # GFSA at K = 4 with random learned scalars: p(A) of the identified form = the block's
    g = make_block("gfsa", 6, heads=2, inter_channels=4, dim=2).double()
    g.w_K.copy_(torch.randn_like(g.w_K))
    q, k, _ = g.projections(x)
    a = g.base_affinities(q, k)[0, 0]                # (H, N, N) of sample 0
    op = g.operator(x)[0]
    r = identify(ATTENTION_BLOCKS["gfsa"].filter_latex.split("=", 1)[1])
    for h in range(2):
        subs = {S.w_0: float(g.w_0[h]), S.w_1: float(g.w_1[h]), S.w_K: float(g.w_K[h]),
                S.K: g.K}
        np.testing.assert_allclose(_numeric(r, {"A": a[h].numpy()}, subs), op[h].numpy(),
                                   atol=1e-12, rtol=0)
    # AttnScale: lambda_h A + ... with the projector term
    s = make_block("attnscale", 6, heads=2, inter_channels=4, dim=2).double()
    s.lambda_h.copy_(torch.randn_like(s.lambda_h))
    q, k, _ = s.projections(x)
    a = s.base_affinities(q, k)[0, 0]
    op = s.operator(x)[0]
    r = identify(ATTENTION_BLOCKS["attnscale"].filter_latex.split("=", 1)[1])
    for h in range(2):
        got = _numeric(r, {"A": a[h].numpy(), "P": P}, {S.lambda_h: float(s.lambda_h[h])})
        np.testing.assert_allclose(got, op[h].numpy(), atol=1e-12, rtol=0)
        # the DC gain: the block maps the constant vector to itself
        np.testing.assert_allclose(op[h].numpy() @ np.ones(n), float(r.dc_gain()) * np.ones(n),
                                   atol=1e-12)
    # differential attention: A_1 - lambda_d A_2, DC gain 1 - lambda_d
    d = make_block("diffattn", 6, heads=2, inter_channels=4, dim=2).double()
    q, k, _ = d.projections(x)
    a = d.base_affinities(q, k)[0]                  # (m=2, H, N, N)
    lam = float(d.lambda_full())
    op = d.operator(x)[0]
    r = identify(ATTENTION_BLOCKS["diffattn"].filter_latex.split("=", 1)[1])
    for h in range(2):
        got = _numeric(r, {"A_1": a[0, h].numpy(), "A_2": a[1, h].numpy()}, {S.lambda_d: lam})
        np.testing.assert_allclose(got, op[h].numpy(), atol=1e-12, rtol=0)
    assert sp.simplify(r.dc_gain() - (1 - S.lambda_d)) == 0


def test_projector_algebra_and_what_is_not_a_row():
    r = identify(r"(A P + P^2 + A_1) Z W")           # A P = P, P^2 = P
    assert dict(r.coefficients) == {("A_1",): S.W, ("P",): 2 * S.W}
    assert r.matches == () and "no attention-table row" in r.note
    r = identify(r"P A Z W")                          # P A is not reduced (A not column-stochastic)
    assert tuple(r.coefficients) == (("P", "A"),) and r.order == 2
    with pytest.raises(ValueError, match="cannot be combined with a projector"):
        identify(r"(\hat A + P) Z W")
    with pytest.raises(ValueError, match="zero filter"):
        identify(r"(A P - P) Z W")


def test_degeneracy_of_several_weights_is_joint():
    a = sp.Symbol("a")
    # the order drops only where every weight's coefficient vanishes
    assert degeneracy((a - 1) * S.W1 + (a - 1) * (a + 2) * S.W2) == ("a != 1",)
    assert degeneracy(S.W1 + (a - 1) * S.W2) == ()


@pytest.mark.parametrize("name", list(ATTENTION_BLOCKS))
def test_every_attention_row_is_derived_with_proof_and_identified_back(name):
    from graphfilters.symbolic import derive

    d = derive(name)
    assert d.verified and d.spec is ATTENTION_BLOCKS[name]
    assert "proved" in d.to_latex() and r"\begin{align*}" in d.to_latex()
    assert name in identify(d.derived).attention_matches        # the round trip


def test_a_wrong_attention_closed_form_is_not_verified():
    from dataclasses import replace

    from graphfilters.symbolic.derivation import derive_attention

    wrong = replace(ATTENTION_BLOCKS["attnscale"],
                    filter_latex=r"F = (P + \lambda_h (A - P)) Z W")
    d = derive_attention(wrong)
    assert not d.verified and "NOT" in str(d)


def _captured_heads(name: str, coefficient: str, seed: int):
    """A 1D block with random learned ``coefficient``: (block, per-head A_h, operator)."""
    torch.manual_seed(seed)
    block = make_block(name, 6, heads=2, inter_channels=4, dim=1).double()
    getattr(block, coefficient).copy_(torch.randn_like(getattr(block, coefficient)))
    x = torch.randn(1, 6, 9, dtype=torch.float64)
    q, k, _ = block.projections(x)
    return block, block.base_affinities(q, k)[0, 0].numpy(), block.operator(x)[0].numpy()


def _same_values(want: np.ndarray, got: np.ndarray, tol: float = 1e-10) -> None:
    """Each eigenvalue of one set is within ``tol`` of one of the other, both ways."""
    gap = np.abs(np.asarray(want, complex)[:, None] - np.asarray(got, complex)[None, :])
    assert gap.min(1).max() < tol and gap.min(0).max() < tol


@torch.no_grad()
def test_gfsa_symbolic_response_matches_the_blocks_eigenvalues():
    # eigenvalues of the block's per-head operator p(A_h) = p(eigenvalues of A_h), p read
    # from the derivation (captured A_h of a random input, random learned w_K)
    from graphfilters.symbolic import derive

    g, a, op = _captured_heads("gfsa", "w_K", seed=1)
    scalars = identify(derive("gfsa").derived).scalars
    mu = sp.Symbol("mu")
    p = sum(c * mu**e for e, c in scalars.items())
    for h in range(2):
        f = sp.lambdify(mu, p.subs({S.w_0: float(g.w_0[h]), S.w_1: float(g.w_1[h]),
                                     S.w_K: float(g.w_K[h]), S.K: g.K}))
        _same_values(f(np.linalg.eigvals(a[h])), np.linalg.eigvals(op[h]))


@torch.no_grad()
def test_attnscale_response_is_the_operators_spectrum_but_the_dc_and_diffattn_has_none():
    # eigenvalues of (1 + l) A - l P = {DC gain 1} and h(lambda) = (1 + l)(1 - lambda) at the
    # other eigenvalues mu = 1 - lambda of A (one eigenvalue 1 of A is the DC one)
    from graphfilters.symbolic import response

    s, a, op = _captured_heads("attnscale", "lambda_h", seed=2)
    h = sp.lambdify((S.lam, S.lambda_h), response("attnscale"))
    for head in range(2):
        mu = np.linalg.eigvals(a[head]).astype(complex)
        dc = int(np.argmin(np.abs(mu - 1)))
        rest = np.delete(mu, dc)
        want = np.concatenate([[1.0], h(1 - rest, float(s.lambda_h[head]))])
        _same_values(want, np.linalg.eigvals(op[head]))
    with pytest.raises(ValueError, match="two graphs"):
        response("diffattn")
    assert response("efficient") == 1 - S.lam
