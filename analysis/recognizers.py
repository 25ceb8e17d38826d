r"""The built-in :class:`~analysis.capture.Recognizer` families: attention modules of other
libraries read as graph filters, without adapters.

Each recognizer recomputes the attention map from the call's inputs and the module's own
weights (fused kernels such as ``F.scaled_dot_product_attention`` never form it), with the
call's masks, and fills a :class:`~analysis.capture_record.Capture`:

- the affinity :math:`A = \operatorname{softmax}_{row}(s\,QK^T + \text{mask})`: per head
  (``heads="keep"``, batch shape ``(S, H)``) or the head average (``heads="mean"``, what
  ``average_attn_weights=True`` returns), normalization ``"rw"`` (already row-stochastic);
- the values :math:`Z` ``(S, N, H d)``, the output projection as the affinity-form weights
  :math:`W_0 = 0`, :math:`W_1 = W_o^T` (:math:`F = [A_1 Z_1, \dots, A_H Z_H] W_o`);
- ``input``, ``call``, ``call_kwargs`` and ``residual`` for the measures that re-run it.

Transformer layers are read as what they compute. When the recognizer identifies the layer
around the attention (the residual path and its LayerNorm), the captured map is the
layer's residual branch and ``residual=True``:

=====================  ==============================================  ====================
layer                  captured map :math:`x \mapsto`                   ``info["layernorm"]``
=====================  ==============================================  ====================
pre-LN (ViT, DeiT,     :math:`x + \operatorname{Attn}(\operatorname{LN}    ``"pre"``
timm ``Block``,        (x))` (times timm's LayerScale, kept as
``norm_first=True``)   ``output_scale``)
post-LN (BERT,         :math:`\operatorname{LN}(x + \operatorname{Attn}     ``"post"``
``norm_first=False``)  (x))`
=====================  ==============================================  ====================

The Jacobian and noise measures re-run this exact map (``call``). The per-frequency channel
maps (responses, linearized stability) need a linear map: for pre-LN layers the LayerNorm is
linearized at the captured statistics and folded into the value projection,
:math:`G = \bar s\, P \operatorname{diag}(\gamma) G_v` (:math:`P` removes the channel mean,
:math:`\bar s` is the mean of the tokens' :math:`1/\sigma_i`: exact when the tokens share one
scale); for post-LN layers the LayerNorm after the sum is left out of those maps (a per-token
rescaling, noted in ``info``). A bare attention module (no layer identified) is captured with
``residual=False``.

Targets: PyTorch's :class:`torch.nn.MultiheadAttention` (with ``attn_mask``,
``key_padding_mask``, ``is_causal``, inside ``nn.TransformerEncoderLayer`` /
``nn.TransformerDecoderLayer`` self-attention); Hugging Face ``transformers`` 4.48–5.x self
attention of the shared interface (``q_proj/k_proj/v_proj/o_proj`` modules such as
``ViTAttention``, ``DeiTAttention`` in 5.x, and ``query/key/value`` modules with a
``…SelfOutput`` sibling such as ``BertSelfAttention``), for every ``attn_implementation``
(``eager``, ``sdpa``...), without rotary position embeddings; timm 0.9–1.0 ``Attention``
(``qkv``, ``num_heads``, ``scale``, ``q_norm``/``k_norm``, ``proj``; ``fused_attn`` or not)
inside a ``Block`` (``norm1``, ``attn``, ``ls1``); mmcv 2.x (``mmcv-lite``)
``NonLocal1d/2d/3d`` (all four pairwise modes, ``sub_sample``, ``conv_out`` with or without
a norm).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from graphfilters.graph import Affinity, DenseAffinity, SoftmaxAffinity
from graphfilters.specs import get_spec

from .capture import MHA_SPEC, Capture
from .registry import CallContext, Recognizer, register_recognizer

__all__ = ["attention_affinity", "fold_layernorm", "additive_mask", "TokenCall"]


# ------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------


def additive_mask(mask: Tensor | None, true_means: str, dtype: torch.dtype) -> Tensor | None:
    r"""A mask as an additive float tensor (0 where attended, :math:`-\infty` where not).

    ``true_means`` says what ``True`` means in a boolean mask: ``"attend"`` (SDPA, Hugging
    Face, timm) or ``"masked"`` (``nn.MultiheadAttention``). Float masks are additive already.

    Examples
    --------
    >>> import torch
    >>> additive_mask(torch.tensor([True, False]), "masked", torch.float32)
    tensor([-inf, 0.])
    """
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        blocked = ~mask if true_means == "attend" else mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            blocked, float("-inf"))
    return mask.to(dtype)


def attention_affinity(
    qh: Tensor, kh: Tensor, scale: float, mask: Tensor | None, heads: str
) -> Affinity:
    r"""The attention map :math:`\operatorname{softmax}_{row}(s\, Q_h K_h^T + \text{mask})`.

    Shapes
    ------
    ``qh`` ``(B, H, L, d)``, ``kh`` ``(B, H, S, d)``, ``mask`` additive, broadcastable to
    ``(B, H, L, S)``. Returns batch shape ``(B,)`` (``heads="mean"``: the head average) or
    ``(B, H)`` (``"keep"``: a :class:`~graphfilters.graph.SoftmaxAffinity` without mask).

    Examples
    --------
    >>> import torch
    >>> q = torch.randn(2, 3, 5, 4)
    >>> attention_affinity(q, q, 0.5, None, "keep").batch_shape
    (2, 3)
    """
    if mask is None and heads == "keep":
        return SoftmaxAffinity(qh, kh, scale=scale)
    logits = scale * (qh @ kh.transpose(-1, -2))
    if mask is not None:
        logits = logits + mask
    probs = torch.softmax(logits, -1)
    return DenseAffinity(probs.mean(1) if heads == "mean" else probs)


def fold_layernorm(ln: nn.Module, x: Tensor, G: Tensor) -> tuple[Tensor, float]:
    r"""The pre-LN value projection linearized at the captured statistics.

    :math:`\operatorname{LN}(x_i) G = (x_i P)\, \operatorname{diag}(\gamma) G / \sigma_i
    + \text{const}`; with :math:`\bar s = \operatorname{mean}_i 1/\sigma_i` this returns
    :math:`(\bar s\, P \operatorname{diag}(\gamma) G, \bar s)`.

    Shapes
    ------
    ``x`` ``(B, L, C)`` (the layer input), ``G`` ``(C, C_s)`` → ``(C, C_s)``.

    Examples
    --------
    >>> import torch
    >>> ln = torch.nn.LayerNorm(3)
    >>> G, s = fold_layernorm(ln, torch.tensor([[[1.0, 2.0, 3.0]]]), torch.eye(3))
    >>> torch.allclose(G.sum(0), torch.zeros(3), atol=1e-6)     # centred rows
    True
    """
    gamma = getattr(ln, "weight", None)
    s_bar = float(token_scales(ln, x).mean())
    Gg = G.double() if gamma is None else gamma.detach().double()[:, None] * G.double()
    Gc = Gg - Gg.mean(0, keepdim=True)
    return (s_bar * Gc).to(G.dtype), s_bar


def token_scales(ln: nn.Module, x: Tensor) -> Tensor:
    r"""The tokens' LayerNorm scales :math:`1/\sigma_i` at ``x`` ``(B, L, C)``, float64."""
    eps = float(getattr(ln, "eps", 1e-5))
    return 1 / torch.sqrt(x.double().var(-1, unbiased=False) + eps)


