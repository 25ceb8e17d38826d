"""A zoo of real third-party attention code at tiny configs, with each library's own maps.

Every entry is a function returning a :class:`ZooEntry`: the model (random weights, eval mode,
float32), its inputs (as :func:`analysis.capture.capture` and :func:`analysis.analyze` take
them: a tensor, or a dict of keyword inputs for Hugging Face) and the library's OWN attention
maps, keyed by the path of the innermost module that forms them:

- Hugging Face ``transformers``: ``attn_implementation="eager"`` with ``output_attentions=True``;
  the owner of each map is the deepest module whose output holds that very tensor;
- ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer``: ``need_weights=True``;
- mmcv-lite ``NonLocal2d``: its own pairwise function (``embedded_gaussian``, ...);
  ``ContextBlock``: its ``softmax`` module; ``CrissCrossAttention``: its ``F.softmax`` output
  scattered onto the ``(H W) x (H W)`` grid;
- vendored code (``vendored/``): AlexHex7's ``return_nl_map=True``; Efficient Attention: the
  product :math:`Q_h^T K_h` of its own two softmax outputs (per head).

Maps are ``(S, N, M)`` head-averaged (``reference``) and ``(S, H, N, M)`` per head
(``reference_heads``, where the library has heads). Not buildable beside the pinned torch:
timm and torchvision (their wheels pull another torch), so their families are absent here.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["ZooEntry", "FAMILIES", "build", "NOT_BUILDABLE"]

#: Families of the issue that cannot be built in this environment, and why.
NOT_BUILDABLE = {
    "timm (ViT, DeiT, Swin, Attention(is_causal))": "not installable beside the pinned torch: "
    "`pip install --dry-run timm torchvision` would replace torch 2.13.0+cpu by 2.14.1 "
    "(+ CUDA wheels)",
    "torchvision (ViT EncoderBlock, Swin)": "same: torchvision 0.29.1 requires torch 2.14.1",
}


@dataclass
class ZooEntry:
    """One family: model, inputs and the library's own maps.

    Attributes
    ----------
    name : str
    model : nn.Module
        Eval mode, float32, random weights.
    inputs : Tensor or dict
        One batch as ``capture``/``analyze`` take it.
    reference : dict of str to Tensor ``(S, N, M)``
        The library's own map of each attention module, heads averaged.
    reference_heads : dict of str to Tensor ``(S, H, N, M)``
        Per head, where the module has heads (else empty).
    notes : str
        What is special (sub-sampled keys, windows, causal, GQA, ...).
    """

    name: str
    model: nn.Module
    inputs: Any
    reference: dict[str, Tensor]
    reference_heads: dict[str, Tensor] = field(default_factory=dict)
    notes: str = ""


def _seed(seed: int = 0) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _randomize(module: nn.Module, std: float = 0.3) -> nn.Module:
    """Random parameters and BN statistics (zero-initialized outputs would hide the block)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return module


