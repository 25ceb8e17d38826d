"""The frozen-affinity Jacobian of attention run through ``Capture.call`` (layers of other
libraries): equal to a dense Jacobian of an independent implementation in which the attention
probabilities of the input are constants."""

import math

import pytest
import torch
from torch import nn

from analysis.capture import capture
from analysis.robustness import attention_held_fixed, block_function, frozen_function, jacobians
from analysis.stability.jacobian import affinity_path


def _reference(layer: nn.TransformerEncoderLayer, x0: torch.Tensor):
    """``t (1, C, N) -> `` the layer's attention residual branch with the softmax of ``x0``."""
    mha = layer.self_attn
    E, H = mha.embed_dim, mha.num_heads
    d = E // H
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)

    def heads(t):
        return t.reshape(t.shape[0], t.shape[1], H, d).transpose(1, 2)

    def attn_in(t):                                     # (1, N, C) -> what attention reads
        return layer.norm1(t) if layer.norm_first else t

    with torch.no_grad():
        h0 = attn_in(x0.transpose(1, 2))
        q, k = heads(h0 @ w_q.T + b_q), heads(h0 @ w_k.T + b_k)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)

    def f(t):
        xs = t.transpose(1, 2)
        v = heads(attn_in(xs) @ w_v.T + b_v)
        o = (probs @ v).transpose(1, 2).reshape(1, xs.shape[1], E)
        y = xs + mha.out_proj(o)
        y = y if layer.norm_first else layer.norm1(y)
        return y.transpose(1, 2)
    return f


@pytest.mark.parametrize("norm_first", [True, False])
def test_frozen_jacobian_of_a_transformer_layer_equals_dense_reference(norm_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                       norm_first=norm_first).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    cap = next(iter(capture(layer, x, progress=False).values()))
    fn, x0 = block_function(cap, 0)
    frozen = frozen_function(fn, x0)
    jac = torch.autograd.functional.jacobian
    got = jac(frozen, x0).reshape(x0.numel(), x0.numel())
    ref = jac(_reference(layer, x0), x0).reshape(x0.numel(), x0.numel())
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    full = jac(fn, x0).reshape(x0.numel(), x0.numel())
    assert (full - ref).abs().max() > 1e-3                # the affinity's part is not zero
    rep = jacobians(fn, x0, 1, residual=cap.residual, tol=1e-10, max_iter=200)
    norm = torch.linalg.matrix_norm(ref, 2).item()
    assert abs(rep.frozen.norm - norm) <= 1e-6 * norm
    assert abs(rep.full.norm - torch.linalg.matrix_norm(full, 2).item()) <= 1e-6 * norm


def test_attention_held_fixed_restores_the_functions():
    import torch.nn.functional as F

    before = (torch.softmax, F.softmax, torch.Tensor.softmax, F.scaled_dot_product_attention)
    with attention_held_fixed():
        q = torch.randn(1, 2, 4, 3, requires_grad=True)
        assert not torch.softmax(q, -1).requires_grad
        assert not q.softmax(-1).requires_grad
    assert (torch.softmax, F.softmax, torch.Tensor.softmax,
            F.scaled_dot_product_attention) == before
    assert torch.softmax(q, -1).requires_grad


def test_attention_held_fixed_affects_only_its_thread_and_nests():
    import threading

    inside, done = threading.Event(), threading.Event()
    seen = {}

    def other() -> None:                     # runs while the main thread is inside
        inside.wait(10)
        q = torch.randn(3, requires_grad=True)
        seen["softmax"] = torch.softmax(q, -1).requires_grad
        qq = torch.randn(1, 1, 3, 2, requires_grad=True)
        seen["sdpa"] = torch.nn.functional.scaled_dot_product_attention(qq, qq, qq).requires_grad
        done.set()

    t = threading.Thread(target=other)
    t.start()
    q = torch.randn(3, requires_grad=True)
    with attention_held_fixed():
        with attention_held_fixed():
            assert not torch.softmax(q, -1).requires_grad
        assert not torch.softmax(q, -1).requires_grad      # still inside the outer one
        inside.set()
        assert done.wait(10)
    t.join()
    assert seen == {"softmax": True, "sdpa": True}
    assert torch.softmax(q, -1).requires_grad


