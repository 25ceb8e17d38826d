"""Stacking options of the model and the training loop (issue 10, the experiment)."""

from __future__ import annotations

import math

import pytest
import torch

from graphfilters.blocks import NonlocalStage
from graphfilters.data import long_range_task
from graphfilters.models import PreResNet, build_model, receptive_field, stacking_config
from graphfilters.specs import BLOCK_NAMES
from graphfilters.training import TrainConfig, learning_rate, load_checkpoint, train

TINY_DATA = {"name": "digits", "size": 8}


def test_stage_placement_k_units_share_one_affinity_object():
    model = PreResNet(depth=8, width=4, block="nl", **stacking_config(3, "stage", depth=8))
    (path,) = model.nonlocal_paths
    stage = model.get_submodule(path)
    assert isinstance(stage, NonlocalStage) and stage.n_units == 3
    assert stage.units[0].theta is not None
    assert all(u.theta is None and u.phi is None for u in stage.units[1:])
    seen = []
    for unit in stage.units:
        unit.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    calls = []
    orig = stage.compute_affinity
    stage.compute_affinity = lambda x: calls.append(1) or orig(x)
    model(torch.randn(2, 3, 8, 8))
    assert len(calls) == 1  # the affinity is computed once, from the stage input
    assert len(seen) == 3 and all(a is seen[0] for a in seen)


def test_spread_placement_puts_k_independent_blocks_at_several_positions():
    conf = stacking_config(3, "spread", depth=8)
    model = PreResNet(depth=8, width=4, block="snl", **conf)
    assert len(model.nonlocal_paths) == 3
    assert len({p.rsplit(".", 1)[0] if p.count(".") > 1 else p
                for p in model.nonlocal_paths}) == 3  # three different positions
    blocks = [model.get_submodule(p) for p in model.nonlocal_paths]
    assert all(not isinstance(b, NonlocalStage) and b.theta is not None for b in blocks)
    # more blocks than positions: several independent blocks at a position
    many = PreResNet(depth=8, width=4, block="snl", **stacking_config(10, "spread", depth=8))
    assert len(many.nonlocal_paths) == 10
    assert build_model(many.config).nonlocal_paths == many.nonlocal_paths
    # k = 1: both layouts are one block at the default position
    assert stacking_config(1, "spread", depth=20)["placements"] == [[1, 2]]
    with pytest.raises(ValueError, match="placement"):
        stacking_config(2, "diagonal")


@pytest.mark.parametrize("block", ["nl", "snl"])
def test_zero_init_off_gives_a_non_identity_block_at_init(block):
    torch.manual_seed(0)
    x = torch.randn(4, 4, 6, 6)
    for zero_init in (True, False):
        model = PreResNet(depth=8, width=4, block=block, block_zero_init=zero_init,
                          **stacking_config(2, "stage", depth=8))
        stage = model.get_submodule(model.nonlocal_paths[0])
        same = torch.allclose(stage(x), x)
        assert same is zero_init
        assert model.config["block_zero_init"] is zero_init
    assert build_model(model.config).config == model.config


def test_zero_init_off_for_every_block_type():
    x = torch.randn(2, 8, 6, 6)
    for name in BLOCK_NAMES:
        for zero_init in (True, False):
            model = PreResNet(depth=8, width=8, block=name, block_positions=[1],
                              block_zero_init=zero_init)
            block = model.get_submodule(model.nonlocal_paths[0])
            assert torch.allclose(block(x), x) is zero_init, (name, zero_init)


def test_old_configs_without_the_new_keys_still_build():
    old = {"arch": "preresnet", "depth": 8, "num_classes": 10, "in_channels": 3, "width": 4,
           "block": "snl", "block_stages": [1], "block_positions": [1],
           "blocks_per_position": 1, "share_affinity": False, "block_options": {},
           "placements": None}
    assert build_model(old).config["block_zero_init"] is True


def test_warmup_off_has_no_ramp():
    off = TrainConfig(lr=0.4, warmup_epochs=0)
    assert [learning_rate(off, e) for e in (0, 0.01, 0.5)] == [0.4, 0.4, 0.4]
    on = TrainConfig(lr=0.4, warmup_epochs=1)
    assert learning_rate(on, 0) < 0.4


def test_per_step_records_in_result_and_checkpoint(tmp_path):
    res = train({"depth": 8, "width": 4, "block": "snl", "block_positions": [1]},
                {"epochs": 2, "batch_size": 512, "progress": False, "device": "cpu"},
                data=TINY_DATA, out=tmp_path / "m.pt")
    n = res.history[-1]["step"]
    assert n >= 4  # 3 steps per epoch
    for key in ("step", "epoch", "lr", "loss", "grad_norm", "grad_max"):
        assert len(res.steps[key]) == n, key
    assert res.steps["step"] == list(range(1, n + 1))
    assert all(0 < m <= g * (1 + 1e-9) for m, g in zip(res.steps["grad_max"],
                                                       res.steps["grad_norm"]))
    per_epoch = [h["grad_norm"] for h in res.history]
    first = [g for g, e in zip(res.steps["grad_norm"], res.steps["epoch"]) if e == 1]
    assert math.isclose(per_epoch[0], sum(first) / len(first), rel_tol=1e-9)
    ckpt = load_checkpoint(res.checkpoint)
    assert ckpt["extra"]["step_log"]["loss"] == res.steps["loss"]


