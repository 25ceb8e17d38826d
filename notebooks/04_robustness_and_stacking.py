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
# 1. **Damping**: Tao et al.'s spectrum of $\operatorname{sym}(G W_1 S)$ ($G$ the value
#    projection, $W_1$ the nonlocal weight, $S$ the output BN scale), flagged where the
#    bottleneck forces it, and the sign-correct per-frequency measure: the eigenvalues of the
#    symmetric part of the step $K(\lambda) = G H(\lambda) S$ a residual block adds on the
#    graph frequency $\lambda$.
# 2. **Exact growth with the affinity frozen**: the spectral norm $\|\mathcal M^n\|_2$ of
#    $n$ copies of the block map $X \mapsto X + \sum_k B_k(\hat A) X G W_k S$ sharing the
#    affinity, computed matrix-free (power iteration on the map and its adjoint), next to
#    the per-frequency value, which is only a lower bound for a non-symmetric affinity.
# 3. **Full Jacobians** (affinity recomputed from the input, what training sees) of one
#    unit, of real stages of $k$ units sharing one affinity and of stacks of $k$ independent
#    blocks, against the frozen ones: the affinity's share
#    $\|J_{full} - J_{fix}\| / \|J_{fix} - I\|$; and the backbone's own residual units as
#    the reference.
#
# **What the models are** (stated honestly): parts 1–2 use tiny PreResNet-8 models
# (width 8) with one NL, NS or SNL block, trained for 3 epochs on the digits ($16 \times 16$)
# on the CPU — far from the paper's CIFAR setup, so the numbers illustrate the measurements,
# not the paper's claims. Part 3's stacks are *untrained*, with output BN scales set to 1
# instead of 0 (a new block is the identity; setting the scale to 1 turns its filter on),
# and the default random initialization of every other weight.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from analysis import analyze
from analysis.capture import capture
from analysis.plots import plot_growth
from analysis.robustness import (
    block_function,
    damping,
    jacobians,
    linearized_stability,
    stack_jacobians,
    stage_jacobians,
    tao_spectrum,
)
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
# ## 2. Damping: Tao et al.'s eigenvalues and the sign-correct measure
#
# Left: the eigenvalues of $\operatorname{sym}(G W_1 S)$ (with the trained BN scale $S$).
# Tao et al. found most of them negative in trained NL blocks (a damping effect).

# %%
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
damp = {}
for i, block in enumerate(BLOCKS):
    t = tao_spectrum(captures[block])
    damp[block] = damping(captures[block])
    c_s, c = captures[block].weights[1].shape
    ax.scatter(t.eigenvalues, np.full(t.eigenvalues.shape, i), s=14)
    d = damp[block]
    ax2.plot(np.real(d.frequencies), d.negative_mass - d.positive_mass, ".", ms=3,
             label=f"{block.upper()}: {d.share:.0%} of the frequencies damp")
    print(f"{block:3s} C = {c}, C_s = {c_s}: Tao negative share {t.negative_share:.2f}"
          f"{' (forced by the rank ' + str(t.rank) + ')' if t.forced else ''}; "
          f"damping: {d.share:.0%} of the frequencies, negative eigen-mass {d.mass:.0%}")