class TokenCall(nn.Module):
    """``call(x (b, C, L), **kw)`` from ``fn(tokens (b, L, C), **kw)`` (tuple outputs: the
    first element). The modules ``fn`` uses are registered, so that switching the call to
    eval mode (as the Jacobian and noise measures do) reaches the layer's dropouts too."""

    def __init__(self, fn: Callable[..., Any], *modules: nn.Module | None) -> None:
        super().__init__()
        self.fn = fn
        self.parts = nn.ModuleList([m for m in modules if isinstance(m, nn.Module)])

    def forward(self, x: Tensor, **kw: Tensor) -> Tensor:
        out = self.fn(x.transpose(1, 2), **kw)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.transpose(1, 2)


def _tokens_call(fn: Callable[..., Any], *modules: nn.Module | None) -> TokenCall:
    return TokenCall(fn, *modules)


def _per_sample(t: Tensor | None, B: int) -> Tensor | None:
    """A mask with a leading batch dimension of size ``B`` (broadcast ones expanded)."""
    if t is None:
        return None
    if t.dim() >= 1 and t.shape[0] == B:
        return t
    if t.dim() >= 1 and t.shape[0] == 1:
        return t.expand(B, *t.shape[1:])
    return None


def _attention_capture(
    *, aff: Affinity, v: Tensor, w_o: Tensor, b_o: Tensor | None, G: Tensor,
    b_v: Tensor | None, x: Tensor, heads: str, H: int, d: int, masked: bool,
    call: Callable[..., Tensor], call_kwargs: dict[str, Tensor], layer: str | None,
    layernorm: str | None, output_scale: Tensor | None = None, spec: Any = MHA_SPEC,
    extra: dict[str, Any] | None = None,
) -> Capture:
    """A Capture of multi-head attention (``x`` the input tokens ``(B, L, C)``, ``v`` the
    values ``(B, S, H d)``, ``w_o`` the output projection ``(C_out, H d)``)."""
    W = w_o.detach().T.clone()
    note = ("per-head filter: F = [A_1 Z_1, ..., A_H Z_H] W_o; "
            + ("the affinity is the head average" if heads == "mean"
               else "one affinity per head"))
    info = {"num_heads": H, "head_dim": d, "n_keys": int(v.shape[1]), "masked": masked,
            "note": note, "layer": layer or "none (bare attention module)",
            "layernorm": layernorm or "none"}
    info.update(extra or {})
    scale = None if output_scale is None else output_scale.detach().clone()
    return Capture(
        path="", source="attention", module_type="",
        affinity=aff.detach(), normalization="rw", spec=spec, z=v.detach(),
        weights=[torch.zeros_like(W), W], spatial_shape=(int(x.shape[1]),),
        input=x.detach().transpose(1, 2), output_scale=scale,
        output_shift=None if b_o is None else (
            b_o.detach().clone() if scale is None else (scale * b_o).detach()),
        value_weight=G.detach().clone(),
        value_bias=None if b_v is None else b_v.detach().clone(),
        residual=layer is not None, heads=heads, info=info, call=call,
        call_kwargs={k: t.detach() for k, t in call_kwargs.items() if t is not None},
    )


