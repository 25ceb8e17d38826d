"""Argument checks shared by the public functions (one implementation per check).

Every check names the caller's argument and the value received, and raises before any
allocation that depends on the value. Conventions: ``TypeError`` for a value of the wrong
kind (a string where a number is expected, a bool where an integer is), ``ValueError`` for a
value of the right kind out of range (zero, negative, NaN, Inf, an empty array).

Half-precision policy
---------------------
float16 and bfloat16 inputs are accepted everywhere. Where a reduction or an eigen-solve could
overflow or has no half-precision kernel (degrees, normalizations, Laplacians, softmax logits,
``lambda_max``, spectra) the computation runs in float32 (:func:`compute_dtype`) and results
are returned in the input's dtype; a result that does not fit that dtype (e.g. a degree above
65504 in float16) raises ``ValueError`` naming the argument instead of returning Inf/NaN.
Spectra and ``lambda_max`` return float32 for half inputs (an eigenvalue is an analysis result,
not a model activation). A block with float32 parameters refuses a float16 input outside
``torch.autocast`` (cast the input or the block).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"an array of shape {tuple(value.shape)}"
    return f"{value!r} ({type(value).__name__})"


def integer(value: Any, name: str, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (bools, floats and strings refused).

    Examples
    --------
    >>> integer(3, "order", minimum=0)
    3
    >>> integer(-1, "order", minimum=0)
    Traceback (most recent call last):
    ...
    ValueError: order must be an integer >= 0, got -1
    """
    bounds = ""
    if minimum is not None and maximum is not None:
        bounds = f" in [{minimum}, {maximum}]"
    elif minimum is not None:
        bounds = f" >= {minimum}"
    elif maximum is not None:
        bounds = f" <= {maximum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{bounds}, got {_describe(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer{bounds}, got {value}")
    return value


def positive_int(value: Any, name: str, maximum: int | None = None) -> int:
    """An integer ``>= 1``."""
    return integer(value, name, minimum=1, maximum=maximum)


def real(value: Any, name: str, *, low: float | None = None, high: float | None = None,
         low_open: bool = False) -> float:
    """A finite real number (not a string, bool or array) in ``[low, high]`` (``(low, high]``
    with ``low_open``).

    Examples
    --------
    >>> real("2", "lambda_max")
    Traceback (most recent call last):
    ...
    TypeError: lambda_max must be a real number, got '2' (str)
    """
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
        value = value.item()
    if not _is_number(value):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high:g}, got {value:g}")
    return value


def positive_float(value: Any, name: str) -> float:
    """A finite number ``> 0``."""
    return real(value, name, low=0.0, low_open=True)


def choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    """One of ``allowed`` (strings)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(allowed)}")
    return value


def nonempty(x: Any, name: str) -> None:
    """Refuse arrays with a zero-size axis (no nodes, no channels, an empty batch)."""
    shape = tuple(x.shape)
    if any(s == 0 for s in shape):
        raise ValueError(
            f"{name} is empty (shape {shape}); a graph needs at least one node and signals "
            "at least one channel"
        )


def compute_dtype(x: Any) -> Any:
    """The dtype to compute in: float32 for half-precision tensors, the input's otherwise."""
    if isinstance(x, torch.Tensor) and x.dtype in HALF_DTYPES:
        return torch.float32
    return x.dtype


def upcast(x: Any) -> Any:
    """``x`` in its :func:`compute_dtype`."""
    if isinstance(x, torch.Tensor) and x.dtype in HALF_DTYPES:
        return x.float()
    return x


def downcast(out: Any, like: Any, name: str, what: str) -> Any:
    """``out`` back in ``like``'s half dtype, refusing values the dtype cannot hold."""
    if not (isinstance(like, torch.Tensor) and like.dtype in HALF_DTYPES):
        return out
    fmax = torch.finfo(like.dtype).max
    if isinstance(out, torch.Tensor) and out.numel() and bool(
            (out.detach().abs() > fmax).any()):
        raise ValueError(
            f"{name} is {like.dtype} but its {what} exceeds the largest {like.dtype} "
            f"({fmax:g}); pass {name} as float32"
        )
    return out.to(like.dtype) if isinstance(out, torch.Tensor) else out
