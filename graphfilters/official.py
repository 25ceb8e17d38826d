r"""Checkpoints of the official SNL code (Zhu et al., ICCV 2021; github
zh460045050/SNL_ICCV2021), loaded as the official code computes them, built from this
library's blocks.

:func:`load_official` reads a file saved by the official ``train_val.py``
(``{'epoch', 'state_dict', 'best_prec1', 'optimizer'}``, with or without DataParallel's
``module.``), an mmseg checkpoint of the SNL segmentation head, or a bare state dict, and
returns an :class:`OfficialNet` in eval mode: the official backbone (same module names, so the
same keys) with the nonlocal module replaced by the library's blocks
(:class:`~graphfilters.blocks.NonlocalStage` of :class:`~graphfilters.blocks.SNL` units,
:class:`~graphfilters.blocks.DisentangledNonLocal` with ``pairwise=``,
:class:`~graphfilters.blocks.CGNL` with ``norm="group"``,
:class:`~graphfilters.blocks.CrissCross`), so that :func:`analysis.capture` and
:func:`analysis.analyze` find every unit and stage.

What each official ``nl_type`` computes (``x -> x + ...`` per unit; :math:`\hat A` computed
once from the stage input and shared by its ``stage_num`` units):

=========  ==================================================================================
nl_type    official unit, as built here
=========  ==================================================================================
snl        :math:`\mathrm{ReLU}(\mathrm{BN}(w_1 g + w_2 \hat A g))`: ``SNL`` (``W_0 = w_1``,
           ``W_1 = w_2``)
nl, a2     :math:`\mathrm{ReLU}(\mathrm{BN}(w_2 \hat A g))`: ``SNL`` with ``W_0 = 0``
ns         :math:`\mathrm{ReLU}(\mathrm{BN}(w_2 (g - \hat A g)))`: ``SNL`` with tied weights
           (``W_1 = -w_2``)
dnl        :math:`\mathrm{ReLU}(\mathrm{BN}(w_2 (\hat A g + \mathbf 1
           \operatorname{softmax}(w_m x)^T g)))`: ``DisentangledNonLocal(pairwise=...)``
cgnl       :math:`\mathrm{GN}(z(\text{Taylor-RBF}(t, p)\, g))`, GroupNorm(1), no ReLU:
           ``CGNL(norm="group")``; ``stage_num`` is ignored by the official code
cc         ``stage_num`` criss-cross modules with biases, queries/keys of ``C / div``
           channels: ``CrissCross``
=========  ==================================================================================

The affinity :math:`\hat A` of the Stage-based types (snl, nl, a2, ns, dnl): in the CIFAR
PreResNets always SNL's :math:`D^{-1/2}\operatorname{sym}(M)D^{-1/2}`,
:math:`M = \mathrm{ReLU}(t)^T\mathrm{ReLU}(p)` (``model_hub`` forces ``is_sys`` and
``is_norm``); in the ImageNet ResNet-50 the ``--is_sys``/``--is_norm`` flags of
``train_val.py`` decide it (not stored in the checkpoint, so they are arguments here): with
``is_norm`` the ReLU-dot affinity normalized by the row degrees on both sides (symmetrized
first with ``is_sys``), without it :math:`\operatorname{softmax}_{row}(t^T p)` (no scaling) for
nl/ns/dnl and the raw :math:`\mathrm{ReLU}(t)^T\mathrm{ReLU}(p)` for a2. ``snl`` always gets
the SNL affinity. The segmentation head's unit is
:math:`\mathrm{ReLU}(\mathrm{BN}(w_1 g - w_2\hat A g))` (``SNL(sign=-1)``).

Where the official computation differs from the published block of that name, the loader
warns once (:class:`OfficialDifferenceWarning`) and lists the differences in
``model.official_differences``.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import _validate as V
from ._warnings import external_stacklevel
from .blocks import CGNL, CrissCross, NonlocalStage
from .blocks._convert import BN_KEYS, copy_weights

__all__ = [
    "ARCHS",
    "CIFAR_NORMALIZATION",
    "NL_TYPES",
    "OfficialDifferenceWarning",
    "OfficialNet",
    "load_official",
    "official_state_dict",
    "official_weight_map",
]

#: Architectures: CIFAR PreResNets ("20": BasicBlock [3, 3, 3]; "56", "110": Bottleneck
#: [9, 9, 9], [18, 18, 18]), the ImageNet ResNet-50 of ``resnet_snl.py`` ("resnet50") and the
#: Cityscapes SNL decode head ("snl_head").
ARCHS = ("20", "56", "110", "resnet50", "snl_head")
#: Nonlocal types of the official classification code (the head has only ``snl``).
NL_TYPES = ("snl", "nl", "ns", "a2", "dnl", "cgnl", "cc")
_PRERESNET = {"20": ("basic", 3), "56": ("bottleneck", 9), "110": ("bottleneck", 18)}
_STAGE_TYPES = ("snl", "nl", "ns", "a2", "dnl")
#: keys ``train_val.py`` attaches to a CIFAR PreResNet but that the model never uses
_UNUSED_CIFAR = ("conv1.weight", "fc.weight", "fc.bias")


class OfficialDifferenceWarning(UserWarning):
    """The official code's block of this name is not the published block."""


