"""Benchmark of the analysis layer: spectra of large affinities without N x N matrices.

Run: ``python benchmarks/bench_analysis.py [--quick] [--threads T]``.

Cases (each in its own subprocess, so the peak resident memory — ``ru_maxrss`` — is that
case's alone; the baseline after importing torch is printed too):

- ``snl``: the exact spectrum and all metrics of an SNL affinity
  :math:`D^{-1/2}\\operatorname{sym}(\\operatorname{ReLU}(\\Theta)\\operatorname{ReLU}(\\Phi)^T)
  D^{-1/2}` (``C_s = 32``) at N = 65536 by the structured (low-rank) path;
- ``nl``: the extreme eigenvalues of an NL softmax affinity (``d = 32``) at N = 16384,
  matrix-free (``auto`` picks block Krylov), and its metrics (Frobenius quantities by tiles);
  peak memory must stay under 2 GB;
- the dense references (``eigh`` for SNL, ``eig`` for NL) and the structured/matrix-free
  paths at N = 4096, with the ratio of times and memory and the largest eigenvalue error.

- ``stab_schur`` / ``stab_exact``: the stability of an NL block (softmax, non-symmetric,
  N = 1024 nodes, C = 64, C_s = 32, random weights, n_max = 10): the previous path (dense
  eigenvalues, then the per-frequency Schur diagonal-block norms, a *lower bound*) against
  the exact frozen-affinity norms ||M^n||_2 (matrix-free Krylov power
  iteration, tol 1e-6); time ratio, peak memory, and how far below the exact growth the
  bound is. ``--stability-only`` runs just these two.

``--quick`` divides the sizes by 4 (by 2 for the dense references).

``--spectra [--n N]`` (:func:`certified_spectra`): the top-4 eigenvalues of the NL softmax
affinity by each method with time, certified residual, status and the error against dense
``eig`` (N = 4096 by default).

``--vit`` runs the transformer case instead (:func:`run_vit_case`): ``analyze()`` with its
defaults on a ViT-B/16-geometry encoder (``nn.TransformerEncoder``, pre-LN, 12 layers,
d = 768, 12 heads, N = 197 tokens, 4 inputs), its time as a ratio to one forward+backward
of the same encoder on the same inputs (measured in the same run), peak memory and the seconds
per measure summed over the layers, and on one layer the frequency responses by the structured
path (pencil gains, per-head ``2d x 2d`` layer maps) against the per-eigenvalue dense path
(one ``C_s x C_out`` SVD per captured eigenvalue, one ``C x C`` SVD per head and frequency),
with their largest difference. ``--vit-layers`` and ``--vit-skip`` (registered measures to
leave out, e.g. ``stability``, to time the rest) adjust it. The previous round's code
(``--previous REV``, default the revision in ``_util.PREVIOUS_ROUND``, extracted with
``git archive``; ``--previous none`` skips it) runs the same ``analyze()`` case in the same
run, so that a regression shows as a ratio beside the current one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import PREVIOUS_ROUND, ROOT, previous_tree  # noqa: E402


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: str, n: int, threads: int) -> dict:
    """Run one case in this process and return its measurements."""
    import numpy as np
    import torch

    from analysis.spectra import affinity_metrics, spectrum
    from graphfilters.graph import DenseAffinity, LowRankAffinity, SoftmaxAffinity

    torch.set_num_threads(threads)
    if case.startswith("stab_"):
        return _stability_case(case, n)
    base = _rss_mib()
    g = torch.Generator().manual_seed(0)
    d = 32
    out: dict = {"case": case, "n": n, "baseline_mib": base}
    if case.startswith("snl"):
        P = torch.relu(torch.randn(n, d, generator=g, dtype=torch.float64))
        Q = torch.relu(torch.randn(n, d, generator=g, dtype=torch.float64))
        aff = LowRankAffinity(P, Q, symmetric=True)
        if case == "snl_dense":
            aff = DenseAffinity(aff.dense())
        t0 = time.perf_counter()
        spec = spectrum(aff, "normalized", "sym", method="eigh" if case == "snl_dense"
                        else "auto", progress=False)
        out["spectrum_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = affinity_metrics(aff, "sym", spectrum_result=spec, progress=False)
        out["metrics_s"] = time.perf_counter() - t0
        ev = np.sort(spec.eigenvalues[0].real)
        out["top"] = ev[-4:].tolist()
    else:
        q = torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.25
        k = torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.25
        aff = SoftmaxAffinity(q, k)
        method = "eig" if case == "nl_dense" else "auto"
        if case == "nl_dense":
            aff = DenseAffinity(aff.dense())
        t0 = time.perf_counter()
        # dense_limit=512: at the reference size auto takes the matrix-free path, not eig
        spec = spectrum(aff, "normalized", "rw", method=method, dense_limit=512,
                        progress=False)
        out["spectrum_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = affinity_metrics(aff, "rw", spectrum_result=spec, estimate_effective_rank=False,
                             progress=False)
        out["metrics_s"] = time.perf_counter() - t0
        mods = np.sort(np.abs(spec.eigenvalues[0]))
        out["top"] = mods[-4:].tolist()
    out["method"] = spec.method
    out["status"], out["max_residual"] = spec.status, spec.max_residual()
    out["metrics"] = {k: round(v, 6) for k, v in m.summary().items()}
    out["peak_mib"] = _rss_mib()
    return out


def _stability_case(case: str, n: int, c: int = 64, n_max: int = 10) -> dict:
    """Stability of a random NL block with ``n`` nodes: Schur bound or exact norms."""
    import numpy as np
    import torch

    from analysis.capture import capture
    from analysis.robustness import frozen_norms, per_frequency_stability
    from analysis.spectra import spectrum
    from graphfilters.blocks import make_block

    side = int(round(n ** 0.5))
    block = make_block("nl", c)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            fan = max(1, p[0].numel()) if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * 0.6 / fan ** 0.5)
    x = torch.randn(1, c, side, side, generator=g)
    cap = capture(block.eval(), x, progress=False)["(root)"]
    base = _rss_mib()
    out: dict = {"case": case, "n": side * side, "baseline_mib": base, "method": case[5:]}
    t0 = time.perf_counter()
    if case == "stab_schur":
        spec = spectrum(cap, "normalized", method="auto", progress=False)
        lam = 1 - np.concatenate([np.asarray(e) for e in spec.eigenvalues])
        _, _, growth = per_frequency_stability(cap, lam, n_max)
        out["spectrum_s"] = time.perf_counter() - t0
    else:
        fz = frozen_norms(cap, n_max, tol=1e-6)
        growth = fz.growth
        out["spectrum_s"] = time.perf_counter() - t0
        out["products"] = int(fz.iterations.sum())
        out["residual"] = float(fz.residual.max())
    out["metrics_s"] = 0.0
    out["growth"] = [float(v) for v in growth]
    out["peak_mib"] = _rss_mib()
    return out


def stability_comparison(n: int, threads: int) -> None:
    """Print the exact-vs-Schur comparison (``stab_*`` cases, each in its own process)."""
    a, b = _spawn("stab_exact", n, threads), _spawn("stab_schur", n, threads)
    print(f"\nstability of an NL block, N = {a['n']}, C = 64, n = 1..10 (times in s, "
          "memory = peak RSS above the baseline, MiB)")
    for r, what in ((b, "previous: eig + Schur diagonal blocks (lower bound)"),
                    (a, f"exact: matrix-free ({a['products']} products, residual "
                        f"<= {a['residual']:.1e})")):
        print(f"  {what}: {r['spectrum_s']:.2f} s, "
              f"{r['peak_mib'] - r['baseline_mib']:.0f} MiB")
    ratio = a["spectrum_s"] / max(b["spectrum_s"], 1e-9)
    gap = max(x / y for x, y in zip(a["growth"], b["growth"]))
    print(f"  time exact / previous: x{ratio:.2f}; exact growth@10 {a['growth'][-1]:.4g}, "
          f"lower bound {b['growth'][-1]:.4g} (largest exact / bound over n: {gap:.2f})")


def run_vit_case(layers: int, threads: int, skip: tuple[str, ...] = (),
                 analyze_only: bool = False) -> dict:
    """ViT-B/16 geometry: ``analyze()`` with defaults, and structured vs dense responses."""
    import numpy as np
    import torch
    from torch import nn

    from analysis import analyze
    from analysis.capture import capture
    from analysis.response import (
        frequency_response,
        head_factors,
        layer_gains,
        pencil_gains,
        response_gains,
    )
    from analysis.spectra import spectrum

    torch.set_num_threads(threads)
    base = _rss_mib()
    torch.manual_seed(0)
    d, heads, n_tok, n_in = 768, 12, 197, 4
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(d, heads, 4 * d, batch_first=True, norm_first=True,
                                   activation="gelu"), layers, enable_nested_tensor=False).eval()
    x = torch.randn(n_in, n_tok, d)
    measures = None
    if skip:                        # the registry of measures (not in older trees)
        from analysis.measures import registered

        unknown = set(skip) - {m.name for m in registered()}
        if unknown:
            raise SystemExit(f"--vit-skip: unknown measure(s) {sorted(unknown)}")
        measures = [m.name for m in registered() if m.name not in skip]
    # the reference, in the same run: one forward+backward of the encoder on the same inputs
    xr = x.clone().requires_grad_(True)
    fb = []
    for _ in range(3):
        t0 = time.perf_counter()
        enc(xr).sum().backward()
        fb.append(time.perf_counter() - t0)
    enc.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    table = analyze(enc, x, progress=False, **({"measures": measures} if skip else {}))
    total = time.perf_counter() - t0
    per: dict = {}
    for row in table:
        for k, v in getattr(row, "timings", {}).items():
            per[k] = per.get(k, 0.0) + v
    out = {"case": "vit", "layers": layers, "analyze_s": total, "forward_backward_s": min(fb),
           "baseline_mib": base,
           "peak_mib": _rss_mib(), "per_measure_s": per,
           "status": sorted({r.status for r in table}),
           "classes": sorted({r.response_class for r in table})}
    if analyze_only:
        return out
    # one layer: structured vs per-eigenvalue dense responses
    cap = capture(enc, x, blocks=["layers.0.self_attn"], progress=False)["layers.0.self_attn"]
    spec = spectrum(cap.affinity, "normalized", "rw", progress=False)
    lam = 1 - np.asarray(spec.eigenvalues[0])           # sample 0: 197 eigenvalues
    grid = np.linspace(0, 2, 11)
    t0 = time.perf_counter()
    fast_f = pencil_gains(cap.weights, lam)[:, 0]
    fast_l = layer_gains(cap, grid)
    out["structured_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # as block_response did before: one dense H(lambda) and its SVD per eigenvalue
    slow_f = response_gains(frequency_response(cap.weights, lam))[:, 0]
    slow_l = np.array([[np.linalg.norm(np.eye(d) + (1 - g) * (u @ v.T), 2) for g in grid]
                       for u, v in head_factors(cap)])
    out["dense_s"] = time.perf_counter() - t0
    out["n_eigenvalues"] = int(lam.size)
    out["max_diff"] = float(max(np.abs(fast_f - slow_f).max(), np.abs(fast_l - slow_l).max()))
    return out


def _vit_run(layers: int, threads: int, skip: tuple[str, ...], path: str,
             analyze_only: bool = False) -> dict:
    """The ViT case in a subprocess importing ``graphfilters`` and ``analysis`` from
    ``path``; ``{"error": ...}`` where it fails (e.g. an older tree without an API used)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=path)
    cmd = [sys.executable, os.path.abspath(__file__), "--case", "vit", "--n", str(layers),
           "--threads", str(threads)] + (["--vit-skip", ",".join(skip)] if skip else []) + (
           ["--vit-analyze-only"] if analyze_only else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _vit_main(layers: int, threads: int, skip: tuple[str, ...], previous: str) -> None:
    r = _vit_run(layers, threads, skip, ROOT)
    if "error" in r:
        raise RuntimeError(f"vit case failed: {r['error']}")
    prev = previous_tree(previous, ("graphfilters", "analysis"))
    try:
        old = _vit_run(layers, threads, skip, prev, analyze_only=True) if prev else {
            "error": "skipped"}
    finally:
        if prev:
            shutil.rmtree(prev, ignore_errors=True)
    print(f"ViT-B/16 geometry ({r['layers']} layers, d = 768, 12 heads, N = 197, 4 inputs), "
          f"{threads} torch thread(s), {os.cpu_count()} CPU cores"
          + (f"; left out: {', '.join(skip)}" if skip else ""))
    print(f"analyze(): {r['analyze_s']:.1f} s = x{r['analyze_s'] / r['forward_backward_s']:.1f} "
          f"one forward+backward of the encoder ({r['forward_backward_s']:.2f} s, same run; "
          f"target <= x12), peak RSS {r['peak_mib']:.0f} MiB "
          f"(baseline {r['baseline_mib']:.0f}); rows {r['status']}, classes {r['classes']}")
    if "error" in old:
        print(f"previous round ({previous}): n/a ({old['error']})")
    else:
        print(f"previous round ({previous}), same run: analyze() {old['analyze_s']:.1f} s = "
              f"x{old['analyze_s'] / old['forward_backward_s']:.1f} one forward+backward "
              f"({old['forward_backward_s']:.2f} s), peak RSS {old['peak_mib']:.0f} MiB; rows "
              f"{old['status']}")
    per = sorted(r["per_measure_s"].items(), key=lambda kv: -kv[1])
    print("seconds per measure (all layers): "
          + ", ".join(f"{k} {v:.2f}" for k, v in per))
    print(f"one layer, {r['n_eigenvalues']} eigenvalues of one sample + 12 heads x 11 "
          "frequencies: "
          f"structured {r['structured_s']:.3f} s, per-eigenvalue dense {r['dense_s']:.1f} s "
          f"(x{r['dense_s'] / max(r['structured_s'], 1e-9):.0f}), "
          f"largest gain difference {r['max_diff']:.1e}")


def _spawn(case: str, n: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--case", case, "--n", str(n),
         "--threads", str(threads)],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} (N = {n}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(r: dict) -> str:
    return (f"{r['case']:>10} {r['n']:>7} {r['method']:>13} {r['spectrum_s']:>10.3f} "
            f"{r['metrics_s']:>10.3f} {r['peak_mib']:>9.0f} {r['baseline_mib']:>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/BLAS threads per case (default 1, for stable timings)")
    parser.add_argument("--stability-only", action="store_true",
                        help="only the exact-vs-Schur stability comparison (N = 1024, C = 64)")
    parser.add_argument("--vit", action="store_true",
                        help="the ViT-B/16-geometry transformer case (analyze() with defaults)")
    parser.add_argument("--vit-layers", type=int, default=12, help="encoder layers (12)")
    parser.add_argument("--vit-skip", default="",
                        help="measures to leave out of the ViT case, comma-separated "
                             "(stability, tao, response)")
    parser.add_argument("--previous", default=PREVIOUS_ROUND,
                        help="git revision of the previous round's code, timed in the same "
                             "run beside the ViT case, or none")
    parser.add_argument("--vit-analyze-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    skip = tuple(s for s in args.vit_skip.split(",") if s)
    if args.case == "vit":
        print(json.dumps(run_vit_case(args.n, args.threads, skip, args.vit_analyze_only)))
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.n, args.threads)))
        return
    if args.vit:
        _vit_main(args.vit_layers, args.threads, skip, args.previous)
        return
    div, ddiv = (4, 2) if args.quick else (1, 1)
    if args.stability_only:
        stability_comparison(1024 // ddiv, args.threads)
        return
    n_snl, n_nl, n_ref = 65536 // div, 16384 // div, 4096 // ddiv
    print(f"{os.cpu_count()} CPU cores, {args.threads} thread(s) per case; C_s = d = 32; "
          "times in seconds, memory = peak RSS in MiB (baseline: after imports)")
    print(f"{'case':>10} {'N':>7} {'method':>13} {'spectrum':>10} {'metrics':>10} "
          f"{'peak MiB':>9} {'base MiB':>9}")
    results = {}
    for case, n in (("snl", n_snl), ("nl", n_nl), ("snl", n_ref), ("snl_dense", n_ref),
                    ("nl", n_ref), ("nl_dense", n_ref)):
        r = _spawn(case, n, args.threads)
        results[(case, n)] = r
        print(_row(r), flush=True)
    big_nl = results[("nl", n_nl)]
    verdict = "OK" if big_nl["peak_mib"] < 2048 else "OVER"
    print(f"\nNL N = {n_nl}: peak memory {big_nl['peak_mib']:.0f} MiB (< 2048: {verdict}); "
          f"spectrum {big_nl['status']} (max relative residual {big_nl['max_residual']:.1e})")
    for fast, slow in (("snl", "snl_dense"), ("nl", "nl_dense")):
        a, b = results[(fast, n_ref)], results[(slow, n_ref)]
        t_ratio = (b["spectrum_s"] + b["metrics_s"]) / max(a["spectrum_s"] + a["metrics_s"],
                                                          1e-9)
        extra_a = a["peak_mib"] - a["baseline_mib"]
        extra_b = b["peak_mib"] - b["baseline_mib"]
        err = max(abs(x - y) for x, y in zip(a["top"], b["top"]))
        print(f"N = {n_ref}: {slow} / {fast} ({a['method']}): time x{t_ratio:.0f}, "
              f"memory above baseline {extra_b:.0f} / {max(extra_a, 1):.0f} MiB, "
              f"largest |top-4 eigenvalue difference| {err:.1e}")
    stability_comparison(1024 // ddiv, args.threads)


def certified_spectra(n: int = 4096, threads: int = 1) -> None:
    """Top-4 eigenvalues of an NL softmax affinity (``d = 32``, ``rw``): time, certified
    residual and the error against dense ``eig``, for the default method (ARPACK on a stored
    copy, certified by float64 products), restarted block Krylov and matrix-free ARPACK.

    Run: ``python benchmarks/bench_analysis.py --spectra [--n N]``.
    """
    import numpy as np
    import torch

    from analysis.spectra import spectrum
    from graphfilters import spectral
    from graphfilters.graph import SoftmaxAffinity

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    d = 32
    q = torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.25
    k = torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.25
    aff = SoftmaxAffinity(q, k)
    t0 = time.perf_counter()
    ref = np.linalg.eigvals(aff.dense().numpy()) if n <= 4096 else None
    t_ref = time.perf_counter() - t0

    def top(ev: np.ndarray) -> np.ndarray:
        return np.sort(np.abs(ev))[::-1][:4]

    print(f"N = {n}, {threads} thread(s); top-4 |eigenvalues| of softmax (rw)")
    print(f"{'method':>28} {'time s':>8} {'max residual':>13} {'status':>12} {'|err| vs eig':>13}")
    if ref is not None:
        print(f"{'dense eig (reference)':>28} {t_ref:>8.2f} {'':>13} {'exact':>12} {'':>13}")
    runs = (("auto (stored copy + ARPACK)", {"method": "auto", "dense_limit": 512}),
            ("block_krylov", {"method": "block_krylov"}))
    for label, kw in runs:
        t0 = time.perf_counter()
        with warnings.catch_warnings():       # the table shows each value's status
            warnings.simplefilter("ignore")
            s = spectrum(aff, "normalized", "rw", k=4, progress=False, **kw)
        dt = time.perf_counter() - t0
        err = (f"{np.abs(top(s.eigenvalues[0]) - top(ref)).max():.1e}" if ref is not None
               else "n/a")
        print(f"{label:>28} {dt:>8.2f} {s.max_residual():>13.1e} {s.status:>12} {err:>13}")
    old = spectral.CACHE_BYTES
    spectral.CACHE_BYTES = 4 * n * n          # force the float32 copy
    t0 = time.perf_counter()
    s = spectrum(aff, "normalized", "rw", k=4, dense_limit=512, progress=False)
    dt = time.perf_counter() - t0
    spectral.CACHE_BYTES = old
    err = f"{np.abs(top(s.eigenvalues[0]) - top(ref)).max():.1e}" if ref is not None else "n/a"
    print(f"{'auto, float32 stored copy':>28} {dt:>8.2f} {s.max_residual():>13.1e} "
          f"{s.status:>12} {err:>13}")


if __name__ == "__main__":
    if "--spectra" in sys.argv:
        _n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 4096
        certified_spectra(_n)
    else:
        main()
