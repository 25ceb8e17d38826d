# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 — Frequency responses: block types and trained blocks
#
# On an eigenvector of the block's Laplacian with eigenvalue (frequency) $\lambda$, a block
# multiplies the channels by the matrix
#
# $$
# H(\lambda) = \sum_{k=0}^{K} T_k\!\left(\tfrac{2\lambda}{\lambda_{max}} - 1\right) W^L_k
# = \sum_{k=0}^{K} T_k(1 - \lambda)\, W_k \quad (\lambda_{max} = 2,\ \text{affinity form}).
# $$
#
# 1. **Block types** (`graphfilters.symbolic.response`): the scalar response $h(\lambda)$
#    each block can express. NL, A², CC, DNL and CGNL have one weight, so one fixed shape
#    times a scale; NS is a pure high-pass; SNL and gSNL have a free coefficient per term.
# 2. **Trained blocks** (`analysis`): two tiny PreResNet-8 models (one NL, one SNL block
#    after the first residual unit) trained for a few epochs on scikit-learn's digits,
#    upscaled to $16 \times 16$, on the CPU. Their affinities are captured on test images;
#    the response is drawn with the captured eigenvalues marked.
#
# These models are deliberately tiny (on one CPU core, from a few seconds each on an idle
# machine to about a minute on a busy one; the time is printed below): the point is the
# analysis pipeline and the shapes of the responses, not the accuracy. If `make demo` has
# been run, its checkpoints (`../out/checkpoints/nl.pt` and `snl.pt`, PreResNet-20 models
# trained longer) are used instead.

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from analysis import analyze
from analysis.capture import capture
from analysis.plots import (
    plot_affinity_rows,
    plot_block_responses,
    plot_energy,
    plot_response,
    plot_spectrum,
)
from analysis.response import block_response
from graphfilters.data import get_dataset
from graphfilters.training import TrainConfig, load_model, train

_ = torch.manual_seed(0)   # (its Generator is not an output)

# %% [markdown]
# ## 1. What each block type can express
#
# Single-weight blocks are drawn for unit weight; for SNL and gSNL a few weight choices
# show that one block can be low-pass, high-pass or band-pass. CGNL uses no normalization,
# so its $\lambda_{max}$ is not fixed (here 2 for the picture).

# %%
fig, axes = plot_block_responses()            # every row of the block table
plt.show()

# %% [markdown]
# ### Polynomial and rational filters on one axis
#
# The Chebyshev basis functions of orders 1-3, the real part of the Cayley transform
# $C(\lambda) = (h\lambda - i)/(h\lambda + i)$ (Levie et al. 2018) and a first-order ARMA
# filter $(1 - \psi)/(1 - \psi(1 - \lambda))$ (Isufi et al. 2017), all evaluated by the filter
# registry `graphfilters.filters` (what the `cayley` and `arma` blocks compute). A polynomial
# of order $K$ oscillates at most $K$ times; a rational filter can be sharply selective at low
# order (Cayley, through its zoom $h$) or smooth and low-pass with a single pole (ARMA).

# %%
from analysis.plots import plot_filter_families

fig, ax = plot_filter_families()
fig

# %% [markdown]
# ## 2. Two tiny trained models
#
# PreResNet-8 (width 8) with an NL or an SNL block after the first residual unit of stage 1
# (feature maps $16 \times 16$, so $N = 256$ nodes), SGD for 3 epochs on the digits (the
# learning rate drops ×0.1 for the last one).

# %%
data = get_dataset({"name": "digits", "size": 16})
config = TrainConfig(epochs=3, batch_size=64, lr=0.1, warmup_epochs=0.5, milestones=(2,),
                     device="cpu", amp=False, progress=False)


def saved_model(block):
    for path in sorted(Path("../out/checkpoints").glob("*.pt")):
        try:
            model = load_model(path)
        except (ValueError, FileNotFoundError):
            continue
        if getattr(model, "config", {}).get("block") == block:
            return model, f"loaded {path}"
    return None, ""


models = {}
for block in ("nl", "snl"):
    model, how = saved_model(block)
    if model is None:
        start = time.perf_counter()
        result = train({"depth": 8, "width": 8, "block": block, "block_positions": 1},
                       config, data=data)
        model = result.model
        how = (f"trained {time.perf_counter() - start:.0f} s, "
               f"test accuracy {result.test_accuracy:.3f}")
    models[block] = model.eval()
    print(f"{block}: {how}; nonlocal blocks at {model.nonlocal_paths}")

# %% [markdown]
# ## 3. Capture the affinities on test images
#
# `analysis.capture.capture` runs the model on a batch and records, for every nonlocal
# block, the affinity *as a structure* (softmax factors for NL, low-rank factors for SNL:
# no $N \times N$ matrix), the signal $Z$ and the affinity-form weights $W_k$.

