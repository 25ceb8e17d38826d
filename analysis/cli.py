"""Command line: ``python -m analysis COMMAND`` (also installed as ``graphfilters``).

Commands
--------
``train``
    Train a PreResNet with a nonlocal block and write a checkpoint.
``analyze CHECKPOINT``
    Load a checkpoint (``torch.load(weights_only=True)``), run :func:`analysis.analyze` on its
    test data and print the table (optionally as CSV/JSON).
``report CHECKPOINT [CHECKPOINT ...] --out DIR``
    Write a Markdown report with figures, the analysis table and the runs' configurations
    (one section per checkpoint).
``import-official CKPT --arch A --nl-type T --out FILE``
    Convert a checkpoint of the official SNL code (github zh460045050/SNL_ICCV2021) into a
    graphfilters checkpoint that ``analyze`` and ``report`` read.
``sweep``
    The stacking experiment (:func:`analysis.sweep.sweep`): block types × stacked units ×
    placement × learning rates × seeds, each run a job (local pool or SLURM via submitit).
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

from .sweep import SWEEP_DEFAULTS

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


def _add_training_data(p: argparse.ArgumentParser) -> None:
    """The data set options of ``train`` and ``sweep``."""
    p.add_argument("--dataset", default="digits", choices=DATASETS, help="data set")
    p.add_argument("--image-size", type=positive_int, default=16,
                   help="side of the digits / long-range images")
    p.add_argument("--data-dir", default=None, help="CIFAR directory (python-pickle files)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="directory of the CIFAR python-pickle files (cifar10/cifar100 only; "
                        "nothing is downloaded)")
    p.add_argument("--samples", type=positive_int, default=64,
                   help="test images loaded; the accuracy-under-noise curve uses all of them")
    p.add_argument("--spectrum-samples", type=positive_int, default=8,
                   help="of those, the first K whose blocks are captured: spectra, responses, "
                        "stability and Jacobian norms are computed on these")


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
    p.add_argument("--position", type=nonnegative_int, default=None,
                   help="insert the block after this residual unit of the stage; None: the "
                        "second, or the last when the stage has one unit (--depth 8)")
    p.add_argument("--units", type=positive_int, default=1,
                   help="stacked blocks k (see --placement)")
    p.add_argument("--placement", default="stage", choices=("stage", "spread"),
                   help="with --units k > 1: 'stage' = k units sharing one affinity computed "
                        "once from the stage input at --stage/--position (official "
                        "Stage(stage_num=k)); 'spread' = k independent blocks spread over the "
                        "positions of the three stages")
    p.add_argument("--no-zero-init", action="store_true",
                   help="start the blocks' output scale (BN gamma) at 1 instead of 0, so the "
                        "blocks are not the identity at initialization")
    _add_training_data(p)
    p.add_argument("--epochs", type=positive_int, default=8, help="training epochs")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch size")
    p.add_argument("--lr", type=positive_float, default=0.1,
                   help="SGD learning rate (momentum 0.9)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=1e-4, help="SGD weight decay")
    p.add_argument("--warmup-epochs", type=nonnegative_float, default=1.0,
                   help="linear warm-up epochs")
    p.add_argument("--no-warmup", action="store_true", help="no warm-up (--warmup-epochs 0)")
    p.add_argument("--max-loss-factor", type=positive_float, default=None,
                   help="stop as diverged when the loss exceeds this many times the first "
                        "step's loss (NaN/Inf loss or gradients always stop the run)")
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

    p = sub.add_parser("sweep", **fmt, help="the stacking experiment (many training runs)",
                       description="Train one model per block x stacked units k x placement x "
                                   "learning rate x seed, record divergence, accuracy, per-step "
                                   "loss and gradient norms and the blocks' Jacobian norms, and "
                                   "write results.csv/json, stable_lr.csv, sweep.png and "
                                   "summary.md to --out. Finished runs are skipped on restart.")
    p.add_argument("--out", default="out/sweep", help="output directory")
    p.add_argument("--blocks", nargs="+", default=["nl", "snl"], choices=BLOCK_NAMES,
                   help="block types")
    p.add_argument("--units", type=positive_int, nargs="+", default=list(SWEEP_DEFAULTS["ks"]),
                   help="stacked blocks k")
    p.add_argument("--placements", nargs="+", default=["stage", "spread"],
                   choices=("stage", "spread"), help="stacking layouts")
    p.add_argument("--lrs", type=positive_float, nargs="+", default=list(SWEEP_DEFAULTS["lrs"]),
                   help="learning-rate ladder")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+",
                   default=list(SWEEP_DEFAULTS["seeds"]), help="seeds (at least 5 per cell)")
    p.add_argument("--compare", default=None, metavar="DIR",
                   help="also print which verdicts this sweep shares with the sweep in DIR")
    p.add_argument("--no-baseline", action="store_true",
                   help="do not train the plain backbone at each learning rate")
    p.add_argument("--depth", type=positive_int, default=8, help="ResNet depth 6n+2")
    p.add_argument("--width", type=positive_int, default=8, help="channels of the first stage")
    _add_training_data(p)
    p.add_argument("--epochs", type=positive_int, default=3, help="training epochs per run")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch size")
    p.add_argument("--warmup-epochs", type=nonnegative_float, default=0.0,
                   help="linear warm-up epochs (default 0: off)")
    p.add_argument("--zero-init", action="store_true",
                   help="zero-initialized output scale of the blocks (default: off, scale 1)")
    p.add_argument("--max-loss-factor", type=positive_float, default=10.0,
                   help="divergence: loss above this many times the first loss")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop each run after N steps")
    p.add_argument("--augment", action="store_true",
                   help="random crops and flips during training (CIFAR)")
    p.add_argument("--analysis-samples", type=nonnegative_int, default=8,
                   help="test images for the Jacobian norms (0: skip)")
    p.add_argument("--executor", default="local",
                   choices=("local", "serial", "submitit", "submitit-local", "submitit-debug"),
                   help="local process pool, this process, SLURM through submitit, or "
                        "submitit's local/debug executors")
    p.add_argument("--workers", type=positive_int, default=2, help="processes of the local pool")
    p.add_argument("--threads", type=positive_int, default=1, help="torch/BLAS threads per run")
    p.add_argument("--slurm-partition", default=None, help="SLURM partition (submitit)")
    p.add_argument("--slurm-time", type=positive_int, default=60, help="minutes per job (submitit)")
    p.add_argument("--gpus-per-node", type=positive_int, default=None,
                   help="GPUs per job (submitit)")
    p.add_argument("--no-figure", action="store_true", help="do not write sweep.png")
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
    p.add_argument("checkpoint", nargs="+",
                   help="one or more checkpoints; the report has a section for each")
    p.add_argument("--out", required=True, help="output directory")
    _add_data_options(p)
    _add_common(p)

    p = sub.add_parser("import-official", **fmt,
                       help="convert a checkpoint of the official SNL code",
                       description="Load a checkpoint of the official SNL code (train_val.py's "
                                   "file, an mmseg checkpoint of the SNL head, or a bare state "
                                   "dict; torch.load(weights_only=True)) as the official code "
                                   "computes it, and write a graphfilters checkpoint that "
                                   "records the official architecture.")
    p.add_argument("checkpoint", help="the official checkpoint (e.g. model_best.pth.tar)")
    p.add_argument("--arch", required=True, choices=("20", "56", "110", "resnet50", "snl_head"),
                   help="official --arch of the CIFAR PreResNet, the ImageNet ResNet-50, or "
                        "the Cityscapes SNL decode head")
    p.add_argument("--nl-type", required=True,
                   choices=("snl", "nl", "ns", "a2", "dnl", "cgnl", "cc"),
                   help="official --nl-type (nl, ns and a2 share their keys: give the right one)")
    p.add_argument("--out", required=True, help="graphfilters checkpoint to write")
    p.add_argument("--stage-num", type=int, default=None,
                   help="units per stage (default: read from the keys)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier outputs (default: read from the keys)")
    p.add_argument("--is-sys", action="store_true",
                   help="resnet50: the run used train_val.py's is_sys flag")
    p.add_argument("--is-norm", action="store_true",
                   help="resnet50: the run used train_val.py's is_norm flag")
    p.add_argument("--pool-size", type=int, default=None,
                   help="side of the final average pool (default: the official one for the "
                        "input size it was trained on)")
    p.add_argument("--dataset", default=None, choices=("cifar10", "cifar100"),
                   help="record this data set (needs --data-dir) so that 'analyze' and "
                        "'report' run on it, with train_val.py's input normalization")
    p.add_argument("--data-dir", default=None, help="CIFAR directory (python-pickle files)")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")

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
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs per model; None: 8, or 1 with --quick")
    p.add_argument("--retrain", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run (tiny training); the report says so")
    _add_common(p)
    return parser


def _position(args: argparse.Namespace) -> int:
    """``--position``, or its default: after the second residual unit of the stage, or after
    its only one (depth 8 has one unit per stage)."""
    if args.position is not None:
        return args.position
    return max(1, min(2, (args.depth - 2) // 6))


def _data_spec(args: argparse.Namespace) -> dict:
    """The data set of ``train`` and ``sweep`` from ``--dataset``, ``--image-size`` and
    ``--data-dir``."""
    data: dict = {"name": args.dataset}
    if args.dataset in ("digits", "long_range"):
        data["size"] = args.image_size
    elif args.data_dir is None:
        raise ValueError(f"--dataset {args.dataset} needs --data-dir (the directory of the "
                         "python-pickle files; nothing is downloaded)")
    if args.data_dir is not None:
        data["root"] = args.data_dir
    return data


def _cmd_train(args: argparse.Namespace) -> int:
    from graphfilters.training import TrainConfig, train

    data = _data_spec(args)
    position = _position(args)
    model = {"depth": args.depth, "width": args.width,
             "block": None if args.block == "none" else args.block,
             "block_stages": [args.stage], "block_positions": [position]}
    if args.units < 1:
        raise ValueError(f"--units must be >= 1, got {args.units}")
    if args.units > 1 or args.placement != "stage":
        from graphfilters.models import stacking_config

        model.update(stacking_config(args.units, args.placement, depth=args.depth,
                                     stage=args.stage, position=position))
    if args.no_zero_init:
        model["block_zero_init"] = False
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
        weight_decay=args.weight_decay,
        warmup_epochs=0.0 if args.no_warmup else args.warmup_epochs,
        milestones=tuple(m for m in milestones if 0 < m < args.epochs), seed=args.seed,
        device=args.device, max_steps=args.max_steps, progress=not args.quiet,
        max_loss_factor=args.max_loss_factor,
    )
    result = train(model, config, data=data, out=args.out)
    acc = result.test_accuracy
    print(f"checkpoint: {result.checkpoint}")
    print(f"test accuracy: {acc:.4f}" if acc is not None else "test accuracy: not evaluated")
    if result.diverged:
        print(f"diverged: {result.divergence}", file=sys.stderr)
        return 1
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep

    data = _data_spec(args)
    slurm: dict = {"timeout_min": args.slurm_time}
    if args.slurm_partition is not None:
        slurm["slurm_partition"] = args.slurm_partition
    if args.gpus_per_node is not None:
        slurm["gpus_per_node"] = args.gpus_per_node
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    result = sweep(args.out, blocks=args.blocks, ks=args.units, placements=args.placements,
                   lrs=args.lrs, seeds=args.seeds, baseline=not args.no_baseline,
                   depth=args.depth, width=args.width, epochs=args.epochs,
                   batch_size=args.batch_size, warmup_epochs=args.warmup_epochs,
                   zero_init=args.zero_init, max_loss_factor=args.max_loss_factor, data=data,
                   device=device, max_steps=args.max_steps,
                   analysis_samples=args.analysis_samples, augment=args.augment,
                   executor=args.executor,
                   workers=args.workers, threads=args.threads, slurm=slurm,
                   figure=not args.no_figure, progress=not args.quiet)
    print(f"{len(result.rows)} runs ({result.skipped} found finished) in "
          f"{result.wall_s:.0f} s")
    for key, path in result.files.items():
        if path is not None:
            print(f"wrote {path} ({key})")
    if args.compare is not None:
        from .sweep import compare, compare_markdown

        print(compare_markdown(compare(args.out, args.compare)))
    return 0


def _load(args: argparse.Namespace, checkpoint: str):
    from .report import load_for_analysis

    if args.spectrum_samples < 1:
        raise ValueError(f"--spectrum-samples must be >= 1, got {args.spectrum_samples}")
    return load_for_analysis(checkpoint, device=args.device, data_dir=args.data_dir,
                             samples=args.samples)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze

    loaded = _load(args, args.checkpoint)
    rows = analyze(loaded.model, loaded.inputs, labels=loaded.labels,
                   max_samples=args.spectrum_samples)
    print(rows.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(rows.to_records(), indent=1, default=str))
        print(f"wrote {args.json}")
    if args.csv:
        rows.to_frame("all").to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import analyse_loaded, write_report

    models = {}
    for checkpoint in args.checkpoint:
        loaded = _load(args, checkpoint)
        if loaded.name in models:  # two 'snl' checkpoints: tell them apart by file name
            loaded.name = Path(checkpoint).stem
        while loaded.name in models:
            loaded.name += "'"
        analyse_loaded(loaded, max_samples=args.spectrum_samples)
        models[loaded.name] = loaded
    path = write_report(args.out, models)
    print(f"wrote {path}")
    return 0


def _cmd_import_official(args: argparse.Namespace) -> int:
    import warnings

    from graphfilters.official import (
        CIFAR_NORMALIZATION,
        OfficialDifferenceWarning,
        OfficialNet,
        load_official,
    )
    from graphfilters.training import save_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OfficialDifferenceWarning)
        model = load_official(args.checkpoint, args.arch, args.nl_type,
                              stage_num=args.stage_num, num_classes=args.num_classes,
                              is_sys=args.is_sys, is_norm=args.is_norm,
                              pool_size=args.pool_size)
    data = None
    if args.dataset is not None:
        if args.arch not in ("20", "56", "110", "resnet50"):
            raise ValueError(f"--dataset {args.dataset} applies to the classification models, "
                             f"not --arch {args.arch}")
        if args.data_dir is None:
            raise ValueError(f"--dataset {args.dataset} needs --data-dir (the directory of the "
                             "python-pickle files; nothing is downloaded)")
        from graphfilters.data import get_dataset

        images = get_dataset({"name": args.dataset, "root": args.data_dir})
        data = images.describe()
        config = dict(model.config)
        config["input_normalization"] = {
            "data_mean": list(images.mean), "data_std": list(images.std),
            "mean": list(CIFAR_NORMALIZATION["mean"]), "std": list(CIFAR_NORMALIZATION["std"])}
        config.pop("arch")
        state = model.state_dict()
        model = OfficialNet(**config).to(next(iter(state.values())).dtype)
        model.load_state_dict(state)
    extra = {"official": {"source": str(args.checkpoint),
                          "differences": list(model.official_differences)}}
    path = save_checkpoint(args.out, model, config=model.config, data=data, extra=extra)
    units = model.config["stage_num"]
    print(f"official {args.arch} {args.nl_type}: nonlocal modules {model.nonlocal_paths}, "
          f"{units} unit(s) each")
    for d in model.official_differences:
        print(f"note: {d}")
    if data is None:
        print("no data set recorded (--dataset): analyse it from Python with "
              "analysis.analyze(load_model(path), inputs)")
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


COMMANDS = {"train": _cmd_train, "sweep": _cmd_sweep, "analyze": _cmd_analyze,
            "report": _cmd_report, "derive": _cmd_derive, "demo": _cmd_demo,
            "import-official": _cmd_import_official}


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output path is checked before the work starts (training is not lost to a bad
    ``--out``)."""
    if args.command == "train":
        _check_output_file(args.out, "--out")
    elif args.command in ("report", "demo", "sweep"):
        _check_output_dir(args.out, "--out")
    elif args.command == "import-official":
        _check_output_file(args.out, "--out")
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
