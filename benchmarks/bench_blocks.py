"""Benchmark of the blocks: each block against its floor, and the structured fast paths
against the dense original formulations.

Run: ``python benchmarks/bench_blocks.py [--device cuda] [--quick] [--dense]``.

**Floor table (default).** Forward + backward (loss ``mean(y^2)``, training mode, BN scale 1)
at B = 8, C = 64, C_s = 32, a 64×64 map (32×32 with ``--quick``), one CPU thread, of SNL,
gSNL, NL (fused ``scaled_dot_product_attention``), A² (double attention), CGNL, Cayley
(order 1) and ARMA (order 2) on the SNL affinity, each against **its floor**: the block's own
1×1 projections (``theta``, ``phi``, ``unary``, ``g``), its output 1×1 convolutions (one per
free filter weight ``W_k``, grouped as the block's) and its BatchNorm, run as plain
``torch.nn`` modules of the same shapes (the output convolutions on ``g(x)``, every projection
in the loss): the work a block cannot avoid. Block and floor are timed alternately in one
process (medians over the repeats), so the ratio block / floor holds on a loaded machine
where absolute times do not. Columns: block and floor ms, the ratio, the block's peak
memory (first call; RSS of its own subprocess on the CPU, ``max_memory_allocated`` on the
GPU), and the largest difference of the block's output from its original-form reference
(:mod:`graphfilters.blocks.reference`, or the same block with ``materialize=True`` for the
rational ones) at a 32×32 map, B = 2, float32, same weights. The ``prev`` columns are the
same measurements, in the same run, of the previous round's code (``--previous REV``,
default ``3cdef92``, extracted with ``git archive`` and imported in a subprocess;
``--previous none`` skips them), so a regression shows.

**Dense table (``--dense``).** Time and peak memory of

- SNL through :class:`graphfilters.blocks.SNL` (low-rank: no ``N x N`` tensor) against the
  official code's dense formulation (:class:`graphfilters.blocks.reference.OfficialSNL`:
  ``att = ReLU(t)ᵀReLU(p)``, symmetrize, ``D^{-1/2}`` on both sides, ``att·g``);
- NL (embedded Gaussian) through :class:`graphfilters.blocks.NonLocal` (fused
  ``scaled_dot_product_attention``) against the dense softmax of
  :class:`graphfilters.blocks.reference.NonLocalRef`;
- the rational blocks on the SNL affinity (``--blocks cayley arma``): Cayley (order 1) and
  ARMA (order 2) through the exact Woodbury solve (:class:`graphfilters.filters.GraphOperator`,
  :math:`O(N C_s^2)`, no ``N x N`` tensor) against the same block with ``materialize=True``
  (the ``N x N`` affinity and a dense ``torch.linalg.solve``);

at 32×32, 64×64 and 128×128 maps with B = 8, C = 64, C_s = 32, with the ratios dense / fast
and the largest output difference (same weights, training mode, BN scale 1).

Peak memory: on the GPU ``torch.cuda.max_memory_allocated`` (minus what was allocated before
the call); on the CPU every case runs in its own subprocess that reports its peak resident set
size (``getrusage(RUSAGE_SELF).ru_maxrss``) minus its resident size just before the call.
Dense cases that would need more than ``--dense-limit-gb`` (8 GB) are skipped, with the
estimate printed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import PREVIOUS_ROUND, ROOT, previous_tree  # noqa: E402

#: Blocks of the floor table.
FLOOR_BLOCKS = ("snl", "gsnl", "nl", "a2", "cgnl", "cayley", "arma")

B, C, C_S = 8, 64, 32
#: Rational blocks benchmarked on the SNL affinity: name -> order.
RATIONAL = {"cayley": 1, "arma": 2}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _build(block: str, path: str, device: str):
    """The (dense reference, unified) pair with shared weights; returns the one of ``path``
    and, for the dense path, also the unified one (to check equal outputs)."""
    from graphfilters.blocks import SNL, NonLocal, make_block
    from graphfilters.blocks.reference import NonLocalRef, OfficialSNL

    torch.manual_seed(0)
    if block in RATIONAL:
        fast = make_block(block, C, inter_channels=C_S, order=RATIONAL[block])
        torch.nn.init.ones_(fast.norm.weight)
        ref = copy.deepcopy(fast)
        ref.materialize = True              # dense N x N operator, dense solve
        return ref.to(device), fast.to(device)
    if block == "snl":
        ref = OfficialSNL(C, C_S, relu=True)
        fast = SNL.from_reference(ref)
    else:
        ref = NonLocalRef(C, C_S)
        fast = NonLocal.from_reference(ref)
    for m in (ref, fast):
        norm = m.bn if m is ref else m.norm
        torch.nn.init.ones_(norm.weight)     # so that the filter shows in the output
    return ref.to(device), fast.to(device)


def _step(module, x):
    module.zero_grad(set_to_none=True)
    xi = x.detach().requires_grad_(True)
    y = module(xi)
    y.square().mean().backward()
    return y.detach()


def worker(spec: dict) -> dict:
    """One case, in its own process: time and peak memory of forward + backward."""
    device, side = spec["device"], spec["side"]
    torch.set_num_threads(spec["threads"])
    ref, fast = _build(spec["block"], spec["path"], device)
    module = ref if spec["path"] == "dense" else fast
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(spec.get("batch", B), C, side, side, generator=gen).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # peak memory of the first call
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        y = _step(module, x)
        sync()
        first = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_bytes()
        t0 = time.perf_counter()
        y = _step(module, x)
        first = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []                       # the first call warms up; slow cases are timed once
    for _ in range(spec["repeat"] if first < 5 else 1):
        t0 = time.perf_counter()
        _step(module, x)
        sync()
        times.append(time.perf_counter() - t0)
    out = {"time": min(times), "peak": max(peak, 0)}
    if spec["path"] == "dense":     # equal outputs: the timed structured path, same input
        y_fast = fast(x).detach()   # (autograd on, as when timed: fused attention for NL)
        out["diff"] = float((y_fast - y).abs().max())
        out["scale"] = float(y.abs().max())
    return out


# ---------------------------------------------------------------------------------------------
# floor table: each block against the 1x1 convolutions and the norm it cannot avoid


def _pair(block: str):
    """``(reference, block)`` with shared weights (BN scale 1); the reference is the
    original formulation (or the block with ``materialize=True``)."""
    from graphfilters.blocks import make_block

    if block in RATIONAL:
        fast = make_block(block, C, inter_channels=C_S, order=RATIONAL[block])
        torch.nn.init.ones_(fast.norm.weight)
        ref = copy.deepcopy(fast)
        ref.materialize = True
        return ref, fast
    from graphfilters.blocks import CGNL, SNL, DoubleAttention, NonLocal, gSNL
    from graphfilters.blocks import reference as R

    ref, cls = {
        "snl": (lambda: R.OfficialSNL(C, C_S, relu=True), SNL),
        "gsnl": (lambda: R.GSNLRef(C, C_S), gSNL),
        "nl": (lambda: R.NonLocalRef(C, C_S), NonLocal),
        "a2": (lambda: R.DoubleAttentionRef(C, C_S, C_S), DoubleAttention),
        "cgnl": (lambda: R.CGNLRef(C, C_S), CGNL),
    }[block]
    ref = ref()
    fast = cls.from_reference(ref)
    torch.nn.init.ones_(ref.bn.weight)
    torch.nn.init.ones_(fast.norm.weight)
    return ref, fast


class Floor(nn.Module):
    """The block's 1x1 projections, output 1x1 convolutions and norm as plain modules."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        convs = [getattr(block, n, None) for n in ("theta", "phi", "unary", "g")]
        self.proj = nn.ModuleList(
            nn.Conv2d(m.in_channels, m.out_channels, 1, bias=m.bias is not None)
            for m in convs if isinstance(m, nn.Module))
        cs = block.g.out_channels
        self.out = nn.ModuleList(
            nn.Conv2d(cs, block.in_channels, 1, bias=False, groups=block.groups)
            for _ in block.w) if getattr(block, "out_projection", True) else nn.ModuleList()
        self.norm = copy.deepcopy(block.norm) if block.norm is not None else nn.Identity()

    def forward(self, x):
        zs = [p(x) for p in self.proj]
        g = zs[-1]
        pre = g if not len(self.out) else sum(w(g) for w in self.out)
        aux = sum(z.mean() for z in zs[:-1]) if len(zs) > 1 else 0.0
        return self.norm(pre), aux


