r"""Original-form reference implementations of the nonlocal blocks.

Each module here is written from its paper (or, for SNL, the official code), in plain dense
torch, the way the authors wrote it: it forms the ``N x N`` affinity and knows nothing of graph
filters. These modules exist so that the equivalence of every block with its configuration of
:class:`~graphfilters.blocks.GraphFilterNonlocal` is *tested*, not assumed (see
``tests/test_blocks.py`` and each named block's ``from_reference``). They deliberately import
nothing from :mod:`graphfilters` (not the graph, Chebyshev or kernel code).

All blocks take ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, T, H, W)`` (``dim`` = 1, 2, 3) and
flatten the positions to ``N``. Output normalizations are zero-initialized BatchNorms (a fresh
block is the identity), except criss-cross attention (a zero-initialized :math:`\gamma`).

=========================  ==============================================================
module                     forward (``Z`` = ``g(x)`` as ``(B, N, C_s)``)
=========================  ==============================================================
:class:`NonLocalRef`       ``x + BN(W_z(f(θ, φ) g))`` (Wang et al. 2018, four modes)
:class:`NonlocalStageRef`  ``x_{u+1} = x_u + BN(W_z Σ_j ω_ij (g_j − g_i))`` (Tao et al. 2018)
:class:`DoubleAttentionRef` gather (softmax over positions), distribute (over descriptors)
:class:`CGNLRef`           grouped Taylor-RBF over channel×position (Yue et al. 2018)
:class:`CrissCrossRef`     ``x + γ softmax_{row+column}(qᵀk) v`` (Huang et al. 2019)
:class:`DisentangledNonLocalRef` whitened pairwise + unary softmax (Yin et al. 2020)
:class:`OfficialSNL`       the official SNL stage (Zhu et al. 2021) with one unit
:class:`OfficialSNLStage`  the official SNL stage: one affinity, ``n`` units
:class:`GSNLRef`           gSNL with :math:`2\hat A^2 - I` or :math:`2\hat A - I`
:class:`GFSARef`           GFSA as released (``(K-1)(attn - I) @ attn + attn``, Choi et al. 2024)
:class:`AttnScaleRef`      AttnScale as released (``attn_d + (1 + λ)(attn - attn_d)``, Wang 2022)
=========================  ==============================================================

Examples
--------
>>> import torch
>>> from graphfilters.blocks.reference import NonLocalRef
>>> ref = NonLocalRef(8, dim=2)
>>> x = torch.randn(2, 8, 4, 4)
>>> torch.equal(ref(x), x)                   # zero-initialized BN: the identity at start
True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "DiffAttentionRef",
    "EfficientAttentionRef",
    "NonLocalRef",
    "NonlocalStageRef",
    "DoubleAttentionRef",
    "CGNLRef",
    "CrissCrossRef",
    "DisentangledNonLocalRef",
    "OfficialSNLUnit",
    "OfficialSNL",
    "OfficialSNLStage",
    "GSNLRef",
    "official_snl_affinity",
    "GFSARef",
    "AttnScaleRef",
]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _conv(dim: int, c_in: int, c_out: int, bias: bool = True, groups: int = 1) -> nn.Module:
    if dim not in _CONV:
        raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
    return _CONV[dim](c_in, c_out, kernel_size=1, bias=bias, groups=groups)


def _bn(dim: int, channels: int) -> nn.Module:
    bn = _BN[dim](channels)
    nn.init.zeros_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


def _pool(dim: int) -> nn.Module:
    if dim == 3:
        return nn.MaxPool3d(kernel_size=(1, 2, 2))
    return (nn.MaxPool1d if dim == 1 else nn.MaxPool2d)(kernel_size=2)


def _nodes(x: Tensor) -> Tensor:
    """``(B, C, *spatial)`` -> ``(B, N, C)``."""
    return x.flatten(2).permute(0, 2, 1)


def _maps(y: Tensor, like: Tensor) -> Tensor:
    """``(B, N, C)`` -> ``(B, C, *spatial of like)``."""
    return y.permute(0, 2, 1).contiguous().view(y.shape[0], y.shape[2], *like.shape[2:])


class NonLocalRef(nn.Module):
    r"""Non-local block of Wang, Girshick, Gupta, He (CVPR 2018), as in the authors' code.

    .. math::

        y = x + \mathrm{BN}\big(W_z\, f(\theta(x), \phi(x))\, g(x)\big)

    with ``f`` the embedded Gaussian :math:`\operatorname{softmax}(\theta^T\phi)`, the dot
    product :math:`\theta^T\phi / N`, the Gaussian :math:`\operatorname{softmax}(x^Tx)` or the
    concatenation :math:`\operatorname{ReLU}(w_f^T[\theta_i; \phi_j]) / N`; with
    ``sub_sample`` the keys (``φ`` and ``g``) are max-pooled by 2 (``N`` becomes the number
    of keys). Attribute names follow the popular PyTorch port: ``g``, ``theta``, ``phi``,
    ``concat_project``, ``W_z``, ``bn``.
    """

    MODES = ("embedded_gaussian", "dot_product", "gaussian", "concatenation")

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        mode: str = "embedded_gaussian",
        dim: int = 2,
        sub_sample: bool = False,
    ) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {list(self.MODES)}")
        c_s = inter_channels or max(in_channels // 2, 1)
        self.in_channels, self.inter_channels, self.mode, self.dim = in_channels, c_s, mode, dim
        self.sub_sample = sub_sample
        self.g = _conv(dim, in_channels, c_s)
        if mode != "gaussian":
            self.theta = _conv(dim, in_channels, c_s)
            self.phi = _conv(dim, in_channels, c_s)
        if mode == "concatenation":
            # the (B, 2C_s, N, N') pair map is an image whatever dim is
            self.concat_project = nn.Conv2d(2 * c_s, 1, kernel_size=1, bias=False)
        self.W_z = _conv(dim, c_s, in_channels)
        self.bn = _bn(dim, in_channels)
        self.pool = _pool(dim) if sub_sample else nn.Identity()

    def affinity(self, x: Tensor) -> Tensor:
        """The ``(B, N, N')`` affinity ``f`` (rows: queries, columns: keys)."""
        if self.mode == "gaussian":
            theta_x = _nodes(x)
            phi_x = self.pool(x).flatten(2)
        else:
            theta_x = _nodes(self.theta(x))
            phi_x = self.pool(self.phi(x)).flatten(2)
        n_keys = phi_x.shape[-1]
        if self.mode in ("embedded_gaussian", "gaussian"):
            return torch.softmax(theta_x @ phi_x, dim=-1)
        if self.mode == "dot_product":
            return (theta_x @ phi_x) / n_keys
        n = theta_x.shape[1]
        t = theta_x.permute(0, 2, 1)[..., :, None].expand(-1, -1, -1, n_keys)
        p = phi_x[..., None, :].expand(-1, -1, n, -1)
        f = torch.relu(self.concat_project(torch.cat([t, p], dim=1)))
        return f.view(x.shape[0], n, n_keys) / n_keys

    def forward(self, x: Tensor, return_affinity: bool = False):
        g_x = _nodes(self.pool(self.g(x)))
        f = self.affinity(x)
        y = _maps(f @ g_x, x)
        out = x + self.bn(self.W_z(y))
        return (out, f) if return_affinity else out


class _NSUnitRef(nn.Module):
    def __init__(self, in_channels: int, c_s: int, dim: int) -> None:
        super().__init__()
        self.g = _conv(dim, in_channels, c_s)
        self.W_z = _conv(dim, c_s, in_channels)
        self.bn = _bn(dim, in_channels)

    def forward(self, x: Tensor, omega: Tensor) -> Tensor:
        g_x = _nodes(self.g(x))
        # Tao et al.: sum_j w_ij (g(x_j) - g(x_i))
        diff = omega @ g_x - omega.sum(-1, keepdim=True) * g_x
        return x + self.bn(self.W_z(_maps(diff, x)))


class NonlocalStageRef(nn.Module):
    r"""Nonlocal stage of Tao, Sun, Du, Liu (NeurIPS 2018).

    The weights :math:`\omega = \operatorname{softmax}(\theta(x_0)^T \phi(x_0))` are computed
    once from the stage input :math:`x_0` and shared by the ``n_units`` units, each a
    forward-Euler step of nonlocal diffusion

    .. math::

        x_{u+1} = x_u + \mathrm{BN}\Big(W_z \sum_j \omega_{ij}\,
        \big(g(x_u)_j - g(x_u)_i\big)\Big).

    Attributes: ``theta``, ``phi`` (stage), ``units[u].g``, ``units[u].W_z``, ``units[u].bn``.
    """

    def __init__(
        self, in_channels: int, inter_channels: int | None = None, n_units: int = 1, dim: int = 2
    ) -> None:
        super().__init__()
        c_s = inter_channels or max(in_channels // 2, 1)
        self.in_channels, self.inter_channels, self.dim = in_channels, c_s, dim
        self.theta = _conv(dim, in_channels, c_s)
        self.phi = _conv(dim, in_channels, c_s)
        self.units = nn.ModuleList(_NSUnitRef(in_channels, c_s, dim) for _ in range(n_units))

    def affinity(self, x: Tensor) -> Tensor:
        return torch.softmax(_nodes(self.theta(x)) @ self.phi(x).flatten(2), dim=-1)

    def forward(self, x: Tensor, return_affinity: bool = False):
        omega = self.affinity(x)
        for unit in self.units:
            x = unit(x, omega)
        return (x, omega) if return_affinity else x


class DoubleAttentionRef(nn.Module):
    r"""Double attention (A²) block of Chen, Kalantidis, Li, Yan, Feng (NeurIPS 2018).

    Gather: :math:`G = A\, \operatorname{softmax}_{N}(B)^T` (``c_m x c_n``: each of the
    ``c_n`` global descriptors is an attention-weighted sum over positions). Distribute:
    :math:`Z = G\, \operatorname{softmax}_{c_n}(V)` (each position mixes the descriptors).
    Output :math:`x + \mathrm{BN}(W_{out} Z)`. Attributes ``convA`` (features, ``c_m``),
    ``convB`` (gathering attention maps, ``c_n``), ``convV`` (distribution attention vectors,
    ``c_n``), ``conv_out``, ``bn``.
    """

    def __init__(
        self, in_channels: int, c_m: int | None = None, c_n: int | None = None, dim: int = 2
    ) -> None:
        super().__init__()
        c_m = c_m or max(in_channels // 2, 1)
        c_n = c_n or c_m
        self.in_channels, self.c_m, self.c_n, self.dim = in_channels, c_m, c_n, dim
        self.convA = _conv(dim, in_channels, c_m)
        self.convB = _conv(dim, in_channels, c_n)
        self.convV = _conv(dim, in_channels, c_n)
        self.conv_out = _conv(dim, c_m, in_channels)
        self.bn = _bn(dim, in_channels)

    def forward(self, x: Tensor, return_affinity: bool = False):
        feats = self.convA(x).flatten(2)                       # (B, c_m, N)
        gather = torch.softmax(self.convB(x).flatten(2), -1)   # (B, c_n, N): over positions
        distribute = torch.softmax(self.convV(x).flatten(2), 1)  # (B, c_n, N): over descriptors
        descriptors = feats @ gather.transpose(1, 2)           # (B, c_m, c_n)
        z = (descriptors @ distribute).view(x.shape[0], self.c_m, *x.shape[2:])
        out = x + self.bn(self.conv_out(z))
        if return_affinity:
            return out, distribute.transpose(1, 2) @ gather    # S_d S_g^T, (B, N, N)
        return out


class CGNLRef(nn.Module):
    r"""Compact generalized non-local block of Yue et al. (NeurIPS 2018), Gaussian RBF kernel.

    Every (channel, position) pair of a channel group is a node (``M = C_g N`` nodes, the
    channel-major order of ``view(b, 1, c*h*w)`` in the authors' code). The kernel is the
    Gaussian RBF expanded to Taylor order ``P``,

    .. math::

        f(t_i, p_j) = \beta_{ij} \sum_{q=0}^{P} \frac{(2\gamma)^q}{q!}\, t_i^q\, p_j^q,

    with :math:`\beta_{ij} = e^{-\gamma t_i^2} e^{-\gamma p_j^2}` (``beta=None``) or the
    constant :math:`\beta = e^{-2\gamma}` of the authors' code (``beta="code"``), and
    :math:`y_i = \sum_j f(t_i, p_j)\, g_j`. Groups are concatenated and mixed by the grouped
    1×1 convolution ``z``; output :math:`x + \mathrm{BN}(z(y))` (the authors use GroupNorm;
    this toolkit uses a zero-initialized BN for every block). No biases, as in their code.
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        groups: int = 1,
        taylor_order: int = 2,
        gamma: float = 1e-4,
        beta: float | str | None = "code",
        dim: int = 2,
    ) -> None:
        super().__init__()
        c_s = inter_channels or max(in_channels // 2, 1)
        self.in_channels, self.inter_channels, self.dim = in_channels, c_s, dim
        self.groups, self.taylor_order, self.gamma, self.beta = groups, taylor_order, gamma, beta
        self.t = _conv(dim, in_channels, c_s, bias=False)
        self.p = _conv(dim, in_channels, c_s, bias=False)
        self.g = _conv(dim, in_channels, c_s, bias=False)
        self.z = _conv(dim, c_s, in_channels, bias=False, groups=groups)
        self.bn = _bn(dim, in_channels)

    def kernel_matrix(self, t: Tensor, p: Tensor) -> Tensor:
        """Dense ``(B, M, M)`` Taylor-RBF kernel between scalar nodes ``t, p: (B, M)``."""
        gamma = self.gamma
        f = 0.0
        for q in range(self.taylor_order + 1):
            c = (2 * gamma) ** q / math.factorial(q)
            f = f + c * t[:, :, None] ** q * p[:, None, :] ** q
        if self.beta is None:
            f = f * torch.exp(-gamma * t**2)[:, :, None] * torch.exp(-gamma * p**2)[:, None, :]
        else:
            f = f * (math.exp(-2 * gamma) if self.beta == "code" else float(self.beta))
        return f

    def forward(self, x: Tensor, return_affinity: bool = False):
        b = x.shape[0]
        t, p, g = self.t(x), self.p(x), self.g(x)
        cg = self.inter_channels // self.groups
        outs, kernels = [], []
        for ts, ps, gs in zip(t.split(cg, 1), p.split(cg, 1), g.split(cg, 1)):
            f = self.kernel_matrix(ts.reshape(b, -1), ps.reshape(b, -1))
            outs.append((f @ gs.reshape(b, -1, 1)).view_as(gs))
            kernels.append(f)
        y = torch.cat(outs, 1)
        out = x + self.bn(self.z(y))
        return (out, torch.stack(kernels, 1)) if return_affinity else out


def _criss_cross_mask(spatial: tuple[int, ...], device: torch.device) -> Tensor:
    """``(N, N)`` boolean mask: positions that share all coordinates but (at most) one."""
    grids = torch.meshgrid(*[torch.arange(s, device=device) for s in spatial], indexing="ij")
    coords = torch.stack([c.reshape(-1) for c in grids], -1)        # (N, d)
    differ = (coords[:, None, :] != coords[None, :, :]).sum(-1)     # (N, N)
    return differ <= 1


class CrissCrossRef(nn.Module):
    r"""Criss-cross attention of Huang et al. (CCNet, ICCV 2019).

    For a position :math:`u`, the energies :math:`q_u^T k_v` over the positions :math:`v` in
    its row and its column (``H + W - 1`` of them: CCNet masks the column's copy of :math:`u`
    with :math:`-\infty` so it is counted once), one softmax over all of them, and

    .. math::

        y_u = x_u + \gamma \sum_{v \in \mathcal C(u)} \operatorname{softmax}(q_u^T k_v)\, v_v .

    For ``dim = 1`` the "row and column" is the whole sequence; for ``dim = 3`` the lines
    through ``u`` along T, H and W (the 3D criss-cross of CCNet's video version). Written
    densely: the ``N x N`` energies with the non-criss-cross entries masked. Attributes
    ``query_conv``, ``key_conv`` (``C -> C/8``), ``value_conv`` (``C -> C``), ``gamma``.
    """

    def __init__(self, in_channels: int, qk_channels: int | None = None, dim: int = 2) -> None:
        super().__init__()
        qk = qk_channels or max(in_channels // 8, 1)
        self.in_channels, self.qk_channels, self.dim = in_channels, qk, dim
        self.query_conv = _conv(dim, in_channels, qk)
        self.key_conv = _conv(dim, in_channels, qk)
        self.value_conv = _conv(dim, in_channels, in_channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    def affinity(self, x: Tensor) -> Tensor:
        q, k = _nodes(self.query_conv(x)), _nodes(self.key_conv(x))
        energy = q @ k.transpose(1, 2)
        mask = _criss_cross_mask(tuple(x.shape[2:]), x.device)
        return torch.softmax(energy.masked_fill(~mask, float("-inf")), dim=-1)

    def forward(self, x: Tensor, return_affinity: bool = False):
        att = self.affinity(x)
        out = _maps(att @ _nodes(self.value_conv(x)), x)
        y = self.gamma * out + x
        return (y, att) if return_affinity else y


class DisentangledNonLocalRef(nn.Module):
    r"""Disentangled non-local block of Yin et al. (ECCV 2020), as in their mmseg code.

    .. math::

        y = x + \mathrm{BN}\Big(W_{out}\big(\operatorname{softmax}\big(
        (\theta - \mu_\theta)(\phi - \mu_\phi)^T / (\sqrt{C_s}\, \tau)\big) g
        + \mathbf 1 \operatorname{softmax}_N(m(x))^T g\big)\Big),

    a whitened pairwise term (means over positions subtracted) and a unary term (``m`` a
    ``C -> 1`` conv, softmax over positions: every query gets the same salience-weighted
    value). ``use_scale`` divides by :math:`\sqrt{C_s}`; ``temperature`` :math:`\tau`.
    Attributes ``g``, ``theta``, ``phi``, ``conv_mask``, ``conv_out``, ``bn``.
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        temperature: float = 0.05,
        use_scale: bool = True,
        dim: int = 2,
    ) -> None:
        super().__init__()
        c_s = inter_channels or max(in_channels // 2, 1)
        self.in_channels, self.inter_channels, self.dim = in_channels, c_s, dim
        self.temperature, self.use_scale = temperature, use_scale
        self.g = _conv(dim, in_channels, c_s)
        self.theta = _conv(dim, in_channels, c_s)
        self.phi = _conv(dim, in_channels, c_s)
        self.conv_mask = _conv(dim, in_channels, 1)
        self.conv_out = _conv(dim, c_s, in_channels)
        self.bn = _bn(dim, in_channels)

    def pairwise(self, x: Tensor) -> Tensor:
        theta_x = _nodes(self.theta(x))
        phi_x = self.phi(x).flatten(2)
        theta_x = theta_x - theta_x.mean(dim=-2, keepdim=True)
        phi_x = phi_x - phi_x.mean(dim=-1, keepdim=True)
        w = theta_x @ phi_x
        if self.use_scale:
            w = w / theta_x.shape[-1] ** 0.5
        return torch.softmax(w / self.temperature, dim=-1)

    def unary(self, x: Tensor) -> Tensor:
        return torch.softmax(self.conv_mask(x).view(x.shape[0], 1, -1), dim=-1)   # (B, 1, N)

    def forward(self, x: Tensor, return_affinity: bool = False):
        g_x = _nodes(self.g(x))
        pairwise = self.pairwise(x)
        unary = self.unary(x)
        y = pairwise @ g_x + unary @ g_x          # (B, N, C_s) + (B, 1, C_s)
        out = x + self.bn(self.conv_out(_maps(y, x)))
        return (out, pairwise + unary) if return_affinity else out


def official_snl_affinity(t: Tensor, p: Tensor) -> Tensor:
    r"""The official SNL stage kernel (``DotKernel``), verbatim in spirit.

    ``att = ReLU(t)ᵀReLU(p)``, ``att = (att + attᵀ)/2``, ``d = att.sum(2)``,
    ``d[d != 0] = sqrt(1/d[d != 0])`` (zero degrees stay 0), ``att = d_i att_ij d_j``.
    ``t, p``: ``(B, C_s, *spatial)``; returns ``(B, N, N)``.
    """
    b, c = t.shape[:2]
    t = t.reshape(b, c, -1).permute(0, 2, 1)
    p = p.reshape(b, c, -1)
    att = torch.bmm(torch.relu(t), torch.relu(p))
    att = (att + att.permute(0, 2, 1)) / 2
    d = torch.sum(att, dim=2)
    d[d != 0] = torch.sqrt(1.0 / d[d != 0])
    return att * d.unsqueeze(1) * d.unsqueeze(2)


class OfficialSNLUnit(nn.Module):
    r"""One unit of the official SNL code (``SNLUnit`` of ``model/nls/snl.py``).

    .. math::

        y = x + \mathrm{ReLU}\big(\mathrm{BN}(w_1(g(x)) \pm w_2(\hat A\, g(x)))\big)

    ``g``: ``C -> C_s``, ``w_1``, ``w_2``: ``C_s -> C``, 1×1 convolutions without bias; ``bn``
    (the official names). ``relu=False`` drops the ReLU (the paper's Figure 2); ``sign=-1``
    subtracts the order-1 term (the official segmentation head).
    """

    def __init__(
        self, inplanes: int, planes: int, dim: int = 2, relu: bool = True, sign: int = 1
    ) -> None:
        super().__init__()
        self.in_channels, self.inter_channels, self.dim = inplanes, planes, dim
        self.relu, self.sign = relu, sign
        self.g = _conv(dim, inplanes, planes, bias=False)
        self.bn = _bn(dim, inplanes)
        self.w_1 = _conv(dim, planes, inplanes, bias=False)
        self.w_2 = _conv(dim, planes, inplanes, bias=False)

    def forward(self, x: Tensor, att: Tensor) -> Tensor:
        residual = x
        g = self.g(x)
        b, c = g.shape[:2]
        g_nodes = g.view(b, c, -1).permute(0, 2, 1)
        out = self.w_1(g)
        x_2 = att.bmm(g_nodes).permute(0, 2, 1).contiguous().view(b, c, *g.shape[2:])
        out = out + self.sign * self.w_2(x_2)
        out = self.bn(out)
        if self.relu:
            out = torch.relu(out)
        return out + residual


class OfficialSNLStage(nn.Module):
    """The official SNL stage (``Stage`` of ``model/nls/basic.py`` with ``nl_type='snl'``):
    ``n_units`` units sharing one affinity computed from the stage input.

    State-dict keys, as in the official checkpoints (under the stage's path, e.g.
    ``layer1.2.``): ``t.weight``, ``p.weight`` (``(C_s, C, 1, 1)``) and, per unit ``u``,
    ``stages.{u}.g.weight`` (``(C_s, C, 1, 1)``), ``stages.{u}.w_1.weight``,
    ``stages.{u}.w_2.weight`` (``(C, C_s, 1, 1)``), ``stages.{u}.bn.*``.
    """

    def __init__(
        self, inplanes: int, planes: int | None = None, n_units: int = 1, dim: int = 2,
        relu: bool = True, sign: int = 1,
    ) -> None:
        super().__init__()
        planes = planes or max(inplanes // 2, 1)
        self.in_channels, self.inter_channels, self.dim = inplanes, planes, dim
        self.relu, self.sign = relu, sign
        self.t = _conv(dim, inplanes, planes, bias=False)
        self.p = _conv(dim, inplanes, planes, bias=False)
        self.stages = nn.ModuleList(
            OfficialSNLUnit(inplanes, planes, dim=dim, relu=relu, sign=sign)
            for _ in range(n_units)
        )

    def affinity(self, x: Tensor) -> Tensor:
        return official_snl_affinity(self.t(x), self.p(x))

    def forward(self, x: Tensor, return_affinity: bool = False):
        att = self.affinity(x)
        for unit in self.stages:
            x = unit(x, att)
        return (x, att) if return_affinity else x


class OfficialSNL(OfficialSNLStage):
    """The official SNL stage with its default single unit (``stage_num=1``).

    Keys (what :meth:`graphfilters.blocks.SNL.from_official_state_dict` reads): ``t.weight``,
    ``p.weight``, ``stages.0.g.weight``, ``stages.0.w_1.weight``, ``stages.0.w_2.weight``,
    ``stages.0.bn.*``.
    """

    def __init__(
        self, inplanes: int, planes: int | None = None, dim: int = 2, relu: bool = True,
        sign: int = 1,
    ) -> None:
        super().__init__(inplanes, planes, n_units=1, dim=dim, relu=relu, sign=sign)

    @property
    def bn(self) -> nn.Module:
        """The unit's BatchNorm (``stages.0.bn``)."""
        return self.stages[0].bn


class GSNLRef(nn.Module):
    r"""Generalized SNL (order 2) in the official code's style.

    .. math::

        y = x + \mathrm{BN}\big(w_1(Z) + w_2(\hat A Z) + w_3(B_2 Z)\big), \quad
        B_2 = 2\hat A^2 - I \ \text{(exact)} \ \text{or} \ 2\hat A - I \ \text{(stable)},

    with :math:`\hat A` the official SNL affinity and ``Z = g(x)``. ``relu=True`` adds the ReLU
    after BN of the official classification code.
    """

    def __init__(
        self, inplanes: int, planes: int | None = None, dim: int = 2, stable: bool = False,
        relu: bool = False,
    ) -> None:
        super().__init__()
        planes = planes or max(inplanes // 2, 1)
        self.in_channels, self.inter_channels, self.dim = inplanes, planes, dim
        self.stable, self.relu = stable, relu
        self.t = _conv(dim, inplanes, planes, bias=False)
        self.p = _conv(dim, inplanes, planes, bias=False)
        self.g = _conv(dim, inplanes, planes, bias=False)
        self.w1 = _conv(dim, planes, inplanes, bias=False)
        self.w2 = _conv(dim, planes, inplanes, bias=False)
        self.w3 = _conv(dim, planes, inplanes, bias=False)
        self.bn = _bn(dim, inplanes)

    def forward(self, x: Tensor, return_affinity: bool = False):
        att = official_snl_affinity(self.t(x), self.p(x))
        g = self.g(x)
        z = _nodes(g)
        az = att @ z
        b2z = 2 * az - z if self.stable else 2 * (att @ az) - z
        out = self.w1(g) + self.w2(_maps(az, x)) + self.w3(_maps(b2z, x))
        out = self.bn(out)
        if self.relu:
            out = torch.relu(out)
        out = x + out
        return (out, att) if return_affinity else out


class _AttentionRef(nn.Module):
    """The frame of the attention-table references: ``C_s`` value channels split into
    ``heads``, one linear map ``qkv`` (``qkv_factor * C_s`` outputs), ``proj`` and the blocks'
    output ``x + BN(proj(...))``; each subclass transcribes its released code in
    :meth:`forward`."""

    def __init__(self, in_channels: int, heads: int, inter_channels: int | None, dim: int,
                 qkv_factor: int = 3) -> None:
        super().__init__()
        cs = inter_channels or max(in_channels // 2, heads)
        self.in_channels, self.heads, self.inter_channels, self.dim = (
            in_channels, heads, cs, dim)
        self.qkv = nn.Linear(in_channels, qkv_factor * cs)
        self.proj = nn.Linear(cs, in_channels)
        self.bn = _bn(dim, in_channels)

    def _out(self, x: Tensor, y: Tensor) -> Tensor:
        """``x + BN(proj(y))`` for the heads' concatenation ``y`` ``(B, N, C_s)``."""
        return x + self.bn(self.proj(y).transpose(1, 2).reshape(x.shape))


class GFSARef(_AttentionRef):
    r"""GFSA attention written as the released code does it (dense ``attn``, an explicit
    identity, ``(K-1)(attn - I) @ attn + attn``), with general ``w_0, w_1`` per head and
    ``lamb`` = :math:`w_K`, in the blocks' convention ``x + BN(proj(attn @ v))``. Attributes
    ``qkv`` (one linear map, ``[q | k | v]``), ``proj``, ``bn``."""

    def __init__(self, in_channels: int, heads: int = 1, inter_channels: int | None = None,
                 dim: int = 2, K: float = 4) -> None:
        super().__init__(in_channels, heads, inter_channels, dim)
        self.K = K
        self.w_0 = nn.Parameter(torch.zeros(heads))
        self.w_1 = nn.Parameter(torch.ones(heads))
        self.lamb = nn.Parameter(torch.zeros(heads))

    def forward(self, x: Tensor) -> Tensor:
        t = x.flatten(2).transpose(1, 2)                      # (B, N, C)
        b, n, _ = t.shape
        h, d = self.heads, self.inter_channels // self.heads
        q, k, v = self.qkv(t).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * d ** -0.5).softmax(dim=-1)
        identity = torch.eye(n, dtype=x.dtype)[None, None]
        high_order = (self.K - 1) * (attn - identity) @ attn + attn
        attn = (self.w_0[None, :, None, None] * identity + self.w_1[None, :, None, None] * attn
                + self.lamb[None, :, None, None] * high_order)
        return self._out(x, (attn @ v).transpose(1, 2).reshape(b, n, h * d))


class AttnScaleRef(_AttentionRef):
    r"""AttnScale attention written as the released code does it (``attnscale.py`` of
    VITA-Group/ViT-Anti-Oversmoothing): the dense softmax ``attn``, ``attn_d = ones / N``,
    ``attn_h = (attn - attn_d) * (1 + lamb)``, ``attn = attn_d + attn_h``, ``attn @ v``; in
    the blocks' convention ``x + BN(proj(...))``. Attributes ``qkv`` (one linear map,
    ``[q | k | v]``), ``proj``, ``bn``, ``lamb`` (one per head)."""

    def __init__(self, in_channels: int, heads: int = 1, inter_channels: int | None = None,
                 dim: int = 2) -> None:
        super().__init__(in_channels, heads, inter_channels, dim)
        self.lamb = nn.Parameter(torch.zeros(heads))

    def forward(self, x: Tensor) -> Tensor:
        t = x.flatten(2).transpose(1, 2)                      # (B, N, C)
        b, n, _ = t.shape
        h, d = self.heads, self.inter_channels // self.heads
        q, k, v = self.qkv(t).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * d ** -0.5).softmax(dim=-1)
        attn_d = torch.ones(attn.shape[-2:], dtype=attn.dtype) / n
        attn_d = attn_d[None, None, ...]
        attn_h = (attn - attn_d) * (1. + self.lamb[None, :, None, None])
        attn = attn_d + attn_h
        return self._out(x, (attn @ v).transpose(1, 2).reshape(b, n, h * d))


class DiffAttentionRef(_AttentionRef):
    r"""Differential attention written as the released code computes it (``multihead_diffattn``
    of microsoft/unilm Diff-Transformer, the non-flash path): the two softmax maps of each head
    ``attn.view(b, H, 2, n, n)``, ``attn[:, :, 0] - lambda_full * attn[:, :, 1]``, ``@ v``, the
    per-head RMSNorm ``subln`` (elementwise affine), ``* (1 - lambda_init)``, ``out_proj``; in
    the blocks' convention ``x + BN(proj(...))``. ``qkv`` is one linear map ``[q1 q2 | k1 k2 |
    v]`` (queries and keys: the two affinities outermost, then heads)."""

    def __init__(self, in_channels: int, heads: int = 1, inter_channels: int | None = None,
                 dim: int = 2, depth: int = 1) -> None:
        super().__init__(in_channels, heads, inter_channels, dim, qkv_factor=5)
        self.depth = depth
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * (depth - 1))
        d = self.inter_channels // heads
        self.lambda_q1 = nn.Parameter(torch.zeros(d).normal_(0, 0.1))
        self.lambda_k1 = nn.Parameter(torch.zeros(d).normal_(0, 0.1))
        self.lambda_q2 = nn.Parameter(torch.zeros(d).normal_(0, 0.1))
        self.lambda_k2 = nn.Parameter(torch.zeros(d).normal_(0, 0.1))
        self.subln = nn.RMSNorm(d, eps=1e-5, elementwise_affine=True)

    def forward(self, x: Tensor) -> Tensor:
        t = x.flatten(2).transpose(1, 2)                      # (B, N, C)
        b, n, _ = t.shape
        h, d = self.heads, self.inter_channels // self.heads
        q, k, v = self.qkv(t).split([2 * h * d, 2 * h * d, h * d], dim=-1)
        q = q.reshape(b, n, 2, h, d).permute(0, 3, 2, 1, 4)   # (B, H, 2, N, d)
        k = k.reshape(b, n, 2, h, d).permute(0, 3, 2, 1, 4)
        v = v.reshape(b, n, h, d).transpose(1, 2)             # (B, H, N, d)
        attn = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1)
        lambda_1 = torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1, dim=-1))
        lambda_2 = torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2, dim=-1))
        lambda_full = lambda_1 - lambda_2 + self.lambda_init
        attn = attn[:, :, 0] - lambda_full * attn[:, :, 1]
        attn = attn @ v
        attn = self.subln(attn) * (1 - self.lambda_init)
        return self._out(x, attn.transpose(1, 2).reshape(b, n, h * d))