# ---------------------------------------------------------------------------------------------
# backbone pieces (official module names: the keys of these parts are the official keys)


class _ConvBN(nn.Sequential):
    """``downsample``: 1×1 convolution (stride) and BatchNorm (keys ``0``, ``1``)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class PreActUnit(nn.Module):
    """Pre-activation residual unit of ``preresnet_snl.py`` (basic or bottleneck); the
    shortcut of a unit that changes shape is ``downsample`` on the raw input."""

    def __init__(self, kind: str, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.kind = kind
        e = 1 if kind == "basic" else 4
        self.bn1 = nn.BatchNorm2d(c_in)
        if kind == "basic":
            self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * e, 1, bias=False)
        self.downsample = (_ConvBN(c_in, planes * e, stride)
                           if stride != 1 or c_in != planes * e else None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        if self.kind != "basic":
            out = self.conv3(torch.relu(self.bn3(out)))
        return out + (self.downsample(x) if self.downsample is not None else x)


class BottleneckUnit(nn.Module):
    """Post-activation bottleneck of ``resnet_snl.py`` (torchvision's)."""

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = (_ConvBN(c_in, planes * 4, stride)
                           if stride != 1 or c_in != planes * 4 else None)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))


class _ConvModule(nn.Module):
    """mmcv ``ConvModule``: ``conv`` (k×k, padding k // 2), ``bn``, ReLU."""

    def __init__(self, c_in: int, c_out: int, k: int, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(x)))


# ---------------------------------------------------------------------------------------------
# the nonlocal module of each official nl_type, from the library's blocks


def _stage_options(nl_type: str, is_sys: bool, is_norm: bool) -> dict[str, Any]:
    """Constructor options of the units of an official ``Stage``."""
    if nl_type == "snl":
        is_sys = is_norm = True
    if is_norm and not is_sys:
        raise NotImplementedError(
            f"the official {nl_type!r} Stage with is_norm=True and is_sys=False normalizes the "
            "non-symmetric ReLU(t)ᵀReLU(p) by its row degrees on both sides, which the "
            "library's table rows do not allow (normalization 'sym' needs a symmetric "
            "affinity)"
        )
    if is_norm:
        aff = {"kernel": "relu_dot", "normalization": "sym", "symmetrize": True}
    elif nl_type == "a2":
        aff = {"kernel": "relu_dot", "normalization": "none", "symmetrize": bool(is_sys)}
    elif is_sys:
        raise NotImplementedError(
            f"the official {nl_type!r} Stage with is_sys=True and is_norm=False takes the "
            "softmax of symmetrized logits, softmax((tᵀp + pᵀt)/2), which no library kernel "
            "computes; load it with is_norm=True or is_sys=False only if that is how it was "
            "trained"
        )
    else:
        aff = {"kernel": "embedded_gaussian", "normalization": "rw", "symmetrize": False,
               "kernel_options": {"scale": 1.0}}
    if nl_type == "snl":
        return {"block": "snl", **aff}
    if nl_type in ("nl", "a2"):
        return {"block": "snl", "weight_constraint": "drop_order0", **aff}
    if nl_type == "ns":
        return {"block": "snl", "weight_constraint": "tied", **aff}
    # dnl: the unary term on the normalized pairwise affinity
    pair = "snl"
    return {"block": "dnl", "pairwise": pair, "bias": False, **aff}


def _nonlocal(nl_type: str, c: int, cs: int, stage_num: int, is_sys: bool, is_norm: bool,
              sign: int = 1) -> nn.Module:
    if nl_type == "cgnl":
        return CGNL(c, cs, groups=1, taylor_order=2, gamma=1e-4, beta="code", norm="group")
    if nl_type == "cc":
        return nn.Sequential(*[CrissCross(c, qk_channels=cs) for _ in range(stage_num)])
    opts = _stage_options(nl_type, is_sys, is_norm)
    block = opts.pop("block")
    return NonlocalStage(c, n_units=stage_num, block=block, inter_channels=cs,
                         relu_after_norm=True, sign=sign, **opts)


