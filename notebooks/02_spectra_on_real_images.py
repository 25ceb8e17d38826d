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
# # 02 — Affinities and spectra on real images
#
# The affinity $A$ of a nonlocal block is a graph over the pixels of a feature map. Here we
# build three of them from real photographs (the two sample images that ship with
# scikit-learn: nothing is downloaded), downscaled to $24 \times 32$ ($N = 768$ nodes):
#
# | block | affinity | operator the filter uses |
# |---|---|---|
# | NL | $\operatorname{softmax}_{row}(\Theta\Phi^T/\sqrt{C_s})$ | $A$ itself (row-stochastic) |
# | A² | $S_d S_g^T$, $m = 8$ descriptors | $A$ itself (row-stochastic, rank $\le m$) |
# | SNL | $\operatorname{sym}(\operatorname{ReLU}(\Theta)\operatorname{ReLU}(\Phi)^T)$ | $\hat A = D^{-1/2} \operatorname{sym}(M) D^{-1/2}$ |
#
# **What is and is not shown.** The node features are the pixel colour and position; the
# embeddings $\Theta = X W_\theta$, $\Phi = X W_\phi$ use *fixed random* $1 \times 1$
# projections (seeded), as in a freshly initialized block — not a trained one. The
# structural facts below (complex vs real spectra, $\lambda_{max} \le 2$, rank) hold for
# any weights; what a *trained* block attends to is in notebook 03.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_images

from analysis.capture import Capture
from analysis.plots import plot_affinity_rows, plot_spectrum
from graphfilters import graph, kernels

H, W = 24, 32
N = H * W
rng = np.random.default_rng(0)


def downscale(image, size=(H, W)):
    t = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None] / 255
    return F.interpolate(t, size=size, mode="area")[0].permute(1, 2, 0).numpy()


samples = load_sample_images()
images = {name: downscale(im) for name, im in zip(("china", "flower"), samples.images)}
fig, axes = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
for ax, (name, im) in zip(axes, images.items()):
    ax.imshow(im)
    ax.set_title(f"{name}, {H}x{W}")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Node features and the three affinities
#
# Each pixel is a node with features (r, g, b, y, x), standardized. One seeded random
# projection to $C_s = 16$ channels gives $\Theta$ and $\Phi$ (correlated, as
# $W_\phi = W_\theta + \text{noise}$, so the pictures have some structure); A²'s gather and
# distribute logits are two more projections to $m = 8$.

# %%
C_s, m = 16, 8
W_theta = rng.standard_normal((5, C_s)) / np.sqrt(5)
W_phi = W_theta + 0.5 * rng.standard_normal((5, C_s)) / np.sqrt(5)
W_gather, W_dist = rng.standard_normal((2, 5, m))


def node_features(im):
    yy, xx = np.mgrid[0:H, 0:W]
    X = np.concatenate([im.reshape(N, 3), np.stack([yy.ravel() / H, xx.ravel() / W], 1)], 1)
    return (X - X.mean(0)) / X.std(0)


def affinities(im, batch=False):
    X = node_features(im)[None] if batch else node_features(im)  # (1, N, 5) for a batch
    theta, phi = X @ W_theta, X @ W_phi
    return {
        "NL": kernels.embedded_gaussian(theta, phi, scale="sqrt"),
        "A2": kernels.double_attention(X @ W_gather, X @ W_dist),
        "SNL": kernels.relu_dot(theta, phi).symmetrized(),
    }


aff = affinities(images["flower"])
for name, a in aff.items():
    print(f"{name:4s} {type(a).__name__:16s} N = {a.n}  symmetric = {a.symmetric}")

# %% [markdown]
# None of them is stored as an $N \times N$ matrix: NL keeps $\Theta$ and $\Phi$ and
# computes softmax rows on the fly, A² and SNL are low-rank factorizations. The operator each
# filter multiplies by is the *normalized* affinity: row-stochastic for NL and A² (rows sum
# to one, $D = I$), $D^{-1/2} M D^{-1/2}$ for SNL.

# %%
ops = {
    "NL": aff["NL"].normalized("rw"),
    "A2": aff["A2"].normalized("rw"),
    "SNL": aff["SNL"].normalized("sym"),
}
ones = np.ones((N, 1))
for name, op in ops.items():
    dense = op.dense()
    print(f"{name:4s} row sums in [{(dense @ ones).min():.3f}, {(dense @ ones).max():.3f}]"
          f"   ||A - A^T|| / ||A|| = {np.linalg.norm(dense - dense.T) / np.linalg.norm(dense):.3f}")

# %% [markdown]
# ## Spectra
#
# **NL: complex.** A row-stochastic, non-symmetric matrix has eigenvalues $\mu$ in the unit
# disk, complex in general; the Laplacian $L_{rw} = I - A$ has $\lambda = 1 - \mu$ in the
# disk $|\lambda - 1| \le 1$. There is no real frequency axis to speak of. Here the
# imaginary parts are small because $W_\phi$ is close to $W_\theta$; with an independent
# $W_\phi$ they are larger (second panel).
#
# **A²: rank $\le m$.** All but $m$ eigenvalues are zero; the nonzero ones come from an
# $m \times m$ problem.
#
# **SNL: real, in $[0, 2]$.** $\hat A$ is symmetric, so $L_{sym} = I - \hat A$ has a real
# spectrum, and the normalization bounds it by 2 on any graph; at most $2C_s$ eigenvalues
# of $\hat A$ are nonzero, so all but $2C_s$ Laplacian eigenvalues equal 1 (the tall bar;
# note the log scale).

