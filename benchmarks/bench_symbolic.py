"""Benchmark of the symbolic layer: time of all derivations together (target < 10 s).

Run: ``python benchmarks/bench_symbolic.py [--orders 1 2 4 8]``. Prints the time of every
table derivation (``nl`` once per mode) with its proof, their total, the generic filter and a
derivation at higher orders, ``identify`` on every derived filter, the frequency responses
and the four facts.
"""

from __future__ import annotations

import argparse
import time

from graphfilters.specs import BLOCK_NAMES, get_spec
from graphfilters.symbolic import all_facts, derive, generic_filter, identify, response
from graphfilters.symbolic.responses import _derivation

TARGET_S = 10.0


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="orders of the generic filter / SNL derivation to time")
    args = parser.parse_args()

    print("symbolic derivations (each: derive + proof)")
    total = 0.0
    derivations = []
    for name in BLOCK_NAMES:
        for mode in get_spec(name).modes or (None,):
            d, dt = _timed(lambda name=name, mode=mode: derive(name, mode=mode))
            total += dt
            derivations.append(d)
            label = name if mode is None else f"{name}[{mode}]"
            print(f"  {label:<22} {dt * 1e3:8.1f} ms  verified={d.verified}  F = {d.result}")
    status = "OK" if total < TARGET_S else "SLOWER THAN TARGET"
    print(f"all {len(derivations)} derivations together: {total:.3f} s "
          f"(target < {TARGET_S:.0f} s: {status})")

    print("\nhigher orders")
    for order in args.orders:
        _, t_generic = _timed(lambda order=order: generic_filter(order, laplacian="sym"))
        d, t_snl = _timed(lambda order=order: derive("snl", order=order))
        print(f"  order {order:>2}: generic filter {t_generic * 1e3:8.1f} ms, "
              f"derive('snl', order={order}) {t_snl * 1e3:8.1f} ms, verified={d.verified}")

    _, t_identify = _timed(lambda: [identify(d.derived) for d in derivations])
    print(f"\nidentify on every derived filter: {t_identify * 1e3:.1f} ms")
    _derivation.cache_clear()
    _, t_resp = _timed(lambda: [response(name) for name in BLOCK_NAMES])
    print(f"frequency responses of every block: {t_resp * 1e3:.1f} ms")
    facts, t_facts = _timed(all_facts)
    print(f"facts ({', '.join(f.name for f in facts)}): {t_facts:.3f} s, "
          f"verified={all(f.verified for f in facts)}")


if __name__ == "__main__":
    main()
