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
# # 05 — Graph-filter view of a vision transformer
#
# A self-attention layer is a nonlocal block: each head builds a row-stochastic affinity
# $A_h = \operatorname{softmax}_{row}(Q_h K_h^T/\sqrt d)$ over the tokens and filters the
# values with it, $F = [A_1 Z_1, \dots, A_H Z_H]\, W_o$. `analysis.capture` reads Hugging Face
# `transformers`, timm-style and `nn.MultiheadAttention` attention **without adapters**, and
# reads a transformer layer as what it computes: for a pre-LN layer (ViT) the captured map is
# the residual branch $x \mapsto x + \operatorname{Attn}(\operatorname{LN}(x))$.
#
# This notebook captures a small ViT (Hugging Face `ViTModel`, random weights, no download),
# and shows the spectra of every layer and head, the per-head frequency responses of the
# layers, and their stability.
#
# **What the model is** (stated honestly): a 4-layer ViT (width 64, 4 heads, $32\times 32$
# images in $8\times 8$ patches: $N = 17$ tokens with the CLS token) with *random* weights
# (query/key weights scaled up so that the random heads are not uniform) and random inputs:
# the numbers illustrate the measurements, not what trained ViTs do; run the same cells on
# your own trained model.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from transformers import ViTConfig, ViTModel

from analysis import analyze, block_response, capture, spectrum
from analysis.plots import plot_response

torch.manual_seed(0)
config = ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                   intermediate_size=128, image_size=32, patch_size=8)
model = ViTModel(config).eval()          # default attn_implementation: fused SDPA
# Random initial weights (std 0.02) give almost uniform attention. To see heads that differ,
# sharpen the random maps: scale the query/key weights, more in deeper layers.
with torch.no_grad():
    for i, layer in enumerate(model.layers):
        layer.attention.q_proj.weight.mul_(6.0 * (i + 1))
        layer.attention.k_proj.weight.mul_(6.0 * (i + 1))
batch = {"pixel_values": torch.randn(4, 3, 32, 32)}

# %% [markdown]
# ## 1. Capture: one affinity per head, the layer around it
#
# `capture` finds the attention modules (the `transformers` recognizer), recomputes each
# head's map from $q$ and $k$ (the fused kernel never forms it) and checks nothing else:
# we compare with the library's own `output_attentions` (eager implementation) here.

# %%
caps = capture(model, batch, heads="keep", progress=False)
model.config._attn_implementation = "eager"
with torch.no_grad():
    reference = model(**batch, output_attentions=True).attentions
model.config._attn_implementation = "sdpa"
for (path, cap), att in zip(caps.items(), reference):
    err = float((cap.affinity.dense() - att).abs().max())
    print(f"{path}: batch shape {cap.affinity.batch_shape}, N = {cap.n}, "
          f"max |A - output_attentions| = {err:.1e}")
first = next(iter(caps.values()))
print(first.info["layer"], "| LayerNorm:", first.info["layernorm"])
print(first.info["layernorm_fold"])

# %% [markdown]
# ## 2. Spectra per layer and head
#
# Each $A_h$ is row-stochastic: its eigenvalues lie in the unit disk, $\mu = 1$ always (the
# constant vector), and the Laplacian frequencies are $\lambda = 1 - \mu$. A head that
# attends almost uniformly has all other eigenvalues near 0 ($\lambda \approx 1$): it keeps
# only the mean (a rank-one map); a head that attends to itself keeps eigenvalues near 1.

