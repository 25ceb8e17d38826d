r"""Captures built from observations (:mod:`analysis.observe`): attention that no recognizer
names, read from what the model computed.

An observed capture holds the affinity as the model applied it, the values it was applied
to, the owning module's input and a ``call`` that re-runs the owner (its other arguments
kept: masks, rotary tables, sizes), so that the spectra of the affinity and the black-box
full and frozen Jacobians of the owner are measured. Weights are not read (``weights`` is
``None``): the filter-based measures (responses, weight spectra, linearized stability) are
``n/a`` for it, with that reason.

Layout of the affinity: the leading axes of the applied tensor are read as
``(batch x windows, heads)`` (4-D, the usual ``(B, H, N, M)``; windowed attention gives
``B * n_windows`` rows), or ``batch x heads`` (3-D, ``bmm`` attention, when the owner has a
``num_heads`` equal to the factor), else ``batch x windows``. Windows of one image are put on
the diagonal of one block-diagonal affinity (nodes in window order), so a sample is an image.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from graphfilters.graph import DenseAffinity

from .observe import Observation

__all__ = ["observed_capture", "layout"]


def layout(P: Tensor, batch: int, num_heads: int | None) -> tuple[int, int]:
    """``(windows, heads)`` of an applied affinity ``P`` of a batch of ``batch`` samples.

    Examples
    --------
    >>> layout(torch.zeros(8, 3, 4, 4), 2, None)
    (4, 3)
    """
    lead = tuple(P.shape[:-2])
    total = math.prod(lead) if lead else 1
    if total % batch:
        raise ValueError(f"the affinity's leading shape {lead} is not a multiple of the batch "
                         f"{batch}: cannot tell its samples apart")
    per = total // batch
    if len(lead) >= 2:
        heads = int(lead[-1])
        return per // heads, heads
    if num_heads and per == num_heads:
        return 1, per
    return per, 1


def _block_diag(P: Tensor) -> Tensor:
    """``(B, W, H, n, m)`` → ``(B, H, W n, W m)`` with the windows on the diagonal."""
    B, W, H, n, m = P.shape
    if W == 1:
        return P[:, 0]
    out = P.new_zeros(B, H, W * n, W * m)
    for w in range(W):
        out[:, :, w * n:(w + 1) * n, w * m:(w + 1) * m] = P[:, w]
    return out


def observed_capture(path: str, module: nn.Module | None, obs: list[Observation],
                     call_args: tuple[tuple, dict] | None, batch: int, heads: str
                     ) -> dict[str, Any]:
    """The fields of the :class:`~analysis.capture.Capture` of the observations ``obs`` of
    one module call (a batch of ``batch`` samples). Several applications in one call (heads
    computed in a loop) are stacked as heads when they have one shape."""

    shapes = {tuple(o.affinity.shape) for o in obs}
    if len(shapes) != 1:
        raise ValueError(f"{len(obs)} affinity applications of different shapes {sorted(shapes)}"
                         " in one call")
    nh = getattr(module, "num_heads", None) if module is not None else None
    nh = nh if isinstance(nh, int) else None
    parts_a, parts_v = [], []
    for o in obs:
        W, H = layout(o.affinity, batch, nh)
        n, m = o.affinity.shape[-2:]
        parts_a.append(o.affinity.reshape(batch, W, H, n, m).float())
        c = o.values.shape[-1]
        parts_v.append(o.values.reshape(batch, W, H, m, c).float())
    P = torch.cat(parts_a, 2) if len(parts_a) > 1 else parts_a[0]      # (B, W, H, n, m)
    V = torch.cat(parts_v, 2) if len(parts_v) > 1 else parts_v[0]      # (B, W, H, m, c)
    B, W, H, n, m = P.shape
    A = _block_diag(P)                                                  # (B, H, N, M)
    z = V.permute(0, 1, 3, 2, 4).reshape(B, W * m, H * V.shape[-1])   # (B, M, H c)
    aff = DenseAffinity(A.mean(1) if heads == "mean" else A)
    err = max(o.error for o in obs)
    kinds = sorted({o.kind for o in obs})
    info: dict[str, Any] = {
        "family": "observed", "observed": ", ".join(kinds),
        "how": "; ".join(sorted({o.how for o in obs})), "num_heads": H, "windows": W,
        "n_keys": W * m, "applications": len(obs),
        "layer": "the owning module only (no skip connection identified)",
        "layernorm": "none",
        "note": ("read by watching the computation; the owner's weights are not read, so the "
                 "filter-based measures do not apply"),
    }
    if W > 1:
        info["node_layout"] = "window"
    x, call, kw = _owner_call(module, call_args, batch)
    return dict(
        path=path, source="observed", module_type=type(module).__name__ if module else "",
        affinity=aff, normalization="none", spec=None, z=z, weights=None,
        spatial_shape=(W * n,), input=x, residual=False, heads=heads, info=info,
        module=module, call=call, call_kwargs=kw, n_samples=B, self_check_error=err,
        self_check=("the recorded affinity times the recorded values against the module's "
                    f"own product ({', '.join(kinds)}): relative error {err:.1e}"))


def _owner_call(module: nn.Module | None, call_args: tuple[tuple, dict] | None, batch: int
                ) -> tuple[Tensor | None, Any, dict[str, Tensor]]:
    """The owner's first tensor argument ``(S, ...)`` (samples first), a ``call(x, **kw)``
    that re-runs the owner with its other arguments, and the per-sample ones as ``kw``."""
    if module is None or call_args is None:
        return None, None, {}
    args, kwargs = call_args
    leaves, spec = tree_flatten((args, kwargs))
    first = next((i for i, t in enumerate(leaves) if isinstance(t, Tensor)), None)
    if first is None:
        return None, None, {}
    x0 = leaves[first]
    if x0.dim() == 0 or x0.shape[0] % batch:
        return None, None, {}
    rows = x0.shape[0]
    k = rows // batch
    per_sample: dict[str, Tensor] = {}
    const = list(leaves)
    for i, t in enumerate(leaves):
        if "cache" in type(t).__name__.lower():
            const[i] = None                     # a key/value cache would grow on each re-run
        elif i != first and isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == rows:
            per_sample[f"leaf{i}"] = t.detach().reshape(batch, k, *t.shape[1:])
            const[i] = None
    shape = tuple(x0.shape[1:])

    def call(t: Tensor, **kw: Tensor) -> Tensor:
        b = t.shape[0]
        vals = list(const)
        vals[first] = t.reshape(b * k, *shape)
        for name, v in kw.items():
            vals[int(name[4:])] = v.reshape(b * k, *v.shape[2:])
        a, kws = tree_unflatten(vals, spec)
        out = module(*a, **kws)
        if not isinstance(out, Tensor):
            out = next(o for o in tree_flatten(out)[0] if isinstance(o, Tensor))
        return out.reshape(b, k, *out.shape[1:]) if k > 1 else out

    x = x0.detach().reshape(batch, k, *shape) if k > 1 else x0.detach()
    return x, call, per_sample
