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
the diagonal of one block-diagonal affinity, so a sample is an image; the nodes are then put
back in the image's grid order (any cyclic shift undone) where the model's own rearrangements
of its token grid can be redone on token indices (:func:`analysis.observe.token_order`),
else they stay in window order (``info["node_layout"] == "window"``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from graphfilters.graph import DenseAffinity

from .observe import Observation, Residual, StopAtInputSum, token_order

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


def applied_affinity(affinities: list[Tensor], batch: int, num_heads: int | None = None,
                     values: list[Tensor] | None = None
                     ) -> tuple[Tensor, Tensor | None, int]:
    """The affinities of one module call as ``(B, H, N, M)`` (windows on the diagonal, several
    applications of one shape stacked as heads), the values as ``(B, W, H, m, c)`` when given,
    and the number of windows ``W``.

    Examples
    --------
    >>> A, _, W = applied_affinity([torch.rand(4, 3, 2, 2)], batch=2)
    >>> tuple(A.shape), W
    ((2, 3, 4, 4), 2)
    """
    shapes = {tuple(a.shape) for a in affinities}
    if len(shapes) != 1:
        raise ValueError(f"{len(affinities)} affinity applications of different shapes "
                         f"{sorted(shapes)} in one call")
    W, H = layout(affinities[0], batch, num_heads)
    n, m = affinities[0].shape[-2:]
    P = torch.cat([a.reshape(batch, W, H, n, m).float() for a in affinities], 2)
    V = None if values is None else torch.cat(
        [v.reshape(batch, W, H, m, v.shape[-1]).float() for v in values], 2)
    return _block_diag(P), V, W


def observed_capture(path: str, module: nn.Module | None, obs: list[Observation],
                     call_args: tuple[tuple, dict] | None, batch: int, heads: str,
                     residual: Residual | None = None,
                     layer_args: tuple[tuple, dict] | None = None,
                     own_residual: bool = False) -> dict[str, Any]:
    r"""The fields of the :class:`~analysis.capture_record.Capture` of the observations ``obs`` of
    one module call (a batch of ``batch`` samples). Several applications in one call (heads
    computed in a loop) are stacked as heads when they have one shape.

    With the ``residual`` sum that followed the module (:class:`analysis.observe.Residual`,
    called with ``layer_args``), the re-run map is the residual branch of the enclosing layer,
    :math:`x \mapsto x + \operatorname{branch}(x)` from the layer's input to that sum
    (``residual=True``), after checking that re-running it reproduces the sum the model
    computed; ``own_residual``: the module adds its own input (its map already has the skip);
    otherwise the owning module alone."""

    nh = getattr(module, "num_heads", None) if module is not None else None
    nh = nh if isinstance(nh, int) else None
    A, V, W = applied_affinity([o.affinity for o in obs], batch, nh,
                               [o.values for o in obs])
    B, H, N, M = A.shape
    z = V.permute(0, 1, 3, 2, 4).reshape(B, M, H * V.shape[-1])        # (B, M, H c)
    grid = _grid_order(obs, batch, W) if W > 1 and N == M else None
    if grid is not None:                      # windows scattered back onto the image grid
        inv = torch.argsort(grid)
        A, z = A[:, :, inv][:, :, :, inv], z[:, inv]
    aff = DenseAffinity(A.mean(1) if heads == "mean" else A)
    err = max(o.error for o in obs)
    kinds = sorted({o.kind for o in obs})
    info: dict[str, Any] = {
        "family": "observed", "observed": ", ".join(kinds),
        "how": "; ".join(sorted({o.how for o in obs})), "num_heads": H, "windows": W,
        "n_keys": M, "applications": len(obs),
        "layer": "the owning module only (no residual sum with an enclosing module's input "
                 "followed it)",
        "layernorm": "none",
        "note": ("read by watching the computation; the owner's weights are not read, so the "
                 "filter-based measures do not apply"),
    }
    if W > 1 and grid is not None:
        info["node_layout"] = "image"
        info["note"] += (f"; {W} windows per sample scattered back onto the image's token "
                         "grid (any shift undone): the order was read by redoing the model's "
                         "own rearrangements (views, permutes, rolls) on token indices; the "
                         "owner's Jacobians are taken in its own window order, a permutation "
                         "that leaves their norms unchanged")
    elif W > 1:
        info["node_layout"] = "window"
        info["note"] += (f"; {W} windows per sample put on the diagonal: the nodes are the "
                         "image's tokens in window order (after any shift; the grid order "
                         "could not be read from the model's rearrangements), a permutation "
                         "of the image grid that leaves spectra and Jacobians unchanged")
    x, call, kw = _owner_call(module, call_args, batch)
    skip = False
    if own_residual:
        skip = True
        info["layer"] = ("the module itself: it adds its own input after applying the "
                         "affinity, x + branch(x) (read from the forward)")
    elif residual is not None and residual.module is not None:
        lx, lcall, lkw, why = _layer_call(residual, layer_args, batch)
        if lcall is not None:
            x, call, kw, skip = lx, lcall, lkw, True
            info["layer"] = (f"{residual.layer or 'the model'} ({type(residual.module).__name__})"
                             f": x -> the residual sum after this module, x + branch(x) "
                             f"(the sum with the layer input, read from the forward; {why})")
        else:
            info["layer"] += f"; the residual sum in {residual.layer!r} was not used: {why}"
    return dict(
        path=path, source="observed", module_type=type(module).__name__ if module else "",
        affinity=aff, normalization="none", spec=None, z=z, weights=None,
        spatial_shape=(N,), input=x, residual=skip, heads=heads, info=info,
        module=module, call=call, call_kwargs=kw, n_samples=B, self_check_error=err,
        self_check=("the recorded affinity times the recorded values against the module's "
                    f"own product ({', '.join(kinds)}): relative error {err:.1e}"))


def _grid_order(obs: list[Observation], batch: int, windows: int) -> Tensor | None:
    """One grid order for every application of the call (:func:`token_order`), or ``None``."""
    orders = [token_order(o, batch, windows) for o in obs]
    if any(p is None for p in orders) or any(not torch.equal(p, orders[0]) for p in orders):
        return None
    return orders[0]


def _layer_call(res: Residual, layer_args: tuple[tuple, dict] | None, batch: int
                ) -> tuple[Tensor | None, Any, dict[str, Tensor], str]:
    """The layer's input, a call that runs the layer up to the residual sum, its per-sample
    arguments, and what the check found (the call is ``None`` when it does not reproduce the
    recorded sum)."""
    x, call, kw = _owner_call(res.module, layer_args, batch, stop=res.count)
    if call is None or x is None:
        return None, None, {}, "the layer's input could not be laid out per sample"
    try:
        with torch.no_grad():
            y = call(x, **kw)
        ref = res.output.reshape(y.shape).to(y.dtype)
        err = float((y - ref).norm() / ref.norm().clamp_min(1e-300))
    except Exception as exc:  # noqa: BLE001 - the owner alone is still measured
        return None, None, {}, f"re-running it failed ({type(exc).__name__}: {exc})"
    if not math.isfinite(err) or err > 1e-5:
        return None, None, {}, f"re-running it gives another sum (relative error {err:.1e})"
    return x, call, kw, f"re-run reproduces the sum to {err:.1e}"


def _owner_call(module: nn.Module | None, call_args: tuple[tuple, dict] | None, batch: int,
                stop: int | None = None) -> tuple[Tensor | None, Any, dict[str, Tensor]]:
    """The owner's first tensor argument ``(S, ...)`` (samples first), a ``call(x, **kw)``
    that re-runs the owner with its other arguments, and the per-sample ones as ``kw``.
    With ``stop``, the call returns the ``stop``-th sum with its input inside the owner's
    forward (:class:`analysis.observe.StopAtInputSum`) instead of the owner's output."""
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
        if stop is not None:
            out = StopAtInputSum(vals[first], stop).run(lambda: module(*a, **kws))
        else:
            out = module(*a, **kws)
        if not isinstance(out, Tensor):
            out = next(o for o in tree_flatten(out)[0] if isinstance(o, Tensor))
        return out.reshape(b, k, *out.shape[1:]) if k > 1 else out

    x = x0.detach().reshape(batch, k, *shape) if k > 1 else x0.detach()
    return x, call, per_sample
