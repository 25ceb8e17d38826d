"""Markdown reports: the claims, the :func:`analysis.analyze` headline tables, the figures.

:func:`load_for_analysis` turns a checkpoint into a model plus real test inputs (the data set
named in the checkpoint, rebuilt without network); :func:`write_report` analyses one or more
such models and writes ``report.md`` with its figures under ``figures/``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from graphfilters import _validate as V
from graphfilters.data import ImageData, get_dataset
from graphfilters.training import example_checkpoint, load_model, resolve_device

from .analyze import AnalysisTable, analyze
from .capture_figures import plot_capture_spectra
from .plots import (
    plot_accuracy,
    plot_affinity_rows,
    plot_growth,
    plot_history,
)
from .stats import verdict as separation

__all__ = ["LoadedModel", "load_for_analysis", "analyse_loaded", "write_report",
           "query_positions", "claims"]

#: Standard deviations of the Gaussian noise added to the normalized inputs (unit variance).
NOISE_LEVELS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)

#: Blocks compared in the claims section.
SNL_FAMILY = ("snl", "gsnl", "gsnl_stable")
SOFTMAX_FAMILY = ("nl", "ns", "a2", "dnl", "cc", "mha")


@dataclass
class LoadedModel:
    """A model with the data it is analysed on.

    Attributes
    ----------
    name : str
        Label in reports (the block name, or the checkpoint's file name).
    model : torch.nn.Module
        In eval mode, on ``inputs.device``.
    data : ImageData
    inputs, labels : Tensor
        Normalized test images ``(S, C, H, W)`` and their labels ``(S,)``.
    checkpoint : dict
        Configs and history (no weights).
    path : pathlib.Path or None
    """

    name: str
    model: nn.Module
    data: ImageData
    inputs: Tensor
    labels: Tensor
    checkpoint: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    table: AnalysisTable | None = None




@V.validate_params(
    {"path": [V.PATH], "device": [V.InstanceOf((str, torch.device), "a device name or "
                                              "torch.device")],
     "data_dir": [V.PATH, None], "samples": [V.POS_INT]},
    valid=lambda: {"path": example_checkpoint(), "device": "cpu", "samples": 1},
)
def load_for_analysis(
    path: str | Path,
    device: str | torch.device = "auto",
    data_dir: str | None = None,
    samples: int = 64,
) -> LoadedModel:
    """Load a checkpoint (``weights_only=True``) and ``samples`` test images of its data set.

    Parameters
    ----------
    path : path
        Written by ``python -m analysis train`` or :func:`graphfilters.training.save_checkpoint`.
    device : str or torch.device
        ``"auto"``: CUDA when available.
    data_dir : str, optional
        Overrides the stored data directory (CIFAR).
    samples : int
        Test images used (the first ones, deterministic).

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        For missing files, foreign checkpoints or checkpoints without a data description.
    """
    dev = resolve_device(device)
    model, ckpt = load_model(path, map_location=dev, return_checkpoint=True)
    desc = ckpt.get("data")
    if not isinstance(desc, Mapping) or "name" not in desc:
        raise ValueError(
            f"{str(path)!r} records no data set, so there is nothing to analyse it on; use "
            "analysis.analyze(model, inputs) from Python with your own inputs"
        )
    desc = dict(desc)
    if data_dir is not None:
        desc["options"] = {**dict(desc.get("options") or {}), "root": data_dir}
    data = get_dataset(desc)
    x, y = data.tensors("test", device=dev)
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    name = (model.config.get("block") if hasattr(model, "config") else None) or Path(path).stem
    return LoadedModel(str(name), model.eval(), data, x[:samples], y[:samples], meta, Path(path))


def analyse_loaded(loaded: LoadedModel, *, max_samples: int = 8,
                   progress: bool = True) -> AnalysisTable:
    """Run :func:`analysis.analyze` on the loaded model's inputs (cached on ``loaded``)."""
    if loaded.table is None:
        loaded.table = analyze(loaded.model, loaded.inputs, labels=loaded.labels,
                               max_samples=max_samples, accuracy_levels=NOISE_LEVELS,
                               progress=progress)
    return loaded.table


def query_positions(image: Tensor | np.ndarray, grid: Sequence[int], k: int = 4
                    ) -> list[tuple[int, int]]:
    """``k`` query positions on the block's ``grid`` where the image is brightest, spread out.

    The image (``(C, H, W)`` or ``(H, W)``) is averaged over channels, resampled to ``grid``
    and the brightest cells are taken greedily at least ``min(grid)/4`` apart, so the queries
    land on the object (e.g. a digit's strokes) rather than the background.

    Examples
    --------
    >>> img = np.zeros((8, 8)); img[2, 2] = img[6, 5] = 1.0
    >>> query_positions(img, (8, 8), k=2)
    [(2, 2), (6, 5)]
    """
    img = image.detach().float().cpu() if isinstance(image, Tensor) else torch.as_tensor(
        np.asarray(image, dtype=np.float32))
    if img.ndim == 3:
        img = img.mean(0)
    small = torch.nn.functional.interpolate(img[None, None], size=tuple(grid), mode="area")[0, 0]
    order = torch.argsort(small.flatten(), descending=True).tolist()
    min_dist = max(1.0, min(grid) / 4)
    chosen: list[tuple[int, int]] = []
    for flat in order:
        pos = divmod(flat, grid[1])
        if all(math.dist(pos, c) >= min_dist for c in chosen):
            chosen.append((int(pos[0]), int(pos[1])))
        if len(chosen) == k:
            break
    return chosen


def _save(fig: Figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path.name


def _cell(rec: Mapping[str, Any], key: str, fmt: str) -> str:
    value = rec.get(key)
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else float("nan")
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if fmt == "tao":
        return f"{value:.0%}" + (" (forced)" if rec.get("tao_forced") else "")
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def _md_table(table: AnalysisTable, csv_name: str = "table.csv") -> str:
    """The headline columns of ``table`` as Markdown (every metric is in ``csv_name``)."""
    heads, rows = table.headline_table()
    esc = [[c.replace("|", "\\|") for c in r] for r in [heads, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    n = max((len(r.stack_growth) for r in table), default=0)
    lines += ["", f"growth@{n or 'n'} (exact): spectral norm of {n or 'n'} copies sharing the "
              "frozen affinity; ‖J‖ full: the Jacobian with the affinity recomputed from the "
              "input (what training sees); affinity share: ‖J_full − J_frozen‖/‖J_frozen − I‖. "
              f"The per-frequency growth lower bound@{n or 'n'}, Tao's negative share (forced "
              "by the bottleneck where flagged) and every other metric are in "
              f"[{csv_name}]({csv_name})."]
    lines += [f"`{r.path}`: {r.status}: {r.reason}" for r in table if r.reason]
    if table.backbone:
        vals = np.array([b["jacobian_full"] for b in table.backbone])
        lines += ["", f"Reference: the backbone's own {len(vals)} residual units have ‖J‖ full "
                  f"median {np.median(vals):.3f} (range {vals.min():.3f}–{vals.max():.3f})."]
    return "\n".join(lines)


def _family_values(tables: Mapping[str, AnalysisTable], family: Sequence[str], attr: str,
                   last: bool = False) -> tuple[list[float], list[str]]:
    vals, where = [], []
    for name, table in tables.items():
        for row in table:
            if row.block.lower() not in family:
                continue
            v = getattr(row, attr)
            if last:
                v = v[-1] if v else float("nan")
            if isinstance(v, float) and math.isfinite(v):
                vals.append(v)
                where.append(f"{name}:{row.path}")
    return vals, where


def _family_max(tables: Mapping[str, AnalysisTable], family: Sequence[str], attr: str,
                last: bool = False) -> tuple[float, list[str]]:
    vals, where = _family_values(tables, family, attr, last)
    return (max(vals) if vals else float("nan")), where


def _spread(vals: Sequence[float]) -> str:
    """``3 blocks, 1.2–1.9`` (the sample behind a family's value, and its spread)."""
    n = len(vals)
    return f"{n} block{'s' if n != 1 else ''}" + (
        f", range {min(vals):.4g}–{max(vals):.4g}" if n > 1 else "")


#: Relative difference below which two families' values count as equal in :func:`claims`
#: (the analysis certifies its Krylov values to ``tol = 1e-3`` relative by default).
CLAIM_RTOL = 1e-3


def claims(tables: Mapping[str, AnalysisTable]) -> list[tuple[str, str, str]]:
    """Which of the papers' claims held in this run, computed from the analysed numbers.

    Returns
    -------
    list of ``(claim, verdict, evidence)``
        ``verdict`` is ``"held"``, ``"did not hold"``, ``"not separated"`` (the two families
        differ by less than the tables' certified precision, ``CLAIM_RTOL`` relative: the
        rule of :func:`analysis.stats.verdict`, shared with the sweep), ``"inconclusive"``
        (NL/NS blocks damp on a bare majority of frequencies, between 1/2 and 2/3) or
        ``"not tested"`` (the run has no model of a family the claim compares).
    """
    out = []

    def compare(claim: str, attr: str, what: str, last: bool = False) -> None:
        snl, _ = _family_max(tables, SNL_FAMILY, attr, last)
        soft, _ = _family_max(tables, SOFTMAX_FAMILY, attr, last)
        if not (math.isfinite(snl) and math.isfinite(soft)):
            out.append((claim, "not tested", "needs an SNL and a softmax (NL/NS/A²) model"))
            return
        # each value is an interval of half-width tol/2: separated iff they differ by > tol
        half = CLAIM_RTOL * max(abs(snl), abs(soft)) / 2
        verdict = separation((snl - half, snl + half), (soft - half, soft + half))
        sv = _family_values(tables, SNL_FAMILY, attr, last)[0]
        fv = _family_values(tables, SOFTMAX_FAMILY, attr, last)[0]
        out.append((claim, verdict,
                    f"largest {what}: SNL family {snl:.4g} ({_spread(sv)}), softmax "
                    f"blocks {soft:.4g} ({_spread(fv)})"))

    lam, _ = _family_max(tables, SNL_FAMILY, "lambda_max")
    out.append(("SNL's normalized Laplacian keeps λ_max ≤ 2 (ICCV 2021)",
                "not tested" if not math.isfinite(lam) else
                ("held" if lam <= 2 + 1e-9 else "did not hold"),
                f"largest λ_max of an SNL block: {lam:.4g}" if math.isfinite(lam) else
                "no SNL model"))
    compare("Stacking SNL grows less than stacking NL (frozen affinity, exact ‖Mⁿ‖)",
            "stack_growth", "growth@n", last=True)
    compare("SNL blocks have smaller full Jacobians than softmax blocks (robust to stacking)",
            "jacobian_full", "‖J‖ full")
    compare("SNL's affinity contributes less to the Jacobian than softmax affinities",
            "affinity_share", "affinity share")
    damp = [r.damping_share for t in tables.values() for r in t
            if r.block.lower() in ("nl", "ns") and math.isfinite(r.damping_share)]
    if not damp:
        verdict = "not tested"
    elif min(damp) <= 0.5:
        verdict = "did not hold"
    else:                       # every block damps on most frequencies: clearly, or barely
        verdict = "held" if min(damp) >= 2 / 3 else "inconclusive"
    out.append(("Trained NL/NS blocks damp (Tao et al. 2018), sign-correct per frequency",
                verdict,
                f"damping share of the frequencies: {', '.join(f'{d:.0%}' for d in damp)}"
                " (held: at least 2/3 in every block; 1/2 to 2/3: inconclusive)"
                if damp else "no NL/NS model"))
    accs = {n: t.accuracy for n, t in tables.items() if getattr(t, "accuracy", None)}
    fam = {n: {r.block.lower() for r in t} for n, t in tables.items()}
    snl_acc = [a[max(a)] for n, a in accs.items() if fam[n] & set(SNL_FAMILY)]
    soft_acc = [a[max(a)] for n, a in accs.items() if fam[n] & set(SOFTMAX_FAMILY)]
    if snl_acc and soft_acc:
        out.append(("SNL models keep more accuracy under input noise",
                    "held" if max(snl_acc) > max(soft_acc) else "did not hold",
                    f"accuracy at the largest noise level: SNL {max(snl_acc):.3f}, softmax "
                    f"{max(soft_acc):.3f}"))
    else:
        out.append(("SNL models keep more accuracy under input noise", "not tested",
                    "needs accuracy curves of an SNL and a softmax model"))
    for name, table in tables.items():
        if not table.backbone:
            continue
        ref = max(b["jacobian_full"] for b in table.backbone)
        blk = [r.jacobian_full for r in table if math.isfinite(r.jacobian_full)]
        if blk:
            out.append((f"`{name}`: its nonlocal blocks are no less stable than the backbone's "
                        "residual units", "held" if max(blk) <= ref else "did not hold",
                        f"largest block ‖J‖ full {max(blk):.3f}, largest backbone unit "
                        f"{ref:.3f}"))
    return out


def _model_section(loaded: LoadedModel, figdir: Path, rel: str) -> list[str]:
    table = analyse_loaded(loaded)
    name = loaded.name
    out = [f"## Model `{name}`", ""]
    hist = loaded.checkpoint.get("history") or []
    evals = [h for h in hist if h.get("test_acc") is not None]
    if evals:
        out.append(f"Test accuracy after {evals[-1].get('epoch')} epochs: "
                   f"**{evals[-1]['test_acc']:.4f}** ({loaded.data.name}, "
                   f"{len(loaded.data.y_test)} test images).")
        out.append("")
    if hist:
        fig, _ = plot_history(hist, title=f"{name}: training")
        out += [f"![{name} training]({rel}/{_save(fig, figdir / f'{name}_history.png')})", ""]
    if not table:
        out += [f"No nonlocal block was analysed: {table.reason}", ""]
        return out
    caps = table.captures or {}
    image = loaded.inputs[0]
    for row in table:
        cap = caps.get(row.path)
        if cap is None or row.status == "skipped":
            out += [f"`{row.path}` skipped: {row.reason}", ""]
            continue
        slug = f"{name}_{row.path.replace('.', '_')}"
        fig, _ = plot_capture_spectra(cap, title=f"{name}: {row.path} ({row.block})")
        out += [f"### `{row.path}` ({row.block})", "",
                f"Spectrum: {row.spectrum_method} ({row.spectrum_reason}). Response: "
                f"{row.response_class}. {row.reason}".rstrip(), "",
                f"![{slug} spectra]({rel}/{_save(fig, figdir / f'{slug}_spectra.png')})", ""]
        if len(cap.spatial_shape) == 2 and cap.n_samples > 0:
            queries = query_positions(image, cap.spatial_shape)
            fig, _ = plot_affinity_rows(cap, queries, image=image)
            fig.suptitle(f"{name}: rows of Â for {len(queries)} query points (★)")
            out += [f"![{slug} attention]({rel}/{_save(fig, figdir / f'{slug}_rows.png')})",
                    ""]
    return out


def write_report(
    out: str | Path,
    models: Mapping[str, LoadedModel],
    *,
    title: str = "graphfilters report",
    intro: Sequence[str] = (),
    progress: bool = True,
) -> Path:
    """Analyse ``models`` and write ``out/report.md`` (figures in ``out/figures``).

    Parameters
    ----------
    out : path
        Output directory (created).
    models : mapping name -> LoadedModel
        Models with their inputs (see :func:`load_for_analysis`).
    title : str
    intro : sequence of str
        Markdown paragraphs put before the model sections (e.g. derivations, data notes).

    Returns
    -------
    pathlib.Path
        The report file: the claims table first (models, seeds and the spread behind each
        verdict), then one headline table per model, ``intro``, the figures; every metric of
        every block in ``out/table.csv`` (and ``table.json`` with the notes), the
        configuration in ``out/config.json``.
    """
    out = Path(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    for name, loaded in models.items():
        loaded.name = name
        analyse_loaded(loaded, progress=progress)
    tables = {n: m.table for n, m in models.items() if m.table}
    lines = [f"# {title}", ""]
    if tables:
        seeds = sorted({str((m.checkpoint.get("train_config") or {}).get("seed", "?"))
                        for m in models.values()})
        lines += ["## The papers' claims in this run", "",
                  f"Computed from the numbers below (not fixed text): {len(tables)} model(s) "
                  f"({', '.join(f'`{n}`' for n in tables)}), training seed(s) "
                  f"{', '.join(seeds)}; each value names the blocks behind it and their "
                  "range. One seed per model gives no spread over seeds: a "
                  "verdict here is about these models, not a measured effect "
                  "(`python -m analysis sweep` repeats over seeds).", "",
                  "| claim | verdict | models | seeds | evidence |", "|---|---|---|---|---|"]
        lines += [f"| {c} | **{v}** | {len(tables)} | {len(seeds)} | {e} |"
                  for c, v, e in claims(tables)]
        lines.append("")
    lines += ["## Headline tables", ""]
    for name, loaded in models.items():
        lines += [f"### `{name}`", ""]
        lines += [_md_table(loaded.table, "table.csv") if loaded.table else
                  f"No nonlocal block was analysed: {loaded.table.reason}", ""]
    lines += [*intro, ""]
    records = {}
    for name, loaded in models.items():
        lines += _model_section(loaded, figdir, "figures")
        records[name] = loaded.table.to_records()
    if tables:
        lines += ["## Robustness", ""]
        fig = Figure(figsize=(10, 3.8), layout="constrained")
        ax1, ax2 = fig.subplots(1, 2)
        for name, table in tables.items():
            for row in table:
                if row.stack_growth:
                    plot_growth(row, ax=ax1, label=f"{name}: {row.path}",
                                show_lower_bound=True)
            if getattr(table, "accuracy", None):
                plot_accuracy(table, ax=ax2, label=name)
        ax1.set_title("exact growth ‖Mⁿ‖ of n stacked copies (frozen affinity)")
        ax2.set_title("accuracy under Gaussian input noise")
        lines += ["Left: the exact spectral norm of n stacked copies of each block sharing its "
                  "frozen affinity (solid); dotted, where it differs, the per-frequency lower "
                  "bound (Schur diagonal blocks of a non-symmetric affinity). Right: accuracy "
                  "on the analysed test images when Gaussian noise of the given standard "
                  "deviation is added to the normalized (unit-variance) inputs.", "",
                  f"![robustness](figures/{_save(fig, figdir / 'robustness.png')})", ""]
    config = {name: {"path": str(loaded.path) if loaded.path else None,
                     **{k: loaded.checkpoint.get(k)
                        for k in ("model_config", "train_config", "data")}}
              for name, loaded in models.items()}
    (out / "config.json").write_text(json.dumps(config, indent=1, default=str))
    _write_csv(out / "table.csv", {n: m.table for n, m in models.items() if m.table is not None})
    lines += ["## Files", "",
              "- [table.csv](table.csv): every metric of every block, one row per block;",
              "- [table.json](table.json): the same with the notes on how each was computed;",
              "- [config.json](config.json): each model's configuration (model, training, "
              "data).", ""]
    (out / "table.json").write_text(json.dumps(records, indent=1, default=str))
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _write_csv(path: Path, tables: Mapping[str, AnalysisTable]) -> None:
    """Every column (``columns="all"``) of every table, with the model's name first."""
    import csv

    cols = AnalysisTable().columns("all")
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", *cols])
        for name, table in tables.items():
            for rec in table.to_records():
                writer.writerow([name, *(json.dumps(rec[c]) if isinstance(rec[c], (list, dict))
                                         else rec[c] for c in cols)])
