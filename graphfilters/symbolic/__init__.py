r"""Symbolic layer: every nonlocal block as a special case of the Chebyshev graph filter.

The generic filter (Laplacian form, docs/theory.md, Conventions)

.. math::

    F(A, Z) = \sum_{k=0}^{K} T_k(\tilde L)\, Z\, W^L_k, \qquad
    \tilde L = \frac{2L}{\lambda_{max}} - I,

is built from non-commutative sympy matrix symbols. :func:`derive` turns it, one sympy
substitution per step, into the closed form of any row of the block table
(:mod:`graphfilters.specs`, affinity form :math:`F = \sum_k B_k(\hat A) Z W_k`,
:math:`W^L_k = (-1)^k W_k`) and proves the two equal; :func:`identify` goes back from an
expression to its order and weight constraint; :func:`response` gives the frequency response
:math:`h(\lambda)`; the ``facts`` functions check what the argument rests on.

Examples
--------
>>> from graphfilters.symbolic import derive, identify, response, A, Z, W0
>>> derive("gsnl").verified
True
>>> identify(Z * W0 - A * Z * W0).weight_constraint
'tied'
>>> response("ns")
-lambda
"""

from __future__ import annotations

from .algebra import NotPolynomialError, difference, expand_matrix, is_zero
from .derivation import Derivation, Step, closed_form_from_fields, derive, derive_all
from .facts import (
    Evidence,
    Fact,
    all_facts,
    chebyshev_parity,
    normalized_laplacian_spectrum,
    softmax_row_stochastic,
    stable_hypothesis_collapse,
)
from .generic import (
    as_filter,
    chebyshev_polynomial,
    collect_powers,
    default_lambda_max,
    generic_filter,
    laplacian,
    scaled_laplacian,
)
from .identify import Identification, RationalIdentification, identify
from .identify_attention import MultiOperatorIdentification
from .numeric import evaluate
from .parsing import parse_equation, parse_filter
from .printing import latex, latex_to_text, pretty
from .rational import RationalDerivation, derive_rational
from .responses import operator_eigenvalue, response, response_function
from .rules import Assumption
from .symbols import (
    SYMBOLS,
    W0,
    W1,
    W2,
    W3,
    WL0,
    WL1,
    WL2,
    A,
    Ahat,
    D,
    I,
    L,
    L_rw,
    L_sym,
    Ltilde,
    W,
    Z,
    gamma,
    lam,
    lambda_max,
    laplacian_weight,
    weight,
)
from .tables import blocks_table_latex

__all__ = [
    # derivations
    "derive", "derive_all", "Derivation", "Step", "Assumption", "closed_form_from_fields",
    "RationalDerivation", "derive_rational", "RationalIdentification", "blocks_table_latex",
    "latex_to_text",
    # generic filter
    "generic_filter", "chebyshev_polynomial", "laplacian", "scaled_laplacian",
    "default_lambda_max", "as_filter", "collect_powers",
    # reverse direction, responses, facts
    "identify", "Identification", "MultiOperatorIdentification",
    "response", "response_function", "operator_eigenvalue",
    "Fact", "Evidence", "normalized_laplacian_spectrum", "softmax_row_stochastic",
    "chebyshev_parity", "stable_hypothesis_collapse", "all_facts",
    # expressions
    "parse_filter", "parse_equation", "evaluate", "is_zero", "difference", "expand_matrix",
    "NotPolynomialError", "latex", "pretty",
    # symbols
    "A", "Ahat", "D", "L", "L_sym", "L_rw", "Ltilde", "I", "Z", "W", "W0", "W1", "W2", "W3",
    "WL0", "WL1", "WL2", "weight", "laplacian_weight", "lambda_max", "gamma", "lam", "SYMBOLS",
]