# %%
fig, axes = plt.subplots(1, len(caps), figsize=(3.2 * len(caps), 3.2), sharey=True)
rows = []
for ax, (path, cap) in zip(axes, caps.items()):
    spec = spectrum(cap.affinity, "normalized", "rw", progress=False)
    for h in range(config.num_attention_heads):
        per_sample = [spec.eigenvalues[s * config.num_attention_heads + h]
                      for s in range(cap.n_samples)]
        mu = np.concatenate(per_sample)
        ax.plot(mu.real, mu.imag, ".", ms=4, label=f"head {h}")
        # |mu_2|: how much more than the mean the head keeps (0: pure averaging)
        second = max(float(np.sort(np.abs(m))[-2]) for m in per_sample)
        rows.append((path, h, float(np.abs(mu).max()), second))
    t = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(t), np.sin(t), color="0.7", lw=0.8)
    ax.set_aspect("equal")
    ax.set_title(path.replace(".attention", ""), fontsize="small")
    ax.set_xlabel(r"Re $\mu$")
axes[0].set_ylabel(r"Im $\mu$")
axes[-1].legend(fontsize="x-small")
fig.tight_layout()
print("layer, head, |mu|_max, second largest |mu| (max over samples)")
for r in rows:
    print(f"{r[0]:>20} {r[1]} {r[2]:.3f} {r[3]:.3f}")

# %% [markdown]
# ## 3. Responses: what each head does to each frequency
#
# On an eigenvector of $A_h$ with eigenvalue $\mu$, head $h$'s share of the layer maps the
# channel vector by $M_h(\lambda) = I + (1 - \lambda) K_h$, $K_h = G_h W_{o,h}$ (value
# projection with the LayerNorm folded in at its captured statistics, times the head's rows
# of the output projection). `block_response` classifies the head average of
# $\sigma_1(M_h(\lambda))$; thin lines are the heads. (The filter alone,
# $H(\lambda) = (1 - \lambda) W_o$, is a notch at $\lambda = 1$ for *any* weights: that class
# is forced by the construction and `block_response` flags it when no residual is present.)

# %%
mean_caps = capture(model, batch, progress=False)
fig, axes = plt.subplots(1, len(mean_caps), figsize=(3.2 * len(mean_caps), 3.0), sharey=True)
for ax, (path, cap) in zip(axes, mean_caps.items()):
    resp = block_response(cap)
    plot_response(resp, ax=ax, title=f"{path.split('.')[1]}: {resp.label}")
    print(path, "| layer class:", resp.label, "| heads:", resp.head_labels,
          "| filter alone:", resp.filter_label)
fig.tight_layout()

# %% [markdown]
# ## 4. Stability and the whole table
#
# `analyze` gives one row per layer: spectrum metrics, the response class, Tao et al.'s
# spectrum, the linearized stability of the residual layer and the norm of the Jacobian of
# the exact layer map $x \mapsto x + \operatorname{Attn}(\operatorname{LN}(x))$ (power
# iteration with autograd on the re-called module). A radius near 1 means the residual
# branch barely changes any frequency.

# %%
table = analyze(model, batch, progress=False)
print(table.summary())
frame = table.to_frame("all")
print(frame[["path", "status", "response_class", "stability_radius", "jacobian_full",
             "noise_gain"]])

# %% [markdown]
# ## Caveats
#
# - **LayerNorm.** The Jacobian and noise measures use the exact layer. The per-frequency
#   maps (responses, linearized stability) need a linear map: the pre-LN LayerNorm is
#   linearized at the captured statistics and folded into the value projection,
#   $G = \bar s\, P \operatorname{diag}(\gamma) G_v$ ($P$ removes the channel mean,
#   $\bar s$ the mean of the tokens' $1/\sigma_i$): exact only when the tokens share one
#   scale. For post-LN layers (BERT) the LayerNorm after the sum is left out of those maps.
# - **Heads.** With `heads="mean"` the affinity is the head average (what
#   `average_attn_weights=True` returns); the spectra of one averaged matrix are not the
#   heads' spectra. Use `heads="keep"` for per-head spectra; the layer responses are always
#   per head (each head's own $K_h$), then averaged.
# - **Non-symmetric affinities.** Softmax maps are not symmetric: the per-frequency
#   analysis uses eigenvalues (or Schur form), so norms over frequencies are lower bounds
#   of the frozen layer's norm (see the stability notes in each row).
# - **Random weights** here: trained ViTs have sharper, more varied heads.
