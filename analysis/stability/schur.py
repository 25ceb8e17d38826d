r"""Products with a real Schur form: :math:`A = Q T Q^T`, ``Q`` orthogonal and ``T``
quasi-upper-triangular (1x1 and 2x2 diagonal blocks).

An orthogonal change of basis keeps every spectral norm and eigenvalue, and a product with
``T`` is a triangular one (BLAS ``trmm``: half the work of a dense product) plus one entry
per 2x2 block. :func:`~analysis.stability.frozen.frozen_norms` runs the powers of a frozen
map :math:`X \mapsto X + P X W` this way, and the eigenvalues of ``W`` (the radius) come
from the same decomposition.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas, lapack
from torch import Tensor

from graphfilters import _validate as V

__all__ = ["DenseFactor", "QuasiTriangular", "real_schur", "schur_pays"]


@V.validate_params({"A": [V.ArrayLike(ndim=2)]}, valid=lambda: {"A": np.eye(2)})
def real_schur(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""``(T, Q, eigenvalues)``: the real Schur form :math:`A = Q T Q^T` of a real square
    ``A`` (float64) and its eigenvalues, all from one LAPACK ``dgees`` call (the eigenvalues
    are those LAPACK reads from the diagonal blocks; no second solve).

    Shapes
    ------
    ``A``: ``(n, n)`` → ``(n, n)``, ``(n, n)``, ``(n,)`` complex.

    Examples
    --------
    >>> import numpy as np
    >>> T, Q, ev = real_schur(np.array([[1.0, 2.0], [-2.0, 1.0]]))
    >>> np.sort_complex(ev)
    array([1.-2.j, 1.+2.j])
    """
    A = np.asarray(A, dtype=np.float64)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {A.shape}")

    def unsorted(re: float, im: float) -> None:
        return None

    work = lapack.dgees(unsorted, A, lwork=-1)[5]                # workspace query
    T, _, wr, wi, Q, _, info = lapack.dgees(unsorted, A, lwork=max(int(work[0].real), 1))
    if info != 0:
        raise np.linalg.LinAlgError(f"the real Schur decomposition did not converge "
                                    f"(LAPACK dgees info = {info})")
    return T, Q, wr + 1j * wi


