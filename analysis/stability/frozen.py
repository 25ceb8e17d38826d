r"""The frozen-affinity block map (the affinity held fixed, the map linear in the input)
and its exact norms, by a matrix-free Kronecker-structured SVD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from graphfilters import _validate as V
from graphfilters.spectral import top_singular_values

from ..capture import Capture
from ..capture_record import example_capture
from ..response import (
    apply_filter,
    basis_terms,
    weights_float64,
)
from .channel import output_scale_vector, value_projection
from .schur import DenseFactor, QuasiTriangular, schur_pays

__all__ = [
    "FrozenMap",
    "FrozenNorms",
    "SchurKroneckerMap",
    "frozen_norms",
]


def _powers(apply: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor], n: int
            ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``(matvec, rmatvec)`` of the ``n``-th power of a map given by its two products."""
    def mv(x: Tensor) -> Tensor:
        for _ in range(n):
            x = apply(x)
        return x

    def rmv(u: Tensor) -> Tensor:
        for _ in range(n):
            u = adjoint(u)
        return u
    return mv, rmv


class SchurKroneckerMap:
    r"""A frozen map :math:`X \mapsto X + P X W` (residual, one Kronecker term) in real Schur
    coordinates: with :math:`P = Q_P T_P Q_P^T` and :math:`W = Q_W T_W Q_W^T`,

    .. math::

        \tilde X \mapsto \tilde X + T_P \tilde X T_W, \qquad
        \tilde X = Q_P^T X Q_W,

    orthogonally similar to the map, so every power has the same singular values, and a
    product is two triangular ones (BLAS ``trmm``, :class:`~analysis.stability.schur.
    QuasiTriangular`): about half the work of the dense products (ViT-B layer, float32:
    1.7 ms against 3.1 ms). A factor whose decomposition would not pay
    (:func:`~analysis.stability.schur.schur_pays`) stays dense.

    Shapes
    ------
    ``X``: ``(N, C)`` → ``(N, C)``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> g = torch.Generator().manual_seed(0)
    >>> P, W = torch.randn(4, 4, generator=g, dtype=torch.float64), torch.randn(
    ...     3, 3, generator=g, dtype=torch.float64)
    >>> S = SchurKroneckerMap(QuasiTriangular(P.numpy(), torch.float64),
    ...                       QuasiTriangular(W.numpy(), torch.float64))
    >>> X = torch.randn(4, 3, generator=g, dtype=torch.float64)
    >>> Y = S.from_coordinates(S(S.to_coordinates(X)))
    >>> bool(torch.allclose(Y, X + P @ X @ W))
    True
    """

    def __init__(self, left: QuasiTriangular | DenseFactor,
                 right: QuasiTriangular | DenseFactor) -> None:
        self.left, self.right = left, right

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.n, self.right.n)

    def to_coordinates(self, X: Tensor) -> Tensor:
        r""":math:`Q_P^T X Q_W`."""
        return self.right.to_schur_right(self.left.to_schur_left(X))

    def from_coordinates(self, X: Tensor) -> Tensor:
        r""":math:`Q_P X Q_W^T`."""
        return self.right.from_schur_right(self.left.from_schur_left(X))

    def __call__(self, X: Tensor) -> Tensor:
        return X + self.left.left(self.right.right(X))

    def adjoint(self, U: Tensor) -> Tensor:
        return U + self.left.left_t(self.right.right_t(U))

    def power(self, n: int) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """``(matvec, rmatvec)`` of the ``n``-th power (in the coordinates)."""
        return _powers(self, self.adjoint, n)


