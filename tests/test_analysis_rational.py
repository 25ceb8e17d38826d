"""Analysis of rational-filter blocks (Cayley, ARMA) against independent float64 references:
responses from the eigendecomposition of the block's own A_hat and the closed-form rational
functions, filter outputs from dense matrix inverses, frozen-affinity norms from dense
Jacobians, damping from dense her(K(lambda)); and a saved-and-reloaded model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from analysis import analyze, capture
from analysis.capture import Capture
from analysis.response import basis_terms, block_response, filter_output, frequency_response
from analysis.robustness import (
    FrozenMap,
    affinity_sensitivity,
    block_function,
    damping,
    frozen_function,
    frozen_norms,
    linearized_stability,
)
from graphfilters.blocks import make_block
from graphfilters.graph import DenseAffinity
from tests.test_analysis_stability_exact import _dense, _power_norms, _rel
from tests.test_blocks import randomize

RTOL = 1e-6
TOL = 1e-11
CASES = [(name, aff) for name in ("cayley", "arma") for aff in ("snl", "softmax")]


def _block(name: str, affinity: str = "snl", C: int = 6, Cs: int | None = None,
           order: int = 2, seed: int = 1) -> nn.Module:
    block = make_block(name, C, inter_channels=Cs, order=order, affinity=affinity)
    return randomize(block.double(), seed).eval()


def _x(C: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, C, 4, 4, dtype=torch.float64, generator=gen)


# -- independent references -------------------------------------------------------------------
def _ref_response(block: nn.Module, mu: np.ndarray) -> np.ndarray:
    r"""H at eigenvalues ``mu`` of A_hat from the papers' formulas: Cayley
    :math:`W_0 + \sum_j \operatorname{Re}(C^j) W_{2j-1} + \operatorname{Im}(C^j) W_{2j}`,
    :math:`C = (h\lambda - i)/(h\lambda + i)`; ARMA :math:`W_0 + \sum_k W_k/(1 - \psi_k\mu)`.
    For complex ``mu`` (a non-symmetric A_hat) the matrix functions Re(C(L)^j), Im(C(L)^j)
    of a real L are (C^j + C^-j)/2 and (C^j - C^-j)/2i (conj C(L) = C(L)^-1)."""
    ws = [w.detach().numpy() for w in block.filter_weights()]
    p = {k: v.detach().numpy() for k, v in block.filter_parameters().items()}
    mu = np.asarray(mu)
    H = np.zeros((len(mu),) + ws[0].shape, dtype=complex) + ws[0]
    if "zoom" in p:
        lam = 1 - mu
        Cl = (p["zoom"] * lam - 1j) / (p["zoom"] * lam + 1j)
        for j in range(1, (len(ws) - 1) // 2 + 1):
            re, im = (Cl**j + Cl**-j) / 2, (Cl**j - Cl**-j) / 2j
            H += re[:, None, None] * ws[2 * j - 1] + im[:, None, None] * ws[2 * j]
    else:
        for k, psi in enumerate(p["poles"], start=1):
            H += (1 / (1 - psi * mu))[:, None, None] * ws[k]
    return H if np.iscomplexobj(mu) else H.real


def _ref_filter_output(block: nn.Module, A: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """F = sum_k B_k(A) Z W_k with the B_k(A) formed by dense inverses (``A`` ``(N, N)``)."""
    ws = [w.detach() for w in block.filter_weights()]
    p = {k: v.detach() for k, v in block.filter_parameters().items()}
    eye = torch.eye(A.shape[0], dtype=torch.complex128)
    Ac = A.to(torch.complex128)
    terms = [Z]
    if "zoom" in p:
        h = float(p["zoom"])
        L = eye - Ac
        Cm = (h * L - 1j * eye) @ torch.linalg.inv(h * L + 1j * eye)
        P = eye
        for _ in range((len(ws) - 1) // 2):
            P = P @ Cm
            terms += [(P @ Z.to(P.dtype)).real, (P @ Z.to(P.dtype)).imag]
    else:
        for psi in p["poles"]:
            terms.append(torch.linalg.inv(eye.real - float(psi) * A) @ Z)
    return sum(t @ w for t, w in zip(terms, ws))


def _g_scale(block: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """G (C x C_s) of the value projection and the eval-mode BN scale s."""
    G = block.g.weight.detach().reshape(block.g.weight.shape[0], -1).T.numpy()
    bn = block.norm
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    return G, s


# -- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,affinity", CASES)
def test_analyze_rows_are_ok(name, affinity):
    model = nn.Sequential(nn.Conv2d(3, 6, 1), _block(name, affinity)).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    table = analyze(model, x, progress=False)
    row = table[0]
    assert row.status == "ok", row.reason
    assert row.block == name and row.order == 2
    cap = table.captures[row.path]
    params = model[1].filter_parameters()
    assert set(cap.basis_params) == set(params)
    for k, v in params.items():
        assert torch.equal(cap.basis_params[k], v.detach())
    for value in (row.stability_norm, row.damping_mass, row.affinity_gain, row.response_high):
        assert np.isfinite(value)


@pytest.mark.parametrize("name", ["cayley", "arma"])
def test_response_at_eigenvalues_matches_eigendecomposition(name):
    block = _block(name)
    x = _x()
    cap = capture(block, x, progress=False)["(root)"]
    A = block(x, return_affinity=True)[1][0].detach()              # the A_hat the block used
    mu_dense = torch.linalg.eigvalsh((A + A.T) / 2).numpy()
    assert torch.allclose(A, A.T, atol=1e-14)
    resp = block_response(cap)
    lam = resp.eigenvalues[0]
    # every captured eigenvalue is one of A_hat's and every one of A_hat's is captured
    dist = np.abs((1 - lam)[:, None] - mu_dense[None, :])
    assert dist.min(1).max() < 1e-10 and dist.min(0).max() < 1e-10
    ref = np.linalg.svd(_ref_response(block, 1 - lam), compute_uv=False)[:, 0]
    assert np.allclose(resp.gains_at_eigenvalues[0], ref, rtol=1e-10, atol=1e-12)
    grid = np.linalg.svd(_ref_response(block, 1 - resp.lam), compute_uv=False)
    assert np.allclose(resp.gains, grid, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,affinity", CASES)
def test_filter_output_matches_dense_inverses(name, affinity):
    block = _block(name, affinity)
    x = _x()
    cap = capture(block, x, progress=False)["(root)"]
    A = block(x, return_affinity=True)[1][0].detach()
    Z = block.g(x).detach().flatten(2)[0].T                         # (N, C_s)
    ref = _ref_filter_output(block, A, Z)
    tol = 1e-10 if affinity == "snl" else 1e-9          # softmax: iterative solves, tol 1e-12
    assert torch.allclose(filter_output(cap)[0], ref, rtol=tol, atol=tol)
    # the frozen map's dense B_k(A_hat) (I as the signal) against the same reference
    terms = basis_terms(None, torch.eye(16, dtype=torch.float64), len(block.filter_weights()),
                        name, cap.basis_params, dense=A)
    ws = [w.detach() for w in block.filter_weights()]
    assert torch.allclose(sum(t @ Z @ w for t, w in zip(terms, ws)), ref, rtol=1e-10,
                          atol=1e-10)


@pytest.mark.parametrize("name,affinity", CASES)
def test_frozen_norms_match_dense_jacobian(name, affinity):
    block = _block(name, affinity, C=4)
    x = _x(4, seed=2)
    cap = capture(block, x, progress=False)["(root)"]
    fn, x0 = block_function(cap, 0)
    J_fix = _dense(frozen_function(fn, x0), x0)
    ref = _power_norms(J_fix, 3)
    st = linearized_stability(cap, n_max=3, exact="matrix-free", tol=TOL)
    assert st.converged and _rel(st.growth, ref) < RTOL, (st.growth, ref)
    assert st.norm == pytest.approx(ref[0], rel=RTOL)
    for limit in (2048, 0):                    # dense B_k(A_hat), and structured + vjp adjoint
        fz = frozen_norms(cap, 3, tol=TOL, dense_limit=limit)
        assert fz.converged and _rel(fz.growth, ref) < RTOL, (limit, fz.growth, ref)
    if affinity == "snl":                      # symmetric: the eigenbasis is exact too
        eig = linearized_stability(cap, n_max=3)
        assert "eigenbasis" in eig.how and _rel(eig.growth, ref) < RTOL
    M = FrozenMap(cap)
    X = torch.randn(16, 4, dtype=torch.float64)
    assert torch.allclose(M(X), (J_fix @ X.T.reshape(-1)).reshape(4, 16).T, atol=1e-10)


@pytest.mark.parametrize("Cs", [4, 2])        # 2 C_s >= C (formed maps) and < C (low rank)
@pytest.mark.parametrize("name,affinity", CASES)
def test_damping_matches_dense_hermitian_parts(name, affinity, Cs):
    block = _block(name, affinity, C=8, Cs=Cs)
    cap = capture(block, _x(8, seed=3), progress=False)["(root)"]
    d = damping(cap)
    G, s = _g_scale(block)
    K = np.einsum("ci,nio->nco", G, _ref_response(block, 1 - d.frequencies)) * s
    ev = np.linalg.eigvalsh((K + np.conj(np.swapaxes(K, 1, 2))) / 2)
    assert np.allclose(d.min_eig, ev.min(1), atol=1e-10)
    assert np.allclose(d.max_eig, ev.max(1), atol=1e-10)
    assert np.allclose(d.negative_mass, np.where(ev < 0, -ev, 0).sum(1), atol=1e-10)


def test_rational_capture_without_params_says_what_is_missing():
    cap = Capture("b", "block", "toy", DenseAffinity(torch.rand(1, 3, 3)), "rw",
                  spec=make_block("arma", 4).spec, z=torch.randn(1, 3, 2),
                  weights=[torch.randn(2, 4), torch.randn(2, 4)], n_samples=1)
    with pytest.raises(ValueError, match="poles"):
        filter_output(cap)
    with pytest.raises(ValueError, match="poles"):
        frequency_response(cap.weights, [0.5], basis="arma")
    cap.basis_params = {"poles": torch.tensor([0.5])}
    assert filter_output(cap).shape == (1, 3, 4)
    assert np.isfinite(affinity_sensitivity(cap, n_draws=1)["gain"])
    moved = cap.to("cpu")
    assert moved.basis_params is not cap.basis_params and moved.order == 1


def test_saved_and_reloaded_cayley_model_analyses_ok(tmp_path):
    from analysis.cli import main
    from analysis.report import analyse_loaded, load_for_analysis
    from graphfilters.blocks import GraphFilterNonlocal
    from graphfilters.data import get_dataset
    from graphfilters.models import PreResNet
    from graphfilters.training import save_checkpoint

    data = get_dataset({"name": "long_range", "n_train": 8, "n_test": 4, "size": 8})
    model = PreResNet(depth=8, width=4, in_channels=data.in_channels,
                      num_classes=data.num_classes, block="cayley", block_positions=(1,))
    blocks = [m for m in model.modules() if isinstance(m, GraphFilterNonlocal)]
    assert blocks
    for b in blocks:
        randomize(b, 4)
    zoom = blocks[0].filter_parameters()["zoom"].detach().clone()
    path = save_checkpoint(tmp_path / "cayley.pt", model, history=[], data=data.describe())
    loaded = load_for_analysis(path, device="cpu", samples=4)
    table = analyse_loaded(loaded, max_samples=2, progress=False)
    rows = [r for r in table if r.block == "cayley"]
    assert rows and all(r.status == "ok" for r in rows), [r.reason for r in rows]
    cap = table.captures[rows[0].path]
    assert torch.equal(cap.basis_params["zoom"], zoom) and zoom != 1.0
    # the command line's analyze on the same file
    out = tmp_path / "t.json"
    assert main(["analyze", str(path), "--samples", "4", "--device", "cpu", "--spectrum-samples",
                 "2", "--json", str(out)]) == 0
    recs = [r for r in json.loads(out.read_text()) if r["block"] == "cayley"]
    assert recs and all(r["status"] == "ok" for r in recs), recs


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name,affinity", CASES)
def test_analyze_rational_block_on_a_gpu(name, affinity):
    model = nn.Sequential(nn.Conv2d(3, 6, 1), _block(name, affinity)).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ref = analyze(model, x, progress=False)[0]
    table = analyze(model.cuda(), x.cuda(), progress=False)
    row = table[0]
    assert row.status == "ok", row.reason
    assert table.captures[row.path].basis_params is not None
    assert all(v.device.type == "cpu" for v in table.captures[row.path].basis_params.values())
    for field in ("response_high", "damping_mass"):              # closed forms
        assert getattr(row, field) == pytest.approx(getattr(ref, field), rel=1e-6), field
    # matrix-free for softmax affinities: certified to analyze's tol (1e-3)
    assert row.stability_norm == pytest.approx(ref.stability_norm, rel=2e-3)
