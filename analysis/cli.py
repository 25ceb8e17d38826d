"""Command line: ``python -m analysis COMMAND`` (also installed as ``graphfilters``).

Commands
--------
``train``
    Train a PreResNet with a nonlocal block and write a checkpoint.
``analyze CHECKPOINT``
    Load a checkpoint (``torch.load(weights_only=True)``), run :func:`analysis.analyze` on its
    test data and print the table (optionally as CSV/JSON).
``report CHECKPOINT --out DIR``
    Write a Markdown report with figures, the analysis table and the run's configuration.
``derive NAME``
    Print the derivation of a block from the Chebyshev filter, as text or LaTeX.
``demo``
    The main job: derive every block, train small NL and SNL models on the digits (reusing
    checkpoints), analyse them and write ``out/report.md``.

Errors are one line on stderr and exit status 2, not a traceback (``--traceback`` shows it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from graphfilters.specs import BLOCK_NAMES, NL_MODES

__all__ = ["main", "build_parser"]

DATASETS = ("digits", "long_range", "cifar10", "cifar100")


def _number(kind: type, low: float | None = None, low_open: bool = False):
    """An argparse ``type=``: a finite ``kind`` (int/float) above ``low``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if low_open else '>='} {low:g}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, 1)
nonnegative_int = _number(int, 0)
positive_float = _number(float, 0.0, low_open=True)
nonnegative_float = _number(float, 0.0)


