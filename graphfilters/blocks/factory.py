"""Blocks by table name: :func:`make_block`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from ..specs import BLOCK_NAMES
from .a2 import DoubleAttention
from .cc import CrissCross
from .cgnl import CGNL
from .dnl import DisentangledNonLocal
from .nl import NonLocal
from .snl import SNL, gSNL
from .unified import ChebyshevNonlocal, NonlocalStage

__all__ = ["make_block", "unit_factory", "BLOCK_CLASSES"]


def _ns_unit(in_channels: int, dim: int = 2, **options: Any) -> ChebyshevNonlocal:
    """A unit of Tao et al.'s nonlocal stage (biases, as NL)."""
    if "spec" in options:
        raise TypeError("the ns unit fixes its spec")
    options.setdefault("bias", True)
    return ChebyshevNonlocal(in_channels, dim=dim, spec="ns", **options)


#: Table name -> constructor of one block (``ns`` -> one unit; its block is a stage).
BLOCK_CLASSES: dict[str, Callable[..., ChebyshevNonlocal]] = {
    "nl": NonLocal,
    "ns": _ns_unit,
    "a2": DoubleAttention,
    "cgnl": CGNL,
    "cc": CrissCross,
    "dnl": DisentangledNonLocal,
    "snl": SNL,
    "gsnl": partial(gSNL, stable=False),
    "gsnl_stable": partial(gSNL, stable=True),
}


def _key(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"block name must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in BLOCK_CLASSES:
        raise ValueError(f"unknown block {name!r}; known blocks: {', '.join(BLOCK_NAMES)}")
    return key


def unit_factory(name: str) -> Callable[..., ChebyshevNonlocal]:
    """The constructor of one unit of block ``name`` (``ns``: a unit of the stage)."""
    return BLOCK_CLASSES[_key(name)]


def make_block(
    name: str, in_channels: int, dim: int = 2, n_units: int | None = None, **options: Any
) -> nn.Module:
    r"""Build the block called ``name`` in the table (:data:`graphfilters.specs.BLOCK_NAMES`).

    Parameters
    ----------
    name : str
        ``nl``, ``ns``, ``a2``, ``cgnl``, ``cc``, ``dnl``, ``snl``, ``gsnl``, ``gsnl_stable``.
    in_channels : int
    dim : {1, 2, 3}
    n_units : int, optional
        If given, a :class:`NonlocalStage` of ``n_units`` units sharing one affinity
        computed from the stage input. ``ns`` is always a stage (one unit by default).
    **options
        Constructor arguments of the block (``mode=`` for ``nl``, ``inter_channels``,
        ``order``, ``relu_after_norm``, ...).

    Returns
    -------
    ChebyshevNonlocal or NonlocalStage

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones) or ``mode`` on a block other
        than ``nl``.

    Examples
    --------
    >>> from graphfilters.blocks import make_block
    >>> make_block("nl", 16, mode="dot_product").spec.kernel
    'dot_product'
    >>> stage = make_block("snl", 16, n_units=2)
    >>> type(stage).__name__, stage.n_units
    ('NonlocalStage', 2)
    >>> make_block("xl", 16)
    Traceback (most recent call last):
    ...
    ValueError: unknown block 'xl'; known blocks: nl, ns, a2, cgnl, cc, dnl, snl, gsnl, gsnl_stable
    """
    key = _key(name)
    if "mode" in options and key != "nl":
        raise ValueError(f"block {key!r} has no modes; only 'nl' has modes (mode=...)")
    if n_units is not None or key == "ns":
        return NonlocalStage(in_channels, n_units=1 if n_units is None else n_units, block=key,
                             dim=dim, **options)
    return BLOCK_CLASSES[key](in_channels, dim=dim, **options)
