r"""Frequency responses of the attention filter blocks (GFSA, AttnScale, efficient attention)
from their learned scalars.

These blocks filter each head's softmax affinity :math:`A_h` by a scalar polynomial whose
coefficients are learned per head, so the response of head :math:`h` is one scalar curve
:math:`h_h(\lambda)` of the Laplacian eigenvalue :math:`\lambda = 1 - \mu` (:math:`\mu` an
eigenvalue of :math:`A_h`). The curve is the symbolic response of the block's row
(:func:`graphfilters.symbolic.responses.response`, derived from the table) with the block's
``coefficients()`` substituted, so it is written once:

- GFSA: :math:`h_h(\lambda) = w_0 + (w_1 + (2 - K) w_K)\mu + (K - 1) w_K \mu^2`;
- AttnScale: :math:`h_h(\lambda) = (1 + \lambda_h)\mu` on every eigenvalue but the DC one
  (whose gain is 1: the DC projector term moves only that eigenvalue);
- efficient attention: :math:`h(\lambda) = \mu` (no learned scalar: the shape is forced).

Differential attention filters two graphs with no common eigenbasis and has no scalar
response (:func:`attention_response` refuses it, naming the reason).

The grid is :math:`[0, 2]`: a row-stochastic :math:`A` has :math:`|\mu| \le 1`, so every
:math:`\lambda = 1 - \mu` has real part in :math:`[0, 2]`. The value projection and output
convolution mix channels after the scalar filter and are not part of :math:`h_h`.
"""

from __future__ import annotations

from functools import cache
from numbers import Integral
from typing import Any

import numpy as np
import sympy as sp
from torch import nn

from graphfilters import _validate as V
from graphfilters.symbolic import symbols as S

from .response import BlockResponse, classify_response

__all__ = ["attention_response", "is_attention_filter"]


def is_attention_filter(module: Any) -> bool:
    """Whether ``module`` is one of the toolkit's attention filter blocks (a row of the
    attention table: ``table_name`` and ``coefficients()``)."""
    return (isinstance(module, nn.Module) and bool(getattr(module, "table_name", ""))
            and callable(getattr(module, "coefficients", None)))


@cache
def _curve(name: str) -> tuple[Any, tuple[str, ...]]:
    """The lambdified response of row ``name`` and the names of its scalar arguments."""
    from graphfilters.symbolic.responses import response

    h = response(name)
    params = tuple(sorted((s for s in h.free_symbols if s != S.lam), key=str))
    return sp.lambdify((S.lam, *params), h, "numpy"), tuple(str(p) for p in params)


def _scalars(module: nn.Module, names: tuple[str, ...]) -> list[np.ndarray]:
    coef = {k: np.asarray(v.detach().cpu().double().reshape(-1))
            for k, v in module.coefficients().items()}
    H = int(module.heads)
    out = []
    for n in names:
        if n in coef:
            out.append(coef[n])
        elif hasattr(module, n):
            out.append(np.full(H, float(getattr(module, n))))
        else:           # pragma: no cover - the table and the blocks name the same scalars
            raise ValueError(f"{type(module).__name__} has no scalar {n!r} of its response")
    return out


def _example_block() -> nn.Module:
    from graphfilters.blocks import make_block

    return make_block("gfsa", 4, heads=1, dim=1)


@V.validate_params(
    {"n_grid": [V.Interval(Integral, 3, None, closed="left")],
     "ratio": V.declared(classify_response, "ratio")},
    valid=lambda: {"module": _example_block(), "n_grid": 5},
)
def attention_response(
    module: nn.Module,
    *,
    eigenvalues: Any = None,
    n_grid: int = 201,
    ratio: float = 1.5,
) -> BlockResponse:
    r"""Per-head frequency responses :math:`h_h(\lambda)` of an attention filter block.

    Parameters
    ----------
    module : GFSA, AttnScale or EfficientAttention
        The block (its learned scalars are read as they are now).
    eigenvalues : sequence of arrays, optional
        Captured Laplacian eigenvalues :math:`\lambda = 1 - \mu` per sample, to evaluate
        the head average of :math:`|h_h|` at (complex values allowed).
    n_grid : int
        Grid points over :math:`[0, 2]`.
    ratio : float
        Band threshold of :func:`~analysis.response.classify_response`.

    Returns
    -------
    BlockResponse
        ``form == "heads"``: ``gains[:, 0]`` is the head average of :math:`|h_h(\lambda)|`
        (whose class is ``label``), ``gains[:, 1 + h]`` is :math:`|h_h(\lambda)|`,
        ``head_labels`` the class of each head, ``notes["signed"]`` the signed curves'
        range. ``forced`` is set for efficient attention (no learned scalar).

    Raises
    ------
    ValueError
        ``module`` is not an attention filter block, or it is differential attention (two
        graphs, no scalar response).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.blocks import make_block
    >>> gfsa = make_block("gfsa", 8, heads=2, dim=1)
    >>> with torch.no_grad():
    ...     _ = gfsa.w_K.copy_(torch.tensor([0.0, 1.0]))
    >>> r = attention_response(gfsa, n_grid=5)
    >>> r.form, r.head_labels
    ('heads', ['band-stop', 'band-stop'])
    >>> r.gains[:, 1].round(3).tolist()       # w_K = 0 is plain attention: |1 - lambda|
    [1.0, 0.5, 0.0, 0.5, 1.0]
    >>> r.gains[:, 2].round(3).tolist()       # w_K = 1: |3 mu^2 - mu|, mu = 1 - lambda
    [2.0, 0.25, 0.0, 1.25, 4.0]
    """
    if not is_attention_filter(module):
        raise ValueError(f"module must be an attention filter block (gfsa, attnscale, "
                         f"efficient), got {type(module).__name__}")
    name = module.table_name
    try:
        fn, names = _curve(name)
    except ValueError as exc:
        raise ValueError(f"module: {exc}") from None
    n_grid = int(n_grid)
    lam = np.linspace(0.0, 2.0, n_grid)
    scalars = _scalars(module, names)
    H = int(module.heads)
    signed = np.stack([np.broadcast_to(np.asarray(fn(lam, *(s[h] for s in scalars)),
                                                  dtype=float), lam.shape)
                       for h in range(H)], 1)                          # (G, H)
    heads = np.abs(signed)
    mean = heads.mean(1)
    label, stats = classify_response(lam, mean, 2.0, ratio)
    head_labels = [classify_response(lam, g, 2.0, ratio)[0] for g in heads.T]
    eigs = [np.asarray(e) for e in eigenvalues] if eigenvalues is not None else []
    at = [np.mean([np.abs(np.asarray(fn(e, *(s[h] for s in scalars)), dtype=complex)
                          * np.ones_like(e)) for h in range(H)], 0) for e in eigs]
    notes = {"response": (f"{module.spec.name}: scalar response per head from the table "
                          f"row {name!r} with the learned {', '.join(names) or 'nothing'}; "
                          "class of the head average of |h_h|"),
             "signed": f"h_h(lambda) in [{signed.min():.4g}, {signed.max():.4g}]"}
    if name == "attnscale":
        notes["dc"] = "non-DC eigenvalues; the DC eigenvalue (lambda = 0) has gain 1"
    forced = "" if names else (f"{module.spec.name} learns no scalar: h(lambda) = 1 - lambda "
                               "is fixed by the construction")
    if forced:
        notes["forced"] = forced
    return BlockResponse(lam, np.column_stack([mean, heads]), label, stats, 2.0, eigs, at,
                         None, "monomial", notes=notes, form="heads",
                         head_labels=head_labels, filter_label=label, forced=forced)
