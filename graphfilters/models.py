"""Pre-activation ResNets for small images, with nonlocal blocks inserted where you ask.

The backbone is the CIFAR pre-activation ResNet of He et al. (2016): a 3×3 stem, three stages
of ``n`` basic units each (``depth = 6n + 2``: 20, 32, 44, 56, 110, ...), widths
``(width, 2·width, 4·width)`` (16/32/64 by default), strides 1, 2, 2, a final BN-ReLU, global
average pooling and a linear classifier.

Nonlocal blocks (any name of :data:`graphfilters.specs.BLOCK_NAMES`) are built by
:func:`graphfilters.blocks.make_block` and inserted between residual units. The default is the
placement of the official SNL code and of Tao et al. (2018): **stage 1, after the second
residual unit**.

Placement conventions
---------------------
``stage``
    1-based: 1, 2 or 3.
``position``
    ``p`` in ``0 … n``: the block goes *after* the ``p``-th residual unit of the stage
    (``0``: before the first unit, i.e. on the stage input; for stages 2 and 3 that input still
    has the previous stage's width and resolution).
``blocks_per_position`` (``k``)
    ``k`` blocks at each position. With ``share_affinity=False`` they are ``k`` independent
    blocks, each computing its own affinity. With ``share_affinity=True`` they are one
    "nonlocal stage" of ``k`` units sharing one affinity computed from the stage input
    (``make_block(name, C, n_units=k)``; the native form of ``ns``).

``placements``
    Explicit ``(stage, position)`` pairs, or ``(stage, position, count)`` triples that put
    ``count`` independent blocks at that position (overriding ``blocks_per_position``).
``block_zero_init``
    ``True`` (default): every block's output scale (the BN ``γ`` of its output normalization,
    or its ``γ`` gate) starts at zero, so the block is the identity at initialization, as in
    the official code. ``False`` sets that scale to one, which is the setting where stacking
    instabilities show (used by :mod:`analysis.sweep`).

Stacking experiments. :func:`stacking_config` gives the model keywords of the two stacking
layouts of the SNL paper's robustness experiment: ``"stage"`` (``k`` units sharing one
affinity at one position, the official ``Stage(stage_num=k)``) and ``"spread"`` (``k``
independent blocks spread over the positions of several stages). :func:`receptive_field`
is the backbone's theoretical receptive field (used to build a long-range task that the
plain backbone cannot solve, see :func:`graphfilters.data.long_range_task`).

Module paths (what :func:`nonlocal_blocks` returns and what hooks attach to):
``layer{s}.unit{i}`` are residual units (1-based), ``layer{s}.nonlocal{p}`` the block(s) after
unit ``p``; with ``k > 1`` independent blocks they are ``layer{s}.nonlocal{p}.0`` …
``.{k-1}``.

Examples
--------
>>> import torch
>>> from graphfilters.models import PreResNet, build_model
>>> model = PreResNet(depth=8, num_classes=10, width=4, block=None)
>>> model(torch.zeros(2, 3, 16, 16)).shape
torch.Size([2, 10])
>>> build_model(model.config).config == model.config
True
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import _validate as V
from .architectures import ARCHITECTURES as _ARCHITECTURES
from .architectures import get_architecture

__all__ = [
    "ARCHITECTURES",
    "BlockFactory",
    "PreActBasicBlock",
    "PreResNet",
    "build_model",
    "default_block_factory",
    "nonlocal_blocks",
    "receptive_field",
    "stacking_config",
    "PLACEMENTS",
]

#: Stacking layouts of :func:`stacking_config`.
PLACEMENTS = ("stage", "spread")

#: ``depth`` of a :class:`PreResNet` is an integer >= 8 (and ``6n + 2``, checked inline).
_DEPTH = V.Interval(V.Integral, 8, None, closed="left")

#: ``factory(name, in_channels, dim=2, **options) -> nn.Module``; with ``n_units=k`` it returns a
#: stage of ``k`` units sharing one affinity. The default is
#: :func:`graphfilters.blocks.make_block`.
BlockFactory = Callable[..., nn.Module]


def default_block_factory(name: str, in_channels: int, dim: int = 2, **options: Any) -> nn.Module:
    """Build a nonlocal block with :func:`graphfilters.blocks.make_block` (imported lazily).

    Parameters
    ----------
    name : str
        Block table name (``"nl"``, ``"snl"``, ...).
    in_channels : int
        Channels ``C`` of the feature map the block acts on.
    dim : int
        Spatial dimensions (2 for images).
    **options
        Passed on to ``make_block`` (e.g. ``n_units=k`` for a shared-affinity stage).

    Returns
    -------
    torch.nn.Module
        Maps ``(B, C, H, W)`` to ``(B, C, H, W)``; the identity at initialization.
    """
    try:
        from graphfilters.blocks import make_block
    except ImportError as exc:  # pragma: no cover - depends on the checkout
        raise ImportError(
            "graphfilters.blocks.make_block is not importable, so nonlocal blocks cannot be "
            "built; pass block=None for a plain PreResNet, or a block_factory= callable "
            f"(original error: {exc})"
        ) from exc
    return make_block(name, in_channels, dim=dim, **options)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _bn(planes: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(planes)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


class PreActBasicBlock(nn.Module):
    """Pre-activation basic residual unit: ``x + conv(ReLU(BN(conv(ReLU(BN(x))))))``.

    A 1×1 projection of the pre-activated input replaces the identity shortcut when the
    stride or the width changes (He et al. 2016, "Identity Mappings in Deep Residual Networks").

    Parameters
    ----------
    in_planes, planes : int
        Input and output channels.
    stride : int
        Stride of the first convolution (2 halves the resolution).

    Shapes
    ------
    - input: ``(B, in_planes, H, W)``
    - output: ``(B, planes, H / stride, W / stride)``

    Examples
    --------
    >>> import torch
    >>> unit = PreActBasicBlock(4, 8, stride=2)
    >>> unit(torch.zeros(1, 4, 8, 8)).shape
    torch.Size([1, 8, 4, 4])
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = _bn(in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            proj = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            nn.init.kaiming_normal_(proj.weight, mode="fan_out", nonlinearity="relu")
            self.shortcut = proj

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


def _as_int_tuple(value: int | Iterable[int], what: str) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int or a sequence of ints, got {value!r}")
    if isinstance(value, int):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{what} must be an int or a sequence of ints, got {value!r}") from None
    for item in items:
        if not isinstance(item, int) or isinstance(item, bool):
            raise TypeError(f"{what} must contain ints, got {item!r} in {value!r}")
    return items


def _default_share(block: str) -> bool:
    try:
        from graphfilters.specs import BLOCKS
    except ImportError:  # pragma: no cover
        return False
    spec = BLOCKS.get(block.lower())
    return bool(spec.shared_affinity) if spec is not None else False


class PreResNet(nn.Module):
    """Pre-activation ResNet (``depth = 6n + 2``) with optional nonlocal blocks.

    Parameters
    ----------
    depth : int
        ``6n + 2`` (8, 14, 20, 32, 44, 56, 110, ...): ``n`` basic units per stage.
    num_classes : int
        Outputs of the classifier.
    in_channels : int
        Channels of the input images (3 for CIFAR, 1 for digits).
    width : int
        Width of the first stage; the stages have ``width, 2·width, 4·width`` channels
        (16/32/64 for the paper's PreResNet-20).
    block : str or None
        Name of the nonlocal block to insert (see :data:`graphfilters.specs.BLOCK_NAMES`);
        ``None`` for the plain backbone.
    block_stages : int or sequence of int
        Stages (1, 2, 3) that receive blocks. Default: stage 1.
    block_positions : int or sequence of int
        Positions ``p`` in ``0 … n`` (after unit ``p``) in each of ``block_stages``; every
        (stage, position) pair gets blocks. Default: after the second unit.
    blocks_per_position : int
        ``k`` blocks at each position.
    share_affinity : bool or None
        ``True``: the ``k`` blocks at a position are one nonlocal stage sharing one affinity
        (``make_block(name, C, n_units=k)``). ``False``: ``k`` independent blocks. ``None``
        (default): the block table's ``shared_affinity`` (``True`` only for ``ns``).
    block_options : mapping, optional
        Keyword options for every block (e.g. ``{"mode": "dot_product"}`` for ``nl``); must be
        JSON-serializable because they are part of :attr:`config`.
    placements : sequence of (stage, position) or (stage, position, count), optional
        Explicit list of placements; overrides ``block_stages`` × ``block_positions``. A
        third entry ``count`` puts that many blocks at the position (instead of
        ``blocks_per_position``).
    block_zero_init : bool
        ``True`` (default): the blocks' output scale starts at zero (identity blocks at
        initialization). ``False``: it starts at one (the output normalization's BN weight,
        or the ``γ`` gate, is set to 1 after the block is built), so the blocks act from the
        first step.
    block_factory : callable, optional
        ``factory(name, in_channels, dim=2, **options)``; default
        :func:`default_block_factory` (``graphfilters.blocks.make_block``). Not part of
        :attr:`config`: pass it again to :func:`build_model` if you used your own.

    Attributes
    ----------
    config : dict
        JSON-serializable keyword arguments that rebuild the model with :func:`build_model`.
    nonlocal_paths : list of str
        Module paths of the inserted blocks (see :func:`nonlocal_blocks`).

    Shapes
    ------
    - input: ``(B, in_channels, H, W)`` (any ``H, W`` ≥ 4; 32×32 for CIFAR)
    - output: ``(B, num_classes)`` logits

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> class Gate(nn.Module):  # a stand-in block: identity at initialization
    ...     def __init__(self, c):
    ...         super().__init__()
    ...         self.conv = nn.Conv2d(c, c, 1)
    ...         nn.init.zeros_(self.conv.weight)
    ...         nn.init.zeros_(self.conv.bias)
    ...     def forward(self, x):
    ...         return x + self.conv(x)
    >>> factory = lambda name, c, dim=2, **opts: Gate(c)
    >>> model = PreResNet(depth=14, width=4, block="snl", block_factory=factory)
    >>> model.nonlocal_paths
    ['layer1.nonlocal2']
    >>> model(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """

    arch = "preresnet"

    @V.validate_params(
        {"depth": [_DEPTH], "num_classes": [V.POS_INT], "in_channels": [V.POS_INT],
         "width": [V.POS_INT], "block": [V.InstanceOf(str, "a block name (str)"), None],
         "blocks_per_position": [V.POS_INT], "share_affinity": ["boolean", None],
         "block_options": [V.MAPPING, None],
         "block_zero_init": ["boolean"], "block_factory": ["callable", None]},
        valid=lambda: {"depth": 8, "num_classes": 2, "in_channels": 1, "width": 1},
    )
    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        block: str | None = None,
        block_stages: int | Sequence[int] = (1,),
        block_positions: int | Sequence[int] = (2,),
        blocks_per_position: int = 1,
        share_affinity: bool | None = None,
        block_options: Mapping[str, Any] | None = None,
        placements: Sequence[Sequence[int]] | None = None,
        block_zero_init: bool = True,
        block_factory: BlockFactory | None = None,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(
                f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}"
            )
        depth, num_classes, in_channels, width, blocks_per_position = (
            int(depth), int(num_classes), int(in_channels), int(width), int(blocks_per_position))
        n = (depth - 2) // 6
        options = dict(block_options or {})
        try:
            options = json.loads(json.dumps(options))
        except (TypeError, ValueError) as exc:
            raise TypeError(
                "block_options must be JSON-serializable (they are stored in model.config and "
                f"in checkpoints); got {block_options!r}: {exc}"
            ) from exc
        if "n_units" in options:
            raise ValueError(
                "do not pass n_units in block_options; use blocks_per_position=k with "
                "share_affinity=True"
            )

        stages = _as_int_tuple(block_stages, "block_stages")
        positions = _as_int_tuple(block_positions, "block_positions")
        counts: dict[tuple[int, int], int] = {}
        if placements is None:
            pairs = [(s, p) for s in stages for p in positions]
        else:
            pairs = []
            for item in placements:
                pair = _as_int_tuple(item, "placements")
                if len(pair) not in (2, 3):
                    raise ValueError("placements must be (stage, position) pairs or (stage, "
                                     f"position, count) triples, got {item!r}")
                if len(pair) == 3:
                    if pair[2] < 1:
                        raise ValueError(f"placements: count must be >= 1, got {item!r}")
                    counts[(pair[0], pair[1])] = pair[2]
                pairs.append((pair[0], pair[1]))
        if block is not None:
            block = block.lower()
            for s, p in pairs:
                if s not in (1, 2, 3):
                    raise ValueError(f"block stage must be 1, 2 or 3, got {s} in {pairs}")
                if not 0 <= p <= n:
                    raise ValueError(
                        f"block position must be in 0..{n} for depth {depth} ({n} units per "
                        f"stage; position p means after unit p), got {p} in stage {s}"
                    )
            if len(set(pairs)) != len(pairs):
                raise ValueError(f"duplicate (stage, position) placements: {pairs}")
        share = _default_share(block) if (block is not None and share_affinity is None) else bool(
            share_affinity
        )

        self.config: dict[str, Any] = {
            "arch": self.arch,
            "depth": depth,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "width": width,
            "block": block,
            "block_stages": list(stages),
            "block_positions": list(positions),
            "blocks_per_position": blocks_per_position,
            "share_affinity": share,
            "block_options": options,
            "placements": None if placements is None else [
                [*p, counts[p]] if p in counts else list(p) for p in pairs],
            "block_zero_init": bool(block_zero_init),
        }
        factory = block_factory if block_factory is not None else default_block_factory

        widths = (width, 2 * width, 4 * width)
        self.conv1 = _conv3x3(in_channels, width)
        self.nonlocal_paths: list[str] = []
        planes_in = width
        for s, (planes, stride) in enumerate(zip(widths, (1, 2, 2), strict=True), start=1):
            where = sorted(p for (st, p) in pairs if st == s) if block is not None else []
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            channels = planes_in
            for i in range(n + 1):
                if i in where:
                    name = f"nonlocal{i}"
                    k = counts.get((s, i), blocks_per_position)
                    layers[name] = self._make_blocks(factory, block, channels, k, share, options)
                    if not block_zero_init:
                        _unit_output_scale(layers[name])
                    if k > 1 and not share:
                        self.nonlocal_paths += [f"layer{s}.{name}.{j}" for j in range(k)]
                    else:
                        self.nonlocal_paths.append(f"layer{s}.{name}")
                if i < n:
                    layers[f"unit{i + 1}"] = PreActBasicBlock(
                        channels, planes, stride if i == 0 else 1
                    )
                    channels = planes
            self.add_module(f"layer{s}", nn.Sequential(layers))
            planes_in = planes
        self.bn_final = _bn(widths[-1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    @staticmethod
    def _make_blocks(factory: BlockFactory, block: str, channels: int, k: int, share: bool,
                     options: dict[str, Any]) -> nn.Module:
        if share:
            return factory(block, channels, dim=2, n_units=k, **options)
        if k == 1:
            return factory(block, channels, dim=2, **options)
        return nn.Sequential(*(factory(block, channels, dim=2, **options) for _ in range(k)))

    def features(self, x: Tensor) -> Tensor:
        """Pooled features before the classifier.

        Shapes
        ------
        - input: ``(B, in_channels, H, W)``
        - output: ``(B, 4·width)``
        """
        out = self.conv1(x)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.relu(self.bn_final(out))
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(
                f"expected input of shape (B, {self.config['in_channels']}, H, W), "
                f"got {tuple(x.shape)}"
            )
        return self.fc(self.features(x))

    def extra_repr(self) -> str:
        c = self.config
        text = f"depth={c['depth']}, width={c['width']}, num_classes={c['num_classes']}"
        if c["block"] is not None:
            text += (f", block={c['block']!r} at {self.nonlocal_paths}"
                     f", k={c['blocks_per_position']}, shared={c['share_affinity']}")
        return text


def _unit_output_scale(block: nn.Module) -> None:
    """Set the zero-initialized output scale of every unit in ``block`` to one.

    The blocks of :mod:`graphfilters.blocks` end with a normalization whose scale starts at
    zero (``unit.norm``, a BatchNorm, or a scalar gate ``unit.gamma``): those become one.
    Other modules are left alone.
    """
    with torch.no_grad():
        for module in block.modules():
            norm = getattr(module, "norm", None)
            if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.weight is not None:
                norm.weight.fill_(1.0)
            gamma = getattr(module, "gamma", None)
            if isinstance(gamma, nn.Parameter):
                gamma.fill_(1.0)


@V.validate_params(
    {"k": [V.POS_INT], "placement": [V.StrOptions(PLACEMENTS)], "stage": [V.POS_INT],
     "position": [V.NONNEG_INT, None]},
    valid=lambda: {"k": 3, "placement": "spread", "depth": 8},
)
def stacking_config(
    k: int,
    placement: str = "stage",
    depth: int = 20,
    *,
    stage: int = 1,
    position: int | None = None,
    spread_stages: Sequence[int] = (1, 2, 3),
) -> dict[str, Any]:
    """Model keywords that stack ``k`` nonlocal blocks in one of two layouts.

    ``"stage"``
        One nonlocal stage of ``k`` units sharing one affinity computed once from the stage
        input, at ``(stage, position)`` (the official ``Stage(stage_num=k)``):
        ``blocks_per_position=k, share_affinity=True``.
    ``"spread"``
        ``k`` independent blocks (each computes its own affinity) spread as evenly as
        possible over the positions ``0 … n`` of ``spread_stages`` (in order; when
        ``k`` exceeds the number of positions, some positions get several blocks).

    For ``k = 1`` both layouts are one block at ``(stage, position)``.

    Parameters
    ----------
    k : int
        Number of blocks (units).
    placement : {"stage", "spread"}
    depth : int
        ResNet depth ``6n + 2``.
    stage : int
        Stage of the ``"stage"`` layout (and of ``k = 1``).
    position : int, optional
        Position of the ``"stage"`` layout; default ``min(2, n)`` (after the second unit,
        the official placement, or after the only unit for depth 8).
    spread_stages : sequence of int
        Stages whose positions the ``"spread"`` layout uses.

    Returns
    -------
    dict
        ``placements``, ``blocks_per_position``, ``share_affinity``: merge into a
        :class:`PreResNet` config.

    Examples
    --------
    >>> stacking_config(3, "stage", depth=20)
    {'placements': [[1, 2]], 'blocks_per_position': 3, 'share_affinity': True}
    >>> stacking_config(3, "spread", depth=8)["placements"]
    [[1, 0, 1], [2, 0, 1], [3, 1, 1]]
    >>> stacking_config(10, "spread", depth=8)["placements"]
    [[1, 0, 2], [1, 1, 2], [2, 0, 2], [2, 1, 2], [3, 0, 1], [3, 1, 1]]
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth!r}")
    n = (depth - 2) // 6
    if position is None:
        position = min(2, n)
    if placement == "stage" or k == 1:
        return {"placements": [[stage, position]], "blocks_per_position": k,
                "share_affinity": placement == "stage"}
    slots = [(s, p) for s in spread_stages for p in range(n + 1)]
    if not slots:
        raise ValueError("spread_stages must name at least one stage")
    if k <= len(slots):
        # k evenly spaced slots (first and last included when k > 1)
        idx = sorted({round(i * (len(slots) - 1) / (k - 1)) for i in range(k)})
        chosen = {slots[i]: 1 for i in idx}
    else:
        base, extra = divmod(k, len(slots))
        chosen = {slot: base + (1 if j < extra else 0) for j, slot in enumerate(slots)}
    return {"placements": [[s, p, c] for (s, p), c in chosen.items()],
            "blocks_per_position": 1, "share_affinity": False}


@V.validate_params({"depth": [_DEPTH]}, valid=lambda: {"depth": 8})
def receptive_field(depth: int) -> int:
    """Side (pixels) of the theoretical receptive field of a :class:`PreResNet` output unit.

    Every 3×3 convolution adds ``2·j`` pixels, where ``j`` is the product of the strides
    before it (the stem and stage 1 have ``j = 1``, stage 2 ``j = 2``, stage 3 ``j = 4``);
    the 1×1 projections add nothing. A feature at the last stage therefore depends on a
    square of this side; two marks whose Chebyshev distance (between their nearest pixels)
    is at least this size are never seen by one unit.

    Examples
    --------
    >>> receptive_field(8), receptive_field(20)
    (25, 81)
    """
    if (depth - 2) % 6 != 0:
        raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth!r}")
    n = (depth - 2) // 6
    size, jump = 3, 1  # the stem
    for stride in (1, 2, 2):
        jump_in = jump
        jump *= stride
        size += 2 * jump_in  # first conv of the stage (stride applied after its window)
        size += 2 * jump * (2 * n - 1)  # the remaining 2n - 1 convolutions
    return size


#: Architectures :func:`build_model` knows: ``config["arch"]`` -> class (the registry of
#: :mod:`graphfilters.architectures`, where new ones are registered).
ARCHITECTURES = _ARCHITECTURES


@V.validate_params(
    {"config": [V.MAPPING], "block_factory": ["callable", None]},
    valid=lambda: {"config": {"arch": "preresnet", "depth": 8, "width": 1, "num_classes": 2}},
)
def build_model(config: Mapping[str, Any], block_factory: BlockFactory | None = None) -> nn.Module:
    """Rebuild a model from its :attr:`config` dict (e.g. read from a checkpoint).

    Parameters
    ----------
    config : mapping
        ``{"arch": "preresnet", ...}``: the model's ``config`` attribute (JSON round trips
        are fine: lists stand for tuples).
    block_factory : callable, optional
        Passed to the model; default ``graphfilters.blocks.make_block``.

    Returns
    -------
    torch.nn.Module
        A freshly initialized model (load a state dict to restore weights).

    Raises
    ------
    ValueError
        For a missing or unknown ``arch`` or unknown keys (the message lists the known ones).

    Examples
    --------
    >>> model = build_model({"arch": "preresnet", "depth": 8, "width": 4, "num_classes": 3})
    >>> model.config["num_classes"], model.config["block"]
    (3, None)
    """
    kwargs = dict(config)
    arch = kwargs.pop("arch", None)
    cls = get_architecture(arch)
    import inspect

    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "block_factory"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in a {arch!r} model config; known keys: {sorted(allowed)}"
        )
    return cls(**kwargs, block_factory=block_factory)


def nonlocal_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """List the inserted nonlocal blocks of ``model`` as ``(path, module)``.

    For a :class:`PreResNet` (also wrapped in ``DistributedDataParallel``) this is
    ``model.nonlocal_paths``. For any other model, the outermost modules defined in
    ``graphfilters.blocks`` are returned (so it also works for blocks you inserted in your own
    networks).

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    list of (str, torch.nn.Module)
        Paths as in ``model.named_modules()``; a shared-affinity stage is one entry.

    Examples
    --------
    >>> nonlocal_blocks(PreResNet(depth=8, width=4))
    []
    """
    prefix = ""
    inner = model
    if hasattr(model, "module") and isinstance(model.module, nn.Module) and not hasattr(
        model, "nonlocal_paths"
    ):
        inner, prefix = model.module, "module."
    paths = getattr(inner, "nonlocal_paths", None)
    if paths is not None:
        return [(prefix + p, inner.get_submodule(p)) for p in paths]
    found: list[tuple[str, nn.Module]] = []
    for path, module in model.named_modules():
        if not type(module).__module__.startswith("graphfilters.blocks"):
            continue
        if any(path.startswith(parent + ".") for parent, _ in found):
            continue
        found.append((path, module))
    return found
