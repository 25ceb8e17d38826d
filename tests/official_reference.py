"""Test-only reconstruction of the official SNL code (github zh460045050/SNL_ICCV2021, HEAD
feeb4c2), written from reading ``SNL-Classification/model/{preresnet_snl,resnet_snl}.py``,
``model/nls/{basic,snl,nl,ns,dnl,cgnl,cc}.py``, ``train_val.py`` and
``SNL-MMSeg/snl_head.py``.

Plain dense torch, the official module names and nesting (so ``state_dict()`` has the real
key layout), CPU-safe (the official ``cgnl.py``/``cc.py`` call ``.cuda()``), nothing imported
from ``graphfilters``. :func:`save_like_train_val` writes a file the way ``train_val.py`` does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# nonlocal modules (model/nls)


class SNLUnit(nn.Module):
    def __init__(self, inplanes, planes, relu=True, sign=1):
        super().__init__()
        self.g = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn = nn.BatchNorm2d(inplanes)
        self.w_1 = nn.Conv2d(planes, inplanes, 1, bias=False)
        self.w_2 = nn.Conv2d(planes, inplanes, 1, bias=False)
        self.relu, self.sign = relu, sign

    def forward(self, x, att):
        g = self.g(x)
        b, c, h, w = g.shape
        gf = g.reshape(b, c, -1).transpose(1, 2)                    # (b, N, c)
        x2 = torch.bmm(att, gf).transpose(1, 2).reshape(b, c, h, w)
        out = self.w_1(g) + self.sign * self.w_2(x2)
        out = self.bn(out)
        if self.relu:
            out = torch.relu(out)
        return out + x


class NLUnit(nn.Module):                    # 'nl' and 'a2'
    def __init__(self, inplanes, planes):
        super().__init__()
        self.g = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn = nn.BatchNorm2d(inplanes)
        self.w_2 = nn.Conv2d(planes, inplanes, 1, bias=False)

    def forward(self, x, att):
        g = self.g(x)
        b, c, h, w = g.shape
        gf = g.reshape(b, c, -1).transpose(1, 2)
        x2 = torch.bmm(att, gf).transpose(1, 2).reshape(b, c, h, w)
        return torch.relu(self.bn(self.w_2(x2))) + x


class NSUnit(NLUnit):
    def forward(self, x, att):
        g = self.g(x)
        b, c, h, w = g.shape
        gf = g.reshape(b, c, -1).transpose(1, 2)
        x2 = torch.bmm(att, gf).transpose(1, 2).reshape(b, c, h, w)
        return torch.relu(self.bn(self.w_2(g) - self.w_2(x2))) + x


class DNLUnit(nn.Module):
    def __init__(self, inplanes, planes):
        super().__init__()
        self.g = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn = nn.BatchNorm2d(inplanes)
        self.w_m = nn.Conv2d(inplanes, 1, 1, bias=False)
        self.w_2 = nn.Conv2d(planes, inplanes, 1, bias=False)

    def forward(self, x, att):
        g = self.g(x)
        b, c, h, w = g.shape
        gf = g.reshape(b, c, -1).transpose(1, 2)
        u = torch.softmax(self.w_m(x).reshape(b, 1, -1), dim=-1)
        u = torch.matmul(u, gf).transpose(1, 2).reshape(b, c, 1, 1)
        x2 = torch.bmm(att, gf).transpose(1, 2).reshape(b, c, h, w)
        return torch.relu(self.bn(self.w_2(u + x2))) + x


_UNITS = {"snl": SNLUnit, "nl": NLUnit, "a2": NLUnit, "ns": NSUnit, "dnl": DNLUnit}


class Stage(nn.Module):
    """``model/nls/basic.py``: one affinity from the stage input, ``stage_num`` units."""

    def __init__(self, inplanes, planes, nl_type="snl", stage_num=1, is_sys=False,
                 is_norm=False):
        super().__init__()
        self.t = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.p = nn.Conv2d(inplanes, planes, 1, bias=False)
        if nl_type == "snl":               # HEAD forces the SNL affinity for 'snl'
            is_sys = is_norm = True
        self.is_sys, self.is_norm, self.nl_type = is_sys, is_norm, nl_type
        self.stages = nn.Sequential(*[_UNITS[nl_type](inplanes, planes)
                                      for _ in range(stage_num)])

    def affinity(self, x):
        t = self.t(x).flatten(2).transpose(1, 2)                    # (b, N, c)
        p = self.p(x).flatten(2)                                    # (b, c, N)
        if self.is_norm:
            att = torch.bmm(torch.relu(t), torch.relu(p))
            if self.is_sys:
                att = (att + att.transpose(1, 2)) / 2
            d = att.sum(dim=2)
            nz = d != 0
            d = d.clone()
            d[nz] = torch.sqrt(1.0 / d[nz])
            return att * d.unsqueeze(1) * d.unsqueeze(2)
        att = torch.bmm(t, p) if self.nl_type != "a2" else torch.bmm(torch.relu(t),
                                                                       torch.relu(p))
        if self.is_sys:
            att = (att + att.transpose(1, 2)) / 2
        if self.nl_type != "a2":
            att = torch.softmax(att, dim=2)
        return att

    def forward(self, x):
        att = self.affinity(x)
        for unit in self.stages:
            x = unit(x, att)
        return x


class SpatialCGNLx(nn.Module):
    """``model/nls/cgnl.py`` (groups 1, Taylor order 2, gamma 1e-4, beta = exp(-2 gamma))."""

    def __init__(self, inplanes, planes, groups=1, order=2):
        super().__init__()
        self.groups, self.order = groups, order
        self.t = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.p = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.g = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.z = nn.Conv2d(planes, inplanes, 1, groups=groups, bias=False)
        self.gn = nn.GroupNorm(num_groups=groups, num_channels=inplanes)

    def kernel(self, t, p, g, b, c, h, w):
        t = t.reshape(b, 1, c * h * w)
        p = p.reshape(b, 1, c * h * w)
        g = g.reshape(b, c * h * w, 1)
        gamma = 1e-4
        beta = math.exp(-2 * gamma)
        ts, ps = [], []
        for k in range(self.order + 1):
            alpha = math.sqrt((2 * gamma) ** k / math.factorial(k) * beta)
            ts.append(t.pow(k) * alpha)
            ps.append(p.pow(k) * alpha)
        ts, ps = torch.cat(ts, 1), torch.cat(ps, 1)                 # (b, P+1, cN)
        att = torch.bmm(ps, g).reshape(b, 1, self.order + 1)
        return torch.bmm(att, ts).reshape(b, c, h, w)

    def forward(self, x):
        t, p, g = self.t(x), self.p(x), self.g(x)
        b, c, h, w = t.shape
        if self.groups > 1:
            cg = c // self.groups
            parts = [self.kernel(ti, pi, gi, b, cg, h, w) for ti, pi, gi in
                     zip(t.split(cg, 1), p.split(cg, 1), g.split(cg, 1))]
            y = torch.cat(parts, 1)
        else:
            y = self.kernel(t, p, g, b, c, h, w)
        return self.gn(self.z(y)) + x


class CrissCrossAttention(nn.Module):
    """``model/nls/cc.py`` (the -inf diagonal built on the input's device)."""

    def __init__(self, in_dim, sub_dim):
        super().__init__()
        self.query_conv = nn.Conv2d(in_dim, sub_dim, 1)
        self.key_conv = nn.Conv2d(in_dim, sub_dim, 1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        # energies along the column (over rows h') and along the row (over columns w')
        e_h = torch.einsum("bcij,bckj->bijk", q, k)                 # (b, h, w, h')
        eye = torch.eye(h, dtype=torch.bool, device=x.device)
        e_h = e_h.masked_fill(eye[:, None, :], float("-inf"))
        e_w = torch.einsum("bcij,bcik->bijk", q, k)                 # (b, h, w, w')
        att = torch.softmax(torch.cat([e_h, e_w], 3), dim=3)
        a_h, a_w = att[..., :h], att[..., h:]
        out_h = torch.einsum("bijk,bckj->bcij", a_h, v)
        out_w = torch.einsum("bijk,bcik->bcij", a_w, v)
        return self.gamma * (out_h + out_w) + x


def add_nonlocal(in_planes, sub_planes, nl_type, stage_num, is_sys, is_norm):
    """``_addNonlocal`` of preresnet_snl.py / resnet_snl.py."""
    if nl_type == "cgnl":
        return SpatialCGNLx(in_planes, sub_planes)
    if nl_type == "cc":
        return nn.Sequential(*[CrissCrossAttention(in_planes, sub_planes)
                               for _ in range(stage_num)])
    return Stage(in_planes, sub_planes, nl_type=nl_type, stage_num=stage_num, is_sys=is_sys,
                 is_norm=is_norm)


# ---------------------------------------------------------------------------------------------
# CIFAR PreResNet (preresnet_snl.py; the second _make_layer, which is the one Python keeps)


class PreBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.downsample = downsample

    def forward(self, x):
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + (self.downsample(x) if self.downsample is not None else x)


class PreBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.downsample = downsample

    def forward(self, x):
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        out = self.conv3(torch.relu(self.bn3(out)))
        return out + (self.downsample(x) if self.downsample is not None else x)


class PreResNet(nn.Module):
    def __init__(self, arch="20", nl_type="snl", stage_num=1, nl_layer=("1",), pool_size=8,
                 num_classes=1000, div=2):
        super().__init__()
        block, layers = {"20": (PreBasicBlock, 3), "56": (PreBottleneck, 9),
                         "110": (PreBottleneck, 18)}[arch]
        self.inplanes = 16
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        for s, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            setattr(self, f"layer{s}", self._make_layer(
                block, planes, layers, stride, str(s) in nl_layer, nl_type, stage_num, div))
        e = block.expansion
        self.bn1 = nn.BatchNorm2d(64 * e)
        self.fc1 = nn.Conv2d(64 * e, 64 * e, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64 * e)
        self.fc2 = nn.Linear(64 * e, num_classes)
        self.avgpool = nn.AvgPool2d(pool_size, stride=1)
        self.dropout = nn.Dropout(0.5)

    def _make_layer(self, block, planes, blocks, stride, with_nl, nl_type, stage_num, div):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        sub = int(self.inplanes / div)
        for i in range(1, blocks):
            if with_nl and i == 2:
                layers.append(add_nonlocal(self.inplanes, sub, nl_type, stage_num, True, True))
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.fc1(torch.relu(self.bn1(x)))
        x = self.avgpool(torch.relu(self.bn2(x)))
        return self.fc2(self.dropout(x.flatten(1)))


# ---------------------------------------------------------------------------------------------
# ImageNet ResNet-50 (resnet_snl.py, nl_nums = 1: the block before the last unit of layer3)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.downsample(x) if self.downsample is not None else x
        return torch.relu(out + res)


class ResNet50(nn.Module):
    def __init__(self, nl_type="snl", stage_num=1, is_sys=False, is_norm=False, pool_size=7,
                 num_classes=1000, div=2, cifar_stem=False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 3, 1)
        self.layer2 = self._make_layer(128, 4, 2)
        self.layer3 = self._make_layer(256, 6, 2, (nl_type, stage_num, is_sys, is_norm, div))
        self.layer4 = self._make_layer(512, 3, 2)
        self.avgpool = nn.AvgPool2d(pool_size, stride=1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(2048, num_classes)
        if cifar_stem:                      # train_val.py for cifar10/100
            self._modules["conv1"] = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self._modules["maxpool"] = nn.Sequential()

    def _make_layer(self, planes, blocks, stride, nl=None):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        for i in range(1, blocks):
            if nl is not None and i == 5 and blocks == 6:
                nl_type, stage_num, is_sys, is_norm, div = nl
                layers.append(add_nonlocal(self.inplanes, int(self.inplanes / div), nl_type,
                                           stage_num, is_sys, is_norm))
            layers.append(Bottleneck(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


# ---------------------------------------------------------------------------------------------
# Cityscapes SNL head (SNL-MMSeg/snl_head.py on mmseg's FCNHead; mmcv ConvModule names)


class ConvModule(nn.Module):
    def __init__(self, c_in, c_out, k):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class SNLStage(nn.Module):
    def __init__(self, inplanes, planes, stage_num=1):
        super().__init__()
        self.t = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.p = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.stages = nn.Sequential(*[SNLUnit(inplanes, planes, relu=True, sign=-1)
                                      for _ in range(stage_num)])

    def affinity(self, x):
        t = torch.relu(self.t(x).flatten(2).transpose(1, 2))
        p = torch.relu(self.p(x).flatten(2))
        att = torch.bmm(t, p)
        att = (att + att.transpose(1, 2)) / 2    # the official in-place += fails on torch 2
        d = att.sum(dim=2)
        nz = d != 0
        d = d.clone()
        d[nz] = torch.sqrt(1.0 / d[nz])
        return att * d.unsqueeze(1) * d.unsqueeze(2)

    def forward(self, x):
        att = self.affinity(x)
        for unit in self.stages:
            x = unit(x, att)
        return x


class SNLHead(nn.Module):
    """``decode_head`` of an mmseg segmentor: input the selected backbone feature."""

    def __init__(self, in_channels=16, channels=8, num_classes=19, reduction=2, stage_num=1,
                 kernel_size=3, concat_input=True):
        super().__init__()
        self.convs = nn.Sequential(ConvModule(in_channels, channels, kernel_size),
                                   ConvModule(channels, channels, kernel_size))
        self.SNL = SNLStage(channels, int(channels / reduction), stage_num)  # noqa: N815
        self.concat_input = concat_input
        if concat_input:
            self.conv_cat = ConvModule(in_channels + channels, channels, kernel_size)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)

    def forward(self, x):
        out = self.convs[1](self.SNL(self.convs[0](x)))
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))


class Segmentor(nn.Module):
    """Only the head (the backbone's keys are ignored by the loader); ``decode_head.`` keys."""

    def __init__(self, **kw):
        super().__init__()
        self.decode_head = SNLHead(**kw)
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3))   # a stand-in: keys to be ignored


