r"""The stacking experiment: does SNL make nonlocal blocks robust to how many are stacked?

The SNL paper (Zhu et al., ICCV 2021) claims that SNL blocks stay trainable when several are
stacked, where Tao et al. (NeurIPS 2018) saw damping and divergence with stacked NL blocks.
:func:`sweep` trains one model per point of the grid

    block types × stacked units ``k`` × placement × learning rate × seed

and records, per run, whether and when training diverged, the final test accuracy, the loss
and the gradient norms of every step, and the Jacobian norms of the trained blocks.

Placements (:func:`graphfilters.models.stacking_config`):

``"stage"``
    ``k`` units sharing one affinity computed once from the stage input, at one position
    (the official ``Stage(stage_num=k)``).
``"spread"``
    ``k`` independent blocks, each with its own affinity, spread over the positions of the
    three stages.

For ``k = 1`` both placements are the same model; the grid holds it once (as ``"stage"``) and
the tables and figure use it for both curves.

Each run is an independent job: :func:`run_one` trains, analyses and writes
``OUT/runs/<key>.json`` where ``key`` hashes the run's configuration; a restarted sweep skips
runs whose file exists. Jobs go to a local process pool by default (each worker limited to
``threads`` torch/BLAS threads, so ``workers × threads`` cores are used), to no pool
(``executor="serial"``), or through `submitit <https://github.com/facebookincubator/submitit>`_
to SLURM (``executor="submitit"``, optional extra ``graphfilters[submitit]``), its local
executor (``"submitit-local"``) or its in-process debug executor (``"submitit-debug"``).

Outputs in ``OUT``: ``results.csv`` and ``results.json`` (one row per run; the JSON also holds
the per-step logs), ``stable_lr.csv`` (largest stable learning rate per block, placement and
``k``), ``sweep.png`` (:func:`plot_sweep`) and ``summary.md``.

Divergence. A run diverges when its training loss becomes NaN/Inf, exceeds
``max_loss_factor`` times its first loss, or its gradient norm is not finite
(:class:`graphfilters.training.TrainConfig`). The largest stable learning rate of a
(block, placement, k) cell is the largest rung of the ladder such that no seed diverged at it
or at any smaller rung.

Jacobians. After training, :func:`analysis.analyze` runs on the first ``analysis_samples``
test images (it captures two of them and differentiates the first, ``jacobian_samples=1``);
per run the largest value over the model's blocks is kept: ``jacobian_full`` (affinity
recomputed from the input) and ``jacobian_frozen`` (affinity held fixed) when the analysis
reports them (the block re-run on its input; units 2…k of a stage keep the stage's affinity
fixed), NaN where it does not; ``jacobian_source`` names the fields used. The per-block
values are in the JSON rows (``blocks``).

Examples
--------
>>> import tempfile
>>> from analysis.sweep import sweep
>>> with tempfile.TemporaryDirectory() as tmp:
...     res = sweep(tmp, blocks=("snl",), ks=(1,), lrs=(0.05,), seeds=(0,), epochs=1,
...                 max_steps=2,
...                 data={"name": "digits", "size": 8}, depth=8, width=4,
...                 executor="serial", baseline=False, progress=False, figure=False)
>>> len(res.rows), res.rows[0]["block"], res.rows[0]["diverged"]
(1, 'snl', False)
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from graphfilters import _validate as V

from .sweep_results import (
    SweepResult,
    aggregate,
    compare,
    compare_markdown,
    finite_values,
    plot_sweep,
    stable_learning_rates,
    summary,
    summary_markdown,
    verdicts,
)

__all__ = [
    "EXECUTORS",
    "RunSpec",
    "SWEEP_DEFAULTS",
    "SweepResult",
    "aggregate",
    "compare",
    "compare_markdown",
    "make_grid",
    "plot_sweep",
    "run_one",
    "stable_learning_rates",
    "summary",
    "summary_markdown",
    "sweep",
    "verdicts",
    "write_outputs",
]

#: The default grid of :func:`sweep` and ``python -m analysis sweep``: 10 seeds per cell (a
#: rate of 0/10 against 6/10 or more separates at 95%; 0/5 against 5/5 only), the learning
#: rates 0.6 (no divergence seen) and 3.6 (NL diverged), k = 1, 5, 10 (k = 3 dropped: the
#: claims are about deep stacks). Cost: see the docs page "Does SNL make stacking robust?".
SWEEP_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "blocks": ("nl", "snl"), "ks": (1, 5, 10), "placements": ("stage", "spread"),
    "lrs": (0.6, 3.6), "seeds": tuple(range(10))}

#: Values of ``sweep(executor=...)``.
EXECUTORS = ("local", "serial", "submitit", "submitit-local", "submitit-debug")

#: Row attributes of :func:`analysis.analyze` read for the Jacobian norms, first found wins.
_JACOBIAN_FIELDS = {
    "full": ("jacobian_full",),
    "frozen": ("jacobian_frozen",),
}

#: Columns of ``results.csv`` (the JSON rows have these plus ``steps`` and ``blocks``).
COLUMNS = (
    "key", "block", "k", "placement", "lr", "seed", "depth", "width", "epochs", "batch_size",
    "warmup_epochs", "zero_init", "diverged", "diverged_step", "divergence_reason", "steps_run",
    "final_accuracy", "final_train_loss", "max_loss", "max_grad_norm", "max_grad_tensor",
    "jacobian_full", "jacobian_frozen", "jacobian_source", "n_blocks", "wall_s", "cpu_s",
)


#: RunSpec fields added after the first release, with their defaults: they enter the run key
#: only when set, so finished runs of an older sweep are still found.
_ADDED_FIELDS: dict[str, Any] = {"augment": False}


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: everything that decides its result (hashed into :attr:`key`).

    Attributes
    ----------
    block : str
        Block table name, or ``"none"`` for the plain backbone (a reference; ``k`` is then 0).
    k : int
        Stacked units (blocks).
    placement : {"stage", "spread"}
    lr : float
    seed : int
    depth, width : int
        PreResNet depth ``6n + 2`` and first-stage width.
    epochs, batch_size : int
    warmup_epochs : float
        Linear warm-up length (0: none).
    zero_init : bool
        Whether the blocks' output scale starts at zero (identity blocks at initialization).
    max_loss_factor : float
        Divergence threshold (times the first loss).
    data : dict
        :func:`graphfilters.data.get_dataset` spec.
    device : str
    max_steps : int or None
        Stop early (tests).
    analysis_samples : int
        Test images passed to :func:`analysis.analyze` (0: skip the analysis).
    augment : bool
        Random crops and flips (CIFAR).
    """

    block: str
    k: int
    placement: str
    lr: float
    seed: int = 0
    depth: int = 8
    width: int = 8
    epochs: int = 3
    batch_size: int = 64
    warmup_epochs: float = 0.0
    zero_init: bool = False
    max_loss_factor: float = 10.0
    data: Mapping[str, Any] = field(default_factory=lambda: {"name": "digits", "size": 16})
    device: str = "cpu"
    max_steps: int | None = None
    analysis_samples: int = 8
    augment: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-friendly)."""
        d = dataclasses.asdict(self)
        d["data"] = dict(self.data)
        return d

    @property
    def key(self) -> str:
        """A short hash of the configuration (the run's file name)."""
        d = self.to_dict()
        for name, default in _ADDED_FIELDS.items():  # keys of older result files stay valid
            if d[name] == default:
                del d[name]
        text = json.dumps(d, sort_keys=True, default=str)
        tag = f"{self.block}-k{self.k}-{self.placement}-lr{self.lr:g}-s{self.seed}"
        return f"{tag}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"

    def model_config(self) -> dict[str, Any]:
        """The :class:`graphfilters.models.PreResNet` config of this run."""
        from graphfilters.models import stacking_config

        conf: dict[str, Any] = {"depth": self.depth, "width": self.width}
        if self.block == "none":
            conf["block"] = None
            return conf
        conf["block"] = self.block
        conf.update(stacking_config(self.k, self.placement, depth=self.depth))
        conf["block_zero_init"] = self.zero_init
        return conf

    def train_config(self) -> dict[str, Any]:
        """The :class:`graphfilters.training.TrainConfig` fields of this run."""
        drop = round(0.75 * self.epochs)
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "warmup_epochs": self.warmup_epochs,
                "milestones": [drop] if 0 < drop < self.epochs else [],
                "seed": self.seed, "device": self.device, "amp": False,
                "max_steps": self.max_steps, "max_loss_factor": self.max_loss_factor,
                "augment": self.augment, "progress": False}