class _Wrap(nn.Module):
    """``body`` inside a stem, so that the attention module is not the root."""

    def __init__(self, body: nn.Module, c_in: int, c: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(c_in, c, 1)
        self.block = body

    def forward(self, x: Tensor) -> Tensor:
        return self.block(self.stem(x))


class _Recorder(TorchFunctionMode):
    """Records the outputs of ``softmax`` calls (torch, ``F`` and ``Tensor.softmax``)."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        res = func(*args, **(kwargs or {}))
        if func in (torch.softmax, F.softmax, Tensor.softmax):
            self.out.append(res)
        return res


@contextmanager
def _spy(obj: Any, name: str, store: list):
    """Wrap the instance method ``obj.name`` to record what it returns (removed after)."""
    orig = getattr(obj, name)

    def wrapped(*a: Any, **k: Any) -> Any:
        res = orig(*a, **k)
        store.append(res)
        return res

    setattr(obj, name, wrapped)
    try:
        yield store
    finally:
        delattr(obj, name)


def _entry(name: str, model: nn.Module, inputs: Any, heads: dict[str, Tensor],
           notes: str = "", averaged: dict[str, Tensor] | None = None) -> ZooEntry:
    ref = dict(averaged) if averaged is not None else {
        p: h.mean(1).detach() for p, h in heads.items()}
    return ZooEntry(name, model.eval(), inputs, ref,
                    {p: h.detach() for p, h in heads.items()}, notes)


# ------------------------------------------------------------------------------------------
# Hugging Face transformers
# ------------------------------------------------------------------------------------------

def _hf_owners(model: nn.Module, inputs: dict, attn_key: str = "attentions"
               ) -> tuple[dict[str, Tensor], Any]:
    """``{owner path: (S, H, N, M)}``: the deepest module whose output holds each map."""
    seen: list[tuple[str, Tensor]] = []            # kept alive: no id() reuse
    hooks = []

    def hook_for(path: str) -> Callable:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            seen.extend((path, t) for t in outs if isinstance(t, Tensor) and t.dim() == 4)
        return hook

    for path, mod in model.named_modules():
        if path:
            hooks.append(mod.register_forward_hook(hook_for(path)))
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    result = {}
    for i, att in enumerate(getattr(out, attn_key)):
        paths = [p for p, t in seen if t is att]
        result[max(paths, key=len) if paths else f"?layer{i}"] = att
    return result, out


def _hf(name: str, model_cls: str, config_cls: str, inputs: dict, notes: str = "",
        impl: str = "eager", **cfg: Any) -> ZooEntry:
    tr = pytest.importorskip("transformers")
    if not hasattr(tr, model_cls):
        pytest.skip(f"transformers {tr.__version__} has no {model_cls}")
    _seed(0)
    config = getattr(tr, config_cls)(attn_implementation="eager", **cfg)
    model = getattr(tr, model_cls)(config).eval()
    heads, _ = _hf_owners(model, inputs)
    if impl != "eager":
        model.config._attn_implementation = impl
    return _entry(name, model, inputs, heads, notes)


_SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
              initializer_range=0.3)


def _pixels(size: int = 8, s: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(s, 3, size, size, generator=g)}


def _text(s: int = 2, length: int = 6, pad: bool = True) -> dict:
    g = torch.Generator().manual_seed(2)
    out = {"input_ids": torch.randint(0, 30, (s, length), generator=g)}
    if pad:
        out["attention_mask"] = torch.tensor([[1] * length, [1] * (length - 2) + [0] * 2])
    return out


def hf_vit() -> ZooEntry:
    return _hf("hf-vit", "ViTModel", "ViTConfig", _pixels(), "pre-LN, CLS token",
               image_size=8, patch_size=4, num_channels=3, **_SMALL)


def hf_vit_sdpa() -> ZooEntry:
    """ViT run with SDPA (the default users get); the reference maps come from eager."""
    return _hf("hf-vit-sdpa", "ViTModel", "ViTConfig", _pixels(), "SDPA kernel, eager maps",
               impl="sdpa", image_size=8, patch_size=4, num_channels=3, **_SMALL)


def hf_deit() -> ZooEntry:
    return _hf("hf-deit", "DeiTModel", "DeiTConfig", _pixels(), "CLS + distillation token",
               image_size=8, patch_size=4, num_channels=3, **_SMALL)


def hf_dinov2() -> ZooEntry:
    cfg = {k: v for k, v in _SMALL.items() if k != "intermediate_size"}
    return _hf("hf-dinov2", "Dinov2Model", "Dinov2Config", _pixels(), "layer scale",
               image_size=8, patch_size=4, num_channels=3, mlp_ratio=2, **cfg)


def hf_clip_vision() -> ZooEntry:
    return _hf("hf-clip-vision", "CLIPVisionModel", "CLIPVisionConfig", _pixels(),
               "out_proj naming, pre-LN", image_size=8, patch_size=4, num_channels=3,
               **_SMALL)


def hf_swin() -> ZooEntry:
    """Swin, 4x4 tokens, 2x2 windows, layer 1 shifted: the reference is the block-diagonal
    ``(S, 16, 16)`` affinity of each image in raster token order (windows scattered back)."""
    tr = pytest.importorskip("transformers")
    _seed(0)
    config = tr.SwinConfig(image_size=8, patch_size=2, num_channels=3, embed_dim=16,
                           depths=[2], num_heads=[2], window_size=2, mlp_ratio=2.0,
                           initializer_range=0.3, attn_implementation="eager")
    model = tr.SwinModel(config).eval()
    inputs = _pixels()
    per_window: dict[str, Tensor] = {}      # HF returns only each stage's last block's map
    hooks = [mod.register_forward_hook(
        lambda m, a, out, path=path: per_window.__setitem__(path, out[1]))
        for path, mod in model.named_modules() if type(mod).__name__ == "SwinAttention"]
    try:
        with torch.no_grad():
            model(**inputs, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    S, side = inputs["pixel_values"].shape[0], 4
    heads = {}
    for path, att in per_window.items():
        layer = model.get_submodule(path.rsplit(".attention", 1)[0])
        ws, shift = int(layer.window_size), int(layer.shift_size)
        idx = torch.arange(side * side).reshape(1, side, side)
        if shift > 0:
            idx = torch.roll(idx, shifts=(-shift, -shift), dims=(1, 2))
        win = idx.reshape(side // ws, ws, side // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
        nw, H = win.shape[0], att.shape[1]
        att = att.reshape(S, nw, H, ws * ws, ws * ws)
        dense = torch.zeros(S, H, side * side, side * side)
        for w in range(nw):
            r = win[w]
            dense[:, :, r[:, None], r[None, :]] = att[:, w]
        heads[path] = dense
    return _entry("hf-swin", model, inputs, heads,
                  "windows 2x2 (4 per image), shift 1 in layer 1, relative-position bias")


def hf_segformer() -> ZooEntry:
    return _hf("hf-segformer", "SegformerModel", "SegformerConfig", _pixels(16),
               "spatial reduction: N x M keys (sr_ratio 2 in stage 1)",
               num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
               hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
               num_attention_heads=[2, 2], mlp_ratios=[2, 2], initializer_range=0.3)


def hf_gpt2() -> ZooEntry:
    return _hf("hf-gpt2", "GPT2Model", "GPT2Config", _text(pad=False),
               "Conv1D c_attn, causal", n_embd=16, n_layer=2, n_head=2, vocab_size=30,
               n_positions=16, initializer_range=0.3)


def hf_bert() -> ZooEntry:
    return _hf("hf-bert", "BertModel", "BertConfig", _text(), "post-LN, padding mask",
               vocab_size=30, max_position_embeddings=16, **_SMALL)


def hf_bert_causal() -> ZooEntry:
    return _hf("hf-bert-causal", "BertModel", "BertConfig", _text(),
               "is_decoder=True: causal + padding", vocab_size=30,
               max_position_embeddings=16, is_decoder=True, **_SMALL)


def _decoder(name: str, model_cls: str, config_cls: str) -> ZooEntry:
    return _hf(name, model_cls, config_cls, _text(pad=False),
               "rotary embeddings, GQA (2 query heads, 1 kv head), RMSNorm, causal",
               vocab_size=30, max_position_embeddings=16, num_key_value_heads=1, head_dim=8,
               **_SMALL)


def hf_bert_sdpa() -> ZooEntry:
    return _hf("hf-bert-sdpa", "BertModel", "BertConfig", _text(), "SDPA kernel, eager maps",
               impl="sdpa", vocab_size=30, max_position_embeddings=16, **_SMALL)


def hf_llama_sdpa() -> ZooEntry:
    return _hf("hf-llama-sdpa", "LlamaModel", "LlamaConfig", _text(pad=False),
               "SDPA kernel (eager maps); rotary, GQA, causal", impl="sdpa",
               vocab_size=30, max_position_embeddings=16, num_key_value_heads=1, head_dim=8,
               **_SMALL)


def hf_llama() -> ZooEntry:
    return _decoder("hf-llama", "LlamaModel", "LlamaConfig")


def hf_qwen2() -> ZooEntry:
    return _decoder("hf-qwen2", "Qwen2Model", "Qwen2Config")


# ------------------------------------------------------------------------------------------
# torch.nn
# ------------------------------------------------------------------------------------------

class _CausalMHA(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def mask(self, n: int) -> Tensor:
        return torch.ones(n, n, dtype=torch.bool).triu(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x, x, x, attn_mask=self.mask(x.shape[1]), need_weights=False)[0]


def torch_mha_causal() -> ZooEntry:
    g = _seed(0)
    model = _CausalMHA().eval()
    x = torch.randn(2, 6, 16, generator=g)
    with torch.no_grad():
        _, w = model.attn(x, x, x, attn_mask=model.mask(6), need_weights=True,
                          average_attn_weights=False)
    return _entry("torch-mha-causal", model, x, {"attn": w}, "boolean causal mask")


def _encoder_layers(norm_first: bool) -> ZooEntry:
    g = _seed(0)
    layers = [nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True,
                                         norm_first=norm_first) for _ in range(2)]
    model = nn.Sequential(*layers).eval()
    x = torch.randn(2, 6, 16, generator=g)
    heads = {}
    with torch.no_grad():
        h = x
        for i, lay in enumerate(layers):
            q = lay.norm1(h) if norm_first else h
            heads[f"{i}.self_attn"] = lay.self_attn(q, q, q, need_weights=True,
                                                    average_attn_weights=False)[1]
            h = lay(h)
    name = "torch-encoder-prenorm" if norm_first else "torch-encoder-postnorm"
    return _entry(name, model, x, heads, f"norm_first={norm_first}")


def torch_encoder_prenorm() -> ZooEntry:
    return _encoder_layers(True)


def torch_encoder_postnorm() -> ZooEntry:
    return _encoder_layers(False)


# ------------------------------------------------------------------------------------------
# mmcv-lite
# ------------------------------------------------------------------------------------------

def _mmcv_cnn() -> Any:
    pytest.importorskip("mmcv")
    try:
        import mmcv.cnn as cnn
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        pytest.skip(f"mmcv.cnn is not importable: {type(exc).__name__}: {exc}")
    return cnn


def _image(c: int = 3, side: int = 6, s: int = 2) -> Tensor:
    return torch.randn(s, c, side, side, generator=torch.Generator().manual_seed(3))


def _mmcv_nonlocal(sub_sample: bool) -> ZooEntry:
    cnn = _mmcv_cnn()
    _seed(0)
    block = _randomize(cnn.NonLocal2d(8, sub_sample=sub_sample, mode="embedded_gaussian"))
    model = _Wrap(block, 3, 8).eval()
    x = _image()
    store: list = []
    with torch.no_grad(), _spy(block, "embedded_gaussian", store):
        model(x)
    name = "mmcv-nonlocal2d-subsample" if sub_sample else "mmcv-nonlocal2d"
    notes = "sub-sampled keys: N=36 x M=9" if sub_sample else "embedded gaussian, N=36"
    return _entry(name, model, x, {}, notes, averaged={"block": store[0].detach()})


def mmcv_nonlocal2d() -> ZooEntry:
    return _mmcv_nonlocal(False)


def mmcv_nonlocal2d_subsample() -> ZooEntry:
    return _mmcv_nonlocal(True)


def mmcv_context_block() -> ZooEntry:
    """GCNet: one softmax over the positions pools the context, ``(S, 1, N)`` (one query)."""
    cnn = _mmcv_cnn()
    _seed(1)        # seed 0 leaves every ReLU of channel_add_conv off: the block is x + const
    block = _randomize(cnn.ContextBlock(8, 0.5))
    model = _Wrap(block, 3, 8).eval()
    x = _image()
    store: list = []
    h = block.softmax.register_forward_hook(lambda m, a, out: store.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return _entry("mmcv-contextblock", model, x, {}, "attention pooling: (S, 1, N) map",
                  averaged={"block": store[0].detach()})


_CCA: Any = None


def _criss_cross_class() -> type:
    """mmcv-lite's ``CrissCrossAttention``: ``mmcv.ops`` needs the compiled ``mmcv._ext``
    (absent from mmcv-lite), but ``mmcv/ops/cc_attention.py`` is pure PyTorch: it is loaded
    from its file without running ``mmcv/ops/__init__.py``."""
    global _CCA
    if _CCA is None:
        mmcv = pytest.importorskip("mmcv")
        _mmcv_cnn()
        path = Path(mmcv.__file__).parent / "ops" / "cc_attention.py"
        if not path.exists():
            pytest.skip(f"mmcv {mmcv.__version__} ships no ops/cc_attention.py")
        spec = importlib.util.spec_from_file_location("_zoo_mmcv_cc_attention", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        _CCA = mod.CrissCrossAttention
    return _CCA


def criss_cross_dense(attn: Tensor) -> Tensor:
    """CCNet's ``(S, H, W, H + W)`` softmax scattered on the ``(S, HW, HW)`` grid (the
    column part first, the own position counted once, in the row part)."""
    S, H, W, _ = attn.shape
    dense = torch.zeros(S, H, W, H, W, dtype=attn.dtype)
    for h in range(H):
        for w in range(W):
            dense[:, h, w, :, w] += attn[:, h, w, :H]
            dense[:, h, w, h, :] += attn[:, h, w, H:]
    return dense.reshape(S, H * W, H * W)


def mmcv_criss_cross() -> ZooEntry:
    cls = _criss_cross_class()
    _seed(0)
    block = _randomize(cls(16))
    model = _Wrap(block, 3, 16).eval()
    x = _image()
    rec = _Recorder()
    with torch.no_grad(), rec:
        model(x)
    return _entry("mmcv-crisscross", model, x, {}, "sparse: H+W-1 keys per query (ops file "
                  "loaded directly: mmcv.ops needs compiled extensions)",
                  averaged={"block": criss_cross_dense(rec.out[0]).detach()})


# ------------------------------------------------------------------------------------------
# Vendored implementations (tests/thirdparty/vendored/)
# ------------------------------------------------------------------------------------------

ALEXHEX7_MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")


def _alexhex7(mode: str, sub_sample: bool = True) -> ZooEntry:
    mod = importlib.import_module(f"tests.thirdparty.vendored.alexhex7_non_local_{mode}")
    _seed(0)
    block = _randomize(mod.NONLocalBlock2D(8, sub_sample=sub_sample), 0.3)
    model = _Wrap(block, 3, 8).eval()
    x = _image()
    with torch.no_grad():
        _, nl_map = block(model.stem(x), return_nl_map=True)
    suffix = "" if sub_sample else "-full"
    notes = ("sub-sampled keys (default): N=36 x M=9" if sub_sample else "N=36") + \
        ("" if mode in ("embedded_gaussian", "gaussian") else ", not row-stochastic (1/N)")
    return _entry(f"alexhex7-{mode.replace('_', '-')}{suffix}", model, x, {}, notes,
                  averaged={"block": nl_map.detach()})


def alexhex7_embedded_gaussian() -> ZooEntry:
    return _alexhex7("embedded_gaussian")


def alexhex7_embedded_gaussian_full() -> ZooEntry:
    return _alexhex7("embedded_gaussian", sub_sample=False)


def alexhex7_gaussian() -> ZooEntry:
    return _alexhex7("gaussian")


def alexhex7_dot_product() -> ZooEntry:
    return _alexhex7("dot_product")


def alexhex7_concatenation() -> ZooEntry:
    return _alexhex7("concatenation")


def efficient_attention() -> ZooEntry:
    """Shen et al.: per head :math:`A_h = \\sigma_{ch}(Q_h)^T \\sigma_{pos}(K_h)`, row-stochastic
    of rank at most the head's key channels; the two softmax outputs are its own tensors."""
    from tests.thirdparty.vendored.efficient_attention import EfficientAttention
    _seed(0)
    block = _randomize(EfficientAttention(8, 8, 2, 8))
    model = _Wrap(block, 3, 8).eval()
    x = _image()
    rec = _Recorder()
    with torch.no_grad(), rec:
        model(x)
    maps = []
    for i in range(block.head_count):
        key, query = rec.out[2 * i], rec.out[2 * i + 1]     # (S, dk, N) each
        maps.append(query.transpose(1, 2) @ key)
    return _entry("efficient-attention", model, x, {"block": torch.stack(maps, 1)},
                  "factorized: never forms the N x N map; rank <= 4 per head")