def _fold(ln: nn.Module | None, x: Tensor, G: Tensor, layernorm: str | None,
          extra: dict[str, Any]) -> Tensor:
    if layernorm == "pre" and ln is not None:
        G, s_bar = fold_layernorm(ln, x, G)
        sc = token_scales(ln, x)
        extra["layernorm_scales"] = f"from {float(sc.min()):.4g} to {float(sc.max()):.4g}"
        extra["layernorm_fold"] = (
            f"G = s_bar P diag(gamma) G_v, s_bar = mean 1/sigma_i = {s_bar:.4g} (LN linearized "
            "at the captured statistics; the Jacobian and noise measures use the exact layer)")
    elif layernorm == "post":
        extra["layernorm_fold"] = ("the LayerNorm after the residual sum is not in the "
                                   "per-frequency maps (a per-token rescaling); the Jacobian "
                                   "and noise measures use the exact layer")
    return G


# ------------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention
# ------------------------------------------------------------------------------------------


def _mha_build(ctx: CallContext) -> Capture | None:
    module: nn.MultiheadAttention = ctx.module  # type: ignore[assignment]
    bound = inspect.signature(module.forward).bind(*ctx.args, **ctx.kwargs)
    bound.apply_defaults()
    a = bound.arguments
    query, key, value = a["query"], a["key"], a["value"]
    if getattr(query, "is_nested", False):
        raise RuntimeError("nested-tensor input: the MHA fast path could not be switched off")
    self_attention = query is key and key is value
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    elif module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    L, B, E = query.shape                                       # now (L, B, E)
    H = module.num_heads
    d = E // H
    if module._qkv_same_embed_dim:
        w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    b_q = b_k = b_v = None
    if module.in_proj_bias is not None:
        b_q, b_k, b_v = module.in_proj_bias.chunk(3)
    q = nn.functional.linear(query, w_q, b_q)
    k = nn.functional.linear(key, w_k, b_k)
    v = nn.functional.linear(value, w_v, b_v)
    attn_mask, kpm = a.get("attn_mask"), a.get("key_padding_mask")
    if module.bias_k is not None:
        k = torch.cat([k, module.bias_k.expand(1, B, E)])
        v = torch.cat([v, module.bias_v.expand(1, B, E)])
        attn_mask = None if attn_mask is None else nn.functional.pad(attn_mask, (0, 1))
        kpm = None if kpm is None else nn.functional.pad(kpm, (0, 1))
    qh = q.reshape(L, B, H, d).permute(1, 2, 0, 3)              # (B, H, L, d)
    kh = k.reshape(k.shape[0], B, H, d).permute(1, 2, 0, 3)
    if module.add_zero_attn:
        kh = torch.cat([kh, kh.new_zeros(B, H, 1, d)], 2)
        v = torch.cat([v, v.new_zeros(1, B, E)])
        attn_mask = None if attn_mask is None else nn.functional.pad(attn_mask, (0, 1))
        kpm = None if kpm is None else nn.functional.pad(kpm, (0, 1))
    n_keys = kh.shape[2]
    if bool(a.get("is_causal")) and attn_mask is None:
        attn_mask = torch.ones(L, n_keys, dtype=torch.bool, device=q.device).triu(1)
    mask = None
    if attn_mask is not None:
        m = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(B, H, L, n_keys)
        mask = additive_mask(m, "masked", qh.dtype)
    if kpm is not None:
        km = additive_mask(kpm.reshape(B, 1, 1, n_keys), "masked", qh.dtype)
        mask = km if mask is None else mask + km
    aff = attention_affinity(qh, kh, 1.0 / math.sqrt(d), mask, ctx.heads)

    # the layer around it (self-attention of nn.TransformerEncoderLayer / DecoderLayer)
    parent = ctx.parent
    layer = layernorm = None
    ln = None
    x_tokens = query.transpose(0, 1)                            # (B, L, E)
    if (isinstance(parent, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
            and getattr(parent, "self_attn", None) is module and self_attention
            and ctx.parent_args is not None and not unbatched):
        src = ctx.parent_args[0] if ctx.parent_args else next(iter(ctx.parent_kwargs.values()))
        x_tokens = src if module.batch_first else src.transpose(0, 1)
        ln = parent.norm1
        layernorm = "pre" if parent.norm_first else "post"
        layer = (f"{type(parent).__name__} (norm_first={parent.norm_first}): "
                 + ("x + SA(norm1(x))" if parent.norm_first else "norm1(x + SA(x))"))
    fixed_mask = a.get("attn_mask") if (a.get("attn_mask") is not None
                                        and a["attn_mask"].dim() == 2) else None
    is_causal = bool(a.get("is_causal"))
    batch_first = module.batch_first
    kw: dict[str, Tensor] = {}
    if kpm is not None and a.get("key_padding_mask") is not None:
        kw["key_padding_mask"] = a["key_padding_mask"]
    if a.get("attn_mask") is not None and a["attn_mask"].dim() == 3:
        kw["attn_mask"] = a["attn_mask"].reshape(B, H, L, -1)

    def attend(t: Tensor, key_padding_mask: Tensor | None = None,
               attn_mask: Tensor | None = None) -> Tensor:
        am = fixed_mask if attn_mask is None else attn_mask.reshape(-1, *attn_mask.shape[2:])
        tt = t if batch_first else t.transpose(0, 1)
        out = module(tt, tt, tt, key_padding_mask=key_padding_mask, attn_mask=am,
                     need_weights=False, is_causal=is_causal and am is not None)[0]
        return out if batch_first else out.transpose(0, 1)

    if layer is None:
        call = _tokens_call(attend, module)
    elif parent.norm_first:
        call = _tokens_call(lambda t, **k: t + parent.dropout1(attend(ln(t), **k)), parent)
    else:
        call = _tokens_call(lambda t, **k: ln(t + parent.dropout1(attend(t, **k))), parent)
    extra = {"self_attention": self_attention}
    G = _fold(ln, x_tokens, w_v.detach().T, layernorm, extra)
    return _attention_capture(
        aff=aff, v=v.transpose(0, 1), w_o=module.out_proj.weight, b_o=module.out_proj.bias,
        G=G, b_v=b_v, x=x_tokens, heads=ctx.heads, H=H, d=d,
        masked=mask is not None, call=call, call_kwargs=kw, layer=layer,
        layernorm=layernorm, extra=extra)


# ------------------------------------------------------------------------------------------
# Hugging Face transformers
# ------------------------------------------------------------------------------------------


def _is_linear(m: nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(m, n, None), nn.Linear) for n in names)


