"""Markdown reports: figures, the :func:`analysis.analyze` table and the run's configuration.

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

from graphfilters.data import ImageData, get_dataset
from graphfilters.training import load_model, resolve_device

from .analyze import AnalysisTable, analyze
from .plots import (
    plot_accuracy,
    plot_affinity_rows,
    plot_growth,
    plot_history,
    plot_response,
    plot_spectrum,
)
from .response import block_response
from .spectra import spectrum

__all__ = ["LoadedModel", "load_for_analysis", "analyse_loaded", "write_report",
           "query_positions"]

#: Standard deviations of the Gaussian noise added to the normalized inputs (unit variance).
NOISE_LEVELS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)

#: Columns of the Markdown table (all columns go to ``table.json``).
TABLE_COLUMNS = (
    ("path", "block", "{}"), ("block", "kind", "{}"), ("status", "status", "{}"),
    ("n_nodes", "N", "{}"), ("spectrum_method", "spectrum", "{}"),
    ("lambda_max", "λ_max", "{:.3f}"), ("complex_share", "complex", "{:.0%}"),
    ("asymmetry", "asym.", "{:.3f}"), ("effective_rank", "eff. rank", "{:.1f}"),
    ("rank_collapse", "collapse", "{:.3f}"), ("response_class", "response", "{}"),
    ("tao_negative_mass", "Tao neg. mass", "{:.0%}"), ("stability_radius", "ρ(I+H)", "{:.3f}"),
    ("jacobian_norm", "‖J‖", "{:.3f}"),
)


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
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
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


def _md_table(table: AnalysisTable) -> str:
    head = "| " + " | ".join(h for _, h, _ in TABLE_COLUMNS) + " |"
    rule = "|" + "---|" * len(TABLE_COLUMNS)
    lines = [head, rule]
    for rec in table.to_records():
        cells = []
        for key, _, fmt in TABLE_COLUMNS:
            value = rec.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                cells.append("–")
            else:
                try:
                    cells.append(fmt.format(value))
                except (TypeError, ValueError):
                    cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    out += [_md_table(table), ""]
    caps = table.captures or {}
    image = loaded.inputs[0]
    for row in table:
        cap = caps.get(row.path)
        if cap is None or row.status == "skipped":
            out += [f"`{row.path}` skipped: {row.reason}", ""]
            continue
        slug = f"{name}_{row.path.replace('.', '_')}"
        fig = Figure(figsize=(11, 3.6), layout="constrained")
        ax1, ax2, ax3 = fig.subplots(1, 3)
        spec_n = spectrum(cap, "normalized", progress=False)
        if cap.normalization in ("sym", "rw") and spec_n.complete:
            lap = 1 - spec_n.all()  # L = I - Â: no second eigen-solve
        else:
            lap = spectrum(cap, "laplacian", progress=False)
        for ax, spec, what, op in ((ax1, spec_n, "the operator Â", "normalized"),
                                   (ax2, lap, "the Laplacian", "laplacian")):
            # log counts for a real spectrum (low-rank operators: one tall bar of trivial
            # eigenvalues); a complex one keeps linear axes and its circle
            plot_spectrum(spec, ax=ax, title=f"eigenvalues of {what}", operator=op, log=True)
        plot_response(block_response(cap, spectrum_result=spec_n, energies=False), ax=ax3,
                      title="frequency response σ(H(λ))")
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
        The report file. ``out/table.json`` holds every metric of every block.
    """
    out = Path(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *intro, ""]
    records = {}
    for name, loaded in models.items():
        loaded.name = name
        analyse_loaded(loaded, progress=progress)
        lines += _model_section(loaded, figdir, "figures")
        records[name] = loaded.table.to_records()
    tables = {n: m.table for n, m in models.items() if m.table}
    if tables:
        lines += ["## Robustness", ""]
        fig = Figure(figsize=(10, 3.8), layout="constrained")
        ax1, ax2 = fig.subplots(1, 2)
        for name, table in tables.items():
            for row in table:
                if row.stack_growth:
                    plot_growth(row, ax=ax1, label=f"{name}: {row.path}")
            if getattr(table, "accuracy", None):
                plot_accuracy(table, ax=ax2, label=name)
        ax1.set_title("linearized growth of a stack of n blocks")
        ax2.set_title("accuracy under Gaussian input noise")
        lines += ["Left: the largest gain of n stacked copies of each block with its affinity "
                  "fixed (the linearization). Right: accuracy on the analysed test images "
                  "when Gaussian noise of the given standard deviation is added to the "
                  "normalized (unit-variance) inputs.", "",
                  f"![robustness](figures/{_save(fig, figdir / 'robustness.png')})", ""]
    lines += ["## Configuration", ""]
    for name, loaded in models.items():
        conf = {k: loaded.checkpoint.get(k) for k in ("model_config", "train_config", "data")}
        lines += [f"`{name}`" + (f" ({loaded.path})" if loaded.path else "") + ":", "",
                  "```json", json.dumps(conf, indent=1, default=str), "```", ""]
    (out / "table.json").write_text(json.dumps(records, indent=1, default=str))
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