def _nonlocal_map(nl_type: str, lib: str, off: str, c: int, cs: int, stage_num: int
                  ) -> list[tuple[str, str, float, tuple[int, ...]]]:
    """``(library key, official key, scale, official shape)`` of one nonlocal module."""
    def conv(o: int, i: int) -> tuple[int, ...]:
        return (o, i, 1, 1)

    bn = [(k, () if k == "num_batches_tracked" else (c,)) for k in BN_KEYS]
    if nl_type == "cgnl":
        return [
            (f"{lib}theta.weight", f"{off}t.weight", 1.0, conv(cs, c)),
            (f"{lib}phi.weight", f"{off}p.weight", 1.0, conv(cs, c)),
            (f"{lib}g.weight", f"{off}g.weight", 1.0, conv(cs, c)),
            (f"{lib}w.1", f"{off}z.weight", 1.0, conv(c, cs)),
            (f"{lib}norm.weight", f"{off}gn.weight", 1.0, (c,)),
            (f"{lib}norm.bias", f"{off}gn.bias", 1.0, (c,)),
        ]
    if nl_type == "cc":
        m = []
        for u in range(stage_num):
            a, b = f"{lib}{u}.", f"{off}{u}."
            m += [(f"{a}theta.weight", f"{b}query_conv.weight", 1.0, conv(cs, c)),
                  (f"{a}theta.bias", f"{b}query_conv.bias", 1.0, (cs,)),
                  (f"{a}phi.weight", f"{b}key_conv.weight", 1.0, conv(cs, c)),
                  (f"{a}phi.bias", f"{b}key_conv.bias", 1.0, (cs,)),
                  (f"{a}g.weight", f"{b}value_conv.weight", 1.0, conv(c, c)),
                  (f"{a}g.bias", f"{b}value_conv.bias", 1.0, (c,)),
                  (f"{a}gamma", f"{b}gamma", 1.0, (1,))]
        return m
    m = [(f"{lib}units.0.theta.weight", f"{off}t.weight", 1.0, conv(cs, c)),
         (f"{lib}units.0.phi.weight", f"{off}p.weight", 1.0, conv(cs, c))]
    for u in range(stage_num):
        a, b = f"{lib}units.{u}.", f"{off}stages.{u}."
        m.append((f"{a}g.weight", f"{b}g.weight", 1.0, conv(cs, c)))
        if nl_type == "snl":
            m.append((f"{a}w.0", f"{b}w_1.weight", 1.0, conv(c, cs)))
        m.append((f"{a}w.1", f"{b}w_2.weight", -1.0 if nl_type == "ns" else 1.0, conv(c, cs)))
        if nl_type == "dnl":
            m.append((f"{a}unary.weight", f"{b}w_m.weight", 1.0, conv(1, c)))
        m += [(f"{a}norm.{k}", f"{b}bn.{k}", 1.0, s) for k, s in bn]
    return m


# ---------------------------------------------------------------------------------------------


