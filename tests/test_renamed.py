"""Names changed in issue 19: the new name works, the old one still works with a
DeprecationWarning (or, for modules that moved, as a re-export of the same object)."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch


def test_chebyshev_nonlocal_is_graph_filter_nonlocal_with_a_warning():
    from graphfilters.blocks import GraphFilterNonlocal

    with pytest.warns(DeprecationWarning, match="GraphFilterNonlocal"):
        from graphfilters.blocks import ChebyshevNonlocal
    assert ChebyshevNonlocal is GraphFilterNonlocal
    with pytest.warns(DeprecationWarning):
        assert importlib.import_module("graphfilters.blocks.unified").ChebyshevNonlocal \
            is GraphFilterNonlocal
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        importlib.import_module("graphfilters.blocks").Nope  # noqa: B018


def test_chebyshev_terms_is_polynomial_terms_with_a_warning():
    from graphfilters.chebyshev import chebyshev_terms, polynomial_terms

    S = np.array([[0.0, 1.0], [1.0, 0.0]])
    Z = np.arange(4.0).reshape(2, 2)
    new = polynomial_terms(lambda X: S @ X, Z, 3, basis="monomial")
    with pytest.warns(DeprecationWarning, match="polynomial_terms"):
        old = chebyshev_terms(lambda X: S @ X, Z, 3, basis="monomial")
    for a, b, k in zip(new, old, range(4)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, np.linalg.matrix_power(S, k) @ Z)   # monomials


def test_block_report_jacobian_norm_is_jacobian_full_with_a_warning():
    from analysis import analyze
    from graphfilters.blocks import make_block

    row = analyze(make_block("snl", 4), torch.randn(1, 4, 3, 3), progress=False,
                  backbone=False)[0]
    assert math.isfinite(row.jacobian_full)
    with pytest.warns(DeprecationWarning, match="jacobian_full"):
        assert row.jacobian_norm == row.jacobian_full
    assert "jacobian_norm" not in analyze(make_block("snl", 4), torch.randn(1, 4, 3, 3),
                                          progress=False, backbone=False).to_frame("all")


def test_robustness_still_exports_every_name_from_its_new_module():
    import analysis.robustness as old

    for name in old.__all__:
        obj = getattr(old, name)
        home = importlib.import_module(obj.__module__)
        assert getattr(home, name) is obj, name
        assert home.__name__ != "analysis.robustness", name
