r"""A nonlocal stage: one affinity computed from the stage input, shared by several units.

Imports the unit constructors (:mod:`graphfilters.blocks.units`), never the factory: the
modules of ``blocks/`` form no import cycle (``unified`` <- named blocks <- ``units`` <-
``stage`` <- ``factory``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .. import _validate as V
from ..graph import Affinity
from ._convert import bn_map, conv_map, copy_weights, match_module
from .record import FilterRecord
from .reference import NonlocalStageRef, OfficialSNLStage
from .snl import load_official_stage, unit_weight_map
from .units import unit_factory

__all__ = ["NonlocalStage"]


class NonlocalStage(nn.Module):
    r"""A nonlocal stage: one affinity, computed from the stage input, shared by ``n`` units.

    .. math::

        \hat A = \operatorname{norm}(\kappa(\theta(X_0), \phi(X_0))), \qquad
        X_{u+1} = X_u + \operatorname{Norm}_u\Big(\sum_k B_k(\hat A)\, g_u(X_u)\, W_{u,k}\Big).

    With ``block="ns"`` (the default) this is the nonlocal stage of Tao et al. (NeurIPS 2018):
    softmax affinity, tied weights, :math:`F = (A - I) Z W = -L_{rw} Z W`, a forward-Euler
    step of nonlocal diffusion per unit. Any other table name gives a stage of that block
    (e.g. the official SNL stage with ``block="snl"``). Unit 0 owns ``θ``/``φ``; the others
    are built with ``shared_affinity=True``.

    Parameters
    ----------
    in_channels : int
    n_units : int
        Number of units ``n >= 1``.
    block : str
        Table name of the units.
    dim : {1, 2, 3}
    **options
        Passed to every unit's constructor (e.g. ``inter_channels``, ``mode`` for ``nl``).

    Attributes
    ----------
    units : nn.ModuleList of GraphFilterNonlocal
    spec : BlockSpec
        The units' spec.
    record : bool
        Setting it sets it on every unit. ``last_record`` is unit 0's record (input = the
        stage input); ``last_records`` lists every unit's.

    Shapes
    ------
    - **input:** ``(B, C, *spatial)``; **output:** the same.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.blocks import NonlocalStage
    >>> stage = NonlocalStage(8, n_units=3)
    >>> x = torch.randn(2, 8, 4, 4)
    >>> torch.equal(stage(x), x), len(stage.units), stage.units[1].theta is None
    (True, 3, True)
    """

    @V.validate_params({"in_channels": [V.POS_INT], "n_units": [V.POS_INT]},
                       valid=lambda: {"in_channels": 4})
    def __init__(
        self, in_channels: int, n_units: int = 1, block: str = "ns", dim: int = 2,
        **options: Any,
    ) -> None:
        super().__init__()
        if "shared_affinity" in options:
            raise TypeError("NonlocalStage sets shared_affinity itself; do not pass it")
        make = unit_factory(block)
        self.block = block
        self.units = nn.ModuleList(
            make(in_channels, dim=dim, shared_affinity=u > 0, **options) for u in range(n_units)
        )
        self.spec = self.units[0].spec
        self.in_channels, self.dim = in_channels, self.units[0].dim

    @property
    def n_units(self) -> int:
        return len(self.units)

    @property
    def record(self) -> bool:
        return all(u.record for u in self.units)

    @record.setter
    def record(self, value: bool) -> None:
        for u in self.units:
            u.record = bool(value)

    @property
    def last_record(self) -> FilterRecord | None:
        return self.units[0].last_record

    @property
    def last_records(self) -> list[FilterRecord | None]:
        return [u.last_record for u in self.units]

    def filter_weights(self, unit: int = 0) -> list[Tensor]:
        """The affinity-form weights of unit ``unit`` (see
        :meth:`GraphFilterNonlocal.filter_weights`)."""
        return self.units[unit].filter_weights()

    def reset_parameters(self) -> None:
        for u in self.units:
            u.reset_parameters()

    def compute_affinity(self, x: Tensor) -> Affinity:
        """The shared raw affinity of the stage input ``x``."""
        return self.units[0].compute_affinity(x)

    def forward(
        self, x: Tensor, *, return_affinity: bool = False, materialize: bool | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        affinity = self.compute_affinity(x)
        for u in self.units:
            x = u(x, affinity, materialize=materialize)
        if return_affinity:
            return x, self.units[0].operator(affinity).dense()
        return x

    def extra_repr(self) -> str:
        return f"block={self.spec.name}, in_channels={self.in_channels}, n_units={self.n_units}"

    @staticmethod
    def reference_map(ref: nn.Module) -> list[tuple[str, str, float]]:
        """``(unified, reference, scale)`` entries relating this stage to ``ref`` (a
        :class:`~graphfilters.blocks.reference.NonlocalStageRef` or
        :class:`~graphfilters.blocks.reference.OfficialSNLStage`)."""
        if isinstance(ref, NonlocalStageRef):
            m = conv_map("units.0.theta", "theta", True) + conv_map("units.0.phi", "phi", True)
            for u in range(len(ref.units)):
                m += conv_map(f"units.{u}.g", f"units.{u}.g", True)
                m += [(f"units.{u}.w.1", f"units.{u}.W_z.weight", 1.0),
                      (f"units.{u}.bias", f"units.{u}.W_z.bias", 1.0)]
                m += bn_map(f"units.{u}.norm", f"units.{u}.bn")
            return m
        if isinstance(ref, OfficialSNLStage):
            m = [("units.0.theta.weight", "t.weight", 1.0), ("units.0.phi.weight", "p.weight", 1.0)]
            for u in range(len(ref.stages)):
                m += unit_weight_map(f"units.{u}.", f"stages.{u}.")
            return m
        raise TypeError(
            "reference must be a NonlocalStageRef or an OfficialSNLStage, got "
            f"{type(ref).__name__}"
        )

    @classmethod
    def from_reference(cls, ref: nn.Module) -> NonlocalStage:
        """The stage computing exactly what the original-form stage ``ref`` computes.

        Examples
        --------
        >>> import torch
        >>> from graphfilters.blocks.reference import NonlocalStageRef
        >>> ref = NonlocalStageRef(8, n_units=2)
        >>> NonlocalStage.from_reference(ref).n_units
        2
        """
        mapping = cls.reference_map(ref)
        if isinstance(ref, NonlocalStageRef):
            stage = cls(ref.in_channels, n_units=len(ref.units), block="ns", dim=ref.dim,
                        inter_channels=ref.inter_channels)
        else:
            stage = cls(ref.in_channels, n_units=len(ref.stages), block="snl", dim=ref.dim,
                        inter_channels=ref.inter_channels, relu_after_norm=ref.relu)
        copy_weights(match_module(stage, ref), ref.state_dict(), mapping)
        return stage.train(ref.training)

    @classmethod
    def from_official_snl_state_dict(
        cls, state_dict: Mapping[str, Tensor], prefix: str = "", relu_after_norm: bool = True,
    ) -> NonlocalStage:
        """An SNL stage from a checkpoint of the official multi-unit stage.

        Keys ``t.weight``, ``p.weight``, ``stages.{u}.g.weight``, ``stages.{u}.w_1.weight``,
        ``stages.{u}.w_2.weight``, ``stages.{u}.bn.*``, the official names (see
        :class:`~graphfilters.blocks.reference.OfficialSNLStage`). Raises ``ValueError`` for
        missing, misshaped or unexpected keys.
        """
        return load_official_stage(cls, state_dict, prefix, relu_after_norm)
