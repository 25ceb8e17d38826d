"""Attention found by watching the computation (analysis.observe), the recognizers' self-check
against what the model applied, and fault isolation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis import analyze, capture
from analysis.capture import SELF_CHECK_TOL, Capture
from analysis.observe import observe, sdpa_affinity
from analysis.registry import Recognizer, register_recognizer, unregister_recognizer
from graphfilters.graph import DenseAffinity


class BiasedAttention(nn.Module):
    """Single-head attention with a learned relative bias added to the logits (the kind of
    term a recognizer may ignore)."""

    def __init__(self, c: int = 6, n: int = 5) -> None:
        super().__init__()
        self.qkv = nn.Linear(c, 3 * c)
        self.out = nn.Linear(c, c)
        self.bias = nn.Parameter(torch.randn(n, n))

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, -1)
        return q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, v = self.logits(x)
        return self.out(torch.softmax(s + self.bias, -1) @ v)


def _bias_blind(ctx):
    """A recognizer that forgets the bias: a wrong capture on purpose."""
    m, x = ctx.module, ctx.args[0]
    s, v = m.logits(x)
    A = torch.softmax(s, -1)
    W = m.out.weight.detach().T
    return Capture("", "", "", DenseAffinity(A), "rw", z=v, weights=[torch.zeros_like(W), W],
                   spatial_shape=(x.shape[1],), input=x.transpose(1, 2), residual=False,
                   call=lambda t: m(t.transpose(1, 2)).transpose(1, 2))


def _reference(m: BiasedAttention, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        s, _ = m.logits(x)
        return torch.softmax(s + m.bias, -1)


def test_a_recognizer_that_ignores_a_bias_is_replaced_by_the_observed_capture():
    m = BiasedAttention().eval()
    x = torch.randn(3, 5, 6)
    register_recognizer(Recognizer("bias-blind", lambda mod: isinstance(mod, BiasedAttention),
                                   _bias_blind))
    try:
        caps = capture(nn.Sequential(m), x, progress=False)
        table = analyze(nn.Sequential(m), x, progress=False, backbone=False)
    finally:
        unregister_recognizer("bias-blind")
    cap = caps["0"]
    assert cap.source == "observed" and "bias-blind" in cap.info["recognizer"]
    assert "does not reproduce" in cap.info["recognizer"]
    torch.testing.assert_close(cap.dense_affinity(), _reference(m, x), atol=1e-6, rtol=0)
    row = table[0]
    assert row.status == "ok", row.reason
    assert row.self_check_error <= SELF_CHECK_TOL
    assert "recognizer" in row.notes and "n/a" in row.notes


def test_a_correct_recognizer_passes_its_self_check():
    m = BiasedAttention().eval()
    with torch.no_grad():
        m.bias.zero_()                       # now the bias-blind capture is right
    x = torch.randn(2, 5, 6)
    register_recognizer(Recognizer("bias-blind", lambda mod: isinstance(mod, BiasedAttention),
                                   _bias_blind))
    try:
        cap = capture(nn.Sequential(m), x, progress=False)["0"]
    finally:
        unregister_recognizer("bias-blind")
    assert cap.source == "attention" and cap.info["family"] == "bias-blind"
    assert cap.self_check_error <= 1e-6, cap.self_check


def test_a_recognizer_that_raises_falls_back_and_other_blocks_are_analysed():
    def broken(ctx):
        raise NotImplementedError("rotary embeddings")

    net = nn.Sequential(BiasedAttention(), nn.Linear(6, 6), BiasedAttention())
    x = torch.randn(2, 5, 6)
    register_recognizer(Recognizer("broken", lambda mod: isinstance(mod, BiasedAttention),
                                   broken))
    try:
        table = analyze(net, x, progress=False, backbone=False)
    finally:
        unregister_recognizer("broken")
    assert [r.path for r in table] == ["0", "2"]
    with torch.no_grad():
        x2 = net[1](net[0](x))
    for row, mod, xin in zip(table, (net[0], net[2]), (x, x2)):
        assert row.status == "ok", row.reason
        assert "NotImplementedError" in row.notes["recognizer"]
        torch.testing.assert_close(table.captures[row.path].dense_affinity(),
                                   _reference(mod, xin), atol=1e-6, rtol=0)


class DotProduct(nn.Module):
    """AlexHex7-style dot-product non-local block: f = theta phi^T / N, no softmax."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.t, self.p, self.g = (nn.Conv2d(c, 2, 1) for _ in range(3))
        self.w = nn.Conv2d(2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        g = self.g(x).view(b, 2, -1).permute(0, 2, 1)
        f = self.t(x).view(b, 2, -1).permute(0, 2, 1) @ self.p(x).view(b, 2, -1)
        y = (f / f.size(-1)) @ g
        return x + self.w(y.permute(0, 2, 1).reshape(b, 2, h, w))


def test_normalized_product_found_and_frozen_jacobian_holds_it():
    torch.manual_seed(1)
    m = DotProduct().double().eval()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    obs = observe(nn.Sequential(m), x)
    assert [(o.owner, o.kind) for o in obs] == [("0", "product")]
    with torch.no_grad():
        th = m.t(x).view(1, 2, -1).permute(0, 2, 1)
        f = th @ m.p(x).view(1, 2, -1) / 9
    torch.testing.assert_close(obs[0].affinity, f)
    from analysis.robustness import block_function, frozen_function
    cap = capture(nn.Sequential(m), x, progress=False)["0"]
    fn, x0 = block_function(cap, 0)
    frozen = frozen_function(fn, x0)
    J = torch.autograd.functional.jacobian(frozen, x0).reshape(36, 36)

    def held(t):                                   # the same block with f a constant
        b = t.shape[0]
        g = m.g(t).view(b, 2, -1).permute(0, 2, 1)
        y = f @ g
        return t + m.w(y.permute(0, 2, 1).reshape(b, 2, 3, 3))
    J_ref = torch.autograd.functional.jacobian(held, x0).reshape(36, 36)
    torch.testing.assert_close(J, J_ref)
    J_full = torch.autograd.functional.jacobian(fn, x0).reshape(36, 36)
    assert (J_full - J_ref).abs().max() > 1e-6      # holding the affinity changes something


def test_sdpa_affinity_reads_causal_masks_and_gqa():
    q = torch.randn(2, 4, 5, 3)
    k = torch.randn(2, 2, 5, 3)
    mask = torch.rand(5, 5) > 0.3
    mask[:, 0] = True
    P, how = sdpa_affinity(q, k, mask, is_causal=True, scale=0.7, enable_gqa=True)
    v = torch.randn(2, 2, 5, 3)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask & torch.ones(5, 5).tril()
                                         .bool(), scale=0.7, enable_gqa=True)
    torch.testing.assert_close(P @ v.repeat_interleave(2, 1), ref, atol=1e-6, rtol=1e-5)
    assert "is_causal" in how and "GQA" in how


