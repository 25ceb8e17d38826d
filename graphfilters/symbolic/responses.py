r"""Frequency responses of the blocks on the Laplacian spectrum.

For an eigenvalue :math:`\lambda` of the block's Laplacian, the operator :math:`X` of the
closed form (``A`` or ``Ahat``) has the eigenvalue :math:`\mu(\lambda)` read from the
derivation's :math:`L = \alpha I + \beta X`, :math:`\mu = (\lambda - \alpha)/\beta`
(:math:`\mu = 1 - \lambda` for the normalized blocks). For one channel pair
:math:`(i, j)`, with the scalar weights :math:`w_k = (W_k)_{ij}`,

.. math:: h(\lambda) = \sum_k B_k(\mu(\lambda))\, w_k ,

which is the :math:`(i, j)` entry of :math:`H(\lambda) = \sum_k T_k(2\lambda/\lambda_{max} - 1)
W^L_k` (docs/theory.md). Blocks with a single weight :math:`W` (and CC's :math:`\gamma`) are
given for unit weight by default: their response is that shape times the learned scale.

Examples
--------
>>> response("nl")
1 - lambda
>>> response("ns")
-lambda
>>> response("snl")
w_0 + w_1*(1 - lambda)
>>> f = response_function("gsnl", w_0=0.0, w_1=0.0, w_2=1.0)
>>> f([0.0, 1.0, 2.0])
array([ 1., -1.,  1.])
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import sympy as sp

from graphfilters import _validate as V

from . import symbols as S
from .algebra import terms
from .derivation import Derivation, derive
from .generic import weight_terms
from .rational import RationalDerivation

__all__ = ["response", "response_function", "operator_eigenvalue", "scalar_weight"]


def scalar_weight(weight: sp.Basic) -> sp.Symbol:
    """The scalar :math:`w_k` standing for one entry of ``W_k`` (``w`` for ``W``).

    Examples
    --------
    >>> from graphfilters.symbolic.symbols import W2
    >>> scalar_weight(W2)
    w_2
    """
    index = S.weight_index(weight)
    return sp.Symbol("w" if index is None else f"w_{index}", real=True)


@lru_cache(maxsize=64)
def _derivation(name: str, mode: str | None) -> Derivation:
    return derive(name, mode=mode)


def operator_eigenvalue(derivation: Derivation) -> sp.Expr:
    r"""The eigenvalue :math:`\mu(\lambda)` of the closed form's operator.

    Examples
    --------
    >>> operator_eigenvalue(derive("dnl"))
    2 - 2*lambda
    """
    poly = terms(derivation.laplacian_in_operator)
    alpha = poly.pop((), sp.Integer(0))
    word = ((derivation.operator, sp.Integer(1)),)
    if set(poly) != {word}:
        raise ValueError(
            f"the Laplacian of {derivation.name!r} is not linear in {derivation.operator}: "
            f"{derivation.laplacian_in_operator}"
        )
    return sp.expand((S.lam - alpha) / poly[word])


@V.validate_params(
    {"name": V.declared(derive, "name"), "mode": V.declared(derive, "mode"),
     "unit_weight": ["boolean"]},
    valid=lambda: {"name": "nl"},
)
def response(name: str, mode: str | None = None, *, unit_weight: bool = True) -> sp.Expr:
    r"""The scalar frequency response :math:`h(\lambda)` of block ``name``.

    Parameters
    ----------
    name : str
        A table name.
    mode : str, optional
        For ``nl``: its variant.
    unit_weight : bool
        Set the single weight ``w`` and CC's ``gamma`` to 1 (the response shape).

    Returns
    -------
    sympy expression in ``lambda`` (:data:`graphfilters.symbolic.symbols.lam`), weights
    ``w_k`` and, for CGNL, ``lambda_max``. For ``attnscale`` (a DC projector term
    :math:`P Z W_P`), the response on every eigenvalue but the DC one: the constant vector
    spans an invariant subspace of both :math:`A` and :math:`P` (:math:`A\mathbf 1 =
    P\mathbf 1 = \mathbf 1`), and on the quotient :math:`P` vanishes, so the operator's
    eigenvalues are the DC gain and :math:`h` at the other eigenvalues of :math:`A`.

    Raises
    ------
    ValueError
        For ``diffattn``: two graphs have no common spectrum.

    Examples
    --------
    >>> response("gsnl")
    w_0 + w_1*(1 - lambda) + w_2*(2*(1 - lambda)**2 - 1)
    >>> response("cgnl")
    -lambda + lambda_max/2
    """
    d = _derivation(name, mode)
    if isinstance(d, RationalDerivation):      # derived on the spectrum already
        return d.derived
    names = {a.name for a in d.derived.atoms(sp.MatrixSymbol)}
    if names & {"A_1", "A_2"}:
        raise ValueError(
            f"response: {name!r} filters two graphs (A_1, A_2) with no common eigenbasis, so it "
            "has no scalar frequency response; its gain on the constant vector is "
            "identify(derive(name).derived).dc_gain()")
    mu = operator_eigenvalue(d)
    split = weight_terms(d.derived)
    if split is None:  # pragma: no cover - every derived filter has this form
        raise ValueError(f"the derived filter of {name!r} is not sum_j P_j Z W_j")
    h = sp.Integer(0)
    for weight, poly in split.items():
        value = sp.Integer(0)
        for word, coeff in poly.items():
            if any(b.name == "P" for b, _ in word):
                if len(word) != 1:      # pragma: no cover - no row has P next to A
                    raise ValueError(f"response: {name!r} has a projector term other than P Z W")
                continue                # P Z W only moves the DC eigenvalue (see above)
            power = sum(int(e) for _, e in word)
            value += coeff * mu**power
        h += value * scalar_weight(weight)
    if unit_weight:
        h = h.subs({sp.Symbol("w", real=True): 1, S.gamma: 1})
    return h


@V.validate_params({"name": V.declared(derive, "name"), "mode": V.declared(derive, "mode")},
                   valid=lambda: {"name": "nl"})
def response_function(name: str, mode: str | None = None, **params: float
                      ) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy function :math:`\\lambda \\mapsto h(\\lambda)` (via ``sympy.lambdify``).

    Parameters
    ----------
    name, mode
        As in :func:`response`.
    **params : float
        Values of the weights (``w_0=...`` or ``w0=...``), and ``lambda_max`` for CGNL.
        Passing ``w`` or ``gamma`` keeps those scales instead of setting them to 1.

    Raises
    ------
    ValueError
        A missing or unknown parameter (the message lists the expected ones).

    Examples
    --------
    >>> f = response_function("snl", w_0=1.0, w_1=0.5)
    >>> f(np.array([0.0, 2.0]))
    array([1.5, 0.5])
    >>> response_function("nl")(1.0)
    array(0.)
    """
    unit = not ({"w", "gamma"} & set(params))
    h = response(name, mode, unit_weight=unit)
    names = {}
    for key, value in params.items():
        canonical = f"w_{key[1:]}" if key[:1] == "w" and key[1:].isdigit() else key
        names[canonical] = value
    needed = sorted(s.name for s in h.free_symbols if s != S.lam)
    missing = [n for n in needed if n not in names]
    unknown = [n for n in names if n not in needed]
    if missing or unknown:
        msg = f"the response of {name!r} is {h}; "
        if missing:
            msg += f"missing value(s) for {missing}; "
        if unknown:
            msg += f"unknown parameter(s) {unknown}; "
        call = ", ".join(f"{n}=..." for n in needed)
        raise ValueError(msg + f"call response_function({name!r}{', ' if call else ''}{call})")
    subs = {s: names[s.name] for s in h.free_symbols if s != S.lam}
    fn = sp.lambdify(S.lam, h.subs(subs), "numpy")

    def evaluate(lam: np.ndarray) -> np.ndarray:
        lam = np.asarray(lam, dtype=float)
        return np.broadcast_to(np.asarray(fn(lam), dtype=float), lam.shape).copy()

    evaluate.__doc__ = f"h(lambda) = {h} for block {name!r}"
    return evaluate
