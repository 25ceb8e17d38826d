r"""Reading an affinity off the operation that applies it: transposes that swap the last two
axes, ``einsum`` equations of the form :math:`P V` over the key axis, and
``scaled_dot_product_attention`` (its affinity recomputed from :math:`Q, K`, the mask and the
scale, grouped-query heads repeated). Used by :class:`analysis.observe.AffinityWatcher`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EINSUM_MAX_ENTRIES", "Mark", "einsum_affinity", "einsum_parts", "repeat_kv",
           "sdpa_affinity", "swaps_last_two"]

#: the most entries an affinity read from an ``einsum`` may have (it is formed densely)
EINSUM_MAX_ENTRIES = 2 ** 26


@dataclass
class Mark:
    """What a tensor is to the watcher: an affinity (or a factor of one) of ``kind``, made by
    ``owner`` as ``how``; ``transposed`` when its last two axes were swapped since."""

    kind: str
    owner: str
    how: str
    transposed: bool = False
    factor: Tensor | None = None          # gather: the factor F^T (d, M) over positions
    keys: int = 0
    values: Tensor | None = None          # gather: the values V (M, c) it gathered
    normalized: bool = False              # gather: F^T is a softmax over positions


def swaps_last_two(func: Callable, args: tuple) -> bool:
    """Whether a transpose/permute call swaps the last two axes."""
    if func in (Tensor.t, torch.t, Tensor.mT):
        return True
    try:
        if func in (Tensor.permute, torch.permute):
            dims = args[1:] if len(args) > 2 else (args[1] if len(args) > 1 else ())
            dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) \
                else tuple(dims)
            nd = len(dims)
            return nd >= 2 and dims[-1] % nd == nd - 2 and dims[-2] % nd == nd - 1
        d0, d1 = int(args[1]), int(args[2])
        nd = args[0].dim()
        return {d0 % nd, d1 % nd} == {nd - 1, nd - 2}
    except Exception:  # noqa: BLE001
        return False


def einsum_parts(args: tuple) -> tuple[str, list[Any]]:
    """``(equation, operands)`` of ``torch.einsum(eq, *ops)`` or ``torch.einsum(eq, [ops])``."""
    eq = args[0] if args and isinstance(args[0], str) else ""
    rest = list(args[1:])
    ops = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
    return eq, ops


def einsum_affinity(args: tuple, get: Callable[[Any], Mark | None], pos: Any
                     ) -> tuple[int, Mark, Callable[[], tuple]] | None:
    """Read ``einsum(eq, P, V)`` as an affinity application, or ``None``.

    ``P`` is a marked affinity whose last (key) letter is summed and appears in ``V``; the
    letters of ``V`` kept in the output and absent from ``P`` are channels; batch letters are
    the largest set of letters shared by all three that leaves a row count (the product of
    the output's other letters) among the module's positions. Returns the index of ``P``, its
    mark, and a function giving ``(affinity (*batch, N, M), values (*batch, M, c), to_rows)``
    with ``to_rows`` laying the einsum output out as ``(*batch, N, c)``.
    """
    eq, ops = einsum_parts(args)
    eq = eq.replace(" ", "")
    if "..." in eq or "->" not in eq or len(ops) != 2 \
            or not all(isinstance(o, Tensor) for o in ops):
        return None
    lhs, osub = eq.split("->")
    subs = lhs.split(",")
    if len(subs) != 2 or any(len(s) != o.dim() or len(set(s)) != len(s)
                             for s, o in zip(subs, ops)):
        return None
    for pi in (0, 1):
        P, V = ops[pi], ops[1 - pi]
        mark = get(P)
        if mark is None or mark.kind == "gather" or mark.transposed or isinstance(V, nn.Parameter):
            continue
        ps, vs = subs[pi], subs[1 - pi]
        key = ps[-1]
        chan = [c for c in vs if c in osub and c not in ps]
        if key in osub or key not in vs or not chan:
            continue
        size = {c: int(P.shape[i]) for i, c in enumerate(ps)}
        size.update({c: int(V.shape[i]) for i, c in enumerate(vs)})
        shared = [c for c in osub if c in ps and c in vs]
        for k in range(len(shared), -1, -1):
            for batch in combinations(shared, k):
                rows = [c for c in osub if c not in chan and c not in batch]
                cols = [c for c in vs if c not in chan and c not in batch]
                if not all(c in ps for c in rows + cols) \
                        or set(ps) - set(batch) - set(rows) - set(cols):
                    continue
                n = math.prod(size[c] for c in rows)
                if not rows or not (n in pos or n == 1):
                    continue
                return pi, mark, _einsum_reader(P, V, ps, vs, osub, list(batch), rows, cols,
                                                chan, size)
    return None


def _einsum_reader(P: Tensor, V: Tensor, ps: str, vs: str, osub: str, batch: list[str],
                   rows: list[str], cols: list[str], chan: list[str], size: dict[str, int]
                   ) -> Callable[[], tuple]:
    bs = [size[c] for c in batch]
    n = math.prod(size[c] for c in rows)
    m = math.prod(size[c] for c in cols)
    c_out = math.prod(size[c] for c in chan)

    def to_rows(out: Tensor) -> Tensor:
        perm = [osub.index(c) for c in batch + rows + chan]
        return out.permute(perm).reshape(*bs, n, c_out)

    def to_vals(t: Tensor) -> Tensor:
        return t.permute([vs.index(c) for c in batch + cols + chan]).reshape(*bs, m, c_out)

    def read() -> tuple:
        vals = to_vals(V.detach())
        if math.prod(bs) * n * m > EINSUM_MAX_ENTRIES:
            return None, vals, to_rows, to_vals
        fresh = next(c for c in "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA"
                     if c not in ps + vs + osub)
        basis = torch.eye(m, dtype=P.dtype, device=P.device).reshape(
            *[size[c] for c in cols], m).expand(*bs, *[size[c] for c in cols], m)
        eq = f"{ps},{''.join(batch + cols)}{fresh}->{''.join(batch + rows)}{fresh}"
        aff = torch.einsum(eq, P.detach(), basis).reshape(*bs, n, m)
        return aff, vals, to_rows, to_vals

    return read


def repeat_kv(q: Tensor, k: Tensor, v: Tensor, gqa: bool) -> tuple[Tensor, Tensor]:
    if gqa and k.dim() >= 3 and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        return k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    return k, v


def sdpa_affinity(q: Tensor, k: Tensor, attn_mask: Tensor | None = None,
                  is_causal: bool = False, scale: float | None = None,
                  enable_gqa: bool = False) -> tuple[Tensor, str]:
    r"""The attention map that :func:`torch.nn.functional.scaled_dot_product_attention`
    applies, :math:`\operatorname{softmax}(s\,QK^T + M)`, and a description of what was read.

    Boolean masks: ``True`` attends; float masks are added; ``is_causal`` keeps the lower
    triangle (top-left aligned, as SDPA); ``enable_gqa`` repeats the key heads. Rows with no
    key left are 0 (SDPA's math path gives NaN there).

    Shapes
    ------
    ``q`` ``(..., L, E)``, ``k`` ``(..., S, E)`` → ``(..., L, S)`` in at least float32.

    Examples
    --------
    >>> q = torch.randn(1, 2, 3, 4)
    >>> P, how = sdpa_affinity(q, q, is_causal=True)
    >>> bool(P[0, 0, 0, 1] == 0), how
    (True, 'sdpa: is_causal, scale 0.5')
    """
    dt = torch.promote_types(q.dtype, torch.float32)
    kk, _ = repeat_kv(q, k, k, enable_gqa)
    L, S = q.shape[-2], kk.shape[-2]
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    logits = (q.to(dt) @ kk.to(dt).transpose(-2, -1)) * s
    parts = []
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
        parts.append("is_causal")
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
            parts.append("boolean mask")
        else:
            logits = logits + attn_mask.to(dt)
            parts.append("float mask")
    if enable_gqa and kk.shape[-3] != k.shape[-3]:
        parts.append(f"keys repeated {kk.shape[-3] // k.shape[-3]}x (GQA)")
    P = torch.softmax(logits, -1).nan_to_num(0.0)
    return P, "sdpa: " + ", ".join(parts + [f"scale {s:.4g}"])
