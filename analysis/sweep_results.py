r"""What the rows of a stacking sweep say: per-cell aggregates with intervals, the largest
stable learning rates, the verdicts on the paper's claims, the comparison of two sweeps, the
figure and the Markdown summary (:mod:`analysis.sweep` runs the sweep and writes them).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graphfilters import _validate as V

from .stats import CONFIDENCE, log_mean_ci, mean_ci, median_spread, proportion_ci, verdict

__all__ = [
    "SweepResult",
    "finite_values",
    "aggregate",
    "stable_learning_rates",
    "verdicts",
    "summary",
    "compare",
    "compare_markdown",
    "plot_sweep",
    "summary_markdown",
    "ROBUST_FAMILY",
    "POOL_K",
]

@dataclass
class SweepResult:
    """What :func:`analysis.sweep.sweep` returns.

    Attributes
    ----------
    rows : list of dict
        One per run (see :func:`analysis.sweep.run_one`).
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


def finite_values(values: Iterable[float]) -> list[float]:
    """The finite numbers of ``values``, as floats (NaN and Inf dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


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
    vals = finite_values(values)
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


def _band(cell: Mapping[str, Any], metric: str) -> tuple[float, float]:
    """The shaded band of ``metric`` in one cell: the 95% interval of the accuracy mean
    (Student t) and of the divergence rate (Wilson), the interquartile range of the Jacobian
    norms; NaN where the cell has none."""
    if metric == "jacobian_full":
        spread = cell.get("jacobian_full_spread") or {}
        return float(spread.get("q25", math.nan)), float(spread.get("q75", math.nan))
    lo, hi = cell.get({"accuracy": "accuracy_ci", "divergence_rate": "divergence_ci"}[metric],
                      (math.nan, math.nan))
    return max(float(lo), 0.0), min(float(hi), 1.0)      # (drawn within [0, 1]; NaN stays)


class _AxesArray(V.Constraint):
    """An array (or a nested sequence) of matplotlib Axes."""

    def is_satisfied_by(self, value: Any) -> bool:
        from matplotlib.axes import Axes

        if not isinstance(value, (np.ndarray, list, tuple)):
            return False
        try:
            arr = np.asarray(value, dtype=object)
        except (ValueError, TypeError):     # ragged nesting
            return False
        return arr.size > 0 and all(isinstance(a, Axes) for a in arr.flat)

    def __str__(self) -> str:
        return "an array of matplotlib Axes"

    def invalid_values(self) -> list[Any]:
        return ["x", 1.5, [], [1.5]]


def _example_sweep() -> dict[str, Any]:
    """The valid call of :func:`plot_sweep`'s declaration: one cell, drawn into the Axes of a
    new :class:`~matplotlib.figure.Figure` (no pyplot figure is opened)."""
    from matplotlib.figure import Figure

    rows = [{"block": "snl", "placement": "stage", "k": 1, "lr": 0.1, "diverged": False,
             "final_accuracy": 0.9, "max_grad_norm": 1.0, "jacobian_full": 2.0,
             "jacobian_frozen": 1.0}]
    return {"rows": rows, "ax": Figure().subplots(len(_METRICS), 1, squeeze=False)}


@V.validate_params({"ax": [_AxesArray(), None]}, valid=_example_sweep)
def plot_sweep(rows: Sequence[Mapping[str, Any]], ax: Any = None) -> tuple[Any, Any]:
    """Accuracy, divergence rate and Jacobian norm against ``k``: one column per learning rate.

    One line per (block, placement); ``k = 1`` is shared by both placements; a grey dotted
    line marks the plain backbone's accuracy (when the rows hold it). The Jacobian axis is
    logarithmic (diverged runs are left out of it). Shaded: the 95% interval of each cell
    (accuracy: t interval of the mean, drawn within [0, 1]; divergence rate: Wilson) and the
    interquartile range of the Jacobian norms, where the cell has enough seeds for one.

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
                band = sorted((c["k"], *_band(c, metric)) for c in agg if c["lr"] == lr
                              and c["block"] == block and c["placement"] == placement)
                band = [b for b in band if math.isfinite(b[1]) and math.isfinite(b[2])]
                if len(band) >= 1:
                    a.fill_between([b[0] for b in band], [b[1] for b in band],
                                   [b[2] for b in band], color=colors[block], alpha=0.15, lw=0)
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
