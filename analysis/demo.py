"""The main job behind ``make demo`` / ``python -m analysis demo``.

1. derive every block of the table from the Chebyshev filter (LaTeX saved, proofs checked);
2. build NL and SNL affinities on a real photograph (scikit-learn's sample image) and compare
   their spectra (complex vs real in ``[0, 2]``) and attention rows;
3. train a PreResNet-20 with an NL block and one with an SNL block on the digits (reusing the
   checkpoints when their configuration matches);
4. analyse both models (spectra, responses, damping, exact frozen-affinity norms and stack
   growth, full and frozen Jacobians against the backbone's residual units, robustness);
5. write ``OUT/report.md`` with the figures and which of the papers' claims held in this run.

Everything runs on the CPU in a few minutes; nothing is downloaded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from graphfilters import kernels
from graphfilters.symbolic import derive_all
from graphfilters.training import TrainConfig, load_checkpoint, train

from .capture import Capture
from .plots import plot_affinity_rows, plot_spectrum
from .report import load_for_analysis, write_report
from .spectra import affinity_metrics, complex_share, spectrum

__all__ = ["run_demo", "demo_settings", "derivation_section", "image_section"]


def demo_settings(quick: bool = False, epochs: int | None = None) -> tuple[dict, dict, dict]:
    """Model, training and data settings of the demo models (``block`` filled in later).

    PreResNet-20 (width 16) on the digits upscaled to 16 x 16, with the block in the first
    stage after the second residual unit (the paper's CIFAR placement).
    """
    n_epochs = epochs if epochs is not None else (1 if quick else 8)
    model = {"depth": 20, "width": 16}
    train_cfg = TrainConfig(
        epochs=n_epochs, batch_size=64, lr=0.1, weight_decay=1e-4, warmup_epochs=1.0,
        milestones=tuple(m for m in (round(0.625 * n_epochs), round(0.875 * n_epochs))
                         if 0 < m < n_epochs),
        seed=0, max_steps=15 if quick else None, amp=True,
    ).to_dict()
    data = {"name": "digits", "size": 16}
    return model, train_cfg, data


def derivation_section(out: Path) -> list[str]:
    """Derive every block, write ``out/derivations/*.tex`` and return Markdown lines."""
    folder = out / "derivations"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    derivations = derive_all()
    seconds = time.perf_counter() - t0
    lines = ["## Every block as a Chebyshev graph filter", "",
             f"{len(derivations)} derivations from $F = \\sum_k T_k(\\tilde L) Z W_k$, proved "
             f"with sympy in {seconds:.1f} s (LaTeX in `derivations/`).", "",
             "| block | order | constraint | closed form | proof |", "|---|---|---|---|---|"]
    for d in derivations:
        stem = d.name + (f"_{d.mode}" if d.mode else "")
        (folder / f"{stem}.tex").write_text(d.to_latex() + "\n")
        label = d.name + (f" ({d.mode})" if d.mode else "")
        lines.append(f"| {label} | {d.order} | {d.spec.weight_constraint} | "
                     f"${d.closed_form_latex}$ | {'verified' if d.verified else 'FAILED'} |")
    if not all(d.verified for d in derivations):
        failed = [d.name for d in derivations if not d.verified]
        raise RuntimeError(f"derivations failed to verify: {failed}")
    return lines + [""]


def _photo(size: tuple[int, int]) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    image = load_sample_images().images[0]  # china.jpg, ships with scikit-learn
    t = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None] / 255
    return torch.nn.functional.interpolate(t, size=size, mode="area")[0].numpy()


def image_section(out: Path, size: tuple[int, int] = (30, 40), channels: int = 8,
                  seed: int = 0) -> list[str]:
    """NL and SNL affinities on a real photograph: spectra and attention rows (a figure)."""
    h, w = size
    img = _photo(size)  # (3, h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    X = np.concatenate([img.reshape(3, -1).T, np.stack([yy.ravel() / h, xx.ravel() / w], 1)], 1)
    X = (X - X.mean(0)) / X.std(0)
    rng = np.random.default_rng(seed)
    w_theta = rng.standard_normal((X.shape[1], channels)) / np.sqrt(X.shape[1])
    w_phi = w_theta + 0.5 * rng.standard_normal(w_theta.shape) / np.sqrt(X.shape[1])
    theta, phi = (X @ w_theta)[None], (X @ w_phi)[None]
    caps = {
        "NL": Capture("photo", "adapter", "embedded_gaussian",
                      kernels.embedded_gaussian(theta, phi, scale="sqrt"), "rw",
                      spatial_shape=size, n_samples=1),
        "SNL": Capture("photo", "adapter", "relu_dot",
                       kernels.relu_dot(theta, phi).symmetrized(), "sym",
                       spatial_shape=size, n_samples=1),
    }
    fig = Figure(figsize=(12, 7), layout="constrained")
    grid = fig.subplots(2, 4)
    queries = [(h * 8 // 30, w // 4), (h * 2 // 3, w * 3 // 4), (h * 5 // 6, w // 5)]
    facts = []
    for r, (name, cap) in enumerate(caps.items()):
        op = "normalized" if name == "NL" else "laplacian"
        spec = spectrum(cap, op, progress=False)
        plot_spectrum(spec, ax=grid[r, 0],
                      title=f"{name}: " + ("eigenvalues of A" if name == "NL"
                                           else "eigenvalues of $L_{sym}$"))
        if name == "SNL":
            grid[r, 0].set_yscale("log")  # all but 2 C_s eigenvalues equal 1
        plot_affinity_rows(cap, queries, image=img, ax=list(grid[r, 1:]))
        m = affinity_metrics(cap, progress=False).summary()
        cs = complex_share(spectrum(cap, "normalized", progress=False).all())
        facts.append(f"- **{name}** ({spec.method}): λ_max = {m['lambda_max']:.3f}, complex "
                     f"eigenvalues {m['complex_share']:.0%} of the {cs.n_counted} above the "
                     f"numerical null space ({cs.n_null} with |μ| < {cs.floor:g}ρ ignored; "
                     f"complex: |Im μ| > {cs.rtol:g}|μ|; max |Im| {m['max_imag']:.3g}), "
                     f"asymmetry ‖A−Aᵀ‖/‖A‖ = {m['asymmetry']:.3f}")
    fig.suptitle(f"Affinities on a real photograph ({h}x{w} = {h * w} pixels, features "
                 "colour + position, fixed random projections)")
    path = out / "figures" / "photo_affinities.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return ["## Affinities on a real image", "",
            "NL's softmax affinity is row-stochastic but not symmetric: its spectrum is complex "
            "and lies in the unit disk. SNL's normalized symmetric affinity has a real "
            "Laplacian spectrum in [0, 2]. Rows of the operator are drawn over the image for "
            "three query points (★).", "", *facts, "",
            "![photo affinities](figures/photo_affinities.png)", ""]


def _reusable(path: Path, model: dict, train_cfg: dict, data: dict) -> str | None:
    """Why the checkpoint at ``path`` cannot be reused, or ``None`` if it can."""
    if not path.is_file():
        return "no checkpoint yet"
    try:
        ckpt = load_checkpoint(path)
    except (ValueError, TypeError) as exc:
        return f"unreadable checkpoint ({exc})"
    stored_model = ckpt.get("model_config") or {}
    if any(stored_model.get(k) != v for k, v in model.items()):
        return "model configuration changed"
    ignore = ("device", "progress", "num_workers")  # where and how verbosely, not what
    stored_train = {k: v for k, v in (ckpt.get("train_config") or {}).items() if k not in ignore}
    if stored_train != {k: v for k, v in train_cfg.items() if k not in ignore}:
        return "training configuration changed"
    if (ckpt.get("data") or {}).get("options", {}).get("size") != data["size"]:
        return "data changed"
    if any(h.get("diverged") for h in ckpt.get("history") or []):
        return "the stored run diverged"
    return None


def run_demo(
    out: str | Path = "out",
    *,
    epochs: int | None = None,
    retrain: bool = False,
    quick: bool = False,
    device: str = "auto",
    blocks: tuple[str, ...] = ("nl", "snl"),
    image_size: tuple[int, int] = (30, 40),
) -> Path:
    """Run the whole demo and return the path of ``report.md``.

    Parameters
    ----------
    out : path
        Output directory: ``report.md``, ``figures/``, ``derivations/``, ``checkpoints/``.
    epochs : int, optional
        Training epochs per model (default 8; 1 with ``quick``).
    retrain : bool
        Train even when a checkpoint with the same configuration exists.
    quick : bool
        A smoke run (15 optimizer steps per model); the report says so.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` ...
    blocks : tuple of str
        Block table names of the trained models.
    image_size : (int, int)
        Resolution of the photograph whose affinities are compared.
    """
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("[1/5] deriving every block from the Chebyshev filter", flush=True)
    intro = derivation_section(out)
    print("[2/5] NL and SNL affinities on a real photograph", flush=True)
    intro += image_section(out, size=image_size)
    model_base, train_cfg, data = demo_settings(quick, epochs)
    train_cfg["device"] = device
    models: dict[str, Any] = {}
    accuracies = {}
    for i, block in enumerate(blocks):
        path = out / "checkpoints" / f"{block}{'_quick' if quick else ''}.pt"
        model = {**model_base, "block": block}
        why = "--retrain" if retrain else _reusable(path, model, train_cfg, data)
        if why is None:
            print(f"[3/5] {block}: reusing {path}", flush=True)
        else:
            print(f"[3/5] training PreResNet-20 + {block} on digits ({why}) "
                  f"[{i + 1}/{len(blocks)}]", flush=True)
            result = train(model, train_cfg, data=data, out=path)
            if result.diverged:
                raise RuntimeError(f"training of {block} diverged: {result.divergence}")
        models[block] = load_for_analysis(path, device=device, samples=64)
        hist = models[block].checkpoint.get("history") or []
        accuracies[block] = next((h["test_acc"] for h in reversed(hist)
                                  if h.get("test_acc") is not None), float("nan"))
    print("[4/5] analysing the trained models", flush=True)
    summary = ["## Trained models", "",
               "PreResNet-20 (width 16) on scikit-learn's handwritten digits upscaled to "
               "16 x 16 (1347 train / 450 test images), block in the first stage after the "
               "second residual unit. " + ("**Quick smoke run: barely trained.** " if quick
                                           else ""), "",
               *[f"- `{b}`: test accuracy **{a:.4f}**" for b, a in accuracies.items()], ""]
    print("[5/5] writing the report", flush=True)
    path = write_report(out, models, title="graphfilters demo report", intro=intro + summary)
    minutes = (time.perf_counter() - t_start) / 60
    with open(path, "a") as f:
        f.write(f"\n_Demo wall time: {minutes:.1f} min on {torch.get_num_threads()} threads._\n")
    print(f"done in {minutes:.1f} min: " + ", ".join(
        f"{b} test accuracy {a:.4f}" for b, a in accuracies.items()), flush=True)
    return path