def _block_names() -> V.Constraint:
    from graphfilters.specs import BLOCK_NAMES

    return V.StrOptions(tuple(BLOCK_NAMES))


def _placements() -> V.Constraint:
    from graphfilters.models import PLACEMENTS

    return V.StrOptions(tuple(PLACEMENTS))


@V.validate_params(
    {"blocks": [V.Each(_block_names)], "ks": [V.Each(V.POS_INT)],
     "placements": [V.Each(_placements)], "lrs": [V.Each(V.POS_REAL)],
     "seeds": [V.Each(V.Interval(V.Integral, None, None))], "baseline": ["boolean"]},
    valid=lambda: {"blocks": ("snl",), "ks": (1,), "placements": ("stage",), "lrs": (0.1,),
                   "seeds": (0,)},
)
def make_grid(
    blocks: Sequence[str] = ("nl", "snl"),
    ks: Sequence[int] = (1, 3, 5, 10),
    placements: Sequence[str] = ("stage", "spread"),
    lrs: Sequence[float] = (0.1, 0.6, 3.6),
    seeds: Sequence[int] = (0,),
    *,
    baseline: bool = False,
    **common: Any,
) -> list[RunSpec]:
    """The runs of a sweep (``k = 1`` once per block, as ``"stage"``).

    Parameters
    ----------
    blocks, ks, placements, lrs, seeds : sequences
        The grid.
    baseline : bool
        Add the plain backbone (``block="none"``) at every learning rate and seed.
    **common
        Other :class:`RunSpec` fields (``epochs``, ``depth``, ``data``, ...).

    Returns
    -------
    list of RunSpec

    Examples
    --------
    >>> len(make_grid(("nl", "snl"), (1, 3), ("stage", "spread"), (0.1, 1.0)))
    12
    """
    runs: list[RunSpec] = []
    for lr in lrs:
        for seed in seeds:
            if baseline:
                runs.append(RunSpec("none", 0, "stage", float(lr), seed, **common))
            for block in blocks:
                for k in sorted(set(ks)):
                    for placement in (("stage",) if k == 1 else placements):
                        runs.append(RunSpec(block, k, placement, float(lr), seed, **common))
    return runs


