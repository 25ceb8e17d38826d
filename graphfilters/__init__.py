"""graphfilters: nonlocal neural-network blocks as Chebyshev graph filters.

Submodules: :mod:`graphfilters.graph` (degrees, Laplacians, structured affinities),
:mod:`graphfilters.chebyshev` (polynomials and filters), :mod:`graphfilters.kernels`
(affinity kernels), :mod:`graphfilters.specs` (the block table), ``graphfilters.symbolic``
(sympy derivations) and ``graphfilters.blocks`` (PyTorch modules).
"""

from . import chebyshev, graph, kernels, specs
from .specs import BLOCK_NAMES, BlockSpec, get_spec

__version__ = "0.1.0"

__all__ = ["chebyshev", "graph", "kernels", "specs", "BLOCK_NAMES", "BlockSpec", "get_spec"]
