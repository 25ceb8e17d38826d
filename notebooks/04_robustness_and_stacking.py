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
# # 04 — Robustness and stacking: NL, NS and SNL
#
# Tao et al. (NeurIPS 2018) analysed trained nonlocal blocks through the eigenvalues of the
# symmetric part of their weight matrices and reported that adding more nonlocal blocks
# caused convergence problems; the SNL paper argues that its normalized, symmetric affinity
# makes stacking safe. This notebook measures, for three blocks:
#
# 1. **Tao et al.'s spectrum**: eigenvalues of $\operatorname{sym}(G W_1 S)$, the block's
#    effective channel map ($G$ the value projection, $W_1$ the nonlocal weight, $S$ the
#    output BN scale); negative eigenvalues damp.
# 2. **Linearized growth**: with the affinity fixed, on a frequency $\lambda$ the block maps
#    channels by $M(\lambda) = I + G H(\lambda) S$; a stack of $n$ copies sharing the
#    affinity grows like $\max_\lambda \|M(\lambda)^n\|_2$.
# 3. **Jacobian norms** of real stacks of $k = 1, 2, 4, 8$ blocks, estimated by power
#    iteration with autograd.
#
# **What the models are** (stated honestly): parts 1–2 use tiny PreResNet-8 models
# (width 8) with one NL, NS or SNL block, trained for 3 epochs on the digits ($16 \times 16$)
# on the CPU — far from the paper's CIFAR setup, so the numbers illustrate the measurements,
# not the paper's claims. Part 3 uses *untrained* stacks whose output BN scales are set to
# 1 instead of 0 (a new block is the identity; setting the scale to 1 turns its filter on),
# with the default random initialization of every other weight.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from analysis import analyze
from analysis.capture import capture
from analysis.plots import plot_growth
from analysis.robustness import jacobian_spectral_norm, linearized_stability, tao_spectrum
from graphfilters.blocks import make_block
from graphfilters.data import get_dataset
from graphfilters.training import TrainConfig, train

torch.manual_seed(0)
data = get_dataset({"name": "digits", "size": 16})
x_test, _ = data.tensors("test")
x = x_test[:8]
BLOCKS = ("nl", "ns", "snl")

# %% [markdown]
# ## 1. Three briefly trained models

# %%
config = TrainConfig(epochs=3, batch_size=64, lr=0.1, warmup_epochs=0.5, milestones=(2,),
                     device="cpu", amp=False, progress=False)
models, captures = {}, {}
for block in BLOCKS:
    start = time.perf_counter()
    result = train({"depth": 8, "width": 8, "block": block, "block_positions": 1}, config,
                   data=data)
    models[block] = result.model.eval()
    captures[block] = next(iter(capture(result.model, x, progress=False).values()))
    print(f"{block:3s} trained in {time.perf_counter() - start:4.0f} s, "
          f"test accuracy {result.test_accuracy:.3f}, diverged: {result.diverged}")

# %% [markdown]
# ## 2. Tao et al.'s eigenvalues
#
# The eigenvalues of the symmetric part of the effective channel map $G W_1 S$ (with the BN
# scale $S$ of the trained block). Tao et al. found most of them negative in trained NL
# blocks (a damping effect).

# %%
fig, ax = plt.subplots(figsize=(8, 3.5))
for i, block in enumerate(BLOCKS):
    t = tao_spectrum(captures[block])
    c_s, c = captures[block].weights[1].shape
    ax.scatter(t.eigenvalues, np.full(t.eigenvalues.shape, i), s=14)
    print(f"{block:3s} C = {c}, C_s = {c_s}: negative share {t.negative_share:.2f}  "
          f"range [{t.eigenvalues.min():+.3f}, {t.eigenvalues.max():+.3f}]")
ax.axvline(0, color="0.6", lw=0.8)
ax.set_yticks(range(len(BLOCKS)), [b.upper() for b in BLOCKS])
ax.set_xlabel(r"eigenvalues of sym$(G W_1 S)$")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Why exactly half are negative here.** These blocks have the usual bottleneck
# $C_s = C/2$. Then $G W_1 S = U V^T$ with $U = G$ and $V = (W_1 S)^T$ of $C_s$ columns
# each, and its symmetric part $\tfrac12(UV^T + VU^T) = [U\ V]
# \begin{pmatrix} 0 & I/2 \\ I/2 & 0 \end{pmatrix} [U\ V]^T$ is congruent to a matrix
# with eigenvalues $\pm\tfrac12$, $C_s$ of each sign. By Sylvester's law of inertia it
# has exactly $C_s$ positive and $C_s$ negative eigenvalues whenever $[U\ V]$ has full
# rank — for *any* weights. With this bottleneck the negative share is $1/2$ by
# construction and cannot show damping; what the training changes is the magnitudes.