def _hf_matches(m: nn.Module) -> bool:
    cfg = getattr(m, "config", None)
    if cfg is None or not hasattr(cfg, "_attn_implementation"):
        return False
    return _is_linear(m, "q_proj", "k_proj", "v_proj", "o_proj") or _is_linear(
        m, "query", "key", "value")


def _hf_build(ctx: CallContext) -> Capture | None:
    m = ctx.module
    h = ctx.argument("hidden_states", 0)
    mask = ctx.argument("attention_mask", 1)
    if ctx.kwargs.get("encoder_hidden_states") is not None or getattr(
            m, "is_cross_attention", False):
        return None                                  # cross-attention: not a graph on x
    if ctx.kwargs.get("position_embeddings") is not None:
        raise NotImplementedError(
            "rotary position embeddings are applied to q and k inside the module; register "
            "a recognizer for this family")
    fused = hasattr(m, "q_proj")
    lq, lk, lv = (m.q_proj, m.k_proj, m.v_proj) if fused else (m.query, m.key, m.value)
    H = int(getattr(m, "num_attention_heads", None) or m.config.num_attention_heads)
    d = int(getattr(m, "head_dim", None) or getattr(m, "attention_head_size", None)
            or lq.out_features // H)
    scale = float(getattr(m, "scaling", None) or d ** -0.5)
    B, L, _ = h.shape
    qh = lq(h).view(B, L, -1, d).transpose(1, 2)
    kh = lk(h).view(B, L, -1, d).transpose(1, 2)
    v = lv(h)
    add = additive_mask(mask, "attend", qh.dtype)
    if add is None and getattr(m, "is_causal", False):
        add = additive_mask(torch.ones(L, L, dtype=torch.bool, device=h.device).tril(),
                            "attend", qh.dtype)
    aff = attention_affinity(qh, kh, scale, add, ctx.heads)
    parent = ctx.parent
    mask_b = _per_sample(mask, B)
    kw = {} if mask_b is None else {"attention_mask": mask_b}

    def attend(t: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        out = m(t, attention_mask=attention_mask)
        return out[0] if isinstance(out, (tuple, list)) else out

    layer = layernorm = None
    ln = None
    x = h
    gamma = None
    if fused:
        out_proj = m.o_proj
        norm_name = next((n for n in ("layernorm_before", "norm1") if isinstance(
            getattr(parent, n, None), nn.LayerNorm)), None)
        if (getattr(parent, "attention", None) is m and norm_name is not None
                and ctx.parent_args is not None):
            ln, layernorm = getattr(parent, norm_name), "pre"
            x = ctx.parent_args[0] if ctx.parent_args else ctx.parent_kwargs["hidden_states"]
            ls = getattr(parent, "layer_scale1", None)        # DINOv2's LayerScale
            gamma = getattr(ls, "lambda1", None)
            if isinstance(gamma, Tensor):
                layer = f"{type(parent).__name__}: x + layer_scale1(Attn({norm_name}(x)))"
                call = _tokens_call(lambda t, **k: t + ls(attend(ln(t), **k)), m, ln, ls)
            else:
                gamma = None
                layer = f"{type(parent).__name__}: x + Attn({norm_name}(x))"
                call = _tokens_call(lambda t, **k: t + attend(ln(t), **k), m, ln)
        else:
            call = _tokens_call(attend, m)
    else:
        # BERT: parent.self / parent.output; transformers 4.x ViT: parent.attention / .output
        owns = getattr(parent, "self", None) is m or getattr(parent, "attention", None) is m
        out_mod = getattr(parent, "output", None) if owns else None
        out_proj = getattr(out_mod, "dense", None)
        if not isinstance(out_proj, nn.Linear):
            raise ValueError(f"{type(m).__name__}: no output projection (parent .output.dense)")
        if isinstance(getattr(out_mod, "LayerNorm", None), nn.LayerNorm):
            layernorm = "post"
            layer = f"{type(parent).__name__}: LayerNorm(x + dense(Attn(x)))"
            call = _tokens_call(lambda t, **k: out_mod(attend(t, **k), t), m, out_mod)
        else:
            call = _tokens_call(lambda t, **k: out_proj(attend(t, **k)), m, out_mod)
    extra = {"attn_implementation": str(getattr(m.config, "_attn_implementation", ""))}
    G = _fold(ln, x, lv.weight.detach().T, layernorm, extra)
    return _attention_capture(
        aff=aff, v=v, w_o=out_proj.weight, b_o=out_proj.bias, G=G, b_v=lv.bias, x=x,
        heads=ctx.heads, H=H, d=d, masked=add is not None, call=call, call_kwargs=kw,
        layer=layer, layernorm=layernorm, output_scale=gamma, extra=extra)


# ------------------------------------------------------------------------------------------
# timm
# ------------------------------------------------------------------------------------------


def _timm_matches(m: nn.Module) -> bool:
    return (_is_linear(m, "qkv", "proj") and isinstance(getattr(m, "num_heads", None), int)
            and hasattr(m, "scale"))


def _identity(m: Any) -> bool:
    return m is None or isinstance(m, nn.Identity)


def _timm_build(ctx: CallContext) -> Capture | None:
    m = ctx.module
    h = ctx.argument("x", 0)
    mask = ctx.argument("attn_mask", 1)
    B, L, C = h.shape
    H = m.num_heads
    qkv = m.qkv(h).reshape(B, L, 3, H, -1).permute(2, 0, 3, 1, 4)
    qh, kh, vh = qkv.unbind(0)
    d = qh.shape[-1]
    qn, kn = getattr(m, "q_norm", None), getattr(m, "k_norm", None)
    qh = qh if _identity(qn) else qn(qh)
    kh = kh if _identity(kn) else kn(kh)
    add = additive_mask(mask, "attend", qh.dtype)
    aff = attention_affinity(qh, kh, float(m.scale), add, ctx.heads)
    v = vh.transpose(1, 2).reshape(B, L, H * d)
    w_v = m.qkv.weight[2 * H * d:]
    b_v = None if m.qkv.bias is None else m.qkv.bias[2 * H * d:]
    extra: dict[str, Any] = {}
    if not _identity(getattr(m, "norm", None)):
        extra["output_norm"] = "a norm before proj: the weights ignore it (not linear)"
    mask_b = _per_sample(mask, B)
    kw = {} if mask_b is None else {"attn_mask": mask_b}
    parent = ctx.parent
    layer = layernorm = None
    ln = None
    x = h
    gamma = None
    if (getattr(parent, "attn", None) is m and isinstance(getattr(parent, "norm1", None),
                                                           nn.Module)
            and ctx.parent_args is not None):
        ln, layernorm = parent.norm1, "pre"
        ls = getattr(parent, "ls1", None)
        gamma = getattr(ls, "gamma", None) if not _identity(ls) else None
        x = ctx.parent_args[0] if ctx.parent_args else ctx.parent_kwargs["x"]
        layer = f"{type(parent).__name__}: x + ls1(attn(norm1(x)))"

        def branch(t: Tensor, attn_mask: Tensor | None = None) -> Tensor:
            y = m(ln(t), attn_mask=attn_mask) if attn_mask is not None else m(ln(t))
            return t + (y if _identity(ls) else ls(y))
        call = _tokens_call(branch, m, ln, ls)
    else:
        call = _tokens_call(lambda t, attn_mask=None: m(t, attn_mask=attn_mask)
                            if attn_mask is not None else m(t), m)
    G = _fold(ln, x, w_v.detach().T, layernorm, extra)
    return _attention_capture(
        aff=aff, v=v, w_o=m.proj.weight, b_o=m.proj.bias, G=G, b_v=b_v, x=x, heads=ctx.heads,
        H=H, d=d, masked=add is not None, call=call, call_kwargs=kw, layer=layer,
        layernorm=layernorm, output_scale=gamma, extra=extra)


# ------------------------------------------------------------------------------------------
# mmcv NonLocal1d/2d/3d
# ------------------------------------------------------------------------------------------


def _mmcv_matches(m: nn.Module) -> bool:
    return (any(c.__name__ == "_NonLocalNd" for c in type(m).__mro__)
            and hasattr(m, "g") and hasattr(m, "conv_out") and hasattr(m, "mode"))


def _conv(mod: nn.Module) -> nn.Module:
    """The convolution inside a ConvModule (or a Sequential(ConvModule, pool))."""
    if isinstance(mod, nn.Sequential):
        mod = mod[0]
    return getattr(mod, "conv", mod)


def _mmcv_build(ctx: CallContext) -> Capture | None:
    m = ctx.module
    x = ctx.argument("x", 0)
    n = x.shape[0]
    g_x = m.g(x).view(n, m.inter_channels, -1).permute(0, 2, 1)          # (B, N_k, C_s)
    mode = m.mode
    tokens = x.view(n, m.in_channels, -1).permute(0, 2, 1)
    if mode == "gaussian":
        theta = tokens
        phi = m.phi(x).view(n, m.in_channels, -1) if m.sub_sample else tokens.transpose(1, 2)
        aff: Affinity = SoftmaxAffinity(theta, phi.transpose(1, 2), scale=1.0)
        norm = "rw"
    elif mode == "embedded_gaussian":
        theta = m.theta(x).view(n, m.inter_channels, -1).permute(0, 2, 1)
        phi = m.phi(x).view(n, m.inter_channels, -1).permute(0, 2, 1)
        scale = theta.shape[-1] ** -0.5 if m.use_scale else 1.0
        aff, norm = SoftmaxAffinity(theta, phi, scale=scale), "rw"
    else:
        if mode == "concatenation":
            theta = m.theta(x).view(n, m.inter_channels, -1, 1)
            phi = m.phi(x).view(n, m.inter_channels, 1, -1)
        else:
            theta = m.theta(x).view(n, m.inter_channels, -1).permute(0, 2, 1)
            phi = m.phi(x).view(n, m.inter_channels, -1)
        aff, norm = DenseAffinity(getattr(m, mode)(theta, phi)), "none"
    conv = _conv(m.conv_out)
    W = conv.weight.detach().reshape(conv.weight.shape[0], -1)            # (C, C_s)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(W.shape[0],
                                                                      device=W.device)
    bn = getattr(m.conv_out, "norm", None)
    scale_out = None
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
        s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias.detach() + s * (b - bn.running_mean)
        scale_out = s
    else:
        shift = b
    gconv = _conv(m.g)
    G = gconv.weight.detach().reshape(gconv.weight.shape[0], -1).T
    sub = bool(getattr(m, "sub_sample", False))
    spec = get_spec("nl", mode=mode)
    info = {"mode": mode, "sub_sampled": sub, "layer": "x + conv_out(A g(x))",
            "layernorm": "none"}
    return Capture(
        path="", source="nonlocal", module_type="", affinity=aff.detach(),
        normalization=norm, spec=spec, z=g_x.detach(),
        weights=[torch.zeros_like(W.T), W.T.clone()], spatial_shape=tuple(x.shape[2:]),
        input=x.detach(), output_scale=scale_out, output_shift=shift,
        value_weight=G.clone(), value_bias=None if gconv.bias is None else
        gconv.bias.detach().clone(), residual=True, info=info)


# ------------------------------------------------------------------------------------------
# Registration (later registrations are tried first; user recognizers go before all)
# ------------------------------------------------------------------------------------------

register_recognizer(Recognizer(
    "torch.nn.MultiheadAttention", lambda m: isinstance(m, nn.MultiheadAttention), _mha_build,
    targets="torch >= 2.1 (nn.MultiheadAttention, nn.TransformerEncoderLayer/DecoderLayer)"))
register_recognizer(Recognizer(
    "transformers", _hf_matches, _hf_build,
    targets="transformers 4.48-5.x self-attention (q/k/v/o_proj or query/key/value + "
            "SelfOutput), any attn_implementation, no rotary embeddings"))
register_recognizer(Recognizer(
    "timm", _timm_matches, _timm_build,
    targets="timm 0.9-1.0 Attention (qkv, num_heads, scale, q_norm/k_norm, proj) in a Block"))
register_recognizer(Recognizer(
    "mmcv", _mmcv_matches, _mmcv_build, source="nonlocal",
    targets="mmcv 2.x / mmcv-lite NonLocal1d/2d/3d"))