# --------------------------------------------------------------------------------------------
# One run (a job)
# --------------------------------------------------------------------------------------------


def _limit_threads(threads: int | None) -> None:
    """Cap torch's and (when threadpoolctl is installed) BLAS/OpenMP thread pools."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional
        return
    threadpool_limits(threads)


def _jacobians(model: Any, x: Any) -> tuple[float, float, str, list[dict[str, Any]]]:
    """Largest full and frozen Jacobian norm over the model's blocks (see the module doc)."""
    from analysis.analyze import analyze

    table = analyze(model, x, max_samples=min(2, x.shape[0]), jacobian=True,
                    jacobian_samples=1, accuracy_levels=(), keep_captures=False,
                    progress=False)
    per_block: list[dict[str, Any]] = []
    used: dict[str, str] = {}
    for row in table:
        entry: dict[str, Any] = {"path": row.path, "status": row.status}
        for kind, names in _JACOBIAN_FIELDS.items():
            value = math.nan
            for name in names:
                got = getattr(row, name, None)
                if isinstance(got, (int, float)) and not isinstance(got, bool):
                    value = float(got)
                    used.setdefault(kind, name)
                    break
            entry[f"jacobian_{kind}"] = value
        per_block.append(entry)
    full = finite_values(e["jacobian_full"] for e in per_block)
    frozen = finite_values(e["jacobian_frozen"] for e in per_block)
    source = ", ".join(f"{k}={v}" for k, v in used.items()) or "none"
    return (max(full) if full else math.nan, max(frozen) if frozen else math.nan, source,
            per_block)


