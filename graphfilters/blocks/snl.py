"""SNL and gSNL (Zhu et al., ICCV 2021) as configurations of the unified block, and the import
of checkpoints of the official SNL code."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .. import _validate as V
from ._convert import BN_KEYS, WeightMap, bn_map, copy_weights, match_module
from .reference import GSNLRef, OfficialSNL
from .unified import GraphFilterNonlocal

__all__ = ["SNL", "gSNL"]


class SNL(GraphFilterNonlocal):
    r"""Spectral nonlocal block (Zhu, She, Li, Lu, Kang, Hu, Wang, ICCV 2021).

    .. math::

        Y = X + \rho\big(\mathrm{BN}(Z W_0 + \sigma\, \hat A Z W_1)\big), \qquad
        \hat A = D^{-1/2}\operatorname{sym}(M) D^{-1/2}, \quad
        M = \operatorname{ReLU}(\Theta)\operatorname{ReLU}(\Phi)^T,

    the full order-1 Chebyshev filter on the symmetric normalized affinity (zero degrees give
    zero rows). :math:`M` has rank :math:`\le C_s`: degrees and products cost
    :math:`O(N C_s C)` and no ``N x N`` tensor is formed in forward or backward.
    ``relu_after_norm=True`` (:math:`\rho` = ReLU) is the official classification code;
    ``sign=-1`` (:math:`\sigma = -1`) its segmentation head. No biases, as in the official
    code.

    Parameters
    ----------
    in_channels : int
    inter_channels : int, optional
        ``C_s``, default ``C // 2``.
    dim : {1, 2, 3}
    relu_after_norm : bool
    sign : {+1, -1}
    **options
        Other :class:`GraphFilterNonlocal` arguments (e.g. ``order=3`` for a longer filter).

    Shapes
    ------
    - **input:** ``(B, C, *spatial)``; **output:** the same.

    Examples
    --------
    >>> import torch
    >>> block = SNL(16)
    >>> block
    SNL(
      block=snl, in_channels=16, inter_channels=8, kernel=relu_dot, ...
    )
    >>> block(torch.randn(2, 16, 32, 32)).shape        # N = 1024, no 1024 x 1024 tensor
    torch.Size([2, 16, 32, 32])
    """

    @V.validate_params(
        {n: V.declared(GraphFilterNonlocal.__init__, n)
         for n in ("in_channels", "inter_channels", "dim", "relu_after_norm", "sign")},
        valid=lambda: {"in_channels": 4, "dim": 1},
    )
    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        dim: int = 2,
        relu_after_norm: bool = False,
        sign: int = 1,
        **options: Any,
    ) -> None:
        if "spec" in options:
            raise TypeError("SNL fixes its spec; use GraphFilterNonlocal(spec=...) instead")
        options.setdefault("bias", False)
        super().__init__(in_channels, inter_channels, dim=dim, relu_after_norm=relu_after_norm,
                         sign=sign, spec="snl", **options)

    @staticmethod
    def reference_map(ref: OfficialSNL | None = None, prefix: str = "") -> WeightMap:
        """``(unified, official, scale)`` entries (official key names, see
        :class:`~graphfilters.blocks.reference.OfficialSNL`)."""
        return [
            ("theta.weight", f"{prefix}t.weight", 1.0),
            ("phi.weight", f"{prefix}p.weight", 1.0),
            *unit_weight_map("", f"{prefix}stages.0."),
        ]

    @classmethod
    def from_reference(cls, ref: OfficialSNL) -> SNL:
        """The unified block computing exactly what the official-form ``ref`` computes."""
        block = cls(ref.in_channels, ref.inter_channels, dim=ref.dim, relu_after_norm=ref.relu,
                    sign=ref.sign)
        copy_weights(match_module(block, ref), ref.state_dict(), cls.reference_map(ref))
        return block.train(ref.training)

    @classmethod
    def from_official_state_dict(
        cls,
        state_dict: Mapping[str, Tensor],
        prefix: str = "",
        relu_after_norm: bool = True,
        sign: int = 1,
    ) -> SNL:
        """Load the one-unit SNL stage of a checkpoint of the official SNL code.

        The official ``Stage`` (``model/nls/basic.py``) computes
        ``att = ReLU(t(x))ᵀReLU(p(x))``, symmetrizes it, normalizes it by :math:`D^{-1/2}` on
        both sides, and its unit returns ``x + ReLU(BN(w_1(g(x)) + w_2(att·g(x))))``. Expected
        keys (after ``prefix``, e.g. ``"layer1.2."`` in a CIFAR PreResNet checkpoint):
        ``t.weight``, ``p.weight``, ``stages.0.g.weight`` ``(C_s, C, 1, 1)``,
        ``stages.0.w_1.weight``, ``stages.0.w_2.weight`` ``(C, C_s, 1, 1)``,
        ``stages.0.bn.{weight, bias, running_mean, running_var}`` and optionally
        ``stages.0.bn.num_batches_tracked``. ``C``, ``C_s`` and ``dim`` are read from the
        shapes. Keys outside ``prefix`` are ignored. A stage of several units:
        :meth:`NonlocalStage.from_official_snl_state_dict`; a whole model:
        :func:`graphfilters.official.load_official`.

        Parameters
        ----------
        state_dict : mapping of str to Tensor
            E.g. ``torch.load(path, weights_only=True)["state_dict"]`` (strip DataParallel's
            ``module.`` by including it in ``prefix``).
        prefix : str
            Path of the stage, e.g. ``"layer1.2."`` or ``"module.layer1.2."``.
        relu_after_norm : bool
            ``True`` (default): the official classification code's ReLU after BN.
        sign : {+1, -1}
            ``-1`` for the official segmentation head.

        Raises
        ------
        ValueError
            Listing the missing, unexpected and misshaped keys.

        Examples
        --------
        >>> import torch
        >>> from graphfilters.blocks.reference import OfficialSNL
        >>> official = OfficialSNL(8).eval()
        >>> sorted(official.state_dict())[:3]
        ['p.weight', 'stages.0.bn.bias', 'stages.0.bn.num_batches_tracked']
        >>> block = SNL.from_official_state_dict(official.state_dict()).eval()
        >>> x = torch.randn(1, 8, 6, 6)
        >>> torch.allclose(block(x), official(x), atol=1e-6)
        True
        """
        sub = _sub_state(state_dict, prefix)
        c, cs, dim = _infer_sizes(sub, prefix, ("stages.0.g.weight", "t.weight"),
                                  "the official SNL stage")
        more = sorted({m.group(1) for k in sub if (m := _LAYER.match(k)) and m.group(1) != "0"})
        if more:
            raise ValueError(
                f"the official SNL stage at prefix {prefix!r} has {len(more) + 1} units "
                f"(keys {prefix}stages.{{0, {', '.join(more)}}}.*): SNL loads one unit; use "
                "NonlocalStage.from_official_snl_state_dict or "
                "graphfilters.official.load_official"
            )
        expected = {"t.weight": _conv_shape(cs, c, dim), "p.weight": _conv_shape(cs, c, dim)}
        expected.update(_unit_shapes(c, cs, dim, "stages.0."))
        _validate(sub, expected, prefix, "the official SNL stage (one unit)")
        block = cls(c, cs, dim=dim, relu_after_norm=relu_after_norm, sign=sign)
        match_module(block, sub["stages.0.g.weight"])
        mapping = [e for e in cls.reference_map() if e[1] in sub]
        copy_weights(block, sub, mapping)
        return block


class gSNL(GraphFilterNonlocal):  # noqa: N801 - the block's published name
    r"""Generalized spectral nonlocal block: the order-2 filter on SNL's affinity.

    .. math::

        Y = X + \mathrm{BN}\big(Z W_0 + \hat A Z W_1 + B_2(\hat A) Z W_2\big),

    with :math:`B_2 = T_2(\hat A) = 2\hat A^2 - I` (``stable=False``, the exact Chebyshev
    filter) or :math:`B_2 = 2\hat A - I` (``stable=True``: the 2019 code's "stable
    hypothesis" :math:`\hat A^2 \approx \hat A`; table name ``gsnl_stable``).

    Parameters
    ----------
    in_channels : int
    inter_channels : int, optional
    stable : bool
    dim : {1, 2, 3}

    Shapes
    ------
    - **input:** ``(B, C, *spatial)``; **output:** the same.

    Examples
    --------
    >>> gSNL(8, stable=True).spec.name
    'gsnl_stable'
    """

    @V.validate_params(
        {**{n: V.declared(GraphFilterNonlocal.__init__, n)
            for n in ("in_channels", "inter_channels", "dim")}, "stable": ["boolean"]},
        valid=lambda: {"in_channels": 4, "dim": 1},
    )
    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        stable: bool = False,
        dim: int = 2,
        **options: Any,
    ) -> None:
        if "spec" in options:
            raise TypeError("gSNL fixes its spec; use GraphFilterNonlocal(spec=...) instead")
        options.setdefault("bias", False)
        super().__init__(in_channels, inter_channels, dim=dim,
                         spec="gsnl_stable" if stable else "gsnl", **options)
        self.stable = bool(stable)

    @staticmethod
    def reference_map(ref: GSNLRef | None = None) -> WeightMap:
        """``(unified, reference, scale)`` entries relating this block to ``ref``."""
        return [
            ("theta.weight", "t.weight", 1.0), ("phi.weight", "p.weight", 1.0),
            ("g.weight", "g.weight", 1.0), ("w.0", "w1.weight", 1.0),
            ("w.1", "w2.weight", 1.0), ("w.2", "w3.weight", 1.0),
            *bn_map("norm", "bn"),
        ]

    @classmethod
    def from_reference(cls, ref: GSNLRef) -> gSNL:
        """The unified block computing exactly what ``ref`` computes (weights copied)."""
        block = cls(ref.in_channels, ref.inter_channels, stable=ref.stable, dim=ref.dim,
                    relu_after_norm=ref.relu)
        copy_weights(match_module(block, ref), ref.state_dict(), cls.reference_map(ref))
        return block.train(ref.training)


# ---------------------------------------------------------------------------------------------
# official checkpoints


def unit_weight_map(unified: str, source: str) -> WeightMap:
    return [
        (f"{unified}g.weight", f"{source}g.weight", 1.0),
        (f"{unified}w.0", f"{source}w_1.weight", 1.0),
        (f"{unified}w.1", f"{source}w_2.weight", 1.0),
        *bn_map(f"{unified}norm", f"{source}bn"),
    ]


def _conv_shape(c_out: int, c_in: int, dim: int) -> tuple[int, ...]:
    return (c_out, c_in) + (1,) * dim


def _unit_shapes(c: int, cs: int, dim: int, prefix: str) -> dict[str, tuple[int, ...]]:
    shapes = {
        f"{prefix}g.weight": _conv_shape(cs, c, dim),
        f"{prefix}w_1.weight": _conv_shape(c, cs, dim),
        f"{prefix}w_2.weight": _conv_shape(c, cs, dim),
    }
    for k in BN_KEYS:
        shapes[f"{prefix}bn.{k}"] = () if k == "num_batches_tracked" else (c,)
    return shapes


def _sub_state(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            "state_dict must be a mapping of names to tensors (e.g. "
            "torch.load(path, weights_only=True) or module.state_dict()), got "
            f"{type(state_dict).__name__}"
        )
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    bad = [prefix + k for k, v in sub.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"state_dict values must be tensors; not tensors: {bad}")
    return sub


def _infer_sizes(
    sub: Mapping[str, Tensor], prefix: str, keys: tuple[str, ...], what: str
) -> tuple[int, int, int]:
    for key in keys:
        if key in sub:
            w = sub[key]
            if w.ndim in (3, 4, 5) and all(s == 1 for s in w.shape[2:]):
                cs, c = int(w.shape[0]), int(w.shape[1])
                return c, cs, w.ndim - 2
            raise ValueError(
                f"cannot read the sizes of {what}: {prefix + key!r} has shape "
                f"{tuple(w.shape)}, expected a 1x1 convolution weight (C_s, C, 1, 1)"
            )
    raise ValueError(
        f"cannot load {what}: none of the keys {[prefix + k for k in keys]} is in the state "
        f"dict (keys under prefix {prefix!r}: {sorted(sub)[:12]}{' ...' if len(sub) > 12 else ''})"
        "; pass prefix= if the block sits inside a model checkpoint"
    )


def _validate(
    sub: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], prefix: str, what: str
) -> None:
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [prefix + k for k in expected if k not in sub and k not in optional]
    unexpected = [prefix + k for k in sub if k not in expected]
    misshaped = [
        f"{prefix + k}: got {tuple(sub[k].shape)}, expected {shape}"
        for k, shape in expected.items()
        if k in sub and tuple(sub[k].shape) != tuple(shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if misshaped:
            parts.append("misshaped keys [" + "; ".join(misshaped) + "]")
        raise ValueError(
            f"cannot load {what} from this state dict: " + ", ".join(parts) + ". Expected the "
            f"official key names {sorted(prefix + k for k in expected)} with the shapes above "
            "(sizes read from the g/t convolution); use prefix= to select one stage of a model "
            "checkpoint (e.g. 'layer1.2.'), or graphfilters.official.load_official for a whole "
            "model."
        )


_LAYER = re.compile(r"^stages\.(\d+)\.")


def load_official_stage(
    stage_cls: type, state_dict: Mapping[str, Tensor], prefix: str, relu_after_norm: bool
):
    """Build a ``NonlocalStage`` of SNL units from an official multi-unit stage checkpoint."""
    sub = _sub_state(state_dict, prefix)
    c, cs, dim = _infer_sizes(sub, prefix, ("t.weight", "stages.0.g.weight"),
                              "the official SNL stage")
    units = sorted({int(m.group(1)) for k in sub if (m := _LAYER.match(k))})
    n_units = (max(units) + 1) if units else 1
    expected = {"t.weight": _conv_shape(cs, c, dim), "p.weight": _conv_shape(cs, c, dim)}
    for u in range(n_units):
        expected.update(_unit_shapes(c, cs, dim, f"stages.{u}."))
    _validate(sub, expected, prefix, "the official SNL stage")
    stage = stage_cls(c, n_units=n_units, block="snl", dim=dim, inter_channels=cs,
                      relu_after_norm=relu_after_norm)
    match_module(stage, sub["t.weight"])
    mapping = [("units.0.theta.weight", "t.weight", 1.0), ("units.0.phi.weight", "p.weight", 1.0)]
    for u in range(n_units):
        mapping += unit_weight_map(f"units.{u}.", f"stages.{u}.")
    copy_weights(stage, sub, [e for e in mapping if e[1] in sub])
    return stage