def _loss(module, x):
    module.zero_grad(set_to_none=True)
    xi = x.detach().requires_grad_(True)
    out = module(xi)
    y, aux = out if isinstance(out, tuple) else (out, 0.0)
    (y.square().mean() + aux).backward()


def _hwm_reset() -> int:
    """Reset the peak resident size (``/proc/self/clear_refs``); the resident size now."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss_bytes()


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


#: Map side of the accuracy check where the dense reference is larger than N x N (CGNL's
#: graph has C_s * N nodes).
DIFF_SIDE = {"cgnl": 8}


def floor_case(block: str, spec: dict) -> dict:
    """One block: peak memory of its first call, then block and floor timed alternately;
    the output difference from the reference at a small map."""
    device, side = spec["device"], spec["side"]
    torch.manual_seed(0)
    ref, fast = _pair(block)
    fast, floor = fast.to(device), Floor(fast).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(spec["batch"], C, side, side, generator=gen).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _loss(fast, x)
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _hwm_reset()
        t0 = time.perf_counter()
        _loss(fast, x)
        peak = _hwm_bytes() - base
    first = time.perf_counter() - t0 if device != "cuda" else 0.0
    _loss(floor, x)
    repeat = spec["repeat"] if first < 0.6 else min(spec["repeat"], 3)   # slow cases: 3

    def timed(m):
        sync()
        t0 = time.perf_counter()
        _loss(m, x)
        sync()
        return time.perf_counter() - t0

    tb, tf = [], []
    for i in range(repeat):
        if i % 2:                       # alternate the order: neither always runs first
            tf.append(timed(floor))
            tb.append(timed(fast))
        else:
            tb.append(timed(fast))
            tf.append(timed(floor))
    ratio = statistics.median(b / f for b, f in zip(tb, tf))
    # accuracy: the same weights, a small map (the dense reference is O(N^2)), float32
    ds = min(spec["diff_side"], DIFF_SIDE.get(block, spec["diff_side"]))
    xs = torch.randn(2, C, ds, ds, generator=gen).to(device)
    ref = ref.to(device)
    with torch.no_grad():
        diff = float((fast(xs) - ref(xs)).abs().max())
    return {"time": statistics.median(tb), "floor": statistics.median(tf), "ratio": ratio,
            "peak": max(peak, 0), "diff": diff, "diff_side": ds}


def floor_worker(spec: dict) -> dict:
    """Every block of ``spec``, in this process (one import of one version of the code)."""
    import graphfilters

    torch.set_num_threads(spec["threads"])
    out = {"where": os.path.dirname(graphfilters.__file__)}
    for block in spec["blocks"]:
        try:
            out[block] = floor_case(block, spec)
        except Exception as exc:  # noqa: BLE001 - the previous round may lack a block
            out[block] = {"error": f"{type(exc).__name__}: {exc}"[:60]}
    return out


def _run_floor_cases(spec: dict, path: str) -> dict:
    # fixed mmap threshold: large buffers are returned to the system when freed, so the peak
    # resident size of one block is not hidden by the heap kept from the one before
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(spec["threads"]),
           "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    cmd = [sys.executable, os.path.abspath(__file__), "--floor-worker", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=path)
    if res.returncode != 0:
        err = (res.stderr.strip().splitlines() or ["failed"])[-1][:60]
        return {b: {"error": err} for b in spec["blocks"]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def floor_table(args) -> None:
    side = args.sides[0] if args.sides else (32 if args.quick else 64)
    repeat = 3 if args.quick else 7
    prev = previous_tree(args.previous)
    threads = args.threads[0]
    where = torch.cuda.get_device_name() if args.device == "cuda" else (
        f"CPU ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}), {threads} "
        "thread(s)")
    print(f"torch {torch.__version__}; {where}; B={args.batch}, C={C}, C_s={C_S}, "
          f"{side}x{side}; forward + backward, medians of {repeat} alternated calls; "
          f"max|diff| vs reference at {args.diff_side}x{args.diff_side}, B=2")
    print(f"previous round: {args.previous if prev else 'skipped'}")
    print(f"{'block':7}{'ms':>8}{'floor ms':>10}{'ratio':>8}{'peak MiB':>10}{'max|diff|':>11}"
          f"{'prev ms':>10}{'prev ratio':>12}{'prev MiB':>10}{'prev diff':>11}")
    blocks = list(args.blocks or FLOOR_BLOCKS)
    spec = {"blocks": blocks, "side": side, "device": args.device, "threads": threads,
            "batch": args.batch, "repeat": repeat, "diff_side": args.diff_side}
    cur = _run_floor_cases(spec, ROOT)
    try:
        old = _run_floor_cases(spec, prev) if prev else {}
    finally:
        if prev:
            shutil.rmtree(prev, ignore_errors=True)
    for block in blocks:
        c, o = cur.get(block, {"error": "missing"}), old.get(block, {"error": "skipped"})
        line = f"{block:7}"
        if "error" in c:
            line += f"  failed: {c['error']}"
        else:
            line += (f"{1e3 * c['time']:8.1f}{1e3 * c['floor']:10.1f}{c['ratio']:7.2f}x"
                     f"{_fmt_mem(c['peak']):>10}{c['diff']:11.1e}")
        if "error" in o:
            line += f"{'n/a':>10}   ({o['error']})"
        else:
            line += (f"{1e3 * o['time']:10.1f}{o['ratio']:11.2f}x{_fmt_mem(o['peak']):>10}"
                     f"{o['diff']:11.1e}")
        if c.get("diff_side", args.diff_side) != args.diff_side:
            line += f"   (diff at {c['diff_side']}x{c['diff_side']})"
        print(line, flush=True)
    print(f"current: {cur.get('where', '?')}; previous: {old.get('where', 'skipped')}")
    if args.device == "cpu":
        print("peak MiB: rise of the resident size over the block's first call (VmHWM, its "
              "own process; blocks run one after another)")


def _run_case(spec: dict, in_process: bool) -> dict:
    if in_process:
        return worker(spec)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _dense_estimate_gb(block: str, side: int, batch: int = B) -> float:
    """Memory of the dense forward + backward: about 4 live ``B x N x N`` float32 tensors
    (about 12 for the rational blocks: the solves' LU factors, complex for Cayley)."""
    n = side * side
    return (12 if block in RATIONAL else 4) * batch * n * n * 4 / 1e9


def _fmt_mem(b: float) -> str:
    return f"{b / 2**20:9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="small maps (smoke test)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="CPU thread counts to run, e.g. --threads 1 4 (default 1: on a "
                        "shared, loaded machine multi-threaded timings of small ops measure "
                        "OpenMP waiting more than the block)")
    parser.add_argument("--dense-limit-gb", type=float, default=8.0)
    parser.add_argument("--sides", type=int, nargs="+", help="map sides (default 32 64 128)")
    parser.add_argument("--blocks", nargs="+", choices=FLOOR_BLOCKS,
                        help="blocks (floor table: all; --dense: snl nl)")
    parser.add_argument("--batch", type=int, default=B, help="batch size B")
    parser.add_argument("--dense", action="store_true",
                        help="the fast paths against the dense formulations instead")
    parser.add_argument("--previous", default=PREVIOUS_ROUND,
                        help="git revision of the previous round's code (floor table), or none")
    parser.add_argument("--diff-side", type=int, default=32,
                        help="map side of the accuracy check against the reference")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--floor-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.floor_worker:
        print(json.dumps(floor_worker(json.loads(args.floor_worker))))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    if not args.dense:
        floor_table(args)
        return
    args.blocks = [b for b in (args.blocks or ["snl", "nl"]) if b in ("snl", "nl", *RATIONAL)]
    sides = args.sides or ((16, 32) if args.quick else (32, 64, 128))
    threads = args.threads
    if args.device == "cuda":
        threads = threads[-1:]
    where = torch.cuda.get_device_name() if args.device == "cuda" else (
        f"CPU ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}), "
        "peak RSS per subprocess")
    print(f"torch {torch.__version__}; {where}; B={args.batch}, C={C}, C_s={C_S}; "
          "forward + backward")
    header = (f"{'block':6}{'map':>9}{'thr':>4}{'fast ms':>11}{'dense ms':>11}{'speed-up':>10}"
              f"{'fast MiB':>10}{'dense MiB':>10}{'mem ratio':>10}{'max|diff|':>11}")
    print(header)
    cases = [(b, s, t) for b in args.blocks for s in sides for t in threads]
    for block, side, n_threads in cases:
        base = {"block": block, "side": side, "device": args.device,
                "threads": n_threads, "batch": args.batch}
        repeat = 1 if args.quick else 3         # timed calls after a warm-up call
        fast = _run_case({**base, "path": "fast", "repeat": repeat}, args.device == "cuda")
        est = _dense_estimate_gb(block, side, args.batch)
        if est > args.dense_limit_gb:
            dense = {"skipped": est}
        else:
            dense = _run_case({**base, "path": "dense", "repeat": max(1, repeat - 1)},
                              args.device == "cuda")
        name = f"{side}x{side}"
        if "error" in fast:
            print(f"{block:6}{name:>9}  fast path failed: {fast['error']}")
            continue
        line = f"{block:6}{name:>9}{n_threads:4d}{1e3 * fast['time']:11.1f}"
        if "skipped" in dense:
            line += (f"{'skipped':>11}{'':>10}{_fmt_mem(fast['peak']):>10}{'':>10}{'':>10}"
                     f"   dense needs ~{dense['skipped']:.0f} GB > {args.dense_limit_gb:g} "
                     "GB: skipped")
        elif "error" in dense:
            line += f"  dense failed: {dense['error']}"
        else:
            line += (f"{1e3 * dense['time']:11.1f}{dense['time'] / fast['time']:9.1f}x"
                     f"{_fmt_mem(fast['peak']):>10}{_fmt_mem(dense['peak']):>10}"
                     f"{dense['peak'] / max(fast['peak'], 1):9.1f}x"
                     f"{dense['diff']:11.1e}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
