"""Spectra and affinity metrics: structured = dense, matrix-free extremes, densities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphfilters.graph import SoftmaxAffinity


def test_softmax_cpu_matmul_does_not_form_the_matrix(monkeypatch):
    """Core fix: on the CPU SoftmaxAffinity.matmul uses row chunks, not SDPA (which forms
    the N x M matrix there)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 70, 3, generator=g), torch.randn(2, 70, 3, generator=g)
    z = torch.randn(2, 70, 4, generator=g)
    aff = SoftmaxAffinity(q, k, scale=0.5, chunk_size=16)
    expected = aff.dense() @ z

    def boom(*args, **kwargs):
        raise AssertionError("SDPA called on the CPU")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", boom)
    out = aff.matmul(z)
    assert torch.allclose(out, expected, atol=1e-6)
    assert np.allclose(SoftmaxAffinity(q.numpy(), k.numpy(), 0.5).matmul(z.numpy()),
                       expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="N = 70"):
        aff.matmul(torch.zeros(2, 71, 1))