ax.axvline(0, color="0.6", lw=0.8)
ax.set_yticks(range(len(BLOCKS)), [b.upper() for b in BLOCKS])
ax.set_xlabel(r"eigenvalues of sym$(G W_1 S)$ (Tao; share forced by the bottleneck)")
ax2.axhline(0, color="0.6", lw=0.8)
ax2.set_xlabel(r"graph frequency $\mathrm{Re}\,\lambda$")
ax2.set_ylabel(r"$-\mathrm{tr}\,\mathrm{sym}\,K(\lambda)$ (> 0: damps)")
ax2.legend(fontsize="small")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Why exactly half of Tao's eigenvalues are negative here.** These blocks have the usual
# bottleneck $C_s = C/2$. Then $G W_1 S = U V^T$ with $U = G$ and $V = (W_1 S)^T$ of $C_s$
# columns each, and its symmetric part $\tfrac12(UV^T + VU^T) = [U\ V]
# \begin{pmatrix} 0 & I/2 \\ I/2 & 0 \end{pmatrix} [U\ V]^T$ is congruent to a matrix
# with eigenvalues $\pm\tfrac12$, $C_s$ of each sign. By Sylvester's law of inertia it
# has exactly $C_s$ positive and $C_s$ negative eigenvalues whenever $[U\ V]$ has full
# rank — for *any* weights: the share is flagged *forced*. Tao's map also misses the sign
# of NS, whose tied filter $H(\lambda) = -\lambda W$ damps with a *positive* $G W S$. The
# sign-correct measure (right) includes $H(\lambda)$: on the frequency $\lambda$ the step
# adds $x K(\lambda)$ and $\|x(I + K)\|^2 = \|x\|^2 + 2 x \operatorname{sym}(K) x^T +
# \|xK\|^2$, so a negative trace of $\operatorname{sym} K(\lambda)$ means the frequency is
# damped on balance.

# %% [markdown]
# ## 3. Exact growth of stacked copies sharing the frozen affinity
#
# $\|\mathcal M^n\|_2$ for $n = 1 \dots 10$ copies of each trained block sharing one
# affinity (solid, exact); dotted where it differs: the per-frequency value
# $\max_\lambda \|M(\lambda)^n\|_2$, exact for SNL's symmetric $\hat A$ but only a lower
# bound (Schur diagonal blocks) for NL and NS.

# %%
stability = {block: linearized_stability(captures[block], n_max=10) for block in BLOCKS}
fig, ax = plt.subplots(figsize=(6.5, 4.2))
for block, st in stability.items():
    plot_growth(st, ax=ax, label=f"{block.upper()} (radius {st.radius:.3f})",
                show_lower_bound=True)
ax.set_title(r"exact growth of n stacked copies (dashed: $\rho^n$, dotted: lower bound)")
plt.tight_layout()
plt.show()
for block, st in stability.items():
    print(f"{block:3s} growth@10 {st.growth[-1]:.3f} (lower bound {st.growth_lower_bound[-1]:.3f}"
          f", ratio {st.growth[-1] / st.growth_lower_bound[-1]:.2f}); {st.how}")

# %% [markdown]
# ## 4. Full and frozen Jacobians: unit, stages and stacks
#
# First the trained unit itself; then stages of $k$ units sharing the affinity of the stage
# input (each block's native stage) and stacks of $k$ independent blocks, on the 8-channel
# $16 \times 16$ features of the trained NL model's first stage. Untrained weights, output BN
# scale set to 1.

# %%
for block in BLOCKS:
    fn, x0 = block_function(captures[block], 0)
    rep = jacobians(fn, x0, k=3, tol=1e-6)
    print(f"{block:3s} unit: |J| full {rep.full.norm:.3f} (top 3: "
          f"{', '.join(f'{v:.3f}' for v in rep.full.values)}), frozen {rep.frozen.norm:.3f}, "
          f"affinity share {rep.affinity_share:.2f}")
reference = analyze(models["snl"], x, progress=False).backbone
ref = np.array([b["jacobian_full"] for b in reference])
print(f"backbone residual units: |J| full median {np.median(ref):.3f}, "
      f"range {ref.min():.3f}-{ref.max():.3f}")

# %%
features = captures["nl"].input[:1]  # the input of the NL model's block
C = features.shape[1]


def with_unit_scale(net):
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    return net.eval()


def stage(block, k, seed=0):
    torch.manual_seed(seed)
    return with_unit_scale(make_block(block, C, n_units=k))


def independent(block, k, seed=0):
    torch.manual_seed(seed)
    return [with_unit_scale(make_block(block, C)) for _ in range(k)]


