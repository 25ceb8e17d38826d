"""Small helpers shared by the block modules (no dependency on the numeric core)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

DIMS = (1, 2, 3)
_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BNS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOLS = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_LAYOUT = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, T, H, W)"}


def conv1x1(dim: int, c_in: int, c_out: int, bias: bool = True, groups: int = 1) -> nn.Module:
    """A 1×1 (×1) convolution for inputs of ``dim`` spatial dimensions."""
    return _CONVS[dim](c_in, c_out, kernel_size=1, bias=bias, groups=groups)


def batch_norm(dim: int, channels: int, zero_init: bool = True) -> nn.Module:
    """BatchNorm{1,2,3}d with the scale zero-initialized (so ``x + BN(F)`` starts as ``x``)."""
    bn = _BNS[dim](channels)
    if zero_init:
        nn.init.zeros_(bn.weight)
        nn.init.zeros_(bn.bias)
    return bn


def max_pool(dim: int) -> nn.Module:
    """The key sub-sampling of Wang et al.: max-pool by 2 over space (not over time)."""
    if dim == 3:
        return nn.MaxPool3d(kernel_size=(1, 2, 2))
    return _POOLS[dim](kernel_size=2)


#: Refuse NaN/Inf block inputs with a clear error. Where a block's computation already
#: reduces its input to a small tensor that is NaN/Inf whenever the input is (the low-rank
#: product ``D^{-1/2}[P, Q]^T Z`` of SNL-type blocks, see :func:`check_finite_folded`), only
#: that tensor is checked (one reduction of ``(B, 2 C_s, C_s)`` values and one device sync per
#: forward); other blocks scan the whole input once. Set to False in production loops that
#: guard their inputs elsewhere: no check at all.
CHECK_FINITE = True


def check_input(x: Tensor, dim: int, channels: int, owner: str,
                module: nn.Module | None = None, *, finite: bool = True) -> None:
    """Raise a clear error for a wrong input type, rank, channel count, dtype or values.

    Dtype policy: a block computes in the dtype of its parameters; an input of another
    floating dtype is refused (outside ``torch.autocast``, which casts per operation) with
    the two ways out, instead of failing later inside ``matmul``. ``finite=False``: the
    caller checks the values itself (:func:`check_finite_folded`).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim != dim + 2:
        raise ValueError(
            f"{owner} (dim={dim}) expects input {_LAYOUT[dim]} with {dim + 2} dimensions, got "
            f"shape {tuple(x.shape)}; build the block with dim={x.ndim - 2} for this input"
            if x.ndim - 2 in DIMS
            else f"{owner} (dim={dim}) expects input {_LAYOUT[dim]}, got shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{owner} was built for {channels} input channels, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)}); build it with in_channels={x.shape[1]}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{owner} expects a floating-point input, got {x.dtype}")
    if module is not None and not torch.is_autocast_enabled(x.device.type):
        p = next(module.parameters(), None)
        if p is not None and p.is_floating_point() and p.dtype != x.dtype:
            raise TypeError(
                f"{owner} has {p.dtype} parameters but the input x is {x.dtype}; cast the "
                f"input (x.to({p.dtype})), the block (block.to({x.dtype})), or run under "
                "torch.autocast"
            )
    if finite:
        check_finite_input(x, owner)


def check_finite_input(x: Tensor, owner: str) -> None:
    """Scan the whole input (``CHECK_FINITE``): ``ValueError`` if it holds NaN or Inf."""
    if CHECK_FINITE and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{owner}: the input x contains NaN or Inf")


def check_finite_parameters(module: nn.Module, owner: str) -> None:
    """``ValueError`` naming the first parameter of ``module`` that holds NaN or Inf."""
    for name, p in module.named_parameters():
        if p.numel() and not bool(torch.isfinite(p.detach()).all()):
            raise ValueError(f"{owner}: the parameter {name!r} contains NaN or Inf")


def check_finite_folded(x: Tensor, probe: Tensor | None, owner: str,
                        module: nn.Module | None = None) -> None:
    """The NaN/Inf check of a block input, folded into work already done.

    ``probe`` is a small tensor of the block's computation that is NaN/Inf whenever the input
    is: every entry of the low-rank reduction :math:`\\tilde U^T Z`
    (:attr:`graphfilters.graph.NormalizedOperator.reduced`) sums products over all positions
    of ``Z = g(x)``, and a non-finite ``x_i`` makes the whole row ``Z_i`` non-finite
    (:math:`0 \\cdot \\infty` is NaN), hence every entry of the probe. Only the probe is
    read; where it is not finite the input (and then ``module``'s parameters) is scanned
    once to say which is at fault. Without a probe (other structures) the input is scanned.
    No-op when ``CHECK_FINITE`` is False.
    """
    if not CHECK_FINITE:
        return
    if probe is None:
        check_finite_input(x, owner)
    elif not bool(torch.isfinite(probe).all()):
        check_finite_input(x, owner)
        if module is not None:
            check_finite_parameters(module, owner)
        raise ValueError(
            f"{owner}: non-finite values inside the block although the input x is finite "
            f"(NaN/Inf in its parameters, or an overflow in {x.dtype})"
        )


def to_nodes(x: Tensor) -> Tensor:
    """``(B, C, *spatial)`` → graph signal ``(B, N, C)``."""
    return x.flatten(2).transpose(1, 2)


def from_nodes(z: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """Graph signal ``(B, N, C)`` → ``(B, C, *spatial)``."""
    return z.transpose(1, 2).reshape(z.shape[0], z.shape[2], *spatial)


def kaiming_(weight: Tensor) -> None:
    """The default init of a conv/linear weight (kaiming uniform, ``a = sqrt(5)``)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def numel(shape: tuple[int, ...] | torch.Size) -> int:
    return int(math.prod(shape))
