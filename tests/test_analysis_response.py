"""Frequency responses: forms agree, the response diagonalizes the real block, energies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import (
    block_response,
    capture,
    classify_response,
    filter_output,
    frequency_response,
    graph_frequency_energy,
    laplacian_weights,
)
from analysis.response import basis_values
from graphfilters.blocks import make_block
from graphfilters.graph import DenseAffinity, LowRankAffinity, SoftmaxAffinity


def _captured(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    block = make_block(name, 6, **kw)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.4)
    x = torch.randn(2, 6, 3, 4, generator=torch.Generator().manual_seed(seed))
    return capture(block, x, progress=False)["(root)"], block


def test_affinity_and_laplacian_forms_agree(rng):
    ws = [rng.standard_normal((3, 4)) for _ in range(4)]
    lam = np.linspace(0, 2, 17)
    a = frequency_response(ws, lam)
    b = frequency_response(laplacian_weights(ws), lam, form="laplacian", lambda_max=2.0)
    assert a.shape == (17, 3, 4) and np.allclose(a, b)
    with pytest.raises(ValueError, match="Chebyshev"):
        frequency_response(ws, lam, form="laplacian", basis="stable")
    # stable basis: B_2(mu) = 2 mu - 1, B_3(mu) = mu
    assert np.allclose(basis_values(3, [0.3], "stable"), [[1, 0.3, -0.4, 0.3]])


@pytest.mark.parametrize("name", ["snl", "gsnl", "gsnl_stable", "nl", "ns"])
def test_response_diagonalizes_the_block_filter(name):
    """In the eigenbasis of a symmetric A_hat, F = sum_k B_k(A_hat) Z W_k acts on each
    frequency as H(lambda); for softmax blocks the same holds for eigenvectors (complex)."""
    cap, block = _captured(name)
    F = filter_output(cap)
    rec = block.last_record if hasattr(block, "last_record") else None
    if rec is not None:
        assert torch.allclose(F, rec.filter_output(), atol=1e-5)
    A = cap.operator().dense()[0].double().numpy()
    Z = cap.z[0].double().numpy()
    if np.allclose(A, A.T):
        mu, U = np.linalg.eigh(A)
        Uinv = U.T
    else:
        mu, U = np.linalg.eig(A)
        Uinv = np.linalg.inv(U)
    H = frequency_response(cap.weights, 1 - mu, basis=cap.basis)
    zhat, fhat = Uinv @ Z, Uinv @ F[0].double().numpy()
    pred = np.einsum("ni,nio->no", zhat, H)
    assert np.abs(pred - fhat).max() < 1e-4 * max(1.0, np.abs(fhat).max())


def test_classification_rule():
    lam = np.linspace(0, 2, 201)
    assert classify_response(lam, np.exp(-3 * lam))[0] == "low-pass"
    assert classify_response(lam, lam)[0] == "high-pass"
    assert classify_response(lam, np.exp(-8 * (lam - 1) ** 2))[0] == "band-pass"
    assert classify_response(lam, np.abs(1 - lam))[0] == "band-stop"
    assert classify_response(lam, 1 + 0.1 * lam)[0] == "all-pass"
    assert classify_response(lam, 0 * lam)[0] == "zero"
    label, stats = classify_response(lam, 2 - lam)
    assert label == "low-pass" and stats["low"] > stats["mid"] > stats["high"]


def test_block_response_of_named_blocks():
    ns, _ = _captured("ns")
    r = block_response(ns)
    assert r.label == "high-pass"                     # F = -L_rw Z W: H = -lambda W
    assert np.allclose(r.gains[0], 0, atol=1e-12)
    assert r.energy_z is not None and r.energy_z.basis == "symmetrized"
    snl, _ = _captured("snl")
    r = block_response(snl)
    assert r.lambda_max == 2.0 and r.laplacian_weights is not None
    assert r.energy_z.basis == "structured"
    assert len(r.eigenvalues) == 2 and all(np.isrealobj(e) for e in r.eigenvalues)
    stable, _ = _captured("gsnl_stable")
    assert block_response(stable).laplacian_weights is None     # not a Chebyshev basis


@pytest.mark.parametrize("kind", ["structured", "dense", "symmetrized", "schur"])
def test_graph_frequency_energy_parseval(rng, kind):
    n, c = 30, 3
    z = rng.standard_normal((2, n, c))
    P, Q = rng.random((2, n, 2)), rng.random((2, n, 2))
    if kind == "structured":
        aff, opts = LowRankAffinity(P, Q, symmetric=True), {}
    elif kind == "dense":
        aff, opts = DenseAffinity(LowRankAffinity(P, Q, symmetric=True).dense()), {}
    else:
        q, k = rng.standard_normal((2, 2, n, 3))
        aff = SoftmaxAffinity(q, k)
        opts = {"nonsymmetric": "symmetrize" if kind == "symmetrized" else "schur"}
    e = graph_frequency_energy(aff, z, **opts)
    for i in range(2):
        assert np.isclose(e.energy[i].sum(), (z[i] ** 2).sum())
    assert np.isclose(e.band_fractions().sum(), 1.0)
    if kind == "schur":
        assert np.iscomplexobj(e.frequencies[0])