class EfficientAttentionRef(_AttentionRef):
    r"""Efficient attention written as the released code computes it
    (``efficient_attention.py`` of cmsflash/efficient-attention): per head ``i`` the keys'
    softmax over positions ``softmax(keys[:, i], dim=2)``, the queries' over channels
    ``softmax(queries[:, i], dim=1)``, ``context = key @ value^T``,
    ``attended = context^T @ query``, heads concatenated, the reprojection; in the blocks'
    convention ``x + BN(proj(...))``. ``qkv`` is one linear map ``[q | k | v]``."""

    def __init__(self, in_channels: int, heads: int = 1, inter_channels: int | None = None,
                 dim: int = 2) -> None:
        super().__init__(in_channels, heads, inter_channels, dim)

    def forward(self, x: Tensor) -> Tensor:
        t = x.flatten(2).transpose(1, 2)                      # (B, N, C)
        queries, keys, values = (u.transpose(1, 2) for u in self.qkv(t).chunk(3, -1))
        hk = self.inter_channels // self.heads                # (B, C_s, N) each
        attended = []
        for i in range(self.heads):
            key = torch.softmax(keys[:, i * hk:(i + 1) * hk, :], dim=2)
            query = torch.softmax(queries[:, i * hk:(i + 1) * hk, :], dim=1)
            value = values[:, i * hk:(i + 1) * hk, :]
            context = key @ value.transpose(1, 2)
            attended.append(context.transpose(1, 2) @ query)  # (B, d_v, N)
        return self._out(x, torch.cat(attended, dim=1).transpose(1, 2))   # (B, N, C_s)

