r"""Attention held fixed: the mechanism behind every *frozen* Jacobian.

:func:`attention_held_fixed` makes the softmax (``torch.softmax``, ``F.softmax``,
``Tensor.softmax``) and ``F.scaled_dot_product_attention`` return their affinity detached
from the graph while it is active in the calling thread, so a model written by someone else
runs with its attention weights treated as constants; :func:`frozen_function` wraps a module
or function so (``nn.MultiheadAttention`` through its own frozen form).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .recognizers import additive_mask

__all__ = [
    "attention_held_fixed",
    "held_count",
    "mha_frozen",
]


def mha_frozen(module: nn.MultiheadAttention, x: Tensor) -> Callable[[Tensor], Tensor]:
    """Self-attention in the ``(B, E, L)`` layout with the attention weights of ``x`` fixed."""
    E, H = module.embed_dim, module.num_heads
    if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
        raise ValueError("affinity='frozen' supports nn.MultiheadAttention with a packed "
                         "in_proj and no bias_k/add_zero_attn")
    w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    b_q, b_k, b_v = (module.in_proj_bias.chunk(3) if module.in_proj_bias is not None
                     else (None, None, None))
    d = E // H

    def heads(t: Tensor) -> Tensor:                       # (B, L, E) -> (B, H, L, d)
        return t.reshape(t.shape[0], t.shape[1], H, d).transpose(1, 2)

    with torch.no_grad():
        q0 = x.transpose(1, 2)
        qh = heads(nn.functional.linear(q0, w_q, b_q))
        kh = heads(nn.functional.linear(q0, w_k, b_k))
        probs = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), -1).detach()

    def fn(t: Tensor) -> Tensor:
        vh = heads(nn.functional.linear(t.transpose(1, 2), w_v, b_v))
        o = (probs @ vh).transpose(1, 2).reshape(t.shape[0], t.shape[2], E)
        return module.out_proj(o).transpose(1, 2)
    return fn


_HELD = threading.local()            # per thread: the attention_held_fixed() contexts entered
_PATCH_LOCK = threading.Lock()
_PATCH_USERS = 0
_ORIGINALS: tuple[Any, ...] = ()


def _modes() -> list[tuple[bool, bool]]:
    """``(affinity, values)`` of each context this thread is inside, innermost last."""
    if not hasattr(_HELD, "modes"):
        _HELD.modes = []
    return _HELD.modes


def _held() -> bool:
    return bool(_modes())


def _held_parts() -> tuple[bool, bool]:
    """``(affinity, values)``: what the innermost context of this thread holds."""
    return _modes()[-1]


def held_count() -> int:
    """How many softmax/SDPA results the wrappers detached in this thread."""
    return getattr(_HELD, "count", 0)


def _detached(out: Tensor) -> Tensor:
    if not _held() or not _held_parts()[0]:
        return out
    _HELD.count = held_count() + 1
    return out.detach()


def _held_softmax(*args: Any, **kwargs: Any) -> Tensor:
    return _detached(_ORIGINALS[0](*args, **kwargs))


def _held_f_softmax(*args: Any, **kwargs: Any) -> Tensor:
    return _detached(_ORIGINALS[1](*args, **kwargs))


def _held_t_softmax(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return _detached(_ORIGINALS[2](self, *args, **kwargs))


def _held_sdpa(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> Tensor:
    if not _held():                  # (enable_gqa passed only when set: torch < 2.5 lacks it)
        extra = {"enable_gqa": True} if enable_gqa else {}
        return _ORIGINALS[3](query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                             is_causal=is_causal, scale=scale, **extra)
    if dropout_p:
        raise ValueError("attention_held_fixed: dropout in attention (run in eval mode)")
    affinity, values = _held_parts()
    if values:
        value = value.detach()
    if not affinity:                 # the values held alone: SDPA itself (its fast kernels)
        _HELD.count = held_count() + 1
        extra = {"enable_gqa": True} if enable_gqa else {}
        return _ORIGINALS[3](query, key, value, attn_mask=attn_mask, is_causal=is_causal,
                             scale=scale, **extra)
    L, S = query.shape[-2], key.shape[-2]
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(rep, -3)
        value = value.repeat_interleave(rep, -3)
    s = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = (query @ key.transpose(-2, -1)) * s
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        logits = logits + additive_mask(causal, "attend", logits.dtype)
    if attn_mask is not None:            # SDPA's boolean masks: True = attend
        logits = logits + additive_mask(attn_mask, "attend", logits.dtype)
    return _detached(_ORIGINALS[0](logits, -1)) @ value


@contextmanager
def attention_held_fixed(affinity: bool = True, values: bool = False) -> Iterable[None]:
    r"""Within this context, attention probabilities are constants for autograd.

    ``values=True`` also holds the values SDPA applies them to; ``affinity=False,
    values=True`` holds the values alone (the probabilities live: the Jacobian through the
    affinity, see :func:`~analysis.stability.jacobian.affinity_path`). The values of an
    eager ``softmax(...) @ V`` are not seen here (:func:`~analysis.observe.hold_values`
    holds them where the computation is watched).

    Every way the supported libraries form attention probabilities is wrapped so that its
    result is detached: ``torch.softmax``, ``torch.nn.functional.softmax`` and
    ``Tensor.softmax`` (eager attention: Hugging Face ``eager``, ``nn.MultiheadAttention`` with
    weights, mmcv ``NonLocal2d``), and ``torch.nn.functional.scaled_dot_product_attention``
    (Hugging Face ``sdpa``, timm, ``nn.MultiheadAttention`` without weights), replaced by
    :math:`\operatorname{sg}(\operatorname{softmax}(QK^T s + M))\,V`. A module run inside it
    computes its usual output, and its derivative at the input is the frozen-affinity
    Jacobian :math:`J_{fix}` (the affinity's dependence on the input dropped); used by
    :func:`frozen_function` for captures re-run through ``Capture.call``.

    Only the thread that entered the context is affected: the wrappers are installed while
    any thread is inside one, and detach only for a thread that is (other threads, e.g. a
    training loop, keep their gradients). Contexts nest.

    Examples
    --------
    >>> import torch
    >>> q = torch.randn(1, 1, 3, 2, requires_grad=True)
    >>> with attention_held_fixed():
    ...     out = torch.nn.functional.scaled_dot_product_attention(q, q.detach(), q.detach())
    >>> out.requires_grad                 # only through the values
    False
    """
    import torch.nn.functional as F

    global _PATCH_USERS, _ORIGINALS
    with _PATCH_LOCK:
        if _PATCH_USERS == 0:
            _ORIGINALS = (torch.softmax, F.softmax, torch.Tensor.softmax,
                          F.scaled_dot_product_attention)
            torch.softmax, F.softmax, torch.Tensor.softmax = (
                _held_softmax, _held_f_softmax, _held_t_softmax)
            F.scaled_dot_product_attention = _held_sdpa
        _PATCH_USERS += 1
    _modes().append((bool(affinity), bool(values)))
    try:
        yield
    finally:
        _modes().pop()
        with _PATCH_LOCK:
            _PATCH_USERS -= 1
            if _PATCH_USERS == 0:
                (torch.softmax, F.softmax, torch.Tensor.softmax,
                 F.scaled_dot_product_attention) = _ORIGINALS