FAMILIES: dict[str, Callable[[], ZooEntry]] = {
    "hf-vit": hf_vit,
    "hf-vit-sdpa": hf_vit_sdpa,
    "hf-deit": hf_deit,
    "hf-dinov2": hf_dinov2,
    "hf-swin": hf_swin,
    "hf-clip-vision": hf_clip_vision,
    "hf-segformer": hf_segformer,
    "hf-gpt2": hf_gpt2,
    "hf-bert": hf_bert,
    "hf-bert-causal": hf_bert_causal,
    "hf-bert-sdpa": hf_bert_sdpa,
    "hf-llama": hf_llama,
    "hf-llama-sdpa": hf_llama_sdpa,
    "hf-qwen2": hf_qwen2,
    "torch-mha-causal": torch_mha_causal,
    "torch-encoder-prenorm": torch_encoder_prenorm,
    "torch-encoder-postnorm": torch_encoder_postnorm,
    "mmcv-nonlocal2d": mmcv_nonlocal2d,
    "mmcv-nonlocal2d-subsample": mmcv_nonlocal2d_subsample,
    "mmcv-contextblock": mmcv_context_block,
    "mmcv-crisscross": mmcv_criss_cross,
    "alexhex7-embedded-gaussian": alexhex7_embedded_gaussian,
    "alexhex7-embedded-gaussian-full": alexhex7_embedded_gaussian_full,
    "alexhex7-gaussian": alexhex7_gaussian,
    "alexhex7-dot-product": alexhex7_dot_product,
    "alexhex7-concatenation": alexhex7_concatenation,
    "efficient-attention": efficient_attention,
}


def build(name: str) -> ZooEntry:
    """The entry ``name`` of :data:`FAMILIES` (``pytest.skip`` when its package is missing)."""
    if name not in FAMILIES:
        raise ValueError(f"name must be one of {sorted(FAMILIES)}, got {name!r}")
    return FAMILIES[name]()