# %%
mu_nl = ops["NL"].eigvals()
mu_a2 = ops["A2"].eigvals()
lam_snl = aff["SNL"].laplacian_eigvals("sym")
# The same NL kernel with an independent W_phi (Theta and Phi uncorrelated).
X = node_features(images["flower"])
W_phi_indep = rng.standard_normal((5, C_s)) / np.sqrt(5)
mu_nl_indep = kernels.embedded_gaussian(X @ W_theta, X @ W_phi_indep, scale="sqrt").eigvals()

fig, axes = plt.subplots(1, 4, figsize=(17, 4), layout="constrained")
plot_spectrum(mu_nl, ax=axes[0], operator="normalized",
              title=r"NL, $W_\phi \approx W_\theta$: eigenvalues of A")
plot_spectrum(mu_nl_indep, ax=axes[1], operator="normalized", title=r"NL, independent $W_\phi$")
plot_spectrum(mu_a2, ax=axes[2], operator="normalized", title="A2: eigenvalues of A")
plot_spectrum(lam_snl, ax=axes[3], bins=60, range=(0, 2), log=True,
              title="SNL: eigenvalues of $L_{sym}$")
plt.show()

complex_share = np.mean(np.abs(mu_nl.imag) > 1e-9)
print(f"NL : {complex_share:.0%} of the eigenvalues are complex,"
      f" max |Im| = {np.abs(mu_nl.imag).max():.3f}"
      f" (independent W_phi: {np.abs(mu_nl_indep.imag).max():.3f})")
print(f"A2 : {np.sum(np.abs(mu_a2) > 1e-9)} nonzero eigenvalues (m = {m})")
print(f"SNL: lambda in [{lam_snl.min():.2e}, {lam_snl.max():.3f}], real: {np.isrealobj(lam_snl)}")
assert complex_share > 0 and lam_snl.max() <= 2 + 1e-9

# %% [markdown]
# ## Why the normalization matters: $\lambda_{max}$ under scaling
#
# The Chebyshev filter rescales the Laplacian by $\lambda_{max}$. If we did *not* normalize
# (combinatorial Laplacian $D - M$ of the same ReLU affinity), $\lambda_{max}$ would grow
# with the scale of the features, so a fixed rescaling with $\lambda_{max} = 2$ is wrong. The
# normalized Laplacian stays in $[0, 2]$ whatever the scale.

# %%
X = node_features(images["flower"])
print(" scale   lambda_max(D - M)   lambda_max(L_sym)")
for scale in (0.5, 1.0, 2.0, 4.0):
    a = kernels.relu_dot(scale * X @ W_theta, scale * X @ W_phi).symmetrized()
    comb = float(graph.lambda_max(a, "combinatorial"))
    sym = float(graph.lambda_max(a, "sym"))
    print(f"{scale:6.1f} {comb:19.1f} {sym:19.4f}")

# %% [markdown]
# ## What symmetry buys: the gaussian mode
#
# The NL block's *gaussian* mode uses $\Theta = \Phi = X$: $M = \exp(XX^T)$ is symmetric,
# and $A = D^{-1}M$ — still not symmetric — is *similar* to $D^{-1/2} M D^{-1/2}$, so its
# spectrum is real. Complex spectra come from $\Theta \ne \Phi$, which SNL removes by
# symmetrizing.

# %%
theta = X @ W_theta
mu_gauss = kernels.gaussian(theta / np.sqrt(np.sqrt(C_s))).normalized("rw").eigvals()
print("gaussian mode: max |Im mu| =", float(np.abs(np.imag(mu_gauss)).max()))

# %% [markdown]
# ## Rows of the affinity over the image
#
# A row $i$ of the operator is the weight pixel $i$ gives every other pixel: the "attention
# map" of a query point (the picture of the SNL paper's Figure 2). Four query points per
# image; the star marks the query.

# %%
queries = [(5, 5), (12, 16), (20, 8), (8, 26)]
normalization = {"NL": "rw", "A2": "rw", "SNL": "sym"}
for image_name, im in images.items():
    fig, axes = plt.subplots(3, len(queries), figsize=(3 * len(queries), 7), layout="constrained")
    for r, (name, a) in enumerate(affinities(im, batch=True).items()):
        # A Capture wraps a hand-made affinity for the plotting functions.
        cap = Capture(name, "adapter", name, a, normalization[name], spatial_shape=(H, W),
                      n_samples=1)
        plot_affinity_rows(cap, queries, image=im, ax=axes[r], cmap="magma")
        axes[r, 0].set_ylabel(name)
    fig.suptitle(f"rows of the operator over '{image_name}'")
    plt.show()

# %% [markdown]
# NL's softmax rows concentrate on a few similar pixels; A²'s rows are mixtures of only $m$
# global maps (rank $\le m$); SNL's rows are non-negative, symmetric in $(i, j)$, and
# spread more evenly because of the $D^{-1/2}$ scaling on both sides.
