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
# # The paper's pictures, made by the toolkit
#
# The figures of *Unifying Nonlocal Blocks for Neural Networks* (Zhu et al., ICCV 2021), each
# drawn here by the toolkit from the code shown above it. The page is executed when the site
# is built, so every figure is what the code does today. Nothing is trained and nothing is
# downloaded: the photograph is one of the two that ship with scikit-learn, and the blocks'
# embeddings are fixed random projections (seeded), as in freshly initialized blocks.
# Open the source (`docs/gallery.py`, jupytext) in Jupyter to change a picture.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_images

from analysis.capture import Capture
from analysis.plots import plot_affinity_rows, plot_block_responses, plot_spectrum
from graphfilters import kernels
from graphfilters.specs import BLOCKS

H, W = 30, 40  # the feature map: N = 1200 nodes
N = H * W
photo = load_sample_images().images[0]  # "china.jpg", 427 x 640
image = F.interpolate(torch.tensor(photo, dtype=torch.float64).permute(2, 0, 1)[None] / 255,
                      size=(H, W), mode="area")[0].permute(1, 2, 0).numpy()

# Node features: colour and position, standardized; fixed random projections for the blocks.
yy, xx = np.mgrid[0:H, 0:W]
X = np.concatenate([image.reshape(N, 3), np.stack([yy.ravel() / H, xx.ravel() / W], 1)], 1)
X = (X - X.mean(0)) / X.std(0)
rng = np.random.default_rng(0)
C_s, m = 8, 8
W_theta = rng.standard_normal((5, C_s)) / np.sqrt(5)
W_phi = rng.standard_normal((5, C_s)) / np.sqrt(5)  # independent, as at initialization
theta, phi = X @ W_theta, X @ W_phi

# %% [markdown]
# ## Figure 2: what each block attends to
#
# For three query pixels (★: on the pagoda, in the sky, in the trees), the row of the operator
# $\hat A$ each block multiplies by, over the photograph. NL, A² and DNL use their row-stochastic
# affinities; SNL the symmetric normalized $D^{-1/2}\operatorname{sym}(M)D^{-1/2}$. CGNL's
# nodes are (channel, position) pairs, so its row is summed over the channels of the keys and
# averaged over those of the query (an exact coarse-graining of its low-rank kernel).

# %%
def cgnl_pixel_affinity(theta, phi, gamma=0.25, order=2):
    """CGNL's Taylor-RBF kernel on the (channel, position) graph, coarse-grained to pixels."""
    k = kernels.taylor_rbf(theta.T.ravel(), phi.T.ravel(), order=order, gamma=gamma)
    P, Q = (np.asarray(f).reshape(C_s, N, -1) for f in (k.P, k.Q))
    return kernels.LowRankAffinity(P.mean(0)[None], Q.sum(0)[None])


affinities = {
    "NL": kernels.embedded_gaussian(theta[None], phi[None]),  # softmax(Θ Φᵀ), as in NL
    "A²": kernels.double_attention(X[None] @ rng.standard_normal((5, m)),
                                   X[None] @ rng.standard_normal((5, m))),
    "CGNL": cgnl_pixel_affinity(theta, phi),
    "DNL": kernels.disentangled(theta[None], phi[None], X[None] @ rng.standard_normal(5),
                                scale=1 / np.sqrt(C_s)),
    "SNL": kernels.relu_dot(theta[None], phi[None]).symmetrized(),
}
block_of = {"NL": "nl", "A²": "a2", "CGNL": "cgnl", "DNL": "dnl", "SNL": "snl"}
queries = [(9, 12), (4, 32), (25, 20)]

fig, axes = plt.subplots(len(queries), len(affinities), figsize=(15, 6.0), layout="constrained")
for col, (name, aff) in enumerate(affinities.items()):
    cap = Capture(name, "adapter", BLOCKS[block_of[name]].kernel, aff,
                  BLOCKS[block_of[name]].normalization, spatial_shape=(H, W), n_samples=1)
    plot_affinity_rows(cap, queries, image=image, ax=axes[:, col], alpha=0.6)
    axes[0, col].set_title(name, fontsize="x-large")
    for row in range(1, len(queries)):
        axes[row, col].set_title("")
for row, q in enumerate(queries):
    axes[row, 0].set_ylabel(f"query {q}")
fig.suptitle(r"rows of $\hat A$ over the photograph, one block per column")
plt.show()

# %% [markdown]
# ## Complex against real spectra
#
# NL's softmax affinity is row-stochastic but not symmetric: its eigenvalues $\mu$ are complex,
# in the unit disk, and there is no real frequency axis. DNL adds a rank-one unary term to the
# same kind of affinity and stays complex. SNL's symmetric normalized affinity has a real
# Laplacian spectrum, bounded by $\lambda_{max} \le 2$ on any graph; at most $2 C_s$
# eigenvalues of $\hat A$ are nonzero, so all but $2 C_s$ Laplacian eigenvalues equal 1 (the
# tall bar; the count axis is logarithmic).

