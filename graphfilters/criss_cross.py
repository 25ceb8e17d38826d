r"""Criss-cross affinities (CCNet): a sparse graph over the lines through each position.

In criss-cross attention (Huang et al., ICCV 2019) position :math:`u` of an ``H x W`` map
attends to the ``H + W - 1`` positions of its row and its column, with one softmax over all of
them (the column's copy of :math:`u` is masked with :math:`-\infty`, so :math:`u` counts once):

.. math::

    A_{uv} = \frac{\exp(s\, q_u^T k_v)}{\sum_{w \in \mathcal C(u)} \exp(s\, q_u^T k_w)}
    \ \text{for}\ v \in \mathcal C(u), \qquad A_{uv} = 0 \ \text{otherwise}.

The same holds for any number of spatial axes: :math:`\mathcal C(u)` is the union of the lines
through :math:`u` along every axis (a sequence: the whole sequence; a video: its T, H and W
lines). :class:`CrissCrossAffinity` stores only the queries and keys; products cost
:math:`O(N \sum_a L_a C)` time and :math:`O(N \sum_a L_a)` memory instead of :math:`O(N^2)`.

Examples
--------
>>> import numpy as np
>>> from graphfilters.criss_cross import criss_cross
>>> rng = np.random.default_rng(0)
>>> q, k = rng.standard_normal((2, 12, 3))
>>> A = criss_cross(q, k, (3, 4))
>>> dense = A.dense()
>>> np.allclose(dense.sum(-1), 1), int((dense[0] > 0).sum())      # 3 + 4 - 1 neighbours
(True, 6)
>>> z = rng.standard_normal((12, 2))
>>> np.allclose(A.matmul(z), dense @ z)
True
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import _backend as B
from . import _validate as V
from ._backend import Array
from .graph import Affinity, check_signal

__all__ = ["CrissCrossAffinity", "criss_cross"]


def _nonpositive(spatial_shape: tuple[int, ...]) -> int:
    raise ValueError(f"spatial_shape must be positive sizes, got {tuple(spatial_shape)!r}")


def _moveaxis(x: Array, src: int, dst: int) -> Array:
    return torch.movedim(x, src, dst) if B.is_torch(x) else np.moveaxis(x, src, dst)


class CrissCrossAffinity(Affinity):
    r"""The row-stochastic criss-cross affinity of :mod:`graphfilters.criss_cross`.

    Parameters
    ----------
    query, key : (..., N, d)
        ``N = prod(spatial_shape)`` positions in row-major (C) order.
    spatial_shape : tuple of int
        ``(L,)``, ``(H, W)`` or ``(T, H, W)``.
    scale : float
        Factor of the energies (1 in CCNet).

    Shapes
    ------
    ``query``, ``key``: ``(..., N, d)``; :meth:`matmul`: ``(..., N, C)`` → ``(..., N, C)``;
    :meth:`dense`: ``(..., N, N)`` with ``sum(spatial_shape) - ndim + 1`` nonzeros per row.

    Examples
    --------
    >>> import torch
    >>> q = torch.randn(2, 6, 3)
    >>> A = CrissCrossAffinity(q, q, (2, 3))
    >>> A.shape, bool(torch.allclose(A.degrees(), torch.ones(2, 6)))
    ((2, 6, 6), True)
    """

    _fields = ("query", "key")
    row_stochastic = True

    @V.validate_params(
        {"scale": [V.REAL]},
        valid=lambda: {"query": [[0.1], [0.2]], "key": [[0.3], [0.1]], "spatial_shape": (2,)},
    )
    def __init__(
        self, query: Array, key: Array, spatial_shape: tuple[int, ...], scale: float = 1.0
    ) -> None:
        query, key = B.as_array(query, "query"), B.as_array(key, "key")
        if isinstance(spatial_shape, (int, str)) or not hasattr(spatial_shape, "__len__"):
            raise TypeError(f"spatial_shape must be a tuple of sizes, e.g. (H, W), got "
                            f"{spatial_shape!r}")
        if not 1 <= len(spatial_shape) <= 3:
            raise ValueError(f"spatial_shape must be (L,), (H, W) or (T, H, W), got "
                             f"{tuple(spatial_shape)!r}")
        spatial = tuple(V.positive_int(s, "spatial_shape") if not isinstance(s, int) or s >= 1
                        else _nonpositive(spatial_shape) for s in spatial_shape)
        n = math.prod(spatial)
        if query.ndim < 2 or query.shape != key.shape or query.shape[-2] != n:
            raise ValueError(
                f"query and key must both have shape (..., N, d) with N = prod{spatial} = {n}, "
                f"got {tuple(query.shape)} and {tuple(key.shape)}"
            )
        V.nonempty(query, "query")
        B.check_finite(query, "query")
        B.check_finite(key, "key")
        self.query, self.key = query, key
        self.spatial_shape = spatial
        self.scale = float(scale)

    @property
    def symmetric(self) -> bool:
        return False

    def degrees(self) -> Array:
        return self._full((*self.batch_shape, self.n), 1.0)

    def abs_row_sums(self) -> Array:
        return self.degrees()

    def _grid(self, x: Array) -> Array:
        return x.reshape(*x.shape[:-2], *self.spatial_shape, x.shape[-1])

    def weights(self) -> list[Array]:
        """Attention weights per axis ``a``: ``(..., *spatial_shape, L_a)`` (joint softmax)."""
        q, k = self._grid(self.query), self._grid(self.key)
        nb, d = q.ndim - len(self.spatial_shape) - 1, len(self.spatial_shape)
        energies = []
        for a, length in enumerate(self.spatial_shape):
            pos = nb + a
            qa, ka = _moveaxis(q, pos, -2), _moveaxis(k, pos, -2)
            e = self.scale * (qa @ B.transpose(ka))           # (..., others, L_a, L_a)
            if a < d - 1:   # the position itself is counted once, on the last axis
                if B.is_torch(e):
                    eye = torch.eye(length, dtype=torch.bool, device=e.device)
                    e = e.masked_fill(eye, float("-inf"))
                else:
                    e = np.where(np.eye(length, dtype=bool), -np.inf, e)
            energies.append(_moveaxis(e, -2, pos))              # (..., *spatial, L_a)
        cat = torch.cat if B.is_torch(q) else np.concatenate
        att = B.softmax(cat(energies, -1), -1)
        out, start = [], 0
        for length in self.spatial_shape:
            out.append(att[..., start:start + length])
            start += length
        return out

    def matmul(self, Z: Array) -> Array:
        Z = check_signal(Z, self.n)
        z = self._grid(Z)
        nb = z.ndim - len(self.spatial_shape) - 1
        out = None
        for a, w in enumerate(self.weights()):
            pos = nb + a
            term = _moveaxis(_moveaxis(w, pos, -2) @ _moveaxis(z, pos, -2), -2, pos)
            out = term if out is None else out + term
        return out.reshape(*out.shape[: nb], self.n, Z.shape[-1])

    def dense(self) -> Array:
        eye = B.eye(self.n, self.query)
        if B.is_torch(eye):
            eye = eye.expand(*self.batch_shape, self.n, self.n)
        else:
            eye = np.broadcast_to(eye, (*self.batch_shape, self.n, self.n))
        return self.matmul(eye)


def criss_cross(
    theta: Array, phi: Array, spatial_shape: tuple[int, ...], scale: float = 1.0
) -> CrissCrossAffinity:
    r"""Criss-cross kernel (CC): softmax of :math:`s\,\theta_u^T\phi_v` over the lines through
    :math:`u` (see :class:`CrissCrossAffinity`); row-stochastic, never ``N x N`` in products.

    Examples
    --------
    >>> import torch
    >>> t = torch.randn(1, 4, 2)
    >>> criss_cross(t, t, (4,)).dense().count_nonzero().item()    # a sequence: all pairs
    16
    """
    return CrissCrossAffinity(theta, phi, spatial_shape, scale=scale)
