"""Each block's forward + backward against its floor, measured interleaved in one run.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_floor.py [--device cuda] [--quick]``.

The *floor* of a block is the work it cannot avoid: its own 1×1 projections (``theta``,
``phi``, ``unary``, ``g``: ``C -> C_s``), one ``C_s -> C`` 1×1 convolution per free output
weight and its output normalization (BatchNorm), run as plain ``torch.nn`` modules on the same
shapes (B = 8, C = 64, C_s = 32, 64×64 by default), forward + backward. Block and floor are
timed alternately in the same process (medians of ``--repeat`` pairs), so the ratio
block / floor travels between machines where absolute times do not.

Printed per block: block and floor medians (ms), their ratio, the peak memory of one
forward + backward of each (CPU: peak RSS of a subprocess above its RSS before the call;
GPU: ``torch.cuda.max_memory_allocated``) and the largest output difference from the dense
reference (SNL: :class:`~graphfilters.blocks.reference.OfficialSNL`, the reference the tests
use; NL: :class:`~graphfilters.blocks.reference.NonLocalRef`; the other blocks: the same
block with ``materialize=True``, the dense ``N x N`` operator, where it fits in ~4 GB;
CGNL's channel x position graph does not at 64×64), on 2 samples.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

B, C, C_S = 8, 64, 32
BLOCKS = ("snl", "nl", "a2", "cgnl", "cayley", "arma")


def build(name: str):
    """(block, dense reference or None) with shared weights, BN scale 1, training mode."""
    from graphfilters.blocks import SNL, NonLocal, make_block
    from graphfilters.blocks.reference import NonLocalRef, OfficialSNL

    torch.manual_seed(0)
    if name == "snl":
        ref = OfficialSNL(C, C_S, relu=True)
        for m in ref.modules():           # BN scale 1, so that the filter shows in the output
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
        return SNL.from_reference(ref), ref
    if name == "nl":
        ref = NonLocalRef(C, C_S)
        nn.init.ones_(ref.bn.weight)
        return NonLocal.from_reference(ref), ref
    options = {"order": 2} if name == "arma" else {}
    block = make_block(name, C, inter_channels=C_S, **options)
    nn.init.ones_(block.norm.weight)
    ref = copy.deepcopy(block)
    ref.materialize = True
    return block, ref


class Floor(nn.Module):
    """The block's projections, output 1×1 convolutions and BN as plain modules."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.proj = nn.ModuleList(
            copy.deepcopy(m) for m in (block.theta, block.phi, getattr(block, "unary", None))
            if m is not None)
        self.g = copy.deepcopy(block.g)
        cs = block.g.out_channels
        n_out = len(block.w) if block.out_projection else 0
        self.out = nn.ModuleList(
            nn.Conv2d(cs, block.in_channels, 1, bias=False) for _ in range(n_out))
        self.norm = copy.deepcopy(block.norm)

    def forward(self, x):
        z = self.g(x)
        side = [p(x) for p in self.proj]          # used, as the block uses them
        pre = sum(o(z) for o in self.out) if len(self.out) else z
        y = x + self.norm(pre)
        return y, side


def _step(module, x):
    module.zero_grad(set_to_none=True)
    xi = x.detach().requires_grad_(True)
    y = module(xi)
    if isinstance(y, tuple):
        y, side = y
        loss = y.square().mean() + sum(s.mean() for s in side)
    else:
        loss = y.square().mean()
    loss.backward()
    return y.detach()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_worker(spec: dict) -> dict:
    """Peak memory of one forward + backward of the block or its floor (own process)."""
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    block, _ = build(spec["block"])
    module = (block if spec["which"] == "block" else Floor(block)).to(device)
    x = torch.randn(spec["batch"], C, spec["side"], spec["side"],
                    generator=torch.Generator().manual_seed(1)).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(module, x)
        torch.cuda.synchronize()
        return {"peak": torch.cuda.max_memory_allocated() - base}
    base = _rss()
    _step(module, x)
    return {"peak": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base, 0)}


def peak(spec: dict) -> float:
    if spec["device"] == "cuda":
        return peak_worker(spec)["peak"]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return float("nan")
    return json.loads(res.stdout.strip().splitlines()[-1])["peak"]


def timed(name: str, side: int, batch: int, repeat: int, device: str) -> dict:
    """Block and floor forward + backward, alternately; medians; max |diff| vs reference."""
    block, ref = build(name)
    block, floor = block.to(device), Floor(block).to(device)
    x = torch.randn(batch, C, side, side, generator=torch.Generator().manual_seed(1)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for m in (block, floor):                          # warm up
        _step(m, x)
    tb, tf = [], []
    for _ in range(repeat):
        for m, acc in ((block, tb), (floor, tf)):
            sync()
            t0 = time.perf_counter()
            _step(m, x)
            sync()
            acc.append(time.perf_counter() - t0)
    out = {"block": statistics.median(tb), "floor": statistics.median(tf),
           "ratio": statistics.median(b / f for b, f in zip(tb, tf))}
    nodes = side * side * (C_S if block.block_kernel.channel_nodes else 1)
    if ref is not None and 2 * nodes**2 * 4 * 4 < 4e9:     # dense reference fits in ~4 GB
        ref = ref.to(device)
        xs = x[:2]
        with torch.no_grad():
            out["diff"] = float((block(xs) - ref(xs)).abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="32x32, 3 pairs (smoke test)")
    parser.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=BLOCKS)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--batch", type=int, default=B)
    parser.add_argument("--repeat", type=int, default=7, help="timed (block, floor) pairs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(peak_worker(json.loads(args.worker))))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    side = 32 if args.quick else args.side
    repeat = 3 if args.quick else args.repeat
    where = torch.cuda.get_device_name() if args.device == "cuda" else (
        f"CPU, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    print(f"torch {torch.__version__}; {where}; B={args.batch}, C={C}, C_s={C_S}, "
          f"{side}x{side}; forward + backward, medians of {repeat} interleaved pairs")
    print(f"{'block':8}{'block ms':>10}{'floor ms':>10}{'ratio':>8}{'block MiB':>11}"
          f"{'floor MiB':>11}{'max|diff|':>11}")
    mems = {}
    if not args.no_memory:     # first: a child inherits the parent's peak RSS (ru_maxrss)
        for name in args.blocks:
            spec = {"block": name, "side": side, "batch": args.batch,
                    "threads": args.threads, "device": args.device}
            mems[name] = [f"{peak({**spec, 'which': w}) / 2**20:11.1f}"
                          for w in ("block", "floor")]
    for name in args.blocks:
        r = timed(name, side, args.batch, repeat, args.device)
        mem = mems.get(name, ["", ""])
        diff = f"{r['diff']:11.1e}" if "diff" in r else f"{'':>11}"
        print(f"{name:8}{1e3 * r['block']:10.1f}{1e3 * r['floor']:10.1f}{r['ratio']:7.2f}x"
              f"{mem[0]:>11}{mem[1]:>11}{diff}", flush=True)


if __name__ == "__main__":
    main()
