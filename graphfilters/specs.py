"""The table of nonlocal blocks: one row per block, read by ``symbolic/`` and ``blocks/``.

Every nonlocal block computes :math:`Y = X + F(A, Z)` with a graph filter

.. math::

    F(A, Z) = \\sum_{k=0}^{K} B_k(\\hat A)\\, Z\\, W_k ,

where :math:`\\hat A` is the (normalized) affinity, ``order`` :math:`K` is the polynomial
degree (``K + 1`` terms), and :math:`B_k` is the Chebyshev basis :math:`T_k` (or, for
``basis="stable"``, the basis under the stable hypothesis :math:`\\hat A^2 = \\hat A`, in which
:math:`B_2 = 2\\hat A - I`).

Sign convention. The table is written in the *affinity form*: with the normalized Laplacian
and :math:`\\lambda_{max} = 2`, the scaled Laplacian is :math:`\\tilde L = -\\hat A` and
:math:`T_k(\\tilde L) = (-1)^k T_k(\\hat A)`, so the Laplacian-form weights are
:math:`W^{L}_k = (-1)^k W_k` (signs are absorbed by learned weights).

Weight constraints (affinity form):

``"free"``
    all :math:`W_k` independent (SNL, gSNL).
``"drop_order0"``
    :math:`W_0 = 0`: :math:`F = \\hat A Z W_1` (NL, A², CGNL, CC, DNL).
``"tied"``
    :math:`W_0 = -W_1`: :math:`F = (\\hat A - I) Z W = -L_{rw} Z W` (NS).

Examples
--------
>>> from graphfilters.specs import get_spec, BLOCK_NAMES
>>> BLOCK_NAMES
('nl', 'ns', 'a2', 'cgnl', 'cc', 'dnl', 'snl', 'gsnl', 'gsnl_stable', 'cayley', 'arma')
>>> spec = get_spec("snl")
>>> spec.kernel, spec.normalization, spec.order, spec.weight_constraint
('relu_dot', 'sym', 1, 'free')
>>> get_spec("nl", mode="dot_product").normalization
'size'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from . import _validate as V
from .filters import FILTER_NAMES, FILTERS, get_filter
from .kernels import BLOCK_KERNELS

__all__ = [
    "BlockSpec",
    "BLOCKS",
    "BLOCK_NAMES",
    "KERNEL_NAMES",
    "NORMALIZATIONS",
    "LAPLACIANS",
    "WEIGHT_CONSTRAINTS",
    "BASES",
    "NL_MODES",
    "get_spec",
]

#: Affinity kernels known to :mod:`graphfilters.kernels` (the names of its registry
#: :data:`graphfilters.kernels.BLOCK_KERNELS`).
KERNEL_NAMES = tuple(BLOCK_KERNELS)
#: How the raw affinity ``M`` becomes the operator ``Â`` of the filter.
#: ``rw``: :math:`D^{-1}M` (softmax kernels are already row-stochastic, ``D = I``);
#: ``sym``: :math:`D^{-1/2} M D^{-1/2}`; ``size``: :math:`M / N`; ``none``: ``M`` itself.
NORMALIZATIONS = ("rw", "sym", "size", "none")
#: Laplacians: ``combinatorial`` :math:`D - A`, ``sym`` :math:`I - D^{-1/2}AD^{-1/2}`,
#: ``rw`` :math:`I - D^{-1}A`.
LAPLACIANS = ("combinatorial", "sym", "rw")
WEIGHT_CONSTRAINTS = ("free", "drop_order0", "tied")
#: Filter bases, the names of the registry :data:`graphfilters.filters.FILTERS` (one list):
#: ``chebyshev``: :math:`T_k(\hat A)`; ``stable``: Chebyshev with :math:`\hat A^2 := \hat A`
#: (gSNL's 2019 code: :math:`B_2 = 2\hat A - I`); ``monomial``: :math:`\hat A^k`;
#: ``cayley``: Cayley rational filter (Levie et al. 2018); ``arma``: parallel ARMA filter
#: (Isufi et al. 2017).
BASES = FILTER_NAMES
#: Variants of the non-local block (Wang et al. 2018):
#: mode -> (kernel, normalization, LaTeX of the affinity).
NL_MODES: Mapping[str, tuple[str, str, str]] = MappingProxyType(
    {
        "embedded_gaussian": (
            "embedded_gaussian", "rw", r"A = \operatorname{softmax}_{row}(\Theta \Phi^{T}) = D^{-1} M"
        ),
        "dot_product": ("dot_product", "size", r"A = \Theta \Phi^{T} / N"),
        "gaussian": ("gaussian", "rw", r"A = \operatorname{softmax}_{row}(X X^{T}) = D^{-1} M"),
        "concatenation": (
            "concatenation", "size",
            r"A_{ij} = \operatorname{ReLU}(w_f^{T} [\theta_i; \phi_j]) / N",
        ),
    }
)


@dataclass(frozen=True)
class BlockSpec:
    """One row of the block table.

    Attributes
    ----------
    name : str
        Table name (``"nl"``, ``"snl"``, ...), shared by the symbolic layer, the torch layer
        and the command line.
    title : str
        Human-readable name.
    reference : str
        The paper that introduced the block.
    kernel : str
        Affinity kernel, one of :data:`KERNEL_NAMES`.
    normalization : str
        One of :data:`NORMALIZATIONS`.
    symmetrize : bool
        Whether the raw affinity is replaced by :math:`(M + M^T)/2` before normalizing.
    laplacian : str
        The Laplacian whose spectrum the filter acts on, one of :data:`LAPLACIANS`.
    order : int
        Polynomial degree :math:`K` of the filter (``K + 1`` terms).
    weight_constraint : str
        One of :data:`WEIGHT_CONSTRAINTS` (affinity form, see the module docstring).
    basis : str
        One of :data:`BASES`.
    lambda_max : float or None
        The :math:`\\lambda_{max}` used to rescale the Laplacian; 2 for the normalized
        Laplacians, ``None`` when it must be estimated.
    shared_affinity : bool
        The affinity is computed once from the stage input and shared by the stage's blocks.
    low_rank : bool
        The affinity has a low-rank factorization (never needs an ``N x N`` matrix).
    row_stochastic : bool
        Rows of the operator sum to one (``D = I``).
    output : str
        ``"batchnorm"`` (zero-initialized scale) or ``"gamma"`` (a learned scalar, CC).
    unary : bool
        The affinity has an added unary (per-key) term (DNL).
    modes : tuple of str
        Named variants (only ``nl``); the first is the default.
    affinity_latex, filter_latex : str
        LaTeX of the affinity and of the closed-form filter (affinity form).
    """

    name: str
    title: str
    reference: str
    kernel: str
    normalization: str
    symmetrize: bool
    laplacian: str
    order: int
    weight_constraint: str
    affinity_latex: str
    filter_latex: str
    basis: str = "chebyshev"
    lambda_max: float | None = 2.0
    shared_affinity: bool = False
    low_rank: bool = False
    row_stochastic: bool = False
    output: str = "batchnorm"
    unary: bool = False
    modes: tuple[str, ...] = field(default=())
    mode: str | None = None

    def __post_init__(self) -> None:
        validate_spec(self)

    @property
    def n_terms(self) -> int:
        """Number of filter terms (weights): ``order + 1`` for polynomial bases, ``2 order + 1``
        for the Cayley basis (see :meth:`graphfilters.filters.FilterFamily.n_terms`)."""
        return FILTERS[self.basis].n_terms(self.order)   # basis checked by validate_spec

    @property
    def rational(self) -> bool:
        """Whether the basis is a rational filter (Cayley, ARMA)."""
        return FILTERS[self.basis].kind == "rational"

    @property
    def free_orders(self) -> tuple[int, ...]:
        """Indices ``k`` of the terms that carry an independent weight ``W_k``."""
        if self.weight_constraint == "drop_order0":
            return tuple(range(1, self.n_terms))
        if self.weight_constraint == "tied":
            return (1,)
        return tuple(range(self.n_terms))


def validate_spec(spec: BlockSpec) -> None:
    """Raise ``ValueError`` if the fields of ``spec`` are inconsistent."""
    def _one_of(value: object, allowed: tuple, what: str) -> None:
        if value not in allowed:
            raise ValueError(
                f"block {spec.name!r}: unknown {what} {value!r}; choose one of {list(allowed)}"
            )

    _one_of(spec.kernel, KERNEL_NAMES, "kernel")
    _one_of(spec.normalization, NORMALIZATIONS, "normalization")
    _one_of(spec.laplacian, LAPLACIANS, "laplacian")
    _one_of(spec.weight_constraint, WEIGHT_CONSTRAINTS, "weight_constraint")
    _one_of(spec.basis, BASES, "basis")
    _one_of(spec.output, ("batchnorm", "gamma"), "output")
    if not isinstance(spec.order, int) or isinstance(spec.order, bool) or spec.order < 0:
        raise ValueError(
            f"block {spec.name!r}: order must be an integer >= 0 (the polynomial degree), "
            f"got {spec.order!r}"
        )
    if spec.weight_constraint in ("drop_order0", "tied") and spec.order < 1:
        raise ValueError(
            f"block {spec.name!r}: weight constraint {spec.weight_constraint!r} relates the "
            f"order-0 and order-1 weights, so it needs order >= 1, got order {spec.order}"
        )
    if spec.weight_constraint == "tied" and spec.order != 1:
        raise ValueError(
            f"block {spec.name!r}: the 'tied' constraint (F = (A - I) Z W) is an order-1 "
            f"filter, got order {spec.order}"
        )
    family = get_filter(spec.basis)
    if spec.order < family.min_order:
        raise ValueError(
            f"block {spec.name!r}: basis {spec.basis!r} needs order >= {family.min_order}, "
            f"got order {spec.order}"
        )
    if spec.weight_constraint == "tied" and spec.basis != "chebyshev":
        raise ValueError(
            f"block {spec.name!r}: the 'tied' constraint is the Chebyshev order-1 filter "
            f"(A - I) Z W; got basis {spec.basis!r}"
        )
    if spec.basis == "stable" and spec.order < 2:
        raise ValueError(
            f"block {spec.name!r}: basis 'stable' only changes terms of order >= 2, "
            f"got order {spec.order}; use basis 'chebyshev'"
        )
    if spec.normalization == "sym" and not spec.symmetrize:
        # D^{-1/2} M D^{-1/2} is only a symmetric operator for a symmetric M.
        raise ValueError(
            f"block {spec.name!r}: normalization 'sym' needs a symmetric affinity; "
            "set symmetrize=True"
        )
    if spec.mode is not None and spec.mode not in spec.modes:
        raise ValueError(
            f"block {spec.name!r}: unknown mode {spec.mode!r}; choose one of {list(spec.modes)}"
        )


#: The SNL affinity (Zhu et al., ICCV 2021): the fields shared by the rows built on it.
_SNL_AFFINITY: dict[str, Any] = {
    "kernel": "relu_dot", "normalization": "sym", "symmetrize": True, "laplacian": "sym",
    "low_rank": True,
}
_SNL_AFFINITY_LATEX = (
    r"\hat A = D^{-1/2} \operatorname{sym}(M) D^{-1/2},\ "
    r"M = \operatorname{ReLU}(\Theta)\operatorname{ReLU}(\Phi)^{T}"
)

_ROWS = (
    BlockSpec(
        name="nl",
        title="Non-local block (NL)",
        reference="Wang, Girshick, Gupta, He. Non-local Neural Networks. CVPR 2018.",
        kernel="embedded_gaussian",
        normalization="rw",
        symmetrize=False,
        laplacian="rw",
        order=1,
        weight_constraint="drop_order0",
        row_stochastic=True,
        modes=tuple(NL_MODES),
        mode="embedded_gaussian",
        affinity_latex=r"A = \operatorname{softmax}_{row}(\Theta \Phi^{T}) = D^{-1} M",
        filter_latex=r"F = A Z W",
    ),
    BlockSpec(
        name="ns",
        title="Nonlocal stage (NS)",
        reference=(
            "Tao, Sun, Du, Liu. Nonlocal Neural Networks, Nonlocal Diffusion and Nonlocal "
            "Modeling. NeurIPS 2018."
        ),
        kernel="embedded_gaussian",
        normalization="rw",
        symmetrize=False,
        laplacian="rw",
        order=1,
        weight_constraint="tied",
        shared_affinity=True,
        row_stochastic=True,
        affinity_latex=r"A = \operatorname{softmax}_{row}(\Theta \Phi^{T})",
        filter_latex=r"F = (A - I) Z W = -L_{rw} Z W",
    ),
    BlockSpec(
        name="a2",
        title="Double attention (A²)",
        reference="Chen, Kalantidis, Li, Yan, Feng. A²-Nets: Double Attention Networks. NeurIPS 2018.",
        kernel="double_attention",
        normalization="rw",
        symmetrize=False,
        laplacian="rw",
        order=1,
        weight_constraint="drop_order0",
        low_rank=True,
        row_stochastic=True,
        affinity_latex=r"A = S_d S_g^{T}",
        filter_latex=r"F = A Z W",
    ),
    BlockSpec(
        name="cgnl",
        title="Compact generalized non-local block (CGNL)",
        reference=(
            "Yue, Sun, Yuan, Zhou, Ding, Xu. Compact Generalized Non-local Network. NeurIPS 2018."
        ),
        kernel="taylor_rbf",
        normalization="none",
        symmetrize=False,
        laplacian="combinatorial",
        order=1,
        weight_constraint="drop_order0",
        lambda_max=None,
        low_rank=True,
        affinity_latex=(
            r"A_{(i,c),(j,c')} = \sum_{p=0}^{P} \beta_p\, \theta_{ic}^{p} \phi_{jc'}^{p}"
            r"\approx e^{-\gamma (\theta_{ic} - \phi_{jc'})^2}"
        ),
        filter_latex=r"F = A Z W",
    ),
    BlockSpec(
        name="cc",
        title="Criss-cross attention (CC)",
        reference=(
            "Huang, Wang, Huang, Huang, Wei, Liu. CCNet: Criss-Cross Attention for Semantic "
            "Segmentation. ICCV 2019."
        ),
        kernel="criss_cross",
        normalization="rw",
        symmetrize=False,
        laplacian="rw",
        order=1,
        weight_constraint="drop_order0",
        row_stochastic=True,
        output="gamma",
        affinity_latex=(
            r"A_{ij} = \operatorname{softmax}_{j \in \mathcal{C}(i)}(\theta_i^{T}\phi_j),\ "
            r"\mathcal{C}(i) = \text{row and column of } i"
        ),
        filter_latex=r"F = \gamma\, A Z W",
    ),
    BlockSpec(
        name="dnl",
        title="Disentangled non-local block (DNL)",
        reference=(
            "Yin, Yao, Cao, Li, Zhang, Lin, Hu. Disentangled Non-Local Neural Networks. ECCV 2020."
        ),
        kernel="disentangled",
        normalization="rw",
        symmetrize=False,
        laplacian="rw",
        order=1,
        weight_constraint="drop_order0",
        unary=True,
        affinity_latex=(
            r"A = \operatorname{softmax}_{row}((\Theta - \mu_\theta)(\Phi - \mu_\phi)^{T})"
            r" + \mathbf{1}\, \operatorname{softmax}(X w_m)^{T}"
        ),
        filter_latex=r"F = A Z W",
    ),
    BlockSpec(
        name="snl",
        title="Spectral nonlocal block (SNL)",
        reference=(
            "Zhu, She, Li, Lu, Kang, Hu, Wang. Unifying Nonlocal Blocks for Neural Networks. "
            "ICCV 2021."
        ),
        **_SNL_AFFINITY,
        order=1,
        weight_constraint="free",
        affinity_latex=_SNL_AFFINITY_LATEX,
        filter_latex=r"F = Z W_0 + \hat A Z W_1",
    ),
    BlockSpec(
        name="gsnl",
        title="Generalized spectral nonlocal block (gSNL)",
        reference=(
            "Zhu, She, Li, Lu, Kang, Hu, Wang. Unifying Nonlocal Blocks for Neural Networks. "
            "ICCV 2021."
        ),
        **_SNL_AFFINITY,
        order=2,
        weight_constraint="free",
        affinity_latex=_SNL_AFFINITY_LATEX,
        filter_latex=r"F = Z W_0 + \hat A Z W_1 + (2\hat A^{2} - I) Z W_2",
    ),
    BlockSpec(
        name="gsnl_stable",
        title="gSNL under the stable hypothesis",
        reference=(
            "Zhu, She, Li, Lu, Kang, Hu, Wang. A Spectral Nonlocal Block for Neural Networks. "
            "arXiv 1911.01059 (2019)."
        ),
        **_SNL_AFFINITY,
        order=2,
        weight_constraint="free",
        basis="stable",
        affinity_latex=(
            r"\hat A = D^{-1/2} \operatorname{sym}(M) D^{-1/2},\ \hat A^{2} \approx \hat A"
        ),
        filter_latex=r"F = Z W_0 + \hat A Z W_1 + (2\hat A - I) Z W_2",
    ),
    BlockSpec(
        name="cayley",
        title="Cayley nonlocal block",
        reference=(
            "Levie, Monti, Bresson, Bronstein. CayleyNets: Graph Convolutional Neural Networks "
            "with Complex Rational Spectral Filters. IEEE TSP 2018 (filter); SNL affinity."
        ),
        **_SNL_AFFINITY,
        order=1,
        weight_constraint="free",
        basis="cayley",
        affinity_latex=_SNL_AFFINITY_LATEX,
        filter_latex=(
            r"F = Z W_0 + \operatorname{Re}(C) Z W_1 + \operatorname{Im}(C) Z W_2,\ "
            r"C = (hL - iI)(hL + iI)^{-1}"
        ),
    ),
    BlockSpec(
        name="arma",
        title="ARMA nonlocal block",
        reference=(
            "Isufi, Loukas, Simonetto, Leus. Autoregressive Moving Average Graph Filtering. "
            "IEEE TSP 2017; Bianchi et al. IEEE TPAMI 2021 (filter); SNL affinity."
        ),
        **_SNL_AFFINITY,
        order=1,
        weight_constraint="free",
        basis="arma",
        affinity_latex=_SNL_AFFINITY_LATEX,
        filter_latex=r"F = Z W_0 + (I - \psi_1 \hat A)^{-1} Z W_1",
    ),
)

#: Block table: name -> :class:`BlockSpec`.
BLOCKS: Mapping[str, BlockSpec] = MappingProxyType({row.name: row for row in _ROWS})
#: Table names in table order.
BLOCK_NAMES: tuple[str, ...] = tuple(BLOCKS)


@V.validate_params(
    {"name": [V.InstanceOf(str, "a block name (str)"), V.InstanceOf(BlockSpec)],
     "mode": [V.InstanceOf(str, "a mode name (str)"), None]},
    valid=lambda: {"name": "nl", "mode": "gaussian"},
)
def get_spec(name: str | BlockSpec, mode: str | None = None, **overrides: object) -> BlockSpec:
    """Return the table row ``name``, optionally a named ``mode`` and field overrides.

    Parameters
    ----------
    name : str or BlockSpec
        A table name (see :data:`BLOCK_NAMES`) or a spec (returned with the overrides applied).
    mode : str, optional
        For ``nl``: one of :data:`NL_MODES`; sets the kernel and normalization of the variant.
    **overrides
        Any :class:`BlockSpec` field (e.g. ``order=3``); the result is validated.

    Raises
    ------
    ValueError
        For an unknown name or mode (the message lists the known ones) or an inconsistent
        combination of fields.

    Examples
    --------
    >>> get_spec("nl", mode="gaussian").kernel
    'gaussian'
    >>> get_spec("snl", order=3).n_terms
    4
    """
    if isinstance(name, BlockSpec):
        spec = name
    else:
        key = name.lower()
        if key not in BLOCKS:
            raise ValueError(f"unknown block {name!r}; known blocks: {', '.join(BLOCK_NAMES)}")
        spec = BLOCKS[key]
    changes: dict[str, object] = dict(overrides)
    if mode is not None:
        if not spec.modes:
            raise ValueError(f"block {spec.name!r} has no modes; only 'nl' has modes")
        if mode not in spec.modes:
            raise ValueError(
                f"unknown mode {mode!r} for block {spec.name!r}; choose one of {list(spec.modes)}"
            )
        kernel, normalization, latex = NL_MODES[mode]
        changes.update(mode=mode, kernel=kernel, normalization=normalization,
                       row_stochastic=normalization == "rw", affinity_latex=latex)
    unknown = set(changes) - set(BlockSpec.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"unknown spec field(s) {sorted(unknown)}; fields: {list(BlockSpec.__dataclass_fields__)}"
        )
    return replace(spec, **changes) if changes else spec


# ------------------------------------------------------------------------------------------
# Attention-era blocks (2021-2025): multi-head filters on softmax (or low-rank) affinities.
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionSpec(BlockSpec):
    r"""A row of the attention table: a :class:`BlockSpec` plus what one operator's
    polynomial cannot say.

    These blocks are multi-head (one affinity per head, ``heads`` of them) and two of them
    leave the one-operator polynomial: AttnScale adds a term in the DC projector
    :math:`P = \mathbf 1\mathbf 1^T/N` (``projector=True``), differential attention filters on
    two affinities (``operators=2``). The inherited fields describe the part that *is* a
    polynomial filter of one head's affinity ``A``: ``order`` and ``basis`` are those of the
    polynomial in ``A`` (GFSA: the monomial basis of order 2), ``weight_constraint`` its
    constraint. ``filter_latex`` is one head's filter in the toolkit's letters: ``Z`` is the
    head's values :math:`V_h` and ``W`` the head's block of rows of the output projection
    :math:`W_{out}` (the block's output is the sum of the heads' filters).

    Attributes
    ----------
    operators : int
        Number of affinities the filter acts on (2: differential attention).
    projector : bool
        The filter has a term in the DC projector :math:`\mathbf 1\mathbf 1^T/N` (AttnScale).
    coefficients : tuple of str
        Names of the learned scalars of the filter (per head unless stated in the block).
    code : str
        Where the released code lives.

    Examples
    --------
    >>> from graphfilters.specs import ATTENTION_BLOCK_NAMES, get_attention_spec
    >>> ATTENTION_BLOCK_NAMES
    ('gfsa', 'attnscale', 'diffattn', 'efficient')
    >>> s = get_attention_spec("attnscale")
    >>> s.order, s.projector, s.operators, s.coefficients
    (1, True, 1, ('lambda_h',))
    """

    operators: int = 1
    projector: bool = False
    coefficients: tuple[str, ...] = field(default=())
    code: str = ""

    def __post_init__(self) -> None:
        validate_spec(self)
        if self.operators not in (1, 2):
            raise ValueError(
                f"block {self.name!r}: operators must be 1 or 2, got {self.operators!r}"
            )


_SOFTMAX_AFFINITY: dict[str, Any] = {
    "kernel": "embedded_gaussian", "normalization": "rw", "symmetrize": False,
    "laplacian": "rw", "row_stochastic": True,
}
_SOFTMAX_LATEX = r"A_h = \operatorname{softmax}_{row}(Q_h K_h^{T} / \sqrt{d})"

_ATTENTION_ROWS = (
    AttentionSpec(
        name="gfsa",
        title="Graph-filter-based self-attention (GFSA)",
        reference=(
            "Choi, Wi, Kim, Shin, Park. Graph Convolutions Enrich the Self-Attention in "
            "Transformers! AAAI 2024."
        ),
        **_SOFTMAX_AFFINITY,
        order=2,
        weight_constraint="free",
        basis="monomial",
        coefficients=("w_0", "w_1", "w_K"),
        code="jeongwhanchoi/GFSA (Image/gfsa.py: K = 4, w_0 = 0, w_1 = 1, w_K per head)",
        affinity_latex=_SOFTMAX_LATEX,
        filter_latex=(
            r"F = (w_0 I + w_1 A + w_K (A + (K - 1)(A^{2} - A))) Z W"
        ),
    ),
    AttentionSpec(
        name="attnscale",
        title="Attention scaling (AttnScale)",
        reference=(
            "Wang, Zheng, Chen, Wang. Anti-Oversmoothing in Deep Vision Transformers via the "
            "Fourier Domain Analysis: From Theory to Practice. ICLR 2022."
        ),
        **_SOFTMAX_AFFINITY,
        order=1,
        weight_constraint="drop_order0",
        projector=True,
        coefficients=("lambda_h",),
        code="VITA-Group/ViT-Anti-Oversmoothing (attnscale.py: one lambda per head, init 0)",
        affinity_latex=_SOFTMAX_LATEX + r",\ P = \mathbf{1}\mathbf{1}^{T} / N",
        filter_latex=r"F = (P + (1 + \lambda_h)(A - P)) Z W",
    ),
    AttentionSpec(
        name="diffattn",
        title="Differential attention",
        reference=("Ye, Dong, Xia, Sun, Zhu, Huang, Wei. Differential Transformer. ICLR 2025."),
        **_SOFTMAX_AFFINITY,
        order=1,
        weight_constraint="drop_order0",
        operators=2,
        coefficients=("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"),
        code="microsoft/unilm (Diff-Transformer/multihead_diffattn.py: one lambda per layer, "
             "lambda_init(depth), per-head RMSNorm)",
        affinity_latex=(r"A_{j,h} = \operatorname{softmax}_{row}(Q_{j,h} K_{j,h}^{T} / "
                        r"\sqrt{d}),\ j = 1, 2"),
        filter_latex=r"F = (A_1 - \lambda_d A_2) Z W",
    ),
    AttentionSpec(
        name="efficient",
        title="Efficient attention",
        reference=("Shen, Zhang, Zhao, Yi, Li. Efficient Attention: Attention with Linear "
                   "Complexities. WACV 2021."),
        kernel="double_attention", normalization="rw", symmetrize=False, laplacian="rw",
        row_stochastic=True, low_rank=True,
        order=1,
        weight_constraint="drop_order0",
        coefficients=(),
        code="cmsflash/efficient-attention (efficient_attention.py: softmax over channels for "
             "Q, over positions for K)",
        affinity_latex=(r"A_h = \rho_q(Q_h)\, \rho_k(K_h)^{T},\ \operatorname{rank} A_h "
                        r"\leq d"),
        filter_latex=r"F = A Z W",
    ),
)

#: Attention table: name -> :class:`AttentionSpec` (multi-head blocks, one class each, e.g.
#: :class:`graphfilters.blocks.gfsa.GFSA`; not in :data:`BLOCKS`, whose rows are all
#: configurations of the one-operator unified block).
ATTENTION_BLOCKS: Mapping[str, AttentionSpec] = MappingProxyType(
    {row.name: row for row in _ATTENTION_ROWS}
)
#: Attention table names in table order.
ATTENTION_BLOCK_NAMES: tuple[str, ...] = tuple(ATTENTION_BLOCKS)
__all__ += ["AttentionSpec", "ATTENTION_BLOCKS", "ATTENTION_BLOCK_NAMES", "get_attention_spec"]


@V.validate_params({"name": [V.InstanceOf(str, "an attention block name (str)")]},
                   valid=lambda: {"name": "gfsa"})
def get_attention_spec(name: str) -> AttentionSpec:
    """Return the row ``name`` of the attention table (:data:`ATTENTION_BLOCK_NAMES`).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).

    Examples
    --------
    >>> get_attention_spec("gfsa").basis
    'monomial'
    """
    key = name.lower()
    if key not in ATTENTION_BLOCKS:
        raise ValueError(
            f"unknown attention block {name!r}; known: {', '.join(ATTENTION_BLOCK_NAMES)}"
        )
    return ATTENTION_BLOCKS[key]