class OfficialNet(nn.Module):
    r"""A network of the official SNL code, with the library's nonlocal blocks.

    Module names follow the official code (``conv``, ``layer1.0.bn1``, ...; the nonlocal
    module at ``layerS.2`` of the CIFAR PreResNets, ``layer3.5`` of the ResNet-50, ``SNL`` in
    the head), so every backbone key is the official key; :func:`official_weight_map` relates
    the nonlocal keys. Build an empty one from a config, or use :func:`load_official`.

    Parameters
    ----------
    official_arch : {"20", "56", "110", "resnet50", "snl_head"}
    nl_type : {"snl", "nl", "ns", "a2", "dnl", "cgnl", "cc"}
    stage_num : int
        Units of the stage (CC: modules); 1 for cgnl.
    nl_stages : sequence of int
        PreResNet stages (1-3) holding a nonlocal module (``--nl_layer``); ResNet-50: ``[3]``.
    num_classes : int
    div : float
        ``C_s = int(C / div)``.
    pool_size : int
        Side of the final average pool (CIFAR PreResNet: 8, ResNet-50: 7 on 224 × 224).
    is_sys, is_norm : bool
        ResNet-50 only: ``train_val.py``'s flags (the PreResNets force both).
    stem : {"imagenet", "cifar"}
        ResNet-50: 7×7/2 convolution and max-pool, or ``train_val.py``'s 3×3/1 CIFAR stem.
    in_channels, channels, kernel_size, concat_input, conv_bias :
        The head: input channels, channels of its convolutions, their kernel size, whether
        ``conv_cat`` is used, whether its convolutions have biases.
    input_normalization : dict, optional
        ``{"data_mean", "data_std", "mean", "std"}`` (per channel): inputs normalized with
        the data set's statistics (``data_*``, what :mod:`graphfilters.data` gives) are first
        renormalized to the official code's ``mean``/``std`` (``train_val.py``: CIFAR mean
        (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010)), as a fixed per-channel
        affine ``input_affine``. ``None``: inputs are taken as the official code normalized
        them.
    block : str, optional
        Label in reports (default ``official-<nl_type>``).
    block_factory : ignored
        Accepted so that :func:`graphfilters.models.build_model` rebuilds it.

    Attributes
    ----------
    config : dict
        Rebuilds the architecture exactly (stored by ``import-official``).
    nonlocal_paths : list of str
    official_differences : list of str
        How the official computation differs from the published blocks of that name.

    Shapes
    ------
    - **input:** ``(B, 3, H, W)`` images (the head: ``(B, in_channels, H, W)`` features).
    - **output:** ``(B, num_classes)`` logits (the head: ``(B, num_classes, H, W)``).

    Examples
    --------
    >>> import torch
    >>> net = OfficialNet("20", "snl", stage_num=2, num_classes=10).eval()
    >>> net.nonlocal_paths, net(torch.randn(1, 3, 32, 32)).shape
    (['layer1.2'], torch.Size([1, 10]))
    """

    @V.validate_params({"official_arch": [V.StrOptions(ARCHS)],
                        "nl_type": [V.StrOptions(NL_TYPES)], "stage_num": [V.POS_INT],
                        "stem": [V.StrOptions(("imagenet", "cifar"))]})
    def __init__(
        self,
        official_arch: str,
        nl_type: str = "snl",
        stage_num: int = 1,
        nl_stages: Sequence[int] = (1,),
        num_classes: int = 1000,
        div: float = 2.0,
        pool_size: int | None = None,
        is_sys: bool = False,
        is_norm: bool = False,
        stem: str = "imagenet",
        in_channels: int = 2048,
        channels: int = 512,
        kernel_size: int = 3,
        concat_input: bool = True,
        conv_bias: bool = False,
        input_normalization: Mapping[str, Sequence[float]] | None = None,
        block: str | None = None,
        block_factory: Any = None,
    ) -> None:
        super().__init__()
        if official_arch == "snl_head" and nl_type != "snl":
            raise ValueError(f"the SNL decode head has only nl_type 'snl', got {nl_type!r}")
        if nl_type == "cgnl":
            stage_num = 1
        nl_stages = sorted({int(s) for s in nl_stages})
        if official_arch != "resnet50":            # model_hub / the head force both
            is_sys = is_norm = True
        if official_arch in _PRERESNET and (not nl_stages or not set(nl_stages) <= {1, 2, 3}):
            raise ValueError(f"nl_stages must be a non-empty subset of [1, 2, 3], got {nl_stages}")
        self.arch = official_arch
        self.nl_type = nl_type
        self.nonlocal_paths: list[str] = []
        self._nl_sizes: dict[str, tuple[int, int]] = {}
        self.config: dict[str, Any] = {
            "arch": "official", "official_arch": official_arch, "nl_type": nl_type,
            "stage_num": stage_num, "num_classes": int(num_classes), "div": float(div),
            "block": block or f"official-{nl_type}",
        }
        self.input_affine: _InputAffine | None = None
        if input_normalization is not None:
            self.input_affine = _InputAffine(input_normalization)
            self.config["input_normalization"] = self.input_affine.spec

        def add_nl(path: str, c: int, sign: int = 1) -> nn.Module:
            cs = int(c / div)
            self.nonlocal_paths.append(path)
            self._nl_sizes[path] = (c, cs)
            return _nonlocal(nl_type, c, cs, stage_num, is_sys, is_norm, sign)

        if official_arch in _PRERESNET:
            kind, n = _PRERESNET[official_arch]
            e = 1 if kind == "basic" else 4
            self.pool_size = 8 if pool_size is None else int(pool_size)
            self.config.update(nl_stages=nl_stages, pool_size=self.pool_size)
            self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            c_in = 16
            for s, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
                units: list[nn.Module] = [PreActUnit(kind, c_in, planes, stride)]
                c_in = planes * e
                for i in range(1, n):
                    if s in nl_stages and i == 2:
                        units.append(add_nl(f"layer{s}.2", c_in))
                    units.append(PreActUnit(kind, c_in, planes))
                setattr(self, f"layer{s}", nn.Sequential(*units))
            self.bn1 = nn.BatchNorm2d(64 * e)
            self.fc1 = nn.Conv2d(64 * e, 64 * e, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(64 * e)
            self.dropout = nn.Dropout(0.5)
            self.fc2 = nn.Linear(64 * e, num_classes)
        elif official_arch == "resnet50":
            self.pool_size = (7 if stem == "imagenet" else 4) if pool_size is None \
                else int(pool_size)
            self.config.update(is_sys=bool(is_sys), is_norm=bool(is_norm), stem=stem,
                               pool_size=self.pool_size)
            if stem == "imagenet":
                self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
                self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
            else:
                self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
                self.maxpool = nn.Identity()
            self.bn1 = nn.BatchNorm2d(64)
            c_in = 64
            for s, (planes, n, stride) in enumerate(
                    ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
                units = [BottleneckUnit(c_in, planes, stride)]
                c_in = planes * 4
                for i in range(1, n):
                    if s == 3 and i == 5:
                        units.append(add_nl("layer3.5", c_in))
                    units.append(BottleneckUnit(c_in, planes))
                setattr(self, f"layer{s}", nn.Sequential(*units))
            self.dropout = nn.Dropout(0.5)
            self.fc = nn.Linear(2048, num_classes)
        else:
            self.config.update(in_channels=int(in_channels), channels=int(channels),
                               kernel_size=int(kernel_size), concat_input=bool(concat_input),
                               conv_bias=bool(conv_bias))
            self.convs = nn.Sequential(
                _ConvModule(in_channels, channels, kernel_size, conv_bias),
                _ConvModule(channels, channels, kernel_size, conv_bias))
            self.SNL = add_nl("SNL", channels, sign=-1)  # noqa: N815 - the official name
            self.concat_input = bool(concat_input)
            if self.concat_input:
                self.conv_cat = _ConvModule(in_channels + channels, channels, kernel_size,
                                            conv_bias)
            self.dropout = nn.Dropout2d(0.1)
            self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.official_differences = _differences(official_arch, nl_type, stage_num, is_sys,
                                                 is_norm)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_affine is not None:
            x = self.input_affine(x)
        if self.arch in _PRERESNET:
            x = self.layer3(self.layer2(self.layer1(self.conv(x))))
            x = self.fc1(torch.relu(self.bn1(x)))
            x = nn.functional.avg_pool2d(torch.relu(self.bn2(x)), self.pool_size, stride=1)
            return self.fc2(self.dropout(x.flatten(1)))
        if self.arch == "resnet50":
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = nn.functional.avg_pool2d(x, self.pool_size, stride=1)
            return self.fc(self.dropout(x.flatten(1)))
        out = self.convs[1](self.SNL(self.convs[0](x)))
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))

    def extra_repr(self) -> str:
        return f"official_arch={self.arch!r}, nl_type={self.nl_type!r}"


