r"""Frequency responses of trained blocks and the graph-frequency energy of their signals.

A block filters :math:`Z` with :math:`F = \sum_k B_k(\hat A) Z W_k` (affinity form). On an
eigenvector of :math:`\hat A` with eigenvalue :math:`\mu`, i.e. of the Laplacian
:math:`L = I - \hat A` with eigenvalue :math:`\lambda = 1 - \mu`, it acts as the
:math:`C_s \times C_{out}` matrix

.. math::

    H(\lambda) = \sum_{k=0}^{K} B_k(1 - \lambda)\, W_k
               = \sum_{k=0}^{K} T_k\Big(\frac{2\lambda}{\lambda_{max}} - 1\Big) W^L_k,
    \qquad W^L_k = (-1)^k W_k \quad (\lambda_{max} = 2),

the second (Laplacian) form holding for the Chebyshev basis because
:math:`T_k(-x) = (-1)^k T_k(x)`. For ``basis="stable"`` (gSNL 2019) the block's own basis
:math:`B_k` is used (:math:`B_2(\mu) = 2\mu - 1`, ...), evaluated by
:func:`graphfilters.chebyshev.polynomial_terms`. The rational bases (``cayley``, ``arma``) are
evaluated with the block's learned parameters (``Capture.basis_params``: the zoom :math:`h`,
the poles :math:`\psi_k`), their values from :meth:`graphfilters.filters.FilterFamily.values`
and their signals from the family's shifted solves (:func:`basis_terms`). For the
``size``/``none`` normalizations :math:`\lambda = 1 - \mu` is not the spectrum of a normalized
Laplacian; the response is then drawn over :math:`[0, \max|\lambda|]` of the captured
spectrum.

Classification rule (:func:`classify_response`)
-----------------------------------------------
On the largest singular value :math:`g(\lambda) = \sigma_1(H(\lambda))` sampled uniformly on
:math:`[0, \lambda_{max}]`, with the mean gains ``low``, ``mid``, ``high`` on the three thirds
of the interval and ``ratio`` = 1.5 (about 3.5 dB):

1. ``"zero"`` if :math:`\max g \le 10^{-12}` (e.g. an untrained block whose weights are 0);
2. ``"all-pass"`` if :math:`\max g / \min g \le` ``ratio`` (flat);
3. ``"band-pass"`` if ``mid`` :math:`\ge` ``ratio`` :math:`\cdot \max(`\ ``low, high``\ :math:`)`;
4. ``"band-stop"`` if ``mid`` :math:`\le \min(`\ ``low, high``\ :math:`)` / ``ratio``;
5. ``"low-pass"`` if ``low`` :math:`\ge` ``ratio`` :math:`\cdot` ``high``;
6. ``"high-pass"`` if ``high`` :math:`\ge` ``ratio`` :math:`\cdot` ``low``;
7. otherwise ``"all-pass"`` (no dominant band).

The classification uses the filter weights alone (the shape of the response); the output
normalization's per-channel scale is applied only when ``include_output_scale=True``.
For example NL's :math:`H = (1 - \lambda) W` is a notch at :math:`\lambda = 1` on
:math:`[0, 2]` (``band-stop``), NS's :math:`H = -\lambda W` is ``high-pass``.

Graph Fourier transform
-----------------------
:func:`analysis.energy.graph_frequency_energy`, in :mod:`analysis.energy`.

Examples
--------
>>> import numpy as np
>>> from analysis.response import frequency_response, classify_response
>>> lam = np.linspace(0, 2, 201)
>>> H = frequency_response([np.zeros((1, 1)), np.ones((1, 1))], lam)   # NL: H = 1 - lam
>>> classify_response(lam, np.abs(H[:, 0, 0]))[0]
'band-stop'
>>> classify_response(lam, lam)[0]                     # g = lambda
'high-pass'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from graphfilters import _validate as V
from graphfilters._backend import to_numpy
from graphfilters.chebyshev import polynomial_filter, polynomial_terms
from graphfilters.filters import GraphOperator, filter_sum, get_filter
from graphfilters.graph import NormalizedOperator

from .capture_record import Capture, example_capture
from .energy import FrequencyEnergy, graph_frequency_energy
from .spectra import AUTO_DENSE_LIMIT, Spectrum, spectrum

__all__ = [
    "RESPONSE_CLASSES",
    "laplacian_weights",
    "basis_values",
    "frequency_response",
    "response_gains",
    "classify_response",
    "FrequencyEnergy",
    "graph_frequency_energy",
    "BlockResponse",
    "block_response",
    "filter_output",
    "basis_terms",
    "apply_filter",
    "pencil_gains",
    "head_factors",
    "layer_gains",
]

RESPONSE_CLASSES = ("zero", "all-pass", "band-pass", "band-stop", "low-pass", "high-pass")


def weights_float64(weights: Sequence[Any]) -> list[np.ndarray]:
    out = []
    for w in weights:
        w = to_numpy(w, np.float64)
        out.append(w.reshape(1, 1) if w.ndim == 0 else w)
    if not out:
        raise ValueError("weights must hold at least one term W_0")
    shapes = {w.shape for w in out}
    if len(shapes) != 1 or out[0].ndim != 2:
        raise ValueError(
            f"weights must be K+1 matrices (C_s, C_out) of one shape, got shapes {sorted(shapes)}"
        )
    return out


def laplacian_weights(weights: Sequence[Any]) -> list[np.ndarray]:
    r"""Laplacian-form weights :math:`W^L_k = (-1)^k W_k` from affinity-form ones
    (:math:`\lambda_{max} = 2`, Chebyshev basis).

    Examples
    --------
    >>> [float(w[0, 0]) for w in laplacian_weights([1.0, 2.0, 3.0])]
    [1.0, -2.0, 3.0]
    """
    return [(-1) ** k * w for k, w in enumerate(weights_float64(weights))]


def basis_values(
    order: int, mu: Any, basis: str = "chebyshev", params: Any = None
) -> np.ndarray:
    r"""Values :math:`B_k(\mu)` of the block basis at (complex) ``mu``.

    Read from the filter registry (:meth:`graphfilters.filters.FilterFamily.values`), so
    every basis is exactly the blocks' one; rational bases (``cayley``, ``arma``) take their
    ``params`` (``{"zoom": h}``, ``{"poles": psi}``).

    Shapes
    ------
    ``mu``: ``(n,)`` → ``(n, n_terms)`` (``order + 1`` for polynomial bases).

    Examples
    --------
    >>> basis_values(2, [0.5], "chebyshev"), basis_values(2, [0.5], "stable")
    (array([[ 1. ,  0.5, -0.5]]), array([[1. , 0.5, 0. ]]))
    """
    mu = np.atleast_1d(np.asarray(mu))
    dtype = np.complex128 if np.iscomplexobj(mu) else np.float64
    return get_filter(basis).values(mu.astype(dtype), order, params)


#: The two forms of :func:`frequency_response`.
RESPONSE_FORMS = ("affinity", "laplacian")


@V.validate_params(
    {"form": [V.StrOptions(RESPONSE_FORMS)], "basis": V.declared(get_filter, "name"),
     "lambda_max": [V.POS_REAL]},
    valid=lambda: {"weights": [np.array([[0.3]]), np.array([[0.7]])],
                   "lam": np.array([0.0, 1.0, 2.0])},
)
def frequency_response(
    weights: Sequence[Any],
    lam: Any,
    *,
    form: str = "affinity",
    basis: str = "chebyshev",
    lambda_max: float = 2.0,
    params: Any = None,
) -> np.ndarray:
    r"""The matrix response :math:`H(\lambda)` of a filter (polynomial or rational).

    Parameters
    ----------
    weights : sequence of ``K + 1`` matrices ``(C_s, C_out)`` (or scalars)
    lam : array ``(n,)``, real or complex
        Laplacian eigenvalues (:math:`\lambda = 1 - \mu`).
    form : {"affinity", "laplacian"}
        ``"affinity"``: ``weights`` act on :math:`B_k(\hat A)` (what blocks record),
        :math:`H(\lambda) = \sum_k B_k(1 - \lambda) W_k`. ``"laplacian"``: ``weights`` act on
        :math:`T_k(\tilde L)`, :math:`H(\lambda) = \sum_k T_k(2\lambda/\lambda_{max} - 1) W_k`.
    basis : str
        Basis of the affinity form (a name of :data:`graphfilters.filters.FILTERS`).
    lambda_max : float
        Rescaling of the Laplacian form.
    params : mapping, optional
        Parameters of a rational basis (see :func:`basis_values`).

    Returns
    -------
    numpy array ``(n, C_s, C_out)`` (complex for complex ``lam``).

    Examples
    --------
    >>> import numpy as np
    >>> W = [np.array([[0.3]]), np.array([[0.7]])]
    >>> lam = np.array([0.0, 1.0, 2.0])
    >>> frequency_response(W, lam)[:, 0, 0]                       # 0.3 + 0.7 (1 - lam)
    array([ 1. ,  0.3, -0.4])
    >>> np.allclose(frequency_response(laplacian_weights(W), lam, form="laplacian"),
    ...             frequency_response(W, lam))
    True
    """
    ws = weights_float64(weights)
    lam = np.atleast_1d(np.asarray(lam))
    order = get_filter(basis).order_of(len(ws))
    if form == "affinity":
        vals = basis_values(order, 1 - lam, basis, params)
    else:                                                   # "laplacian"
        if basis != "chebyshev":
            raise ValueError(
                "the Laplacian form is defined for the Chebyshev basis only; use "
                "form='affinity' with basis='stable'"
            )
        vals = basis_values(order, 2 * lam / lambda_max - 1, "chebyshev")
    W = np.stack(ws)                                       # (K+1, C_s, C_out)
    return np.einsum("nk,kio->nio", vals, W)


def response_gains(H: np.ndarray) -> np.ndarray:
    """Singular values of each ``H(λ)``, descending: ``(n, min(C_s, C_out))``.

    Examples
    --------
    >>> import numpy as np
    >>> response_gains(np.array([np.diag([1.0, -3.0])]))
    array([[3., 1.]])
    """
    return np.linalg.svd(np.asarray(H), compute_uv=False)


@V.validate_params(
    {"lambda_max": [V.NONNEG_REAL, None],
     "ratio": [V.Interval(Real, 1, None, closed="neither")]},
    valid=lambda: {"lam": np.linspace(0, 2, 7), "gain": np.linspace(1, 0, 7)},
)
def classify_response(
    lam: Any, gain: Any, lambda_max: float | None = None, ratio: float = 1.5
) -> tuple[str, dict[str, float]]:
    r"""Low-/high-/band-pass, band-stop, all-pass or zero (see the module docstring).

    Parameters
    ----------
    lam : array ``(n,)``
        Uniform grid over :math:`[0, \lambda_{max}]`.
    gain : array ``(n,)``
        The largest singular value curve :math:`g(\lambda)`.
    lambda_max : float, optional
        End of the interval (default ``lam.max()``).
    ratio : float
        Threshold between bands (> 1).

    Returns
    -------
    (label, {"low", "mid", "high", "max", "min"})

    Examples
    --------
    >>> import numpy as np
    >>> lam = np.linspace(0, 2, 61)
    >>> classify_response(lam, np.exp(-2 * lam))[0], classify_response(lam, 1 + 0 * lam)[0]
    ('low-pass', 'all-pass')
    """
    lam = np.asarray(lam, dtype=float).ravel()
    g = np.asarray(gain, dtype=float).ravel()
    if lam.shape != g.shape or lam.size < 3:
        raise ValueError("lam and gain must be 1-D arrays of the same length >= 3")
    top = float(lam.max()) if lambda_max is None else float(lambda_max)
    lo = lam <= top / 3
    hi = lam >= 2 * top / 3
    mid = ~lo & ~hi
    if not mid.any():
        mid = lo | hi
    stats = {
        "low": float(g[lo].mean()), "mid": float(g[mid].mean()), "high": float(g[hi].mean()),
        "max": float(g.max()), "min": float(g.min()),
    }
    if stats["max"] <= 1e-12:
        return "zero", stats
    if stats["max"] <= ratio * stats["min"]:
        return "all-pass", stats
    low, midv, high = stats["low"], stats["mid"], stats["high"]
    if midv >= ratio * max(low, high):
        return "band-pass", stats
    if midv * ratio <= min(low, high):
        return "band-stop", stats
    if low >= ratio * high:
        return "low-pass", stats
    if high >= ratio * low:
        return "high-pass", stats
    return "all-pass", stats


def pencil_gains(weights: Sequence[Any], lam: Any, *, basis: str = "chebyshev",
                 params: Any = None) -> np.ndarray:
    r"""Singular values of :math:`H(\lambda) = \sum_k B_k(1 - \lambda) W_k` at many
    :math:`\lambda`, using that :math:`H` is a pencil in the basis values.

    Equal to ``response_gains(frequency_response(weights, lam, basis=basis))`` without one
    ``C_s x C_out`` SVD per frequency where the structure allows: with one nonzero term
    (:math:`W_0 = 0`: NL, attention) :math:`\sigma(H(\lambda)) = |B_k(1-\lambda)|\,
    \sigma(W_k)` (one SVD in all); otherwise every :math:`W_k` is restricted to the joint row
    space of the terms (dimension :math:`\le \min(C_{out}, (K+1) C_s)`), which keeps the
    singular values, and the small problems are solved in one batched call. ``params``:
    the parameters of a rational basis (see :func:`basis_values`).

    Shapes
    ------
    ``lam``: ``(n,)`` → ``(n, min(C_s, C_out))``, descending.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> W = [np.zeros((3, 8)), rng.standard_normal((3, 8))]
    >>> lam = np.array([0.0, 0.5, 1.7])
    >>> np.allclose(pencil_gains(W, lam), response_gains(frequency_response(W, lam)))
    True
    """
    ws = weights_float64(weights)
    lam = np.atleast_1d(np.asarray(lam))
    vals = basis_values(get_filter(basis).order_of(len(ws)), 1 - lam, basis, params)
    c_s, c_out = ws[0].shape
    r = min(c_s, c_out)
    nz = [k for k, w in enumerate(ws) if np.any(w != 0)]
    if not nz:
        return np.zeros((lam.shape[0], r))
    if len(nz) == 1:
        sv = np.linalg.svd(ws[nz[0]], compute_uv=False)
        return np.abs(vals[:, nz[0]])[:, None] * sv[None, :]
    stack = np.concatenate([ws[k] for k in nz], 0)               # (m C_s, C_out)
    if stack.shape[0] < c_out:                                  # restrict to the row space
        q, _ = np.linalg.qr(stack.T)                             # (C_out, m C_s)
        small = [ws[k] @ q for k in nz]
    else:
        small = [ws[k] for k in nz]
    Hs = np.einsum("nk,kio->nio", vals[:, nz], np.stack(small))
    t = torch.from_numpy(np.ascontiguousarray(Hs))
    return torch.linalg.svdvals(t).numpy()[:, :r]


def _example_attention(residual: bool = False) -> Capture:
    """A two-head attention capture (``W_0 = 0``, ``W_1 = I``) for the declared checks."""
    return Capture("a", "attention", "toy", None, weights=[torch.zeros(4, 4), torch.eye(4)],
                   value_weight=0.5 * torch.eye(4), residual=residual,
                   info={"num_heads": 2, "head_dim": 2})


_CAPTURE = [V.InstanceOf(Capture)]


@V.validate_params(
    {"capture": _CAPTURE, "include_output_scale": ["boolean"]},
    valid=lambda: {"capture": _example_attention()},
)
def head_factors(capture: Any, include_output_scale: bool = True
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    r"""Per-head factors of an attention capture's channel map: :math:`K_h = U_h V_h^T` with
    :math:`U_h = G_h` (``C x d``, the head's value projection columns) and
    :math:`V_h^T = W_{1,h} S` (``d x C_out``, the head's rows of :math:`W_o^T` times the
    output scale), so that the frozen layer is
    :math:`X \mapsto [X] + \sum_h A_h X K_h` (the identity when ``capture.residual``).

    Examples
    --------
    >>> import torch
    >>> from analysis.capture import Capture
    >>> cap = Capture("a", "attention", "toy", None, weights=[torch.zeros(4, 4), torch.eye(4)],
    ...               value_weight=torch.eye(4), info={"num_heads": 2, "head_dim": 2})
    >>> [u.shape for u, v in head_factors(cap)]
    [(4, 2), (4, 2)]
    """
    if capture.weights is None or capture.value_weight is None:
        raise ValueError(f"{capture.path}: needs the filter weights and the value projection")
    H = capture.num_heads
    ws = weights_float64(capture.weights)
    if len(ws) != 2 or np.any(ws[0] != 0):
        raise ValueError(f"{capture.path}: per-head maps need an attention filter F = A Z W_1")
    G = to_numpy(capture.value_weight, np.float64)
    W = ws[1]
    if include_output_scale and capture.output_scale is not None:
        W = W * to_numpy(capture.output_scale, np.float64).reshape(1, -1)
    d = W.shape[0] // H
    return [(G[:, h * d:(h + 1) * d], W[h * d:(h + 1) * d].T) for h in range(H)]


@V.validate_params(
    {"capture": _CAPTURE, "include_output_scale": ["boolean"]},
    valid=lambda: {"capture": _example_attention(residual=True), "lam": [0.0, 1.0, 2.0]},
)
def layer_gains(capture: Any, lam: Any, include_output_scale: bool = True) -> np.ndarray:
    r"""Largest singular value of each head's layer map
    :math:`M_h(\lambda) = [I] + (1 - \lambda) K_h` (:func:`head_factors`; the identity when
    the capture includes the residual), for every :math:`\lambda`.

    The non-trivial part of :math:`M_h` has rank :math:`\le d` (the head width): with an
    orthonormal basis :math:`Q` of :math:`[U_h, V_h]` (``C x 2d``),
    :math:`I + \mu U_h V_h^T = (I - QQ^T) + Q (I_{2d} + \mu\, Q^TU_h\,V_h^TQ) Q^T`, so
    :math:`\sigma_1(M_h) = \max(1, \sigma_1(I_{2d} + \mu\, a b^T))` (1 only when
    :math:`2d < C`): a ``2d x 2d`` problem per frequency instead of ``C x C``, batched over
    heads and frequencies. Without the residual :math:`\sigma_1 = |\mu|\,\sigma_1(K_h)`.

    Shapes
    ------
    ``lam``: ``(n,)`` real → ``(H, n)``.

    Examples
    --------
    >>> import torch
    >>> from analysis.capture import Capture
    >>> cap = Capture("a", "attention", "toy", None, weights=[torch.zeros(4, 4), torch.eye(4)],
    ...               value_weight=0.5 * torch.eye(4), residual=True,
    ...               info={"num_heads": 2, "head_dim": 2})
    >>> layer_gains(cap, [0.0, 1.0, 2.0])          # I + 0.5 mu P_h: 1.5, 1, 1
    array([[1.5, 1. , 1. ],
           [1.5, 1. , 1. ]])
    """
    mu = 1 - np.asarray(lam, dtype=float).ravel()
    factors = head_factors(capture, include_output_scale)
    C, c_out = factors[0][0].shape[0], factors[0][1].shape[0]
    if not capture.residual:
        top = np.array([np.linalg.norm(u @ v.T, 2) for u, v in factors])
        return top[:, None] * np.abs(mu)[None, :]
    if C != c_out:
        raise ValueError(f"{capture.path}: a residual layer needs C_out = C, got {C}, {c_out}")
    F = np.stack([np.concatenate([u, v], 1) for u, v in factors])       # (H, C, 2d)
    R = np.linalg.qr(F, mode="r")                   # Q^T [U, V] = R: Q itself is not needed
    d = factors[0][0].shape[1]
    k = R[..., :d] @ np.swapaxes(R[..., d:], 1, 2)                       # (H, 2d, 2d)
    # sigma_1^2 = lambda_max((I + mu k)^T (I + mu k)) = lambda_max(I + mu s1 + mu^2 s2):
    # only the largest eigenvalue (LAPACK's syevr on one index), one 2d x 2d matrix at a
    # time (an (H, n, 2d, 2d) batch is 64 MB at ViT-B width, and building it cost more
    # than the eigenvalues)
    m = k.shape[-1]
    eye = np.eye(m)
    top = np.empty((len(factors), mu.size))
    for h, kh in enumerate(k):
        s1, s2 = kh + kh.T, kh.T @ kh
        for i, u in enumerate(mu):
            top[h, i] = scipy.linalg.eigh(eye + u * s1 + (u * u) * s2, eigvals_only=True,
                                          subset_by_index=[m - 1, m - 1], driver="evr",
                                          overwrite_a=True, check_finite=False)[0]
    top = np.sqrt(np.clip(top, 0.0, None))                                # (H, n)
    if k.shape[-1] < C:
        top = np.maximum(top, 1.0)
    return top


# ------------------------------------------------------------------------------------------
# Block response
# ------------------------------------------------------------------------------------------


def _graph_operator(op: Any, dense: Tensor | None, module: Any) -> GraphOperator:
    """The :class:`~graphfilters.filters.GraphOperator` a rational filter solves with: the
    block's own (``module.graph_operator``: its solver tolerance and iteration cap) when the
    capture has the block, else the same construction with the defaults."""
    if isinstance(op, GraphOperator):
        return op
    if dense is not None or isinstance(op, NormalizedOperator):
        make = getattr(module, "graph_operator", None)
        return make(op, dense) if callable(make) else GraphOperator.from_normalized(
            op, dense=dense)
    raise TypeError(
        "a rational filter needs the normalized operator (a NormalizedOperator or a "
        f"GraphOperator) for its shifted solves, got {type(op).__name__}"
    )


def _params_like(params: Any, Z: Tensor) -> dict[str, Tensor] | None:
    """Basis parameters as tensors in ``Z``'s real dtype and device (float64 analyses use
    float64 zooms and poles)."""
    if params is None:
        return None
    dtype = Z.real.dtype if Z.is_complex() else Z.dtype
    return {k: torch.as_tensor(v).to(dtype=dtype, device=Z.device) for k, v in params.items()}


def basis_terms(
    op: Any, Z: Tensor, n_terms: int, basis: str = "chebyshev", params: Any = None, *,
    dense: Tensor | None = None, module: Any = None,
) -> list[Tensor]:
    r"""The terms :math:`B_k(\hat A) Z`, ``k = 0 .. n_terms - 1``, of the block's basis.

    Polynomial bases: :func:`graphfilters.chebyshev.polynomial_terms` on ``op`` (or on
    ``dense @``). Rational bases (Cayley, ARMA): the family's own
    :meth:`~graphfilters.filters.FilterFamily.terms` with ``params`` on a
    :class:`~graphfilters.filters.GraphOperator` built as the block builds it
    (``module.graph_operator`` when the block is given; Woodbury solves for low-rank
    affinities, direct ones for ``dense``, the fixed-point recursion otherwise): the code
    the block runs, not a second implementation.

    Parameters
    ----------
    op : callable, NormalizedOperator or GraphOperator
        :math:`X \mapsto \hat A X` (rational bases need a ``NormalizedOperator`` or a
        ``GraphOperator``, or ``dense``).
    Z : Tensor ``(..., N, C)``
    n_terms : int
        Number of weights of the filter (``K + 1`` for polynomials, ``2r + 1`` for Cayley).
    basis : str
        A name of :data:`graphfilters.filters.FILTERS`.
    params : mapping, optional
        The rational basis' parameters (``Capture.basis_params``).
    dense : Tensor ``(..., N, N)``, optional
        :math:`\hat A` as a matrix (then every product and solve is dense).
    module : nn.Module, optional
        The captured block (its solver settings).

    Shapes
    ------
    ``Z``: ``(..., N, C)`` → ``n_terms`` tensors ``(..., N, C)``.

    Examples
    --------
    >>> import torch
    >>> A = torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64)
    >>> t = basis_terms(None, torch.eye(2, dtype=torch.float64), 2, "arma",
    ...                 {"poles": torch.tensor([0.5])}, dense=A)
    >>> torch.allclose(t[1], torch.linalg.inv(torch.eye(2, dtype=torch.float64) - 0.5 * A))
    True
    """
    family = get_filter(basis)
    order = family.order_of(int(n_terms))
    if family.kind == "polynomial":
        apply = (lambda X: dense @ X) if dense is not None else op
        return polynomial_terms(apply, Z, order, basis)
    return family.terms(_graph_operator(op, dense, module), Z, order, _params_like(params, Z))


def apply_filter(
    op: Any, Z: Tensor, weights: Sequence[Any], basis: str = "chebyshev", params: Any = None,
    *, module: Any = None,
) -> Tensor:
    r""":math:`F = \sum_k B_k(\hat A) Z W_k`: :func:`graphfilters.chebyshev.polynomial_filter`
    for polynomial bases, the terms of :func:`basis_terms` summed by
    :func:`graphfilters.filters.filter_sum` for rational ones.

    Shapes
    ------
    ``Z``: ``(..., N, C_s)`` → ``(..., N, C_out)``.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.filters import GraphOperator
    >>> A = torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64)
    >>> op = GraphOperator(lambda v: A @ v, dense=A)
    >>> F = apply_filter(op, torch.tensor([[1.0], [0.0]], dtype=torch.float64), [0.0, 1.0],
    ...                  "arma", {"poles": torch.tensor([0.5])})     # (I - A/2)^{-1} e_1
    >>> [round(v, 4) for v in F[:, 0].tolist()]
    [1.0667, 0.2667]
    """
    if get_filter(basis).kind == "polynomial":
        return polynomial_filter(op, Z, weights, basis)
    ws = list(weights)
    return filter_sum(basis_terms(op, Z, len(ws), basis, params, module=module), ws)


@V.validate_params({"capture": _CAPTURE}, valid=lambda: {"capture": example_capture()})
def filter_output(capture: Any) -> Tensor:
    r"""The filter output :math:`F = \sum_k B_k(\hat A) Z W_k` of a capture, ``(S, N, C_out)``,
    computed with structured products (:func:`apply_filter`; rational bases with the
    capture's ``basis_params`` and the block's shifted solves).

    Shapes
    ------
    ``capture.z``: ``(S, N, C_s)`` → ``(S, N, C_out)``.

    Raises
    ------
    ValueError
        For CGNL's channel-position graphs and sub-sampled keys (no square graph on the
        positions).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import DenseAffinity
    >>> from analysis.capture import Capture
    >>> cap = Capture("b", "block", "toy", DenseAffinity(torch.ones(1, 3, 3)), "rw",
    ...               z=torch.eye(3)[None], weights=[torch.zeros(3, 1), torch.eye(3)[:, :1]])
    >>> filter_output(cap)[0, :, 0]                       # A_hat Z W_1 = A_hat e_1
    tensor([0.3333, 0.3333, 0.3333])
    """
    if capture.layout == "channel_position" or capture.sub_sampled:
        raise ValueError(
            f"{capture.path}: the filter does not act on a square graph over the positions "
            "(CGNL channel-position nodes or sub-sampled keys)"
        )
    if capture.weights is None or capture.z is None:
        raise ValueError(f"{capture.path}: the capture has no filter weights or signal")
    op = capture.operator()
    if keeps_heads(capture):
        zh = head_signal(capture)                                # (S, H, N, d)
        S, H, N, d = zh.shape
        az = op(zh.to(capture.z.dtype)).permute(0, 2, 1, 3).reshape(S, N, H * d)
        return az @ capture.weights[1].to(az.dtype)
    return apply_filter(op, capture.z, list(capture.weights), capture.basis,
                        capture.basis_params, module=capture.module)


def keeps_heads(capture: Any) -> bool:
    """An attention capture with one affinity per head (``heads="keep"``)."""
    aff = capture.affinity
    return (capture.heads == "keep" and aff is not None and len(aff.batch_shape) == 2
            and capture.z is not None and capture.weights is not None
            and len(capture.weights) == 2)


def head_signal(capture: Any) -> Tensor:
    """The values split by head, ``(S, N, H d)`` → ``(S, H, N, d)``."""
    z = capture.z
    H = int(capture.info.get("num_heads", capture.affinity.batch_shape[1]))
    S, N, E = z.shape
    return z.reshape(S, N, H, E // H).permute(0, 2, 1, 3)


@dataclass
class BlockResponse:
    r"""Frequency response of one captured block.

    Attributes
    ----------
    lam : numpy array ``(G,)``
        Grid over :math:`[0, \lambda_{max}]`.
    gains : numpy array ``(G, r)``
        Singular values of :math:`H(\lambda)` on the grid (descending).
    label : str
        Classification of ``gains[:, 0]`` (see :func:`classify_response`).
    stats : dict
        ``low``, ``mid``, ``high`` mean gains, ``max``, ``min``.
    lambda_max : float
    eigenvalues : list of numpy arrays
        Captured Laplacian eigenvalues :math:`1 - \mu` per sample.
    gains_at_eigenvalues : list of numpy arrays
        :math:`\sigma_1(H(\lambda_i))` at those eigenvalues.
    laplacian_weights : list of numpy arrays
        :math:`W^L_k` (Chebyshev basis) or ``None`` for the other bases.
    energy_z, energy_out : FrequencyEnergy or None
        Graph-frequency energy of :math:`Z` and of the filter output :math:`F`.
    notes : dict
    form : str
        ``"filter"``: ``gains`` are the singular values of :math:`H(\lambda)` (blocks, bare
        attention). ``"layer"``: a transformer layer whose capture includes the residual;
        ``gains[:, 0]`` is the head average of :math:`\sigma_1(M_h(\lambda))`,
        :math:`M_h = I + (1 - \lambda) K_h` (:func:`layer_gains`), columns ``1..H`` the
        heads, and ``label`` classifies column 0.
    head_labels : list of str
        The class of each head's curve (``"layer"`` form).
    filter_label : str
        The class of :math:`\sigma_1(H(\lambda))` (``filter_gains``).
    filter_gains : numpy array ``(G, r)`` or None
        The filter's singular values when ``form == "layer"``.
    forced : str
        Non-empty when the class is fixed by the construction, not by the weights (e.g.
        :math:`W_0 = 0`: :math:`\sigma(H) = |1 - \lambda|\,\sigma(W_1)` is a notch at 1
        for any :math:`W_1`).
    """

    lam: np.ndarray
    gains: np.ndarray
    label: str
    stats: dict[str, float]
    lambda_max: float
    eigenvalues: list[np.ndarray]
    gains_at_eigenvalues: list[np.ndarray]
    laplacian_weights: list[np.ndarray] | None
    basis: str = "chebyshev"
    energy_z: FrequencyEnergy | None = None
    energy_out: FrequencyEnergy | None = None
    notes: dict[str, str] = field(default_factory=dict)
    form: str = "filter"
    head_labels: list[str] = field(default_factory=list)
    filter_label: str = ""
    filter_gains: np.ndarray | None = None
    forced: str = ""

    def __repr__(self) -> str:
        from graphfilters.display import short_repr

        return short_repr("BlockResponse", {"class": self.label, "forced": bool(self.forced),
                                            "form": self.form, "points": len(self.lam)})

    def _repr_html_(self) -> str:
        from graphfilters.display import card_html, response_items

        return card_html("BlockResponse", response_items(self))

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """:func:`analysis.plots.plot_response` of this response; returns ``(fig, ax)``."""
        from .plots import plot_response

        return plot_response(self, ax=ax, **kwargs)


@V.validate_params(
    {"capture": _CAPTURE, "spectrum_result": [V.InstanceOf(Spectrum), None],
     "n_grid": [V.Interval(Integral, 3, None, closed="left")],
     "include_output_scale": ["boolean"], "energies": ["boolean"],
     "nonsymmetric": V.declared(graph_frequency_energy, "nonsymmetric"),
     "method": V.declared(spectrum, "method"), "dense_limit": V.declared(spectrum, "dense_limit"),
     "ratio": V.declared(classify_response, "ratio"), "n_grid_layer": [V.POS_INT]},
    valid=lambda: {"capture": example_capture(), "n_grid": 7},
)
def block_response(
    capture: Any,
    *,
    spectrum_result: Spectrum | None = None,
    n_grid: int = 201,
    include_output_scale: bool = False,
    energies: bool = True,
    nonsymmetric: str = "symmetrize",
    method: str = "auto",
    dense_limit: int = AUTO_DENSE_LIMIT,
    ratio: float = 1.5,
    n_grid_layer: int = 41,
) -> BlockResponse:
    r"""Response :math:`H(\lambda)` of a captured block on a grid and at its eigenvalues,
    its class, and the graph-frequency energy of :math:`Z` and of the filter output.

    Parameters
    ----------
    capture : Capture
    spectrum_result : Spectrum, optional
        Spectrum of :math:`\hat A` (``operator="normalized"``); computed if omitted.
    n_grid : int
        Grid points over :math:`[0, \lambda_{max}]`.
    include_output_scale : bool
        Multiply the output columns by the output normalization's scale (``H diag(s)``).
    energies : bool
        Compute the graph-frequency energies (needs eigenvectors; see
        :func:`graph_frequency_energy`).
    n_grid_layer : int
        Grid points of the per-head layer curves (``form="layer"``; one ``2d x 2d``
        eigenvalue problem per head and point; the curves are convex in
        :math:`\mu = 1 - \lambda`, so a coarser grid suffices). ``lam`` is this grid then.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import LowRankAffinity
    >>> from analysis.capture import Capture
    >>> g = torch.Generator().manual_seed(0)
    >>> aff = LowRankAffinity(torch.rand(1, 20, 2, generator=g), torch.rand(1, 20, 2, generator=g),
    ...                       symmetric=True)
    >>> cap = Capture("b", "block", "toy", aff, "sym", z=torch.randn(1, 20, 3, generator=g),
    ...               weights=[torch.eye(3), torch.zeros(3, 3)], n_samples=1)
    >>> block_response(cap).label                        # H = I: flat
    'all-pass'
    """
    if capture.weights is None:
        raise ValueError(f"{capture.path}: no filter weights captured")
    ws = weights_float64(capture.weights)
    notes: dict[str, str] = {}
    if include_output_scale and capture.output_scale is not None:
        s = capture.output_scale.detach().cpu().double().numpy()
        ws = [w * s[None, :] for w in ws]
        notes["output_scale"] = "included (H diag(s))"
    basis = capture.basis
    norm = capture.normalization
    graph_ok = capture.affinity is None or capture.square_graph
    eigs: list[np.ndarray] = []
    if graph_ok and capture.affinity is not None:
        spec = spectrum_result if spectrum_result is not None else spectrum(
            capture.affinity, "normalized", norm, method=method, dense_limit=dense_limit,
            progress=False)
        eigs = [1 - np.asarray(mu) for mu in spec.eigenvalues]
        notes["eigenvalues"] = f"{spec.method} ({'all' if spec.complete else 'extremes'})"
    elif capture.layout == "channel_position":
        spec = spectrum_result if spectrum_result is not None else spectrum(
            capture.affinity, "normalized", norm, method=method, dense_limit=dense_limit,
            progress=False)
        eigs = [1 - np.asarray(mu) for mu in spec.eigenvalues]
        notes["eigenvalues"] = "CGNL: eigenvalues of the channel-position graph"
    else:
        notes["eigenvalues"] = ("N x M affinity (sub-sampled keys): no eigenvalues; see "
                                "analysis.bipartite.bipartite_response")
    if norm in ("sym", "rw"):
        lam_max = 2.0
    else:
        lam_max = max((float(np.abs(e).max()) for e in eigs if e.size), default=2.0)
        notes["lambda_max"] = (f"normalization {norm!r}: lambda = 1 - mu is not a normalized "
                               f"Laplacian; grid over [0, max|lambda|] = [0, {lam_max:.3g}]")
    lam = np.linspace(0.0, lam_max, int(n_grid))
    layer_form = (capture.source == "attention" and capture.residual and len(ws) == 2
                  and not np.any(ws[0] != 0) and capture.value_weight is not None)
    layer_lam = np.linspace(0.0, lam_max, int(min(n_grid, n_grid_layer)))
    # one call (one factorization of the weights) for the grids and every eigenvalue
    parts = [lam, layer_lam] + [e for e in eigs]
    allg = pencil_gains(ws, np.concatenate(parts), basis=basis, params=capture.basis_params)
    splits = np.split(allg, np.cumsum([len(p) for p in parts])[:-1])
    gains, layer_filter_gains = splits[0], splits[1]
    label, stats = classify_response(lam, gains[:, 0], lam_max, ratio)
    at = [g[:, 0] if e.size else e for g, e in zip(splits[2:], eigs)]
    nz = [k for k, w in enumerate(ws) if np.any(w != 0)]
    forced = ""
    if len(nz) == 1:
        forced = (f"one nonzero term W_{nz[0]}: sigma(H) = |B_{nz[0]}(1 - lambda)| sigma(W), "
                  "so the shape (and the class) is fixed by the construction")
    lw = laplacian_weights(ws) if basis == "chebyshev" else None
    e_z = e_out = None
    if energies and graph_ok and capture.z is not None and capture.affinity is not None:
        try:
            per_head = keeps_heads(capture)
            if per_head:        # each head's values in its own affinity's basis
                zh = head_signal(capture)
                zs = zh.reshape(-1, *zh.shape[2:])
                e_z = graph_frequency_energy(capture.affinity, zs, norm,
                                             nonsymmetric=nonsymmetric)
                notes["energy_heads"] = "per head (values Z_h in the basis of A_h), averaged"
            else:
                e_z = graph_frequency_energy(capture.affinity, capture.z, norm,
                                             nonsymmetric=nonsymmetric)
            f = filter_output(capture)
            if per_head:
                S, N, _ = f.shape
                H = capture.affinity.batch_shape[1]
                f = f[:, None].expand(S, H, N, f.shape[-1]).reshape(S * H, N, -1)
            e_out = graph_frequency_energy(capture.affinity, f, norm, nonsymmetric=nonsymmetric)
        except ValueError as exc:
            notes["energy"] = f"skipped: {exc}"
    elif energies:
        notes["energy"] = "skipped: no square position graph (CGNL or sub-sampled keys)"
    if capture.source == "attention":
        notes["attention"] = capture.info.get("note", "")
    form, head_labels, filter_label, filter_gains = "filter", [], label, None
    if layer_form:
        lam, gains = layer_lam, layer_filter_gains
        filter_label = classify_response(lam, gains[:, 0], lam_max, ratio)[0]
        hg = layer_gains(capture, lam, include_output_scale=True)        # (H, G)
        mean = hg.mean(0)
        head_labels = [classify_response(lam, g, lam_max, ratio)[0] for g in hg]
        filter_gains = gains
        gains = np.column_stack([mean, hg.T])
        label, stats = classify_response(lam, mean, lam_max, ratio)
        form, forced = "layer", ""
        notes["layer"] = (
            f"{capture.info.get('layer', 'residual layer')}: class of the head average of "
            "sigma_1(I + (1 - lambda) K_h), K_h = G_h W_h S per head (output scale and, for "
            f"pre-LN, the LayerNorm at its captured statistics included; "
            f"layernorm={capture.info.get('layernorm', 'none')})")
    if forced:
        notes["forced"] = forced
    return BlockResponse(lam, gains, label, stats, lam_max, eigs, at, lw, basis, e_z, e_out,
                         notes, form, head_labels, filter_label, filter_gains, forced)
