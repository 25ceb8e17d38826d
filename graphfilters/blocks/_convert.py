"""Copying weights between original-form modules (or checkpoints) and unified blocks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

#: ``(unified_name, source_name, scale)``: ``unified = scale * source`` (reshaped).
WeightMap = list[tuple[str, str, float]]

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def conv_map(unified: str, source: str, bias: bool) -> WeightMap:
    """Entries for a 1×1 convolution (weight and, if ``bias``, bias)."""
    out = [(f"{unified}.weight", f"{source}.weight", 1.0)]
    if bias:
        out.append((f"{unified}.bias", f"{source}.bias", 1.0))
    return out


def bn_map(unified: str, source: str) -> WeightMap:
    """Entries for a BatchNorm (parameters and running statistics)."""
    return [(f"{unified}.{k}", f"{source}.{k}", 1.0) for k in BN_KEYS]


def match_module(block: nn.Module, like: nn.Module | Tensor | None) -> nn.Module:
    """Move ``block`` to the floating dtype and device of ``like`` (a module or tensor)."""
    if isinstance(like, nn.Module):
        like = next((t for t in like.parameters() if t.is_floating_point()), None)
    if like is None:
        return block
    return block.to(dtype=like.dtype, device=like.device)


def copy_weights(
    block: nn.Module, source: Mapping[str, Tensor], mapping: Iterable[tuple[str, str, float]]
) -> None:
    """Copy ``source[src] * scale`` into ``block``'s parameter or buffer ``dst``.

    Raises
    ------
    ValueError
        If a source tensor is missing or has the wrong number of elements.
    """
    targets = dict(block.named_parameters())
    targets.update(dict(block.named_buffers()))
    with torch.no_grad():
        for dst, src, scale in mapping:
            if src not in source:
                raise ValueError(f"source has no tensor {src!r} (needed for {dst!r})")
            if dst not in targets:
                raise ValueError(f"{type(block).__name__} has no parameter or buffer {dst!r}")
            t, s = targets[dst], source[src]
            if t.numel() != s.numel():
                raise ValueError(
                    f"{src!r} has shape {tuple(s.shape)}, which does not fit {dst!r} of shape "
                    f"{tuple(t.shape)}"
                )
            s = s.reshape(t.shape).to(dtype=t.dtype, device=t.device)
            t.copy_(s * scale if scale != 1.0 else s)
