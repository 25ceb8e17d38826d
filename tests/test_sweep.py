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
    write_outputs,
)

TINY = dict(depth=8, width=4, epochs=1, max_steps=2, batch_size=32,
            data={"name": "digits", "size": 8}, analysis_samples=2)


def _row(block, k, placement, lr, diverged, acc=0.9, seed=0):
    return {"block": block, "k": k, "placement": placement, "lr": lr, "seed": seed,
            "diverged": diverged, "final_accuracy": 0.1 if diverged else acc,
            "max_grad_norm": 1.0, "jacobian_full": math.nan if diverged else 1.0 + k,
            "jacobian_frozen": math.nan, "jacobian_source": "full=jacobian_full"}


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


def _cells_rows(div_nl, div_snl, n=5, k=5, lr=3.6, seed0=0):
    """n seeds of NL and SNL (spread, k) with the given numbers of diverged seeds."""
    rows = []
    for block, n_div in (("nl", div_nl), ("snl", div_snl)):
        for s in range(n):
            rows.append(_row(block, k, "spread", lr, s < n_div, acc=0.8 + 0.01 * s,
                             seed=seed0 + s))
    return rows


def test_summary_json_holds_the_cell_statistics(tmp_path):
    from analysis.stats import proportion_ci

    rows = _cells_rows(5, 0) + [_row("none", 0, "stage", 3.6, False, acc=0.5, seed=s)
                                for s in range(5)]
    files = write_outputs(rows, tmp_path, figure=False)
    info = json.loads(files["summary_json"].read_text())   # strict JSON: NaN written as null
    assert info["confidence"] == 0.95 and "Wilson" in info["methods"]["divergence_ci"]
    cell = next(c for c in info["cells"] if c["block"] == "nl" and c["placement"] == "spread")
    for key in ("n_seeds", "divergence_rate", "divergence_ci", "accuracy_mean", "accuracy_ci",
                "jacobian_full", "jacobian_full_spread", "jacobian_frozen_spread"):
        assert key in cell, key
    assert cell["n_seeds"] == 5 and cell["divergence_rate"] == 1.0
    assert cell["divergence_ci"] == pytest.approx(list(proportion_ci(5, 5)))
    assert cell["accuracy_mean"] == pytest.approx(0.1)          # every seed diverged: chance
    assert cell["jacobian_full"] is None and cell["jacobian_full_spread"]["n"] == 0
    snl = next(c for c in info["cells"] if c["block"] == "snl" and c["placement"] == "spread")
    assert snl["jacobian_full"] == 6.0 and snl["accuracy_ci"][0] < 0.82 < snl["accuracy_ci"][1]
    assert info["baseline"][0]["n_seeds"] == 5
    stable = {(s["block"], s["k"]): s for s in info["stable_lr"]}
    assert stable[("nl", 5)]["stable_lr"] is None and stable[("nl", 5)]["next_lr"] == 3.6
    assert stable[("snl", 5)]["stable_lr"] == 3.6 and stable[("snl", 5)]["next_lr"] is None
    assert stable[("snl", 5)]["divergence_upper"] == pytest.approx(proportion_ci(0, 5)[1])
    got = {v["metric"]: v["verdict"] for v in info["verdicts"] if v["k"] == 5}
    assert got == {"divergence": "held", "accuracy": "held", "jacobian": "not separated"}
    text = files["summary"].read_text()
    assert "| nl | spread | 5 | 3.6 | 5/5 | 1.00 [0.57, 1.00] |" in text
    assert "**held**: SNL diverges less often than NL (spread, k = 5, lr 3.6)" in text


def test_verdicts_pool_k_at_least_5_and_need_separated_intervals():
    from analysis.sweep import verdicts

    # 3/5 against 0/5 is not separated in one cell; pooled over k = 5 and 10 (6/10 vs 0/10)
    rows = _cells_rows(3, 0, k=5) + _cells_rows(3, 0, k=10)
    got = {(v["k"], v["metric"]): v["verdict"] for v in verdicts(rows)}
    assert got[(5, "divergence")] == "not separated"
    assert got[(10, "divergence")] == "not separated"
    assert got[(">=5", "divergence")] == "held"
    worse = {(v["k"], v["metric"]): v["verdict"] for v in verdicts(_cells_rows(0, 5))}
    assert worse[(5, "divergence")] == "did not hold"


def test_compare_two_synthetic_outputs(tmp_path):
    from analysis.sweep import compare, compare_markdown

    # run a: NL 5/5 diverged; run b (other seeds): NL 2/5: the divergence verdict differs,
    # the accuracy verdict held in a and is not separated in b
    write_outputs(_cells_rows(5, 0), tmp_path / "a", figure=False)
    write_outputs(_cells_rows(2, 0, seed0=5), tmp_path / "b", figure=False)
    c = compare(tmp_path / "a", tmp_path / "b")
    claims = {e["claim"]: e for key in c for e in c[key]}
    div = "SNL diverges less often than NL (spread, k = 5, lr 3.6)"
    assert claims[div] in c["differ"] and (claims[div]["a"], claims[div]["b"]) == (
        "held", "not separated")
    jac = "SNL's full Jacobian norm is smaller than NL's (spread, k = 5, lr 3.6)"
    assert claims[jac] in c["not_separated_in_both"]
    same = compare(tmp_path / "a", tmp_path / "a" / "summary.json")
    assert {e["claim"] for e in same["held_in_both"]} >= {div}
    assert not same["differ"] and not same["only_a"] and not same["only_b"]
    other = compare(_cells_rows(5, 0), _cells_rows(5, 0, k=10))     # rows work too
    assert other["only_a"] and other["only_b"]                      # k = 5 and k = 10 cells
    assert {e["claim"] for e in other["held_in_both"]} == {   # the pooled k >= 5 group
        "SNL diverges less often than NL (spread, k = 5+, lr 3.6)",
        "SNL is more accurate than NL (spread, k = 5+, lr 3.6)"}
    assert "Held in both runs" in compare_markdown(same)
    with pytest.raises(ValueError, match="no summary.json"):
        compare(tmp_path / "missing", tmp_path / "a")


def test_plot_sweep_shades_each_cells_interval():
    """The figure's bands are the cells' intervals: Wilson for the divergence rate, the t
    interval for the accuracy (issue 21)."""
    from matplotlib.collections import PolyCollection

    from analysis.stats import proportion_ci

    rows = [_row("snl", k, "stage", 0.1, diverged=(s == 0 and k == 3), acc=0.8 + 0.05 * s,
                 seed=s) for k in (1, 3) for s in range(4)]
    fig, axes = plot_sweep(rows)
    bands = [c for c in axes[1, 0].collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    ys = bands[0].get_paths()[0].vertices[:, 1]
    lo1, hi1 = proportion_ci(0, 4)
    lo3, hi3 = proportion_ci(1, 4)
    assert min(ys) == pytest.approx(min(lo1, lo3)) and max(ys) == pytest.approx(max(hi1, hi3))
    acc = [c for c in axes[0, 0].collections if isinstance(c, PolyCollection)]
    assert len(acc) == 1 and max(acc[0].get_paths()[0].vertices[:, 1]) > 0.9
