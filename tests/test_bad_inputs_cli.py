"""The bad-input suite, command line: one line on stderr, exit status 2, never a traceback;
outputs checked before the work starts; hostile checkpoints never execute code."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest

from analysis.cli import main

TRAIN_BAD = {
    "lr-nan": (["--lr", "nan"], "--lr"),
    "lr-inf": (["--lr", "inf"], "--lr"),
    "lr-zero": (["--lr", "0"], "--lr"),
    "lr-neg": (["--lr", "-0.1"], "--lr"),
    "lr-text": (["--lr", "fast"], "--lr"),
    "epochs-0": (["--epochs", "0"], "--epochs"),
    "epochs-float": (["--epochs", "2.5"], "--epochs"),
    "batch-0": (["--batch-size", "0"], "--batch-size"),
    "depth-neg": (["--depth", "-20"], "--depth"),
    "width-0": (["--width", "0"], "--width"),
    "wd-neg": (["--weight-decay", "-1"], "--weight-decay"),
    "wd-nan": (["--weight-decay", "nan"], "--weight-decay"),
    "warmup-neg": (["--warmup-epochs", "-1"], "--warmup-epochs"),
    "milestones-nan": (["--milestones", "nan"], "--milestones"),
    "milestones-neg": (["--milestones", "-3"], "--milestones"),
    "seed-neg": (["--seed", "-1"], "--seed"),
    "max-steps-0": (["--max-steps", "0"], "--max-steps"),
    "image-size-0": (["--image-size", "0"], "--image-size"),
    "block-unknown": (["--block", "transformer"], "--block"),
    "dataset-unknown": (["--dataset", "mnist"], "--dataset"),
}


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:          # argparse: usage line + one error line
        code = exc.code
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("name", sorted(TRAIN_BAD))
def test_train_option_refused_before_training(name, capsys, tmp_path):
    argv, option = TRAIN_BAD[name]
    code, err = _run(["train", "--out", str(tmp_path / "m.pt"), *argv], capsys)
    assert code == 2
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


SWEEP_BAD = {
    "units-0": (["--units", "1", "0"], "--units"),
    "lrs-nan": (["--lrs", "0.1", "nan"], "--lrs"),
    "lrs-neg": (["--lrs", "-1"], "--lrs"),
    "seeds-neg": (["--seeds", "-1"], "--seeds"),
    "epochs-0": (["--epochs", "0"], "--epochs"),
    "workers-0": (["--workers", "0"], "--workers"),
    "threads-0": (["--threads", "0"], "--threads"),
    "max-loss-factor-0": (["--max-loss-factor", "0"], "--max-loss-factor"),
    "analysis-samples-neg": (["--analysis-samples", "-1"], "--analysis-samples"),
    "placement-unknown": (["--placements", "everywhere"], "--placements"),
}


@pytest.mark.parametrize("name", sorted(SWEEP_BAD))
def test_sweep_option_refused_before_any_run(name, capsys, tmp_path):
    argv, option = SWEEP_BAD[name]
    code, err = _run(["sweep", "--out", str(tmp_path / "sweep"), "--quiet", *argv], capsys)
    assert code == 2
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()


def test_out_of_range_milestones_refused(capsys, tmp_path):
    code, err = _run(["train", "--epochs", "4", "--milestones", "2", "9", "--out",
                      str(tmp_path / "m.pt")], capsys)
    assert code == 2 and "--milestones" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["train", "report", "demo", "analyze-json", "analyze-csv"])
def test_output_inside_a_file_fails_before_the_work(command, capsys, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    target = str(blocker / "sub" / "out")
    argv = {
        "train": ["train", "--out", target + ".pt"],
        "report": ["report", str(tmp_path / "c.pt"), "--out", target],
        "demo": ["demo", "--out", target],
        "analyze-json": ["analyze", str(tmp_path / "c.pt"), "--json", target + ".json"],
        "analyze-csv": ["analyze", str(tmp_path / "c.pt"), "--csv", target + ".csv"],
    }[command]
    code, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "file.txt" in lines[0] and "is a file" in lines[0]


def _checkpoints(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n" * 20)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    evil_pickle = tmp_path / "evil_pickle.pt"
    evil_pickle.write_bytes(pickle.dumps({"model": Evil()}))
    evil_zip = tmp_path / "evil_zip.pt"
    with zipfile.ZipFile(evil_zip, "w") as z:     # torch's zip layout with a hostile data.pkl
        z.writestr("archive/data.pkl", pickle.dumps({"state": Evil()}))
        z.writestr("archive/version", "3\n")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(evil_zip.read_bytes()[:40])
    directory = tmp_path / "dir.pt"
    directory.mkdir()
    return marker, {"text": text, "empty": empty, "evil_pickle": evil_pickle,
                    "evil_zip": evil_zip, "truncated": truncated, "directory": directory,
                    "missing": tmp_path / "missing.pt"}


@pytest.mark.parametrize("kind", ["text", "empty", "evil_pickle", "evil_zip", "truncated",
                                  "directory", "missing"])
@pytest.mark.parametrize("command", ["analyze", "report"])
def test_corrupt_or_hostile_checkpoint_is_one_line_and_runs_nothing(kind, command, capsys,
                                                                    tmp_path):
    marker, files = _checkpoints(tmp_path)
    argv = [command, str(files[kind])]
    if command == "report":
        argv += ["--out", str(tmp_path / "rep")]
    code, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err
    assert not marker.exists(), "a hostile pickle executed code"


def test_bad_derive_name_is_an_argparse_error(capsys):
    code, err = _run(["derive", "transformer"], capsys)
    assert code == 2 and "name" in err


@pytest.mark.parametrize("text", ["hello world\n", "x\n"])
def test_short_text_renamed_pt_names_the_file(text, capsys, tmp_path):
    path = tmp_path / "short.pt"
    path.write_text(text)         # the unpickler's IndexError/KeyError, not a torch error
    code, err = _run(["analyze", str(path)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "short.pt" in lines[0], err
    assert "pop from empty list" not in err