class _InputAffine(nn.Module):
    """``x -> (x * data_std + data_mean - mean) / std`` per channel (fixed buffers)."""

    def __init__(self, spec: Mapping[str, Sequence[float]]) -> None:
        super().__init__()
        keys = ("data_mean", "data_std", "mean", "std")
        if not isinstance(spec, Mapping) or set(spec) != set(keys):
            raise ValueError(f"input_normalization must be a dict with the keys {list(keys)}")
        vals = {k: [float(v) for v in spec[k]] for k in keys}
        if len({len(v) for v in vals.values()}) != 1 or any(
                s <= 0 for k in ("data_std", "std") for s in vals[k]):
            raise ValueError("input_normalization: four per-channel lists of one length, "
                             f"positive standard deviations; got {vals}")
        self.spec = vals
        dm, ds, m, sd = (torch.tensor(vals[k], dtype=torch.float64) for k in keys)
        self.register_buffer("scale", (ds / sd).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((dm - m) / sd).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


#: ``train_val.py``'s CIFAR input normalization
CIFAR_NORMALIZATION = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010)}


def _differences(arch: str, nl_type: str, stage_num: int, is_sys: bool, is_norm: bool
                 ) -> list[str]:
    snl_aff = arch in _PRERESNET or is_norm or nl_type == "snl"
    out = []
    if nl_type in ("nl", "ns", "a2", "dnl") and snl_aff:
        out.append(f"official {nl_type!r} uses the SNL affinity D^-1/2 ReLU(t)ᵀReLU(p) D^-1/2"
                   + (" (symmetrized)" if (arch in _PRERESNET or is_sys) else "")
                   + ", not the published block's kernel")
    if nl_type == "a2":
        out.append("official 'a2' is not double attention (no gather/distribute softmaxes): "
                   "an NL unit " + ("on the SNL affinity" if snl_aff else
                                    "on the raw ReLU(t)ᵀReLU(p), unnormalized"))
    if nl_type == "ns":
        out.append("official 'ns' is (I - Â) with " + ("the symmetric normalized Â, not "
                   "I - softmax" if snl_aff else "Â = softmax(tᵀp) (no biases)"))
    if nl_type == "dnl":
        out.append("official 'dnl' has no whitening; its unary term is added to Â per unit")
    if nl_type == "cgnl":
        out.append("official 'cgnl' normalizes with GroupNorm(1), has no ReLU, and ignores "
                   "stage_num")
    if nl_type in ("nl", "ns", "dnl") and not snl_aff:
        out.append(f"official {nl_type!r} uses softmax(tᵀp) without scaling, without "
                   "biases, with a ReLU after BN")
    return out


