"""Every named block: original-form reference == its configuration of the unified block.

Outputs and gradients (input and every shared weight) agree to 1e-10 in float64, for
sequences, images and videos, batch > 1, in training mode (batch statistics) and eval mode
(running statistics). Plus: a fresh block is the identity, batch equivalence, the structured
path equals the materialized one, and the filter record rebuilds the output.
"""

from __future__ import annotations

import pytest
import torch

from graphfilters.blocks import (
    CGNL,
    SNL,
    CrissCross,
    DisentangledNonLocal,
    DoubleAttention,
    FilterRecord,
    GraphFilterNonlocal,
    NonLocal,
    NonlocalStage,
    gSNL,
    make_block,
)
from graphfilters.blocks import reference as R
from graphfilters.graph import Affinity
from graphfilters.specs import BLOCK_NAMES

C = 8
SHAPES = {1: (3, C, 8), 2: (2, C, 4, 6), 3: (2, C, 2, 4, 4)}
TOL = {"atol": 1e-10, "rtol": 0.0}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (BN scales non-zero, running statistics non-trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 1.2 - 0.6)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen, dtype=b.dtype))
            elif name.endswith("running_mean"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype) - 0.5)
    return module


def _stage_case(make_ref):
    return make_ref, NonlocalStage


REF_CASES = {
    "nl": (lambda d: R.NonLocalRef(C, dim=d), NonLocal),
    "nl-dot_product": (lambda d: R.NonLocalRef(C, mode="dot_product", dim=d), NonLocal),
    "nl-gaussian": (lambda d: R.NonLocalRef(C, mode="gaussian", dim=d), NonLocal),
    "nl-concatenation": (lambda d: R.NonLocalRef(C, mode="concatenation", dim=d), NonLocal),
    "nl-sub_sample": (lambda d: R.NonLocalRef(C, dim=d, sub_sample=True), NonLocal),
    "nl-dot_product-sub_sample": (
        lambda d: R.NonLocalRef(C, mode="dot_product", dim=d, sub_sample=True), NonLocal),
    "nl-gaussian-sub_sample": (
        lambda d: R.NonLocalRef(C, mode="gaussian", dim=d, sub_sample=True), NonLocal),
    "nl-concatenation-sub_sample": (
        lambda d: R.NonLocalRef(C, mode="concatenation", dim=d, sub_sample=True), NonLocal),
    "ns": _stage_case(lambda d: R.NonlocalStageRef(C, n_units=3, dim=d)),
    "a2": (lambda d: R.DoubleAttentionRef(C, c_m=4, c_n=3, dim=d), DoubleAttention),
    "cgnl": (lambda d: R.CGNLRef(C, 4, groups=2, dim=d), CGNL),
    "cgnl-exact_rbf": (
        lambda d: R.CGNLRef(C, 4, groups=2, taylor_order=3, gamma=0.5, beta=None, dim=d), CGNL),
    "cc": (lambda d: R.CrissCrossRef(C, dim=d), CrissCross),
    "dnl": (lambda d: R.DisentangledNonLocalRef(C, dim=d), DisentangledNonLocal),
    "snl": (lambda d: R.OfficialSNL(C, dim=d), SNL),
    "snl-paper_segmentation": (lambda d: R.OfficialSNL(C, dim=d, relu=False, sign=-1), SNL),
    "snl-stage": _stage_case(lambda d: R.OfficialSNLStage(C, n_units=2, dim=d)),
    "gsnl": (lambda d: R.GSNLRef(C, dim=d), gSNL),
    "gsnl_stable": (lambda d: R.GSNLRef(C, dim=d, stable=True), gSNL),
}


def _forward_backward(module, x, weight):
    x = x.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    (y * weight).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("case", list(REF_CASES))