# %% [markdown]
# ## 3. Linearized growth over stacked blocks
#
# $\max_\lambda \|M(\lambda)^n\|_2$ over the captured spectrum, for $n = 1 \dots 10$ copies
# of each trained block sharing one affinity. For SNL (symmetric $\hat A$) this is exact;
# for NL and NS (non-symmetric) the radius is exact and the norm a lower bound (Schur form).

# %%
stability = {block: linearized_stability(captures[block], n_max=10) for block in BLOCKS}
fig, ax = plt.subplots(figsize=(6.5, 4.2))
for block, st in stability.items():
    plot_growth(st, ax=ax, label=f"{block.upper()} (radius {st.radius:.3f})")
ax.set_title(r"linearized growth of n stacked copies (dashed: $\rho^n$)")
plt.tight_layout()
plt.show()
for block, st in stability.items():
    print(f"{block:3s} radius {st.radius:.4f} at lambda = {st.argmax_lambda:.3f}; {st.how}")

# %% [markdown]
# ## 4. Jacobian norms of real stacks
#
# Stacks of $k$ independent blocks (NL, SNL) or one nonlocal stage of $k$ units sharing
# its affinity (NS, its native form), on the 8-channel $16 \times 16$ features of the
# trained NL model's first stage. Untrained weights, output BN scale set to 1. The
# spectral norm of the Jacobian of the whole stack is estimated at those features.

# %%
features = captures["nl"].input  # (8, C, 16, 16): the input of the NL model's block
C = features.shape[1]


def stack(block, k, seed=0):
    torch.manual_seed(seed)
    if block == "ns":
        net = make_block("ns", C, n_units=k)
    else:
        net = torch.nn.Sequential(*[make_block(block, C) for _ in range(k)])
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    return net.eval()


depths = (1, 2, 4, 8)
norms = {block: [jacobian_spectral_norm(stack(block, k), features[:2], n_iter=30)
                 for k in depths] for block in BLOCKS}
fig, ax = plt.subplots(figsize=(6, 4))
for block, values in norms.items():
    ax.semilogy(depths, values, marker="o", label=block.upper())
ax.set_xlabel("blocks in the stack k")
ax.set_ylabel("Jacobian spectral norm")
ax.legend()
plt.tight_layout()
plt.show()
for block, values in norms.items():
    print(f"{block:3s} " + "  ".join(f"k={k}: {v:.3f}" for k, v in zip(depths, values)))

# %% [markdown]
# ## 5. The same numbers from `analysis.analyze`
#
# `analyze` computes all of the above (and the affinity metrics) for every nonlocal block
# of a model in one call; here, the three trained models on the same 8 test images.

# %%
import pandas as pd

frames = [analyze(models[b], x, progress=False).to_frame() for b in BLOCKS]
columns = ["block", "status", "spectrum_method", "complex_share", "tao_negative_share",
           "tao_min", "tao_max", "stability_radius", "stability_norm", "jacobian_norm",
           "noise_gain", "affinity_gain"]
pd.concat(frames, ignore_index=True)[columns]

# %% [markdown]
# ## Reading the results
#
# - The linearized growth is governed by $\max_\lambda \rho(M(\lambda))$: above 1, a stack
#   of copies sharing the affinity eventually amplifies some frequency geometrically. The
#   channel maps $M(\lambda)$ need not be normal, so for small $n$ the growth can exceed
#   $\rho^n$ (the dashed lines).
# - For SNL the decomposition over frequencies is exact (symmetric $\hat A$, orthonormal
#   eigenvectors, $\mu \in [-1, 1]$), so its curve *is* the growth of the linearized stack.
#   For NL and NS the softmax operator is non-symmetric with complex eigenvalues: the
#   radius is exact but the plotted growth is only a lower bound — the non-normality of
#   $\hat A$ itself can add transient growth that no per-frequency number shows.
# - The Jacobian norms of real stacks include everything the linearization leaves out (the
#   affinity depends on the input, ReLUs, BN shifts).
# - These are tiny, briefly trained or untrained models: treat the numbers as a
#   demonstration of the measurements. Run the same cells on your own checkpoints (see
#   `docs/howto-analyse-your-model.md`) for real conclusions.
