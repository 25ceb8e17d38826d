"""Checkpoints of the official SNL code load and compute what the official code computes.

The official modules are reconstructed in ``tests/official_reference.py`` (their real module
names and nesting, so the real key layout is tested), given random weights and random
BatchNorm statistics, saved as ``train_val.py`` saves them and loaded with
:func:`graphfilters.official.load_official`; logits and every nonlocal unit agree to 1e-10 in
float64.
"""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from graphfilters.blocks import CGNL, DisentangledNonLocal, NonlocalStage
from graphfilters.official import (
    NL_TYPES,
    OfficialDifferenceWarning,
    OfficialNet,
    load_official,
    official_state_dict,
)
from tests import official_reference as R

TOL = 1e-10
#: the largest error seen in this module (printed with -s by the last test)
_ERRORS: list[float] = []


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    e = float((a - b).detach().abs().max())
    _ERRORS.append(e)
    return e


def _load(sd, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OfficialDifferenceWarning)
        return load_official(sd, *args, **kw)


def _images(n=2, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _nonlocal_contribution(ref, path, x):
    """Relative size of what the official nonlocal module adds to its input."""
    with torch.no_grad():
        xin = R.unit_inputs(ref, path, x)
        out = ref.get_submodule(path)(xin)
        return float((out - xin).norm() / xin.norm())


def _per_unit(ref_nl, lib_nl, xin, nl_type):
    """Outputs after every unit (stage types, cc) or of the module (cgnl) agree."""
    if nl_type == "cgnl":
        return [_err(lib_nl(xin), ref_nl(xin))]
    if nl_type == "cc":
        errs, a, b = [], xin, xin
        for ru, lu in zip(ref_nl, lib_nl):
            a, b = ru(a), lu(b)
            errs.append(_err(b, a))
        return errs
    att = ref_nl.affinity(xin)
    aff = lib_nl.compute_affinity(xin)
    errs, a, b = [], xin, xin
    for ru, lu in zip(ref_nl.stages, lib_nl.units):
        a_in = a
        a, b = ru(a, att), lu(b, aff)
        errs.append(_err(b, a))
        # the unit alone, on the official unit's input
        errs.append(_err(lu(a_in, aff), ru(a_in, att)))
    return errs


# ---------------------------------------------------------------------------------------------
# CIFAR PreResNets: every nl_type, stage_num 1 and 3, saved as train_val.py saves them


@pytest.mark.parametrize("stage_num", [1, 3])
@pytest.mark.parametrize("nl_type", NL_TYPES)
def test_preresnet20_file_as_saved_gives_the_official_logits(tmp_path, nl_type, stage_num):
    ref = R.randomize(R.PreResNet("20", nl_type, stage_num, ("1",), num_classes=1000), seed=1)
    x = _images()
    logits = ref(x)
    path = tmp_path / "ckpt.pth.tar"
    R.save_like_train_val(ref, path, data_parallel=stage_num == 3, cifar_extras=True)
    model = _load(path, "20", nl_type)
    assert not model.training
    expected_units = 1 if nl_type == "cgnl" else stage_num
    assert model.config["stage_num"] == expected_units          # read from the keys
    assert model.config["num_classes"] == 1000                  # fc2 as model_hub builds it
    assert _err(model(x), logits) < TOL
    # per unit, on the input the official block sees
    assert _nonlocal_contribution(ref, "layer1.2", x) > 0.05
    xin = R.unit_inputs(ref, "layer1.2", x)
    errs = _per_unit(ref.layer1[2], model.layer1[2], xin, nl_type)
    assert max(errs) < TOL


@pytest.mark.parametrize("arch,stages", [("56", ("3",)), ("110", ("2", "3"))])
def test_bottleneck_preresnets_with_blocks_in_later_stages(arch, stages):
    ref = R.randomize(R.PreResNet(arch, "snl", 2, stages, num_classes=100), seed=2)
    x = _images(size=32)
    model = _load(ref.state_dict(), arch, "snl")
    assert model.nonlocal_paths == [f"layer{s}.2" for s in stages]
    assert _err(model(x), ref(x)) < TOL


# ---------------------------------------------------------------------------------------------
# ImageNet ResNet-50 (small spatial size), the SNL head


_R50_CASES = [(t, False, False) for t in NL_TYPES] + [("nl", True, True), ("dnl", True, True),
                                                     ("a2", True, False)]


@pytest.fixture(scope="module")
def resnet50():
    """One random official ResNet-50 backbone (float64); each case swaps its nonlocal module."""
    return R.randomize(R.ResNet50("snl", 1, pool_size=1, num_classes=1000), seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("nl_type,is_sys,is_norm", _R50_CASES)
def test_resnet50_gives_the_official_logits(tmp_path, resnet50, nl_type, is_sys, is_norm):
    stage_num = 3 if nl_type in ("snl", "dnl", "cc") and not is_norm else 1
    ref = resnet50
    ref.layer3[5] = R.randomize(R.add_nonlocal(1024, 512, nl_type, stage_num, is_sys, is_norm),
                                seed=100 + _R50_CASES.index((nl_type, is_sys, is_norm)))
    x = _images(n=1, size=32)                      # 32 -> 1 x 1 after layer4
    if nl_type == "snl":                           # once: the file as train_val.py saves it
        path = tmp_path / "r50.pth.tar"
        R.save_like_train_val(ref, path, data_parallel=True)
        source = path
    else:
        source = ref.state_dict()
    model = _load(source, "resnet50", nl_type, is_sys=is_sys, is_norm=is_norm, pool_size=1)
    assert model.config["stem"] == "imagenet" and model.config["stage_num"] == (
        1 if nl_type == "cgnl" else stage_num)
    with torch.no_grad():
        logits = ref(x)
        assert _err(model(x), logits) < TOL * max(1.0, float(logits.abs().max()))
    with torch.no_grad():
        xin = R.unit_inputs(ref, "layer3.5", x)
        assert max(_per_unit(ref.layer3[5], model.layer3[5], xin, nl_type)) < TOL * max(
            1.0, float(xin.abs().max()))


@pytest.mark.slow
def test_resnet50_cifar_stem_of_train_val():
    ref = R.randomize(R.ResNet50("snl", 1, pool_size=4, num_classes=10, cifar_stem=True), seed=4)
    x = _images(n=1, size=32)
    model = _load(ref.state_dict(), "resnet50", "snl")
    assert (model.config["stem"], model.config["pool_size"]) == ("cifar", 4)
    assert _err(model(x), ref(x)) < TOL


@pytest.mark.parametrize("stage_num", [1, 3])
def test_snl_head_from_an_mmseg_checkpoint(tmp_path, stage_num):
    seg = R.randomize(R.Segmentor(stage_num=stage_num), seed=5)
    path = tmp_path / "iter_80000.pth"
    torch.save({"meta": {"mmseg_version": "0.x", "CLASSES": ["road", "sidewalk"]},
                "state_dict": seg.state_dict()}, path)
    model = _load(path, "snl_head", "snl")
    x = torch.randn(2, 16, 9, 7, dtype=torch.float64)
    assert model.config["stage_num"] == stage_num
    assert _err(model(x), seg.decode_head(x)) < TOL
    xin = seg.decode_head.convs[0](x)
    assert max(_per_unit(seg.decode_head.SNL, model.SNL, xin, "snl")) < TOL
    assert model.SNL.units[0].sign == -1                   # w_1 g - w_2 Â g


# ---------------------------------------------------------------------------------------------
# the stage as one function: full Jacobian of the stage (affinity recomputed) equals the official


@pytest.mark.parametrize("nl_type", ["snl", "ns", "dnl"])
def test_stage_jacobian_matches_the_official_stage(nl_type):
    ref = R.randomize(R.Stage(8, 4, nl_type, stage_num=3, is_sys=True, is_norm=True), seed=6)
    lib = _library_stage(ref, nl_type)
    x = torch.randn(1, 8, 3, 4, dtype=torch.float64)
    j_ref = torch.autograd.functional.jacobian(ref, x)
    j_lib = torch.autograd.functional.jacobian(lib, x)
    assert _err(j_lib, j_ref) < TOL


def _library_stage(ref: R.Stage, nl_type: str) -> NonlocalStage:
    """The library stage built and loaded by the loader's own map from the official keys."""
    from graphfilters.blocks._convert import copy_weights
    from graphfilters.official import _nonlocal, _nonlocal_map

    c, cs, n = ref.t.in_channels, ref.t.out_channels, len(ref.stages)
    stage = _nonlocal(nl_type, c, cs, n, True, True).double()
    mapping = _nonlocal_map(nl_type, "", "", c, cs, n)
    copy_weights(stage, ref.state_dict(), [(a, b, s) for a, b, s, _ in mapping])
    return stage.eval()


# ---------------------------------------------------------------------------------------------
# blocks the loader uses


def test_dnl_pairwise_unit_records_its_operator():
    unit = DisentangledNonLocal(8, 4, pairwise="snl", bias=False).double().eval()
    unit.record = True
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    unit(x)
    rec = unit.last_record
    op = rec.affinity.normalized(rec.normalization).dense()
    a_snl = R.Stage(8, 4, "snl").double()
    a_snl.t.weight.data.copy_(unit.theta.weight)
    a_snl.p.weight.data.copy_(unit.phi.weight)
    u = torch.softmax(unit.unary(x).flatten(1), -1)
    expected = a_snl.affinity(x) + u[:, None, :]
    assert _err(op, expected) < TOL


def test_dnl_unit_called_with_its_captured_affinity():
    """analysis.block_function holds a shared unit's captured affinity fixed: the DNL unit then
    uses it as is (no second normalization, no second unary term)."""
    from analysis import block_function, capture

    ref = R.randomize(R.PreResNet("20", "dnl", 2, ("2",), num_classes=10), seed=11)
    model = _load(ref.state_dict(), "20", "dnl")
    x = _images(n=1)
    caps = capture(model, x, progress=False)
    fn, xin = block_function(caps["layer2.2.units.1"])
    stage_in = R.unit_inputs(ref, "layer2.2", x)
    with torch.no_grad():
        att = ref.layer2[2].affinity(stage_in)
        assert _err(fn(xin), ref.layer2[2].stages[1](xin, att)) < TOL


def test_cgnl_group_norm_option():
    block = CGNL(8, norm="group")
    assert isinstance(block.norm, torch.nn.GroupNorm)
    x = torch.randn(2, 8, 3, 3)
    assert torch.equal(block(x), x)                 # zero-initialized affine
    block.reset_parameters()
    with pytest.raises(ValueError, match="norm must be"):
        CGNL(8, norm="layer")


def test_difference_warning_and_attribute():
    sd = official_state_dict(OfficialNet("20", "nl", num_classes=10))
    with pytest.warns(OfficialDifferenceWarning, match="SNL affinity"):
        model = load_official(sd, "20", "nl")
    assert any("SNL affinity" in d for d in model.official_differences)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        snl = load_official(official_state_dict(OfficialNet("20", "snl", num_classes=10)),
                            "20", "snl")
    assert snl.official_differences == []
    cg = _load(official_state_dict(OfficialNet("20", "cgnl", num_classes=10)), "20", "cgnl")
    assert any("stage_num" in d for d in cg.official_differences)


# ---------------------------------------------------------------------------------------------
# mismatched files get a clear error


def _sd(arch="20", nl_type="snl", **kw):
    return official_state_dict(OfficialNet(arch, nl_type, num_classes=10, **kw))


def test_checkpoint_of_another_arch():
    with pytest.raises(ValueError, match=r"PreResNet-20 with nl_type 'snl'.*(missing|unexpected)"
                       r".*conv3"):
        _load(_sd("56"), "20", "snl")
    with pytest.raises(ValueError, match="no nonlocal module found for a CIFAR PreResNet-20"):
        _load(_sd("resnet50", stem="cifar"), "20", "snl")
    with pytest.raises(ValueError, match="ResNet-50.*missing keys"):
        _load(_sd("20"), "resnet50", "snl")


def test_checkpoint_of_another_nl_type():
    with pytest.raises(ValueError, match=r"nl_type 'nl'.*unexpected keys \['layer1\.2\.stages"
                       r"\.0\.w_1\.weight'\]"):
        _load(_sd(nl_type="snl"), "20", "nl")
    with pytest.raises(ValueError, match=r"nl_type 'dnl'.*missing keys.*w_m"):
        _load(_sd(nl_type="nl"), "20", "dnl")
    with pytest.raises(ValueError, match="nl_type 'cc'"):
        _load(_sd(nl_type="cgnl"), "20", "cc")


def test_misshaped_and_mismatched_arguments():
    sd = _sd()
    sd["layer1.2.stages.0.w_2.weight"] = torch.zeros(16, 8, 3, 3)
    with pytest.raises(ValueError, match=r"misshaped keys.*w_2\.weight: got \(16, 8, 3, 3\)"):
        _load(sd, "20", "snl")
    with pytest.raises(ValueError, match="stage_num=2 was given but the checkpoint has 1"):
        _load(_sd(), "20", "snl", stage_num=2)
    with pytest.raises(ValueError, match="arch must be one of"):
        _load(_sd(), "32", "snl")
    with pytest.raises(NotImplementedError, match="softmax of symmetrized logits"):
        _load(_sd("resnet50", "snl"), "resnet50", "nl", is_sys=True)
    with pytest.raises(NotImplementedError, match="row degrees on both sides"):
        _load(_sd("resnet50", "snl"), "resnet50", "nl", is_norm=True)


class _Foreign:
    """An object a weights-only load refuses (e.g. an argparse Namespace in a checkpoint)."""


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_truncated_file_and_foreign_pickle(tmp_path):
    good = tmp_path / "good.pth.tar"
    torch.save({"state_dict": _sd()}, good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.pth.tar"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or another format"):
        _load(bad, "20", "snl")

    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": _sd(), "args": _Foreign()}, foreign)
    with pytest.raises(ValueError, match="weights_only=True.*refused"):
        _load(foreign, "20", "snl")
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises((ValueError, TypeError)):
        _load(plain, "20", "snl")
    with pytest.raises(FileNotFoundError):
        _load(tmp_path / "none.pth", "20", "snl")
    with pytest.raises(TypeError, match="not tensors"):
        _load({"state_dict": {"a": 1}}, "20", "snl")


# ---------------------------------------------------------------------------------------------
# the analysis reads these models like its own


@pytest.mark.parametrize("nl_type", ["snl", "dnl"])
def test_captured_spectrum_is_the_official_operators(nl_type):
    """The spectrum analysis reads from a loaded unit is that of the operator the official unit
    multiplies by (exact dense eigenvalues of the official Â, plus 1 softmax(w_m x)ᵀ for dnl)."""
    import numpy as np

    from analysis import capture, spectrum

    ref = R.randomize(R.PreResNet("20", nl_type, 2, ("2",), num_classes=10), seed=12)
    model = _load(ref.state_dict(), "20", nl_type)
    x = _images(n=1)
    caps = capture(model, x, progress=False)
    stage_in = R.unit_inputs(ref, "layer2.2", x)
    with torch.no_grad():
        att = ref.layer2[2].affinity(stage_in)
        for u in range(2):
            cap = caps[f"layer2.2.units.{u}"]
            op = att
            if nl_type == "dnl":
                unit_in = R.unit_inputs(ref, f"layer2.2.stages.{u}", x)
                w = torch.softmax(ref.layer2[2].stages[u].w_m(unit_in).flatten(1), -1)
                op = att + w[:, None, :]
            expected = np.sort_complex(np.linalg.eigvals(op[0].numpy()))
            got = np.sort_complex(np.asarray(spectrum(cap, "normalized", method="eig",
                                                      progress=False).eigenvalues[0],
                                             dtype=complex))
            assert _err(torch.from_numpy(got), torch.from_numpy(expected)) < 1e-9


@pytest.mark.slow
def test_analyze_rows_on_a_loaded_model():
    from analysis import analyze

    ref = R.randomize(R.PreResNet("20", "snl", 2, ("3",), num_classes=10), seed=7)
    model = _load(ref.state_dict(), "20", "snl").float()
    table = analyze(model, _images(size=32).float(), max_samples=1, progress=False,
                    n_max=3)
    # one row per unit and one for the stage (its two units sharing one affinity)
    assert [r.path for r in table] == ["layer3.2.units.0", "layer3.2.units.1", "layer3.2"]
    assert [getattr(r, "source", None) for r in table][-1] == "stage"
    assert all(r.status == "ok" for r in table)
    assert all(r.n_nodes == 64 for r in table)
    stage = table[-1]
    assert stage.n_units == 2 and stage.jacobian_full > 0 and stage.jacobian_frozen > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("nl_type", NL_TYPES)
def test_loaded_on_gpu_equals_the_official_on_cpu(nl_type):
    ref = R.randomize(R.PreResNet("20", nl_type, 2, ("2",), num_classes=10), seed=10)
    x = _images()
    model = _load(ref.state_dict(), "20", nl_type, device="cuda")
    assert next(model.parameters()).is_cuda
    assert _err(model(x.cuda()).cpu(), ref(x)) < TOL


# ---------------------------------------------------------------------------------------------
# import-official: a graphfilters checkpoint that load_model, analyze and report take


@pytest.mark.slow
def test_import_official_cli_analyze_and_report(tmp_path, capsys):
    from analysis.cli import main
    from graphfilters.data import get_dataset
    from graphfilters.official import CIFAR_NORMALIZATION
    from graphfilters.training import load_model
    from tests.test_data import _fake_cifar10

    _fake_cifar10(tmp_path / "cifar-10-batches-py")
    ref = R.randomize(R.PreResNet("20", "ns", 2, ("1",), num_classes=1000), seed=8).float()
    src = tmp_path / "model_best.pth.tar"
    R.save_like_train_val(ref.double(), src, data_parallel=True, cifar_extras=True)
    out = tmp_path / "ns.pt"
    assert main(["import-official", str(src), "--arch", "20", "--nl-type", "ns", "--out",
                 str(out), "--dataset", "cifar10", "--data-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "note: official 'ns'" in printed and "wrote" in printed
    model = load_model(out)
    assert type(model) is OfficialNet and model.config["official_arch"] == "20"
    # library-normalized test images give the official logits on official-normalized ones
    data = get_dataset({"name": "cifar10", "root": str(tmp_path)})
    x, _ = data.tensors("test")
    x = x.double()
    mean = torch.tensor(CIFAR_NORMALIZATION["mean"], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_NORMALIZATION["std"], dtype=torch.float64).view(1, 3, 1, 1)
    dm = torch.tensor(data.mean, dtype=torch.float64).view(1, 3, 1, 1)
    ds = torch.tensor(data.std, dtype=torch.float64).view(1, 3, 1, 1)
    x_official = (x * ds + dm - mean) / std
    ref = ref.double()
    assert _err(model.double()(x), ref(x_official)) < TOL
    assert main(["analyze", str(out), "--samples", "2", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "layer1.2.units.0" in table and "layer1.2.units.1" in table
    assert main(["report", str(out), "--out", str(tmp_path / "rep"), "--samples", "2",
                 "--device", "cpu"]) == 0
    assert "official-ns" in (tmp_path / "rep" / "report.md").read_text()


def test_import_official_cli_errors(tmp_path, capsys):
    from analysis.cli import main

    src = tmp_path / "snl.pth.tar"
    torch.save({"state_dict": _sd()}, src)
    assert main(["import-official", str(src), "--arch", "56", "--nl-type", "snl", "--out",
                 str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "PreResNet-56" in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "snl.pt"
    assert main(["import-official", str(src), "--arch", "20", "--nl-type", "snl", "--out",
                 str(out)]) == 0
    from graphfilters.training import load_model

    model = load_model(out)
    x = _images(n=1).float()
    ref = _load(src, "20", "snl")
    assert torch.equal(model(x), ref(x))


def test_largest_error_seen():
    """Run last in this module: the largest deviation of all comparisons above."""
    if _ERRORS:
        print(f"\nlargest |official - loaded| in test_official: {max(_ERRORS):.3g} "
              f"over {len(_ERRORS)} comparisons")
        assert max(_ERRORS) < TOL