# ---------------------------------------------------------------------------------------------


def official_weight_map(model: OfficialNet) -> list[tuple[str, str, float, tuple[int, ...]]]:
    """``(library key, official key, scale, official shape)`` for every tensor of ``model``
    (``library = scale * official``, reshaped). Backbone keys map to themselves."""
    nl_keys: list[tuple[str, str, float, tuple[int, ...]]] = []
    stage_num = model.config["stage_num"]
    for path in model.nonlocal_paths:
        c, cs = model._nl_sizes[path]
        nl_keys += _nonlocal_map(model.nl_type, path + ".", path + ".", c, cs, stage_num)
    mapped = {k for k, *_ in nl_keys}
    own = model.state_dict()
    inside = tuple(p + "." for p in model.nonlocal_paths)
    out = []
    for k, v in own.items():
        if k.startswith(inside):
            if k not in mapped:
                raise RuntimeError(f"internal: no official key for {k!r}")  # pragma: no cover
            continue
        out.append((k, k, 1.0, tuple(v.shape)))
    return out + nl_keys


def official_state_dict(model: OfficialNet) -> dict[str, Tensor]:
    """The state dict of ``model`` under the official key names (the inverse of loading)."""
    own = model.state_dict()
    return {off: (own[lib] / scale if scale != 1.0 else own[lib]).reshape(shape).clone()
            for lib, off, scale, shape in official_weight_map(model)}


# ---------------------------------------------------------------------------------------------
# reading files


