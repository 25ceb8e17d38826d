r"""The registries that :func:`~analysis.capture.capture` consults: adapters (one function
per module type) and recognizers (families of attention modules of other libraries).

A recognizer *refines* what :mod:`analysis.observe` finds by watching the computation: it
names the family, reads the heads, the value and output projections and the layer around the
attention, so that the filter-based measures (responses, weight spectra, stability) apply.
Its capture is checked against the affinity the model applied (a recognizer that does not
reproduce it is replaced by the observed capture) and, at the output, by
:mod:`analysis.reconstruct` (the module's output rebuilt from what it captured).
Each recognizer also owns how its attention is held fixed for the frozen Jacobian
(``freeze``), the observation watcher by default.

This module imports nothing from the rest of :mod:`analysis` (no import cycle): the built-in
recognizers (:mod:`analysis.recognizers`) register themselves when :mod:`analysis` is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["register_adapter", "unregister_adapter", "adapter_for", "CallContext",
           "Recognizer", "register_recognizer", "unregister_recognizer", "recognizers",
           "recognizer_for"]

_ADAPTERS: dict[type, Callable[..., Any]] = {}


def register_adapter(module_type: type, fn: Callable[[nn.Module, tuple, Any], Any]) -> None:
    r"""Teach :func:`capture` a new kind of attention module.

    Parameters
    ----------
    module_type : type
        A subclass of :class:`torch.nn.Module`; instances (and instances of subclasses) are
        captured with ``fn``. Registered adapters take precedence over the built-in handling.
    fn : callable
        ``fn(module, inputs, output)`` called in a forward hook (``inputs`` is the tuple of
        positional arguments). It returns one of

        - an :class:`~graphfilters.graph.Affinity` or a tensor ``(B, N, N)`` (the affinity
          *as used*, i.e. already normalized: the capture's normalization is ``"none"``);
        - a :class:`Capture` (fields left at their defaults are fine);
        - any object with an ``affinity`` attribute and optionally ``normalization``, ``z``,
          ``weights``, ``spatial_shape``, ``spec``, ``input``, ``output_scale`` (a
          ``FilterRecord``-like record);
        - ``None`` to skip this call.

    Examples
    --------
    >>> import torch
    >>> from analysis.capture import capture
    >>> class Mix(torch.nn.Module):          # a toy "attention": a fixed averaging graph
    ...     def forward(self, x):
    ...         return x.mean(1, keepdim=True).expand_as(x)
    >>> register_adapter(Mix, lambda m, inp, out: torch.full((inp[0].shape[0], 4, 4), 0.25))
    >>> caps = capture(torch.nn.Sequential(Mix()), torch.randn(2, 4, 3), progress=False)
    >>> caps["0"].affinity.shape
    (2, 4, 4)
    >>> unregister_adapter(Mix)
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(
            f"module_type must be a torch.nn.Module subclass, got {module_type!r}"
        )
    if not callable(fn):
        raise TypeError("fn must be callable as fn(module, inputs, output)")
    _ADAPTERS[module_type] = fn


def unregister_adapter(module_type: type) -> None:
    """Remove the adapter of ``module_type`` (no error if none is registered)."""
    _ADAPTERS.pop(module_type, None)


def adapter_for(module: nn.Module) -> Callable[..., Any] | None:
    for cls in type(module).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls]
    return None


# ------------------------------------------------------------------------------------------
# Recognizers: one per family of attention modules
# ------------------------------------------------------------------------------------------


