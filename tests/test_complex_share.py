"""One complex-share rule for Â and for L = I − Â: the same eigenvalues counted, the same share.

The issue that prompted it: the two spectra panels of one block said "78% complex" for Â and
"19% complex" for L = I − Â, the same eigenvalues counted with a rule that was not
shift-invariant.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.plots import plot_spectrum
from analysis.spectra import complex_share, spectrum
from tests.attention_models import residual_mha_capture


def _softmax_matrix(n: int, rank: int, seed: int) -> np.ndarray:
    """A row-stochastic, low-rank-ish softmax affinity (a large numerical null space)."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, n)) * 3
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 40), rank=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_operator_and_its_laplacian_give_the_same_share(n, rank, seed):
    mu = np.linalg.eigvals(_softmax_matrix(n, rank, seed))
    lam = np.linalg.eigvals(np.eye(n) - _softmax_matrix(n, rank, seed))  # its own eigen-solve
    a, b = complex_share(mu), complex_share(lam, center=1.0)
    assert (a.n_counted, a.n_complex, a.n_null) == (b.n_counted, b.n_complex, b.n_null)


def test_the_two_spectrum_panels_say_the_same_share():
    cap = residual_mha_capture(4, 24, seed=1)
    titles = []
    for op in ("normalized", "laplacian"):
        _, ax = plot_spectrum(spectrum(cap, op, progress=False))
        titles.append(ax.get_legend().get_title().get_text().split(" complex")[0])
    _, ax = plot_spectrum(1 - spectrum(cap, "normalized", progress=False).all(),
                          operator="laplacian")
    titles.append(ax.get_legend().get_title().get_text().split(" complex")[0])
    assert len(set(titles)) == 1 and titles[0] != "0%", titles
