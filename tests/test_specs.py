"""The block table: complete, consistent, and its LaTeX renders."""

from __future__ import annotations

import matplotlib.mathtext as mathtext
import pytest

from graphfilters.specs import BLOCK_NAMES, BLOCKS, KERNEL_NAMES, NL_MODES, get_spec


def test_table_rows_match_design():
    expected = {  # name: (order, constraint, normalization)   -- docs/theory.md
        "nl": (1, "drop_order0", "rw"), "ns": (1, "tied", "rw"), "a2": (1, "drop_order0", "rw"),
        "cgnl": (1, "drop_order0", "none"), "cc": (1, "drop_order0", "rw"),
        "dnl": (1, "drop_order0", "rw"), "snl": (1, "free", "sym"), "gsnl": (2, "free", "sym"),
        "gsnl_stable": (2, "free", "sym"), "cayley": (1, "free", "sym"),
        "arma": (1, "free", "sym"),
    }
    assert set(BLOCK_NAMES) == set(expected)
    for name, (order, constraint, norm) in expected.items():
        spec = BLOCKS[name]
        assert (spec.order, spec.weight_constraint, spec.normalization) == (order, constraint, norm)
        assert spec.kernel in KERNEL_NAMES
    assert BLOCKS["gsnl_stable"].basis == "stable" and BLOCKS["ns"].shared_affinity
    assert BLOCKS["snl"].free_orders == (0, 1) and BLOCKS["nl"].free_orders == (1,)


def test_every_latex_string_renders():
    parser = mathtext.MathTextParser("path")
    texts = [t for s in BLOCKS.values() for t in (s.affinity_latex, s.filter_latex)]
    texts += [latex for _, _, latex in NL_MODES.values()]
    for text in texts:
        parser.parse(f"${text}$")


def test_modes_and_overrides():
    for mode, (kernel, norm, _) in NL_MODES.items():
        spec = get_spec("nl", mode=mode)
        assert (spec.kernel, spec.normalization, spec.mode) == (kernel, norm, mode)
    assert get_spec("SNL", order=4).n_terms == 5


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: get_spec("transformer"), "unknown block 'transformer'; known blocks: nl, ns"),
        (lambda: get_spec("nl", mode="softmax"), "unknown mode 'softmax'"),
        (lambda: get_spec("snl", mode="dot_product"), "has no modes"),
        (lambda: get_spec("snl", order=-1), "order must be an integer >= 0"),
        (lambda: get_spec("nl", order=0), "needs order >= 1"),
        (lambda: get_spec("ns", order=2), "order-1 filter"),
        (lambda: get_spec("snl", basis="stable"), "basis 'stable'"),
        (lambda: get_spec("snl", symmetrize=False), "symmetric affinity"),
        (lambda: get_spec("snl", kernel="softmax"), "unknown kernel"),
        (lambda: get_spec("snl", colour="red"), "unknown spec field"),
    ],
)
def test_inconsistent_specs_are_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_error_for_non_string_name():
    with pytest.raises(TypeError, match="get_spec: name must be a block name"):
        get_spec(3)


def test_attention_rows_render_and_validate():
    from graphfilters.specs import ATTENTION_BLOCKS, get_attention_spec

    parser = mathtext.MathTextParser("path")
    for spec in ATTENTION_BLOCKS.values():
        for text in (spec.affinity_latex, spec.filter_latex):
            parser.parse(f"${text}$")
        assert spec.code
        assert spec.coefficients or spec.name == "efficient"   # efficient: no learned scalar
    assert get_attention_spec("attnscale").projector
    assert get_attention_spec("diffattn").operators == 2
    with pytest.raises(ValueError, match="unknown attention block 'nl'; known: gfsa"):
        get_attention_spec("nl")