@dataclass
class CallContext:
    r"""One forward call of a recognized module, as a recognizer's ``build`` sees it.

    Attributes
    ----------
    path : str
        Module path.
    module : nn.Module
    args, kwargs : tuple, dict
        The call's positional and keyword arguments.
    output : Any
        What the module returned (tuples included).
    heads : str
        ``"mean"`` or ``"keep"`` (see :func:`capture`).
    parent : nn.Module or None
        The module that contains it (e.g. the transformer layer), to find the residual
        path, the LayerNorm and the output projection.
    parent_args, parent_kwargs : tuple and dict, or None
        The arguments of the parent's current call (the layer input), when it has one.
    """

    path: str
    module: nn.Module
    args: tuple
    kwargs: dict
    output: Any
    heads: str
    parent: nn.Module | None = None
    parent_args: tuple | None = None
    parent_kwargs: dict | None = None

    def argument(self, name: str, position: int, default: Any = None) -> Any:
        """The call argument ``name`` (keyword) or at ``position`` (positional)."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[position] if len(self.args) > position else default


@dataclass(frozen=True)
class Recognizer:
    r"""How :func:`capture` reads one family of modules without an adapter.

    Attributes
    ----------
    name : str
        The family (``"torch.nn.MultiheadAttention"``, ``"transformers"``, ``"timm"``,
        ``"mmcv"``, ...); stored in ``Capture.info["family"]``.
    matches : callable
        ``matches(module) -> bool``: whether a module belongs to the family (duck typing
        on attributes, so that the library need not be imported).
    build : callable
        ``build(ctx: CallContext) -> Capture | None``, called in a forward hook after each
        call of a matching module (in eval mode, under ``no_grad``). It recomputes the
        affinity from the call's inputs and the module's weights (fused kernels never form
        it) and fills the :class:`Capture`: ``affinity``, ``normalization``, ``z``,
        ``weights``, ``input`` in ``(S, C, *spatial)`` layout, ``call``/``call_kwargs``
        (how to re-run it, see :class:`Capture`), ``residual`` and the value projection.
        ``path``, ``source``, ``module_type``, ``module`` and ``info["family"]`` are filled
        in by :func:`capture`. ``None`` skips the call (e.g. cross-attention).
    source : str
        ``Capture.source`` of its captures (``"attention"`` or ``"nonlocal"``).
    targets : str
        The library versions the recognizer was written against (documentation).
    freeze : callable, optional
        ``freeze(capture)`` returns a context manager inside which the module's attention is
        held fixed for autograd (the frozen Jacobian); entering it returns an object whose
        ``held`` attribute counts, after the call, the affinities it held. A frozen map that
        held nothing raises instead of returning the full Jacobian under the frozen name.
        Default: the observation watcher (:func:`analysis.observe.hold_affinities`), which
        detaches every affinity it sees applied and counts them.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    build: Callable[[CallContext], Any]
    source: str = "attention"
    targets: str = ""
    freeze: Callable[[Any], AbstractContextManager] | None = None


_RECOGNIZERS: list[Recognizer] = []


def register_recognizer(recognizer: Recognizer, *, first: bool = True) -> None:
    r"""Add a family of modules that :func:`capture` reads without an adapter.

    A recognizer with the same ``name`` is replaced. ``first=True`` (default) puts it
    before the others, so a new recognizer can take over modules a built-in one matches.
    Adapters (:func:`register_adapter`) and graphfilters blocks are checked before any
    recognizer.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import DenseAffinity
    >>> from analysis.capture import Capture, capture
    >>> class Mean(torch.nn.Module):           # mixes the L tokens of (B, L, C) equally
    ...     def forward(self, x):
    ...         return x.mean(1, keepdim=True).expand_as(x)
    >>> def build(ctx):
    ...     x = ctx.args[0]
    ...     B, L, C = x.shape
    ...     return Capture("", "", "", DenseAffinity(torch.full((B, L, L), 1 / L)), "none",
    ...                    spatial_shape=(L,), input=x.transpose(1, 2), residual=False,
    ...                    call=lambda t: ctx.module(t.transpose(1, 2)).transpose(1, 2))
    >>> register_recognizer(Recognizer("mean-mixer", lambda m: isinstance(m, Mean), build))
    >>> caps = capture(torch.nn.Sequential(Mean()), torch.randn(2, 3, 4), progress=False)
    >>> caps["0"].info["family"], caps["0"].affinity.shape
    ('mean-mixer', (2, 3, 3))
    >>> unregister_recognizer("mean-mixer")
    """
    if not isinstance(recognizer, Recognizer):
        raise TypeError(f"recognizer must be a Recognizer, got {type(recognizer).__name__}")
    unregister_recognizer(recognizer.name)
    if first:
        _RECOGNIZERS.insert(0, recognizer)
    else:
        _RECOGNIZERS.append(recognizer)


def unregister_recognizer(name: str) -> None:
    """Remove the recognizer called ``name`` (no error if there is none)."""
    _RECOGNIZERS[:] = [r for r in _RECOGNIZERS if r.name != name]


def recognizers() -> list[Recognizer]:
    """The registered recognizers, in the order they are tried.

    Examples
    --------
    >>> [r.name for r in recognizers()][-4:]
    ['mmcv', 'timm', 'transformers', 'torch.nn.MultiheadAttention']
    """
    return list(_RECOGNIZERS)


def recognizer_for(module: nn.Module) -> Recognizer | None:
    for rec in _RECOGNIZERS:
        try:
            if rec.matches(module):
                return rec
        except Exception:  # noqa: BLE001 - a faulty matcher must not stop the search
            continue
    return None


