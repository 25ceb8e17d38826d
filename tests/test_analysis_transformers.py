"""Attention of other libraries read without adapters: Hugging Face transformers, a timm-style
module, mmcv NonLocal2d, nn.TransformerEncoder with padding masks.

Every map is compared with the library's own (``output_attentions`` / ``need_weights`` /
the module's pairwise function), every analyze row must be ``ok``, and Jacobian norms of the
re-called layers equal a dense ``torch.autograd.functional.jacobian``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis import Capture, analyze, capture, register_adapter, unregister_adapter
from analysis.capture import Recognizer, recognizers, register_recognizer, unregister_recognizer
from analysis.response import (
    block_response,
    frequency_response,
    head_factors,
    layer_gains,
    pencil_gains,
    response_gains,
)
from analysis.robustness import block_function, jacobian_spectral_norm
from graphfilters.graph import DenseAffinity


def _dense_jacobian_norm(fn: nn.Module, x: torch.Tensor) -> float:
    J = torch.autograd.functional.jacobian(fn, x).reshape(x.numel(), x.numel())
    return float(torch.linalg.matrix_norm(J.double(), 2))


def _check_jacobian(model: nn.Module, cap: Capture, index: int = 0) -> None:
    """Power iteration on the re-called layer = the dense Jacobian's norm (float64)."""
    model.double().eval()            # eval: the dense reference must not drop out either
    try:
        fn, x = block_function(cap, index)
        exact = _dense_jacobian_norm(fn, x)
        est = jacobian_spectral_norm(fn, x, n_iter=1000, tol=1e-13)
        assert est == pytest.approx(exact, rel=1e-6)
    finally:
        model.float()


def _all_ok(table) -> None:
    assert table, table.reason
    for row in table:
        assert row.status == "ok", (row.path, row.reason)


# ------------------------------------------------------------------------------------------
# Hugging Face transformers
# ------------------------------------------------------------------------------------------