def _check_output_file(path: str | None, option: str) -> None:
    """Fail before the work starts when ``path`` cannot be written (a parent is a file)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{option} {path!r} is a directory, expected a file path")
    _check_output_dir(str(p.parent), option, of=path)


def _check_output_dir(path: str | None, option: str, of: str | None = None) -> None:
    if path is None:
        return
    p = Path(path)
    for parent in (p, *p.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {of or path!r} lies inside {str(parent)!r}, which "
                                 "is a file, not a directory")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"{option} {of or path!r}: {str(parent)!r} is not writable")
            return


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1' ...")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="directory of the CIFAR python-pickle files (cifar10/cifar100 only; "
                        "nothing is downloaded)")
    p.add_argument("--samples", type=positive_int, default=64,
                   help="test images analysed")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m analysis``."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Nonlocal blocks as graph filters: train, analyse, report, derive, demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fmt = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter}

    p = sub.add_parser("train", **fmt, help="train a PreResNet with a nonlocal block",
                       description="Train a pre-activation ResNet with a nonlocal block inserted "
                                   "(default: first stage, after the second residual unit) and "
                                   "write a checkpoint that 'analyze' and 'report' read.")
    p.add_argument("--block", default="snl", choices=(*BLOCK_NAMES, "none"),
                   help="block table name, or 'none' for the plain ResNet")
    p.add_argument("--mode", default=None, choices=tuple(NL_MODES),
                   help="variant of the 'nl' block")
    p.add_argument("--depth", type=positive_int, default=20, help="ResNet depth 6n+2")
    p.add_argument("--width", type=positive_int, default=16, help="channels of the first stage")
    p.add_argument("--stage", type=positive_int, default=1, help="stage (1-3) of the block")
    p.add_argument("--position", type=nonnegative_int, default=2,
                   help="insert the block after this residual unit of the stage")
    p.add_argument("--dataset", default="digits", choices=DATASETS, help="data set")
    p.add_argument("--image-size", type=positive_int, default=16,
                   help="side of the digits / long-range images")
    p.add_argument("--data-dir", default=None, help="CIFAR directory (python-pickle files)")
    p.add_argument("--epochs", type=positive_int, default=8, help="training epochs")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch size")
    p.add_argument("--lr", type=positive_float, default=0.1,
                   help="SGD learning rate (momentum 0.9)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=1e-4, help="SGD weight decay")
    p.add_argument("--warmup-epochs", type=nonnegative_float, default=1.0,
                   help="linear warm-up epochs")
    p.add_argument("--milestones", type=positive_float, nargs="*", default=None,
                   help="epochs of the x0.1 learning-rate drops; None: at 62.5%% and 87.5%% "
                        "of the epochs")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of initialization and shuffling")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many steps")
    p.add_argument("--out", default="out/checkpoints/model.pt", help="checkpoint file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)

    p = sub.add_parser("analyze", **fmt, help="analyse the nonlocal blocks of a checkpoint",
                       description="Run the spectral, response and stability analysis on the "
                                   "checkpoint's test images and print one row per block.")
    p.add_argument("checkpoint", help="file written by 'train' or save_checkpoint")
    _add_data_options(p)
    p.add_argument("--csv", default=None, help="also write the table as CSV (needs pandas)")
    p.add_argument("--json", default=None, help="also write the table as JSON")
    _add_common(p)

    p = sub.add_parser("report", **fmt, help="write a Markdown report with figures",
                       description="Write DIR/report.md with spectra, responses, attention maps "
                                   "on real inputs, robustness curves, the analysis table and "
                                   "the run's configuration.")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="output directory")
    _add_data_options(p)
    _add_common(p)

    p = sub.add_parser("derive", **fmt, help="derive a block from the Chebyshev filter",
                       description="Print the derivation of a block as a special case of the "
                                   "Chebyshev graph filter, with the proof result.")
    p.add_argument("name", choices=(*BLOCK_NAMES, "all"), help="block table name, or 'all'")
    p.add_argument("--mode", default=None, choices=tuple(NL_MODES), help="variant of 'nl'")
    p.add_argument("--latex", action="store_true", help="print LaTeX (an align environment)")
    p.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("demo", **fmt, help="the main job: derive, train, analyse, report",
                       description="Derive every block (LaTeX saved), train PreResNets with an "
                                   "NL and an SNL block on the digits (checkpoints reused when "
                                   "present), analyse both and write OUT/report.md.")
    p.add_argument("--out", default="out", help="output directory")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per model")
    p.add_argument("--retrain", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run (tiny training); the report says so")
    _add_common(p)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from graphfilters.training import TrainConfig, train

    data: dict = {"name": args.dataset}
    if args.dataset in ("digits", "long_range"):
        data["size"] = args.image_size
    elif args.data_dir is None:
        raise ValueError(f"--dataset {args.dataset} needs --data-dir (the directory of the "
                         "python-pickle files; nothing is downloaded)")
    if args.data_dir is not None:
        data["root"] = args.data_dir
    model = {"depth": args.depth, "width": args.width,
             "block": None if args.block == "none" else args.block,
             "block_stages": [args.stage], "block_positions": [args.position]}
    if args.mode is not None:
        if args.block != "nl":
            raise ValueError("--mode applies to --block nl only")
        model["block_options"] = {"mode": args.mode}
    milestones = args.milestones
    if milestones is None:
        milestones = (round(args.epochs * 0.625), round(args.epochs * 0.875))
    else:
        bad = [m for m in milestones if not 0 < m < args.epochs]
        if bad:
            raise ValueError(f"--milestones must lie strictly between 0 and --epochs "
                             f"{args.epochs}, got {bad}")
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        milestones=tuple(m for m in milestones if 0 < m < args.epochs), seed=args.seed,
        device=args.device, max_steps=args.max_steps, progress=not args.quiet,
    )
    result = train(model, config, data=data, out=args.out)
    acc = result.test_accuracy
    print(f"checkpoint: {result.checkpoint}")
    print(f"test accuracy: {acc:.4f}" if acc is not None else "test accuracy: not evaluated")
    if result.diverged:
        print(f"diverged: {result.divergence}", file=sys.stderr)
        return 1
    return 0


def _load(args: argparse.Namespace):
    from .report import load_for_analysis

    return load_for_analysis(args.checkpoint, device=args.device, data_dir=args.data_dir,
                             samples=args.samples)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze

    loaded = _load(args)
    rows = analyze(loaded.model, loaded.inputs, labels=loaded.labels)
    print(rows.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(rows.to_records(), indent=1, default=str))
        print(f"wrote {args.json}")
    if args.csv:
        rows.to_frame().to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    loaded = _load(args)
    path = write_report(args.out, {loaded.name: loaded})
    print(f"wrote {path}")
    return 0


def _cmd_derive(args: argparse.Namespace) -> int:
    from graphfilters.symbolic import derive

    names = BLOCK_NAMES if args.name == "all" else (args.name,)
    if args.mode is not None and args.name != "nl":
        raise ValueError("--mode applies to 'nl' only")
    ok = True
    for name in names:
        d = derive(name, mode=args.mode) if name == "nl" else derive(name)
        print(d.to_latex() if args.latex else d)
        print()
        ok &= bool(d.verified)
    return 0 if ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    path = run_demo(args.out, epochs=args.epochs, retrain=args.retrain, quick=args.quick,
                    device=args.device)
    print(f"wrote {path}")
    return 0


COMMANDS = {"train": _cmd_train, "analyze": _cmd_analyze, "report": _cmd_report,
            "derive": _cmd_derive, "demo": _cmd_demo}


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output path is checked before the work starts (training is not lost to a bad
    ``--out``)."""
    if args.command == "train":
        _check_output_file(args.out, "--out")
    elif args.command in ("report", "demo"):
        _check_output_dir(args.out, "--out")
    for option in ("json", "csv"):
        _check_output_file(getattr(args, option, None), f"--{option}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    known = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, RuntimeError)
    return text if isinstance(exc, known) else f"{type(exc).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Every error is one line on stderr and exit status 2 (``--traceback`` shows the
    traceback): bad options, output paths that cannot be written (checked before any work),
    unreadable or corrupt checkpoints, and any failure of the command.
    """
    args = build_parser().parse_args(argv)
    try:
        _check_outputs(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI reports every failure in one line
        if getattr(args, "traceback", False):
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
