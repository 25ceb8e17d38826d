"""Structured fast paths, the criss-cross/disentangled kernels, official SNL checkpoints, errors,
and the GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from graphfilters import kernels
from graphfilters.blocks import (
    SNL,
    CrissCross,
    DisentangledNonLocal,
    GraphFilterNonlocal,
    NonLocal,
    NonlocalStage,
    make_block,
)
from graphfilters.blocks import reference as R
from graphfilters.criss_cross import CrissCrossAffinity, criss_cross
from graphfilters.graph import LowRankAffinity, SumAffinity
from graphfilters.specs import BLOCK_NAMES
from tests.test_blocks import randomize

C = 8
TOL = {"atol": 1e-10, "rtol": 0.0}


# ------------------------------------------------------------------------------------------
# kernels added by the blocks work


@pytest.mark.parametrize("spatial", [(7,), (3, 5), (2, 3, 4), (1, 4), (4, 1)])
def test_criss_cross_affinity_matches_masked_softmax(spatial):
    n = int(np.prod(spatial))
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, n, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, n, 3, generator=gen, dtype=torch.float64)
    z = torch.randn(2, n, 4, generator=gen, dtype=torch.float64)
    aff = criss_cross(q, k, spatial, scale=0.7)
    mask = R._criss_cross_mask(spatial, q.device)
    dense_ref = torch.softmax((0.7 * q @ k.transpose(1, 2)).masked_fill(~mask, -np.inf), -1)
    torch.testing.assert_close(aff.dense(), dense_ref, **TOL)
    torch.testing.assert_close(aff.matmul(z), dense_ref @ z, **TOL)
    torch.testing.assert_close(aff.degrees(), torch.ones(2, n, dtype=torch.float64), **TOL)
    expected_nnz = sum(spatial) - len(spatial) + 1
    assert ((aff.dense()[0] > 0).sum(-1) == expected_nnz).all()
    # gradients of the structured product equal those of the dense one
    g1 = torch.autograd.grad(aff.matmul(z).sum(), q)[0]
    g2 = torch.autograd.grad((dense_ref @ z).sum(), q)[0]
    torch.testing.assert_close(g1, g2, **TOL)
    # numpy backend, detach/select and the scipy operator of the analysis layer
    npa = aff.numpy()
    np.testing.assert_allclose(npa.matmul(z.numpy()), (dense_ref @ z).detach().numpy(),
                               atol=1e-12)
    lin = aff.as_linear_operator(index=1)
    np.testing.assert_allclose(lin @ z[1, :, 0].numpy(), (dense_ref[1] @ z[1, :, 0]).detach(),
                               atol=1e-12)
    assert aff.detach().query.requires_grad is False and aff.select(0).shape == (n, n)
    assert isinstance(kernels.get_kernel("criss_cross")(q, k, spatial), CrissCrossAffinity)


def test_criss_cross_bad_inputs():
    q = torch.randn(1, 6, 2)
    with pytest.raises(ValueError, match="prod"):
        CrissCrossAffinity(q, q, (2, 2))
    with pytest.raises(ValueError, match="positive"):
        CrissCrossAffinity(q, q, (0, 6))
    with pytest.raises(ValueError, match="N = 6"):
        criss_cross(q, q, (2, 3)).matmul(torch.randn(1, 5, 2))


def test_disentangled_kernel():
    rng = np.random.default_rng(0)
    t, p = rng.standard_normal((2, 2, 6, 3))
    u = rng.standard_normal((2, 6))
    aff = kernels.disentangled(t, p, u, scale=0.5)
    assert isinstance(aff, SumAffinity)
    tc, pc = t - t.mean(-2, keepdims=True), p - p.mean(-2, keepdims=True)
    e = 0.5 * tc @ np.swapaxes(pc, -1, -2)
    pair = np.exp(e - e.max(-1, keepdims=True))
    pair /= pair.sum(-1, keepdims=True)
    s = np.exp(u) / np.exp(u).sum(-1, keepdims=True)
    expected = pair + s[:, None, :]
    np.testing.assert_allclose(aff.dense(), expected, atol=1e-12)
    np.testing.assert_allclose(aff.degrees(), 2.0, atol=1e-12)
    torch_aff = kernels.disentangled(*(torch.as_tensor(a) for a in (t, p, u[..., None])), 0.5)
    np.testing.assert_allclose(torch_aff.dense().numpy(), expected, atol=1e-12)
    with pytest.raises(ValueError, match="one logit per key"):
        kernels.disentangled(t, p, u[:, :5])
    with pytest.raises(ValueError, match="sub-sampling"):
        kernels.disentangled(t, p[:, :4], u)


def test_low_rank_affinity_with_sub_sampled_keys():
    """Core fix: LowRankAffinity(P (N, r), Q (M, r)) is an N x M affinity (NL dot product
    with sub-sampled keys)."""
    rng = np.random.default_rng(1)
    P, Q, Z = rng.standard_normal((7, 2)), rng.standard_normal((3, 2)), rng.standard_normal((3, 4))
    aff = LowRankAffinity(P, Q)
    assert aff.shape == (7, 3) and aff.n_cols == 3
    np.testing.assert_allclose(aff.matmul(Z), P @ Q.T @ Z, atol=1e-12)
    np.testing.assert_allclose(aff.normalized("size")(Z), P @ Q.T @ Z / 3, atol=1e-12)
    with pytest.raises(ValueError, match="square"):
        aff.symmetrized()
    with pytest.raises(ValueError, match="same shape"):
        LowRankAffinity(P, Q, symmetric=True)
    with pytest.raises(ValueError, match="same shape"):
        LowRankAffinity(P, rng.standard_normal((3, 5)))


@pytest.mark.parametrize("widths", [(3, 5), (5, 2), (4, 4)])
def test_softmax_affinity_fused_path_under_autograd(widths):
    """Core fix: under autograd SoftmaxAffinity.matmul uses SDPA's fused kernel (4-D,
    zero-padded to equal widths, contiguous), equal to the dense softmax with gradients."""
    from graphfilters.graph import SoftmaxAffinity

    dq, dv = widths
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 20, dq, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 30, dq, generator=gen, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 3, 30, dv, generator=gen, dtype=torch.float64, requires_grad=True)
    aff = SoftmaxAffinity(q, k.transpose(-1, -2).contiguous().transpose(-1, -2), scale=0.3)
    fast = aff.matmul(z)
    dense = aff.dense() @ z
    torch.testing.assert_close(fast, dense, **TOL)
    w = torch.randn_like(fast)
    g1 = torch.autograd.grad((fast * w).sum(), (q, k, z))
    g2 = torch.autograd.grad((dense * w).sum(), (q, k, z))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **TOL)


# ------------------------------------------------------------------------------------------
# structured paths never form N x N


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor produced by any aten op (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


def _largest_tensor(block, x, **kwargs):
    x = x.clone().requires_grad_(True)
    with _LargestTensor() as mode:
        y = block(x, **kwargs)
        y.square().sum().backward()
    return mode.largest, mode.op


def test_detector_sees_dense_forward_and_backward():
    """Positive control: the materialized path does build N x N tensors and we see them."""
    block = randomize(SNL(C))
    x = torch.randn(1, C, 8, 8)
    largest, _ = _largest_tensor(block, x, materialize=True)
    assert largest >= 64 * 64


@pytest.mark.parametrize("name", ["snl", "gsnl", "gsnl_stable", "a2", "cgnl", "cc", "nl", "dnl"])
def test_structured_path_never_builds_n_by_n(name):
    """N = 128 x 128 = 16384: an N x N float32 tensor would be 1 GiB; nothing above O(N C)
    may appear in forward or backward (aten level, so every internal op is seen)."""
    torch.manual_seed(0)
    block = randomize(make_block(name, C), seed=1)
    n = 128 * 128 if name in ("snl", "gsnl", "gsnl_stable", "a2") else 48 * 48
    side = int(n**0.5)
    x = torch.randn(1, C, side, side)
    largest, op = _largest_tensor(block, x)
    limit = {"cgnl": 64 * n, "cc": 2 * side * n}.get(name, 16 * n)
    assert largest <= limit < n * n, (largest, op)


# ------------------------------------------------------------------------------------------
# official SNL checkpoints


def _official(dim=2, **kw):
    return randomize(R.OfficialSNL(C, dim=dim, **kw), seed=4).double()


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_from_official_state_dict_round_trip(dim):
    official = _official(dim)
    sd = official.state_dict()
    block = SNL.from_official_state_dict(sd)
    assert block.relu_after_norm and block.inter_channels == C // 2 and block.dim == dim
    assert block.g.weight.dtype == torch.float64
    x = torch.randn((2, C) + (4,) * dim, dtype=torch.float64)
    for train in (True, False):
        official.train(train)
        block.train(train)
        torch.testing.assert_close(block(x), official(x), **TOL)
    # the loaded state dict is identical after a round trip
    torch.testing.assert_close(block.norm.running_mean, official.stages[0].bn.running_mean, **TOL)


def test_from_official_state_dict_prefix_and_segmentation_head():
    official = _official(relu=False, sign=-1).eval()
    sd = {f"module.layer1.2.{k}": v for k, v in official.state_dict().items()}
    sd["fc.weight"] = torch.zeros(3, 3)            # other keys of a model checkpoint
    block = SNL.from_official_state_dict(sd, prefix="module.layer1.2.", relu_after_norm=False,
                                         sign=-1).eval()
    x = torch.randn(2, C, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(block(x), official(x), **TOL)


def test_from_official_stage_state_dict():
    official = randomize(R.OfficialSNLStage(C, n_units=3), seed=8).double().eval()
    stage = NonlocalStage.from_official_snl_state_dict(official.state_dict())
    assert stage.n_units == 3 and stage.spec.name == "snl"
    x = torch.randn(2, C, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(stage.eval()(x), official(x), **TOL)
    sd = official.state_dict()
    del sd["stages.1.w_2.weight"]
    with pytest.raises(ValueError, match=r"missing keys \['stages.1.w_2.weight'\]"):
        NonlocalStage.from_official_snl_state_dict(sd)


def test_official_state_dict_errors():
    sd = _official().state_dict()
    bad = dict(sd)
    del bad["stages.0.w_2.weight"]
    with pytest.raises(ValueError, match=r"missing keys \['stages.0.w_2.weight'\]"):
        SNL.from_official_state_dict(bad)
    bad = dict(sd)
    bad["stages.0.w_1.weight"] = torch.zeros(C, C // 2 + 1, 1, 1)
    with pytest.raises(ValueError, match=r"misshaped keys \[stages.0.w_1.weight: got "
                                         r"\(8, 5, 1, 1\), "
                                         r"expected \(8, 4, 1, 1\)\]"):
        SNL.from_official_state_dict(bad)
    bad = dict(sd)
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]"):
        SNL.from_official_state_dict(bad)
    with pytest.raises(ValueError, match="pass prefix="):
        SNL.from_official_state_dict({"model.t.weight": sd["t.weight"]})
    with pytest.raises(ValueError, match="1x1 convolution"):
        SNL.from_official_state_dict({**sd, "stages.0.g.weight": torch.zeros(4, 8, 3, 3)})
    with pytest.raises(TypeError, match="mapping"):
        SNL.from_official_state_dict([("t.weight", sd["t.weight"])])
    three = randomize(R.OfficialSNLStage(C, n_units=3), seed=9).state_dict()
    with pytest.raises(ValueError, match="has 3 units.*from_official_snl_state_dict"):
        SNL.from_official_state_dict(three)
    ok = dict(sd)
    del ok["stages.0.bn.num_batches_tracked"]          # older checkpoints lack it
    SNL.from_official_state_dict(ok)


# ------------------------------------------------------------------------------------------
# clear errors


def test_input_errors():
    block = make_block("snl", C)
    with pytest.raises(ValueError, match=r"dim=2.*build the block with dim=1"):
        block(torch.randn(2, C, 5))
    with pytest.raises(ValueError, match="in_channels=6"):
        block(torch.randn(2, 6, 4, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        block(np.zeros((2, C, 4, 4)))
    with pytest.raises(TypeError, match="floating-point"):
        block(torch.zeros(2, C, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="Affinity"):
        block(torch.randn(2, C, 4, 4), affinity=torch.eye(16))


def test_non_finite_input_is_reported():
    x = torch.randn(2, C, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        make_block("snl", C)(x)


def test_construction_errors():
    with pytest.raises(ValueError, match="order must be an integer >= 0"):
        GraphFilterNonlocal(C, order=-1)
    with pytest.raises(TypeError, match="order must be an integer >= 0"):
        make_block("snl", C, order=1.5)
    with pytest.raises(ValueError, match="unknown kernel 'rbf'"):
        GraphFilterNonlocal(C, kernel="rbf")
    with pytest.raises(ValueError, match="known blocks: nl, ns, a2"):
        make_block("transformer", C)
    with pytest.raises(ValueError, match="only 'nl' has modes"):
        make_block("snl", C, mode="gaussian")
    with pytest.raises(ValueError, match="NonLocal: mode must be one of"):
        make_block("nl", C, mode="cosine")
    with pytest.raises(ValueError, match="kernel option"):
        GraphFilterNonlocal(C, kernel_options={"temperature": 2})
    with pytest.raises(ValueError, match="sub_sample=True is only"):
        make_block("snl", C, sub_sample=True)
    with pytest.raises(ValueError, match="order-1 filter with W_0 = 0"):
        NonLocal(C, sub_sample=True, order=2)
    with pytest.raises(ValueError, match=r"out_norm must be one of \['batch', 'gamma', 'none'\]"):
        make_block("snl", C, out_norm="layer")
    with pytest.raises(ValueError, match=r"sign must be one of \[1, -1\]"):
        make_block("snl", C, sign=0)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        make_block("cgnl", C, groups=3)
    with pytest.raises(ValueError, match=r"dim must be one of \[1, 2, 3\]"):
        make_block("snl", C, dim=4)
    with pytest.raises(ValueError, match="in_channels must be an integer >= 1"):
        make_block("snl", 0)
    with pytest.raises(ValueError, match="n_units must be"):
        make_block("snl", C, n_units=0)
    with pytest.raises(ValueError, match="keeps all 8 channels"):
        CrissCross(C, inter_channels=4)
    with pytest.raises(ValueError, match="temperature"):
        DisentangledNonLocal(C, temperature=0)
    with pytest.raises(ValueError, match="needs inter_channels == in_channels"):
        GraphFilterNonlocal(C, 4, out_projection=False)
    with pytest.raises(TypeError, match="fixes its spec"):
        SNL(C, spec="nl")
    with pytest.raises(TypeError, match="name must be a block name \\(str\\)"):
        make_block(3, C)


def test_every_table_name_is_built():
    for name in BLOCK_NAMES:
        block = make_block(name, C, dim=1)
        assert block.spec.name == name
        assert block(torch.randn(2, C, 6)).shape == (2, C, 6)


# ------------------------------------------------------------------------------------------
# GPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["snl", "gsnl", "nl", "cc", "a2", "cgnl", "dnl"])
def test_block_on_gpu_equals_cpu(name):
    block = randomize(make_block(name, C), seed=9).double()
    x = torch.randn(2, C, 6, 5, dtype=torch.float64)
    w = torch.randn_like(x)
    results = []
    for device in ("cpu", "cuda"):
        b = block.to(device)
        xi = x.to(device).requires_grad_(True)
        y = b(xi)
        (y * w.to(device)).sum().backward()
        results.append((y.detach().cpu(), xi.grad.cpu()))
        b.zero_grad(set_to_none=True)
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-9, rtol=0)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-9, rtol=0)
