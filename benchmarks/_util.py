"""Timing and peak-memory helpers shared by the benchmarks."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from typing import Any


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
