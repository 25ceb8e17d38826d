r"""Robustness and stability of nonlocal blocks: weight spectra, linearized maps, Jacobians.

Notation (row-vector convention, nodes × channels): the value projection
:math:`Z = X G + b` with :math:`G \in \mathbb R^{C \times C_s}`, the affinity-form filter
weights :math:`W_k \in \mathbb R^{C_s \times C}`, the output normalization's per-channel
scale :math:`S = \operatorname{diag}(s)` (BN in eval mode, or CC's :math:`\gamma`), and

.. math::

    Y = X + \big(\textstyle\sum_k B_k(\hat A)\, X G\, W_k\big) S + \text{const}.

Tao et al. (NeurIPS 2018) spectrum (:func:`tao_spectrum`)
    Eigenvalues of the symmetric part of the block's effective channel map
    :math:`W_{eff} = G W_k S` (``C x C``; :math:`k = 1`, the nonlocal term, by default), and
    the share of negative ones (their "damping" observation).

Linearized stability (:func:`linearized_stability`)
    With the affinity fixed, on an eigenvector of :math:`\hat A` with eigenvalue :math:`\mu`
    (Laplacian frequency :math:`\lambda = 1 - \mu`) a block maps the channel vector by

    .. math::

        M(\lambda) = I + G\, H(\lambda)\, S, \qquad H(\lambda) = \sum_k B_k(1 - \lambda) W_k

    (without the identity for modules that add no residual, e.g. attention). We report
    :math:`\max_\lambda \rho(M(\lambda))`, :math:`\max_\lambda \|M(\lambda)\|_2` and the growth
    :math:`\max_\lambda \|M(\lambda)^n\|_2` of a stack of ``n`` copies sharing the affinity,
    over the captured spectrum. For a symmetric :math:`\hat A` (orthonormal eigenvectors) the
    map is block diagonal in the eigenbasis, so these are exact. For a non-symmetric
    :math:`\hat A` the Schur form :math:`\hat A = U T U^H` makes the map block upper triangular
    with diagonal blocks :math:`M(\lambda_i)`, :math:`\lambda_i = 1 - T_{ii}`: the spectral
    radius is still exact, the reported norm is the largest diagonal-block norm (a lower bound
    of the true norm). A ReLU after the normalization is ignored (the linearization where it is
    active); biases do not enter.

Empirical measures
    :func:`jacobian_spectral_norm` (power iteration on :math:`J^TJ` with ``torch.func`` jvp/vjp),
    :func:`noise_sensitivity` (relative output change under Gaussian input noise),
    :func:`affinity_sensitivity` (filter-output change under a relative perturbation of the
    affinity's factors) and :func:`accuracy_under_noise` (a classifier under Gaussian noise).

Examples
--------
>>> import torch
>>> from graphfilters.graph import LowRankAffinity
>>> from analysis.capture import Capture
>>> from analysis.robustness import linearized_stability
>>> g = torch.Generator().manual_seed(0)
>>> aff = LowRankAffinity(torch.rand(1, 10, 2, generator=g), torch.rand(1, 10, 2, generator=g),
...                       symmetric=True)
>>> W0, W1 = 0.5 * torch.eye(2), torch.zeros(2, 2)
>>> cap = Capture("b", "block", "toy", aff, "sym", weights=[W0, W1],
...               value_weight=torch.eye(2), n_samples=1)
>>> st = linearized_stability(cap)                  # M = I + 0.5 I at every frequency
>>> round(st.radius, 6), round(float(st.growth[2]), 6)     # 1.5 and 1.5^3
(1.5, 3.375)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from graphfilters._backend import to_numpy
from graphfilters.chebyshev import polynomial_filter
from graphfilters.graph import Affinity

from .capture import Capture, _batch_input, model_device
from .response import _head_signal, _per_head, _weights_np, filter_output, frequency_response
from .spectra import AUTO_DENSE_LIMIT, Spectrum, spectrum

__all__ = [
    "value_projection",
    "effective_channel_map",
    "TaoSpectrum",
    "tao_spectrum",
    "Stability",
    "linear_maps",
    "linearized_stability",
    "block_function",
    "jacobian_spectral_norm",
    "noise_sensitivity",
    "affinity_sensitivity",
    "accuracy_under_noise",
]


def _np64(t: Any) -> np.ndarray:
    return to_numpy(t, np.float64)


def value_projection(capture: Capture, rtol: float = 1e-4) -> tuple[np.ndarray, str]:
    r"""The value projection :math:`G` (``C x C_s``) of a capture, and how it was obtained.

    From the module (``g`` convolution or attention ``in_proj``) when the capture has it;
    otherwise by least squares :math:`\min_{G, b}\|X G + b - Z\|` on the captured input and
    signal (exact for a linear projection).

    Raises
    ------
    ValueError
        If neither is possible or the least-squares fit leaves a relative residual above
        ``rtol`` (the projection is not linear, e.g. sub-sampled keys).

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(2, 3, 4, 4)                        # (S, C, H, W)
    >>> G = torch.randn(3, 2)
    >>> z = x.flatten(2).transpose(1, 2) @ G               # (S, N, C_s)
    >>> cap = Capture("b", "block", "toy", None, z=z, input=x)
    >>> G_hat, how = value_projection(cap)
    >>> bool(abs(G_hat - G.numpy()).max() < 1e-4), how.startswith("least squares")
    (True, True)
    """
    if capture.value_weight is not None:
        return _np64(capture.value_weight), "from the module"
    if capture.input is None or capture.z is None:
        raise ValueError(
            f"{capture.path}: no value projection recorded and no input/Z to estimate it"
        )
    x = _np64(capture.input)
    X = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1).reshape(-1, x.shape[1])
    Z = _np64(capture.z)
    if Z.shape[0] * Z.shape[1] != X.shape[0]:
        raise ValueError(
            f"{capture.path}: Z has {Z.shape[1]} nodes but the input {X.shape[0] // Z.shape[0]} "
            "(sub-sampled keys): the value projection is not a per-node linear map"
        )
    Z = Z.reshape(-1, Z.shape[-1])
    A = np.concatenate([X, np.ones((X.shape[0], 1))], 1)
    coef, *_ = np.linalg.lstsq(A, Z, rcond=None)
    res = np.linalg.norm(A @ coef - Z) / max(np.linalg.norm(Z), 1e-300)
    if res > rtol:
        raise ValueError(
            f"{capture.path}: Z is not a linear function of the input (least-squares "
            f"relative residual {res:.2e} > {rtol:g})"
        )
    return coef[:-1], f"least squares on the captured input (residual {res:.1e})"


def _scale(capture: Capture, include: bool, c_out: int) -> np.ndarray:
    if include and capture.output_scale is not None:
        return _np64(capture.output_scale).reshape(-1)
    return np.ones(c_out)


def effective_channel_map(
    capture: Capture, term: int = 1, include_output_scale: bool = True
) -> np.ndarray:
    r"""The ``C x C`` map :math:`G W_k S` of filter term ``k``.

    Examples
    --------
    >>> import torch
    >>> cap = Capture("b", "block", "toy", None, weights=[torch.zeros(1, 2), torch.ones(1, 2)],
    ...               value_weight=torch.ones(2, 1), output_scale=torch.tensor([1.0, 2.0]))
    >>> effective_channel_map(cap)
    array([[1., 2.],
           [1., 2.]])
    """
    if capture.weights is None:
        raise ValueError(f"{capture.path}: no filter weights captured")
    ws = _weights_np(capture.weights)
    if not 0 <= term < len(ws):
        raise ValueError(f"term must be in 0..{len(ws) - 1} (the filter order), got {term}")
    G, _ = value_projection(capture)
    W = ws[term]
    return G @ W * _scale(capture, include_output_scale, W.shape[1])[None, :]


@dataclass
class TaoSpectrum:
    """Eigenvalues of :math:`\\operatorname{sym}(G W_k S)` (ascending) and their signs.

    Attributes
    ----------
    eigenvalues : numpy array ``(C,)``
    negative_share : float
        Share of eigenvalues below ``-tol * max|eig|``.
    negative_mass : float
        :math:`\\sum_{\\mu < 0} |\\mu| / \\sum |\\mu|`: the weight of the negative part.
        With a bottleneck (:math:`C_s \\le C/2`), :math:`G W_k S` has rank
        :math:`r \\le C_s` and, by Sylvester's law of inertia, its symmetric part has at most
        :math:`r` positive and :math:`r` negative eigenvalues (exactly :math:`C/2` each for
        generic weights with :math:`C_s = C/2`): the *share* is then fixed by the shapes,
        while the *mass* still tells whether damping (negative) dominates.
    term : int
    how : str
        Where :math:`G` came from and whether :math:`S` was included.
    """

    eigenvalues: np.ndarray
    negative_share: float
    term: int
    how: str
    negative_mass: float = float("nan")


def tao_spectrum(
    capture: Capture, term: int | None = None, include_output_scale: bool = True,
    tol: float = 1e-9,
) -> TaoSpectrum:
    r"""Tao et al.'s spectrum: eigenvalues of the symmetric part of :math:`G W_k S`.

    ``term`` defaults to 1 (the nonlocal term :math:`\hat A Z W_1`; 0 for order-0 filters).

    Examples
    --------
    >>> import torch
    >>> cap = Capture("b", "block", "toy", None, weights=[torch.zeros(2, 2), -torch.eye(2)],
    ...               value_weight=torch.eye(2))
    >>> tao_spectrum(cap).negative_share
    1.0
    """
    if capture.weights is None:
        raise ValueError(f"{capture.path}: no filter weights captured")
    k = (1 if len(capture.weights) > 1 else 0) if term is None else int(term)
    M = effective_channel_map(capture, k, include_output_scale)
    if M.shape[0] != M.shape[1]:
        raise ValueError(
            f"{capture.path}: the channel map is {M.shape[0]} x {M.shape[1]}, not square"
        )
    ev = np.linalg.eigvalsh((M + M.T) / 2)
    scale = max(float(np.abs(ev).max(initial=0.0)), 1e-300)
    share = float((ev < -tol * scale).mean()) if float(np.abs(ev).max(initial=0.0)) > 0 else 0.0
    total = float(np.abs(ev).sum())
    mass = float(np.abs(ev[ev < 0]).sum() / total) if total > 0 else 0.0
    _, how = value_projection(capture)
    how += "; output scale " + ("included" if include_output_scale and
                                capture.output_scale is not None else "not included")
    return TaoSpectrum(ev, share, k, how, mass)


def linear_maps(
    capture: Capture, lam: Any, include_output_scale: bool = True
) -> np.ndarray:
    r"""The per-frequency channel maps :math:`M(\lambda) = I + G H(\lambda) S` (no identity
    without a residual), complex for complex ``lam``.

    Shapes
    ------
    ``lam``: ``(n,)`` → ``(n, C, C)``.

    Examples
    --------
    >>> import torch
    >>> cap = Capture("b", "block", "toy", None, weights=[torch.eye(2), torch.eye(2)],
    ...               value_weight=torch.eye(2))
    >>> linear_maps(cap, [0.0, 2.0])[:, 0, 0]             # 1 + (1 + (1 - lam))
    array([3., 1.])
    """
    if capture.weights is None:
        raise ValueError(f"{capture.path}: no filter weights captured")
    G, _ = value_projection(capture)
    ws = _weights_np(capture.weights)
    H = frequency_response(ws, lam, basis=capture.basis)          # (n, C_s, C_out)
    s = _scale(capture, include_output_scale, ws[0].shape[1])
    M = np.einsum("ci,nio->nco", G, H) * s[None, None, :]
    if capture.residual:
        if M.shape[1] != M.shape[2]:
            raise ValueError(
                f"{capture.path}: a residual block needs C_out = C, got {M.shape[1:]}"
            )
        M = M + np.eye(M.shape[1])[None]
    return M


@dataclass
class Stability:
    r"""Linearized stability of one block over its captured spectrum.

    Attributes
    ----------
    radius : float
        :math:`\max_\lambda \rho(M(\lambda))`.
    norm : float
        :math:`\max_\lambda \|M(\lambda)\|_2`.
    growth : numpy array ``(n_max,)``
        :math:`\max_\lambda \|M(\lambda)^n\|_2`, ``n = 1 .. n_max``.
    radius_growth : numpy array ``(n_max,)``
        ``radius ** n``.
    argmax_lambda : complex
        The frequency attaining ``radius``.
    n_frequencies : int
        Distinct frequencies used.
    how : str
        Exact (symmetric) or Schur (non-symmetric, norm is a lower bound); extremes only?
    """

    radius: float
    norm: float
    growth: np.ndarray
    radius_growth: np.ndarray
    argmax_lambda: complex
    n_frequencies: int
    how: str
    notes: dict[str, str] = field(default_factory=dict)


def _distinct(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values)
    if np.iscomplexobj(v) and np.abs(v.imag).max(initial=0.0) <= 1e-12:
        v = v.real
    r = np.round(v, 10)
    _, idx = np.unique(r, return_index=True)
    return v[np.sort(idx)]


def linearized_stability(
    capture: Capture,
    spectrum_result: Spectrum | None = None,
    n_max: int = 10,
    include_output_scale: bool = True,
    method: str = "auto",
    dense_limit: int = AUTO_DENSE_LIMIT,
    chunk: int = 1024,
) -> Stability:
    r"""Spectral radius, norm and stack growth of the linearized block (module docstring).

    Parameters
    ----------
    capture : Capture
    spectrum_result : Spectrum, optional
        Spectrum of :math:`\hat A` (``operator="normalized"``); computed if omitted.
    n_max : int
        Largest stack depth.
    include_output_scale : bool
        Use the output normalization's scale (the real map; default).
    chunk : int
        Frequencies processed at once.

    Returns
    -------
    Stability

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import DenseAffinity
    >>> A = DenseAffinity(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))    # mu = -1, 1
    >>> cap = Capture("b", "block", "toy", A, "sym", weights=[torch.zeros(1, 1),
    ...               -0.5 * torch.ones(1, 1)], value_weight=torch.ones(1, 1), n_samples=1)
    >>> st = linearized_stability(cap, n_max=2)          # M = 1 - 0.5 mu: 1.5 and 0.5
    >>> st.radius, st.argmax_lambda, [float(g) for g in st.growth]
    (1.5, (2+0j), [1.5, 2.25])
    """
    if capture.info.get("node_layout") == "channel_position":
        raise ValueError(
            f"{capture.path}: CGNL filters act on a channel-position graph; the per-frequency "
            "channel map is not defined"
        )
    if capture.info.get("sub_sampled"):
        raise ValueError(f"{capture.path}: sub-sampled keys: no square graph, no spectrum")
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 1:
        raise ValueError(f"n_max must be a positive integer, got {n_max!r}")
    spec = spectrum_result if spectrum_result is not None else spectrum(
        capture.affinity, "normalized", capture.normalization, method=method,
        dense_limit=dense_limit, progress=False)
    mus = _distinct(np.concatenate([np.asarray(e) for e in spec.eigenvalues]))
    lam = 1 - mus
    radius, norm, arg = -1.0, -1.0, 0j
    growth = np.zeros(n_max)
    for s0 in range(0, len(lam), chunk):
        M = linear_maps(capture, lam[s0:s0 + chunk], include_output_scale)
        ev = np.abs(np.linalg.eigvals(M)).max(-1)
        i = int(ev.argmax())
        if ev[i] > radius:
            radius, arg = float(ev[i]), complex(lam[s0 + i])
        P = M
        for n in range(n_max):
            if n > 0:
                P = P @ M
            g = float(np.linalg.norm(P, ord=2, axis=(-2, -1)).max())
            growth[n] = max(growth[n], g)
        norm = growth[0]
    sym = spec.symmetric
    how = ("symmetric: exact in the orthonormal eigenbasis" if sym else
           "non-symmetric: Schur form; the radius is exact, the norm and growth are the largest "
           "diagonal-block values (lower bounds)")
    if not (spec.complete or spec.method == "structured"):
        how += f"; over the computed extremes only ({spec.method})"
    notes = {}
    if capture.relu_after_norm:
        notes["relu"] = "the ReLU after the normalization is ignored (active-set linearization)"
    if capture.source == "attention" and capture.heads == "mean":
        notes["heads"] = "attention heads averaged: an approximation of the per-head filter"
    return Stability(radius, float(norm), growth, radius ** np.arange(1, n_max + 1), arg,
                     len(lam), how, notes)


# ------------------------------------------------------------------------------------------
# Empirical measures
# ------------------------------------------------------------------------------------------


def _module_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    for p in module.parameters():
        return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


class _Bound(nn.Module):
    """A module called with extra fixed arguments (eval-mode switching reaches it)."""

    def __init__(self, module: nn.Module, call: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.inner = module
        self._call = call

    def forward(self, x: Tensor) -> Tensor:
        out = self._call(self.inner, x)
        return out[0] if isinstance(out, (tuple, list)) else out


def _attention_call(capture: Capture, index: int, device: torch.device
                    ) -> Callable[[nn.Module, Tensor], Tensor]:
    """How sample ``index`` of ``capture`` is re-run: its ``call`` with that sample's
    ``call_kwargs`` (masks...), or, for older captures of ``nn.MultiheadAttention`` without a
    ``call``, self-attention on the query in the ``(1, E, L)`` layout."""
    if capture.call is not None:
        fn = capture.call
        kw = {k: v[index:index + 1].to(device) for k, v in capture.call_kwargs.items()}
        return lambda module, t: fn(t, **kw)
    batch_first = getattr(capture.module, "batch_first", False)

    def call(module: nn.Module, t: Tensor) -> Tensor:
        q = t.permute(0, 2, 1) if batch_first else t.permute(2, 0, 1)
        out = module(q, q, q, need_weights=False)[0]
        return out.permute(0, 2, 1) if batch_first else out.permute(1, 2, 0)
    return call


def block_function(capture: Capture, index: int = 0) -> tuple[nn.Module, Tensor]:
    r"""``(f, x)``: the captured map as a function of its input (an ``nn.Module``, so
    :func:`jacobian_spectral_norm` runs it in eval mode), and sample ``index``'s input
    ``(1, C, *spatial)`` on the module's device.

    The map is ``capture.call`` when the capture has one (attention of other libraries:
    tuple outputs, keyword inputs such as masks, and the module's own layout are handled
    there; for a transformer layer it is the residual branch, e.g. ``x + Attn(LN(x))``),
    with sample ``index``'s ``call_kwargs``. Units of a stage that share the stage's affinity
    are called with the captured affinity (held fixed). Otherwise the module itself.

    Examples
    --------
    >>> import torch
    >>> from analysis.capture import capture
    >>> from graphfilters.blocks import make_block
    >>> cap = capture(make_block("snl", 4), torch.randn(2, 4, 3, 3), progress=False)["(root)"]
    >>> fn, x = block_function(cap, index=1)
    >>> x.shape, torch.equal(fn(x), x)                   # a new block is the identity
    (torch.Size([1, 4, 3, 3]), True)
    """
    module = capture.module
    if module is None or capture.input is None:
        raise ValueError(f"{capture.path}: the capture holds no module or input to re-run")
    if not 0 <= index < max(capture.n_samples, 1):
        raise ValueError(f"sample index {index} out of range [0, {capture.n_samples})")
    dtype, dev = _module_dtype_device(module)
    x = capture.input[index:index + 1].to(device=dev, dtype=dtype)
    if capture.call is not None or isinstance(module, nn.MultiheadAttention):
        owner = module if not isinstance(capture.call, nn.Module) else nn.ModuleList(
            [module, capture.call])                       # eval mode reaches the layer too
        return _Bound(owner, _attention_call(capture, index, dev)), x
    if getattr(module, "shared_affinity", False) and getattr(module, "theta", 1) is None \
            and capture.affinity is not None:
        aff = capture.affinity._map(lambda t: t[index:index + 1].to(dev))
        return _Bound(module, lambda m, t: m(t, aff)), x
    return _Bound(module, lambda m, t: m(t)), x


class _EvalMode:
    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.modes = {m: m.training for m in module.modules()}

    def __enter__(self) -> None:
        self.module.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, mode in self.modes.items():
            m.training = mode


def jacobian_spectral_norm(
    fn: Callable[[Tensor], Tensor] | nn.Module,
    x: Tensor,
    n_iter: int = 50,
    tol: float = 1e-6,
    seed: int = 0,
    mode: str = "autograd",
) -> float:
    r"""Largest singular value of the Jacobian :math:`J = \partial f / \partial x` at ``x``.

    Power iteration on :math:`J^T J`: :math:`v \leftarrow J^T J v / \|J^T J v\|`, and
    :math:`\sigma_{max} \approx \|J v\|`. Products with :math:`J^T` are vector-Jacobian
    products; products with :math:`J` are Jacobian-vector products, computed with
    ``mode="autograd"`` by the double-backward identity :math:`J v = \partial_u \langle J^T u,
    v\rangle` on one recorded forward (fast), or with ``mode="func"`` by ``torch.func.jvp``
    (forward-mode AD) and ``torch.func.vjp``. If double backward is not implemented for an
    operation, it retries with PyTorch's math attention kernel, then uses ``func``. Modules
    run in eval mode (restored afterwards); everything runs on ``x``'s device.

    Shapes
    ------
    ``x``: any shape (the whole tensor is the input vector, batch included).

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 3, bias=False)
    >>> x = torch.randn(1, 3)
    >>> est = jacobian_spectral_norm(lin, x)
    >>> bool(abs(est - torch.linalg.matrix_norm(lin.weight, 2).item()) < 1e-4)
    True
    """
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
    if mode not in ("autograd", "func"):
        raise ValueError(f"mode must be 'autograd' or 'func', got {mode!r}")
    x = x.detach()
    with _EvalMode(fn) if isinstance(fn, nn.Module) else nullcontext():
        products = None
        if mode == "autograd":
            try:
                products = _autograd_products(fn, x)
            except (RuntimeError, NotImplementedError):
                # fused attention kernels lack double backward: retry with the math kernel
                try:
                    with sdpa_kernel([SDPBackend.MATH]):
                        products = _autograd_products(fn, x)
                except (RuntimeError, NotImplementedError):
                    products = None
        if products is None:
            products = _func_products(fn, x)
        jvp, vjp = products
        gen = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        v = v / v.norm()
        sigma_prev = 0.0
        for _ in range(n_iter):
            Jv = jvp(v)
            sigma = float(Jv.norm())
            u = vjp(Jv)
            un = float(u.norm())
            if un == 0:
                return 0.0
            v = u / un
            if abs(sigma - sigma_prev) <= tol * max(sigma, 1e-300):
                break
            sigma_prev = sigma
        return float(jvp(v).norm())


def _autograd_products(fn: Callable[[Tensor], Tensor], x: Tensor
                       ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        y = fn(xr)
        u0 = torch.zeros_like(y, requires_grad=True)
        (gx,) = torch.autograd.grad(y, xr, u0, create_graph=True)

    def jvp(v: Tensor) -> Tensor:
        return torch.autograd.grad(gx, u0, v, retain_graph=True)[0].detach()

    def vjp(u: Tensor) -> Tensor:
        return torch.autograd.grad(y, xr, u, retain_graph=True)[0].detach()

    jvp(torch.zeros_like(x))                     # fail now if double backward is missing
    return jvp, vjp


def _func_products(fn: Callable[[Tensor], Tensor], x: Tensor
                   ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    _, vjp_fn = torch.func.vjp(fn, x)

    def jvp(v: Tensor) -> Tensor:
        return torch.func.jvp(fn, (x,), (v,))[1].detach()

    def vjp(u: Tensor) -> Tensor:
        return vjp_fn(u)[0].detach()

    return jvp, vjp


def noise_sensitivity(
    fn: Callable[[Tensor], Tensor] | nn.Module,
    x: Tensor,
    level: float = 0.1,
    n_draws: int = 4,
    seed: int = 0,
) -> dict[str, float]:
    r"""Relative output change under Gaussian input noise of relative size ``level``.

    :math:`\delta = \text{level}\,\|x\|\,\epsilon/\|\epsilon\|`, and the result averages
    :math:`\|f(x + \delta) - f(x)\| / \|f(x)\|` over ``n_draws`` draws; ``gain`` divides it by
    ``level``.

    Examples
    --------
    >>> import torch
    >>> out = noise_sensitivity(torch.nn.Identity(), torch.ones(2, 3), level=0.1)
    >>> round(out["relative_change"], 6), round(out["gain"], 6)
    (0.1, 1.0)
    """
    if not level > 0:
        raise ValueError(f"level must be > 0, got {level!r}")
    x = x.detach()
    ctx = _EvalMode(fn) if isinstance(fn, nn.Module) else None
    if ctx is not None:
        ctx.__enter__()
    try:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            y = fn(x)
            changes = []
            for _ in range(n_draws):
                eps = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
                delta = level * x.norm() * eps / eps.norm()
                changes.append(float((fn(x + delta) - y).norm() / y.norm().clamp_min(1e-30)))
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    rel = float(np.mean(changes))
    return {"relative_change": rel, "gain": rel / level}


def _perturb(aff: Affinity, level: float, gen: torch.Generator) -> Affinity:
    def noisy(t: Tensor) -> Tensor:
        eps = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
        return t * torch.exp(level * eps)
    return aff._map(noisy)


def affinity_sensitivity(
    capture: Capture, level: float = 0.1, n_draws: int = 4, seed: int = 0
) -> dict[str, float]:
    r"""Filter-output change when the affinity is perturbed, :math:`Z` and :math:`W_k` fixed.

    Every array that defines the affinity (low-rank factors, queries/keys, dense entries) is
    multiplied elementwise by :math:`e^{\text{level}\,\epsilon}`, :math:`\epsilon \sim
    \mathcal N(0, 1)` (a relative perturbation that keeps signs, hence non-negative degrees).
    Returns the mean relative change of the operator's action
    :math:`\|\hat A' Z - \hat A Z\| / \|\hat A Z\|`, of the filter output
    :math:`\|F' - F\| / \|F\|`, and their ratio ``gain``.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import LowRankAffinity
    >>> g = torch.Generator().manual_seed(0)
    >>> aff = LowRankAffinity(torch.rand(1, 8, 2, generator=g), torch.rand(1, 8, 2, generator=g),
    ...                       symmetric=True)
    >>> cap = Capture("b", "block", "toy", aff, "sym", z=torch.randn(1, 8, 3, generator=g),
    ...               weights=[torch.zeros(3, 3), torch.eye(3)])
    >>> out = affinity_sensitivity(cap, level=0.01)     # F = A_hat Z: gain 1
    >>> round(out["gain"], 6)
    1.0
    """
    if capture.affinity is None or capture.z is None or capture.weights is None:
        raise ValueError(f"{capture.path}: needs the affinity, Z and the weights")
    if capture.info.get("node_layout") == "channel_position" or capture.info.get("sub_sampled"):
        raise ValueError(f"{capture.path}: no square position graph (CGNL or sub-sampled keys)")
    aff = capture.affinity
    z = capture.z
    ws = list(capture.weights)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def run(a: Affinity) -> tuple[Tensor, Tensor]:
        op = a.normalized(capture.normalization)
        if _per_head(capture):              # one affinity per head acts on its own values
            c = replace(capture, affinity=a)
            return op(_head_signal(c)), filter_output(c)
        return op(z), polynomial_filter(op, z, ws, capture.basis)

    with torch.no_grad():
        az, f = run(aff)
        op_changes, out_changes = [], []
        for _ in range(n_draws):
            az2, f2 = run(_perturb(aff, level, gen))
            op_changes.append(float((az2 - az).norm() / az.norm().clamp_min(1e-30)))
            out_changes.append(float((f2 - f).norm() / f.norm().clamp_min(1e-30)))
    op_c, out_c = float(np.mean(op_changes)), float(np.mean(out_changes))
    return {"operator_change": op_c, "output_change": out_c,
            "gain": out_c / op_c if op_c > 0 else float("nan")}


def accuracy_under_noise(
    model: nn.Module,
    data: Iterable[Any],
    levels: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.4),
    *,
    relative: bool = False,
    max_batches: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[float, float]:
    r"""Top-1 accuracy of a classifier when :math:`\mathcal N(0, \sigma^2)` noise is added to
    its inputs, for each :math:`\sigma` in ``levels``.

    Parameters
    ----------
    model : nn.Module
        Maps inputs to logits ``(B, classes)``; run in eval mode under ``no_grad`` on its
        device (modes restored).
    data : iterable of ``(input, target)`` batches
    levels : sequence of float
        Noise standard deviations (in input units, or times each input's standard deviation
        when ``relative=True``).
    max_batches : int, optional
        Batches used per level.

    Returns
    -------
    dict level -> accuracy in [0, 1]

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2))
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); y = torch.tensor([0, 1])
    >>> accuracy_under_noise(model, [(x, y)], levels=(0.0,), progress=False)
    {0.0: 1.0}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    levels = [float(s) for s in levels]
    if any(s < 0 for s in levels):
        raise ValueError(f"noise levels must be >= 0, got {levels}")
    dev = model_device(model)
    batches = []
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
            raise TypeError("accuracy_under_noise needs (input, target) batches")
        batches.append((_batch_input(batch), batch[1]))
    if not batches:
        raise ValueError("no batches in data")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: dict[float, float] = {}
    with _EvalMode(model), torch.no_grad():
        bar = tqdm(levels, desc="accuracy vs noise", disable=not progress, leave=False)
        for s in bar:
            correct = total = 0
            for x, y in batches:
                x = x.to(dev)
                eps = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(dev)
                if relative:
                    std = x.flatten(1).std(1).reshape(-1, *([1] * (x.ndim - 1)))
                    eps = eps * std
                pred = model(x + s * eps).argmax(-1)
                correct += int((pred.cpu() == y.cpu()).sum())
                total += int(y.numel())
            out[s] = correct / total
        bar.close()
    return out