def run_one(spec: RunSpec | Mapping[str, Any], out: str | os.PathLike,
            threads: int | None = None) -> dict[str, Any]:
    """Train and analyse one run; write ``out/runs/<key>.json`` and return its row.

    Skips the work when that file already exists (returns the stored row).

    Parameters
    ----------
    spec : RunSpec or mapping
    out : path
        Sweep directory.
    threads : int, optional
        torch/BLAS threads of this process.

    Returns
    -------
    dict
        The row (:data:`COLUMNS` plus ``steps``: the per-step log, and ``blocks``: the
        per-block Jacobian norms).
    """
    spec = spec if isinstance(spec, RunSpec) else RunSpec(**dict(spec))
    path = Path(out) / "runs" / f"{spec.key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    _limit_threads(threads)
    from graphfilters.data import get_dataset
    from graphfilters.training import train

    t0, c0 = time.perf_counter(), time.process_time()
    data = get_dataset(dict(spec.data))
    result = train(spec.model_config(), spec.train_config(), data=data)
    steps = result.steps
    losses = finite_values(steps.get("loss", []))
    row: dict[str, Any] = {
        "key": spec.key, **{k: v for k, v in spec.to_dict().items() if k != "data"},
        "data": dict(spec.data),
        "diverged": bool(result.diverged),
        "diverged_step": result.divergence["step"] if result.divergence else None,
        "divergence_reason": result.divergence["reason"] if result.divergence else "",
        "steps_run": len(steps.get("loss", [])),
        "final_accuracy": result.test_accuracy,
        "final_train_loss": next((r["train_loss"] for r in reversed(result.history)
                                  if "train_loss" in r), None),
        "max_loss": max(losses) if losses else math.nan,
        "max_grad_norm": max(finite_values(steps.get("grad_norm", [])), default=math.nan),
        "max_grad_tensor": max(finite_values(steps.get("grad_max", [])), default=math.nan),
        "n_blocks": len(getattr(result.model, "nonlocal_paths", [])),
    }
    if result.diverged or result.test_accuracy is None:
        # a diverged model is not evaluated: its accuracy is chance by definition here
        row["final_accuracy"] = 1.0 / data.num_classes if result.diverged else None
    full = frozen = math.nan
    source, per_block = "not computed", []
    if spec.analysis_samples > 0 and spec.block != "none" and not result.diverged:
        x, _ = data.tensors("test", device=next(result.model.parameters()).device)
        try:
            full, frozen, source, per_block = _jacobians(result.model, x[:spec.analysis_samples])
        except (RuntimeError, ValueError) as exc:  # recorded, the run still counts
            source = f"analysis failed: {exc}"
    row.update(jacobian_full=full, jacobian_frozen=frozen, jacobian_source=source,
               wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
               blocks=per_block,
               steps={k: list(v) for k, v in steps.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, default=_json_default))
    os.replace(tmp, path)  # atomic: a killed job leaves no half-written result
    return row


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _no_nan(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def _worker_init(threads: int | None) -> None:
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    _limit_threads(threads)


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


def _make_executor(executor: str | Any, out: Path, workers: int, threads: int | None,
                   slurm: Mapping[str, Any] | None) -> tuple[Any, str]:
    if not isinstance(executor, str):
        return executor, "custom"
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS} or an executor object, got "
                         f"{executor!r}")
    if executor == "serial":
        return None, "serial"
    if executor == "local":
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        pool = cf.ProcessPoolExecutor(max_workers=workers,
                                      mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_worker_init, initargs=(threads,))
        return pool, "local"
    try:
        import submitit
    except ImportError as exc:
        raise RuntimeError(
            f"executor={executor!r} needs submitit: pip install 'graphfilters[submitit]'"
        ) from exc
    folder = out / "submitit" / "%j"
    if executor == "submitit-debug":
        ex = submitit.DebugExecutor(folder=folder)
    elif executor == "submitit-local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=int((slurm or {}).get("timeout_min", 60)))
    else:
        ex = submitit.AutoExecutor(folder=folder)
        params = {"timeout_min": 60, "cpus_per_task": threads or 1}
        params.update(dict(slurm or {}))
        ex.update_parameters(**params)
    return ex, executor