class QuasiTriangular:
    r"""A real matrix :math:`A = Q T Q^T` in real Schur form (:func:`real_schur`), for
    products in the Schur coordinates on the CPU: ``T @ x``, ``T.T @ x``, ``x @ T`` and
    ``x @ T.T`` by BLAS ``trmm`` on the upper triangle plus the subdiagonal of the 2x2 blocks.

    Parameters
    ----------
    A : numpy array ``(n, n)``
        Real, square; decomposed in float64.
    dtype : torch.dtype
        Precision of the products (float32 or float64).

    Attributes
    ----------
    T, Q : numpy arrays ``(n, n)`` (float64)
    eigenvalues : numpy array ``(n,)`` complex

    Shapes
    ------
    ``x``: ``(n, m)`` for the left products, ``(m, n)`` for the right ones (CPU tensors).

    Examples
    --------
    >>> import numpy as np, torch
    >>> A = np.random.default_rng(0).standard_normal((5, 5))
    >>> S = QuasiTriangular(A, torch.float64)
    >>> x = torch.randn(3, 5, dtype=torch.float64)
    >>> xs = S.to_schur_right(x)                            # x Q
    >>> y = S.from_schur_right(S.right(xs))                 # (x Q T) Q^T = x A
    >>> bool(torch.allclose(y, x @ torch.from_numpy(A)))
    True
    """

    def __init__(self, A: np.ndarray, dtype: torch.dtype = torch.float32) -> None:
        self._set(*real_schur(A), dtype)

    def _set(self, T: np.ndarray, Q: np.ndarray, eigenvalues: np.ndarray,
             dtype: torch.dtype) -> None:
        np_dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(dtype)
        if np_dtype is None:
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.T, self.Q, self.eigenvalues, self.dtype = T, Q, eigenvalues, dtype
        self._trmm = blas.strmm if np_dtype == np.float32 else blas.dtrmm
        self._upper = np.asfortranarray(np.triu(T).astype(np_dtype))
        sub = np.diag(T, -1).copy()                # nonzero at the 2x2 blocks only
        self._blocks = bool(np.any(sub != 0))
        self._sd = torch.as_tensor(sub, dtype=dtype)
        self._Qt = torch.as_tensor(Q, dtype=dtype)

    def to(self, dtype: torch.dtype) -> QuasiTriangular:
        """The same decomposition with products in ``dtype`` (no new solve)."""
        if dtype == self.dtype:
            return self
        out = object.__new__(QuasiTriangular)
        out._set(self.T, self.Q, self.eigenvalues, dtype)
        return out

    @property
    def n(self) -> int:
        return self.T.shape[0]

    # coordinates ---------------------------------------------------------------------
    def to_schur_right(self, x: Tensor) -> Tensor:
        """``x Q`` (right coordinates)."""
        return x @ self._Qt

    def from_schur_right(self, x: Tensor) -> Tensor:
        """``x Q^T``."""
        return x @ self._Qt.T

    def to_schur_left(self, x: Tensor) -> Tensor:
        """``Q^T x`` (left coordinates)."""
        return self._Qt.T @ x

    def from_schur_left(self, x: Tensor) -> Tensor:
        """``Q x``."""
        return self._Qt @ x

    # products with T -----------------------------------------------------------------
    def _tri(self, x: Tensor, side: int, trans: int) -> Tensor:
        # x is row-major (r, c); its memory is the Fortran array x^T (c, r)
        b = x.detach().contiguous().numpy().T
        out = self._trmm(1.0, self._upper, b, side=side, trans_a=trans)
        return torch.from_numpy(out.T)

    def right(self, x: Tensor) -> Tensor:
        """``x T``."""
        y = self._tri(x, 0, 1)                     # (x U)^T = U^T x^T
        if self._blocks:                           # y[:, i] += x[:, i + 1] t[i + 1, i]
            y[:, :-1].addcmul_(x[:, 1:], self._sd)
        return y

    def right_t(self, x: Tensor) -> Tensor:
        """``x T^T``."""
        y = self._tri(x, 0, 0)                     # (x U^T)^T = U x^T
        if self._blocks:                           # y[:, i + 1] += x[:, i] t[i + 1, i]
            y[:, 1:].addcmul_(x[:, :-1], self._sd)
        return y

    def left(self, x: Tensor) -> Tensor:
        """``T x``."""
        y = self._tri(x, 1, 1)                     # (U x)^T = x^T U^T
        if self._blocks:                           # y[i + 1] += t[i + 1, i] x[i]
            y[1:].addcmul_(x[:-1], self._sd[:, None])
        return y

    def left_t(self, x: Tensor) -> Tensor:
        """``T^T x``."""
        y = self._tri(x, 1, 0)                     # (U^T x)^T = x^T U
        if self._blocks:                           # y[i] += t[i + 1, i] x[i + 1]
            y[:-1].addcmul_(x[1:], self._sd[:, None])
        return y


class DenseFactor:
    r"""The interface of :class:`QuasiTriangular` for a factor kept as it is (identity
    coordinates, dense products): where a Schur decomposition would cost more than it saves.

    Examples
    --------
    >>> import torch
    >>> D = DenseFactor(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    >>> D.right(torch.tensor([[1.0, 1.0]])).tolist()
    [[1.0, 3.0]]
    """

    def __init__(self, A: Tensor) -> None:
        self.A = A

    @property
    def n(self) -> int:
        return self.A.shape[0]

    def to_schur_right(self, x: Tensor) -> Tensor:
        return x

    from_schur_right = to_schur_left = from_schur_left = to_schur_right

    def right(self, x: Tensor) -> Tensor:
        return x @ self.A

    def right_t(self, x: Tensor) -> Tensor:
        return x @ self.A.mT

    def left(self, x: Tensor) -> Tensor:
        return self.A @ x

    def left_t(self, x: Tensor) -> Tensor:
        return self.A.mT @ x


def schur_pays(n: int, m: int, products: int = 500) -> bool:
    r"""Whether the real Schur form of an ``n x n`` factor multiplied into ``n x m`` blocks
    pays for itself over about ``products`` products: the decomposition costs about
    :math:`25 n^3` flops and a triangular product saves :math:`n^2 m` of the dense
    :math:`2 n^2 m` (counted at a quarter, for BLAS's lower efficiency on small blocks).

    Examples
    --------
    >>> schur_pays(768, 197), schur_pays(4096, 16)
    (True, False)
    """
    return 25 * n ** 3 < products * n * n * m / 4
