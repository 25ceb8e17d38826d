"""Invalid-input tests generated from the declarations of :func:`validate_params`.

For every registered function and every constrained argument, each value that satisfies
none of the argument's constraints (:func:`graphfilters._validate.invalid_values`) is
substituted into an otherwise valid call (the registration's ``valid()``), which must raise
``TypeError``/``ValueError`` naming the function and the argument. The valid call itself must
succeed (so a test cannot pass because every call fails). Plus the class fixes of issue 24,
one test each, and hypothesis properties for shapes, dtypes and sizes.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import analysis
import graphfilters
from graphfilters import _validate as V
from graphfilters.chebyshev import chebyshev_filter
from graphfilters.graph import DenseAffinity, LowRankAffinity, lambda_max
from graphfilters.spectral import ConvergenceWarning


def _import_every_module() -> None:
    """Every module of both packages, so that every declaration is registered."""
    for pkg in (graphfilters, analysis):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)


_import_every_module()


def _cases():
    out = []
    for key, reg in sorted(V.REGISTRY.items()):
        if reg.valid is None or not reg.module.startswith(("graphfilters", "analysis")):
            continue
        for name, cs in reg.constraints.items():
            for i, bad in enumerate(V.invalid_values(cs)):
                out.append(pytest.param(key, name, bad, id=f"{reg.where}-{name}-{i}"))
    return out


CASES = _cases()


def _call(reg, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reg.target()(**kwargs)


@pytest.mark.parametrize("key", sorted(k for k, r in V.REGISTRY.items() if r.valid))
def test_the_valid_call_of_each_registration_succeeds(key):
    reg = V.REGISTRY[key]
    _call(reg, reg.valid())


@pytest.mark.parametrize("key,name,bad", CASES)
def test_generated_invalid_value_is_a_clear_error(key, name, bad):
    reg = V.REGISTRY[key]
    kwargs = {**reg.valid(), name: bad}
    with pytest.raises((TypeError, ValueError)) as info:
        _call(reg, kwargs)
    msg = str(info.value)
    assert f"{reg.where}: {name} must be" in msg, msg


def test_generated_suite_counts(capsys):
    t0 = time.perf_counter()
    regs = [r for r in V.REGISTRY.values() if r.valid is not None]
    n_constraints = sum(len(cs) for r in regs for cs in r.constraints.values())
    n_params = sum(len(r.constraints) for r in regs)
    for p in CASES:                      # rerun every generated case once, timed
        key, name, bad = p.values
        reg = V.REGISTRY[key]
        with pytest.raises((TypeError, ValueError)):
            _call(reg, {**reg.valid(), name: bad})
    dt = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[generated validation] {len(regs)} functions, {n_params} arguments, "
              f"{n_constraints} constraints, {len(CASES)} cases, {dt:.2f} s")
    assert len(regs) >= 10 and len(CASES) >= 100


# -- the classes of issue 24, one test each ---------------------------------------------------


def test_precision_lambda_max_of_half_is_documented_float32():
    A = torch.rand(5, 5, generator=torch.Generator().manual_seed(0))
    out = lambda_max(((A + A.T) / 2).half())
    assert out.dtype == torch.float32          # the documented upcast (Notes of lambda_max)


def test_shapes_laplacian_matmul_of_another_n():
    with pytest.raises(ValueError, match="X must have shape"):
        DenseAffinity(np.ones((3, 3))).laplacian_matmul(np.ones((4, 1)), "combinatorial")


def test_shapes_chebyshev_weight_of_another_c_in():
    with pytest.raises(ValueError, match=r"weights\[0\] must have shape \(C_in, C_out\)"):
        chebyshev_filter(np.eye(3), np.ones((3, 2)), [np.ones((3, 1)), np.ones((3, 1))])


def test_shapes_linear_operator_index_past_the_batch():
    op = LowRankAffinity(np.ones((2, 4, 1)), np.ones((2, 4, 1)))
    with pytest.raises(ValueError, match="outside the batch"):
        op.as_linear_operator(index=5)
    assert op.as_linear_operator(index=1).shape == (4, 4)


@pytest.mark.parametrize("lam", [0, -2])
def test_symbolic_derive_refuses_lambda_max(lam):
    from graphfilters.symbolic import derive

    with pytest.raises(ValueError, match="derive: lambda_max must be"):
        derive("snl", lambda_max=lam)


def test_symbolic_identify_of_division_by_zero():
    from graphfilters.symbolic import A, W, Z, identify

    with pytest.raises(ValueError, match="division by zero"):
        identify(A * Z * W / 0)


@pytest.mark.parametrize("kw,name", [({"order": -1}, "order"), ({"n_vectors": 0}, "n_vectors")])
def test_analysis_spectral_density_arguments(kw, name):
    from analysis.spectra import spectral_density

    with pytest.raises(ValueError, match=f"spectral_density: {name} must be"):
        spectral_density(np.ones((3, 3)), progress=False, **kw)


def test_iterations_power_lambda_max_warns_with_the_residual_reached():
    rng = np.random.default_rng(9)
    A = torch.as_tensor(rng.random((3, 30, 30)))
    with pytest.warns(ConvergenceWarning, match=r"relative residual \d") as seen:
        lambda_max(A, "sym", "power", n_iter=300)
    # the warning names this line, not the declaration's wrapper or a helper in between
    assert {w.filename for w in seen} == {__file__}


def test_warnings_of_declared_functions_point_at_the_caller():
    from analysis.spectra import spectrum

    A = DenseAffinity(torch.rand(1, 300, 300, generator=torch.Generator().manual_seed(0)))
    with pytest.warns(ConvergenceWarning) as seen:               # a tiny Krylov space
        spectrum(A, "normalized", "sym", method="block_krylov", k=4, tol=1e-14, block_size=1,
                 n_blocks=2, progress=False)
    assert {w.filename for w in seen} == {__file__}


# -- hypothesis: shapes, dtypes and sizes ---------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3),
       st.sampled_from([np.float32, np.float64]))
def test_signal_of_any_other_n_is_refused(n, m, c, dtype):
    op = DenseAffinity(np.ones((n, n), dtype=dtype))
    Z = np.ones((m, c), dtype=dtype)
    if m == n:
        assert op.laplacian_matmul(Z, "sym").shape == (n, c)
    else:
        with pytest.raises(ValueError, match="must have shape"):
            op.laplacian_matmul(Z, "sym")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))
def test_weight_of_any_other_c_in_is_refused(n, c_in, c_w):
    Z = np.ones((n, c_in))
    W = [np.ones((c_w, 2))]
    if c_w == c_in:
        assert chebyshev_filter(np.eye(n), Z, W).shape == (n, 2)
    else:
        with pytest.raises(ValueError, match="C_in"):
            chebyshev_filter(np.eye(n), Z, W)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(-5, 5))
def test_linear_operator_index_in_or_out_of_the_batch(b, i):
    op = LowRankAffinity(np.ones((b, 3, 1)), np.ones((b, 3, 1)))
    if -b <= i < b:
        assert op.as_linear_operator(index=i).shape == (3, 3)
    else:
        with pytest.raises(ValueError, match="outside the batch"):
            op.as_linear_operator(index=i)


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=2), st.booleans(),
                 st.none()))
def test_generated_order_values_for_spectral_density(value):
    from analysis.spectra import spectral_density

    with pytest.raises((TypeError, ValueError), match="order must be"):
        spectral_density(np.ones((3, 3)), order=value, progress=False)


# -- files --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["hello world\n", "x\n"])
def test_files_text_renamed_pt_is_a_clear_error_naming_the_file(tmp_path, text):
    from graphfilters.official import load_official
    from graphfilters.training import load_checkpoint

    path = tmp_path / "model.pt"
    path.write_text(text)
    for load in (load_checkpoint, lambda p: load_official(p, "resnet50", "snl")):
        with pytest.raises(ValueError, match="model.pt"):
            load(path)


def test_analysis_analyze_without_data_is_a_clear_error():
    from analysis import analyze
    from graphfilters.blocks import make_block

    with pytest.raises(TypeError, match="analyze: data must be"):
        analyze(torch.nn.Sequential(make_block("snl", 4, dim=2)), None, progress=False)


def test_files_snl_state_dict_missing_or_extra_key_says_what_it_expected():
    from graphfilters.blocks import SNL
    from graphfilters.blocks.reference import OfficialSNL

    sd = dict(OfficialSNL(8).state_dict())
    missing = {k: v for k, v in sd.items() if k != "stages.0.bn.running_var"}
    with pytest.raises(ValueError, match=r"missing keys \['stages.0.bn.running_var'\]"):
        SNL.from_official_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected keys.*Expected the official key names"):
        SNL.from_official_state_dict({**sd, "extra.weight": sd["t.weight"]})