@pytest.mark.parametrize("case", ["bool_mask", "float_mask", "causal", "gqa"])
def test_held_sdpa_computes_what_sdpa_computes(case):
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    kv_heads = 2 if case == "gqa" else 4
    k = torch.randn(2, kv_heads, 5, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, kv_heads, 5, 3, generator=g, dtype=torch.float64)
    kw: dict = {}
    if case == "bool_mask":
        kw["attn_mask"] = torch.rand(5, 5, generator=g) > 0.3
        kw["attn_mask"][:, 0] = True                      # every query attends somewhere
    elif case == "float_mask":
        kw["attn_mask"] = torch.randn(5, 5, generator=g, dtype=torch.float64)
    elif case == "causal":
        kw["is_causal"] = True
    else:
        kw["enable_gqa"] = True
    ref = F.scaled_dot_product_attention(q, k, v, **kw)
    with attention_held_fixed():
        got = F.scaled_dot_product_attention(q, k, v, **kw)
    torch.testing.assert_close(got, ref.detach(), rtol=1e-12, atol=1e-12)
    assert not got.requires_grad                          # q enters only through the map


class _EagerAttention(nn.Module):
    """Someone else's attention: eager softmax, a residual, and optionally a gate that
    bypasses the attention (``x + sigmoid(W_g x) * Attn(x)``) or a second attention whose
    values are the first one's output (then a held value depends on a held affinity)."""

    def __init__(self, c: int, gate: bool = False, twice: bool = False) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(c, c) for _ in range(4))
        self.g = nn.Linear(c, c) if gate else None
        self.twice = twice

    def attend(self, h: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(h.shape[-1]), -1)
        return w @ self.v(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attend(x)
        if self.twice:
            a = self.attend(a)
        if self.g is not None:
            a = torch.sigmoid(self.g(x)) * a
        return x + self.o(a)


def _dense_parts(fn, x0):
    jac = torch.autograd.functional.jacobian
    n = x0.numel()
    return (jac(fn, x0).reshape(n, n), jac(frozen_function(fn, x0), x0).reshape(n, n))


@pytest.mark.parametrize("case", ["pre-LN", "post-LN", "eager", "gated", "twice"])
def test_affinity_path_is_the_difference_of_the_full_and_frozen_jacobians(case):
    # J_full - J_fix by one values-held function (minus the both-held one): equal to the
    # dense difference where no held value depends on a held affinity; where one does
    # (two attentions in a row) the identity fails and jacobians() differentiates the
    # difference itself: the share is right either way
    torch.manual_seed(0)
    if case.endswith("LN"):
        model = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                           norm_first=case == "pre-LN")
    else:
        model = _EagerAttention(6, gate=case == "gated", twice=case == "twice")
    model = model.double().eval()
    x = torch.randn(2, 5, model.q.in_features if case not in ("pre-LN", "post-LN") else 8,
                    dtype=torch.float64)
    cap = next(iter(capture(model, x, progress=False).values()))
    fn, x0 = block_function(cap, 0)
    J, J_fix = _dense_parts(fn, x0)
    g, b = affinity_path(fn, x0)
    jac = torch.autograd.functional.jacobian
    n = x0.numel()
    J_path = jac(g, x0).reshape(n, n) - jac(b, x0).reshape(n, n)
    exact = torch.allclose(J_path, J - J_fix, atol=1e-12, rtol=0)
    assert exact == (case != "twice")
    assert (J - J_fix).abs().max() > 1e-3                 # the affinity's part is not zero
    rep = jacobians(fn, x0, 1, residual=cap.residual, tol=1e-10, max_iter=300)
    eye = torch.eye(n, dtype=J.dtype)
    share = float(torch.linalg.matrix_norm(J - J_fix, 2)
                  / torch.linalg.matrix_norm(J_fix - eye, 2))
    assert rep.affinity_share == pytest.approx(share, rel=1e-6)
    assert rep.affinity_path == exact                    # one product where it is exact


def test_attention_held_fixed_holds_the_values_alone_or_with_the_affinity():
    import torch.nn.functional as F

    q, k, v = (torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    for affinity, grads in ((True, (False, False, True)), (False, (True, True, False))):
        with attention_held_fixed(affinity=affinity, values=not affinity):
            out = F.scaled_dot_product_attention(q, k, v)
        got = torch.autograd.grad(out.sum(), (q, k, v), allow_unused=True)
        assert tuple(g is not None and bool(g.abs().max() > 0) for g in got) == grads
    with attention_held_fixed(affinity=True, values=True):
        assert not F.scaled_dot_product_attention(q, k, v).requires_grad
        assert not torch.softmax(q, -1).requires_grad
    with attention_held_fixed(affinity=False, values=True):
        assert torch.softmax(q, -1).requires_grad           # the softmax stays live
