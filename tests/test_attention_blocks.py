"""Attention-era blocks (issue 22): equal to their original-form references, identity at init."""

from __future__ import annotations

import math

import pytest
import torch

from graphfilters.blocks import ATTENTION_CLASSES, KNOWN_BLOCKS, make_block
from graphfilters.blocks import attnscale as attnscale_module
from graphfilters.blocks.attnscale import AttnScale
from graphfilters.blocks.diffattn import DiffAttention
from graphfilters.blocks.efficient import EfficientAttention
from graphfilters.blocks.gfsa import GFSA
from graphfilters.blocks.reference import (
    AttnScaleRef,
    DiffAttentionRef,
    EfficientAttentionRef,
    GFSARef,
)
from graphfilters.specs import ATTENTION_BLOCK_NAMES

SHAPES = {1: (2, 6, 5), 2: (2, 6, 3, 2), 3: (2, 6, 2, 2, 2)}

#: table name -> (block class, original-form reference for ``dim``)
CASES = {
    "gfsa": (GFSA, lambda dim: GFSARef(6, heads=2, inter_channels=4, dim=dim, K=4)),
    "attnscale": (AttnScale, lambda dim: AttnScaleRef(6, heads=2, inter_channels=4, dim=dim)),
    "diffattn": (DiffAttention,
                 lambda dim: DiffAttentionRef(6, heads=2, inter_channels=4, dim=dim, depth=3)),
    "efficient": (EfficientAttention,
                  lambda dim: EfficientAttentionRef(6, heads=2, inter_channels=4, dim=dim)),
}