class FrozenMap:
    r"""The block map with the affinity fixed, on one captured sample:

    .. math::

        \mathcal M(X) = [X] + \Big(\sum_k B_k(\hat A)\, X G\, W_k\Big) S,

    ``X`` of shape ``(N, C)`` (the identity only for residual modules; biases and output
    shifts do not enter a linear map). With attention heads kept (``heads="keep"``) each
    head's affinity acts on its own slice of the value channels. Nothing of size
    :math:`NC \times NC` is formed. For ``N <= dense_limit`` the basis matrices
    :math:`B_k(\hat A)` (polynomials; for the rational Cayley and ARMA bases the family's
    terms with the capture's ``basis_params``, by dense shifted solves) are formed as
    ``N x N`` matrices (per head) and the map and its
    adjoint :math:`U \mapsto [U] + \sum_k B_k(\hat A)^T U S W_k^T G^T` are plain products
    (:math:`G W_k S` precomputed when :math:`C_s > C/2`; zero terms skipped): one product
    costs :math:`O(N C C_s + N^2 C_s)` per head and term. Beyond it the affinity is used only
    through its structured matrix product (and, for rational bases, the block's shifted
    solves: Woodbury for low-rank affinities, the fixed-point recursion otherwise), and the
    adjoint is that product's vector-Jacobian product (one recorded forward).

    Parameters
    ----------
    capture : Capture
    index : int
        Sample.
    include_output_scale : bool
    dtype : torch.dtype
        Working precision (float64 by default).
    dense_limit : int
        Largest ``N`` whose :math:`B_k(\hat A)` are formed densely.

    Shapes
    ------
    ``X``: ``(N, C)`` → ``(N, C_out)``.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import DenseAffinity
    >>> A = DenseAffinity(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    >>> cap = Capture("b", "block", "toy", A, "none", weights=[torch.zeros(1, 1),
    ...               torch.ones(1, 1)], value_weight=torch.ones(1, 1), n_samples=1)
    >>> M = FrozenMap(cap)
    >>> M(torch.tensor([[1.0], [0.0]], dtype=torch.float64)).flatten().tolist()
    [1.0, 1.0]
    """

    @V.validate_params(
        {"capture": [V.InstanceOf(Capture)], "index": [V.NONNEG_INT],
         "include_output_scale": ["boolean"], "dtype": [V.InstanceOf(torch.dtype)],
         "dense_limit": [V.NONNEG_INT]},
        valid=lambda: {"capture": example_capture()},
    )
    def __init__(self, capture: Capture, index: int = 0, include_output_scale: bool = True,
                 dtype: torch.dtype = torch.float64, dense_limit: int = 2048) -> None:
        if capture.affinity is None or capture.weights is None:
            raise ValueError(f"{capture.path}: the frozen map needs the affinity and weights")
        if capture.layout == "channel_position":
            raise ValueError(f"{capture.path}: CGNL filters act on a channel-position graph")
        if capture.sub_sampled or capture.affinity.n != capture.affinity.n_cols:
            raise ValueError(f"{capture.path}: sub-sampled keys: the map is not square")
        nb = max(capture.n_samples, 1)
        if not 0 <= index < nb:
            raise ValueError(f"sample index {index} out of range [0, {nb})")
        dev = capture.device if capture.device is not None else torch.device("cpu")
        self.path = capture.path
        self.residual = bool(capture.residual)
        G, _ = value_projection(capture)
        ws = weights_float64(capture.weights)
        self.G = torch.as_tensor(G, dtype=dtype, device=dev)
        self.weights = [torch.as_tensor(w, dtype=dtype, device=dev) for w in ws]
        scale = output_scale_vector(capture, include_output_scale, ws[0].shape[1])
        self.scale = torch.as_tensor(scale, dtype=dtype, device=dev)
        self.basis = capture.basis
        self.params = capture.basis_params
        self.module = capture.module
        aff = capture.affinity
        keep = len(aff.batch_shape) >= 2 and capture.source == "attention"
        one = aff.select(index).map_fields(lambda t: torch.as_tensor(t).to(device=dev, dtype=dtype))
        self.op = one.normalized(capture.normalization)
        self.heads = int(one.batch_shape[0]) if keep else 0
        self.n, self.c = capture.affinity.n, self.G.shape[0]
        self.c_out = ws[0].shape[1]
        if self.residual and self.c_out != self.c:
            raise ValueError(f"{capture.path}: a residual block needs C_out = C")
        self._adj: Callable[[Tensor], Tensor] | None = None
        self.dense = self.n <= dense_limit
        if self.dense:
            # B_k(A_hat) as N x N matrices (per head): products both ways are plain matmuls
            D = self.op.dense()
            eye = torch.eye(self.n, dtype=dtype, device=dev).expand_as(D).contiguous()
            terms = basis_terms(self.op, eye, len(ws), self.basis, self.params, dense=D,
                                module=self.module)
            keep_k = [k for k, w in enumerate(ws) if np.abs(w).max(initial=0.0) > 0]
            self.terms = [terms[k] for k in keep_k]
            cs = self.G.shape[1]
            # G W_k S precomputed when it is cheaper than the factors (C_s > C / 2)
            self.fused = not self.heads and 2 * cs > self.c
            if self.fused:
                self.maps = [(self.G @ self.weights[k]) * self.scale for k in keep_k]
            else:
                self.maps = [self.weights[k] * self.scale for k in keep_k]

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, C)``: the shape of an input."""
        return (self.n, self.c)

    @property
    def kronecker(self) -> bool:
        """One Kronecker term and no residual (:math:`X \\mapsto P X W`): the norms of the
        powers factorize."""
        return not self.residual and self._one_term()

    def _one_term(self) -> bool:
        return (self.dense and not self.heads and len(self.terms) == 1
                and self.c_out == self.c)

    def kronecker_factors(self) -> tuple[Tensor, Tensor] | None:
        r"""``(P, W)`` when :math:`\mathcal M - [I]` is one Kronecker term
        :math:`X \mapsto P X W` (dense, one affinity, one nonzero term, ``C_out = C``; with
        or without the residual), else ``None``. Its top singular triple is then that of
        the factors: :math:`\|P X W\|` is largest at :math:`X = p\,w^T`, ``p`` the top
        right singular vector of ``P`` and ``w`` the top left one of ``W``."""
        if not self._one_term():
            return None
        W = self.maps[0] if self.fused else self.G @ self.maps[0]
        return self.terms[0], W

    def _apply_op(self, z: Tensor) -> Tensor:
        if self.heads:
            h = self.heads
            zh = z.reshape(z.shape[0], h, -1).transpose(0, 1)          # (H, N, d)
            return self.op(zh).transpose(0, 1).reshape(z.shape)
        return self.op(z)

    def _heads_apply(self, P: Tensor, z: Tensor) -> Tensor:
        if self.heads:
            zh = z.reshape(z.shape[0], self.heads, -1).transpose(0, 1)     # (H, N, d)
            return (P @ zh).transpose(0, 1).reshape(z.shape)
        return P @ z

    def __call__(self, X: Tensor) -> Tensor:
        if self.dense:
            if not self.terms:
                f = torch.zeros(X.shape[0], self.c_out, dtype=X.dtype, device=X.device)
            elif self.fused:
                f = sum(P @ (X @ Wc) for P, Wc in zip(self.terms, self.maps))
            else:
                z = X @ self.G
                f = sum(self._heads_apply(P, z) @ W for P, W in zip(self.terms, self.maps))
        else:
            z = X @ self.G
            op = self._apply_op if self.heads else self.op
            f = apply_filter(op, z, self.weights, self.basis, self.params,
                             module=self.module) * self.scale
        return X + f if self.residual else f

    def adjoint(self, U: Tensor) -> Tensor:
        r""":math:`\mathcal M^T U` (explicit with the dense :math:`B_k(\hat A)^T`; otherwise the
        vector-Jacobian product of the linear map)."""
        if self.dense:
            if not self.terms:
                f = torch.zeros(U.shape[0], self.c, dtype=U.dtype, device=U.device)
            elif self.fused:
                f = sum(P.mT @ (U @ Wc.T) for P, Wc in zip(self.terms, self.maps))
            else:
                f = sum(self._heads_apply(P.mT, U @ W.T) for P, W in zip(self.terms, self.maps)
                        ) @ self.G.T
            return U + f if self.residual else f
        if self._adj is None:
            with torch.enable_grad():
                x0 = torch.zeros(self.shape, dtype=self.G.dtype, device=self.G.device,
                                 requires_grad=True)
                y0 = self(x0)

            def adj(u: Tensor) -> Tensor:
                return torch.autograd.grad(y0, x0, u, retain_graph=True)[0]
            self._adj = adj
        return self._adj(U)

    def power(self, n: int) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        r"""``(matvec, rmatvec)`` of :math:`\mathcal M^n`.

        Dense and factored (:math:`\mathcal M(X) = [X] + \sum_k T_k(XG) W_k`, :math:`T_k`
        the basis matrix per head), the powers run in the value space: with
        :math:`z_0 = XG` and :math:`z_{j+1} = [z_j] + \sum_k T_k(z_j)\,(W_k G)`,
        :math:`\mathcal M^n X = [X] + \sum_k \big(\sum_{j<n} T_k(z_j)\big) W_k` (without the
        residual: :math:`\sum_k T_k(z_{n-1}) W_k`); the adjoint likewise with the
        transposes. :math:`n + 2` products with a ``C x C_s`` matrix instead of :math:`2n`
        (one term).
        """
        if self.dense and not self.fused and self.terms and n > 2 and (
                self.c_out == self.c):
            return self._value_space_power(n)
        return _powers(self, self.adjoint, n)

    def schur_form(self, channel: QuasiTriangular | None = None) -> SchurKroneckerMap | None:
        r"""This map in real Schur coordinates (:class:`SchurKroneckerMap`) when it is
        :math:`X \mapsto X + P X W` with :math:`G W_k S` precomputed (residual, one term,
        :math:`C_s > C/2`), on the CPU and where a decomposition pays; else ``None``.
        ``channel``: the Schur form of :math:`W = G W_k S` when it is known (the radius
        needs its eigenvalues), not computed again."""
        factors = self.kronecker_factors()
        if factors is None or not self.residual or not self.fused or (
                self.G.device.type != "cpu"):
            return None
        P, W = factors
        n, c = self.shape
        dt = self.G.dtype
        if channel is not None and channel.n == c:
            right: QuasiTriangular | DenseFactor = channel.to(dt)
        elif schur_pays(c, n):
            right = QuasiTriangular(W.double().numpy(), dt)
        else:
            right = DenseFactor(W)
        left = QuasiTriangular(P.double().numpy(), dt) if schur_pays(n, c) else DenseFactor(P)
        if isinstance(left, DenseFactor) and isinstance(right, DenseFactor):
            return None
        return SchurKroneckerMap(left, right)


    def _value_space_power(self, n: int
                           ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        terms, maps, G = self.terms, self.maps, self.G
        loops = [W @ G for W in maps]                  # W_k G: (C_s, C_s)
        res = self.residual

        def step(z: Tensor, acc: list[Tensor] | None) -> Tensor:
            out = z if res else None                 # z -> [z] + sum_k T_k(z) W_k G
            for k, (P, L) in enumerate(zip(terms, loops)):
                t = self._heads_apply(P, z)
                if acc is not None:
                    acc[k] = acc[k] + t
                out = t @ L if out is None else out + t @ L
            return out

        def mv(x: Tensor) -> Tensor:
            z = x @ G
            acc = [torch.zeros_like(z) for _ in terms] if res else None
            for _ in range(n - 1):
                z = step(z, acc)
            last = [self._heads_apply(P, z) for P in terms]
            if not res:
                return sum(t @ W for t, W in zip(last, maps))
            return x + sum((a + t) @ W for a, t, W in zip(acc, last, maps))

        tT = [P.mT for P in terms]
        lT = [L.mT for L in loops]

        def rstep(r: Tensor) -> Tensor:           # r -> [r] + sum_k T_k^T(r (W_k G)^T)
            out = sum(self._heads_apply(P, r @ L) for P, L in zip(tT, lT))
            return r + out if res else out

        def rmv(u: Tensor) -> Tensor:
            r = sum(self._heads_apply(P, u @ W.T) for P, W in zip(tT, maps))
            acc = r
            for _ in range(n - 1):
                r = rstep(r)
                acc = acc + r
            return u + acc @ G.T if res else r @ G.T
        return mv, rmv


def _extrapolated(v: Tensor | None, prev: Tensor | None) -> Tensor | None:
    r"""The warm start of :math:`\mathcal M^n` from the top right singular vectors of the two
    powers before: :math:`v_{n-1} + (v_{n-1} - v_{n-2})` (signs aligned). The vectors of
    successive powers converge geometrically, so the step extrapolates one more (at ViT-B
    width one Lanczos product fewer per power from n = 4 on, two at n = 10); the start is
    mixed with a random part as every warm start is (:func:`top_singular_values`)."""
    if v is None or prev is None:
        return v
    if float((v * prev).sum()) < 0:
        prev = -prev
    e = 2 * v - prev
    return e if float(e.norm()) > 0 else v


def _kronecker_norms(M: FrozenMap, n_max: int, tol: float, max_iter: int, seed: int,
                    growth: np.ndarray, iters: np.ndarray, resid: np.ndarray) -> None:
    """``M^n = P^n (.) W^n`` (one term, no residual, one affinity): the norm of a Kronecker
    product is the product of the factors' norms."""
    P, W = M.kronecker_factors()
    vp = vw = None
    for n in range(1, n_max + 1):
        def pw(A: Tensor, n: int = n) -> tuple[Callable[[Tensor], Tensor],
                                               Callable[[Tensor], Tensor]]:
            def mv(v: Tensor) -> Tensor:
                for _ in range(n):
                    v = A @ v
                return v

            def rmv(u: Tensor) -> Tensor:
                for _ in range(n):
                    u = A.mT @ u
                return u
            return mv, rmv
        sp = top_singular_values(*pw(P), P[:, 0], 1, tol / 2, max_iter, v0=vp, seed=seed)
        sw = top_singular_values(*pw(W), W[:, 0], 1, tol / 2, max_iter, v0=vw, seed=seed)
        vp, vw = sp.vector, sw.vector
        growth[n - 1] = max(growth[n - 1], sp.norm * sw.norm)
        iters[n - 1] = max(iters[n - 1], sp.iterations + sw.iterations)
        resid[n - 1] = max(resid[n - 1], sp.residual + sw.residual)


