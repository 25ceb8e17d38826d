"""Constructors of one block (or one stage unit) by table name.

Imported by :mod:`~graphfilters.blocks.stage` and :mod:`~graphfilters.blocks.factory`;
imports only the named block modules (no cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from .. import _validate as V
from ..specs import BLOCK_NAMES
from .a2 import DoubleAttention
from .attnscale import AttnScale
from .cc import CrissCross
from .cgnl import CGNL
from .diffattn import DiffAttention
from .dnl import DisentangledNonLocal
from .efficient import EfficientAttention
from .gfsa import GFSA
from .nl import NonLocal
from .rational import ARMANonlocal, CayleyNonlocal
from .snl import SNL, gSNL
from .unified import GraphFilterNonlocal

__all__ = ["BLOCK_CLASSES", "ATTENTION_CLASSES", "KNOWN_BLOCKS", "unit_factory"]


def _ns_unit(in_channels: int, dim: int = 2, **options: Any) -> GraphFilterNonlocal:
    """A unit of Tao et al.'s nonlocal stage (biases, as NL)."""
    if "spec" in options:
        raise TypeError("the ns unit fixes its spec")
    options.setdefault("bias", True)
    return GraphFilterNonlocal(in_channels, dim=dim, spec="ns", **options)


#: Table name -> constructor of one block (``ns`` -> one unit; its block is a stage).
BLOCK_CLASSES: dict[str, Callable[..., GraphFilterNonlocal]] = {
    "nl": NonLocal,
    "ns": _ns_unit,
    "a2": DoubleAttention,
    "cgnl": CGNL,
    "cc": CrissCross,
    "dnl": DisentangledNonLocal,
    "snl": SNL,
    "gsnl": partial(gSNL, stable=False),
    "gsnl_stable": partial(gSNL, stable=True),
    "cayley": CayleyNonlocal,
    "arma": ARMANonlocal,
}


#: Attention table name (:data:`graphfilters.specs.ATTENTION_BLOCK_NAMES`) -> block class
#: (multi-head filters; not units of a :class:`~graphfilters.blocks.NonlocalStage`).
ATTENTION_CLASSES: dict[str, Callable[..., nn.Module]] = {
    "gfsa": GFSA,
    "attnscale": AttnScale,
    "diffattn": DiffAttention,
    "efficient": EfficientAttention,
}

#: Every name :func:`~graphfilters.blocks.make_block` knows, table order then attention table.
KNOWN_BLOCKS: tuple[str, ...] = (*BLOCK_NAMES, *ATTENTION_CLASSES)


# The declared constraint of a block name (the unknown-name check, case-insensitive, is
# :func:`block_key`'s own: its message lists the known blocks).
_BLOCK_NAME = [V.InstanceOf(str, "a block name (str)")]


@V.validate_params({"name": _BLOCK_NAME}, valid=lambda: {"name": "snl"})
def block_key(name: str) -> str:
    """The table key of ``name`` (case-insensitive); raises for an unknown name."""
    key = name.lower()
    if key not in BLOCK_CLASSES and key not in ATTENTION_CLASSES:
        raise ValueError(f"unknown block {name!r}; known blocks: {', '.join(KNOWN_BLOCKS)}")
    return key


@V.validate_params({"name": _BLOCK_NAME}, valid=lambda: {"name": "snl"})
def unit_factory(name: str) -> Callable[..., GraphFilterNonlocal]:
    """The constructor of one unit of block ``name`` (``ns``: a unit of the stage)."""
    key = block_key(name)
    if key in ATTENTION_CLASSES:
        raise ValueError(
            f"block {key!r} is a multi-head attention block, not a unit of a nonlocal stage "
            f"(stages share one affinity between units of {', '.join(BLOCK_NAMES)})"
        )
    return BLOCK_CLASSES[key]