def _read(source: str | Path | Mapping[str, Any]) -> dict[str, Tensor]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(
                f"{str(path)!r} is not a checkpoint of the official SNL code: "
                f"torch.load(weights_only=True) refused it ({first}); it holds pickled "
                "objects beyond tensors and plain containers, which graphfilters never unpickles"
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError,
                TypeError, AttributeError) as exc:  # text: unpickler IndexError
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ValueError(
                f"{str(path)!r} is not a readable torch file (truncated or another format?): "
                f"{type(exc).__name__}: {first}"
            ) from exc
        where = repr(str(path))
    else:
        obj, where = source, "the state dict"
    if not isinstance(obj, Mapping):
        raise TypeError(f"{where} holds a {type(obj).__name__}, not a dict of tensors or a "
                        "{'state_dict': ...} checkpoint")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"{where}: entries that are not tensors: {sorted(map(str, bad))[:10]}")
    sd = {str(k): v for k, v in obj.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


_NL_PREFIX = re.compile(r"^layer([123])\.2\.(?:t\.weight|0\.query_conv\.weight)$")
_STAGE_UNIT = re.compile(r"\.stages\.(\d+)\.g\.weight$")
_CC_UNIT = re.compile(r"\.(\d+)\.query_conv\.weight$")


def _infer(sd: Mapping[str, Tensor], arch: str, nl_type: str, path: str) -> dict[str, Any]:
    """Stage positions, stage_num, channels and classes from the official keys."""
    info: dict[str, Any] = {}
    if arch in _PRERESNET:
        stages = sorted({int(m.group(1)) for k in sd if (m := _NL_PREFIX.match(k))})
        if not stages:
            raise ValueError(
                f"{path}: no nonlocal module found for a CIFAR PreResNet-{arch} with nl_type "
                f"{nl_type!r}: expected 'layerS.2.t.weight' (snl/nl/ns/a2/dnl/cgnl) or "
                f"'layerS.2.0.query_conv.weight' (cc); found keys "
                f"{sorted(sd)[:8]}{' ...' if len(sd) > 8 else ''}"
            )
        info["nl_stages"] = stages
        prefix = f"layer{stages[0]}.2"
        if "fc2.weight" in sd:
            info["num_classes"] = int(sd["fc2.weight"].shape[0])
    elif arch == "resnet50":
        prefix = "layer3.5"
        if "fc.weight" in sd:
            info["num_classes"] = int(sd["fc.weight"].shape[0])
        if "conv1.weight" in sd and sd["conv1.weight"].ndim == 4:
            info["stem"] = "cifar" if sd["conv1.weight"].shape[-1] == 3 else "imagenet"
    else:
        prefix = "SNL"
        w = sd.get("convs.0.conv.weight")
        if w is not None and w.ndim == 4:
            info.update(in_channels=int(w.shape[1]), channels=int(w.shape[0]),
                        kernel_size=int(w.shape[-1]))
        if "conv_seg.weight" in sd:
            info["num_classes"] = int(sd["conv_seg.weight"].shape[0])
        info["concat_input"] = any(k.startswith("conv_cat.") for k in sd)
        info["conv_bias"] = "convs.0.conv.bias" in sd
    # sizes of the nonlocal module
    key = {"cc": f"{prefix}.0.query_conv.weight"}.get(nl_type, f"{prefix}.t.weight")
    if key in sd and sd[key].ndim == 4:
        cs, c = int(sd[key].shape[0]), int(sd[key].shape[1])
        if cs > 0:
            info["div"] = c / cs
    pat = _CC_UNIT if nl_type == "cc" else _STAGE_UNIT
    units = {int(m.group(1)) for k in sd if k.startswith(prefix + ".") and
             (m := pat.search(k[len(prefix):]))}
    if units:
        info["stage_num"] = max(units) + 1
    return info


@V.validate_params(
    {"path_or_state_dict": [V.InstanceOf((str, Path, Mapping),
                                         "a path (str or pathlib.Path) or a state dict")],
     "arch": V.declared(OfficialNet.__init__, "official_arch"),
     "nl_type": V.declared(OfficialNet.__init__, "nl_type"),
     "stage_num": [V.POS_INT, None], "num_classes": [V.POS_INT, None],
     "is_sys": ["boolean"], "is_norm": ["boolean"], "pool_size": [V.POS_INT, None],
     "dtype": [V.InstanceOf(torch.dtype), None], "warn": ["boolean"]},
    valid=lambda: {"path_or_state_dict": official_state_dict(
        OfficialNet("20", "snl", stage_num=1, num_classes=2)), "arch": "20", "nl_type": "snl"},
)
def load_official(
    path_or_state_dict: str | Path | Mapping[str, Any],
    arch: str,
    nl_type: str,
    *,
    stage_num: int | None = None,
    num_classes: int | None = None,
    is_sys: bool = False,
    is_norm: bool = False,
    pool_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    warn: bool = True,
) -> OfficialNet:
    r"""Load a checkpoint of the official SNL code as the official code computes it.

    Parameters
    ----------
    path_or_state_dict : path or mapping
        A file saved by ``train_val.py`` (``{'state_dict': ...}``, keys with or without
        ``module.``), an mmseg checkpoint of the SNL head (``decode_head.*`` keys; the rest
        is ignored), or a bare state dict. Read with ``torch.load(weights_only=True)`` only.
    arch : {"20", "56", "110", "resnet50", "snl_head"}
        The official ``--arch`` (CIFAR PreResNet depth), the ImageNet ResNet-50, or the
        Cityscapes SNL decode head (a module taking the head's input feature).
    nl_type : {"snl", "nl", "ns", "a2", "dnl", "cgnl", "cc"}
        The official ``--nl-type`` (the head: ``snl``). nl, a2 and ns have the same keys:
        nothing in the file tells them apart, so give the one it was trained with.
    stage_num : int, optional
        Units per stage; read from the keys when omitted (an error if it disagrees).
    num_classes : int, optional
        Read from the classifier; an error if given and different.
    is_sys, is_norm : bool
        ResNet-50 only: ``train_val.py``'s ``--is_sys``/``--is_norm`` (default off, as there;
        not stored in the checkpoint). The PreResNets and the head force both on.
    pool_size : int, optional
        Final average pool (default: 8 for the PreResNets, 7 for the ResNet-50 with the
        ImageNet stem, 4 with train_val's CIFAR stem): the network's input size then is
        32 × 32 (224 × 224); for other input sizes pass the side of the last feature map.
    dtype : torch.dtype, optional
        Default: the checkpoint's floating dtype.
    device : str or torch.device
    warn : bool
        Warn (:class:`OfficialDifferenceWarning`) when the official computation differs from
        the published block of that name (the list is ``model.official_differences`` either
        way).

    Returns
    -------
    OfficialNet
        In eval mode.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        A file ``torch.load(weights_only=True)`` refuses (a foreign pickle), a truncated or
        non-torch file, or a state dict that does not fit ``arch``/``nl_type`` (the message
        names them and lists the missing, unexpected and misshaped keys).
    TypeError
        A file that holds something other than a dict of tensors.
    NotImplementedError
        ResNet-50 flag combinations no library kernel computes (``is_sys`` without
        ``is_norm`` for nl/ns/dnl: a softmax of symmetrized logits; ``is_norm`` without
        ``is_sys`` for the non-snl types: the non-symmetric ReLU-dot normalized by its row
        degrees on both sides).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.official import OfficialNet, load_official, official_state_dict
    >>> sd = official_state_dict(OfficialNet("20", "snl", stage_num=3, num_classes=10))
    >>> sorted(k[len("layer1.2."):] for k in sd if k.startswith("layer1.2."))[-4:]
    ['stages.2.g.weight', 'stages.2.w_1.weight', 'stages.2.w_2.weight', 't.weight']
    >>> model = load_official({"state_dict": sd}, "20", "snl")
    >>> model.config["stage_num"], model.nonlocal_paths
    (3, ['layer1.2'])
    """
    where = (repr(str(path_or_state_dict)) if isinstance(path_or_state_dict, (str, Path))
             else "the state dict")
    sd = _read(path_or_state_dict)
    if arch == "snl_head":
        heads = {k[len("decode_head."):]: v for k, v in sd.items()
                 if k.startswith("decode_head.")}
        sd = heads or sd
    what = f"an official {_arch_name(arch)} with nl_type {nl_type!r}"
    info = _infer(sd, arch, nl_type, where)
    for name, given in (("stage_num", stage_num), ("num_classes", num_classes)):
        if given is not None and name in info and info[name] != given and not (
                name == "stage_num" and nl_type == "cgnl"):
            raise ValueError(
                f"{where}: {name}={given} was given but the checkpoint has {info[name]} "
                f"(read from its keys as {what})"
            )
        if given is not None and name not in info:
            info[name] = given
    kwargs: dict[str, Any] = {k: v for k, v in info.items()}
    kwargs.setdefault("stage_num", 1)
    kwargs.setdefault("num_classes", 1000)
    if arch == "resnet50":
        kwargs.update(is_sys=bool(is_sys), is_norm=bool(is_norm))
    if pool_size is not None:
        kwargs["pool_size"] = pool_size
    try:
        model = OfficialNet(arch, nl_type, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cannot build {what} from it: {exc}") from exc
    mapping = official_weight_map(model)
    _check_keys(sd, mapping, arch, where, what)
    float_t = next((v for v in sd.values() if v.is_floating_point()), None)
    dt = dtype if dtype is not None else (float_t.dtype if float_t is not None else None)
    if dt is not None:
        model = model.to(dtype=dt)
    copy_weights(model, sd, [(lib, off, scale) for lib, off, scale, _ in mapping])
    model = model.to(device).eval()
    if warn and model.official_differences:
        warnings.warn(
            f"{what}: " + "; ".join(model.official_differences)
            + " (listed in model.official_differences)",
            OfficialDifferenceWarning, stacklevel=external_stacklevel(),
        )
    return model


def _arch_name(arch: str) -> str:
    if arch in _PRERESNET:
        return f"CIFAR PreResNet-{arch}"
    return {"resnet50": "ImageNet ResNet-50", "snl_head": "SNL decode head"}[arch]


def _check_keys(sd: Mapping[str, Tensor], mapping: list, arch: str, where: str, what: str
                ) -> None:
    expected = {off: shape for _, off, _, shape in mapping}
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    ignored = set(_UNUSED_CIFAR) if arch in _PRERESNET else set()
    missing = [k for k in expected if k not in sd and k not in optional]
    unexpected = sorted(k for k in sd if k not in expected and k not in ignored)
    misshaped = [f"{k}: got {tuple(sd[k].shape)}, expected {tuple(s)}"
                 for k, s in expected.items() if k in sd and tuple(sd[k].shape) != tuple(s)]
    if not (missing or unexpected or misshaped):
        return
    parts = []
    for name, items in (("missing", missing), ("unexpected", unexpected),
                        ("misshaped", misshaped)):
        if items:
            shown = items[:12]
            more = f" ... ({len(items)} in all)" if len(items) > 12 else ""
            parts.append(f"{name} keys {shown}{more}")
    raise ValueError(
        f"{where} does not fit {what}: " + "; ".join(parts)
        + ". Check arch and nl_type (nl, ns and a2 share their keys; snl adds w_1, dnl w_m, "
        "cgnl z/gn, cc query_conv/key_conv/value_conv)."
    )
