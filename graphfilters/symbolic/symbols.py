"""The symbol table of the symbolic layer: matrix symbols, scalars and their names.

Every matrix is a non-commutative :class:`sympy.MatrixSymbol` with symbolic shapes, so a
product written in the wrong order (``Z*A``) is a different expression from ``A*Z`` and the
proofs never rely on commutativity:

``A`` (:math:`N \\times N`)
    affinity of the block (its operator once the degree rules apply).
``Ahat`` (:math:`N \\times N`)
    normalized affinity :math:`\\hat A`.
``D`` (:math:`N \\times N`)
    degree matrix, :math:`d_i = \\sum_j A_{ij}` (positive diagonal).
``L``, ``L_sym``, ``L_rw`` (:math:`N \\times N`)
    Laplacians; ``Ltilde`` is the scaled :math:`\\tilde L = 2L/\\lambda_{max} - I`.
``I`` (:math:`N \\times N`)
    identity.
``Z`` (:math:`N \\times C_s`)
    projected graph signal.
``W``, ``W_k`` (:math:`C_s \\times C_{out}`)
    affinity-form weights; ``W^L_k`` are the Laplacian-form ones, :math:`W^L_k = (-1)^k W_k`.
``lambda_max``, ``gamma``, ``lambda`` (scalars)
    :math:`\\lambda_{max}`, CC's output scale :math:`\\gamma`, a Laplacian eigenvalue.

Examples
--------
>>> from graphfilters.symbolic.symbols import A, Z, W0, weight
>>> A * Z * W0
A*Z*W_0
>>> weight(3)
W_3
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

import sympy as sp
from sympy import Identity, MatrixSymbol

__all__ = [
    "N", "C_s", "C_out",
    "A", "Ahat", "D", "L", "L_sym", "L_rw", "Ltilde", "I", "Z", "W",
    "W0", "W1", "W2", "W3", "WL0", "WL1", "WL2",
    "lambda_max", "gamma", "lam",
    "P", "A_1", "A_2", "W_P", "V_1", "w_0", "w_1", "w_K", "K", "lambda_h", "lambda_d",
    "weight", "laplacian_weight", "weight_index", "is_weight", "is_laplacian_weight",
    "SYMBOLS",
]

#: Number of nodes (positions), input channels of ``Z`` and output channels.
N = sp.Symbol("N", integer=True, positive=True)
C_s = sp.Symbol("C_s", integer=True, positive=True)
C_out = sp.Symbol("C_out", integer=True, positive=True)

A = MatrixSymbol("A", N, N)
Ahat = MatrixSymbol("Ahat", N, N)
D = MatrixSymbol("D", N, N)
L = MatrixSymbol("L", N, N)
L_sym = MatrixSymbol("L_sym", N, N)
L_rw = MatrixSymbol("L_rw", N, N)
Ltilde = MatrixSymbol("Ltilde", N, N)
I = Identity(N)
Z = MatrixSymbol("Z", N, C_s)
#: The single learned weight of blocks written ``F = A Z W``.
W = MatrixSymbol("W", C_s, C_out)

# The attention table (graphfilters.specs.ATTENTION_BLOCKS):
#: The DC projector :math:`P = \mathbf 1\mathbf 1^T/N` (AttnScale). For a row-stochastic
#: affinity :math:`X`, :math:`XP = P`; :math:`P^2 = P`.
P = MatrixSymbol("P", N, N)
#: The two affinities of differential attention.
A_1 = MatrixSymbol("A_1", N, N)
A_2 = MatrixSymbol("A_2", N, N)
#: Weight of a projector term :math:`P Z W_P`, and of the second graph's term
#: :math:`A_2 Z V_1`, in the generic filter extended for the attention table.
W_P = MatrixSymbol("W_P", C_s, C_out)
V_1 = MatrixSymbol("V_1", C_s, C_out)
#: GFSA's learned scalars and its order :math:`K` (:math:`A^K` approximated to first order).
w_0 = sp.Symbol("w_0", real=True)
w_1 = sp.Symbol("w_1", real=True)
w_K = sp.Symbol("w_K", real=True)
K = sp.Symbol("K", integer=True, positive=True)
#: AttnScale's per-head scale and differential attention's :math:`\lambda`.
lambda_h = sp.Symbol("lambda_h", real=True)
lambda_d = sp.Symbol("lambda_d", real=True)

#: :math:`\lambda_{max}` of the Laplacian (a positive scalar).
lambda_max = sp.Symbol("lambda_max", positive=True)
#: Learned output scale of criss-cross attention.
gamma = sp.Symbol("gamma", real=True)
#: A Laplacian eigenvalue, the variable of frequency responses.
lam = sp.Symbol("lambda", real=True)

_WEIGHT = re.compile(r"^W_(\d+)$")
_LAPLACIAN_WEIGHT = re.compile(r"^W\^L_(\d+)$")


def weight(k: int) -> MatrixSymbol:
    """Affinity-form weight :math:`W_k` (:math:`C_s \\times C_{out}`).

    Examples
    --------
    >>> weight(2).shape
    (C_s, C_out)
    """
    return MatrixSymbol(f"W_{int(k)}", C_s, C_out)


def laplacian_weight(k: int) -> MatrixSymbol:
    """Laplacian-form weight :math:`W^L_k = (-1)^k W_k` of the generic filter.

    Examples
    --------
    >>> laplacian_weight(1)
    W^L_1
    """
    return MatrixSymbol(f"W^L_{int(k)}", C_s, C_out)


def weight_index(symbol: sp.Basic) -> int | None:
    """Index ``k`` of a weight symbol ``W_k`` or ``W^L_k``; ``None`` for anything else.

    Examples
    --------
    >>> weight_index(weight(4)), weight_index(W)
    (4, None)
    """
    if not isinstance(symbol, MatrixSymbol):
        return None
    match = _WEIGHT.match(symbol.name) or _LAPLACIAN_WEIGHT.match(symbol.name)
    return int(match.group(1)) if match else None


def is_weight(symbol: sp.Basic) -> bool:
    """Whether ``symbol`` is an affinity-form weight (``W`` or ``W_k``)."""
    return isinstance(symbol, MatrixSymbol) and (
        symbol.name == "W" or _WEIGHT.match(symbol.name) is not None
    )


def is_laplacian_weight(symbol: sp.Basic) -> bool:
    """Whether ``symbol`` is a Laplacian-form weight ``W^L_k``."""
    return isinstance(symbol, MatrixSymbol) and _LAPLACIAN_WEIGHT.match(symbol.name) is not None


W0, W1, W2, W3 = (weight(k) for k in range(4))
WL0, WL1, WL2 = (laplacian_weight(k) for k in range(3))

#: Names understood by :func:`graphfilters.symbolic.parse_filter` (plain-text spelling).
#: Weights ``W_k``/``Wk`` and ``W^L_k`` of any ``k`` are recognized by pattern.
SYMBOLS: Mapping[str, sp.Basic] = MappingProxyType(
    {
        "A": A,
        "Ahat": Ahat,
        "D": D,
        "L": L,
        "L_sym": L_sym,
        "L_rw": L_rw,
        "Ltilde": Ltilde,
        "I": I,
        "Z": Z,
        "W": W,
        "lambda_max": lambda_max,
        "gamma": gamma,
        "P": P,
        "A_1": A_1,
        "A_2": A_2,
        "W_P": W_P,
        "V_1": V_1,
        "w_0": w_0,
        "w_1": w_1,
        "w_K": w_K,
        "K": K,
        "lambda_h": lambda_h,
        "lambda_d": lambda_d,
    }
)
