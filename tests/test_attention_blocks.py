"""Attention-era blocks (issue 22): equal to their original-form references, identity at init."""

from __future__ import annotations

import pytest
import torch

from graphfilters.blocks.gfsa import GFSA
from graphfilters.blocks.reference import GFSARef

SHAPES = {1: (2, 6, 5), 2: (2, 6, 3, 2), 3: (2, 6, 2, 2, 2)}


def _random_ref(dim, seed=0):
    torch.manual_seed(seed)
    ref = GFSARef(6, heads=2, inter_channels=4, dim=dim, K=4).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.7)
    return ref


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_gfsa_equals_reference(dim):
    x = torch.randn(SHAPES[dim], dtype=torch.float64)
    for train in (True, False):
        for mat in (False, True):
            ref = _random_ref(dim).train(train)
            block = GFSA.from_reference(ref)
            y_ref = ref(x)
            assert not torch.allclose(y_ref, x)
            torch.testing.assert_close(block(x, materialize=mat), y_ref, atol=1e-10, rtol=0)


def test_gfsa_identity_at_init_and_gradcheck():
    block = GFSA(6, heads=2, inter_channels=4, dim=2)
    x = torch.randn(SHAPES[2])
    assert torch.equal(block(x), x)
    block = GFSA.from_reference(_random_ref(1)).eval()
    x = torch.randn(SHAPES[1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))