def sweep(
    out: str | os.PathLike,
    blocks: Sequence[str] = SWEEP_DEFAULTS["blocks"],
    ks: Sequence[int] = SWEEP_DEFAULTS["ks"],
    placements: Sequence[str] = SWEEP_DEFAULTS["placements"],
    lrs: Sequence[float] = SWEEP_DEFAULTS["lrs"],
    seeds: Sequence[int] = SWEEP_DEFAULTS["seeds"],
    *,
    baseline: bool = True,
    depth: int = 8,
    width: int = 8,
    epochs: int = 3,
    batch_size: int = 64,
    warmup_epochs: float = 0.0,
    zero_init: bool = False,
    max_loss_factor: float = 10.0,
    data: Mapping[str, Any] | str = "digits",
    device: str = "cpu",
    max_steps: int | None = None,
    analysis_samples: int = 8,
    augment: bool = False,
    executor: str | Any = "local",
    workers: int = 2,
    threads: int | None = 1,
    slurm: Mapping[str, Any] | None = None,
    figure: bool = True,
    progress: bool = True,
) -> SweepResult:
    """Run the stacking experiment and write its tables, figure and summary to ``out``.

    Parameters
    ----------
    out : path
        Output directory (created). Finished runs found in ``out/runs`` are skipped.
    blocks, ks, placements, lrs, seeds : sequences
        The grid (see :func:`make_grid`); defaults :data:`SWEEP_DEFAULTS`.
    baseline : bool
        Also train the plain backbone at every learning rate and seed.
    depth, width : int
        PreResNet depth and width.
    epochs, batch_size : int
    warmup_epochs : float
        Linear warm-up (default 0: off, the setting where the instability shows).
    zero_init : bool
        Zero-initialized output scale of the blocks (default ``False``: off).
    max_loss_factor : float
        Divergence when the loss exceeds this many times the first loss.
    data : str or mapping
        :func:`graphfilters.data.get_dataset` spec; default the digits at 16×16. For CIFAR
        ``{"name": "cifar10", "root": "/path/to/cifar-10-batches-py/.."}`` (no download).
    device : str
        Training device of each run.
    max_steps : int, optional
        Stop every run after this many steps (smoke tests).
    analysis_samples : int
        Test images for the Jacobian norms (0: skip).
    augment : bool
        Random crops and flips during training (CIFAR).
    executor : str or executor
        ``"local"`` (process pool, default), ``"serial"`` (in this process),
        ``"submitit"`` (SLURM via ``submitit.AutoExecutor``), ``"submitit-local"``,
        ``"submitit-debug"``, or any object with ``submit(fn, *args)`` returning futures
        or submitit jobs (e.g. a configured ``submitit.AutoExecutor``).
    workers : int
        Processes of the local pool.
    threads : int, optional
        torch/BLAS threads per run (``None``: leave as is).
    slurm : mapping, optional
        ``update_parameters`` of the submitit executor (``slurm_partition``, ``gpus_per_node``,
        ``timeout_min``, ...).
    figure : bool
        Write ``sweep.png``.
    progress : bool
        tqdm bar over runs.

    Returns
    -------
    SweepResult
    """
    out = Path(out)
    if isinstance(data, str):
        data = {"name": data, "size": 16} if data in ("digits", "long_range") else {"name": data}
    common = dict(depth=depth, width=width, epochs=epochs, batch_size=batch_size,
                  warmup_epochs=float(warmup_epochs), zero_init=bool(zero_init),
                  max_loss_factor=float(max_loss_factor), data=dict(data), device=device,
                  max_steps=max_steps, analysis_samples=analysis_samples,
                  augment=bool(augment))
    specs = make_grid(blocks, ks, placements, lrs, seeds, baseline=baseline, **common)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = {s.key for s in specs if (out / "runs" / f"{s.key}.json").is_file()}
    todo = [s for s in specs if s.key not in done]
    ex, kind = _make_executor(executor, out, workers, threads, slurm) if todo else (None,
                                                                                     "serial")
    bar = tqdm(total=len(specs), initial=len(done), desc="sweep", disable=not progress,
               dynamic_ncols=True)
    try:
        if ex is None:
            for s in todo:
                run_one(s, out, threads)
                bar.update()
        elif kind in ("submitit", "submitit-local", "submitit-debug") or hasattr(ex, "batch"):
            _run_submitit(ex, todo, out, threads, bar)
        else:
            futures = [ex.submit(run_one, s, str(out), threads) for s in todo]
            for fut in cf.as_completed(futures):
                fut.result()
                bar.update()
    finally:
        bar.close()
        if kind == "local" and ex is not None:
            ex.shutdown(cancel_futures=True)
    rows = [json.loads((out / "runs" / f"{s.key}.json").read_text()) for s in specs]
    wall = time.perf_counter() - t0
    settings = {"depth": depth, "width": width, "epochs": epochs, "batch": batch_size,
                "warm-up epochs": warmup_epochs, "zero-init": zero_init,
                "max_loss_factor": max_loss_factor, "augment": augment,
                "data": json.dumps(dict(data)),
                "seeds": len(seeds), "runs": len(specs)}
    files = write_outputs(rows, out, settings=settings, figure=figure)
    return SweepResult(rows=rows, stable_lr=stable_learning_rates(
        [r for r in rows if r["block"] != "none"]), out=out, files=files,
        skipped=len(done), wall_s=wall)


