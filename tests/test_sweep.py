"""The stacking sweep: grid, per-run jobs, restart, executors, outputs, CLI."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest

from analysis.cli import main
from analysis.sweep import (
    RunSpec,
    make_grid,
    plot_sweep,
    run_one,
    stable_learning_rates,
    summary_markdown,
    sweep,
)

TINY = dict(depth=8, width=4, epochs=1, max_steps=2, batch_size=32,
            data={"name": "digits", "size": 8}, analysis_samples=2)


def _row(block, k, placement, lr, diverged, acc=0.9, seed=0):
    return {"block": block, "k": k, "placement": placement, "lr": lr, "seed": seed,
            "diverged": diverged, "final_accuracy": 0.1 if diverged else acc,
            "max_grad_norm": 1.0, "jacobian_full": math.nan if diverged else 1.0 + k,
            "jacobian_frozen": math.nan, "jacobian_source": "full=jacobian_norm"}


def test_grid_dedups_k1_and_keys_are_stable_and_distinct():
    grid = make_grid(("nl", "snl"), (1, 3), ("stage", "spread"), (0.1, 1.0), (0, 1),
                     baseline=True)
    assert len(grid) == 2 * 2 * (1 + 2 * 3)
    keys = [s.key for s in grid]
    assert len(set(keys)) == len(keys)
    again = make_grid(("nl", "snl"), (1, 3), ("stage", "spread"), (0.1, 1.0), (0, 1),
                      baseline=True)
    assert [s.key for s in again] == keys
    assert RunSpec("nl", 3, "stage", 0.1).key != RunSpec("nl", 3, "stage", 0.1,
                                                         zero_init=True).key
    with pytest.raises(ValueError, match="blocks"):
        make_grid(("xl",))
    with pytest.raises(ValueError, match="placements"):
        make_grid(placements=("diag",))


def test_stable_lr_aggregation_and_summary():
    rows = [_row("nl", 1, "stage", 0.1, False), _row("nl", 1, "stage", 1.0, True),
            _row("nl", 3, "stage", 0.1, True), _row("nl", 3, "stage", 1.0, False),
            _row("snl", 3, "spread", 0.1, False), _row("snl", 3, "spread", 1.0, False)]
    stable = {(s["block"], s["placement"], s["k"]): s["stable_lr"]
              for s in stable_learning_rates(rows)}
    # k = 1 counts for both placements of its block
    assert stable[("nl", "stage", 1)] == 0.1 and stable[("nl", "spread", 1)] == 0.1
    assert stable[("nl", "stage", 3)] is None  # the smallest rung diverged
    assert stable[("snl", "spread", 3)] == 1.0
    text = summary_markdown(rows, {"epochs": 1})
    assert "| nl | stage | 3 | 0.1 | 1/1 |" in text and "Largest stable" in text
    fig, ax = plot_sweep(rows)
    assert ax.shape == (3, 2)
    fig2, ax2 = plot_sweep(rows, ax=ax)
    assert ax2 is not None and fig2 is fig


def test_sweep_writes_outputs_and_skips_finished_runs(tmp_path, monkeypatch):
    res = sweep(tmp_path, blocks=("nl", "snl"), ks=(1, 2), placements=("stage", "spread"),
                lrs=(0.05,), seeds=(0,), executor="serial", progress=False, **TINY)
    assert len(res.rows) == 1 + 2 * 3 and res.skipped == 0
    for key in ("csv", "json", "stable_lr", "summary", "figure"):
        assert res.files[key].is_file(), key
    with open(res.files["csv"]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(res.rows)
    rows = json.loads(res.files["json"].read_text())
    snl = next(r for r in rows if r["block"] == "snl" and r["k"] == 2
               and r["placement"] == "spread")
    assert snl["n_blocks"] == 2 and len(snl["steps"]["loss"]) == 2
    assert len(snl["steps"]["grad_max"]) == 2 and snl["max_grad_norm"] > 0
    assert math.isfinite(snl["jacobian_full"]) and snl["jacobian_source"]

    calls = []
    sweep_module = sys.modules["analysis.sweep"]  # analysis.sweep is also the function
    monkeypatch.setattr(sweep_module, "_limit_threads", lambda t: calls.append(t))
    again = sweep(tmp_path, blocks=("nl", "snl"), ks=(1, 2), placements=("stage", "spread"),
                  lrs=(0.05,), seeds=(0,), executor="serial", progress=False, **TINY)
    assert again.skipped == len(res.rows) and calls == []  # nothing retrained
    assert [r["key"] for r in again.rows] == [r["key"] for r in res.rows]


def test_divergence_is_recorded_per_run(tmp_path):
    spec = RunSpec("nl", 2, "stage", 1e5, **{**TINY, "max_steps": 6})
    row = run_one(spec, tmp_path)
    assert row["diverged"] and row["diverged_step"] >= 1
    assert row["final_accuracy"] == pytest.approx(0.1)
    assert (tmp_path / "runs" / f"{spec.key}.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "submitit-debug", "submitit-local"])
def test_sweep_executors(tmp_path, executor):
    if executor.startswith("submitit"):
        pytest.importorskip("submitit", reason="the submitit extra is not installed")
    res = sweep(tmp_path, blocks=("snl",), ks=(1,), lrs=(0.05,), seeds=(0,), baseline=False,
                executor=executor, workers=1, figure=False, progress=False, **TINY)
    assert len(res.rows) == 1 and not res.rows[0]["diverged"]
    assert (tmp_path / "runs" / f"{res.rows[0]['key']}.json").is_file()


def test_cli_sweep_help_and_tiny_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--help"])
    assert exc.value.code == 0
    assert "--placements" in capsys.readouterr().out
    code = main(["sweep", "--out", str(tmp_path), "--blocks", "snl", "--units", "1", "2",
                 "--placements", "stage", "--lrs", "0.05", "--seeds", "0", "--epochs", "1",
                 "--max-steps",
                 "1", "--depth", "8", "--width", "4", "--image-size", "8",
                 "--analysis-samples", "0", "--executor", "serial", "--no-baseline",
                 "--no-figure", "--quiet", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "2 runs" in out and (tmp_path / "summary.md").is_file()
    assert main(["sweep", "--out", str(tmp_path), "--dataset", "cifar10", "--quiet"]) == 2


def test_cli_train_stacking_options(tmp_path, capsys):
    out = tmp_path / "m.pt"
    code = main(["train", "--block", "snl", "--depth", "8", "--width", "4", "--units", "3",
                 "--placement", "spread", "--no-zero-init", "--no-warmup",
                 "--max-loss-factor", "50", "--image-size", "8", "--epochs", "1",
                 "--max-steps", "1", "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    from graphfilters.training import load_checkpoint

    ckpt = load_checkpoint(out)
    assert ckpt["model_config"]["block_zero_init"] is False
    assert len(ckpt["model_config"]["placements"]) == 3
    assert ckpt["train_config"]["warmup_epochs"] == 0.0
    assert ckpt["train_config"]["max_loss_factor"] == 50.0
    assert len(ckpt["extra"]["step_log"]["loss"]) == 1
