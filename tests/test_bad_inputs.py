"""The bad-input suite: every malformed argument of the public API is a clear error.

Each case asserts the exception type and that the message names the caller's argument.
Sizes are checked before allocation (the huge cases would need hundreds of GiB otherwise).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.spectra import affinity_metrics, spectral_density, spectrum
from graphfilters import chebyshev, kernels
from graphfilters.criss_cross import CrissCrossAffinity
from graphfilters.graph import (
    DenseAffinity,
    LowRankAffinity,
    SoftmaxAffinity,
    degrees,
    inv_degree_power,
    lambda_max,
    laplacian,
    normalized_affinity,
    symmetrize,
)
from graphfilters.spectral import ConvergenceWarning, krylov_extremes, power_extreme

E2 = np.eye(2)
ONES = np.ones((3, 3))
Z3 = np.ones((3, 1))
NAN33 = np.full((3, 3), np.nan)
HUGE = 200_000


def _lr(n=HUGE, r=2):
    # broadcast views: no memory, the size check must come before any N x N allocation
    return LowRankAffinity(np.broadcast_to(np.ones(1), (n, r)),
                           np.broadcast_to(np.ones(1), (n, r)), symmetric=True)


def _soft(n=HUGE, d=2):
    x = np.broadcast_to(np.ones(1), (n, d))
    return SoftmaxAffinity(x, x)


# (call, exception type, text the message must contain: the argument's name)
CASES = {
    # graph: dense functions
    "degrees-1d": (lambda: degrees(np.ones(3)), ValueError, "A must have shape"),
    "degrees-nonsquare": (lambda: degrees(np.ones((3, 4))), ValueError, "A must have shape"),
    "degrees-empty": (lambda: degrees(np.zeros((0, 0))), ValueError, "A is empty"),
    "degrees-empty-batch": (lambda: degrees(np.zeros((0, 2, 2))), ValueError, "A is empty"),
    "degrees-nan": (lambda: degrees(NAN33), ValueError, "A contains NaN"),
    "degrees-inf": (lambda: degrees(np.full((2, 2), np.inf)), ValueError, "A contains NaN"),
    "degrees-str": (lambda: degrees("A"), TypeError, "A must be a numpy array"),
    "degrees-none": (lambda: degrees(None), TypeError, "A must be a numpy array"),
    "degrees-complex": (lambda: degrees(E2 * 1j), TypeError, "(2, 2) (complex128)"),
    "degrees-object": (lambda: degrees(np.array([[None]])), TypeError, "(1, 1) (object)"),
    "degrees-fp16-overflow": (lambda: degrees(torch.full((2, 2), 60000.0).half()),
                              ValueError, "A is torch.float16"),
    "symmetrize-nonsquare": (lambda: symmetrize(np.ones((2, 3))), ValueError, "A must"),
    "symmetrize-empty": (lambda: symmetrize(np.zeros((0, 0))), ValueError, "A is empty"),
    "symmetrize-nan": (lambda: symmetrize(NAN33), ValueError, "A contains NaN"),
    "laplacian-kind": (lambda: laplacian(E2, "foo"), ValueError, "laplacian: kind must be one of"),
    "laplacian-kind-int": (lambda: laplacian(E2, 3), TypeError, "kind must be one of"),
    "laplacian-empty": (lambda: laplacian(np.zeros((0, 0))), ValueError, "A is empty"),
    "laplacian-nan": (lambda: laplacian(NAN33), ValueError, "A contains NaN"),
    "laplacian-1d": (lambda: laplacian(np.ones(4)), ValueError, "A must have shape"),
    "laplacian-negative-degree": (lambda: laplacian(-ONES, "sym"), ValueError,
                                  "negative degree"),
    "laplacian-fp16-overflow": (lambda: laplacian(torch.full((3, 3), 40000.0).half(),
                                                  "combinatorial"), ValueError, "float16"),
    "normalized-kind": (lambda: normalized_affinity(E2, "l2"), ValueError, "kind must be"),
    "normalized-empty": (lambda: normalized_affinity(np.zeros((0, 0))), ValueError,
                         "A is empty"),
    "normalized-nan": (lambda: normalized_affinity(NAN33), ValueError, "A contains NaN"),
    "inv-degree-nan": (lambda: inv_degree_power([np.nan, 1.0], 0.5), ValueError,
                       "d contains NaN"),
    "inv-degree-negative": (lambda: inv_degree_power([-1.0, 1.0], 0.5), ValueError,
                            "d has a negative degree"),
    "inv-degree-power-str": (lambda: inv_degree_power([1.0], "x"), TypeError, "power"),
    "inv-degree-power-nan": (lambda: inv_degree_power([1.0], math.nan), ValueError, "power"),
    # graph: lambda_max
    "lmax-method": (lambda: lambda_max(E2, "sym", "arnoldi"), ValueError,
                    "lambda_max: method must be one of"),
    "lmax-laplacian": (lambda: lambda_max(E2, "lap"), ValueError, "laplacian must be one of"),
    "lmax-empty": (lambda: lambda_max(np.zeros((0, 0))), ValueError, "A is empty"),
    "lmax-empty-affinity": (lambda: lambda_max(np.zeros((2, 0, 0))), ValueError, "A is empty"),
    "lmax-nan": (lambda: lambda_max(NAN33), ValueError, "A contains NaN"),
    "lmax-n-iter-0": (lambda: lambda_max(ONES, method="power", n_iter=0), ValueError,
                      "n_iter"),
    "lmax-n-iter-neg": (lambda: lambda_max(ONES, method="power", n_iter=-3), ValueError,
                        "n_iter"),
    "lmax-n-iter-float": (lambda: lambda_max(ONES, method="power", n_iter=2.5), TypeError,
                          "n_iter"),
    "lmax-n-iter-bool": (lambda: lambda_max(ONES, method="power", n_iter=True), TypeError,
                         "n_iter"),
    "lmax-tol-0": (lambda: lambda_max(ONES, method="power", tol=0), ValueError, "tol"),
    "lmax-tol-neg": (lambda: lambda_max(ONES, method="power", tol=-1.0), ValueError, "tol"),
    "lmax-tol-nan": (lambda: lambda_max(ONES, method="power", tol=math.nan), ValueError,
                     "tol"),
    "lmax-tol-str": (lambda: lambda_max(ONES, method="power", tol="1e-6"), TypeError, "tol"),
    "lmax-margin-neg": (lambda: lambda_max(ONES, margin=-0.1), ValueError, "margin"),
    "lmax-margin-inf": (lambda: lambda_max(ONES, margin=math.inf), ValueError, "margin"),
    "lmax-seed-neg": (lambda: lambda_max(ONES, seed=-1), ValueError, "seed"),
    "lmax-seed-str": (lambda: lambda_max(ONES, seed="0"), TypeError, "seed"),
    "lmax-exact-huge-softmax": (lambda: lambda_max(_soft(), "sym", "exact"), ValueError,
                                "method='lanczos'"),
    "lmax-exact-huge-lowrank-comb": (lambda: lambda_max(_lr(), "combinatorial", "exact"),
                                     ValueError, "'sym' or 'rw' Laplacian"),
    "lmax-exact-huge-softmax-comb": (lambda: lambda_max(_soft(), "combinatorial", "exact"),
                                     ValueError, "too large"),
    # graph: structures
    "lowrank-shapes": (lambda: LowRankAffinity(np.ones((4, 2)), np.ones((4, 3))), ValueError,
                       "P and Q"),
    "lowrank-1d": (lambda: LowRankAffinity(np.ones(4), np.ones(4)), ValueError, "P and Q"),
    "lowrank-sym-shapes": (lambda: LowRankAffinity(np.ones((4, 2)), np.ones((5, 2)), True),
                           ValueError, "P and Q"),
    "lowrank-empty-n": (lambda: LowRankAffinity(np.ones((0, 2)), np.ones((0, 2))), ValueError,
                        "P is empty"),
    "lowrank-empty-r": (lambda: LowRankAffinity(np.ones((3, 0)), np.ones((3, 0))), ValueError,
                        "P is empty"),
    "lowrank-nan-P": (lambda: LowRankAffinity(np.full((3, 1), np.nan), np.ones((3, 1))),
                      ValueError, "P contains NaN"),
    "lowrank-nan-Q": (lambda: LowRankAffinity(np.ones((3, 1)), np.full((3, 1), np.inf)),
                      ValueError, "Q contains NaN"),
    "lowrank-str": (lambda: LowRankAffinity("P", np.ones((3, 1))), TypeError, "P must be"),
    "lowrank-matmul-shape": (lambda: _lr(5).matmul(np.ones((4, 1))), ValueError,
                             "Z must have shape"),
    "lowrank-matmul-1d": (lambda: _lr(5).matmul(np.ones(5)), ValueError, "Z must have shape"),
    "lowrank-normalized-kind": (lambda: _lr(5).normalized("l1"), ValueError, "normalization"),
    "lowrank-negative-sym": (lambda: LowRankAffinity(-np.ones((4, 1)), np.ones((4, 1)),
                                                     True).normalized("sym"), ValueError,
                             "negative degree"),
    "lowrank-nonzero-dense": (lambda: DenseAffinity(E2).eigvals(nonzero=True), ValueError,
                              "nonzero=True"),
    "lowrank-subsampled-laplacian": (lambda: LowRankAffinity(np.ones((4, 1)),
                                                             np.ones((2, 1))).laplacian_dense(),
                                     ValueError, "sub-sampled"),
    "softmax-shapes": (lambda: SoftmaxAffinity(np.ones((3, 2)), np.ones((3, 4))), ValueError,
                       "query and key"),
    "softmax-empty": (lambda: SoftmaxAffinity(np.ones((0, 2)), np.ones((0, 2))), ValueError,
                      "query is empty"),
    "softmax-empty-d": (lambda: SoftmaxAffinity(np.ones((3, 0)), np.ones((3, 0))), ValueError,
                        "query is empty"),
    "softmax-nan-query": (lambda: SoftmaxAffinity(np.full((3, 2), np.nan), np.ones((3, 2))),
                          ValueError, "query contains NaN"),
    "softmax-nan-key": (lambda: SoftmaxAffinity(np.ones((3, 2)), np.full((3, 2), np.nan)),
                        ValueError, "key contains NaN"),
    "softmax-chunk-0": (lambda: SoftmaxAffinity(np.ones((3, 2)), np.ones((3, 2)),
                                                chunk_size=0), ValueError, "chunk_size"),
    "softmax-chunk-neg": (lambda: SoftmaxAffinity(np.ones((3, 2)), np.ones((3, 2)),
                                                  chunk_size=-1), ValueError, "chunk_size"),
    "softmax-chunk-float": (lambda: SoftmaxAffinity(np.ones((3, 2)), np.ones((3, 2)),
                                                    chunk_size=1.5), TypeError, "chunk_size"),
    "softmax-scale-nan": (lambda: SoftmaxAffinity(np.ones((3, 2)), np.ones((3, 2)),
                                                  scale=math.nan), ValueError, "scale"),
    "softmax-scale-str": (lambda: SoftmaxAffinity(np.ones((3, 2)), np.ones((3, 2)),
                                                  scale="1"), TypeError, "scale"),
    "softmax-huge-eigvals": (lambda: _soft().eigvals("rw"), ValueError, "too large"),
    "dense-1d": (lambda: DenseAffinity(np.ones(3)), ValueError, "A must have shape"),
    "dense-empty": (lambda: DenseAffinity(np.zeros((0, 0))), ValueError, "A is empty"),
    "dense-nan": (lambda: DenseAffinity(NAN33), ValueError, "A contains NaN"),
    "dense-matmul": (lambda: DenseAffinity(ONES).matmul(np.ones((2, 1))), ValueError,
                     "Z must have shape"),
    # criss-cross
    "cc-shape-int": (lambda: CrissCrossAffinity(np.ones((4, 2)), np.ones((4, 2)), 4),
                     TypeError, "spatial_shape"),
    "cc-shape-str": (lambda: CrissCrossAffinity(np.ones((4, 2)), np.ones((4, 2)), "22"),
                     TypeError, "spatial_shape"),
    "cc-shape-empty": (lambda: CrissCrossAffinity(np.ones((4, 2)), np.ones((4, 2)), ()),
                       ValueError, "spatial_shape"),
    "cc-shape-4d": (lambda: CrissCrossAffinity(np.ones((1, 2)), np.ones((1, 2)),
                                               (1, 1, 1, 1)), ValueError, "spatial_shape"),
    "cc-shape-zero": (lambda: CrissCrossAffinity(np.ones((4, 2)), np.ones((4, 2)), (0, 4)),
                      ValueError, "spatial_shape"),
    "cc-shape-float": (lambda: CrissCrossAffinity(np.ones((4, 2)), np.ones((4, 2)),
                                                  (2.5, 2)), TypeError, "spatial_shape"),
    "cc-shape-mismatch": (lambda: CrissCrossAffinity(np.ones((4, 2)), np.ones((4, 2)),
                                                     (3, 3)), ValueError, "query and key"),
    "cc-nan-query": (lambda: CrissCrossAffinity(np.full((4, 2), np.nan), np.ones((4, 2)),
                                                (2, 2)), ValueError, "query contains NaN"),
    "cc-nan-key": (lambda: CrissCrossAffinity(np.ones((4, 2)), np.full((4, 2), np.inf),
                                              (2, 2)), ValueError, "key contains NaN"),
    "cc-scale-nan": (lambda: CrissCrossAffinity(np.ones((4, 2)), np.ones((4, 2)), (2, 2),
                                                scale=math.nan), ValueError, "scale"),
    "cc-empty-d": (lambda: CrissCrossAffinity(np.ones((4, 0)), np.ones((4, 0)), (2, 2)),
                   ValueError, "query is empty"),
    # kernels
    "eg-shapes": (lambda: kernels.embedded_gaussian(np.ones((3, 2)), np.ones((3, 3))),
                  ValueError, "theta and phi"),
    "eg-nan-theta": (lambda: kernels.embedded_gaussian(np.full((3, 2), np.nan),
                                                       np.ones((3, 2))), ValueError,
                     "theta contains NaN"),
    "eg-nan-phi": (lambda: kernels.embedded_gaussian(np.ones((3, 2)),
                                                     np.full((3, 2), np.nan)), ValueError,
                   "phi contains NaN"),
    "eg-empty": (lambda: kernels.embedded_gaussian(np.ones((0, 2)), np.ones((0, 2))),
                 ValueError, "theta is empty"),
    "eg-scale-str": (lambda: kernels.embedded_gaussian(np.ones((3, 2)), np.ones((3, 2)),
                                                       scale="cube"), ValueError, "scale"),
    "eg-scale-bool": (lambda: kernels.embedded_gaussian(np.ones((3, 2)), np.ones((3, 2)),
                                                        scale=True), TypeError, "scale"),
    "eg-scale-inf": (lambda: kernels.embedded_gaussian(np.ones((3, 2)), np.ones((3, 2)),
                                                       scale=math.inf), ValueError, "scale"),
    "dot-nan": (lambda: kernels.dot_product(np.full((3, 2), np.nan), np.ones((3, 2))),
                ValueError, "theta contains NaN"),
    "dot-1d": (lambda: kernels.dot_product(np.ones(3), np.ones(3)), ValueError,
               "theta and phi"),
    "relu-dot-nan": (lambda: kernels.relu_dot(np.ones((3, 2)), np.full((3, 2), np.inf)),
                     ValueError, "phi contains NaN"),
    "relu-dot-str": (lambda: kernels.relu_dot("theta", np.ones((3, 2))), TypeError,
                     "theta must be"),
    "gaussian-nan": (lambda: kernels.gaussian(np.full((3, 2), np.nan)), ValueError,
                     "x contains NaN"),
    "gaussian-1d": (lambda: kernels.gaussian(np.ones(3)), ValueError, "x and x"),
    "concat-w-shape": (lambda: kernels.concatenation(np.ones((3, 2)), np.ones((3, 2)),
                                                     np.ones(3), np.ones(2)), ValueError,
                       "w_theta and w_phi"),
    "concat-w-nan": (lambda: kernels.concatenation(np.ones((3, 2)), np.ones((3, 2)),
                                                   np.full(2, np.nan), np.ones(2)),
                     ValueError, "w_theta contains NaN"),
    "taylor-order-neg": (lambda: kernels.taylor_rbf(np.ones(3), np.ones(3), order=-1),
                         ValueError, "order"),
    "taylor-order-200": (lambda: kernels.taylor_rbf(np.ones(3), np.ones(3), order=200),
                         ValueError, "order"),
    "taylor-order-float": (lambda: kernels.taylor_rbf(np.ones(3), np.ones(3), order=2.0),
                           TypeError, "order"),
    "taylor-gamma-0": (lambda: kernels.taylor_rbf(np.ones(3), np.ones(3), gamma=0.0),
                       ValueError, "gamma"),
    "taylor-gamma-nan": (lambda: kernels.taylor_rbf(np.ones(3), np.ones(3), gamma=math.nan),
                         ValueError, "gamma"),
    "taylor-gamma-str": (lambda: kernels.taylor_rbf(np.ones(3), np.ones(3), gamma="1"),
                         TypeError, "gamma"),
    "taylor-beta-neg": (lambda: kernels.taylor_rbf(np.ones(3), np.ones(3), beta=-1.0),
                        ValueError, "beta"),
    "taylor-beta-zero": (lambda: kernels.taylor_rbf(np.ones(3), np.ones(3), beta=0.0),
                         ValueError, "beta"),
    "taylor-beta-inf": (lambda: kernels.taylor_rbf(np.ones(3), np.ones(3), beta=math.inf),
                        ValueError, "beta"),
    "taylor-shapes": (lambda: kernels.taylor_rbf(np.ones(3), np.ones(4)), ValueError,
                      "theta and phi"),
    "taylor-nan": (lambda: kernels.taylor_rbf(np.full(3, np.nan), np.ones(3)), ValueError,
                   "theta contains NaN"),
    "taylor-empty": (lambda: kernels.taylor_rbf(np.ones(0), np.ones(0)), ValueError,
                     "theta is empty"),
    "a2-nan": (lambda: kernels.double_attention(np.full((3, 2), np.nan), np.ones((3, 2))),
               ValueError, "gather_logits contains NaN"),
    "a2-shapes": (lambda: kernels.double_attention(np.ones((3, 2)), np.ones((4, 2))),
                  ValueError, "gather"),
    "dnl-unary-shape": (lambda: kernels.disentangled(np.ones((3, 2)), np.ones((3, 2)),
                                                     np.ones(4)), ValueError, "unary_logits"),
    "dnl-unary-nan": (lambda: kernels.disentangled(np.ones((3, 2)), np.ones((3, 2)),
                                                   np.full(3, np.nan)), ValueError,
                      "unary_logits contains NaN"),
    "dnl-scale-str": (lambda: kernels.disentangled(np.ones((3, 2)), np.ones((3, 2)),
                                                   np.ones(3), scale="2"), TypeError, "scale"),
    "dnl-subsampled": (lambda: kernels.disentangled(np.ones((3, 2)), np.ones((2, 2)),
                                                    np.ones(2)), ValueError, "as many keys"),
    "get-kernel": (lambda: kernels.get_kernel("softmax"), ValueError,
                   "get_kernel: name must be one of"),
    # chebyshev
    "coef-order-neg": (lambda: chebyshev.chebyshev_coefficients(np.exp, -1), ValueError,
                       "order"),
    "coef-order-huge": (lambda: chebyshev.chebyshev_coefficients(np.exp, 10**6), ValueError,
                        "order"),
    "coef-order-float": (lambda: chebyshev.chebyshev_coefficients(np.exp, 2.5), TypeError,
                         "order"),
    "coef-lmax-0": (lambda: chebyshev.chebyshev_coefficients(np.exp, 3, 0.0), ValueError,
                    "lambda_max"),
    "coef-lmax-str": (lambda: chebyshev.chebyshev_coefficients(np.exp, 3, "2"), TypeError,
                      "lambda_max"),
    "coef-lmax-array": (lambda: chebyshev.chebyshev_coefficients(np.exp, 3, np.ones(2)),
                        TypeError, "lambda_max"),
    "coef-lmax-nan": (lambda: chebyshev.chebyshev_coefficients(np.exp, 3, math.nan),
                      ValueError, "lambda_max"),
    "coef-h-not-callable": (lambda: chebyshev.chebyshev_coefficients(3.0, 3), TypeError,
                            "h must be a callable"),
    "coef-npoints-0": (lambda: chebyshev.chebyshev_coefficients(np.exp, 3, n_points=0),
                       ValueError, "n_points"),
    "coef-npoints-small": (lambda: chebyshev.chebyshev_coefficients(np.exp, 3, n_points=2),
                           ValueError, "n_points"),
    "coef-damping": (lambda: chebyshev.chebyshev_coefficients(np.exp, 3, damping="x"),
                     ValueError, "damping"),
    "filter-Z-nan": (lambda: chebyshev.chebyshev_filter(ONES, np.full((3, 1), np.nan),
                                                        [1.0]), ValueError, "Z contains NaN"),
    "filter-Z-empty": (lambda: chebyshev.chebyshev_filter(ONES, np.ones((3, 0)), [1.0]),
                       ValueError, "Z is empty"),
    "filter-Z-shape": (lambda: chebyshev.chebyshev_filter(ONES, np.ones((4, 1)), [1.0]),
                       ValueError, "Z must have shape"),
    "filter-Z-1d": (lambda: chebyshev.chebyshev_filter(ONES, np.ones(3), [1.0]), ValueError,
                    "Z must have shape"),
    "filter-L-nan": (lambda: chebyshev.chebyshev_filter(NAN33, Z3, [1.0]), ValueError,
                     "L contains NaN"),
    "filter-L-nonsquare": (lambda: chebyshev.chebyshev_filter(np.ones((3, 2)), Z3, [1.0]),
                           ValueError, "L must have shape"),
    "filter-lmax-str": (lambda: chebyshev.chebyshev_filter(ONES, Z3, [1.0], "2"), TypeError,
                        "lambda_max"),
    "filter-lmax-neg": (lambda: chebyshev.chebyshev_filter(ONES, Z3, [1.0], -2.0), ValueError,
                        "lambda_max"),
    "filter-lmax-array": (lambda: chebyshev.chebyshev_filter(ONES, Z3, [1.0], np.ones(3)),
                          TypeError, "lambda_max"),
    "filter-weights-empty": (lambda: chebyshev.chebyshev_filter(ONES, Z3, []), ValueError,
                             "weights"),
    "filter-weights-2d": (lambda: chebyshev.chebyshev_filter(ONES, Z3, np.ones((2, 2))),
                          ValueError, "weights"),
    "filter-all-none": (lambda: chebyshev.chebyshev_filter(ONES, Z3, [None, None]),
                        ValueError, "every weight is None"),
    "poly-apply": (lambda: chebyshev.polynomial_filter(3, Z3, [1.0]), TypeError,
                   "apply must be a callable"),
    "poly-basis": (lambda: chebyshev.polynomial_filter(lambda x: x, Z3, [1.0, 1.0], "power"),
                   ValueError, "basis"),
    "poly-Z-nan": (lambda: chebyshev.polynomial_filter(lambda x: x, np.full((3, 1), np.nan),
                                                       [1.0]), ValueError, "Z contains NaN"),
    "terms-order": (lambda: chebyshev.polynomial_terms(lambda x: x, Z3, -1), ValueError,
                    "order"),
    "basis-order": (lambda: chebyshev.chebyshev_basis(-2, np.ones(3)), ValueError, "order"),
    "jackson-order": (lambda: chebyshev.jackson_damping(-1), ValueError, "order"),
    "spectral-filter-huge": (lambda: chebyshev.spectral_filter(
        np.broadcast_to(np.zeros(1), (HUGE, HUGE)), np.ones((HUGE, 1)), np.exp), ValueError,
        "chebyshev_filter"),
    "spectral-filter-nonsym": (lambda: chebyshev.spectral_filter(np.triu(ONES), Z3, np.exp),
                               ValueError, "symmetric"),
    "spectral-filter-Z-nan": (lambda: chebyshev.spectral_filter(ONES, np.full((3, 1), np.nan),
                                                                np.exp), ValueError,
                              "Z contains NaN"),
    "spectral-filter-h": (lambda: chebyshev.spectral_filter(ONES, Z3, "exp"), TypeError,
                          "h must be a callable"),
    # spectral solvers
    "krylov-n-0": (lambda: krylov_extremes(lambda x: x, 0, symmetric=True), ValueError, "n"),
    "krylov-k-0": (lambda: krylov_extremes(lambda x: x, 10, 0, symmetric=True), ValueError,
                   "k must"),
    "krylov-block-0": (lambda: krylov_extremes(lambda x: x, 10, symmetric=True, block_size=0),
                       ValueError, "block_size"),
    "krylov-nblocks-0": (lambda: krylov_extremes(lambda x: x, 10, symmetric=True,
                                                 n_blocks=0), ValueError, "n_blocks"),
    "krylov-tol-neg": (lambda: krylov_extremes(lambda x: x, 10, symmetric=True, tol=-1.0),
                       ValueError, "tol"),
    "krylov-which": (lambda: krylov_extremes(lambda x: x, 10, symmetric=False,
                                             which=("XX",)), ValueError, "which"),
    "power-n-iter": (lambda: power_extreme(lambda x: x, np.ones((3, 1)), n_iter=0),
                     ValueError, "n_iter"),
    # analysis.spectra
    "spectrum-operator": (lambda: spectrum(ONES, "adjacency"), ValueError, "operator"),
    "spectrum-method": (lambda: spectrum(ONES, method="magic"), ValueError, "method"),
    "spectrum-kind": (lambda: spectrum(ONES, "normalized", "l2"), ValueError, "normalization"),
    "spectrum-k-0": (lambda: spectrum(ONES, k=0), ValueError, "k must"),
    "spectrum-k-str": (lambda: spectrum(ONES, k="4"), TypeError, "k must"),
    "spectrum-tol-0": (lambda: spectrum(ONES, tol=0.0), ValueError, "tol"),
    "spectrum-block-0": (lambda: spectrum(ONES, block_size=0), ValueError, "block_size"),
    "spectrum-nblocks-neg": (lambda: spectrum(ONES, n_blocks=-1), ValueError, "n_blocks"),
    "spectrum-dense-limit-neg": (lambda: spectrum(ONES, dense_limit=-1), ValueError,
                                 "dense_limit"),
    "spectrum-seed-neg": (lambda: spectrum(ONES, seed=-1), ValueError, "seed"),
    "spectrum-empty": (lambda: spectrum(np.zeros((0, 0))), ValueError, "A is empty"),
    "spectrum-nan": (lambda: spectrum(NAN33), ValueError, "A contains NaN"),
    "spectrum-eig-huge": (lambda: spectrum(_soft(), method="eig"), ValueError,
                          "method 'auto'"),
    "spectrum-eigh-huge": (lambda: spectrum(_lr(), method="eigh"), ValueError, "too large"),
    "spectrum-eigh-nonsym": (lambda: spectrum(np.triu(ONES), "normalized", "rw",
                                              method="eigh"), ValueError, "eigh"),
    "spectrum-structured-dense": (lambda: spectrum(ONES, method="structured"), ValueError,
                                  "LowRankAffinity"),
    "spectrum-lanczos-nonsym": (lambda: spectrum(SoftmaxAffinity(np.eye(20), np.eye(20)),
                                                 method="lanczos"), ValueError, "arnoldi"),
    "density-method": (lambda: spectral_density(ONES, method="magic"), ValueError, "method"),
    "density-nonsym": (lambda: spectral_density(np.triu(ONES), "normalized", "rw"),
                       ValueError, "symmetric"),
    "metrics-kind": (lambda: affinity_metrics(ONES, "l2"), ValueError, "normalization"),
    "metrics-nan": (lambda: affinity_metrics(NAN33), ValueError, "A contains NaN"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_a_clear_error(name):
    call, exc_type, text = CASES[name]
    with pytest.raises(exc_type) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    assert text in str(info.value), f"{name}: {info.value}"


# -- generated inputs (hypothesis) -----------------------------------------------------------

BAD_INTS = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.text(max_size=3),
                     st.booleans(), st.none())


def _int_arg_error(value, call, name):
    with pytest.raises((TypeError, ValueError)) as info:
        call(value)
    assert name in str(info.value)


@settings(max_examples=25, deadline=None)
@given(BAD_INTS)
def test_chunk_size_generated(value):
    _int_arg_error(value, lambda v: SoftmaxAffinity(np.ones((3, 2)), np.ones((3, 2)),
                                                    chunk_size=v), "chunk_size")


@settings(max_examples=25, deadline=None)
@given(BAD_INTS)
def test_n_iter_generated(value):
    _int_arg_error(value, lambda v: lambda_max(ONES, method="power", n_iter=v), "n_iter")


@settings(max_examples=25, deadline=None)
@given(BAD_INTS)
def test_spectrum_k_generated(value):
    _int_arg_error(value, lambda v: spectrum(ONES, k=v, progress=False), "k must")


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf),
                 st.text(max_size=3), st.lists(st.floats(), min_size=1, max_size=2)))
def test_lambda_max_argument_generated(value):
    with pytest.raises((TypeError, ValueError)) as info:
        chebyshev.chebyshev_filter(ONES, Z3, [1.0, 1.0], value)
    assert "lambda_max" in str(info.value)


@settings(max_examples=25, deadline=None)
@given(st.tuples(st.integers(1, 4), st.integers(1, 4)), st.integers(0, 11),
       st.sampled_from([np.nan, np.inf, -np.inf]))
def test_one_bad_entry_anywhere_is_found(shape, pos, bad):
    n, c = shape
    Z = np.ones((n, c))
    Z.flat[pos % Z.size] = bad
    with pytest.raises(ValueError, match="Z contains NaN"):
        chebyshev.chebyshev_filter(np.eye(n), Z, [1.0, 1.0])


@settings(max_examples=20, deadline=None)
@given(st.integers(-3, -1) | st.integers(33, 400))
def test_taylor_order_generated(order):
    with pytest.raises(ValueError, match="order"):
        kernels.taylor_rbf(np.ones(3), np.ones(3), order=order)


# -- half precision: the documented policy, the same on every path ---------------------------


def test_half_precision_lambda_max_and_softmax_in_float32():
    A = torch.rand(6, 6, generator=torch.Generator().manual_seed(0))
    A = ((A + A.T) / 2).half()
    ref = float(lambda_max(A.double(), "sym"))
    for method in ("exact", "lanczos", "power", "bound"):
        out = lambda_max(A, "sym", method)
        assert out.dtype == torch.float32, method
        assert torch.isfinite(out).all()
        assert abs(float(out) - ref) < 2e-2 or method == "bound"
    big = torch.full((4, 3), 200.0).half()      # fp16 logits would be 120000: inf
    S = SoftmaxAffinity(big, big)
    assert torch.isfinite(S.dense()).all()
    assert torch.isfinite(S.matmul(torch.ones(4, 2).half())).all()


def test_fp16_input_to_fp32_block_is_refused():
    from graphfilters.blocks import make_block

    block = make_block("snl", 4, dim=2)
    with pytest.raises(TypeError, match="input x is torch.float16"):
        block(torch.randn(1, 4, 3, 3).half())
    with pytest.raises(ValueError, match="input x contains NaN"):
        block(torch.full((1, 4, 3, 3), float("nan")))


def test_nan_in_cc_block_input_is_refused():
    from graphfilters.blocks import make_block

    block = make_block("cc", 4, dim=2)
    with pytest.raises(ValueError, match="NaN"):
        block(torch.full((1, 4, 3, 3), float("nan")))


def test_power_lambda_max_warns_when_not_converged_and_margin_scales():
    A = np.random.default_rng(0).random((40, 40))
    A = (A + A.T) / 2
    with pytest.warns(ConvergenceWarning, match="n_iter"):
        lambda_max(A, "combinatorial", "power", n_iter=2)
    exact = float(lambda_max(A, "combinatorial"))
    est = float(lambda_max(A, "combinatorial", "power", tol=1e-10, n_iter=5000))
    assert abs(est - exact) <= 1e-8 * exact
    assert float(lambda_max(A, "combinatorial", margin=0.01)) == pytest.approx(1.01 * exact)


def test_huge_dense_requests_are_refused_before_any_scan():
    huge = np.broadcast_to(np.zeros(1), (HUGE, HUGE))       # 320 GB if it were real
    for kind in ("combinatorial", "sym", "rw"):
        with pytest.raises(ValueError, match="too large"):
            lambda_max(huge, kind, "exact")
    big_nan = np.broadcast_to(np.array(np.nan), (6000, 6000))
    with pytest.raises(ValueError, match="A contains NaN"):
        degrees(big_nan)                                     # scanned in row blocks


@pytest.mark.parametrize("name", ["cayley", "arma"])
def test_half_precision_rational_blocks_refused_clearly(name):
    """torch has no half LU / complex-half division: a clear precision error, not a crash
    deep inside torch."""
    from graphfilters.blocks import make_block
    block = make_block(name, 8).half().eval()
    with pytest.raises(TypeError, match=f"the {name} filter solves shifted linear systems"):
        block(torch.randn(1, 8, 4, 4).half())


def test_half_precision_dot_product_overflow_is_refused_not_inf():
    """An fp16 dot-product kernel whose entries overflow float16 raises, naming the factors;
    one that fits is computed in float32 and returned in float16, equal to the float32 one."""
    import torch

    from graphfilters import kernels as K

    big = (torch.ones(1, 4, 8) * 200).half()
    aff = K.dot_product(big, big)
    for fn in (aff.dense, aff.degrees, lambda: aff.matmul(torch.ones(1, 4, 2).half())):
        with pytest.raises(ValueError, match="float16.*theta, phi.*float32"):
            fn()
    small = torch.randn(1, 5, 3).half()
    got = K.dot_product(small, small).dense()
    ref = small.float() @ small.float().transpose(-1, -2)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), ref, rtol=1e-3, atol=1e-3)
