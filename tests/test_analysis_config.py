"""analysis.config: one frozen configuration of analyze(), flat overrides, declared checks."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch

from analysis import analyze
from analysis.config import (
    FLAT_NAMES,
    AccuracyConfig,
    AnalysisConfig,
    CaptureConfig,
    JacobianConfig,
    NoiseConfig,
    SpectrumConfig,
    StabilityConfig,
)
from graphfilters import _validate as V
from graphfilters.blocks import make_block

#: analyze()'s keyword defaults before the configuration (release 0.3), by flat name
OLD_DEFAULTS = dict(
    blocks=None, max_samples=8, method="auto", heads="mean", dense_limit=2048, n_max=10,
    jacobian=True, jacobian_samples=1, jacobian_k=1, stability_samples=1, tol=1e-3,
    stages=True, backbone=True, noise_level=0.1, affinity_noise=0.1, accuracy_levels=None,
    accuracy_batches=8, keep_captures=True, forward=None, model_kwargs=None, blas_threads=1,
)

SUBS = (CaptureConfig, SpectrumConfig, StabilityConfig, JacobianConfig, NoiseConfig,
        AccuracyConfig, AnalysisConfig)


def test_analyze_takes_at_most_eight_parameters():
    assert len(inspect.signature(analyze).parameters) <= 8


def test_the_default_configuration_is_the_old_defaults():
    assert AnalysisConfig().flat() == OLD_DEFAULTS
    assert set(FLAT_NAMES) == set(OLD_DEFAULTS)


@pytest.mark.parametrize("name", sorted(FLAT_NAMES))
def test_each_flat_name_sets_exactly_its_field(name):
    sub, field = FLAT_NAMES[name]
    owner_cls = AnalysisConfig if sub is None else type(getattr(AnalysisConfig(), sub))
    value = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v / 2,
             str: lambda v: "keep" if v == "mean" else "eigh"}
    old = OLD_DEFAULTS[name]
    new = value[type(old)](old) if type(old) in value else {
        "blocks": ("layer",), "forward": lambda m, b: m(b), "model_kwargs": {"mask": None},
        "accuracy_levels": (0.0, 0.1)}[name]
    cfg = AnalysisConfig().replace(**{name: new})
    flat = cfg.flat()
    assert flat[name] == new
    assert {k: v for k, v in flat.items() if k != name} == {
        k: v for k, v in OLD_DEFAULTS.items() if k != name}
    owner = cfg if sub is None else getattr(cfg, sub)
    assert isinstance(owner, owner_cls) and getattr(owner, field) == new


def test_a_whole_sub_configuration_and_jacobian_both_ways():
    cfg = AnalysisConfig().replace(spectrum=SpectrumConfig(method="eigh", dense_limit=64))
    assert cfg.spectrum == SpectrumConfig("eigh", 64)
    assert AnalysisConfig().replace(jacobian=False).jacobian == JacobianConfig(enabled=False)
    j = JacobianConfig(k=3)
    assert AnalysisConfig().replace(jacobian=j).jacobian is j
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.spectrum.method = "eig"


def test_unknown_option_names_the_argument_and_the_known_ones():
    x = torch.randn(1, 4, 3, 3)
    with pytest.raises(TypeError, match=r"analyze: unknown option 'tolerance'; known options:"
                                        r" .*\btol\b"):
        analyze(make_block("snl", 4), x, tolerance=1e-4, progress=False)
    with pytest.raises(TypeError, match="analyze: config must be an AnalysisConfig or None, got"):
        analyze(make_block("snl", 4), x, {"tol": 1e-4}, progress=False)


@pytest.mark.parametrize("name,bad", [("tol", -1.0), ("tol", math.nan), ("max_samples", 0),
                                      ("method", "exact"), ("heads", "all"), ("jacobian", 1),
                                      ("accuracy_levels", (-0.1,)), ("blas_threads", 0)])
def test_a_bad_override_is_named_in_the_callers_words(name, bad):
    with pytest.raises((TypeError, ValueError), match=f"analyze: {name} must be"):
        analyze(make_block("snl", 4), torch.randn(1, 4, 3, 3), progress=False, **{name: bad})


def _config_cases():
    out = []
    for cls in SUBS:
        for name, cs in cls.constraints.items():
            for i, bad in enumerate(V.invalid_values([V.make_constraint(c) for c in cs])):
                out.append(pytest.param(cls, name, bad, id=f"{cls.__name__}-{name}-{i}"))
    return out


@pytest.mark.parametrize("cls,name,bad", _config_cases())
def test_generated_invalid_values_of_every_declared_field(cls, name, bad):
    """Generated from the declarations, as tests/test_validation_generated.py does for
    functions: every value that satisfies none of a field's constraints is refused."""
    with pytest.raises((TypeError, ValueError), match=f"{cls.__name__}: {name} must be"):
        cls(**{name: bad})


def test_every_field_is_declared():
    for cls in SUBS:
        names = {f.name for f in dataclasses.fields(cls)}
        assert names == set(cls.constraints), cls.__name__


def test_config_and_flat_overrides_give_the_same_table():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), make_block("snl", 8, dim=2))
    with torch.no_grad():
        model[1].norm.weight.fill_(0.5)       # not the identity block of initialization
    x = torch.randn(2, 3, 5, 5)
    flat = analyze(model, x, tol=1e-4, method="eigh", n_max=4, progress=False)
    cfg = AnalysisConfig(spectrum=SpectrumConfig(method="eigh"),
                         stability=StabilityConfig(n_max=4, tol=1e-4))
    nested = analyze(model, x, cfg, progress=False)
    a, b = flat.to_frame("all"), nested.to_frame("all")
    timing = [c for c in a.columns if c.startswith("time") or c.endswith("_s")]
    assert a.drop(columns=timing).equals(b.drop(columns=timing))
    assert flat[0].spectrum_method == "eigh" and flat[0].status == "ok"
