"""How the toolkit reads each family of :mod:`tests.thirdparty.zoo`: a table.

For every zoo entry: :func:`analysis.capture.capture` and :func:`analysis.analyze`
(``backbone=False``) on its inputs, then

- **found**: the reference attention modules that have a capture (the same path, or the
  nearest enclosing / enclosed module path that belongs to no other reference module);
- **max affinity error**: the largest ``max |A_captured - A_library|`` over those modules, with
  ``A_captured`` the ``(S, N, M)`` head-averaged affinity the block applied
  (``Capture.dense_affinity()`` where it exists, else the dense normalized operator);
- **status / reason / self-check**: of the analyze rows of those modules
  (``row.self_check_error`` where rows have it).

Each entry runs inside ``try``: a failure is a row of the table. ``python -m
tests.thirdparty.harness`` prints the markdown table (``--only NAME`` for some families).
"""

from __future__ import annotations

import argparse
import math
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from tests.thirdparty.zoo import FAMILIES, NOT_BUILDABLE, ZooEntry, build

__all__ = ["Result", "match_paths", "dense_affinity", "affinity_error", "evaluate", "table"]


@dataclass
class Result:
    """What the toolkit made of one zoo family (``error`` when something raised)."""

    name: str
    expected: list[str] = field(default_factory=list)
    matched: dict[str, str] = field(default_factory=dict)      # reference path -> captured path
    captured: list[str] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)     # reference path -> max abs err
    error_notes: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    self_checks: dict[str, float | None] = field(default_factory=dict)
    maps: dict[str, str] = field(default_factory=dict)          # reference path -> what map
    rebuilt: dict[str, float] = field(default_factory=dict)     # output-level self-check
    capture_reason: str = ""
    error: str = ""
    skipped: str = ""
    seconds: float = 0.0
    entry: ZooEntry | None = field(default=None, repr=False)
    captures: Any = field(default=None, repr=False)
    table: Any = field(default=None, repr=False)

    @property
    def missing(self) -> list[str]:
        return [p for p in self.expected if p not in self.matched]

    @property
    def max_error(self) -> float:
        if not self.expected:
            return math.nan
        if self.missing:
            return math.inf
        return max(self.errors.get(p, math.inf) for p in self.expected)