def test_reference_and_unified_agree(case, dim):
    make_ref, cls = REF_CASES[case]
    ref = randomize(make_ref(dim), seed=dim).double()
    uni = cls.from_reference(ref)
    mapping = cls.reference_map(ref)
    ref_params, uni_params = dict(ref.named_parameters()), dict(uni.named_parameters())
    # every learned tensor of the unified block is shared with the reference
    assert {u for u, _, _ in mapping if u in uni_params} == set(uni_params)
    gen = torch.Generator().manual_seed(100 + dim)
    x = torch.randn(SHAPES[dim], generator=gen, dtype=torch.float64)
    weight = torch.randn(SHAPES[dim], generator=gen, dtype=torch.float64)
    for train in (True, False):
        ref.train(train)
        uni.train(train)
        y_ref, gx_ref = _forward_backward(ref, x, weight)
        y_uni, gx_uni = _forward_backward(uni, x, weight)
        assert not torch.equal(y_ref, x)                 # the filter is not trivially zero
        torch.testing.assert_close(y_uni, y_ref, **TOL)
        torch.testing.assert_close(gx_uni, gx_ref, **TOL)
        for u, s, scale in mapping:
            if u in uni_params:
                gu, gs = uni_params[u].grad, ref_params[s].grad
                torch.testing.assert_close(gs.reshape(gu.shape), scale * gu, **TOL)
    # the affinity actually used (normalized operator) is the original one
    with torch.no_grad():
        _, a_ref = ref(x, return_affinity=True)
        _, a_uni = uni(x, return_affinity=True)
    if cls is DisentangledNonLocal:      # rows of pairwise + unary sum to 2; rw divides by 2
        a_uni = 2 * a_uni
    torch.testing.assert_close(a_uni, a_ref, **TOL)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_fresh_block_is_identity(name, dim):
    block = make_block(name, C, dim=dim)
    x = torch.randn(SHAPES[dim])
    for train in (True, False):
        block.train(train)
        assert torch.equal(block(x), x)
    stage = make_block(name, C, dim=dim, n_units=2)
    assert torch.equal(stage(x), x)


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_batch_equivalence(name):
    block = randomize(make_block(name, C), seed=3).double().eval()
    x = torch.randn(3, C, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        whole = block(x)
        parts = torch.cat([block(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, parts, atol=1e-12, rtol=0)


FAST_CASES = [(n, {}) for n in BLOCK_NAMES] + [
    ("nl", {"mode": m}) for m in ("dot_product", "gaussian", "concatenation")
] + [("nl", {"sub_sample": True}), ("nl", {"mode": "dot_product", "sub_sample": True}),
     ("snl", {"sign": -1, "relu_after_norm": True}), ("cgnl", {"groups": 2})]


@pytest.mark.parametrize(("name", "options"), FAST_CASES,
                         ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in FAST_CASES])
def test_structured_path_equals_materialized(name, options):
    block = randomize(make_block(name, C, **options), seed=5).double()
    x = torch.randn(2, C, 4, 4, dtype=torch.float64)
    w = torch.randn_like(x)
    grads = []
    for materialize in (False, True):
        xi = x.clone().requires_grad_(True)
        block.zero_grad(set_to_none=True)
        y = block(xi, materialize=materialize)
        (y * w).sum().backward()
        grads.append((y.detach(), xi.grad, [p.grad.clone() for p in block.parameters()]))
    (y0, gx0, gp0), (y1, gx1, gp1) = grads
    torch.testing.assert_close(y0, y1, **TOL)
    torch.testing.assert_close(gx0, gx1, **TOL)
    for a, b in zip(gp0, gp1):
        # CGNL's Taylor-kernel parameter gradients reach ~1e3-1e4: compare at their scale.
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, atol=TOL["atol"] * scale, rtol=0.0)


RECORD_CASES = [
    "nl", "ns", "a2", "cgnl", "cc", "dnl", "snl", "gsnl", "gsnl_stable", "nl-sub_sample",
    "nl-concatenation", "snl-sign-relu", "cgnl-groups", "snl-stage",
]


def _record_block(case):
    if case == "nl-sub_sample":
        return make_block("nl", C, sub_sample=True)
    if case == "nl-concatenation":
        return make_block("nl", C, mode="concatenation")
    if case == "snl-sign-relu":
        return make_block("snl", C, sign=-1, relu_after_norm=True)
    if case == "cgnl-groups":
        return make_block("cgnl", C, groups=2, taylor_order=3, gamma=0.3)
    if case == "snl-stage":
        return make_block("snl", C, n_units=3)
    return make_block(case, C)


@pytest.mark.parametrize("case", RECORD_CASES)
def test_record_rebuilds_the_output(case):
    block = randomize(_record_block(case), seed=7).double()
    x = torch.randn(2, C, 4, 6, dtype=torch.float64, requires_grad=True)
    block.record = True
    for train in (True, False):
        block.train(train)
        y = block(x)
        records = block.last_records if isinstance(block, NonlocalStage) else [block.last_record]
        units = block.units if isinstance(block, NonlocalStage) else [block]
        rec = records[-1]
        assert isinstance(rec, FilterRecord) and isinstance(rec.affinity, Affinity)
        assert rec.spec is units[-1].spec and rec.normalization == rec.spec.normalization
        assert rec.spatial_shape == (4, 6)
        assert rec.z.ndim == 3 and rec.z.shape[0] == 2 and not rec.z.requires_grad
        assert len(rec.weights) == rec.spec.order + 1
        for w, w_block in zip(rec.weights, units[-1].filter_weights()):
            assert w.shape == (units[-1].inter_channels, C) and not w.requires_grad
            torch.testing.assert_close(w, w_block.detach(), **TOL)
        assert rec.output_scale.scale.shape == (C,) and rec.output_scale.shift.shape == (C,)
        assert not rec.input.requires_grad
        if len(units) == 1:
            assert torch.equal(rec.input, x.detach())
        else:   # the stage's last record takes the previous unit's output as input
            torch.testing.assert_close(records[0].block_output(), records[1].input, **TOL)
            assert block.last_record is records[0]
        torch.testing.assert_close(rec.block_output(), y.detach(), **TOL)
        torch.testing.assert_close(rec.block_output(materialize=True), y.detach(), **TOL)


def test_filter_weights_follow_the_constraints():
    nl = randomize(make_block("nl", C))
    w = nl.filter_weights()
    assert len(w) == 2 and torch.equal(w[0], torch.zeros(4, C))
    ns = randomize(make_block("ns", C)).units[0]
    w = ns.filter_weights()
    assert torch.equal(w[0], -w[1])
    snl = randomize(make_block("snl", C, sign=-1))
    w = snl.filter_weights()
    assert torch.equal(w[1], -snl.w["1"].t()) and torch.equal(w[0], snl.w["0"].t())
    cgnl = randomize(make_block("cgnl", C, groups=2))
    w1 = cgnl.filter_weights()[1]
    assert torch.count_nonzero(w1[:2, 4:]) == 0 and torch.count_nonzero(w1[2:, :4]) == 0
    cc = make_block("cc", C)
    assert torch.equal(cc.filter_weights()[1], torch.eye(C))
    g = make_block("gsnl_stable", C)
    assert len(g.filter_weights()) == 3 and g.spec.basis == "stable"
    for name in BLOCK_NAMES:
        block = make_block(name, C)
        assert block.spec.name == name and callable(block.filter_weights)
        assert block.filter_weights()[0].shape[1] == C


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_stage_of_every_block_shares_one_affinity(name):
    stage = randomize(make_block(name, C, n_units=2), seed=11).double().eval()
    assert isinstance(stage, NonlocalStage) and stage.n_units == 2
    unit0, unit1 = stage.units
    assert unit1.theta is None and unit1.phi is None and unit1.shared_affinity
    x = torch.randn(2, C, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        aff = unit0.compute_affinity(x)
        expected = unit1(unit0(x, aff), aff)
        torch.testing.assert_close(stage(x), expected, **TOL)
    with pytest.raises(ValueError, match="shared_affinity=True"):
        unit1(x)


def test_new_table_row_is_enough():
    """A row that is not in the table (SNL of order 3) runs and is the Chebyshev filter."""
    from graphfilters.specs import BlockSpec

    spec = BlockSpec(
        name="snl3", title="SNL, order 3", reference="test", kernel="relu_dot",
        normalization="sym", symmetrize=True, laplacian="sym", order=3,
        weight_constraint="free", affinity_latex="", filter_latex="",
    )
    block = randomize(GraphFilterNonlocal.from_spec(spec, C), seed=2).double().eval()
    assert block.spec is spec and len(block.w) == 4
    x = torch.randn(2, C, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        a_hat = R.official_snl_affinity(block.theta(x), block.phi(x))
        z = block.g(x).flatten(2).transpose(1, 2)
        eye = torch.eye(16, dtype=torch.float64)
        t = [eye, a_hat, 2 * a_hat @ a_hat - eye]
        t.append(2 * a_hat @ t[2] - a_hat)
        f = sum(t[k] @ z @ block.w[str(k)].t() for k in range(4))
        expected = x + block.norm(f.transpose(1, 2).reshape(2, C, 4, 4))
        torch.testing.assert_close(block(x), expected, **TOL)


def test_overrides_build_other_configurations():
    block = GraphFilterNonlocal(C, spec="nl", order=2, weight_constraint="free")
    assert block.spec.order == 2 and set(block.w) == {"0", "1", "2"}
    tied = GraphFilterNonlocal(C, kernel="embedded_gaussian", symmetrize=False,
                             normalization="rw", weight_constraint="tied")
    assert tied.spec.kernel == "embedded_gaussian" and set(tied.w) == {"1"}
    sym_softmax = randomize(GraphFilterNonlocal(C, spec="nl", symmetrize=True,
                                              normalization="sym")).double()
    x = torch.randn(1, C, 3, 3, dtype=torch.float64)
    y, a = sym_softmax(x, return_affinity=True)
    torch.testing.assert_close(a, a.transpose(1, 2), **TOL)
    assert y.shape == x.shape
    assert GraphFilterNonlocal.from_spec("gsnl_stable", C).spec.basis == "stable"


def test_repr_names_block_and_configuration():
    text = repr(make_block("gsnl_stable", 16))
    assert text.startswith("gSNL(") and "block=gsnl_stable" in text and "basis=stable" in text
    assert "order=2" in text and "in_channels=16" in text
    assert "n_units=3" in repr(make_block("ns", 16, n_units=3))
    assert "mode=dot_product" in repr(make_block("nl", 16, mode="dot_product")) or \
        "block=nl[dot_product]" in repr(make_block("nl", 16, mode="dot_product"))


def test_reset_parameters_restores_identity():
    block = randomize(make_block("snl", C))
    x = torch.randn(2, C, 4, 4)
    assert not torch.equal(block(x), x)
    block.reset_parameters()
    assert torch.equal(block(x), x)


def test_reference_module_does_not_use_the_numeric_core():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(R))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= {"__future__", "math", "torch"}, imported
