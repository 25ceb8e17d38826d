r"""Empirical measures: relative output change under Gaussian input noise, under a
relative perturbation of the affinity's factors, and a classifier's accuracy under noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from graphfilters import _validate as V
from graphfilters.graph import Affinity

from ..capture import Capture, batch_input, model_device
from ..capture_record import example_capture
from ..observe import eval_mode
from ..response import (
    apply_filter,
    filter_output,
    head_signal,
    keeps_heads,
)

__all__ = [
    "noise_sensitivity",
    "affinity_sensitivity",
    "accuracy_under_noise",
]


@V.validate_params(
    {"fn": ["callable"], "x": [V.InstanceOf(Tensor)], "level": [V.POS_REAL],
     "n_draws": [V.POS_INT], "seed": [V.NONNEG_INT]},
    valid=lambda: {"fn": nn.Linear(3, 3), "x": torch.randn(2, 3)},
)
def noise_sensitivity(
    fn: Callable[[Tensor], Tensor] | nn.Module,
    x: Tensor,
    level: float = 0.1,
    n_draws: int = 4,
    seed: int = 0,
) -> dict[str, float]:


    r"""Relative output change under Gaussian input noise of relative size ``level``.

    :math:`\delta = \text{level}\,\|x\|\,\epsilon/\|\epsilon\|`, and the result averages
    :math:`\|f(x + \delta) - f(x)\| / \|f(x)\|` over ``n_draws`` draws; ``gain`` divides it by
    ``level``.

    Examples
    --------
    >>> import torch
    >>> out = noise_sensitivity(torch.nn.Identity(), torch.ones(2, 3), level=0.1)
    >>> round(out["relative_change"], 6), round(out["gain"], 6)
    (0.1, 1.0)
    """
    x = x.detach()
    with eval_mode(fn) if isinstance(fn, nn.Module) else nullcontext():
        gen = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            y = fn(x)
            changes = []
            for _ in range(n_draws):
                eps = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
                delta = level * x.norm() * eps / eps.norm()
                changes.append(float((fn(x + delta) - y).norm() / y.norm().clamp_min(1e-30)))
    rel = float(np.mean(changes))
    return {"relative_change": rel, "gain": rel / level}


def _perturb(aff: Affinity, level: float, gen: torch.Generator) -> Affinity:
    def noisy(t: Tensor) -> Tensor:
        eps = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
        return t * torch.exp(level * eps)
    return aff.map_fields(noisy)


@V.validate_params(
    {"capture": [V.InstanceOf(Capture)], "level": [V.POS_REAL], "n_draws": [V.POS_INT],
     "seed": [V.NONNEG_INT]},
    valid=lambda: {"capture": example_capture()},
)
def affinity_sensitivity(
    capture: Capture, level: float = 0.1, n_draws: int = 4, seed: int = 0
) -> dict[str, float]:
    r"""Filter-output change when the affinity is perturbed, :math:`Z` and :math:`W_k` fixed.

    Every array that defines the affinity (low-rank factors, queries/keys, dense entries) is
    multiplied elementwise by :math:`e^{\text{level}\,\epsilon}`, :math:`\epsilon \sim
    \mathcal N(0, 1)` (a relative perturbation that keeps signs, hence non-negative degrees).
    Returns the mean relative change of the operator's action
    :math:`\|\hat A' Z - \hat A Z\| / \|\hat A Z\|`, of the filter output
    :math:`\|F' - F\| / \|F\|`, and their ratio ``gain``. An N×M affinity (sub-sampled
    keys) has the order-1 filter :math:`F = \hat A Z W_1`.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import LowRankAffinity
    >>> g = torch.Generator().manual_seed(0)
    >>> aff = LowRankAffinity(torch.rand(1, 8, 2, generator=g), torch.rand(1, 8, 2, generator=g),
    ...                       symmetric=True)
    >>> cap = Capture("b", "block", "toy", aff, "sym", z=torch.randn(1, 8, 3, generator=g),
    ...               weights=[torch.zeros(3, 3), torch.eye(3)])
    >>> out = affinity_sensitivity(cap, level=0.01)     # F = A_hat Z: gain 1
    >>> round(out["gain"], 6)
    1.0
    """
    if capture.affinity is None or capture.z is None or capture.weights is None:
        raise ValueError(f"{capture.path}: needs the affinity, Z and the weights")
    if capture.layout == "channel_position":
        raise ValueError(f"{capture.path}: no position graph (CGNL channel-position nodes)")
    aff = capture.affinity
    z = capture.z
    ws = list(capture.weights)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    square = aff.n == aff.n_cols
    if not square and (len(ws) != 2 or bool(ws[0].ne(0).any())):
        raise ValueError(f"{capture.path}: an N x M affinity has an order-1 filter A Z W_1 "
                         "(W_0 = 0)")

    def run(a: Affinity) -> tuple[Tensor, Tensor]:
        op = a.normalized(capture.normalization)
        if not square:                      # N x M (sub-sampled keys): F = (A_hat Z) W_1
            az = op(z)
            return az, az @ ws[1].to(az.dtype)
        if keeps_heads(capture):              # one affinity per head acts on its own values
            c = replace(capture, affinity=a)
            return op(head_signal(c)), filter_output(c)
        return op(z), apply_filter(op, z, ws, capture.basis, capture.basis_params,
                                   module=capture.module)

    with torch.no_grad():
        az, f = run(aff)
        op_changes, out_changes = [], []
        for _ in range(n_draws):
            az2, f2 = run(_perturb(aff, level, gen))
            op_changes.append(float((az2 - az).norm() / az.norm().clamp_min(1e-30)))
            out_changes.append(float((f2 - f).norm() / f.norm().clamp_min(1e-30)))
    op_c, out_c = float(np.mean(op_changes)), float(np.mean(out_changes))
    return {"operator_change": op_c, "output_change": out_c,
            "gain": out_c / op_c if op_c > 0 else float("nan")}


@V.validate_params(
    {"model": [V.MODULE], "levels": [V.NoiseLevels()],
     "relative": ["boolean"], "max_batches": [V.POS_INT, None], "seed": [V.NONNEG_INT],
     "progress": ["boolean"]},
    valid=lambda: {"model": nn.Sequential(nn.Flatten(), nn.Linear(4, 2)),
                   "data": [(torch.randn(4, 4), torch.tensor([0, 1, 0, 1]))],
                   "progress": False},
)
def accuracy_under_noise(
    model: nn.Module,
    data: Iterable[Any],
    levels: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.4),
    *,
    relative: bool = False,
    max_batches: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[float, float]:
    r"""Top-1 accuracy of a classifier when :math:`\mathcal N(0, \sigma^2)` noise is added to
    its inputs, for each :math:`\sigma` in ``levels``.

    Parameters
    ----------
    model : nn.Module
        Maps inputs to logits ``(B, classes)``; run in eval mode under ``no_grad`` on its
        device (modes restored).
    data : iterable of ``(input, target)`` batches
    levels : sequence of float
        Noise standard deviations (in input units, or times each input's standard deviation
        when ``relative=True``).
    max_batches : int, optional
        Batches used per level.

    Returns
    -------
    dict level -> accuracy in [0, 1]

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2))
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); y = torch.tensor([0, 1])
    >>> accuracy_under_noise(model, [(x, y)], levels=(0.0,), progress=False)
    {0.0: 1.0}
    """
    levels = [float(s) for s in levels]
    dev = model_device(model)
    batches = []
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
            raise TypeError("accuracy_under_noise needs (input, target) batches")
        batches.append((batch_input(batch), batch[1]))
    if not batches:
        raise ValueError("no batches in data")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: dict[float, float] = {}
    with eval_mode(model), torch.no_grad():
        bar = tqdm(levels, desc="accuracy vs noise", disable=not progress, leave=False)
        for s in bar:
            correct = total = 0
            for x, y in batches:
                x = x.to(dev)
                eps = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(dev)
                if relative:
                    std = x.flatten(1).std(1).reshape(-1, *([1] * (x.ndim - 1)))
                    eps = eps * std
                pred = model(x + s * eps).argmax(-1)
                correct += int((pred.cpu() == y.cpu()).sum())
                total += int(y.numel())
            out[s] = correct / total
        bar.close()
    return out
