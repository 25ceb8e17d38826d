"""analysis.attention_response: the per-head response of the attention filter blocks from
their learned scalars, against the eigenvalues of the blocks' own operators; and its rows in
analyze()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import analyze, attention_response
from graphfilters.blocks import make_block


def _one_head(name: str, seed: int, **coefficients: float):
    """A 1-head 1D block with the given learned scalars: (block, A, operator), float64."""
    torch.manual_seed(seed)
    block = make_block(name, 6, heads=1, inter_channels=4, dim=1, free=True) if name == "gfsa" \
        else make_block(name, 6, heads=1, inter_channels=4, dim=1)
    block = block.double()
    with torch.no_grad():
        for k, v in coefficients.items():
            getattr(block, k).fill_(v)
        x = torch.randn(1, 6, 11, dtype=torch.float64)
        q, k, _ = block.projections(x)
        return (block, block.base_affinities(q, k)[0, 0, 0].numpy(),
                block.operator(x)[0, 0].numpy())


def _same_moduli(want: np.ndarray, got: np.ndarray, tol: float = 1e-10) -> None:
    want, got = np.sort(np.abs(want)), np.sort(np.abs(got))
    np.testing.assert_allclose(want, got, atol=tol, rtol=0)


def test_gfsa_response_at_the_captured_eigenvalues_is_the_operators_spectrum():
    # |h(1 - mu_i)| for the eigenvalues mu_i of A are the moduli of the eigenvalues of the
    # block's operator w_0 I + w_1 A + w_K (A + (K - 1)(A^2 - A)), all four scalars free
    block, a, op = _one_head("gfsa", 0, w_0=0.3, w_1=-0.7, w_K=1.9)
    mu = np.linalg.eigvals(a)
    r = attention_response(block, eigenvalues=[1 - mu])
    _same_moduli(r.gains_at_eigenvalues[0], np.linalg.eigvals(op))
    # and on the grid, the closed form of the row with these scalars
    m = 1 - r.lam
    np.testing.assert_allclose(r.gains[:, 1], np.abs(0.3 + (-0.7 - 2 * 1.9) * m + 3 * 1.9 * m**2),
                               atol=1e-12)
    assert r.form == "heads" and r.label and not r.forced


def test_attnscale_response_is_the_spectrum_but_the_dc_eigenvalue():
    block, a, op = _one_head("attnscale", 1, lambda_h=0.8)
    mu = np.linalg.eigvals(a).astype(complex)
    rest = np.delete(mu, int(np.argmin(np.abs(mu - 1))))
    r = attention_response(block, eigenvalues=[1 - rest])
    ops = np.linalg.eigvals(op)
    ops = np.delete(ops, int(np.argmin(np.abs(ops - 1))))          # the DC gain 1
    _same_moduli(r.gains_at_eigenvalues[0], ops)
    assert "DC" in r.notes["dc"]


def test_efficient_is_forced_and_diffattn_and_other_modules_are_refused():
    r = attention_response(make_block("efficient", 8, heads=2, dim=1))
    assert r.forced and r.head_labels == ["band-stop", "band-stop"]
    np.testing.assert_allclose(r.gains[:, 0], np.abs(1 - r.lam), atol=1e-15)
    with pytest.raises(ValueError, match="module: .*two graphs"):
        attention_response(make_block("diffattn", 8, heads=2, dim=1))
    with pytest.raises(ValueError, match="module must be an attention filter block"):
        attention_response(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="attention_response: n_grid must be an integer >= 3"):
        attention_response(make_block("gfsa", 8, heads=2, dim=1), n_grid=2)


def test_analyze_rows_of_the_attention_blocks_show_coefficients_and_responses():
    torch.manual_seed(0)
    gfsa = make_block("gfsa", 16, heads=2, dim=1).eval()
    with torch.no_grad():
        gfsa.w_K.copy_(torch.tensor([0.0, 1.0]))
        gfsa.norm.weight.fill_(1.0)
    row = analyze(gfsa, torch.randn(2, 16, 10), progress=False, backbone=False)[0]
    assert row.status == "ok"
    assert row.extra["coefficients"]["w_K"] == [0.0, 1.0]
    want = attention_response(gfsa)
    assert row.response_class == want.label
    assert row.response_high == pytest.approx(want.stats["high"])
    assert row.notes["response.heads"] == ", ".join(want.head_labels)
    assert "response," not in row.notes["n/a"]          # no longer listed as n/a
    diff = analyze(make_block("diffattn", 16, heads=2, dim=1).eval(), torch.randn(2, 16, 10),
                   progress=False, backbone=False, jacobian=False)[0]
    assert diff.response_class == "" and "response," in diff.notes["n/a"]