# %%
x_test, y_test = data.tensors("test")
x = x_test[:8]
captures = {name: next(iter(capture(model, x, progress=False).values()))
            for name, model in models.items()}
for name, cap in captures.items():
    print(f"{name}: {cap.path}  {type(cap.affinity).__name__}  normalization={cap.normalization}"
          f"  order={cap.order}  spatial={cap.spatial_shape}  samples={cap.n_samples}")

# %% [markdown]
# ## 4. Responses of the trained blocks, with the captured eigenvalues
#
# The curves are the singular values of $H(\lambda)$ over $[0, 2]$; the dots are the
# largest gain $\sigma_1(H(\lambda_i))$ at the eigenvalues $\lambda_i$ of the captured
# Laplacians (8 images). NL's eigenvalues are complex: they are drawn at their real part
# (their gain is evaluated at the complex value). NL can only scale the line $1 - \lambda$:
# its response vanishes at $\lambda = 1$, where SNL's learned order-0 term keeps a gain.

# %%
responses = {name: block_response(cap) for name, cap in captures.items()}
fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
for ax, (name, r) in zip(axes, responses.items()):
    plot_response(r, ax=ax, title=f"{name}: {r.label}")
    for ev, g in zip(r.eigenvalues, r.gains_at_eigenvalues):
        ax.scatter(np.real(ev), g, s=8, color="C3", zorder=3)
plt.show()
for name, r in responses.items():
    print(name, r.label, {k: round(v, 3) for k, v in r.stats.items()})

# %% [markdown]
# Where does the signal live? The energy of $Z$ and of the filter output per graph frequency
# (graph Fourier transform in the eigenbasis of $\hat A$; for NL in the eigenbasis of its
# symmetrized operator), as shares of three bands of $[0, 2]$:

# %%
bands = ("low [0, 2/3)", "mid [2/3, 4/3)", "high [4/3, 2]")
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True, layout="constrained")
for ax, (name, r) in zip(axes, responses.items()):
    plot_energy(r.energy_z, ax=ax, label="Z (filter input)")
    plot_energy(r.energy_out, ax=ax, label="F (filter output)")
    ax.set_title(f"{name}: graph-frequency energy ({r.energy_z.basis})")
    ez, eo = r.energy_z.band_fractions(), r.energy_out.band_fractions()
    print(f"{name:4s} Z  : " + "  ".join(f"{b} {v:.2f}" for b, v in zip(bands, ez)))
    print(f"{name:4s} out: " + "  ".join(f"{b} {v:.2f}" for b, v in zip(bands, eo)))
plt.show()

# %% [markdown]
# ## 5. Captured spectra and attention rows
#
# NL's captured operator $\hat A$ has complex eigenvalues $\mu$ in the unit disk (its
# Laplacian's are $\lambda = 1 - \mu$), SNL's Laplacian real ones in $[0, 2]$.
# Below them, rows of $\hat A$ over the $16 \times 16$ feature map of one test digit for
# three query positions.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
plot_spectrum([1 - ev for ev in responses["nl"].eigenvalues], ax=axes[0], operator="normalized",
              title=r"NL: eigenvalues $\mu$ of $\hat A$ (complex)")
plot_spectrum(responses["snl"].eigenvalues, ax=axes[1], bins=50, range=(0, 2), log=True,
              title=r"SNL: eigenvalues of $L_{sym}$ (real, in [0, 2])")
plt.show()

queries = [(4, 8), (8, 8), (12, 5)]
fig, axes = plt.subplots(2, 1 + len(queries), figsize=(11, 5.5), layout="constrained")
for r, (name, cap) in enumerate(captures.items()):
    axes[r, 0].imshow(x[0, 0], cmap="gray")
    axes[r, 0].set_title(f"input (label {int(y_test[0])})")
    axes[r, 0].set_xticks([])
    axes[r, 0].set_yticks([])
    axes[r, 0].set_ylabel(name.upper(), fontsize="large")  # the row's block, at its left
    plot_affinity_rows(cap, queries, image=x[0, 0], ax=axes[r, 1:], cmap="magma")
plt.show()

# %% [markdown]
# ## 6. Everything at once: `analysis.analyze`
#
# One call per model gives one row per nonlocal block: the spectrum (with the eigen-solver
# it chose), affinity metrics, the response class, Tao et al.'s spectrum, the linearized
# stability and the Jacobian norm (notebook 04 explains these), with a `status` and a
# `reason` for anything that could not be computed.

# %%
import pandas as pd

tables = {name: analyze(model, x, labels=y_test[:8], progress=False)
          for name, model in models.items()}
for name, table in tables.items():
    print(f"--- {name}")
    print(table.summary())
columns = ["block", "status", "affinity", "spectrum_method", "lambda_max", "complex_share",
           "asymmetry", "response_class", "stability_radius", "jacobian_full"]
pd.concat([t.to_frame("all") for t in tables.values()])[columns]