def test_nothing_found_lists_what_looked_like_attention():
    class MyAttention(nn.Module):
        def forward(self, x):
            return torch.softmax(x, 1)             # a softmax, never applied to values

    table = analyze(nn.Sequential(MyAttention()), torch.randn(2, 3, 4), progress=False)
    assert len(table) == 0
    assert "MyAttention" in table.reason and "howto-analyse-your-model" in table.reason


@pytest.mark.parametrize("heads", ["mean", "keep"])
def test_observed_heads_and_dense_affinity(heads):
    class Heads(nn.Module):
        def forward(self, x):                      # (B, L, 2 * 3): two heads of width 3
            h = x.view(x.shape[0], x.shape[1], 2, 3).transpose(1, 2)
            return F.scaled_dot_product_attention(h, h, h, is_causal=True).transpose(1, 2)

    x = torch.randn(2, 5, 6)
    cap = capture(nn.Sequential(Heads()), x, heads=heads, progress=False)["0"]
    h = x.view(2, 5, 2, 3).transpose(1, 2)
    P, _ = sdpa_affinity(h, h, is_causal=True)
    ref = P.mean(1) if heads == "mean" else P
    torch.testing.assert_close(cap.dense_affinity(), ref)
    assert bool((cap.dense_affinity().triu(1) == 0).all())       # causal: triangular