@dataclass
class FrozenNorms:
    r"""Exact :math:`\|\mathcal M^n\|_2`, ``n = 1 .. n_max`` (:func:`frozen_norms`).

    Attributes
    ----------
    growth : numpy array ``(n_max,)``
        Max over the samples used.
    iterations, residual : numpy arrays ``(n_max,)``
        Products with :math:`\mathcal M^n` and the relative residual (max over samples).
    converged : bool
        Every power met ``tol``.
    tol : float
    samples : int
    vector : Tensor or None
        The top right singular vector of :math:`\mathcal M` (``n = 1``) on sample 0.
    schur : bool
        The products ran in real Schur coordinates (:meth:`FrozenMap.schur_form`).
    """

    growth: np.ndarray
    iterations: np.ndarray
    residual: np.ndarray
    converged: bool
    tol: float
    samples: int
    vector: Tensor | None = field(default=None, repr=False)
    schur: bool = False

    @property
    def norm(self) -> float:
        return float(self.growth[0])


@V.validate_params(
    {"capture": [V.InstanceOf(Capture)], "n_max": [V.POS_INT], "samples": [V.POS_INT, None],
     "include_output_scale": ["boolean"], "tol": [V.UNIT_TOL], "max_iter": [V.POS_INT],
     "dtype": [V.InstanceOf(torch.dtype)], "seed": [V.NONNEG_INT], "dense_limit": [V.NONNEG_INT],
     "channel": [V.InstanceOf(QuasiTriangular), None]},
    valid=lambda: {"capture": example_capture(), "n_max": 3},
)
def frozen_norms(
    capture: Capture,
    n_max: int = 10,
    *,
    samples: int | None = None,
    include_output_scale: bool = True,
    tol: float = 1e-6,
    max_iter: int = 200,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    dense_limit: int = 2048,
    channel: QuasiTriangular | None = None,
) -> FrozenNorms:
    r"""Exact spectral norms :math:`\|\mathcal M^n\|_2`, ``n = 1 .. n_max``, of the block
    map with the affinity frozen (:class:`FrozenMap`), for any affinity (symmetric or not).

    For every ``n``: :func:`top_singular_values` on :math:`\mathcal M^n` and its adjoint
    :math:`(\mathcal M^T)^n`, warm-started from the top right singular vector of
    :math:`\mathcal M^{n-1}`; at most ``max_iter`` products with :math:`\mathcal M^n`, to
    a relative residual ``tol``. A map with one term and no residual (attention with the
    head-averaged affinity) is a Kronecker product, :math:`\mathcal M^n(X) = P^n X W^n`, whose
    norm is :math:`\|P^n\|_2 \|W^n\|_2` (each factor by the same iteration). With the
    residual (:math:`X \mapsto X + P X W`, a pre-LN attention layer) the products run in real
    Schur coordinates on the CPU (:meth:`FrozenMap.schur_form`: the same singular values,
    half the work); ``channel`` is the Schur form of :math:`W` when the caller has it. The
    maximum over the first ``samples`` samples (all by default) is reported.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import DenseAffinity
    >>> A = DenseAffinity(torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))   # nilpotent, not normal
    >>> cap = Capture("b", "block", "toy", A, "none", weights=[torch.zeros(1, 1),
    ...               torch.ones(1, 1)], value_weight=torch.ones(1, 1), n_samples=1)
    >>> fn = frozen_norms(cap, n_max=2, tol=1e-12)   # M = I + A: |M| = 1.618, |M^2| = 2.414
    >>> [round(float(g), 4) for g in fn.growth], fn.converged
    ([1.618, 2.4142], True)
    """
    nb = max(capture.n_samples, 1)
    ns = nb if samples is None else min(samples, nb)
    growth = np.zeros(n_max)
    iters = np.zeros(n_max, dtype=int)
    resid = np.zeros(n_max)
    top = None
    schur = False
    with torch.no_grad():
        for i in range(ns):
            M = FrozenMap(capture, i, include_output_scale, dtype, dense_limit)
            like = torch.zeros(M.shape, dtype=dtype, device=M.G.device)
            if M.kronecker:
                _kronecker_norms(M, n_max, tol, max_iter, seed, growth, iters, resid)
                continue
            S = M.schur_form(channel)
            op: FrozenMap | SchurKroneckerMap = M if S is None else S
            schur = schur or S is not None
            v0 = prev = None
            for n in range(1, n_max + 1):
                mv, rmv = op.power(n)
                sv = top_singular_values(mv, rmv, like, 1, tol, max_iter,
                                         v0=_extrapolated(v0, prev), seed=seed)
                prev, v0 = v0, sv.vector
                if i == 0 and n == 1:
                    top = sv.vector if S is None or sv.vector is None else (
                        S.from_coordinates(sv.vector))
                growth[n - 1] = max(growth[n - 1], sv.norm)
                iters[n - 1] = max(iters[n - 1], sv.iterations)
                resid[n - 1] = max(resid[n - 1], sv.residual)
    return FrozenNorms(growth, iters, resid, bool((resid <= tol).all()), float(tol), ns, top,
                       schur)