def match_paths(reference: list[str], captured: list[str]) -> dict[str, str]:
    """``{reference path: captured path}``: the same path, else the nearest related one
    (one enclosing or enclosed) that is related to no other reference path."""
    def related(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or b.startswith(a + ".") or b == "(root)"

    out = {}
    for ref in reference:
        if ref in captured:
            out[ref] = ref
            continue
        cands = [c for c in captured if related(ref, c)
                 and not any(related(o, c) for o in reference if o != ref)]
        if cands:
            out[ref] = min(cands, key=lambda c: abs(len(c) - len(ref)))
    return out


def dense_affinity(cap: Any) -> Tensor:
    """The ``(S, N, M)`` affinity a capture says the block applied, heads averaged:
    ``Capture.dense_affinity()`` when the toolkit has it, else the dense normalized operator
    (heads averaged when the capture kept them)."""
    fn = getattr(cap, "dense_affinity", None)
    if callable(fn):
        a = fn()
    else:
        a = cap.operator().dense()
    a = torch.as_tensor(a).detach().to("cpu", torch.float64)
    if a.dim() == 4:                                   # (S, H, N, M): kept heads
        a = a.mean(1)
    return a


def affinity_error(cap: Any, ref: Tensor) -> tuple[float, str]:
    """``(max |A_captured - A_library|, note)``; ``inf`` with the shapes when they differ."""
    try:
        got = dense_affinity(cap)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return math.inf, f"no dense affinity: {type(exc).__name__}: {exc}"
    ref = ref.detach().to("cpu", torch.float64)
    if got.shape != ref.shape:
        return math.inf, f"shape {tuple(got.shape)} vs library {tuple(ref.shape)}"
    return float((got - ref).abs().max()), ""


def evaluate(name: str, jacobian: bool = True) -> Result:
    """Build zoo entry ``name``, capture and analyse it, compare with the library's maps."""
    from analysis import analyze
    from analysis.capture import capture

    res = Result(name)
    t0 = time.perf_counter()
    try:
        entry = build(name)
    except pytest.skip.Exception as exc:
        res.skipped = str(exc)
        return res
    except Exception as exc:  # noqa: BLE001 - a row of the table
        res.error = f"build: {type(exc).__name__}: {exc}"
        return res
    res.entry, res.expected = entry, list(entry.reference)
    try:
        caps = capture(entry.model, entry.inputs, progress=False)
        res.captures, res.captured = caps, list(caps)
        res.capture_reason = getattr(caps, "reason", "")
        res.matched = match_paths(res.expected, res.captured)
        for ref, got in res.matched.items():
            res.errors[ref], note = affinity_error(caps[got], entry.reference[ref])
            if note:
                res.error_notes[ref] = note
            c = caps[got]
            res.maps[ref] = ("x + branch" if c.residual else "module") + (
                f", {c.source}" if c.source else "")
    except Exception as exc:  # noqa: BLE001
        res.error = f"capture: {type(exc).__name__}: {exc}"
    try:
        tab = analyze(entry.model, entry.inputs, progress=False, backbone=False,
                      jacobian=jacobian)
        res.table = tab
        if not len(tab) and not res.capture_reason:
            res.capture_reason = getattr(tab, "reason", "")
        rows = {r.path: r for r in tab}
        for ref in res.expected:
            path = res.matched.get(ref) or match_paths([ref], list(rows)).get(ref)
            row = rows.get(path) if path else None
            if row is None:
                continue
            res.statuses[ref], res.reasons[ref] = row.status, row.reason
            res.self_checks[ref] = getattr(row, "self_check_error", None)
            res.rebuilt[ref] = getattr(row, "reconstruction_error", math.nan)
    except Exception as exc:  # noqa: BLE001
        msg = f"analyze: {type(exc).__name__}: {exc}"
        res.error = f"{res.error}; {msg}" if res.error else msg
    res.seconds = time.perf_counter() - t0
    return res


def _short(text: str, n: int = 110) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


def _fmt_err(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return "—" if math.isinf(x) else f"{x:.1e}"


def table(results: list[Result]) -> str:
    """The markdown table: family, found, max affinity error, status, self-check (affinity),
    output rebuilt from the filter (``analyze(heads="mean")``: head-averaged; ``n/a`` where
    not checked), the map whose Jacobians are measured (``x + branch``: the residual branch of
    the layer, skip included; ``module``: the attention module alone) and how it was read,
    reason."""
    lines = ["| family | found | max affinity error | status | self-check | output rebuilt "
             "| map | reason |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.name} | skipped | | | | | | {_short(r.skipped)} |")
            continue
        found = f"{len(r.matched)}/{len(r.expected)}"
        statuses = sorted(set(r.statuses.values()))
        status = ",".join(statuses) if statuses else "no row"
        checks = [v for v in r.self_checks.values() if v is not None]
        check = f"{max(checks):.1e}" if checks else "—"
        why = [r.error] if r.error else []
        why += [f"{p}: {n}" for p, n in r.error_notes.items()][:1]
        why += sorted({v for v in r.reasons.values() if v})[:1]
        if not r.matched and r.capture_reason:
            why.append(r.capture_reason)
        if r.missing and r.matched:
            why.append(f"missing {', '.join(r.missing)}")
        maps = "; ".join(sorted(set(r.maps.values())))
        rebuilt = [v for v in r.rebuilt.values() if not math.isnan(v)]
        rb = f"{max(rebuilt):.1e}" if rebuilt else "n/a"
        lines.append(f"| {r.name} | {found} | {_fmt_err(r.max_error)} | {status} | {check} | "
                     f"{rb} | {maps} | {_short('; '.join(why))} |")
    for fam, why in NOT_BUILDABLE.items():
        lines.append(f"| {fam} | not built | | | | | | {why} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="zoo family names")
    parser.add_argument("--no-jacobian", action="store_true", help="analyze(jacobian=False)")
    parser.add_argument("--traceback", action="store_true", help="print errors' tracebacks")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    names = args.only or list(FAMILIES)
    results = []
    for name in names:
        try:
            results.append(evaluate(name, jacobian=not args.no_jacobian))
        except Exception:  # noqa: BLE001 - evaluate already isolates; belt and braces
            results.append(Result(name, error=traceback.format_exc(limit=1)))
    print(table(results))
    print(f"\n{sum(r.seconds for r in results):.0f} s in all; torch {torch.__version__}")


if __name__ == "__main__":
    main()