def _hf_models(impl: str):
    tr = pytest.importorskip("transformers")
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=32, attn_implementation=impl)
    vision = dict(image_size=8, patch_size=4, num_channels=3)
    g = torch.Generator().manual_seed(0)
    pixels = {"pixel_values": torch.randn(3, 3, 8, 8, generator=g)}
    text = {"input_ids": torch.randint(0, 30, (3, 6), generator=g),
            "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3])}
    torch.manual_seed(0)
    return [
        ("vit", tr.ViTModel(tr.ViTConfig(**small, **vision)), pixels, "pre"),
        ("deit", tr.DeiTModel(tr.DeiTConfig(**small, **vision)), pixels, "pre"),
        ("bert", tr.BertModel(tr.BertConfig(**small, vocab_size=30,
                                            max_position_embeddings=16)), text, "post"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_hf_maps_equal_output_attentions(impl):
    for name, model, batch, layernorm in _hf_models(impl):
        model.eval()
        keep = capture(model, batch, heads="keep", progress=False)
        mean = capture(model, batch, heads="mean", progress=False)
        model.config._attn_implementation = "eager"          # the library's own maps
        with torch.no_grad():
            ref = model(**batch, output_attentions=True).attentions
        model.config._attn_implementation = impl
        assert len(keep) == len(ref) == 2, name
        for (path, cap), att in zip(keep.items(), ref):
            assert cap.info["family"] == "transformers" and cap.residual, path
            assert cap.info["layernorm"] == layernorm
            assert torch.allclose(cap.affinity.dense(), att, atol=1e-6), (name, path)
            assert torch.allclose(mean[path].affinity.dense(), att.mean(1), atol=1e-6)
            assert cap.input.shape == (3, 16, att.shape[-1])


def test_hf_layer_call_is_the_residual_branch():
    (_, vit, pixels, _), _, (_, bert, text, _) = _hf_models("sdpa")
    for model, batch in ((vit, pixels), (bert, text)):
        model.eval()
        caps = capture(model, batch, progress=False)
        cap = next(iter(caps.values()))
        fn, x = block_function(cap, 1)
        tokens = x.transpose(1, 2)
        with torch.no_grad():
            if model is vit:
                layer = model.layers[0]
                ref = tokens + layer.attention(layer.layernorm_before(tokens))[0]
            else:
                att = model.encoder.layer[0].attention
                mask = cap.call_kwargs["attention_mask"][1:2]
                ref = att(tokens, attention_mask=mask)[0]
            assert torch.allclose(fn(x).transpose(1, 2), ref, atol=1e-6)


@pytest.mark.slow
def test_hf_analyze_rows_ok_and_jacobians():
    for name, model, batch, _ in _hf_models("sdpa"):
        table = analyze(model, batch, max_samples=3, progress=False)
        _all_ok(table)
        assert all(r.response_class in ("all-pass", "low-pass", "high-pass", "band-stop")
                   for r in table), name
        caps = table.captures
        _check_jacobian(model, next(iter(caps.values())), index=2)


# ------------------------------------------------------------------------------------------
# timm-style attention (timm >= 0.9 shape; timm itself is not importable here)
# ------------------------------------------------------------------------------------------


class TimmAttention(nn.Module):
    """The shape of timm's ``Attention`` (0.9 - 1.0): fused SDPA, q/k norms, proj."""

    def __init__(self, dim: int, num_heads: int = 4, qk_norm: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = True
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(self.norm(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 0.5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TimmBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int = 4, qk_norm: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TimmAttention(dim, num_heads, qk_norm)
        self.ls1 = LayerScale(dim)
        self.drop_path1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


def _timm_reference_map(attn: TimmAttention, h: torch.Tensor) -> torch.Tensor:
    """The non-fused timm path: ``(q * scale) @ k^T``, softmax (per head)."""
    B, N, C = h.shape
    qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_timm_style_attention(qk_norm):
    torch.manual_seed(0)
    model = nn.Sequential(TimmBlock(16, 4, qk_norm), TimmBlock(16, 4, qk_norm)).eval()
    x = torch.randn(2, 7, 16)
    caps = capture(model, x, heads="keep", progress=False)
    assert list(caps) == ["0.attn", "1.attn"]
    with torch.no_grad():
        h1 = model[0](x)
        refs = [_timm_reference_map(model[0].attn, model[0].norm1(x)),
                _timm_reference_map(model[1].attn, model[1].norm1(h1))]
    for cap, ref in zip(caps.values(), refs):
        assert cap.info["family"] == "timm" and cap.residual
        assert torch.allclose(cap.affinity.dense(), ref, atol=1e-6)
        assert torch.allclose(cap.output_scale, torch.full((16,), 0.5))
    fn, xx = block_function(caps["1.attn"], 1)
    with torch.no_grad():
        b = model[1]
        ref = h1[1:2] + b.ls1(b.attn(b.norm1(h1[1:2])))
    assert torch.allclose(fn(xx).transpose(1, 2), ref, atol=1e-6)
    _check_jacobian(model, caps["0.attn"], 1)
    _all_ok(analyze(model, x, progress=False))


# ------------------------------------------------------------------------------------------
# mmcv NonLocal2d
# ------------------------------------------------------------------------------------------


def _mmcv_nonlocal():
    try:
        from mmcv.cnn import NonLocal2d
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        pytest.skip(f"mmcv-lite is not importable here: {type(exc).__name__}: {exc}")
    return NonLocal2d


@pytest.mark.parametrize("mode,norm", [("embedded_gaussian", None),
                                       ("embedded_gaussian", dict(type="BN")),
                                       ("gaussian", None), ("dot_product", None)])
def test_mmcv_nonlocal2d(mode, norm):
    NonLocal2d = _mmcv_nonlocal()
    torch.manual_seed(0)
    block = NonLocal2d(8, mode=mode, norm_cfg=norm)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
        if norm is not None:
            block.conv_out.norm.running_var.uniform_(0.5, 2.0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), block).eval()
    x = torch.randn(2, 3, 4, 5)
    cap = capture(model, x, progress=False)["1"]
    assert cap.info["family"] == "mmcv" and cap.source == "nonlocal" and cap.residual
    with torch.no_grad():
        h = model[0](x)
        n = h.shape[0]
        if mode == "gaussian":
            theta = h.view(n, 8, -1).permute(0, 2, 1)
            phi = h.view(n, 8, -1)
        else:
            theta = block.theta(h).view(n, 4, -1).permute(0, 2, 1)
            phi = block.phi(h).view(n, 4, -1)
        ref = getattr(block, mode)(theta, phi)                    # mmcv's own pairwise map
        assert torch.allclose(cap.operator().dense(), ref, atol=1e-6)
        # the captured filter reproduces the block: x + conv_out(A g(x))
        from analysis.response import filter_output
        f = filter_output(cap)
        s = cap.output_scale if cap.output_scale is not None else 1.0
        out = h + (f * s + cap.output_shift).transpose(1, 2).reshape(h.shape)
        assert torch.allclose(out, block(h), atol=1e-5)
    _check_jacobian(model, cap, 1)
    _all_ok(analyze(model, x, progress=False))


# ------------------------------------------------------------------------------------------
# nn.TransformerEncoder with padding masks
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_encoder_with_padding_mask(norm_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True,
                                       norm_first=norm_first)
    enc = nn.TransformerEncoder(layer, 2)                  # nested-tensor fast path on
    x = torch.randn(3, 6, 16)
    kpm = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] * 3 + [True] * 3])
    enc.train()                                            # modes must come back
    caps = capture(enc, x, model_kwargs={"src_key_padding_mask": kpm}, progress=False)
    assert enc.training and list(caps) == ["layers.0.self_attn", "layers.1.self_attn"]
    enc.eval()
    with torch.no_grad():
        h = x
        for i, lay in enumerate(enc.layers):
            q = lay.norm1(h) if norm_first else h
            _, w = lay.self_attn(q, q, q, key_padding_mask=kpm, need_weights=True)
            cap = caps[f"layers.{i}.self_attn"]
            assert cap.residual and cap.info["layernorm"] == ("pre" if norm_first else "post")
            assert torch.allclose(cap.affinity.dense(), w, atol=1e-6)
            assert torch.equal(cap.call_kwargs["key_padding_mask"].isinf(), kpm)
            fn, xx = block_function(cap, 2)
            sa = lay.self_attn(q[2:3], q[2:3], q[2:3], key_padding_mask=kpm[2:3],
                               need_weights=False)[0]
            ref = h[2:3] + sa if norm_first else lay.norm1(h[2:3] + sa)
            assert torch.allclose(fn(xx).transpose(1, 2), ref, atol=1e-5)
            h = lay(h, src_key_padding_mask=kpm)
    _check_jacobian(enc, caps["layers.1.self_attn"], 2)
    table = analyze(enc, x, model_kwargs={"src_key_padding_mask": kpm}, progress=False)
    _all_ok(table)
    keep = analyze(enc, x, heads="keep", model_kwargs={"src_key_padding_mask": kpm},
                   progress=False)
    _all_ok(keep)


def test_analyze_dict_batches_and_forward():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1)
    x = torch.randn(2, 5, 8)
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    by_kwargs = analyze(enc, x, model_kwargs={"src_key_padding_mask": kpm}, progress=False)
    by_dict = analyze(enc, {"src": x, "src_key_padding_mask": kpm}, progress=False)
    by_forward = analyze(enc, [(x, kpm)], forward=lambda m, b: m(b[0],
                                                                 src_key_padding_mask=b[1]),
                         progress=False)
    vals = [t[0].lambda_max for t in (by_kwargs, by_dict, by_forward)]
    assert vals[0] == pytest.approx(vals[1]) == pytest.approx(vals[2])
    assert by_dict[0].n_samples == 2 and by_dict[0].status == "ok"
    assert all(k in by_dict[0].timings for k in ("spectrum", "response", "jacobian"))


# ------------------------------------------------------------------------------------------
# Registry, adapters, responses
# ------------------------------------------------------------------------------------------


def test_adapter_supplied_call_and_module_are_kept():
    class Mix(nn.Module):
        def forward(self, x, scale=1.0):                 # (B, L, C), keyword input
            return (scale * x.mean(1, keepdim=True).expand_as(x),)

    def adapter(module, inputs, output):
        x = inputs[0]
        B, L, C = x.shape
        return Capture("", "adapter", "", DenseAffinity(torch.full((B, L, L), 1 / L)), "none",
                       input=x.transpose(1, 2), spatial_shape=(L,), residual=False,
                       call=lambda t: module(t.transpose(1, 2), scale=2.0)[0].transpose(1, 2))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = Mix()

        def forward(self, x):
            return self.mix(x)[0]

    register_adapter(Mix, adapter)
    try:
        cap = capture(Net(), torch.randn(2, 4, 3), progress=False)["mix"]
        fn, x = block_function(cap, 0)
        assert torch.allclose(fn(x), 2 * x.mean(2, keepdim=True).expand_as(x))
        assert jacobian_spectral_norm(fn, x) == pytest.approx(2.0, rel=1e-5)
    finally:
        unregister_adapter(Mix)


def test_recognizer_registry_order_and_replacement():
    names = [r.name for r in recognizers()]
    assert names[-4:] == ["mmcv", "timm", "transformers", "torch.nn.MultiheadAttention"]
    mine = Recognizer("mine", lambda m: isinstance(m, nn.MultiheadAttention), lambda ctx: None)
    register_recognizer(mine)
    try:
        assert recognizers()[0] is mine
        caps = capture(nn.MultiheadAttention(4, 1), torch.randn(3, 2, 4), progress=False,
                       forward=lambda m, x: m(x, x, x))
        assert not caps and "none ran" in caps.reason           # build returned None
    finally:
        unregister_recognizer("mine")
    assert [r.name for r in recognizers()] == names
    with pytest.raises(TypeError, match="Recognizer"):
        register_recognizer("mine")


def test_pencil_gains_equal_dense_svd():
    rng = np.random.default_rng(0)
    lam = np.concatenate([np.linspace(0, 2, 9), 1 - rng.random(3) + 0.3j * rng.random(3)])
    for shapes in [(3, 8, 2), (6, 4, 3), (5, 5, 2), (2, 9, 1)]:
        c_s, c_out, order = shapes
        ws = [rng.standard_normal((c_s, c_out)) for _ in range(order + 1)]
        for basis in ("chebyshev", "stable"):
            ref = response_gains(frequency_response(ws, lam, basis=basis))
            assert np.allclose(pencil_gains(ws, lam, basis=basis), ref, atol=1e-10)
        ws[0] = np.zeros_like(ws[0])
        ref = response_gains(frequency_response(ws, lam))
        assert np.allclose(pencil_gains(ws, lam), ref, atol=1e-10)


def test_layer_gains_equal_dense_per_head_maps_and_classes():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    C, H = 12, 3
    mha = nn.MultiheadAttention(C, H, batch_first=True)
    enc_layer = nn.TransformerEncoderLayer(C, H, 16, batch_first=True, norm_first=True)
    enc_layer.self_attn = mha
    cap = capture(nn.Sequential(enc_layer), torch.randn(2, 5, C, generator=g),
                  progress=False)["0.self_attn"]
    lam = np.linspace(0, 2, 7)
    got = layer_gains(cap, lam)
    for h, (u, v) in enumerate(head_factors(cap)):
        K = u @ v.T
        ref = [np.linalg.norm(np.eye(C) + (1 - t) * K, 2) for t in lam]
        assert np.allclose(got[h], ref, atol=1e-10)
    resp = block_response(cap)
    assert resp.form == "layer" and resp.gains.shape == (41, H + 1) and not resp.forced
    assert len(resp.head_labels) == H and resp.filter_label == "band-stop"
    # a head that adds its smooth component: low-pass; one that subtracts it: high-pass
    with torch.no_grad():
        mha.in_proj_weight[2 * C:].copy_(torch.eye(C))
        mha.out_proj.weight.copy_(torch.eye(C))
        enc_layer.norm1.weight.fill_(1.0)
    low = block_response(capture(nn.Sequential(enc_layer), torch.randn(2, 5, C, generator=g),
                                 progress=False)["0.self_attn"])
    with torch.no_grad():
        mha.out_proj.weight.copy_(-1.8 * torch.eye(C))
    high = block_response(capture(nn.Sequential(enc_layer), torch.randn(2, 5, C, generator=g),
                                  progress=False)["0.self_attn"])
    assert (low.label, high.label) == ("low-pass", "high-pass")
    bare = block_response(capture(mha, torch.randn(2, 5, C, generator=g), progress=False,
                                  forward=lambda m, x: m(x, x, x))["(root)"])
    assert bare.form == "filter" and bare.label == "band-stop" and bare.forced
    assert math.isclose(float(bare.gains[100, 0]), 0.0, abs_tol=1e-12)     # lambda = 1