def _run_submitit(ex: Any, todo: Sequence[RunSpec], out: Path, threads: int | None,
                  bar: Any) -> None:
    """Submit ``todo`` as one job array (``executor.batch()``) and wait for them."""
    if hasattr(ex, "batch"):
        with ex.batch():
            jobs = [ex.submit(run_one, s, str(out), threads) for s in todo]
    else:
        jobs = [ex.submit(run_one, s, str(out), threads) for s in todo]
    pending = list(jobs)
    while pending:
        still = []
        for job in pending:
            if job.done():
                job.result()  # re-raises a failed job's error
                bar.update()
            else:
                still.append(job)
        pending = still
        if pending:
            time.sleep(0.5)


def write_outputs(rows: Sequence[Mapping[str, Any]], out: str | os.PathLike, *,
                  settings: Mapping[str, Any] | None = None, figure: bool = True
                  ) -> dict[str, Path | None]:
    """Write ``results.csv``, ``results.json``, ``stable_lr.csv``, ``sweep.png`` and
    ``summary.md`` for ``rows`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path | None] = {
        "csv": out / "results.csv", "json": out / "results.json",
        "stable_lr": out / "stable_lr.csv", "summary": out / "summary.md",
        "summary_json": out / "summary.json", "figure": None}
    with open(files["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c) for c in COLUMNS})
    files["json"].write_text(json.dumps(list(rows), indent=1, default=_json_default))
    stable = stable_learning_rates([r for r in rows if r["block"] != "none"])
    with open(files["stable_lr"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=("block", "placement", "k", "stable_lr", "next_lr",
                                          "divergence_upper", "n_seeds",
                                          "accuracy_at_stable_lr"), extrasaction="ignore")
        w.writeheader()
        w.writerows(stable)
    files["summary"].write_text(summary_markdown(rows, settings))
    files["summary_json"].write_text(json.dumps(_no_nan(summary(rows, settings)), indent=1,
                                                default=_json_default))
    if figure:
        import matplotlib.pyplot as plt

        fig, _ = plot_sweep(rows)
        files["figure"] = out / "sweep.png"
        fig.savefig(files["figure"], dpi=80)
        plt.close(fig)
    return files