def _random_ref(name, dim, seed=0):
    torch.manual_seed(seed)
    ref = CASES[name][1](dim).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.7)
    return ref


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_block_equals_reference(name, dim):
    x = torch.randn(SHAPES[dim], dtype=torch.float64)
    for train in (True, False):
        ref = _random_ref(name, dim).train(train)
        block = CASES[name][0].from_reference(ref)
        y_ref = ref(x)
        assert not torch.allclose(y_ref, x)
        for mat in (False, True):
            torch.testing.assert_close(block(x, materialize=mat), y_ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_identity_at_init_and_gradcheck(name):
    block = make_block(name, 6, heads=2, inter_channels=4, dim=2)
    x = torch.randn(SHAPES[2])
    assert torch.equal(block(x), x)
    block = CASES[name][0].from_reference(_random_ref(name, 1)).eval()
    x = torch.randn(SHAPES[1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))
    coefficients = [p for p in block.coefficients().values() if p.requires_grad]
    if not block.spec.coefficients:                 # efficient attention: none to learn
        assert not coefficients
        return
    assert coefficients, "the learned scalars must receive gradients"
    y = block(x.detach())
    grads = torch.autograd.grad(y.square().sum(), coefficients)
    assert all(g.abs().sum() > 0 for g in grads)


def test_attnscale_structured_path_never_forms_the_affinity(monkeypatch):
    """AttnScale's structured path: A V through SDPA and the DC part as the mean over tokens."""
    block = AttnScale.from_reference(_random_ref("attnscale", 2)).eval()
    x = torch.randn(SHAPES[2], dtype=torch.float64)
    expected = block(x, materialize=True)

    def refuse(*args, **kwargs):
        raise AssertionError("the structured path formed the N x N affinity")

    monkeypatch.setattr(attnscale_module, "softmax_affinity", refuse)
    torch.testing.assert_close(block(x), expected, atol=1e-12, rtol=0)


def test_attnscale_operator_keeps_the_dc_and_rescales_the_rest():
    block = AttnScale.from_reference(_random_ref("attnscale", 1)).eval()
    x = torch.randn(SHAPES[1], dtype=torch.float64)
    op = block.operator(x)                                    # (B, H, N, N)
    n = op.shape[-1]
    ones = torch.ones(n, dtype=op.dtype)
    torch.testing.assert_close(op @ ones, ones.expand(op.shape[:-1]), atol=1e-12, rtol=0)
    a = block.affinities(x)[:, 0]
    lam = block.lambda_h[:, None, None]
    torch.testing.assert_close(op, (1 + lam) * a - lam / n, atol=1e-12, rtol=0)


def test_every_attention_block_is_made_by_name():
    assert tuple(ATTENTION_CLASSES) == ATTENTION_BLOCK_NAMES
    assert KNOWN_BLOCKS[-len(ATTENTION_BLOCK_NAMES):] == ATTENTION_BLOCK_NAMES
    for name in ATTENTION_BLOCK_NAMES:
        for dim, shape in SHAPES.items():
            block = make_block(name, 6, dim=dim, heads=2, inter_channels=4)
            assert block.spec.name == name and block.dim == dim
            x = torch.randn(shape)
            assert torch.equal(block(x), x)
    with pytest.raises(ValueError, match="known blocks: nl, .*gfsa, attnscale"):
        make_block("transformer", 6)
    with pytest.raises(ValueError, match="not a unit of a nonlocal stage"):
        make_block("attnscale", 6, n_units=2)


@pytest.mark.parametrize("name", ATTENTION_BLOCK_NAMES)
@pytest.mark.parametrize("kwargs, error, match", [
    ({"heads": 0}, ValueError, "heads must be an integer >= 1"),
    ({"heads": 3, "inter_channels": 4}, ValueError, "heads=3 must divide"),
    ({"dim": 4}, ValueError, "dim must be one of"),
    ({"bias": "yes"}, TypeError, "bias must be a bool"),
    ({"inter_channels": 2.5}, TypeError, "inter_channels must be"),
])
def test_bad_arguments_are_clear_errors(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_block(name, 6, **{"heads": 2, **kwargs})


def test_bad_input_is_a_clear_error():
    block = make_block("attnscale", 6, heads=2, inter_channels=4, dim=2)
    with pytest.raises(ValueError, match="expects input"):
        block(torch.randn(2, 6, 5))
    with pytest.raises(ValueError, match="input channels"):
        block(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="K must be"):
        GFSA(6, heads=2, K=0.5)


def test_efficient_affinity_is_row_stochastic_low_rank_and_the_references():
    """A = rho_q(Q) rho_k(K)^T: rows sum to 1, rank <= d, equal to the released code's map."""
    ref = _random_ref("efficient", 1)
    block = EfficientAttention.from_reference(ref).eval()
    x = torch.randn(SHAPES[1], dtype=torch.float64)            # N = 5 tokens, d = 2 per head
    op = block.operator(x)                                    # (B, H, N, N)
    torch.testing.assert_close(op.sum(-1), torch.ones(op.shape[:-1], dtype=op.dtype),
                               atol=1e-12, rtol=0)
    assert int(torch.linalg.matrix_rank(op).max()) <= 2
    t = x.flatten(2).transpose(1, 2)
    q, k, _ = (u.transpose(1, 2) for u in ref.qkv(t).chunk(3, -1))
    for h in range(2):
        key = torch.softmax(k[:, 2 * h:2 * h + 2], dim=2)
        query = torch.softmax(q[:, 2 * h:2 * h + 2], dim=1)
        torch.testing.assert_close(op[:, h], query.transpose(1, 2) @ key, atol=1e-12, rtol=0)


def test_diffattn_operator_is_a_difference_of_two_softmax_graphs():
    block = DiffAttention.from_reference(_random_ref("diffattn", 2)).eval()
    x = torch.randn(SHAPES[2], dtype=torch.float64)
    a = block.affinities(x)                                   # (B, 2, H, N, N)
    lam = block.lambda_full()
    torch.testing.assert_close(block.operator(x), a[:, 0] - lam * a[:, 1], atol=1e-12, rtol=0)
    torch.testing.assert_close(block.operator(x).sum(-1),
                               (1 - lam).expand(a.shape[0], a.shape[2], a.shape[3]),
                               atol=1e-12, rtol=0)
    assert block.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.6))


def test_efficient_forward_saves_no_n_by_n_tensor():
    """Efficient attention's forward keeps no N x N tensor for the backward (every saved
    tensor is recorded with ``saved_tensors_hooks``; AttnScale and DiffAttention go through
    SDPA, whose CPU math path does); the output equals the dense ``materialize=True`` path."""
    block = EfficientAttention.from_reference(_random_ref("efficient", 1)).eval()
    n = 40
    x = torch.randn(2, 6, n, dtype=torch.float64, requires_grad=True)
    expected = block(x, materialize=True)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = block(x)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)
    assert shapes and not any(s[-2:] == (n, n) for s in shapes), shapes
