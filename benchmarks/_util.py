"""Timing and peak-memory helpers shared by the benchmarks."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the previous round's code, timed beside the current one so that a regression shows
PREVIOUS_ROUND = "3cdef92"


def previous_tree(rev: str, packages: tuple[str, ...] = ("graphfilters",)) -> str | None:
    """The previous round's ``packages`` in a temporary folder (``git archive`` of ``rev``),
    or ``None`` (``rev`` is ``"none"`` or not in this checkout's history)."""
    if rev.lower() == "none":
        return None
    out = tempfile.mkdtemp(prefix="gf_prev_")
    try:
        archive = subprocess.run(["git", "-C", ROOT, "archive", rev, *packages],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"previous round {rev!r} not available ({exc}); prev columns skipped")
        return None
    return out


def measure(fn: Callable[[], Any], repeat: int = 3) -> tuple[Any, float, float]:
    """Run ``fn`` ``repeat`` times; return (result, best seconds, peak MiB of the first run).

    Peak memory is what numpy allocates during the call (numpy reports its buffers to
    ``tracemalloc``); LAPACK's internal workspaces are not included.
    """
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    result = fn()
    best = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    for _ in range(repeat - 1):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return result, best, peak


def row(*cells: object, widths: tuple[int, ...] = (28, 10, 12, 12, 12, 12)) -> str:
    """One fixed-width table row."""
    return "".join(f"{str(c):>{w}}" for c, w in zip(cells, widths))
