r"""Figures computed from a capture: the solves they need, then :mod:`analysis.plots` to draw.

:mod:`analysis.plots` only draws results it is given (a :class:`~analysis.eigen.Spectrum`,
a :class:`~analysis.response.BlockResponse`, ...); a figure that runs the solves itself lives
here, above both, so that the results' ``.plot()`` methods and the drawing functions do not
import each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .plots import FigureAxes, plot_response, plot_spectrum
from .response import block_response
from .spectra import spectrum

__all__ = ["plot_capture_spectra"]


def plot_capture_spectra(
    capture: Any,
    *,
    index: int | None = None,
    title: str | None = None,
) -> tuple[Figure, np.ndarray]:
    r"""Three panels of one captured block: the eigenvalues of :math:`\hat A`, those of its
    Laplacian :math:`L = I - \hat A` and the frequency response :math:`\sigma_i(H(\lambda))`.

    The Laplacian's eigenvalues are :math:`1 - \mu` of the same eigen-solve (no second one)
    for a ``sym``/``rw`` normalization; both panels count complex eigenvalues with one rule
    (:func:`analysis.complex_share.complex_share`), so they report the same share.

    Parameters
    ----------
    capture : Capture
    index : int, optional
        Not used yet (all samples are pooled); reserved.
    title : str, optional
        Figure title (default: the capture's path and block).

    Returns
    -------
    fig, axes
        ``axes`` of shape ``(3,)``.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.graph import SoftmaxAffinity
    >>> from analysis.capture import Capture
    >>> q = torch.randn(1, 12, 2, dtype=torch.float64)
    >>> cap = Capture("b", "block", "toy", SoftmaxAffinity(q, q), "rw", n_samples=1,
    ...               z=torch.randn(1, 12, 3, dtype=torch.float64),
    ...               weights=[torch.zeros(3, 3), torch.eye(3)])
    >>> fig, axes = plot_capture_spectra(cap)
    >>> axes.shape
    (3,)
    """
    fig = Figure(figsize=(11, 3.7), layout="constrained")
    axes = np.asarray(fig.subplots(1, 3))
    spec_n = spectrum(capture, "normalized", progress=False)
    if capture.normalization in ("sym", "rw") and spec_n.complete:
        lap: Any = 1 - spec_n.all()
    else:
        lap = spectrum(capture, "laplacian", progress=False)
    plot_spectrum(spec_n, ax=axes[0], title=r"eigenvalues of $\hat A$", operator="normalized",
                  log=True)
    plot_spectrum(lap, ax=axes[1], title=r"eigenvalues of $L = I - \hat A$",
                  operator="laplacian", log=True)
    plot_response(block_response(capture, spectrum_result=spec_n, energies=False), ax=axes[2],
                  title=r"frequency response $\sigma_i(H(\lambda))$")
    block = capture.spec.name if getattr(capture, "spec", None) is not None else \
        getattr(capture, "module_type", "")
    fig.suptitle(title if title is not None else f"{capture.path} ({block})")
    return FigureAxes(fig, axes)
