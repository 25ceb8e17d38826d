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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .stats import CONFIDENCE, log_mean_ci, mean_ci, median_spread, proportion_ci, verdict

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
    from graphfilters.models import PLACEMENTS
    from graphfilters.specs import BLOCK_NAMES

    for b in blocks:
        if b not in BLOCK_NAMES:
            raise ValueError(f"blocks: unknown block {b!r}; known: {', '.join(BLOCK_NAMES)}")
    for p in placements:
        if p not in PLACEMENTS:
            raise ValueError(f"placements: {p!r} is not one of {PLACEMENTS}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"ks: stacked units must be positive ints, got {k!r}")
    for lr in lrs:
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lrs: learning rates must be positive, got {lr!r}")
    if not (blocks and ks and placements and lrs and seeds):
        raise ValueError("blocks, ks, placements, lrs and seeds must all be non-empty")
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


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


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
    full = _finite(e["jacobian_full"] for e in per_block)
    frozen = _finite(e["jacobian_frozen"] for e in per_block)
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
    losses = _finite(steps.get("loss", []))
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
        "max_grad_norm": max(_finite(steps.get("grad_norm", [])), default=math.nan),
        "max_grad_tensor": max(_finite(steps.get("grad_max", [])), default=math.nan),
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
# Aggregation
# --------------------------------------------------------------------------------------------


def _cells(rows: Sequence[Mapping[str, Any]], placements: Sequence[str]
           ) -> dict[tuple[str, str, int, float], list[Mapping[str, Any]]]:
    """Rows grouped by (block, placement, k, lr); ``k = 1`` rows count for every placement."""
    cells: dict[tuple[str, str, int, float], list[Mapping[str, Any]]] = {}
    for r in rows:
        places = placements if (r["k"] <= 1) else (r["placement"],)
        for p in places:
            cells.setdefault((r["block"], p, int(r["k"]), float(r["lr"])), []).append(r)
    return cells


def _placements(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    found = sorted({r["placement"] for r in rows if r["k"] > 1})
    return found or ["stage"]


def _mean(values: Iterable[Any]) -> float:
    vals = _finite(values)
    return float(np.mean(vals)) if vals else math.nan


def aggregate(rows: Sequence[Mapping[str, Any]], confidence: float = CONFIDENCE
              ) -> list[dict[str, Any]]:
    """One line per (block, placement, k, lr): seeds, divergence rate, accuracy, Jacobians.

    Per cell (:mod:`analysis.stats`):

    - ``n_seeds``; ``diverged`` (count), ``divergence_rate`` and ``divergence_ci`` (Wilson);
    - ``accuracy_mean`` and ``accuracy_ci`` (Student t) over all seeds, a diverged run
      counting as chance (``accuracy`` is the same mean);
    - ``jacobian_full`` and ``jacobian_frozen``: the **median** over the seeds that did not
      diverge of each run's largest norm, with ``jacobian_full_spread`` /
      ``jacobian_frozen_spread`` (:func:`analysis.stats.median_spread`: quartiles, range) and
      ``jacobian_full_gmean_ci`` (t interval of the log norms: the geometric mean's);
    - ``max_grad_norm``: the median of the runs' largest gradient norms.

    Examples
    --------
    >>> rows = [{"block": "snl", "placement": "stage", "k": 1, "lr": 0.1, "diverged": d,
    ...          "final_accuracy": a, "max_grad_norm": 1.0, "jacobian_full": 2.0,
    ...          "jacobian_frozen": 1.0} for d, a in ((False, 0.9), (True, 0.1))]
    >>> cell = aggregate(rows)[0]
    >>> cell["n_seeds"], cell["divergence_rate"], [round(v, 3) for v in cell["divergence_ci"]]
    (2, 0.5, [0.095, 0.905])
    """
    out = []
    for (block, placement, k, lr), rs in sorted(_cells(rows, _placements(rows)).items()):
        n_div = sum(bool(r["diverged"]) for r in rs)
        acc, acc_ci = mean_ci((r["final_accuracy"] for r in rs), confidence)
        live = [r for r in rs if not r["diverged"]]
        full = median_spread(r["jacobian_full"] for r in live)
        frozen = median_spread(r["jacobian_frozen"] for r in live)
        out.append({
            "block": block, "placement": placement, "k": k, "lr": lr,
            "n_seeds": len(rs), "seeds": len(rs), "diverged": n_div,
            "divergence_rate": n_div / len(rs),
            "divergence_ci": proportion_ci(n_div, len(rs), confidence),
            "accuracy": acc, "accuracy_mean": acc, "accuracy_ci": acc_ci,
            "max_grad_norm": median_spread(r["max_grad_norm"] for r in rs)["median"],
            "jacobian_full": full["median"], "jacobian_full_spread": full,
            "jacobian_full_gmean_ci": log_mean_ci((r["jacobian_full"] for r in live),
                                                  confidence)[1],
            "jacobian_frozen": frozen["median"], "jacobian_frozen_spread": frozen,
        })
    return out


def stable_learning_rates(rows: Sequence[Mapping[str, Any]], confidence: float = CONFIDENCE
                          ) -> list[dict[str, Any]]:
    """Largest stable learning rate per (block, placement, k), with its uncertainty.

    ``stable_lr``: the largest rung of the ladder at which no seed diverged, with no
    divergence at any smaller rung either (``None`` when the smallest rung already
    diverged). Its uncertainty has two parts, both reported:

    - the ladder's resolution: the edge lies in ``[stable_lr, next_lr)`` (``next_lr`` the next
      rung, ``None`` above the ladder's top: the edge is not reached);
    - the seeds: ``0/n`` divergences at ``stable_lr`` bound the divergence rate there by
      ``divergence_upper`` (Wilson's upper bound, 0.43 for 5 seeds, 0.28 for 10), and
      ``seed_range`` is the range of the per-seed largest stable rungs (each seed's own
      largest rung before its first divergence, ``None`` for a seed diverging at the
      smallest rung).

    Examples
    --------
    >>> rows = [{"block": "nl", "placement": "stage", "k": 1, "lr": lr, "diverged": d,
    ...          "final_accuracy": 0.9, "max_grad_norm": 1.0, "jacobian_full": 1.0,
    ...          "jacobian_frozen": 1.0} for lr, d in ((0.1, False), (0.4, True), (1.6, False))]
    >>> s = stable_learning_rates(rows)[0]
    >>> s["stable_lr"], s["next_lr"], round(s["divergence_upper"], 3)
    (0.1, 0.4, 0.793)
    """
    agg = aggregate(rows, confidence)
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for a in agg:
        groups.setdefault((a["block"], a["placement"], a["k"]), []).append(a)
    per_seed: dict[tuple[str, str, int], dict[Any, list[tuple[float, bool]]]] = {}
    for (block, placement, k, lr), rs in _cells(rows, _placements(rows)).items():
        for r in rs:
            per_seed.setdefault((block, placement, k), {}).setdefault(
                r.get("seed"), []).append((lr, bool(r["diverged"])))
    out = []
    for key, cells in sorted(groups.items()):
        cells = sorted(cells, key=lambda c: c["lr"])
        best = None
        for c in cells:
            if c["diverged"]:
                break
            best = c
        ladder = [c["lr"] for c in cells]
        nxt = None
        if best is None:
            nxt = ladder[0]
        elif ladder.index(best["lr"]) + 1 < len(ladder):
            nxt = ladder[ladder.index(best["lr"]) + 1]
        seed_edges = []
        for runs in per_seed.get(key, {}).values():
            edge = None
            for lr, div in sorted(runs):
                if div:
                    break
                edge = lr
            seed_edges.append(edge)
        found = [e for e in seed_edges if e is not None]
        out.append({"block": key[0], "placement": key[1], "k": key[2],
                    "stable_lr": None if best is None else best["lr"], "next_lr": nxt,
                    "accuracy_at_stable_lr": None if best is None else best["accuracy"],
                    "divergence_upper": None if best is None else best["divergence_ci"][1],
                    "n_seeds": min(c["n_seeds"] for c in cells),
                    "seed_range": ([None] if None in seed_edges else [])
                    + ([min(found), max(found)] if found else []),
                    "ladder": ladder})
    return out


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------

#: Blocks claimed to be the robust ones (the first of a compared pair) and those they are
#: compared with; the same families as the report's claims.
ROBUST_FAMILY = ("snl", "gsnl", "gsnl_stable", "cayley", "arma")
#: Smallest ``k`` of the pooled "stacked" group of the verdicts (``k >= POOL_K``).
POOL_K = 5

#: (metric, interval field, claim text with {a} and {b}, direction): the claim is "a < b"
#: on the interval; ``"more"`` compares the negated intervals (claim "a > b").
_CLAIMS = (
    ("divergence", "divergence_ci", "{a} diverges less often than {b}", "less"),
    ("accuracy", "accuracy_ci", "{a} is more accurate than {b}", "more"),
    ("jacobian", "jacobian_full_gmean_ci", "{a}'s full Jacobian norm is smaller than {b}'s",
     "less"),
)


def _pairs(blocks: Sequence[str]) -> list[tuple[str, str]]:
    robust = [b for b in blocks if b in ROBUST_FAMILY]
    other = [b for b in blocks if b not in ROBUST_FAMILY and b != "none"]
    return [(a, b) for a in robust for b in other]


def _pooled_cell(rows: Sequence[Mapping[str, Any]], confidence: float) -> dict[str, Any]:
    """:func:`aggregate` of rows treated as one cell (their seeds and cells pooled)."""
    same = [{**r, "k": 2, "placement": "pool", "lr": 1.0} for r in rows]
    return aggregate(same, confidence)[0]


def verdicts(rows: Sequence[Mapping[str, Any]], confidence: float = CONFIDENCE
             ) -> list[dict[str, Any]]:
    """The sweep's verdicts on SNL-family blocks against the others, by one rule.

    For every pair (a robust-family block ``a``, :data:`ROBUST_FAMILY`; another block ``b``)
    in the rows, every placement and learning rate, and every ``k`` (``k = 1`` included) plus
    the pooled group ``k >= POOL_K`` (all seeds of those cells together), three claims:
    ``a`` diverges less often (Wilson intervals of the rates), is more accurate (t intervals
    of the mean accuracy), has a smaller full Jacobian norm (t intervals of the log norms).
    Each gets :func:`analysis.stats.verdict`: ``"held"`` only when the intervals separate in
    the claimed direction, ``"did not hold"`` when they separate the other way, otherwise
    ``"not separated"``.

    Returns
    -------
    list of dict
        ``claim`` (a stable text key: the claim and its cell), ``metric``, ``a``, ``b``,
        ``placement``, ``k`` (an int, or ``">=5"``), ``lr``, ``verdict``, ``a_ci``, ``b_ci``,
        ``a_n``, ``b_n`` (seeds).

    Examples
    --------
    >>> rows = [{"block": b, "placement": "spread", "k": 5, "lr": 3.6, "seed": s,
    ...          "diverged": b == "nl", "final_accuracy": 0.1 if b == "nl" else 0.9,
    ...          "max_grad_norm": 1.0, "jacobian_full": 2.0, "jacobian_frozen": 1.0}
    ...         for b in ("nl", "snl") for s in range(5)]
    >>> [v["verdict"] for v in verdicts(rows) if v["k"] == 5]
    ['held', 'held', 'not separated']
    """
    rows = [r for r in rows if r["block"] != "none"]
    cells = {(c["block"], c["placement"], c["k"], c["lr"]): c
             for c in aggregate(rows, confidence)}
    groups: dict[tuple[str, str, Any, float], dict[str, Any]] = {}
    for (block, placement, k, lr), c in cells.items():
        groups[(block, placement, k, lr)] = c
    placed = _cells(rows, _placements(rows))
    for block, placement, lr in {(b, p, lr) for b, p, _, lr in placed}:
        pooled = [r for (b, p, k, l), rs in placed.items() for r in rs
                  if b == block and p == placement and l == lr and k >= POOL_K]
        if pooled:
            groups[(block, placement, f">={POOL_K}", lr)] = _pooled_cell(pooled, confidence)
    blocks = sorted({r["block"] for r in rows})
    out = []
    for a, b in _pairs(blocks):
        for (block, placement, k, lr), ca in sorted(groups.items(), key=lambda g: (
                g[0][1], str(g[0][2]).zfill(4), g[0][3])):
            if block != a or (b, placement, k, lr) not in groups:
                continue
            cb = groups[(b, placement, k, lr)]
            for metric, fld, text, direction in _CLAIMS:
                ia, ib = tuple(ca[fld]), tuple(cb[fld])
                if direction == "more":
                    v = verdict((-ia[1], -ia[0]), (-ib[1], -ib[0]))
                else:
                    v = verdict(ia, ib)
                where = f"{placement}, k = {k if isinstance(k, int) else k[2:] + '+'}" \
                    if k != 1 else "k = 1"
                out.append({"claim": f"{text.format(a=a.upper(), b=b.upper())} "
                                     f"({where}, lr {lr:g})",
                            "metric": metric, "a": a, "b": b, "placement": placement,
                            "k": k, "lr": lr, "verdict": v, "a_ci": list(ia),
                            "b_ci": list(ib), "a_n": ca["n_seeds"], "b_n": cb["n_seeds"]})
    # k = 1 is the same runs for every placement: keep one copy of each claim
    seen, unique = set(), []
    for v in out:
        if v["claim"] not in seen:
            seen.add(v["claim"])
            unique.append(v)
    return unique


def summary(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any] | None = None,
            confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The content of ``summary.json``: per-cell statistics, stable learning rates, verdicts.

    Keys: ``confidence``, ``methods`` (how each interval is computed), ``settings``,
    ``cells`` (:func:`aggregate`, robust-family and other blocks), ``baseline`` (the plain
    backbone per learning rate: ``n_seeds``, ``accuracy_mean``, ``accuracy_ci``,
    ``diverged``), ``stable_lr`` (:func:`stable_learning_rates`), ``verdicts``
    (:func:`verdicts`).
    """
    blocks = [r for r in rows if r["block"] != "none"]
    base = [r for r in rows if r["block"] == "none"]
    baseline = []
    for lr in sorted({float(r["lr"]) for r in base}):
        rs = [r for r in base if float(r["lr"]) == lr]
        m, ci = mean_ci((r["final_accuracy"] for r in rs), confidence)
        baseline.append({"lr": lr, "n_seeds": len(rs), "accuracy_mean": m, "accuracy_ci": ci,
                         "diverged": sum(bool(r["diverged"]) for r in rs)})
    return {"confidence": confidence,
            "methods": {"divergence_ci": "Wilson score (scipy.stats.binomtest.proportion_ci)",
                        "accuracy_ci": "Student t (scipy.stats.t.interval); diverged = chance",
                        "jacobian": "median and quartiles over non-diverged seeds; "
                                    "gmean_ci: t interval of log norms",
                        "verdict": "held only where the intervals separate (analysis.stats."
                                   "verdict)"},
            "settings": dict(settings or {}), "cells": aggregate(blocks, confidence),
            "baseline": baseline, "stable_lr": stable_learning_rates(blocks, confidence),
            "verdicts": verdicts(blocks, confidence)}


def _load_summary(x: Any) -> dict[str, Any]:
    if isinstance(x, SweepResult):
        x = x.out
    if isinstance(x, Mapping):
        if "verdicts" not in x:
            raise ValueError("compare: a mapping must be a summary (with 'verdicts')")
        return dict(x)
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        p = p / "summary.json" if p.is_dir() else p
        if not p.is_file():
            raise ValueError(f"compare: no summary.json at {p}")
        return json.loads(p.read_text())
    if isinstance(x, Sequence):
        return summary(list(x))
    raise ValueError(f"compare: expected a sweep directory, summary.json, SweepResult, summary "
                     f"dict or rows, got {type(x).__name__}")


def compare(a: Any, b: Any) -> dict[str, list[dict[str, Any]]]:
    """Which verdicts two sweep outputs share.

    Parameters
    ----------
    a, b : path, SweepResult, summary dict or rows
        Sweep directories (or their ``summary.json``), results, :func:`summary` dicts, or
        run rows.

    Returns
    -------
    dict of lists
        ``"held_in_both"``, ``"did_not_hold_in_both"`` (the same separated verdict in both:
        the verdicts that survive the rerun), ``"not_separated_in_both"``, ``"differ"``
        (different verdicts; entries have ``a`` and ``b``), ``"only_a"``, ``"only_b"`` (claims
        one output does not test). Entries: ``claim``, ``a`` and ``b`` verdicts, ``a_ci``,
        ``b_ci``.

    Examples
    --------
    >>> A = {"verdicts": [{"claim": "x", "verdict": "held", "a_ci": [0, 1]},
    ...                   {"claim": "y", "verdict": "held", "a_ci": [0, 1]}]}
    >>> B = {"verdicts": [{"claim": "x", "verdict": "held", "a_ci": [0, 1]},
    ...                   {"claim": "y", "verdict": "not separated", "a_ci": [0, 1]}]}
    >>> c = compare(A, B)
    >>> [e["claim"] for e in c["held_in_both"]], [e["claim"] for e in c["differ"]]
    (['x'], ['y'])
    """
    va = {v["claim"]: v for v in _load_summary(a)["verdicts"]}
    vb = {v["claim"]: v for v in _load_summary(b)["verdicts"]}
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in (
        "held_in_both", "did_not_hold_in_both", "not_separated_in_both", "differ", "only_a",
        "only_b")}
    for claim, x in va.items():
        if claim not in vb:
            out["only_a"].append({"claim": claim, "a": x["verdict"]})
            continue
        y = vb[claim]
        entry = {"claim": claim, "a": x["verdict"], "b": y["verdict"],
                 "a_ci": x.get("a_ci"), "b_ci": y.get("a_ci"),
                 "a_vs": x.get("b_ci"), "b_vs": y.get("b_ci")}
        if x["verdict"] != y["verdict"]:
            out["differ"].append(entry)
        else:
            out[x["verdict"].replace(" ", "_") + "_in_both"].append(entry)
    out["only_b"] = [{"claim": c, "b": y["verdict"]} for c, y in vb.items() if c not in va]
    return out


def compare_markdown(comparison: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A Markdown list of :func:`compare`'s result (separated verdicts first)."""
    lines = []
    for key, title in (("held_in_both", "Held in both runs"),
                       ("did_not_hold_in_both", "Did not hold in both runs"),
                       ("differ", "Different verdicts"),
                       ("not_separated_in_both", "Not separated in either run")):
        items = comparison.get(key, [])
        lines += [f"**{title}** ({len(items)}):", ""]
        for e in items:
            extra = f" ({e['a']} / {e['b']})" if key == "differ" else ""
            lines.append(f"- {e['claim']}{extra}")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Figure and summary
# --------------------------------------------------------------------------------------------

_METRICS = (("accuracy", "final test accuracy"), ("divergence_rate", "divergence rate"),
            ("jacobian_full", "block Jacobian norm (median of max)"))


def plot_sweep(rows: Sequence[Mapping[str, Any]], ax: Any = None) -> tuple[Any, Any]:
    """Accuracy, divergence rate and Jacobian norm against ``k``: one column per learning rate.

    One line per (block, placement); ``k = 1`` is shared by both placements; a grey dotted
    line marks the plain backbone's accuracy (when the rows hold it). The Jacobian axis is
    logarithmic (diverged runs are left out of it).

    Parameters
    ----------
    rows : sequence of dict
        :attr:`SweepResult.rows` (or the rows of ``results.json``).
    ax : array of matplotlib Axes, optional
        Shape ``(3, n_lr)``; a new figure when omitted.

    Returns
    -------
    (matplotlib.figure.Figure, numpy.ndarray of Axes)

    Examples
    --------
    >>> rows = [{"block": "snl", "placement": "stage", "k": k, "lr": 0.1, "diverged": False,
    ...          "final_accuracy": 0.9, "max_grad_norm": 1.0, "jacobian_full": 1.0 + k,
    ...          "jacobian_frozen": 1.0} for k in (1, 3)]
    >>> fig, axes = plot_sweep(rows)
    >>> axes.shape
    (3, 1)
    """
    import matplotlib.pyplot as plt

    base = [r for r in rows if r["block"] == "none"]
    rows = [r for r in rows if r["block"] != "none"]
    agg = aggregate(rows)
    lrs = sorted({a["lr"] for a in agg})
    if ax is None:
        fig, ax = plt.subplots(len(_METRICS), max(len(lrs), 1), squeeze=False,
                               figsize=(3.2 * max(len(lrs), 1) + 0.6, 7.5), sharex=True)
    else:
        ax = np.asarray(ax).reshape(len(_METRICS), -1)
        fig = ax.flat[0].figure
        if ax.shape[1] != len(lrs):
            raise ValueError(f"ax must have shape (3, {len(lrs)}) (one column per learning "
                             f"rate), got {ax.shape}")
    lines = sorted({(a["block"], a["placement"]) for a in agg})
    colors = {b: f"C{i}" for i, b in enumerate(sorted({b for b, _ in lines}))}
    styles = {"stage": ("-", "o"), "spread": ("--", "s")}
    for j, lr in enumerate(lrs):
        for i, (metric, label) in enumerate(_METRICS):
            a = ax[i, j]
            for block, placement in lines:
                pts = sorted((c["k"], c[metric]) for c in agg if c["lr"] == lr
                             and c["block"] == block and c["placement"] == placement)
                if not pts:
                    continue
                ls, marker = styles.get(placement, (":", "^"))
                a.plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, marker=marker,
                       color=colors[block], label=f"{block} {placement}")
            ref = _mean(r["final_accuracy"] for r in base if float(r["lr"]) == lr)
            if metric == "accuracy" and math.isfinite(ref):
                a.axhline(ref, color="0.5", ls=":", lw=1, label="no block")
            if metric == "jacobian_full" and any(
                    np.isfinite(c[metric]) and c[metric] > 0 for c in agg):
                a.set_yscale("log")
            if metric == "divergence_rate":
                a.set_ylim(-0.05, 1.05)
            if i == 0:
                a.set_title(f"lr = {lr:g}")
            if j == 0:
                a.set_ylabel(label)
            if i == len(_METRICS) - 1:
                a.set_xlabel("stacked blocks k")
            a.grid(alpha=0.3)
    ks = sorted({a["k"] for a in agg})
    for a in ax.flat:
        if ks:
            a.set_xticks(ks)
    if lines:
        ax[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig, ax


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def summary_markdown(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any] | None = None
                     ) -> str:
    """The Markdown summary: settings, the per-cell table, stable learning rates, divergences."""
    settings = dict(settings or {})
    lines = ["# Stacking sweep", ""]
    if settings:
        lines += ["Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()), ""]
    agg = aggregate([r for r in rows if r["block"] != "none"])
    ci = f"{CONFIDENCE:.0%}"
    lines += ["k = 1 is one block, listed once (as `stage`); it starts both curves. "
              f"Intervals are {ci}: divergence rate Wilson, accuracy Student t (a diverged run "
              "counts as chance); ‖J‖ columns are the median [quartiles] over the seeds that "
              "did not diverge; max ‖∇‖ the median over seeds.", "",
              f"| block | placement | k | lr | diverged | rate [{ci}] | accuracy [{ci}] | "
              "max ‖∇‖ | ‖J‖ full | ‖J‖ frozen |", "|---|---|---|---|---|---|---|---|---|---|"]

    def spread(c: Mapping[str, Any], name: str) -> str:
        sp = c[f"{name}_spread"]
        return (f"{_fmt(sp['median'])} [{_fmt(sp['q25'])}, {_fmt(sp['q75'])}]"
                if sp["n"] else "–")

    for a in agg:
        if a["k"] == 1 and a["placement"] != "stage":
            continue  # the same runs as the "stage" line
        lo, hi = a["divergence_ci"]
        alo, ahi = a["accuracy_ci"]
        lines.append(
            f"| {a['block']} | {a['placement']} | {a['k']} | {a['lr']:g} | "
            f"{a['diverged']}/{a['n_seeds']} | {a['divergence_rate']:.2f} [{lo:.2f}, "
            f"{hi:.2f}] | {_fmt(a['accuracy_mean'], '.3f')} [{_fmt(alo, '.3f')}, "
            f"{_fmt(ahi, '.3f')}] | {_fmt(a['max_grad_norm'])} | "
            f"{spread(a, 'jacobian_full')} | {spread(a, 'jacobian_frozen')} |")
    info = summary(rows, settings)
    if info["baseline"]:
        lines += ["", "Plain backbone (no block): " + ", ".join(
            f"lr {b['lr']:g}: accuracy {_fmt(b['accuracy_mean'], '.3f')} "
            f"[{_fmt(b['accuracy_ci'][0], '.3f')}, {_fmt(b['accuracy_ci'][1], '.3f')}], "
            f"diverged {b['diverged']}/{b['n_seeds']}" for b in info["baseline"])]
    stable = info["stable_lr"]
    ks = sorted({s["k"] for s in stable})
    lines += ["", "Largest stable learning rate (no seed diverged at it or below; the edge "
              "lies below the next rung, in brackets, '≥' at the ladder's top; "
              f"divergence rate there < the {ci} Wilson bound after the slash; '–': the "
              "smallest rung diverged):", "",
              "| block | placement | " + " | ".join(f"k={k}" for k in ks) + " |",
              "|---|---|" + "---|" * len(ks)]

    def edge(s: Mapping[str, Any] | None) -> str:
        if s is None:
            return ""
        if s["stable_lr"] is None:
            return "–"
        up = f"[{s['next_lr']:g})" if s["next_lr"] is not None else "≥"
        return f"{s['stable_lr']:g} {up} / {s['divergence_upper']:.2f}"

    for block, placement in sorted({(s["block"], s["placement"]) for s in stable}):
        cells = {s["k"]: s for s in stable
                 if s["block"] == block and s["placement"] == placement}
        lines.append(f"| {block} | {placement} | "
                     + " | ".join(edge(cells.get(k)) for k in ks) + " |")
    lines += ["", "Divergences per block: " + ", ".join(
        f"{b} {sum(r['diverged'] for r in rows if r['block'] == b)}/"
        f"{sum(1 for r in rows if r['block'] == b)}"
        for b in sorted({r['block'] for r in rows}))]
    vs = info["verdicts"]
    sep = [v for v in vs if v["verdict"] != "not separated"]
    lines += ["", f"Verdicts ({ci} intervals separate; {len(vs) - len(sep)} of {len(vs)} "
              "claims not separated):", ""]
    lines += [f"- **{v['verdict']}**: {v['claim']}: [{_fmt(v['a_ci'][0])}, "
              f"{_fmt(v['a_ci'][1])}] vs [{_fmt(v['b_ci'][0])}, {_fmt(v['b_ci'][1])}]"
              for v in sep] or ["- none"]
    sources = sorted({r.get("jacobian_source", "") for r in rows if r["block"] != "none"})
    lines += ["", f"Jacobian fields used: {'; '.join(s for s in sources if s) or 'none'}."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What :func:`sweep` returns.

    Attributes
    ----------
    rows : list of dict
        One per run (see :func:`run_one`).
    stable_lr : list of dict
        :func:`stable_learning_rates`.
    out : pathlib.Path
    files : dict
        ``{"csv", "json", "stable_lr", "figure", "summary", "summary_json"}`` paths (figure
        ``None`` when off).
    skipped : int
        Runs found finished on disk.
    wall_s : float
    """

    rows: list[dict[str, Any]]
    stable_lr: list[dict[str, Any]]
    out: Path
    files: dict[str, Path | None]
    skipped: int = 0
    wall_s: float = 0.0


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

