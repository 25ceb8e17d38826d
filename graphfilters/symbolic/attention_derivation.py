r"""Derivations of the attention table's rows from the generic Chebyshev filter.

Each row of :data:`graphfilters.specs.ATTENTION_BLOCKS` is derived as the one-operator
derivation of its polynomial part (:func:`graphfilters.symbolic.derive` on the softmax row's
rules: :math:`D = I`, :math:`L_{rw} = I - A`, :math:`\lambda_{max} = 2`), followed by the
steps that say what it is a special case of, each a sympy substitution:

- ``gfsa``: the order-2 filter with one shared weight per head, :math:`W_k \to c_k W`, the
  :math:`c_k` being the Chebyshev coefficients of GFSA's polynomial
  :math:`w_0 + w_1 x + w_K(x + (K - 1)(x^2 - x))`;
- ``attnscale``: the order-1 filter with no order-0 term, extended by one term in the DC
  projector :math:`P = \mathbf 1\mathbf 1^T/N`, :math:`P Z W_P`, then
  :math:`W \to (1 + \lambda_h) W`, :math:`W_P \to -\lambda_h W`;
- ``diffattn``: the same filter on a second graph added, :math:`A \to A_1` and
  :math:`+ A_2 Z V_1`, then :math:`V_1 \to -\lambda_d W`;
- ``efficient``: the order-1 filter of a row-stochastic affinity (no extra step).

The proof is the same as for the table's blocks: ``derived - closed_form`` (the row's
``filter_latex``) expands to the zero matrix.

Examples
--------
>>> from graphfilters.symbolic import derive
>>> d = derive("attnscale")
>>> d.verified, d.result
(True, '((1 + lambda_h)*A - lambda_h*P)*Z*W')
"""

from __future__ import annotations

from dataclasses import replace

import sympy as sp
from sympy import MatAdd, MatMul

from graphfilters.specs import AttentionSpec, get_attention_spec, get_spec

from . import symbols as S
from .algebra import difference, expand_matrix
from .derivation import Derivation, Step, _is_zero_matrix, _parse_closed_forms, derive
from .generic import as_filter
from .identify import power_to_chebyshev
from .printing import latex

__all__ = ["derive_attention", "gfsa_chebyshev_coefficients"]


def gfsa_chebyshev_coefficients() -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    r""":math:`(c_0, c_1, c_2)` with :math:`w_0 + w_1 x + w_K(x + (K - 1)(x^2 - x)) =
    \sum_k c_k T_k(x)`.

    Examples
    --------
    >>> gfsa_chebyshev_coefficients()
    (K*w_K/2 + w_0 - w_K/2, -K*w_K + w_1 + 2*w_K, K*w_K/2 - w_K/2)
    """
    x = sp.Symbol("x")
    poly = sp.Poly(sp.expand(S.w_0 + S.w_1 * x + S.w_K * (x + (S.K - 1) * (x**2 - x))), x)
    a = power_to_chebyshev(2)
    return tuple(sp.expand(sum(poly.coeff_monomial(x**p) * a[p][k] for p in range(3)))
                 for k in range(3))


def _step(description: str, paper: str, sub: dict, expr: sp.Basic) -> Step:
    rule = r",\ ".join(rf"{latex(k)} \to {latex(v)}" for k, v in sub.items())
    return Step(description, rule, sub, as_filter(expand_matrix(expr)), paper)


def derive_attention(name: str | AttentionSpec) -> Derivation:
    """Derive the attention-table row ``name`` and prove its closed form.

    Parameters
    ----------
    name : str or AttentionSpec
        ``gfsa``, ``attnscale``, ``diffattn`` or ``efficient``.

    Returns
    -------
    Derivation
        Its ``spec`` is the attention row; its steps are those of the polynomial part
        followed by the special-case steps (module docstring).
    """
    spec = name if isinstance(name, AttentionSpec) else get_attention_spec(name)
    softmax = get_spec("nl")          # the rules of a row-stochastic softmax affinity
    if spec.name == "efficient":
        return derive(spec)
    if spec.name == "gfsa":
        base = derive(get_spec(softmax, order=2, weight_constraint="free"),
                      closed_form=r"Z W_0 + A Z W_1 + (2A^{2} - I) Z W_2")
        c = gfsa_chebyshev_coefficients()
        sub = {S.weight(k): MatMul(c[k], S.W) for k in range(3)}
        extra = [_step("GFSA: one shared weight per head, W_k -> c_k W with c_k the Chebyshev "
                       "coefficients of w_0 + w_1 x + w_K (x + (K - 1)(x^2 - x))",
                       r"GFSA: one shared weight per head, $W_k \to c_k W$ with $c_k$ the "
                       r"Chebyshev coefficients of $w_0 + w_1 x + w_K(x + (K - 1)(x^2 - x))$",
                       sub,
                       base.derived.xreplace(sub))]
    else:
        base = derive(softmax)        # F = A Z W
        if spec.name == "attnscale":
            grown = MatAdd(base.derived, S.P * S.Z * S.W_P)
            sub = {S.W: MatMul(1 + S.lambda_h, S.W), S.W_P: MatMul(-S.lambda_h, S.W)}
            extra = [_step("extend the generic filter by a DC projector term P Z W_P "
                           "(P = 1 1^T / N; A P = P for a row-stochastic A)",
                           r"extend the generic filter by a DC projector term $P Z W_P$ "
                           r"($P = \mathbf 1\mathbf 1^T/N$; $AP = P$ for a row-stochastic $A$)",
                           {}, grown),
                     _step("AttnScale: W -> (1 + lambda_h) W, W_P -> -lambda_h W",
                           r"AttnScale: $W \to (1 + \lambda_h) W$, $W_P \to -\lambda_h W$",
                           sub, grown.xreplace(sub))]
        else:                         # diffattn
            grown = MatAdd(base.derived.xreplace({S.A: S.A_1}), S.A_2 * S.Z * S.V_1)
            sub = {S.V_1: MatMul(-S.lambda_d, S.W)}
            extra = [_step("a second graph: A -> A_1 and the same order-1 filter on A_2 "
                           "added, A_2 Z V_1",
                           r"a second graph: $A \to A_1$ and the same order-1 filter on $A_2$ "
                           r"added, $A_2 Z V_1$", {S.A: S.A_1}, grown),
                     _step("differential attention: V_1 -> -lambda_d W",
                           r"differential attention: $V_1 \to -\lambda_d W$", sub,
                           grown.xreplace(sub))]
    derived = extra[-1].expr
    forms, cf_latex = _parse_closed_forms(spec.filter_latex)
    diffs = tuple(difference(derived, f) for f in forms)
    return replace(
        base, spec=spec, steps=base.steps + tuple(extra), derived=derived,
        closed_forms=tuple(as_filter(f) for f in forms), closed_form_latex=cf_latex,
        differences=diffs, verified=all(_is_zero_matrix(d) for d in diffs), source="table")