def test_causal_rows_report_singular_values():
    class Causal(nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x, is_causal=True)

    x = torch.randn(2, 6, 4)
    table = analyze(nn.Sequential(Causal()), x, progress=False, backbone=False)
    row = table[0]
    assert "triangular" in row.notes, row.notes
    P, _ = sdpa_affinity(x, x, is_causal=True)
    assert row.singular_max == pytest.approx(float(torch.linalg.svdvals(P.double())[:, 0].max()))


def test_a_capture_that_fails_its_self_check_is_never_ok():
    """SDPA with dropout left on in eval mode: the affinity read from the call, times the
    values, is not the module's own (randomly dropped) product, so the row is not ok and the
    affinity measures are withheld."""
    class LeakyDropout(nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x, dropout_p=0.5)

    x = torch.randn(2, 5, 4)
    table = analyze(nn.Sequential(LeakyDropout()), x, progress=False, backbone=False,
                    jacobian=False)
    row = table[0]
    assert row.self_check_error > SELF_CHECK_TOL
    assert row.status != "ok" and "self-check failed" in row.reason
    assert row.lambda_max != row.lambda_max          # NaN: not reported


class EinsumAttention(nn.Module):
    """Multi-head attention written with ``torch.einsum`` (values first)."""

    def __init__(self, c: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.qkv = nn.Linear(c, 3 * c)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).unbind(2)
        a = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k), -1)
        return torch.einsum("bmhd,bhnm->bnhd", v, a).reshape(B, N, C)