def test_divergence_on_a_forced_blow_up_is_detected_and_recorded():
    res = train({"depth": 8, "width": 4, "block": "nl", "block_zero_init": False,
                 "block_positions": [1]},
                {"epochs": 3, "batch_size": 128, "lr": 1e5, "progress": False,
                 "device": "cpu"}, data=TINY_DATA)
    assert res.diverged
    last = res.history[-1]
    assert last["diverged"] and last["step"] == res.divergence["step"]
    assert "at epoch" in res.divergence["reason"]
    # the step that diverged is in the per-step log, with its loss
    assert res.steps["step"][-1] == res.divergence["step"]
    loss = res.steps["loss"][-1]
    assert not math.isfinite(loss) or loss == res.divergence["loss"]


def test_max_loss_factor_stops_an_exploding_loss():
    res = train({"depth": 8, "width": 4},
                {"epochs": 3, "batch_size": 128, "lr": 50.0, "momentum": 0.0,
                 "max_loss_factor": 1.5, "progress": False, "device": "cpu"},
                data=TINY_DATA)
    assert res.diverged
    assert "max_loss_factor" in res.divergence["reason"] or "nan" in res.divergence["reason"] \
        or "inf" in res.divergence["reason"]
    with pytest.raises(ValueError, match="max_loss_factor"):
        TrainConfig(max_loss_factor=0.5)


def test_receptive_field_matches_the_gradient_support():
    torch.manual_seed(0)
    model = PreResNet(depth=8, width=4, in_channels=1).eval()
    x = torch.randn(1, 1, 64, 64, requires_grad=True)
    out = model.layer3(model.layer2(model.layer1(model.conv1(x))))
    out[0, :, 8, 8].sum().backward()
    support = (x.grad[0, 0] != 0).nonzero()
    side = (support.max(0).values - support.min(0).values + 1).tolist()
    assert side == [receptive_field(8)] * 2


def test_long_range_marks_beyond_the_receptive_field():
    rf = receptive_field(8)
    data = long_range_task(n_train=64, n_test=8, size=40, receptive_field=rf, noise=0.0,
                           seed=3)
    assert data.options["min_distance"] == rf + 4 - 1
    for img in data.x_train[:, 0]:
        ys, xs = (img != 0).nonzero(as_tuple=True)
        # no rf x rf window touches pixels of both marks
        assert max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 1 > rf + 4
    with pytest.raises(ValueError, match="size"):
        long_range_task(size=30, receptive_field=rf)
    with pytest.raises(ValueError, match="min_distance"):
        long_range_task(size=40, receptive_field=rf, min_distance=10)


def _marks_image(size, pattern_a, pattern_b, pa, pb, background):
    x = background.clone()
    m = pattern_a.shape[-1]
    x[0, 0, pa[0]:pa[0] + m, pa[1]:pa[1] + m] += pattern_a
    x[0, 0, pb[0]:pb[0] + m, pb[1]:pb[1] + m] += pattern_b
    return x


@pytest.mark.parametrize("block", [None, "nl"])
def test_plain_backbone_is_additive_in_marks_beyond_its_receptive_field(block):
    """Why the plain backbone stays at chance on the far-marks task, for any weights: each
    output unit sees at most one mark, so (after BN/ReLU, average pooling and the linear layer)
    the logits are h(a, p) + h(b, q) + const, whose mixed second difference vanishes; "same
    pattern?" is not of that form. A nonlocal block breaks the additivity."""
    torch.manual_seed(0)
    rf, m, size = receptive_field(8), 4, 40
    conf = {"arch": "preresnet", "depth": 8, "width": 4, "num_classes": 2, "in_channels": 1,
            "block": block, "block_stages": [2], "block_positions": [1],
            "block_zero_init": False}
    model = build_model(conf).double().eval()
    for mod in model.modules():  # non-trivial BN statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    a, b, c, d = (torch.randn(m, m, dtype=torch.float64) for _ in range(4))
    pa, pb = (3, 2), (3 + rf + m - 1, 5)
    bg = 0.5 * torch.randn(1, 1, size, size, dtype=torch.float64)
    with torch.no_grad():
        f = {(u, v): model(_marks_image(size, pu, pv, pa, pb, bg))
             for u, pu in (("a", a), ("d", d)) for v, pv in (("b", b), ("c", c))}
    mixed = f[("a", "b")] - f[("a", "c")] - f[("d", "b")] + f[("d", "c")]
    scale = max(v.abs().max() for v in f.values())
    if block is None:
        assert mixed.abs().max() <= 1e-12 * scale
    else:
        assert mixed.abs().max() > 1e-7 * scale
