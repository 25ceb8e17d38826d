"""Benchmark of the blocks: structured fast paths against the dense original formulations.

Run: ``python benchmarks/bench_blocks.py [--device cuda] [--quick]``. Prints, in one run,
forward + backward time and peak memory of

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
import json
import os
import resource
import subprocess
import sys
import time

import torch

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
    parser.add_argument("--blocks", nargs="+", default=["snl", "nl"],
                        choices=("snl", "nl", *RATIONAL))
    parser.add_argument("--batch", type=int, default=B, help="batch size B")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
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
