r"""Nonlocal blocks as PyTorch modules: one unified Chebyshev block and every named block.

:class:`GraphFilterNonlocal` computes :math:`Y = X + \operatorname{Norm}(\sum_k B_k(\hat A) Z
W_k)` for any row of the block table (:mod:`graphfilters.specs`); the named blocks are its
configurations, each with an original-form twin in :mod:`graphfilters.blocks.reference` and a
``from_reference`` converter, and :func:`make_block` builds any of them by table name.

=================  ==========================  ============================================
table name         class                       original form (``reference``)
=================  ==========================  ============================================
``nl``             :class:`NonLocal`           :class:`~.reference.NonLocalRef`
``ns``             :class:`NonlocalStage`      :class:`~.reference.NonlocalStageRef`
``a2``             :class:`DoubleAttention`    :class:`~.reference.DoubleAttentionRef`
``cgnl``           :class:`CGNL`               :class:`~.reference.CGNLRef`
``cc``             :class:`CrissCross`         :class:`~.reference.CrissCrossRef`
``dnl``            :class:`DisentangledNonLocal` :class:`~.reference.DisentangledNonLocalRef`
``snl``            :class:`SNL`                :class:`~.reference.OfficialSNL`
``gsnl``           :class:`gSNL`               :class:`~.reference.GSNLRef`
``gsnl_stable``    ``gSNL(stable=True)``       ``GSNLRef(stable=True)``
``cayley``         :class:`CayleyNonlocal`     dense explicit inverse (``materialize=True``)
``arma``           :class:`ARMANonlocal`       dense explicit inverse (``materialize=True``)
``gfsa``           :class:`GFSA`               :class:`~.reference.GFSARef`
``attnscale``      :class:`AttnScale`          :class:`~.reference.AttnScaleRef`
``diffattn``       :class:`DiffAttention`      :class:`~.reference.DiffAttentionRef`
``efficient``      :class:`EfficientAttention` :class:`~.reference.EfficientAttentionRef`
=================  ==========================  ============================================

The last rows are the multi-head attention filters of the attention table
(:data:`graphfilters.specs.ATTENTION_BLOCKS`, frame
:class:`~graphfilters.blocks.attention.AttentionFilterBlock`).

Examples
--------
>>> import torch
>>> from graphfilters.blocks import make_block
>>> block = make_block("snl", 16)
>>> x = torch.randn(4, 16, 8, 8)
>>> torch.equal(block(x), x)            # BN scale zero-initialized: identity at start
True
"""

from . import reference
from .a2 import DoubleAttention
from .attention import AttentionFilterBlock
from .attnscale import AttnScale
from .cc import CrissCross
from .cgnl import CGNL
from .diffattn import DiffAttention
from .dnl import DisentangledNonLocal
from .efficient import EfficientAttention
from .factory import ATTENTION_CLASSES, BLOCK_CLASSES, KNOWN_BLOCKS, make_block
from .gfsa import GFSA
from .nl import NonLocal
from .rational import ARMANonlocal, CayleyNonlocal
from .record import FilterRecord, OutputAffine
from .snl import SNL, gSNL
from .stage import NonlocalStage
from .unified import KERNEL_OPTIONS, OUT_NORMS, GraphFilterNonlocal

__all__ = [
    "GraphFilterNonlocal",
    "NonlocalStage",
    "NonLocal",
    "DoubleAttention",
    "CGNL",
    "CrissCross",
    "DisentangledNonLocal",
    "SNL",
    "gSNL",
    "CayleyNonlocal",
    "ARMANonlocal",
    "AttentionFilterBlock",
    "GFSA",
    "AttnScale",
    "DiffAttention",
    "EfficientAttention",
    "make_block",
    "BLOCK_CLASSES",
    "ATTENTION_CLASSES",
    "KNOWN_BLOCKS",
    "FilterRecord",
    "OutputAffine",
    "KERNEL_OPTIONS",
    "OUT_NORMS",
    "reference",
]


def __getattr__(name: str) -> object:
    """``ChebyshevNonlocal``, the earlier name of :class:`GraphFilterNonlocal`, through the
    one deprecation shim of :mod:`graphfilters.blocks.unified`."""
    if name == "ChebyshevNonlocal":
        from . import unified

        return unified.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
