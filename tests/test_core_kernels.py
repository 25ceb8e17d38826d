"""Affinity kernels against their direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphfilters import kernels
from graphfilters.graph import DenseAffinity, LowRankAffinity, SoftmaxAffinity
from graphfilters.specs import KERNEL_NAMES


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@pytest.fixture
def emb(rng):
    return rng.standard_normal((2, 3, 20, 4))  # theta, phi with batch 3


def test_embedded_gaussian(emb):
    theta, phi = emb
    ref = _softmax(theta @ np.swapaxes(phi, -1, -2))
    aff = kernels.embedded_gaussian(theta, phi)
    assert isinstance(aff, SoftmaxAffinity) and np.allclose(aff.dense(), ref)
    scaled = kernels.embedded_gaussian(theta, phi, scale="sqrt").dense()
    assert np.allclose(scaled, _softmax(theta @ np.swapaxes(phi, -1, -2) / 2))


def test_dot_and_relu_dot(emb):
    theta, phi = emb
    assert np.allclose(kernels.dot_product(theta, phi).dense(), theta @ np.swapaxes(phi, -1, -2))
    aff = kernels.relu_dot(theta, phi)
    M = np.maximum(theta, 0) @ np.swapaxes(np.maximum(phi, 0), -1, -2)
    assert isinstance(aff, LowRankAffinity) and np.allclose(aff.dense(), M)
    assert np.allclose(aff.symmetrized().dense(), (M + np.swapaxes(M, -1, -2)) / 2)
    assert (aff.symmetrized().degrees() >= 0).all()


def test_gaussian_and_concatenation(rng, emb):
    theta, phi = emb
    assert np.allclose(kernels.gaussian(theta).dense(),
                       _softmax(theta @ np.swapaxes(theta, -1, -2)))
    wt, wp = rng.standard_normal((2, 4))
    aff = kernels.concatenation(theta, phi, wt, wp)
    ref = np.maximum((theta @ wt)[..., :, None] + (phi @ wp)[..., None, :], 0)
    assert isinstance(aff, DenseAffinity) and np.allclose(aff.dense(), ref)
    sub = kernels.concatenation(theta, phi[:, :5], wt, wp)  # sub-sampled keys
    assert sub.shape == (3, 20, 5)


@pytest.mark.parametrize("beta", [None, float(np.exp(-2 * 0.5))])
def test_taylor_rbf_converges(rng, beta):
    t, p = rng.uniform(-1, 1, (2, 2, 30))
    if beta is None:
        target = np.exp(-0.5 * (t[..., :, None] - p[..., None, :]) ** 2)
    else:
        target = beta * np.exp(2 * 0.5 * t[..., :, None] * p[..., None, :])
    errs = [np.abs(kernels.taylor_rbf(t, p, order=o, gamma=0.5, beta=beta).dense() - target).max()
            for o in (0, 2, 4, 8, 12)]
    assert all(b < a for a, b in zip(errs, errs[1:])) and errs[-1] < 1e-10
    assert kernels.taylor_rbf(t, p, order=3).P.shape == (2, 30, 4)  # rank order + 1


def test_double_attention(rng):
    g, d = rng.standard_normal((2, 2, 25, 3))
    aff = kernels.double_attention(g, d)
    ref = _softmax(d, -1) @ np.swapaxes(_softmax(g, -2), -1, -2)
    assert np.allclose(aff.dense(), ref)
    assert np.allclose(ref.sum(-1), 1) and aff.row_stochastic
    Z = rng.standard_normal((2, 25, 2))
    assert np.allclose(aff.normalized("rw")(Z), ref @ Z)
    assert np.linalg.matrix_rank(ref[0]) <= 3


@pytest.mark.parametrize("name", ["embedded_gaussian", "dot_product", "relu_dot"])
def test_torch_matches_numpy_and_differentiates(emb, name):
    theta, phi = emb
    tt = torch.tensor(theta, requires_grad=True)
    tp = torch.tensor(phi)
    aff = kernels.get_kernel(name)(tt, tp)
    Z = torch.randn(3, 20, 2, dtype=torch.float64)
    out = aff.matmul(Z)
    assert np.allclose(out.detach().numpy(), kernels.get_kernel(name)(theta, phi).matmul(Z.numpy()))
    out.sum().backward()
    assert torch.isfinite(tt.grad).all()


def test_every_structured_kernel_is_registered():
    # criss_cross and disentangled live with the blocks (they need the spatial layout)
    assert set(kernels.KERNELS) <= set(KERNEL_NAMES)


def test_bad_inputs(rng):
    with pytest.raises(ValueError, match="get_kernel: name must be one of .*relu_dot"):
        kernels.get_kernel("softmax")
    with pytest.raises(ValueError, match="same C"):
        kernels.relu_dot(np.ones((5, 3)), np.ones((5, 4)))
    with pytest.raises(ValueError, match="scale"):
        kernels.embedded_gaussian(np.ones((5, 3)), np.ones((5, 3)), scale="log")
    with pytest.raises(ValueError, match="NaN or Inf"):
        kernels.embedded_gaussian(np.full((5, 3), np.nan), np.ones((5, 3)))
    with pytest.raises(ValueError, match="taylor_rbf: order must be an integer in"):
        kernels.taylor_rbf(np.ones(4), np.ones(4), order=-1)
    with pytest.raises(ValueError, match="shape"):
        kernels.concatenation(np.ones((5, 3)), np.ones((5, 3)), np.ones(2), np.ones(3))