# ---------------------------------------------------------------------------------------------


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, random BN/GN affine and BN statistics; float64, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if name.endswith("gamma") else (1.0 / math.sqrt(max(p[0].numel(), 1))
                                                        if p.ndim > 1 else 0.3)
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen,
                                                 dtype=torch.float64) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen,
                                               dtype=torch.float64) + 0.5)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def save_like_train_val(model: nn.Module, path, data_parallel: bool = False,
                        cifar_extras: bool = False, num_classes: int = 10) -> None:
    """``torch.save({'epoch', 'state_dict', 'best_prec1', 'optimizer'})`` as train_val.py does
    (DataParallel adds ``module.``; for CIFAR it attaches unused ``conv1``/``maxpool``/``fc``)."""
    if cifar_extras:
        model._modules["conv1"] = nn.Conv2d(3, 64, 3, 1, 1, bias=False).double()
        model._modules["maxpool"] = nn.Sequential()
        model._modules["fc"] = nn.Linear(2048, num_classes).double()
    sd = model.state_dict()
    if data_parallel:
        sd = {"module." + k: v for k, v in sd.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    torch.save({"epoch": 5, "state_dict": sd, "best_prec1": torch.tensor(12.5),
                "optimizer": opt.state_dict()}, path)


def unit_inputs(model: nn.Module, path: str, x: Tensor) -> Tensor:
    """The input of the submodule at ``path`` for the model input ``x``."""
    seen = {}
    mod = model.get_submodule(path)
    def hook(module, args):
        seen.setdefault("x", args[0])          # returns None: the call is not changed

    h = mod.register_forward_pre_hook(hook)
    try:
        model(x)
    finally:
        h.remove()
    return seen["x"]
