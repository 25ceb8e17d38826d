r"""Affinity kernels of the nonlocal blocks, as functions of the embeddings.

Each kernel returns what its structure allows (see :mod:`graphfilters.graph`): a
:class:`~graphfilters.graph.SoftmaxAffinity` for softmax kernels (never ``N x N`` in products),
a :class:`~graphfilters.graph.LowRankAffinity` for factorized kernels, and a
:class:`~graphfilters.graph.DenseAffinity` only where nothing better exists (concatenation).
Kernels return the *raw* affinity :math:`M`; the block applies the normalization of its
spec (``rw``, ``sym``, ``size``, ``none``) and the symmetrization.

Shapes
------
``theta``: ``(..., N, C)`` (queries), ``phi``: ``(..., M, C)`` (keys; ``M = N`` unless keys
are sub-sampled), ``x``: ``(..., N, C)``. numpy arrays and torch tensors both work.

Examples
--------
>>> import numpy as np
>>> from graphfilters import kernels
>>> rng = np.random.default_rng(0)
>>> theta, phi = rng.standard_normal((2, 16, 4))
>>> A = kernels.relu_dot(theta, phi).symmetrized()       # SNL: never 16 x 16 in products
>>> bool((A.dense() >= 0).all())
True
>>> S = kernels.embedded_gaussian(theta, phi)            # NL: row-stochastic
>>> np.allclose(S.dense().sum(-1), 1)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import _backend as B
from . import _validate as V
from ._backend import Array
from .criss_cross import criss_cross
from .graph import Affinity, DenseAffinity, LowRankAffinity, SoftmaxAffinity, SumAffinity

__all__ = [
    "embedded_gaussian",
    "dot_product",
    "relu_dot",
    "gaussian",
    "concatenation",
    "taylor_rbf",
    "double_attention",
    "criss_cross",
    "disentangled",
    "KERNELS",
    "get_kernel",
    "BLOCK_KERNELS",
    "BlockKernel",
    "KernelInputs",
]


def _pair(theta: Array, phi: Array, names: tuple[str, str] = ("theta", "phi")
          ) -> tuple[Array, Array]:
    a, b = names
    theta, phi = B.as_array(theta, a), B.as_array(phi, b)
    if theta.ndim < 2 or phi.ndim != theta.ndim or theta.shape[-1] != phi.shape[-1]:
        raise ValueError(
            f"{a} and {b} must have shapes (..., N, C) and (..., M, C) with the same C, got "
            f"{tuple(theta.shape)} and {tuple(phi.shape)}"
        )
    V.nonempty(theta, a)
    V.nonempty(phi, b)
    B.check_finite(theta, a)
    B.check_finite(phi, b)
    return theta, phi


def _pair_valid() -> dict[str, Array]:
    """A tiny valid ``theta, phi`` pair (the generated validation tests)."""
    return {"theta": [[0.1], [0.2]], "phi": [[0.3], [0.1]]}


@V.validate_params({"scale": [None, V.StrOptions({"sqrt"}), V.REAL]}, valid=_pair_valid)
def embedded_gaussian(theta: Array, phi: Array, scale: float | str | None = None) -> Affinity:
    r"""Embedded Gaussian (NL): :math:`A = \operatorname{softmax}_{row}(s\,\Theta\Phi^T)`.

    Parameters
    ----------
    scale : None, "sqrt" or float
        ``None``: :math:`s = 1` (Wang et al.); ``"sqrt"``: :math:`s = 1/\sqrt{C}`
        (transformers); a float: that factor.

    Returns
    -------
    SoftmaxAffinity (row-stochastic, ``D = I``).
    """
    theta, phi = _pair(theta, phi)
    if scale is None:
        s = 1.0
    elif isinstance(scale, str):                        # "sqrt" (declared)
        s = 1.0 / math.sqrt(theta.shape[-1])
    else:
        s = float(scale)
    return SoftmaxAffinity(theta, phi, scale=s)


def dot_product(theta: Array, phi: Array) -> LowRankAffinity:
    r"""Dot product (NL): :math:`M = \Theta \Phi^T`, rank :math:`\le C`.

    The NL block divides by :math:`N` (normalization ``"size"``); entries may be negative.
    """
    return LowRankAffinity(*_pair(theta, phi))


def relu_dot(theta: Array, phi: Array) -> LowRankAffinity:
    r"""ReLU dot product (SNL): :math:`M = \operatorname{ReLU}(\Theta)\operatorname{ReLU}(\Phi)^T`.

    Non-negative, so degrees are non-negative and :math:`D^{-1/2}` is real. Call
    ``.symmetrized()`` for :math:`\operatorname{sym}(M)`.

    Examples
    --------
    >>> import numpy as np
    >>> relu_dot(np.array([[1.0], [-1.0]]), np.array([[2.0], [3.0]])).dense()
    array([[2., 3.],
           [0., 0.]])
    """
    theta, phi = _pair(theta, phi)
    return LowRankAffinity(B.relu(theta), B.relu(phi))


def gaussian(x: Array) -> SoftmaxAffinity:
    r"""Gaussian (NL, no embedding): :math:`A = \operatorname{softmax}_{row}(X X^T)`."""
    x, _ = _pair(x, x, ("x", "x"))
    return SoftmaxAffinity(x, x, scale=1.0)


def concatenation(theta: Array, phi: Array, w_theta: Array, w_phi: Array) -> DenseAffinity:
    r"""Concatenation (NL): :math:`M_{ij} = \operatorname{ReLU}(w_f^T[\theta_i; \phi_j])
    = \operatorname{ReLU}(\theta_i^T w_\theta + \phi_j^T w_\phi)`.

    Dense ``(..., N, M)``: the ReLU of a sum has no factorization. The NL block divides by
    :math:`N` (normalization ``"size"``).

    Shapes
    ------
    ``w_theta``, ``w_phi``: ``(C,)``.
    """
    theta, phi = _pair(theta, phi)
    w_theta, w_phi = B.as_array(w_theta, "w_theta"), B.as_array(w_phi, "w_phi")
    B.check_finite(w_theta, "w_theta")
    B.check_finite(w_phi, "w_phi")
    if tuple(w_theta.shape) != (theta.shape[-1],) or tuple(w_phi.shape) != (phi.shape[-1],):
        raise ValueError(
            f"w_theta and w_phi must have shape ({theta.shape[-1]},), got "
            f"{tuple(w_theta.shape)} and {tuple(w_phi.shape)}"
        )
    a = theta @ w_theta
    b = phi @ w_phi
    return DenseAffinity(B.relu(a[..., :, None] + b[..., None, :]))


#: Largest Taylor order of :func:`taylor_rbf`.
MAX_TAYLOR_ORDER = 32


@V.validate_params(
    {"theta": ["array-like"], "phi": ["array-like"],
     "order": [V.Interval(V.Integral, 0, MAX_TAYLOR_ORDER, closed="both")],
     "gamma": [V.POS_REAL], "beta": [V.POS_REAL, None]},
    valid=lambda: {"theta": [0.1, 0.2], "phi": [0.3, 0.1]},
)
def taylor_rbf(
    theta: Array, phi: Array, order: int = 2, gamma: float = 1e-4, beta: float | None = None
) -> LowRankAffinity:
    r"""Taylor-expanded Gaussian RBF (CGNL) on scalar nodes, rank ``order + 1``.

    .. math::

        e^{-\gamma(\theta_i - \phi_j)^2}
        = e^{-\gamma\theta_i^2} e^{-\gamma\phi_j^2} e^{2\gamma\theta_i\phi_j}
        \approx \sum_{p=0}^{P} \beta_{ij} \frac{(2\gamma)^p}{p!}\theta_i^p \phi_j^p .

    With ``beta=None`` the envelope :math:`\beta_{ij} = e^{-\gamma\theta_i^2}e^{-\gamma\phi_j^2}`
    is exact; a float uses that constant instead (CGNL's code takes
    :math:`\beta = e^{-2\gamma}`, i.e. unit-norm embeddings).

    Parameters
    ----------
    theta, phi : (..., M)
        One scalar per node (CGNL's nodes are the position-channel pairs, ``M = N C``).
    order : int
        Order ``P`` of the Taylor expansion (not the filter order).

    Examples
    --------
    >>> import numpy as np
    >>> t, p = np.array([0.1, -0.3]), np.array([0.2, 0.4])
    >>> exact = np.exp(-1.0 * (t[:, None] - p[None, :]) ** 2)
    >>> bool(np.abs(taylor_rbf(t, p, order=8, gamma=1.0).dense() - exact).max() < 1e-9)
    True
    """
    theta, phi = B.as_array(theta, "theta"), B.as_array(phi, "phi")
    if theta.ndim < 1 or theta.shape != phi.shape:
        raise ValueError(
            "theta and phi must have the same shape (..., M) (one scalar per node), got "
            f"{tuple(theta.shape)} and {tuple(phi.shape)}"
        )
    # order <= MAX_TAYLOR_ORDER: theta**order overflows beyond, and the series has converged
    # long before for the small gamma of CGNL
    order, gamma = int(order), float(gamma)
    beta = None if beta is None else float(beta)
    V.nonempty(theta, "theta")
    B.check_finite(theta, "theta")
    B.check_finite(phi, "phi")
    alphas = [math.sqrt((2 * gamma) ** p / math.factorial(p)) for p in range(order + 1)]
    if beta is None:
        et, ep = B.xp(theta).exp(-gamma * theta**2), B.xp(phi).exp(-gamma * phi**2)
    else:
        et = ep = math.sqrt(float(beta))
    stack = B.xp(theta).stack
    P = stack([a * theta**p * et for p, a in enumerate(alphas)], -1)
    Q = stack([a * phi**p * ep for p, a in enumerate(alphas)], -1)
    return LowRankAffinity(P, Q)




def double_attention(gather_logits: Array, distribute_logits: Array) -> LowRankAffinity:
    r"""Double attention (A²): :math:`A = S_d S_g^T`, rank :math:`\le m`, row-stochastic.

    :math:`S_g = \operatorname{softmax}` of ``gather_logits`` over positions (each of the
    :math:`m` descriptors is a convex combination of positions), and
    :math:`S_d = \operatorname{softmax}` of ``distribute_logits`` over the :math:`m`
    descriptors (each position mixes the descriptors). Rows of :math:`A` sum to one.

    Shapes
    ------
    ``gather_logits``, ``distribute_logits``: ``(..., N, m)``.

    Examples
    --------
    >>> import numpy as np
    >>> g, d = np.random.default_rng(0).standard_normal((2, 10, 3))
    >>> np.allclose(double_attention(g, d).degrees(), 1)
    True
    """
    g, d = _pair(gather_logits, distribute_logits, ("gather_logits", "distribute_logits"))
    if g.shape != d.shape:
        raise ValueError(
            f"gather and distribute logits must share the shape (..., N, m), got "
            f"{tuple(g.shape)} and {tuple(d.shape)}"
        )
    aff = LowRankAffinity(B.softmax(d, -1), B.softmax(g, -2))
    aff.row_stochastic = True
    return aff


@V.validate_params({"scale": [V.REAL]},
                   valid=lambda: {**_pair_valid(), "unary_logits": [0.0, 0.0]})
def disentangled(
    theta: Array, phi: Array, unary_logits: Array, scale: float = 1.0
) -> SumAffinity:
    r"""Disentangled kernel (DNL): whitened pairwise softmax plus a unary term.

    .. math::

        A = \operatorname{softmax}_{row}\big(s\,(\Theta - \mathbf 1\mu_\theta^T)
        (\Phi - \mathbf 1\mu_\phi^T)^T\big) + \mathbf 1\, \operatorname{softmax}(u)^T,

    with :math:`\mu` the means over positions and :math:`u` the unary logits (one per key;
    DNL's ``conv_mask``). Both terms are row-stochastic, so rows sum to 2: a
    :class:`~graphfilters.graph.SumAffinity` of a
    :class:`~graphfilters.graph.SoftmaxAffinity` and a rank-one
    :class:`~graphfilters.graph.LowRankAffinity`; never ``N x N`` in products.

    Shapes
    ------
    ``theta``, ``phi``: ``(..., N, C)``; ``unary_logits``: ``(..., N)`` or ``(..., N, 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> t, p = np.random.default_rng(0).standard_normal((2, 5, 3))
    >>> A = disentangled(t, p, np.zeros(5))
    >>> np.allclose(A.degrees(), 2), np.allclose(A.dense()[0] - A.dense()[1], 0)
    (True, False)
    """
    theta, phi = _pair(theta, phi)
    if theta.shape[-2] != phi.shape[-2]:
        raise ValueError(
            "the disentangled kernel needs as many keys as queries (no sub-sampling), got "
            f"{theta.shape[-2]} and {phi.shape[-2]}"
        )
    u = B.as_array(unary_logits, "unary_logits")
    B.check_finite(u, "unary_logits")
    if u.ndim == theta.ndim:
        u = u[..., 0]
    if tuple(u.shape) != tuple(phi.shape[:-1]):
        raise ValueError(
            f"unary_logits must have shape {tuple(phi.shape[:-1])} (one logit per key), got "
            f"{tuple(B.as_array(unary_logits).shape)}"
        )
    if B.is_torch(theta):
        tc = theta - theta.mean(dim=-2, keepdim=True)
        pc = phi - phi.mean(dim=-2, keepdim=True)
    else:
        tc = theta - theta.mean(axis=-2, keepdims=True)
        pc = phi - phi.mean(axis=-2, keepdims=True)
    pairwise = SoftmaxAffinity(tc, pc, scale=float(scale))
    s = B.softmax(u, -1)[..., None]
    unary = LowRankAffinity(B.ones(tuple(s.shape), s), s)
    unary.row_stochastic = True
    return SumAffinity([pairwise, unary])


#: Kernel name (as in :data:`graphfilters.specs.KERNEL_NAMES`) -> function.
KERNELS: dict[str, Callable[..., Affinity]] = {
    "embedded_gaussian": embedded_gaussian,
    "dot_product": dot_product,
    "relu_dot": relu_dot,
    "gaussian": gaussian,
    "concatenation": concatenation,
    "taylor_rbf": taylor_rbf,
    "double_attention": double_attention,
    "criss_cross": criss_cross,
    "disentangled": disentangled,
}


@V.validate_params({"name": [V.StrOptions(lambda: KERNELS)]}, valid=lambda: {"name": "relu_dot"})
def get_kernel(name: str) -> Callable[..., Affinity]:
    """The kernel function called ``name``; unknown names list the known ones.

    Examples
    --------
    >>> get_kernel("relu_dot").__name__
    'relu_dot'
    """
    return KERNELS[name]


# ------------------------------------------------------------------------------------------
# How a block calls each kernel: one row per kernel (the unified block has no if/elif chain).
@dataclass(frozen=True)
class KernelInputs:
    r"""What a block hands to a kernel.

    Attributes
    ----------
    theta, phi : Tensor ``(B, N, C_a)``, ``(B, M, C_a)`` or None
        Query/key embeddings (``None`` for kernels without projections).
    x : Tensor ``(B, N, C)``
        The input as a graph signal (the ``gaussian`` kernel); ``x_keys`` its (sub-sampled) keys.
    unary : Tensor ``(B, M)`` or None
        Unary logits (DNL).
    concat_weight : Tensor ``(2 C_a,)`` or None
        The concatenation kernel's :math:`w_f`.
    spatial : tuple of int
        Spatial shape of the input (criss-cross).
    groups : int
        Channel groups of CGNL's channel x position graph.
    normalization : str
        The block's normalization (lets ``relu_dot`` skip a validation pass the
        normalization repeats).
    theta_phi : Tensor ``(B, N, 2 C_a)`` or None
        ``[theta, phi]`` as one tensor when the block projects them together (``theta`` and
        ``phi`` are then its halves); ``relu_dot`` keeps it stacked
        (:meth:`~graphfilters.graph.LowRankAffinity.from_stacked`).
    """

    theta: Array | None
    phi: Array | None
    x: Array | None = None
    x_keys: Array | None = None
    unary: Array | None = None
    concat_weight: Array | None = None
    spatial: tuple[int, ...] = ()
    groups: int = 1
    normalization: str = "none"
    theta_phi: Array | None = None


@dataclass(frozen=True)
class BlockKernel:
    """One row of :data:`BLOCK_KERNELS`.

    Attributes
    ----------
    build : callable
        ``build(inputs, **options) -> Affinity``.
    options : Mapping
        Options a block accepts in ``kernel_options``, with defaults.
    projections : tuple of str
        Learned projections the block creates: ``"theta"``, ``"phi"``, ``"unary"`` (a
        1-channel conv), ``"concat"`` (the vector :math:`w_f`).
    subsample : bool
        Keys may be max-pooled (the NL family).
    channel_nodes : bool
        Nodes are (channel, position) pairs (CGNL), not positions.
    """

    build: Callable[..., Affinity]
    options: Mapping[str, object] = field(default_factory=dict)
    projections: tuple[str, ...] = ("theta", "phi")
    subsample: bool = False
    channel_nodes: bool = False


def _relu_dot_block(i: KernelInputs) -> Affinity:
    if i.normalization in ("sym", "rw"):
        # no finiteness pass over the (B, N, C_s) factors: the normalization checks the
        # degrees, which are NaN/Inf whenever a factor is.
        if i.theta_phi is not None:   # one ReLU; [P, Q] stays one tensor (no concatenation)
            return LowRankAffinity.from_stacked(B.relu(i.theta_phi), i.theta.shape[-1],
                                                check=False)
        return LowRankAffinity(B.relu(i.theta), B.relu(i.phi), check=False)
    return relu_dot(i.theta, i.phi)


def _concatenation_block(i: KernelInputs) -> Affinity:
    ca = i.theta.shape[-1]
    return concatenation(i.theta, i.phi, i.concat_weight[:ca], i.concat_weight[ca:])


def _channel_nodes(z: Array, groups: int) -> Array:
    """``(B, N, C)`` → ``(B, G, C/G · N)``: channel-major scalar nodes per group."""
    b, n, c = z.shape
    return z.transpose(1, 2).reshape(b, groups, (c // groups) * n)


def _taylor_rbf_block(i: KernelInputs, taylor_order: int, gamma: float,
                      beta: float | str) -> Affinity:
    if beta == "code":
        beta = math.exp(-2 * gamma)
    return taylor_rbf(_channel_nodes(i.theta, i.groups), _channel_nodes(i.phi, i.groups),
                      order=taylor_order, gamma=gamma, beta=beta)


#: Kernel name -> how a block builds it (read by :class:`graphfilters.blocks.GraphFilterNonlocal`;
#: a new kernel is its function plus one row here).
BLOCK_KERNELS: Mapping[str, BlockKernel] = MappingProxyType({
    "embedded_gaussian": BlockKernel(
        lambda i, scale: embedded_gaussian(i.theta, i.phi, scale=scale),
        {"scale": None}, subsample=True),
    "gaussian": BlockKernel(
        lambda i, scale: embedded_gaussian(i.x, i.x_keys, scale=scale),
        {"scale": None}, projections=(), subsample=True),
    "dot_product": BlockKernel(lambda i: dot_product(i.theta, i.phi), subsample=True),
    "relu_dot": BlockKernel(_relu_dot_block),
    "concatenation": BlockKernel(_concatenation_block, projections=("theta", "phi", "concat"),
                                 subsample=True),
    "double_attention": BlockKernel(
        lambda i: double_attention(gather_logits=i.phi, distribute_logits=i.theta)),
    "taylor_rbf": BlockKernel(_taylor_rbf_block,
                              {"taylor_order": 2, "gamma": 1e-4, "beta": "code"},
                              channel_nodes=True),
    "criss_cross": BlockKernel(
        lambda i, scale: criss_cross(i.theta, i.phi, i.spatial, scale=scale), {"scale": 1.0}),
    "disentangled": BlockKernel(
        lambda i, scale: disentangled(i.theta, i.phi, i.unary, scale=scale), {"scale": 1.0},
        projections=("theta", "phi", "unary")),
})
