"""Tests of graphfilters.training: the loop, divergence detection, checkpoints, DDP."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from graphfilters.data import load_digits, long_range_task
from graphfilters.models import PreResNet
from graphfilters.training import (
    CHECKPOINT_FORMAT,
    TrainConfig,
    evaluate,
    fit,
    learning_rate,
    load_checkpoint,
    load_model,
    resolve_device,
    save_checkpoint,
    train,
)

try:  # the real blocks, once graphfilters/blocks has landed
    from graphfilters.blocks import make_block
except ImportError:  # pragma: no cover - depends on the checkout
    make_block = None

needs_blocks = pytest.mark.skipif(make_block is None, reason="graphfilters.blocks not available")

REPO = Path(__file__).resolve().parents[1]


class StandInBlock(nn.Module):
    """Identity-at-init residual block standing in for graphfilters.blocks (global context)."""

    def __init__(self, channels: int, n_units: int = 1, **options: object) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.proj(x.mean(dim=(2, 3), keepdim=True)).expand_as(x))


def stand_in_factory(name: str, in_channels: int, dim: int = 2, **options: object) -> nn.Module:
    return StandInBlock(in_channels, **options)


TINY = {"depth": 8, "width": 4}


@pytest.fixture(scope="module")
def digits8():
    return load_digits(size=8, seed=0)


# ------------------------------------------------------------------------------ schedule


def test_learning_rate_warmup_and_steps():
    cfg = TrainConfig(lr=0.2, warmup_epochs=4, warmup_start_factor=0.25, milestones=(6, 8),
                      gamma=0.5)
    assert learning_rate(cfg, 0) == pytest.approx(0.05)
    assert learning_rate(cfg, 2) == pytest.approx(0.125)
    assert [learning_rate(cfg, e) for e in (4, 5.99, 6, 8, 100)] == pytest.approx(
        [0.2, 0.2, 0.1, 0.05, 0.05])
    assert learning_rate(TrainConfig(lr=0.1), 50) == pytest.approx(0.1)


def test_train_config_validation_and_round_trip():
    cfg = TrainConfig.paper_cifar(epochs=20)
    assert cfg.warmup_epochs == 10 and cfg.augment and cfg.epochs == 20
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="milestones"):
        TrainConfig(milestones=(5, 2))
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------ training


def test_tiny_training_lowers_the_loss(digits8):
    torch.manual_seed(0)
    model = PreResNet(num_classes=10, in_channels=1, depth=8, width=8)
    _, test_loader = digits8.loaders(batch_size=256)
    before = evaluate(model, test_loader)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.1, warmup_epochs=1, milestones=(2,),
                      progress=False, eval_every=2)
    result = fit(model, digits8, cfg)
    assert not result.diverged and result.divergence is None
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert [r["test_acc"] is None for r in result.history] == [True, False, False]
    for r in result.history:
        assert set(r) >= {"epoch", "step", "lr", "train_loss", "train_acc", "grad_norm",
                          "test_loss", "test_acc", "time_s", "diverged"}
        assert r["grad_norm"] > 0 and r["diverged"] is False
    assert result.history[0]["lr"] < result.history[1]["lr"]  # warm-up, then
    assert result.history[2]["lr"] == pytest.approx(0.01)  # the step drop
    after = evaluate(result.model, test_loader)
    assert after["loss"] < before["loss"] - 0.5
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.test_accuracy == pytest.approx(after["accuracy"]) and after["accuracy"] > 0.6


def test_training_is_seeded(digits8):
    cfg = TrainConfig(epochs=1, batch_size=64, max_steps=4, progress=False, seed=3)
    a = train(TINY, cfg, data=digits8)
    b = train(TINY, cfg, data=digits8)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                           strict=True):
        assert torch.equal(va, vb), k


def test_divergence_is_detected_and_recorded(digits8, tmp_path):
    cfg = TrainConfig(epochs=5, batch_size=64, lr=1e6, progress=False)
    result = train(TINY, cfg, data=digits8, out=tmp_path / "div.pt")
    assert result.diverged
    last = result.history[-1]
    assert last["diverged"] is True
    assert last == result.divergence
    assert last["epoch"] == 1 and last["step"] >= 1
    assert "nan" in last["reason"].lower() or "inf" in last["reason"].lower()
    assert f"step {last['step']}" in last["reason"]
    assert all(not r["diverged"] for r in result.history[:-1])
    # it stopped: far fewer steps than 5 epochs of 22 batches
    assert last["step"] < 22
    stored = load_checkpoint(tmp_path / "div.pt")
    assert stored["history"][-1]["diverged"] is True


def test_max_loss_threshold(digits8):
    cfg = TrainConfig(epochs=1, batch_size=64, max_loss=0.1, progress=False)
    result = train(TINY, cfg, data=digits8)
    assert result.diverged and "max_loss" in result.divergence["reason"]
    assert result.divergence["step"] == 1


def test_train_fills_data_shapes_and_checks_them(tmp_path):
    data = long_range_task(n_train=32, n_test=16, size=16)
    cfg = TrainConfig(epochs=1, batch_size=16, progress=False)
    result = train({**TINY, "block": "snl", "block_positions": [1]}, cfg, data=data,
                   out=tmp_path, block_factory=stand_in_factory)
    assert result.model.config["num_classes"] == 2 and result.model.config["in_channels"] == 1
    assert result.checkpoint == tmp_path / "model.pt" and result.checkpoint.is_file()
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["format"] == CHECKPOINT_FORMAT and meta["data"]["name"] == "long_range"
    assert meta["train_config"]["batch_size"] == 16 and len(meta["history"]) == 1
    with pytest.raises(ValueError, match="num_classes=10.*has 2"):
        train({**TINY, "num_classes": 10}, cfg, data=data)


# ---------------------------------------------------------------------------- checkpoints


def _trained_model(factory=stand_in_factory):
    torch.manual_seed(0)
    model = PreResNet(depth=8, width=4, num_classes=3, in_channels=1, block="snl",
                      block_positions=(1,), block_factory=factory)
    with torch.no_grad():  # non-trivial weights and BN statistics
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.train()
        model(torch.randn(8, 1, 8, 8))
    return model.eval()


def test_save_load_round_trip_identical_outputs(tmp_path):
    model = _trained_model()
    history = [{"epoch": 1, "train_loss": 1.0, "test_acc": None, "diverged": False}]
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, history=history,
                           train_config=TrainConfig(epochs=1), data={"name": "digits"},
                           extra={"note": "hello", "tuple": (1, 2)})
    raw = torch.load(path, weights_only=True)  # plain types and tensors only
    assert raw["format"] == CHECKPOINT_FORMAT and raw["version"] == 1
    assert raw["model_config"] == model.config and raw["history"] == history
    assert raw["train_config"]["epochs"] == 1 and raw["extra"]["tuple"] == [1, 2]
    loaded, ckpt = load_model(path, block_factory=stand_in_factory, return_checkpoint=True)
    assert not loaded.training and ckpt["data"] == {"name": "digits"}
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_load_model_refuses_a_foreign_pickle_without_running_it(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    marker = tmp_path / "executed"
    for i, write in enumerate((lambda obj, f: pickle.dump(obj, f, protocol=2), torch.save)):
        path = tmp_path / f"evil{i}.pt"
        with open(path, "wb") as f:
            write({"format": CHECKPOINT_FORMAT, "payload": Payload()}, f)
        with pytest.raises(ValueError, match="weights_only=True.*refused"):
            load_model(path)
        assert not marker.exists()
    with open(tmp_path / "evil0.pt", "rb") as f:  # the payload is real: plain pickle runs it
        pickle.load(f)
    assert marker.exists()


def test_load_model_names_what_is_wrong(tmp_path):
    model = PreResNet(depth=8, width=4)
    cases = {
        "list.pt": ([1, 2, 3], TypeError, "holds a list"),
        "notag.pt": ({"model_config": model.config}, ValueError, "missing 'format'"),
        "bare.pt": (model.state_dict(), ValueError, "bare state_dict"),
        "version.pt": ({"format": CHECKPOINT_FORMAT, "version": 99}, ValueError, "version 99"),
    }
    for name, (obj, error, match) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(error, match=match):
            load_model(tmp_path / name)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not"):
        load_model(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.pt")


def test_load_model_mismatched_state_dict(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", PreResNet(depth=8, width=4), write_json=False)
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["state_dict"]
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["conv1.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save(ckpt, path)
    with pytest.raises(ValueError) as info:
        load_model(path)
    msg = str(info.value)
    assert "missing keys: fc.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "misshaped keys: conv1.weight: checkpoint (5, 3, 3, 3) vs model (4, 3, 3, 3)" in msg

    ckpt["model_config"]["depth"] = 9
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="cannot rebuild the model.*6n"):
        load_model(path)


def test_save_checkpoint_rejects_non_plain_values(tmp_path):
    with pytest.raises(TypeError, match="extra\\['f'\\]"):
        save_checkpoint(tmp_path / "m.pt", PreResNet(depth=8, width=4), extra={"f": object()})


@needs_blocks
@pytest.mark.parametrize("name", ["nl", "snl"])
def test_real_blocks_train_and_round_trip(name, tmp_path, digits8):
    cfg = TrainConfig(epochs=1, batch_size=64, max_steps=3, progress=False)
    result = train({**TINY, "block": name, "block_positions": [1]}, cfg, data=digits8,
                   out=tmp_path / "m.pt")
    assert not result.diverged
    loaded = load_model(tmp_path / "m.pt")
    x = digits8.tensors("test")[0][:8]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model.cpu()(x))


# ---------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ddp_on_cpu_with_two_processes(tmp_path):
    """Two Gloo processes as torchrun would start them: same weights, rank 0 writes the file."""
    script = textwrap.dedent(f"""
        import torch, os
        torch.set_num_threads(1)
        from graphfilters.training import TrainConfig, train
        res = train({TINY!r}, TrainConfig(epochs=1, batch_size=32, max_steps=3,
                    progress=False, device="cpu"),
                    data={{"name": "long_range", "n_train": 192, "n_test": 32, "size": 16}},
                    out=os.environ["OUT"])
        total = sum(float(p.double().sum()) for p in res.model.parameters())
        print("RESULT", os.environ["RANK"], repr(total), res.history[0]["steps"],
              torch.distributed.is_initialized())
    """)
    env_base = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(_free_port()), "OUT": str(tmp_path / "ddp.pt"),
                "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path,
                              env={**env_base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=110) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    results = [line.split() for out, _ in outs for line in out.splitlines()
               if line.startswith("RESULT")]
    assert len(results) == 2
    assert results[0][2] == results[1][2]  # identical parameters on both ranks
    # 192 images, 2 ranks, batch 32: 3 steps per rank; the group is destroyed afterwards
    assert results[0][3] == "3" and results[0][4] == "False"
    assert (tmp_path / "ddp.pt").is_file()
    assert load_checkpoint(tmp_path / "ddp.pt")["history"][0]["steps"] == 3


def test_a_model_whose_evaluation_overflows_is_a_divergence_not_a_crash(digits8, monkeypatch):
    # seen in the default sweep: the training step's loss was finite, but the eval-mode
    # forward (BN running statistics) gave a block an infinite input; the block refuses it
    import graphfilters.training as T

    def overflowing(*args, **kwargs):
        raise ValueError("NonLocal: the input x contains NaN or Inf")

    monkeypatch.setattr(T, "evaluate", overflowing)
    result = train(TINY, TrainConfig(epochs=2, batch_size=64, lr=0.1, progress=False),
                   data=digits8)
    assert result.diverged
    last = result.history[-1]
    assert last == result.divergence and last["diverged"] is True
    assert last["reason"].startswith("evaluation hit non-finite values (NonLocal")
    assert last["epoch"] == 1 and f"step {last['step']}" in last["reason"]
    assert not result.history[-2]["diverged"]          # the epoch's record is kept

    def other_error(*args, **kwargs):
        raise ValueError("something else")

    monkeypatch.setattr(T, "evaluate", other_error)
    with pytest.raises(ValueError, match="something else"):
        train(TINY, TrainConfig(epochs=1, batch_size=64, lr=0.1, progress=False), data=digits8)
