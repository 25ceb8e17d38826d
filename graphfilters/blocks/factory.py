"""Blocks by table name: :func:`make_block`."""

from __future__ import annotations

from typing import Any

from torch import nn

from .. import _validate as V
from .stage import NonlocalStage
from .units import ATTENTION_CLASSES, BLOCK_CLASSES, KNOWN_BLOCKS, block_key, unit_factory

__all__ = ["make_block", "unit_factory", "BLOCK_CLASSES", "ATTENTION_CLASSES", "KNOWN_BLOCKS"]


@V.validate_params(
    {"name": [V.InstanceOf(str, "a block name (str)")], "in_channels": [V.POS_INT],
     "n_units": [V.POS_INT, None]},
    valid=lambda: {"name": "snl", "in_channels": 4},
)
def make_block(
    name: str, in_channels: int, dim: int = 2, n_units: int | None = None, **options: Any
) -> nn.Module:
    r"""Build the block called ``name`` in the block table
    (:data:`graphfilters.specs.BLOCK_NAMES`) or the attention table
    (:data:`graphfilters.specs.ATTENTION_BLOCK_NAMES`); every known name is in
    :data:`KNOWN_BLOCKS`.

    Parameters
    ----------
    name : str
        ``nl``, ``ns``, ``a2``, ``cgnl``, ``cc``, ``dnl``, ``snl``, ``gsnl``, ``gsnl_stable``,
        ``cayley``, ``arma``; the multi-head attention filters ``gfsa``, ``attnscale``,
        ``diffattn``, ``efficient``.
    in_channels : int
    dim : {1, 2, 3}
    n_units : int, optional
        If given, a :class:`NonlocalStage` of ``n_units`` units sharing one affinity
        computed from the stage input. ``ns`` is always a stage (one unit by default). The
        attention blocks are not stage units (``ValueError``).
    **options
        Constructor arguments of the block (``mode=`` for ``nl``, ``inter_channels``,
        ``order``, ``relu_after_norm``, ...).

    Returns
    -------
    GraphFilterNonlocal, NonlocalStage or AttentionFilterBlock

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
    >>> make_block("attnscale", 16, heads=2).spec.projector
    True
    >>> make_block("xl", 16)   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown block 'xl'; known blocks: nl, ns, a2, cgnl, cc, dnl, snl, gsnl, ...
    """
    key = block_key(name)
    if "mode" in options and key != "nl":
        raise ValueError(f"block {key!r} has no modes; only 'nl' has modes (mode=...)")
    if key in ATTENTION_CLASSES:
        if n_units is not None:
            unit_factory(key)                      # raises: not a stage unit
        return ATTENTION_CLASSES[key](in_channels, dim=dim, **options)
    if n_units is not None or key == "ns":
        return NonlocalStage(in_channels, n_units=1 if n_units is None else n_units, block=key,
                             dim=dim, **options)
    return BLOCK_CLASSES[key](in_channels, dim=dim, **options)
