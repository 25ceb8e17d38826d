"""Real third-party attention code (tests/thirdparty/zoo.py) read by capture and analyze.

For each family: every attention module of the library found, its ``analyze`` row ``ok``, the
captured ``(S, N, M)`` affinity equal to the library's own map to 1e-6, the row's self-check
error recorded (where rows have one), and, in float64, the matrix-free norms of the re-called
map's full and frozen (affinity held fixed) Jacobians equal to those of the dense
:func:`torch.autograd.functional.jacobian`, the frozen Jacobian different from the full one.

Families the toolkit cannot read yet are marked ``xfail`` (not strict) one by one, with the
reason (issue 18).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from analysis.robustness import block_function, frozen_function, jacobian_spectral_norm
from tests.test_analysis_transformers import _check_jacobian
from tests.thirdparty.harness import Result, evaluate
from tests.thirdparty.zoo import FAMILIES

#: The largest self-check error (relative) that a row marked ``ok`` may carry.
SELF_CHECK_TOL = 1e-4

XFAIL: dict[str, str] = {}


#: Families whose Jacobians are already right although their row is not ``ok``.
JACOBIAN_OK: set[str] = set()


def _params(passing: frozenset[str] = frozenset()) -> list:
    return [pytest.param(name, marks=pytest.mark.xfail(strict=False, reason=XFAIL[name]))
            if name in XFAIL and name not in passing else name for name in FAMILIES]


@functools.cache
def _result(name: str) -> Result:
    return evaluate(name)


def _evaluated(name: str) -> Result:
    res = _result(name)
    if res.skipped:
        pytest.skip(res.skipped)
    return res


@pytest.mark.parametrize("name", _params())
def test_found_ok_and_equal_to_the_library_map(name):
    res = _evaluated(name)
    assert not res.error, res.error
    assert res.expected, f"{name}: the zoo entry has no reference map"
    assert not res.missing, (f"{name}: not found {res.missing}; captured {res.captured}; "
                             f"{res.capture_reason}")
    for ref in res.expected:
        assert res.statuses.get(ref) == "ok", (ref, res.statuses.get(ref), res.reasons.get(ref))
        assert res.errors[ref] <= 1e-6, (ref, res.errors[ref], res.error_notes.get(ref))
    rows = [r for r in res.table if r.path in res.matched.values()]
    if rows and hasattr(rows[0], "self_check_error"):
        for row in rows:
            err = row.self_check_error
            assert err is not None and math.isfinite(err) and err <= SELF_CHECK_TOL, (
                row.path, err)


def _check_frozen_jacobian(model: torch.nn.Module, cap, index: int = 0) -> None:
    """The frozen map: same value at x, matrix-free norm = dense norm, and not the full J."""
    model.double().eval()
    try:
        fn, x = block_function(cap, index)
        frozen = frozen_function(fn, x)
        with torch.no_grad():
            assert torch.allclose(frozen(x), fn(x), atol=1e-12)
        J_frozen = torch.autograd.functional.jacobian(frozen, x).reshape(x.numel(), -1)
        J_full = torch.autograd.functional.jacobian(fn, x).reshape(x.numel(), -1)
        exact = float(torch.linalg.matrix_norm(J_frozen, 2))
        est = jacobian_spectral_norm(frozen, x, n_iter=1000, tol=1e-13)
        assert est == pytest.approx(exact, rel=1e-6)
        assert not torch.allclose(J_frozen, J_full, atol=1e-8), "frozen J equals the full J"
    finally:
        model.float()


@pytest.mark.parametrize("name", _params(frozenset(JACOBIAN_OK)))
def test_full_and_frozen_jacobians_equal_dense(name):
    res = _evaluated(name)
    assert not res.error and not res.missing, res.error or f"not found: {res.missing}"
    for ref in res.expected:
        cap = res.captures[res.matched[ref]]
        _check_jacobian(res.entry.model, cap, index=0)
        _check_frozen_jacobian(res.entry.model, cap, index=0)


@pytest.mark.parametrize("name", _params())
def test_per_head_filter_rebuilds_the_module_output(name):
    """With ``heads="keep"`` the captured filter (affinity, values, output projection, scale,
    shift, residual) rebuilds the module's output to 1e-5 wherever the check applies; with
    the default head average, a multi-head row that does not says so (``approximate``)."""
    from analysis import analyze
    from tests.thirdparty.zoo import build

    res = _evaluated(name)
    for row in res.table:
        if row.reconstruction_error > 1e-4:
            assert "approximate" in row.notes, (row.path, row.notes.get("reconstruction"))
    entry = build(name)
    table = analyze(entry.model, entry.inputs, progress=False, backbone=False, jacobian=False,
                    heads="keep")
    for row in table:
        err = row.reconstruction_error
        assert math.isnan(err) or err <= 1e-5, (row.path, row.notes.get("reconstruction"))