depths = (1, 2, 4)
results = {}
for block in BLOCKS:
    results[(block, "stage")] = [stage_jacobians(stage(block, k), features, k=1, tol=1e-5)
                                 for k in depths]
    results[(block, "stack")] = [stack_jacobians(independent(block, k), features, k=1,
                                                 tol=1e-5) for k in depths]
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for (block, kind), reps in results.items():
    ls = "-" if kind == "stage" else "--"
    axes[0].semilogy(depths, [r.full.norm for r in reps], ls, marker="o",
                     label=f"{block.upper()} {kind}")
    axes[1].plot(depths, [r.affinity_share for r in reps], ls, marker="o",
                 label=f"{block.upper()} {kind}")
axes[0].set_ylabel(r"$\|J_{full}\|_2$ (affinity recomputed)")
axes[1].set_ylabel(r"affinity share $\|J_{full} - J_{fix}\| / \|J_{fix} - I\|$")
for a in axes:
    a.set_xlabel("units k")
    a.legend(fontsize="small")
plt.tight_layout()
plt.show()
for (block, kind), reps in results.items():
    print(f"{block:3s} {kind}: " + "  ".join(
        f"k={k}: full {r.full.norm:.3f} / frozen {r.frozen.norm:.3f}"
        for k, r in zip(depths, reps)))

# %% [markdown]
# ## 5. The same numbers from `analysis.analyze`
#
# `analyze` computes all of the above (and the affinity metrics) for every nonlocal block
# of a model in one call; here, the three trained models on the same 8 test images.

# %%
import pandas as pd

tables = {b: analyze(models[b], x, progress=False) for b in BLOCKS}
columns = ["block", "status", "spectrum_method", "complex_share", "tao_negative_share",
           "tao_forced", "damping_share", "stability_radius", "stability_norm",
           "stability_norm_lower_bound", "jacobian_full", "jacobian_frozen", "affinity_share",
           "noise_gain"]
pd.concat([t.to_frame("all") for t in tables.values()], ignore_index=True)[columns]

# %% [markdown]
# ## Reading the results
#
# The statements below are computed from the numbers above.

# %%
snl_g, nl_g = stability["snl"].growth[-1], stability["nl"].growth[-1]
print(f"- exact growth@10: SNL {snl_g:.3f}, NL {nl_g:.3f}, NS {stability['ns'].growth[-1]:.3f}"
      f" -> SNL grows {'less' if snl_g < nl_g else 'more'} than NL in this run.")
for block in ("nl", "ns"):
    st = stability[block]
    print(f"- {block.upper()}: the per-frequency bound understates the exact growth@10 by "
          f"x{st.growth[-1] / st.growth_lower_bound[-1]:.2f}.")
for block in BLOCKS:
    r = results[(block, "stage")][-1]
    print(f"- {block.upper()} stage of {depths[-1]} units: |J| full {r.full.norm:.3f}, frozen "
          f"{r.frozen.norm:.3f}, affinity share {r.affinity_share:.2f}.")
print("- damping (share of frequencies): " + ", ".join(
    f"{b.upper()} {damp[b].share:.0%}" for b in BLOCKS) + "; Tao's share is forced for "
      + ", ".join(b.upper() for b in BLOCKS if tables[b][0].tao_forced) + ".")

# %% [markdown]
# - The frozen growth is the exact norm of the linearized stack: above 1, copies sharing the
#   affinity amplify; for small $n$ it can exceed $\rho^n$ (dashed lines) because the maps
#   are not normal.
# - For non-symmetric (softmax) affinities the per-frequency values are only lower bounds;
#   the dotted curves show by how much they miss here.
# - The full Jacobian includes the affinity's dependence on the input, which the frozen map
#   leaves out; the affinity share says how large that part is.
# - These are tiny, briefly trained or untrained models: treat the numbers as a
#   demonstration of the measurements. Run the same cells on your own checkpoints (see
#   `docs/howto-analyse-your-model.md`) for real conclusions.
