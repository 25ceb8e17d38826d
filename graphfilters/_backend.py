"""One implementation for numpy arrays and torch tensors.

The numeric core accepts either; this module hides the few places where the two APIs differ,
so every formula is written once. Torch inputs stay on their device and keep autograd.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Array = Any  # numpy.ndarray | torch.Tensor


def is_torch(x: Array) -> bool:
    """Whether ``x`` is a torch tensor."""
    return isinstance(x, torch.Tensor)


def as_array(x: Array, name: str = "array") -> Array:
    """Return ``x`` as a floating numpy array or torch tensor; reject anything else.

    Raises
    ------
    TypeError
        If ``x`` is neither array-like nor a tensor, or is not real-valued.
    """
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name} must be real-valued, got a complex tensor")
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    if isinstance(x, (np.ndarray, list, tuple, float, int, np.generic)):
        arr = np.asarray(x)
        if np.iscomplexobj(arr):
            raise TypeError(f"{name} must be real-valued, got a complex array")
        if arr.dtype == object:
            raise TypeError(f"{name} must be numeric, got an object array")
        return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)
    raise TypeError(
        f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}"
    )


def check_finite(x: Array, name: str = "array", advice: str = "") -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf (``advice`` appended when given).

    Large arrays (and broadcast views) are scanned in blocks of rows, so no boolean mask of
    the size of ``x`` is ever allocated.
    """
    size = x.numel() if is_torch(x) else x.size
    if x.ndim >= 2 and x.shape[-2] > 1 and size > _SCAN_CHUNK:
        step = max(1, _SCAN_CHUNK // max(1, size // x.shape[-2]))
        bad = any(_has_nonfinite(x[..., i:i + step, :]) for i in range(0, x.shape[-2], step))
    else:
        bad = _has_nonfinite(x)
    if bad:
        dtype = f" ({x.dtype})" if is_torch(x) and x.dtype in (torch.float16,
                                                                 torch.bfloat16) else ""
        raise ValueError(f"{name}{dtype} contains NaN or Inf" + (f"; {advice}" if advice
                                                                  else ""))


_SCAN_CHUNK = 1 << 24


def _has_nonfinite(x: Array) -> bool:
    return bool((~torch.isfinite(x)).any()) if is_torch(x) else not bool(np.isfinite(x).all())


def check_square(A: Array, name: str = "A") -> Array:
    """Validate a (batched) square matrix ``(..., N, N)``, non-empty, with finite entries."""
    A = as_array(A, name)
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(
            f"{name} must have shape (..., N, N) (a square matrix or a batch of them), "
            f"got shape {tuple(A.shape)}"
        )
    if any(s == 0 for s in A.shape):
        raise ValueError(f"{name} is empty (shape {tuple(A.shape)}): a graph needs at least "
                         "one node")
    check_finite(A, name)
    return A


def transpose(x: Array) -> Array:
    """Swap the last two axes."""
    return x.transpose(-1, -2) if is_torch(x) else np.swapaxes(x, -1, -2)


def xp(x: Array):
    """The array namespace of ``x`` (``torch`` or ``numpy``)."""
    return torch if is_torch(x) else np


def zeros_like(x: Array) -> Array:
    return torch.zeros_like(x) if is_torch(x) else np.zeros_like(x)


def ones(shape: tuple[int, ...], like: Array) -> Array:
    """Ones of ``shape`` with the dtype (and device) of ``like``."""
    if is_torch(like):
        return torch.ones(shape, dtype=like.dtype, device=like.device)
    return np.ones(shape, dtype=like.dtype)


def eye(n: int, like: Array) -> Array:
    """Identity of size ``n`` with the dtype (and device) of ``like``."""
    if is_torch(like):
        return torch.eye(n, dtype=like.dtype, device=like.device)
    return np.eye(n, dtype=like.dtype)


def where(cond: Array, a: Array, b: Array | float) -> Array:
    if is_torch(cond):
        if not isinstance(b, torch.Tensor):
            b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
        return torch.where(cond, a, b)
    return np.where(cond, a, b)


def relu(x: Array) -> Array:
    return torch.relu(x) if is_torch(x) else np.maximum(x, 0)


def softmax(x: Array, axis: int = -1) -> Array:
    """Numerically stable softmax along ``axis``."""
    if is_torch(x):
        return torch.softmax(x, dim=axis)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def to_numpy(x: Array, dtype: Any = None) -> np.ndarray:
    """``x`` as a numpy array (detached, on the CPU), optionally cast to ``dtype``."""
    if is_torch(x):
        x = x.detach().cpu()
        if dtype is not None and np.dtype(dtype) == np.float64:
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def to_numpy64(x: Array) -> np.ndarray:
    """``x`` as a float64 numpy array (detached, on the CPU): the precision of the analyses."""
    return to_numpy(x, np.float64)


def eps(x: Array) -> float:
    """Machine epsilon of the dtype of ``x``."""
    if is_torch(x):
        return float(torch.finfo(x.dtype).eps)
    return float(np.finfo(x.dtype).eps)


def amax(x: Array, axis: int = -1) -> Array:
    """Maximum along ``axis`` (a plain array/tensor, not torch's ``(values, indices)``)."""
    return torch.amax(x, dim=axis) if is_torch(x) else np.max(x, axis=axis)


def scalar(x: Array) -> float:
    """A Python float from a 0-d array or tensor (detached)."""
    return float(x.detach()) if is_torch(x) else float(x)


def is_symmetric(A: Array, rtol_ulps: float = 1e3) -> bool:
    """Whether the (batched) square ``A`` equals its transpose up to ``rtol_ulps`` ulps."""
    if A.shape[-1] == 0:
        return True
    diff = scalar(abs(A - transpose(A)).max())
    return diff <= rtol_ulps * eps(A) * max(scalar(abs(A).max()), 1e-300)