# %%
mu_nl = affinities["NL"].normalized("rw").eigvals()[0]
mu_dnl = affinities["DNL"].normalized("rw").eigvals()[0]
lam_snl = affinities["SNL"].laplacian_eigvals("sym")[0]

fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
plot_spectrum(mu_nl, ax=axes[0], operator="normalized", title=r"NL: eigenvalues $\mu$ of $A$")
plot_spectrum(mu_dnl, ax=axes[1], operator="normalized",
              title=r"DNL: eigenvalues $\mu$ of $\hat A$")
plot_spectrum(lam_snl, ax=axes[2], bins=60, range=(0, 2), log=True,
              title=r"SNL: eigenvalues $\lambda$ of $L_{sym}$")
plt.show()
print(f"NL : max |Im mu| = {np.abs(mu_nl.imag).max():.3f}   "
      f"DNL: max |Im mu| = {np.abs(mu_dnl.imag).max():.3f}   "
      f"SNL: lambda in [{lam_snl.min():.1e}, {lam_snl.max():.3f}], real")

# %% [markdown]
# ## The frequency response of every block
#
# Each block is a filter in the Laplacian, polynomial or (Cayley, ARMA) rational; its frequency
# response $h(\lambda)$ over $\lambda \in [0, 2]$ is read off its derivation
# (`graphfilters.symbolic.response`). Blocks with one weight (NL, NS, A², CGNL, CC, DNL) have one
# fixed shape times a learned scale, drawn for unit weight; SNL, gSNL, Cayley and ARMA have a
# free weight per term (and a zoom or pole), so one block can be low-pass, high-pass or
# band-pass (a few choices drawn).

# %%
fig, axes = plot_block_responses()            # every row of the block table
plt.show()

# %% [markdown]
# ## Today's attention as graph filters
#
# The attention table's rows, derived and read back symbolically: GFSA's per-head polynomial
# $p(\mu) = w_0 + w_1\mu + w_K(\mu + (K - 1)(\mu^2 - \mu))$ on the eigenvalues $\mu$ of a
# softmax affinity ($K = 4$, as the released code), and AttnScale's $(1 + \lambda_h)\mu$ on
# every eigenvalue but the DC one, which it keeps at 1 (the black dot). Both read from
# `identify(derive(name).derived)`; the real interval $[-1, 1]$ holds the real eigenvalues
# (complex ones lie in the unit disk).

# %%
import sympy as sp

from graphfilters.symbolic import derive, identify
from graphfilters.symbolic import symbols as S

mu = np.linspace(-1, 1, 201)
fig, (ax_g, ax_s) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
gfsa = identify(derive("gfsa").derived).scalars            # {power: scalar}
for w_K in (-0.5, 0.0, 0.5, 1.0):
    p = sum(c.subs({S.w_0: 0, S.w_1: 1, S.w_K: w_K, S.K: 4}) * sp.Symbol("x")**e
            for e, c in gfsa.items())
    ax_g.plot(mu, sp.lambdify(sp.Symbol("x"), p)(mu), label=rf"$w_K = {w_K:g}$")
ax_g.set(title=r"GFSA, $K = 4$, $w_0 = 0$, $w_1 = 1$", xlabel=r"eigenvalue $\mu$ of $A$",
         ylabel=r"gain $p(\mu)$")
ax_g.legend(fontsize="small")
attn = identify(derive("attnscale").derived)               # words A and P, DC gain 1
for lam in (-0.5, 0.0, 0.5, 1.0):
    ax_s.plot(mu, float(attn.scalars[("A",)].subs(S.lambda_h, lam)) * mu,
              label=rf"$\lambda_h = {lam:g}$")
ax_s.plot([1], [float(attn.dc_gain())], "o", color="k", label="DC, every $\\lambda_h$")
ax_s.set(title=r"AttnScale: $(1 + \lambda_h)\mu$, DC kept at 1",
         xlabel=r"eigenvalue $\mu$ of $A$ (non-DC)", ylabel="gain")
ax_s.legend(fontsize="small")
for ax in (ax_g, ax_s):
    ax.axhline(0, color="0.8", lw=0.8)
    ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## Does SNL make stacking robust?
#
# The stacking-robustness figure comes from a training sweep (blocks stacked 1 to 8 deep,
# several seeds), too long to run while the site is built. It is on its own page, *Does SNL
# make stacking robust?* (`stacking.md`), made by `python -m analysis sweep`; when that page
# is part of this site, its figures are shown here too, with the link.

# %%
from pathlib import Path

from IPython.display import Image, Markdown, display

import graphfilters

docs = Path(graphfilters.__file__).resolve().parents[1] / "docs"
stacking = docs / "stacking.md"
if stacking.is_file():
    display(Markdown("See [Does SNL make stacking robust?](stacking.md) for the sweep."))
    import re

    for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", stacking.read_text()):
        if (docs / target).is_file():
            display(Image(filename=str(docs / target)))
else:
    display(Markdown("*The stacking page is not part of this build.*"))