class RowColumnAttention(nn.Module):
    """Criss-cross attention (CCNet's form, independent of mmcv): one softmax over the keys of
    a position's column and row, applied by two einsums whose sum is the output."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Conv2d(c, c, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H = x.shape[2]
        q, k, v = self.q(x), self.k(x), self.v(x)
        e_h = torch.einsum("bchw,bciw->bhwi", q, k) - 1e4 * torch.eye(H)[None, :, None, :]
        e_w = torch.einsum("bchw,bchj->bhwj", q, k)
        a = torch.softmax(torch.cat([e_h, e_w], -1), -1)
        out = torch.einsum("bciw,bhwi->bchw", v, a[..., :H])
        out += torch.einsum("bchj,bhwj->bchw", v, a[..., H:])
        return x + out


def test_einsum_attention_is_read_per_head():
    torch.manual_seed(0)
    m = EinsumAttention()
    x = torch.randn(2, 5, 8)
    (o,) = observe(m, x)
    q, k, _ = m.qkv(x).reshape(2, 5, 3, 2, 4).unbind(2)
    ref = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k), -1)
    assert o.kind == "softmax" and "einsum" in o.how
    assert tuple(o.affinity.shape) == (2, 2, 5, 5)
    torch.testing.assert_close(o.affinity, ref.detach(), rtol=0, atol=1e-6)
    assert o.error < 1e-6


def test_criss_cross_sum_of_einsums_is_one_affinity_over_the_grid():
    torch.manual_seed(1)
    m = RowColumnAttention()
    x = torch.randn(2, 4, 3, 5)
    (o,) = observe(m, x)                        # the two products merged into one
    H, W = 3, 5
    q, k = m.q(x), m.k(x)
    e_h = torch.einsum("bchw,bciw->bhwi", q, k) - 1e4 * torch.eye(H)[None, :, None, :]
    a = torch.softmax(torch.cat([e_h, torch.einsum("bchw,bchj->bhwj", q, k)], -1), -1)
    dense = torch.zeros(2, H, W, H, W)
    for h in range(H):
        for w in range(W):
            dense[:, h, w, :, w] += a[:, h, w, :H].detach()
            dense[:, h, w, h, :] += a[:, h, w, H:].detach()
    torch.testing.assert_close(o.affinity, dense.reshape(2, H * W, H * W), rtol=0, atol=1e-6)
    torch.testing.assert_close(o.affinity.sum(-1), torch.ones(2, H * W))
    assert o.error < 1e-6 and "sum of two applications" in o.how
    caps = capture(m, x, progress=False)
    assert len(caps) == 1
    cap = next(iter(caps.values()))
    assert cap.self_check_error < SELF_CHECK_TOL
    assert cap.residual and "adds its own input" in cap.info["layer"]     # x + out inside
    torch.testing.assert_close(cap.dense_affinity().float(), dense.reshape(2, H * W, H * W),
                               rtol=0, atol=1e-6)


class ShiftedWindowAttention(nn.Module):
    """Single-head attention in ``ws x ws`` windows of a ``side x side`` token grid, cyclically
    shifted by ``shift`` (Swin's layout, written independently): tokens ``(B, side², C)``."""

    def __init__(self, c: int = 4, side: int = 4, ws: int = 2, shift: int = 1) -> None:
        super().__init__()
        self.norm, self.qkv = nn.LayerNorm(c), nn.Linear(c, 3 * c)
        self.side, self.ws, self.shift = side, ws, shift

    def windows(self, t: torch.Tensor) -> torch.Tensor:
        B, _, C = t.shape
        s, ws = self.side, self.ws
        t = torch.roll(t.view(B, s, s, C), (-self.shift, -self.shift), (1, 2))
        t = t.view(B, s // ws, ws, s // ws, ws, C).permute(0, 1, 3, 2, 4, 5).contiguous()
        return t.view(-1, ws * ws, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.windows(self.norm(x))
        q, k, v = self.qkv(w).chunk(3, -1)
        return torch.softmax(q @ k.transpose(1, 2), -1) @ v      # in window order


def test_shifted_windows_are_scattered_back_onto_the_image_grid():
    torch.manual_seed(2)
    m = ShiftedWindowAttention()
    x = torch.randn(2, 16, 4)
    with torch.no_grad():
        q, k, _ = m.qkv(m.windows(m.norm(x))).chunk(3, -1)
        P = torch.softmax(q @ k.transpose(1, 2), -1).reshape(2, 4, 4, 4)   # (B, win, n, n)
    grid = torch.roll(torch.arange(16).view(4, 4), (-1, -1), (0, 1))
    win = grid.view(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(4, 4)          # window -> tokens
    dense = torch.zeros(2, 16, 16)
    for w in range(4):
        dense[:, win[w][:, None], win[w][None, :]] = P[:, w]
    caps = capture(m, x, progress=False)
    cap = caps["(root)"]
    assert cap.info["node_layout"] == "image" and cap.info["windows"] == 4
    torch.testing.assert_close(cap.dense_affinity().float(), dense, rtol=0, atol=1e-6)
    assert cap.self_check_error < SELF_CHECK_TOL


def test_windows_whose_order_cannot_be_read_stay_in_window_order():
    class Opaque(ShiftedWindowAttention):     # the grid goes through numpy: no chain to redo
        def windows(self, t):
            return super().windows(torch.from_numpy(t.numpy().copy()))

    torch.manual_seed(2)
    cap = capture(Opaque(), torch.randn(2, 16, 4), progress=False)["(root)"]
    assert cap.info["node_layout"] == "window" and "window order" in cap.info["note"]


class _PlainAttention(nn.Module):
    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.qkv, self.o = nn.Linear(c, 3 * c), nn.Linear(c, c)

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        a = torch.softmax(q @ k.transpose(1, 2) / c_sqrt(q), -1)
        return self.o((a.detach() if frozen else a) @ v)


def c_sqrt(q: torch.Tensor) -> float:
    return q.shape[-1] ** 0.5


class _PreLNLayer(nn.Module):
    """``x + Attn(LN(x))`` then ``+ MLP(LN(.))``: a layer no recognizer knows."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.n1, self.attn, self.n2 = nn.LayerNorm(c), _PlainAttention(c), nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 12), nn.GELU(), nn.Linear(12, c))

    def branch(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        return x + self.attn(self.n1(x), frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


def test_observed_attention_is_measured_with_its_skip_connection():
    """The residual sum after an observed attention module is found in the forward, and the
    row's Jacobians are those of x -> x + Attn(LN(x)) (dense float64 references)."""
    torch.manual_seed(3)
    net = nn.Sequential(_PreLNLayer(), _PreLNLayer()).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    caps = capture(net, x, progress=False)
    assert set(caps) == {"0.attn", "1.attn"}
    for cap in caps.values():
        assert cap.residual and "residual sum" in cap.info["layer"], cap.info["layer"]
    table = analyze(net, x, progress=False, backbone=False, jacobian_samples=1)
    layer1 = net[1]
    x1 = net[0](x)[:1]
    for row, layer, xin in ((table[0], net[0], x[:1]), (table[1], layer1, x1)):
        for frozen, got in ((False, row.jacobian_full), (True, row.jacobian_frozen)):
            J = torch.autograd.functional.jacobian(
                lambda t, layer=layer, frozen=frozen: layer.branch(t, frozen), xin)
            ref = torch.linalg.matrix_norm(J.reshape(30, 30), ord=2).item()
            assert got == pytest.approx(ref, rel=1e-5), (row.path, frozen, got, ref)
        assert row.status == "ok"


def _bias_blind_shift(ctx):
    """As ``_bias_blind`` but with the output projection's bias: a filter that reproduces the
    module when the logits' bias is zero."""
    cap = _bias_blind(ctx)
    cap.output_shift = ctx.module.out.bias.detach().clone()
    return cap


@pytest.mark.parametrize("build, ok", [(_bias_blind, False), (_bias_blind_shift, True)])
def test_output_level_self_check_rebuilds_the_module_output(build, ok):
    """The affinity is right in both cases; only the filter that forgets the output bias fails
    the output-level check, and its row is not ok."""
    torch.manual_seed(4)
    m = BiasedAttention().eval()
    with torch.no_grad():
        m.bias.zero_()
        m.out.bias.normal_()
    x = torch.randn(2, 5, 6)
    register_recognizer(Recognizer("bias-blind", lambda mod: isinstance(mod, BiasedAttention),
                                   build))
    try:
        row = analyze(nn.Sequential(m), x, progress=False, backbone=False)[0]
    finally:
        unregister_recognizer("bias-blind")
    assert row.self_check_error <= 1e-6
    if ok:
        assert row.reconstruction_error <= 1e-5 and row.status == "ok", row.reason
    else:
        assert row.reconstruction_error > 1e-2 and row.status != "ok"
        assert "reconstruction" in row.reason


def test_pre_ln_stability_is_named_an_approximation():
    """The linearized stability of a pre-LN layer folds its LayerNorm at one mean scale: the
    row says so, the headline marks the value, and the exact frozen norm differs from it."""
    from analysis.analyze import APPROX_STABILITY

    torch.manual_seed(5)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                       norm_first=True)
    x = torch.randn(2, 6, 8) * torch.linspace(0.2, 3.0, 6)[None, :, None]   # unequal scales
    table = analyze(layer, x, progress=False, backbone=False, heads="keep")
    row = table[0]
    assert APPROX_STABILITY in row.notes and "jacobian_frozen" in row.notes[APPROX_STABILITY]
    assert abs(row.stability_norm - row.jacobian_frozen) > 1e-3 * row.jacobian_frozen
    assert "≈" in table.summary()


class HandSoftmaxAttention(nn.Module):
    """Attention applied by an einsum with an ellipsis, which the watcher does not read: no
    affinity is seen applied."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.qkv = nn.Linear(c, 3 * c)
        self.hold = False

    def affinity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, -1)
        e = torch.exp(q @ k.transpose(1, 2) - (q @ k.transpose(1, 2)).amax(-1, keepdim=True))
        a = e / e.sum(-1, keepdim=True)
        return (a.detach() if self.hold else a), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, v = self.affinity(x)
        return x + torch.einsum("...nm,...mc->...nc", a, v)


class _HoldFlag:
    def __init__(self, module):
        self.module, self.held = module, 0

    def __enter__(self):
        self.module.hold, self.held = True, 1
        return self

    def __exit__(self, *exc):
        self.module.hold = False


def _hand_build(ctx):
    m, x = ctx.module, ctx.args[0]
    a, v = m.affinity(x)
    eye = torch.eye(x.shape[-1], dtype=x.dtype)
    return Capture("", "", "", DenseAffinity(a), "rw", z=v, weights=[torch.zeros_like(eye), eye],
                   spatial_shape=(x.shape[1],), input=x.transpose(1, 2), residual=True,
                   call=lambda t: m(t.transpose(1, 2)).transpose(1, 2))


@pytest.mark.parametrize("own_freeze", [True, False])
def test_a_recognizer_owns_how_its_attention_is_held_fixed(own_freeze):
    torch.manual_seed(6)
    m = HandSoftmaxAttention().double().eval()
    x = torch.randn(1, 5, 4, dtype=torch.float64)
    rec = Recognizer("hand", lambda mod: isinstance(mod, HandSoftmaxAttention), _hand_build,
                     freeze=(lambda cap: _HoldFlag(cap.module)) if own_freeze else None)
    register_recognizer(rec)
    try:
        row = analyze(nn.Sequential(m), x, progress=False, backbone=False)[0]
    finally:
        unregister_recognizer("hand")
    if own_freeze:
        def frozen(t):
            m.hold = True
            try:
                return m(t)
            finally:
                m.hold = False
        J = torch.autograd.functional.jacobian(frozen, x).reshape(20, 20)
        ref = torch.linalg.matrix_norm(J, ord=2).item()
        assert row.jacobian_frozen == pytest.approx(ref, rel=1e-5)
        assert abs(row.jacobian_frozen - row.jacobian_full) > 1e-6
    else:                      # nothing held: no frozen value under the frozen name
        assert math.isnan(row.jacobian_frozen) and "jacobian_frozen" in row.reason


def test_efficient_attention_written_with_a_channel_softmax_is_read_as_its_affinity():
    """rho_q(Q) (rho_k(K)^T V), the channel softmax first: the watcher reads the N x N affinity
    rho_q(Q) rho_k(K)^T (not an N x d one), and the frozen Jacobian holds it."""
    from graphfilters.blocks import _utils as U
    from graphfilters.blocks import make_block

    torch.manual_seed(7)
    block = make_block("efficient", 6, heads=2, inter_channels=4, dim=1).double()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.4)
    block.eval()
    x = torch.randn(1, 6, 5, dtype=torch.float64)
    row = analyze(block, x, progress=False, backbone=False, heads="keep")[0]
    cap = analyze(block, x, progress=False, backbone=False, jacobian=False,
                  heads="keep").captures["(root)"]
    torch.testing.assert_close(cap.dense_affinity().double(), block.operator(x).detach(),
                               atol=1e-6, rtol=0)
    assert row.status == "ok" and row.spectrum_method != "bipartite-svd"
    with torch.no_grad():
        q, k, _ = block.projections(x)
        op = block.head_operators(q, k)

    def frozen(t):
        _, _, v = block.projections(t)
        f = op @ v
        b, h, n, d = f.shape
        merged = f.permute(0, 2, 1, 3).reshape(b, n, h * d)
        return t + block.norm(block.out(U.from_nodes(merged, (5,))))

    J = torch.autograd.functional.jacobian(frozen, x).reshape(30, 30)
    assert row.jacobian_frozen == pytest.approx(torch.linalg.matrix_norm(J, ord=2).item(),
                                                rel=1e-5)
