"""The command line, run as users run it (subprocesses)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "analyze", "report", "derive", "demo")


def run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "analysis", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


def test_help():
    out = run("--help")
    assert out.returncode == 0
    for cmd in COMMANDS:
        assert cmd in out.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_of_each_command(cmd, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([cmd, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m analysis " + cmd)
    for action in build_parser()._subparsers._group_actions[0].choices[cmd]._actions:
        if action.help == argparse.SUPPRESS:
            continue
        for flag in action.option_strings:
            assert flag in text


def test_derive_prints_verified_text_and_latex():
    out = run("derive", "all")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("VERIFIED") >= 9
    latex = run("derive", "gsnl", "--latex")
    assert latex.returncode == 0 and r"\begin{align" in latex.stdout


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    missing = run("analyze", str(tmp_path / "nope.pt"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: no checkpoint at")
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a checkpoint at all")
    assert main(["report", str(foreign), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--dataset", "cifar10"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["derive", "transformer"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "snl.pt"
    # --depth 8 has one residual unit per stage: the default --position is that unit.
    res = run("train", "--block", "snl", "--depth", "8", "--width", "4",
              "--image-size", "8",
              "--epochs", "1", "--max-steps", "3", "--batch-size", "32", "--device", "cpu",
              "--quiet", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert out.is_file() and "test accuracy" in res.stdout
    return out


def test_train_analyze_report(tiny_checkpoint, tmp_path):
    res = run("analyze", str(tiny_checkpoint), "--samples", "8", "--device", "cpu",
              "--json", str(tmp_path / "t.json"))
    assert res.returncode == 0, res.stderr
    assert "snl" in res.stdout and (tmp_path / "t.json").is_file()
    rep = run("report", str(tiny_checkpoint), "--out", str(tmp_path / "rep"), "--samples", "8",
              "--device", "cpu")
    assert rep.returncode == 0, rep.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "![" in text and "snl" in text
    for line in text.splitlines():
        if line.startswith("!["):
            target = line[line.index("(") + 1: line.rindex(")")]
            assert (tmp_path / "rep" / target).is_file(), target


def test_report_of_several_checkpoints(tiny_checkpoint, tmp_path):
    """One report, one section per checkpoint; two 'snl' runs are told apart by file name;
    --spectrum-samples sets how many images the blocks are captured on."""
    other = tmp_path / "snl_again.pt"
    other.write_bytes(tiny_checkpoint.read_bytes())
    rep = run("report", str(tiny_checkpoint), str(other), "--out", str(tmp_path / "rep"),
              "--samples", "8", "--spectrum-samples", "2", "--device", "cpu")
    assert rep.returncode == 0, rep.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "snl_again" in text
    import json

    table = json.loads((tmp_path / "rep" / "table.json").read_text())
    rows = [r for rows in (table.values() if isinstance(table, dict) else [table]) for r in rows]
    assert {r["n_samples"] for r in rows} == {2}
