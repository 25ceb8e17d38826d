"""Build the notebooks of this folder from the Python source below, as clean JSON.

The notebooks are stored without outputs or execution counts, with fixed cell ids, so that
a diff shows only what changed in the source. Edit the cells here, then run::

    .venv/bin/python notebooks/_build.py            # (re)write notebooks/NN_*.ipynb
    .venv/bin/python notebooks/_build.py --check    # exit 1 if a notebook is out of date

The test suite executes every notebook (tests/test_notebooks.py) and checks that the stored
files are what this script writes.
"""

# ruff: noqa: E501  (the cells below are notebook text: tables and prose keep their own lines)
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def md(text: str) -> tuple[str, str]:
    return ("markdown", text)


def code(text: str) -> tuple[str, str]:
    return ("code", text)


def build(cells: list[tuple[str, str]], prefix: str) -> nbformat.NotebookNode:
    """A notebook from ``(kind, source)`` pairs, with deterministic cell ids."""
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python", "pygments_lexer": "ipython3"},
    }
    for i, (kind, source) in enumerate(cells):
        source = textwrap.dedent(source).strip("\n")
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell.id = f"{prefix}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


# ------------------------------------------------------------------------------------------
# 01: the unified view
# ------------------------------------------------------------------------------------------

NB01 = [
    md(r"""
    # 01 — The unified view: every nonlocal block is a Chebyshev graph filter

    A nonlocal block computes $Y = X + F(A, Z)$: $Z$ is a projection of the input, $A$ an
    $N \times N$ affinity between positions. Read $A$ as the adjacency of a fully connected
    graph and $F$ is a graph filter. This notebook

    1. writes the generic Chebyshev filter $F = \sum_{k=0}^{K} T_k(\tilde L)\, Z\, W_k$;
    2. shows the table of special cases, built from `graphfilters.specs` (the single source
       of truth read by the symbolic layer and the PyTorch blocks);
    3. derives every block from the generic filter with sympy, step by step, with a proof;
    4. goes back from a formula to the block it is (`identify`), and gives each block's
       frequency response;
    5. checks the facts the argument rests on (spectrum of the normalized Laplacian in
       $[0, 2]$, softmax rows summing to one, the Chebyshev parity, the stable hypothesis).

    Conventions (see `docs/theory.md`): `order` $K$ is the polynomial degree ($K + 1$
    terms); the Laplacian form uses weights $W^L_k$, the affinity form
    $W_k = (-1)^k W^L_k$.
    """),
    code("""
    import pandas as pd
    from IPython.display import Markdown, Math, display

    from graphfilters.specs import BLOCK_NAMES, BLOCKS, NL_MODES
    from graphfilters.symbolic import (
        A, Ahat, W0, W1, W2, Z,
        all_facts, derive, derive_all, generic_filter, identify, latex, response,
    )
    """),
    md(r"""
    ## 1. The generic filter

    The Chebyshev recursion $T_0 = I$, $T_1 = \tilde L$, $T_{k+1} = 2\tilde L T_k - T_{k-1}$
    on the scaled Laplacian $\tilde L = 2L/\lambda_{max} - I$. With the normalized
    Laplacian $L_{sym} = I - D^{-1/2} A D^{-1/2}$ and $\lambda_{max} = 2$, the order-2
    filter in terms of $A$ and $D$ (matrices do not commute: sympy keeps the order):
    """),
    code("""
    display(Math(r"F = " + latex(generic_filter(2))))
    """),
    md(r"""
    ## 2. The table of special cases

    Built from `graphfilters.specs.BLOCKS`, one row per block. `n_terms` is `order + 1`.
    """),
    code("""
    table = pd.DataFrame(
        [
            {
                "name": s.name,
                "block": s.title,
                "kernel": s.kernel,
                "normalization": s.normalization,
                "symmetrize": s.symmetrize,
                "laplacian": s.laplacian,
                "order": s.order,
                "n_terms": s.n_terms,
                "weight constraint": s.weight_constraint,
                "basis": s.basis,
                "lambda_max": s.lambda_max,
                "low rank": s.low_rank,
            }
            for s in BLOCKS.values()
        ]
    ).set_index("name")
    table
    """),
    md("The affinity and the closed-form filter of each block (affinity form), as LaTeX:"),
    code("""
    rows = ["| block | affinity | filter |", "|---|---|---|"]
    for s in BLOCKS.values():
        rows.append(f"| `{s.name}` {s.title} | ${s.affinity_latex}$ | ${s.filter_latex}$ |")
    display(Markdown("\\n".join(rows)))
    """),
    md(r"""
    ## 3. Every block derived from the generic filter

    `derive(name)` reads the table row and applies one sympy substitution per step: the
    recursion, the rescaling, the Laplacian's definition, the degree rule (softmax rows sum to
    one: $D = I$), the sign absorption $W^L_k \to (-1)^k W_k$, the stable hypothesis
    (`gsnl_stable` only) and the weight constraint. The last line is the closed form of the
    table, and the proof is that *derived − closed form* expands to the zero matrix.
    """),
    code("""
    derivations = {name: derive(name) for name in BLOCK_NAMES}
    for name, d in derivations.items():
        display(Markdown(f"### {d.title}"))
        display(d)
        assert d.verified, name
    """),
    md("The same proofs as plain text, for one block (what `print(derive(...))` shows):"),
    code("""
    print(derivations["ns"])
    """),
    md("The non-local block's variants (embedded gaussian, dot product, gaussian, concatenation):"),
    code("""
    pd.DataFrame(
        [
            {"mode": m, "affinity": NL_MODES[m][2], "verified": derive("nl", mode=m).verified}
            for m in NL_MODES
        ]
    )
    """),
    md("`derive_all()` runs every row and mode; all of them are proved:"),
    code("""
    everything = derive_all()
    print(len(everything), "derivations, all verified:", all(d.verified for d in everything))
    """),
    md(r"""
    A wrong closed form is caught. gSNL's exact order-2 term is $T_2(\hat A) = 2\hat A^2 - I$;
    the authors' 2019 code used $2\hat A - I$, which is only right under the "stable
    hypothesis" $\hat A^2 = \hat A$ (that is the separate row `gsnl_stable`):
    """),
    code(r"""
    wrong = derive("gsnl", closed_form=r"Z W_0 + \hat A Z W_1 + (2\hat A - I) Z W_2")
    print("verified:", wrong.verified)
    display(Math(r"\text{derived} - \text{claimed} = " + latex(wrong.differences[0])))
    """),
    md(r"""
    ## 4. The reverse direction, and the frequency responses

    `identify` takes a polynomial filter in $A$ or $\hat A$ and returns its order, its
    Chebyshev weights and the weight constraint, and the table rows it matches.
    """),
    code("""
    for expr in (Ahat * Z * W1, Z * W0 - A * Z * W0, Z * W0 + Ahat * Z * W1 + Ahat**2 * Z * W2):
        print(identify(expr), end="\\n\\n")
    """),
    md(r"""
    For an eigenvalue $\lambda$ of the block's Laplacian and one entry $w_k$ of each weight,
    the response is $h(\lambda) = \sum_k B_k(\mu(\lambda))\, w_k$ with $\mu = 1 - \lambda$
    for the normalized blocks. Single-weight blocks are shown for unit weight: NL, A², CC and
    DNL are fixed lines through zero at $\lambda = 1$ (DNL's rows sum to 2: pairwise softmax
    plus the unary term), CGNL's zero is at $\lambda_{max}/2$, NS is a pure high-pass
    $-\lambda$, and only SNL and gSNL have a free coefficient for every term.
    """),
    code("""
    rows = ["| block | $h(\\\\lambda)$ |", "|---|---|"]
    for name in BLOCK_NAMES:
        rows.append(f"| `{name}` | ${latex(response(name))}$ |")
    display(Markdown("\\n".join(rows)))
    """),
    md("""
    ## 5. The facts behind the argument

    Each is checked symbolically (and numerically on random graphs where it is a statement
    about all graphs).
    """),
    code("""
    for fact in all_facts():
        display(Markdown(f"**{'verified' if fact.verified else 'FAILED'}** — {fact.statement}"))
        assert fact.verified
    """),
]


# ------------------------------------------------------------------------------------------
# 02: spectra on real images
# ------------------------------------------------------------------------------------------

NB02 = [
    md(r"""
    # 02 — Affinities and spectra on real images

    The affinity $A$ of a nonlocal block is a graph over the pixels of a feature map. Here we
    build three of them from real photographs (the two sample images that ship with
    scikit-learn: nothing is downloaded), downscaled to $24 \times 32$ ($N = 768$ nodes):

    | block | affinity | operator the filter uses |
    |---|---|---|
    | NL | $\operatorname{softmax}_{row}(\Theta\Phi^T/\sqrt{C_s})$ | $A$ itself (row-stochastic) |
    | A² | $S_d S_g^T$, $m = 8$ descriptors | $A$ itself (row-stochastic, rank $\le m$) |
    | SNL | $\operatorname{sym}(\operatorname{ReLU}(\Theta)\operatorname{ReLU}(\Phi)^T)$ | $\hat A = D^{-1/2} \operatorname{sym}(M) D^{-1/2}$ |

    **What is and is not shown.** The node features are the pixel colour and position; the
    embeddings $\Theta = X W_\theta$, $\Phi = X W_\phi$ use *fixed random* $1 \times 1$
    projections (seeded), as in a freshly initialized block — not a trained one. The
    structural facts below (complex vs real spectra, $\lambda_{max} \le 2$, rank) hold for
    any weights; what a *trained* block attends to is in notebook 03.
    """),
    code("""
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
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, (name, im) in zip(axes, images.items()):
        ax.imshow(im)
        ax.set_title(f"{name}, {H}x{W}")
        ax.axis("off")
    plt.show()
    """),
    md(r"""
    ## Node features and the three affinities

    Each pixel is a node with features (r, g, b, y, x), standardized. One seeded random
    projection to $C_s = 16$ channels gives $\Theta$ and $\Phi$ (correlated, as
    $W_\phi = W_\theta + $ noise, so the pictures have some structure); A²'s gather and
    distribute logits are two more projections to $m = 8$.
    """),
    code("""
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
    """),
    md(r"""
    None of them is stored as an $N \times N$ matrix: NL keeps $\Theta$ and $\Phi$ and
    computes softmax rows on the fly, A² and SNL are low-rank factorizations. The operator each
    filter multiplies by is the *normalized* affinity: row-stochastic for NL and A² (rows sum
    to one, $D = I$), $D^{-1/2} M D^{-1/2}$ for SNL.
    """),
    code("""
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
    """),
    md(r"""
    ## Spectra

    **NL: complex.** A row-stochastic, non-symmetric matrix has eigenvalues $\mu$ in the unit
    disk, complex in general; the Laplacian $L_{rw} = I - A$ has $\lambda = 1 - \mu$ in the
    disk $|\lambda - 1| \le 1$. There is no real frequency axis to speak of. Here the
    imaginary parts are small because $W_\phi$ is close to $W_\theta$; with an independent
    $W_\phi$ they are larger (second panel).

    **A²: rank $\le m$.** All but $m$ eigenvalues are zero; the nonzero ones come from an
    $m \times m$ problem.

    **SNL: real, in $[0, 2]$.** $\hat A$ is symmetric, so $L_{sym} = I - \hat A$ has a real
    spectrum, and the normalization bounds it by 2 on any graph; at most $2C_s$ eigenvalues
    of $\hat A$ are nonzero, so all but $2C_s$ Laplacian eigenvalues equal 1 (the tall bar;
    note the log scale).
    """),
    code(r"""
    mu_nl = ops["NL"].eigvals()
    mu_a2 = ops["A2"].eigvals()
    lam_snl = aff["SNL"].laplacian_eigvals("sym")
    # The same NL kernel with an independent W_phi (Theta and Phi uncorrelated).
    X = node_features(images["flower"])
    W_phi_indep = rng.standard_normal((5, C_s)) / np.sqrt(5)
    mu_nl_indep = kernels.embedded_gaussian(X @ W_theta, X @ W_phi_indep, scale="sqrt").eigvals()

    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    plot_spectrum(mu_nl, ax=axes[0], title=r"NL, $W_\phi \approx W_\theta$: eigenvalues of A")
    plot_spectrum(mu_nl_indep, ax=axes[1], title=r"NL, independent $W_\phi$")
    plot_spectrum(mu_a2, ax=axes[2], title="A2: eigenvalues of A")
    plot_spectrum(lam_snl, ax=axes[3], bins=60, range=(0, 2), title="SNL: eigenvalues of $L_{sym}$")
    axes[3].set_yscale("log")
    plt.tight_layout()
    plt.show()

    complex_share = np.mean(np.abs(mu_nl.imag) > 1e-9)
    print(f"NL : {complex_share:.0%} of the eigenvalues are complex, max |Im| = {np.abs(mu_nl.imag).max():.3f}"
          f" (independent W_phi: {np.abs(mu_nl_indep.imag).max():.3f})")
    print(f"A2 : {np.sum(np.abs(mu_a2) > 1e-9)} nonzero eigenvalues (m = {m})")
    print(f"SNL: lambda in [{lam_snl.min():.2e}, {lam_snl.max():.3f}], real: {np.isrealobj(lam_snl)}")
    assert complex_share > 0 and lam_snl.max() <= 2 + 1e-9
    """),
    md(r"""
    ## Why the normalization matters: $\lambda_{max}$ under scaling

    The Chebyshev filter rescales the Laplacian by $\lambda_{max}$. If we did *not* normalize
    (combinatorial Laplacian $D - M$ of the same ReLU affinity), $\lambda_{max}$ would grow
    with the scale of the features, so a fixed rescaling with $\lambda_{max} = 2$ is wrong. The
    normalized Laplacian stays in $[0, 2]$ whatever the scale.
    """),
    code("""
    X = node_features(images["flower"])
    print(" scale   lambda_max(D - M)   lambda_max(L_sym)")
    for scale in (0.5, 1.0, 2.0, 4.0):
        a = kernels.relu_dot(scale * X @ W_theta, scale * X @ W_phi).symmetrized()
        comb = float(graph.lambda_max(a, "combinatorial"))
        sym = float(graph.lambda_max(a, "sym"))
        print(f"{scale:6.1f} {comb:19.1f} {sym:19.4f}")
    """),
    md(r"""
    ## What symmetry buys: the gaussian mode

    The NL block's *gaussian* mode uses $\Theta = \Phi = X$: $M = \exp(XX^T)$ is symmetric,
    and $A = D^{-1}M$ — still not symmetric — is *similar* to $D^{-1/2} M D^{-1/2}$, so its
    spectrum is real. Complex spectra come from $\Theta \ne \Phi$, which SNL removes by
    symmetrizing.
    """),
    code("""
    theta = X @ W_theta
    mu_gauss = kernels.gaussian(theta / np.sqrt(np.sqrt(C_s))).normalized("rw").eigvals()
    print("gaussian mode: max |Im mu| =", float(np.abs(np.imag(mu_gauss)).max()))
    """),
    md(r"""
    ## Rows of the affinity over the image

    A row $i$ of the operator is the weight pixel $i$ gives every other pixel: the "attention
    map" of a query point (the picture of the SNL paper's Figure 2). Four query points per
    image; the star marks the query.
    """),
    code("""
    queries = [(5, 5), (12, 16), (20, 8), (8, 26)]
    normalization = {"NL": "rw", "A2": "rw", "SNL": "sym"}
    for image_name, im in images.items():
        fig, axes = plt.subplots(3, len(queries), figsize=(3 * len(queries), 7))
        for r, (name, a) in enumerate(affinities(im, batch=True).items()):
            # A Capture wraps a hand-made affinity for the plotting functions.
            cap = Capture(name, "adapter", name, a, normalization[name], spatial_shape=(H, W),
                          n_samples=1)
            plot_affinity_rows(cap, queries, image=im, ax=axes[r], cmap="magma")
            axes[r, 0].set_ylabel(name)
        fig.suptitle(f"rows of the operator over '{image_name}'")
        plt.tight_layout()
        plt.show()
    """),
    md(r"""
    NL's softmax rows concentrate on a few similar pixels; A²'s rows are mixtures of only $m$
    global maps (rank $\le m$); SNL's rows are non-negative, symmetric in $(i, j)$, and
    spread more evenly because of the $D^{-1/2}$ scaling on both sides.
    """),
]


# ------------------------------------------------------------------------------------------
# 03: frequency responses
# ------------------------------------------------------------------------------------------

NB03 = [
    md(r"""
    # 03 — Frequency responses: block types and trained blocks

    On an eigenvector of the block's Laplacian with eigenvalue (frequency) $\lambda$, a block
    multiplies the channels by the matrix

    $$
    H(\lambda) = \sum_{k=0}^{K} T_k\!\left(\tfrac{2\lambda}{\lambda_{max}} - 1\right) W^L_k
    = \sum_{k=0}^{K} T_k(1 - \lambda)\, W_k \quad (\lambda_{max} = 2,\ \text{affinity form}).
    $$

    1. **Block types** (`graphfilters.symbolic.response`): the scalar response $h(\lambda)$
       each block can express. NL, A², CC, DNL and CGNL have one weight, so one fixed shape
       times a scale; NS is a pure high-pass; SNL and gSNL have a free coefficient per term.
    2. **Trained blocks** (`analysis`): two tiny PreResNet-8 models (one NL, one SNL block
       after the first residual unit) trained for a few epochs on scikit-learn's digits,
       upscaled to $16 \times 16$, on the CPU. Their affinities are captured on test images;
       the response is drawn with the captured eigenvalues marked.

    These models are deliberately tiny (a few seconds of training): the point is the
    analysis pipeline and the shapes of the responses, not the accuracy. If `make demo` has
    been run, its checkpoints (`../out/checkpoints/nl.pt` and `snl.pt`, PreResNet-20 models
    trained longer) are used instead.
    """),
    code("""
    import time
    from pathlib import Path

    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from analysis import analyze
    from analysis.capture import capture
    from analysis.plots import plot_affinity_rows, plot_energy, plot_response, plot_spectrum
    from analysis.response import block_response
    from graphfilters.data import get_dataset
    from graphfilters.specs import BLOCK_NAMES
    from graphfilters.symbolic import latex, response, response_function
    from graphfilters.training import TrainConfig, load_model, train

    torch.manual_seed(0)
    lam = np.linspace(0, 2, 201)
    """),
    md(r"""
    ## 1. What each block type can express

    Single-weight blocks are drawn for unit weight; for SNL and gSNL a few weight choices
    show that one block can be low-pass, high-pass or band-pass. CGNL uses no normalization,
    so its $\lambda_{max}$ is not fixed (here 2 for the picture).
    """),
    code("""
    examples = {
        "snl": [dict(w_0=1.0, w_1=1.0), dict(w_0=1.0, w_1=-1.0), dict(w_0=0.5, w_1=0.0)],
        "gsnl": [dict(w_0=0.5, w_1=0.0, w_2=-0.5), dict(w_0=0.0, w_1=1.0, w_2=0.5)],
        "gsnl_stable": [dict(w_0=0.5, w_1=0.0, w_2=-0.5), dict(w_0=0.0, w_1=1.0, w_2=0.5)],
        "cgnl": [dict(lambda_max=2.0)],
    }
    fig, axes = plt.subplots(3, 3, figsize=(12, 9), sharex=True)
    for ax, name in zip(axes.flat, BLOCK_NAMES):
        for params in examples.get(name, [{}]):
            label = ", ".join(f"{k}={v:g}" for k, v in params.items()) or "unit weight"
            ax.plot(lam, response_function(name, **params)(lam), label=label)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_title(f"{name}:  $h = {latex(response(name))}$", fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel(r"$\\lambda$")
    plt.tight_layout()
    plt.show()
    """),
    md(r"""
    ## 2. Two tiny trained models

    PreResNet-8 (width 8) with an NL or an SNL block after the first residual unit of stage 1
    (feature maps $16 \times 16$, so $N = 256$ nodes), SGD for 3 epochs on the digits (the
    learning rate drops ×0.1 for the last one).
    """),
    code("""
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
    """),
    md(r"""
    ## 3. Capture the affinities on test images

    `analysis.capture.capture` runs the model on a batch and records, for every nonlocal
    block, the affinity *as a structure* (softmax factors for NL, low-rank factors for SNL:
    no $N \times N$ matrix), the signal $Z$ and the affinity-form weights $W_k$.
    """),
    code("""
    x_test, y_test = data.tensors("test")
    x = x_test[:8]
    captures = {name: next(iter(capture(model, x, progress=False).values()))
                for name, model in models.items()}
    for name, cap in captures.items():
        print(f"{name}: {cap.path}  {type(cap.affinity).__name__}  normalization={cap.normalization}"
              f"  order={cap.order}  spatial={cap.spatial_shape}  samples={cap.n_samples}")
    """),
    md(r"""
    ## 4. Responses of the trained blocks, with the captured eigenvalues

    The curves are the singular values of $H(\lambda)$ over $[0, 2]$; the dots are the
    largest gain $\sigma_1(H(\lambda_i))$ at the eigenvalues $\lambda_i$ of the captured
    Laplacians (8 images). NL's eigenvalues are complex: they are drawn at their real part
    (their gain is evaluated at the complex value). NL can only scale the line $1 - \lambda$:
    its response vanishes at $\lambda = 1$, where SNL's learned order-0 term keeps a gain.
    """),
    code("""
    responses = {name: block_response(cap) for name, cap in captures.items()}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, (name, r) in zip(axes, responses.items()):
        plot_response(r, ax=ax, title=f"{name}: {r.label}")
        for ev, g in zip(r.eigenvalues, r.gains_at_eigenvalues):
            ax.scatter(np.real(ev), g, s=8, color="C3", zorder=3)
    plt.tight_layout()
    plt.show()
    for name, r in responses.items():
        print(name, r.label, {k: round(v, 3) for k, v in r.stats.items()})
    """),
    md(r"""
    Where does the signal live? The energy of $Z$ and of the filter output per graph frequency
    (graph Fourier transform in the eigenbasis of $\hat A$; for NL in the eigenbasis of its
    symmetrized operator), as shares of three bands of $[0, 2]$:
    """),
    code("""
    bands = ("low [0, 2/3)", "mid [2/3, 4/3)", "high [4/3, 2]")
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
    for ax, (name, r) in zip(axes, responses.items()):
        plot_energy(r.energy_z, ax=ax, label="Z (filter input)")
        plot_energy(r.energy_out, ax=ax, label="F (filter output)")
        ax.set_title(f"{name}: graph-frequency energy ({r.energy_z.basis})")
        ez, eo = r.energy_z.band_fractions(), r.energy_out.band_fractions()
        print(f"{name:4s} Z  : " + "  ".join(f"{b} {v:.2f}" for b, v in zip(bands, ez)))
        print(f"{name:4s} out: " + "  ".join(f"{b} {v:.2f}" for b, v in zip(bands, eo)))
    plt.tight_layout()
    plt.show()
    """),
    md(r"""
    ## 5. Captured spectra and attention rows

    NL's captured operator $\hat A$ has complex eigenvalues $\mu$ in the unit disk (its
    Laplacian's are $\lambda = 1 - \mu$), SNL's Laplacian real ones in $[0, 2]$.
    Below them, rows of $\hat A$ over the $16 \times 16$ feature map of one test digit for
    three query positions.
    """),
    code(r"""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    plot_spectrum([1 - ev for ev in responses["nl"].eigenvalues], ax=axes[0],
                  title=r"NL: eigenvalues $\mu$ of $\hat A$ (complex)")
    plot_spectrum(responses["snl"].eigenvalues, ax=axes[1], bins=50, range=(0, 2),
                  title=r"SNL: eigenvalues of $L_{sym}$ (real, in [0, 2])")
    axes[1].set_yscale("log")
    plt.tight_layout()
    plt.show()

    queries = [(4, 8), (8, 8), (12, 5)]
    fig, axes = plt.subplots(2, 1 + len(queries), figsize=(11, 5.5))
    for r, (name, cap) in enumerate(captures.items()):
        axes[r, 0].imshow(x[0, 0], cmap="gray")
        axes[r, 0].set_title(f"input (label {int(y_test[0])})")
        axes[r, 0].set_axis_off()
        plot_affinity_rows(cap, queries, image=x[0, 0], ax=axes[r, 1:], cmap="magma")
        axes[r, 1].set_ylabel(name)
    plt.tight_layout()
    plt.show()
    """),
    md(r"""
    ## 6. Everything at once: `analysis.analyze`

    One call per model gives one row per nonlocal block: the spectrum (with the eigen-solver
    it chose), affinity metrics, the response class, Tao et al.'s spectrum, the linearized
    stability and the Jacobian norm (notebook 04 explains these), with a `status` and a
    `reason` for anything that could not be computed.
    """),
    code("""
    import pandas as pd

    tables = {name: analyze(model, x, labels=y_test[:8], progress=False)
              for name, model in models.items()}
    for name, table in tables.items():
        print(f"--- {name}")
        print(table.summary())
    columns = ["block", "status", "affinity", "spectrum_method", "lambda_max", "complex_share",
               "asymmetry", "response_class", "stability_radius", "jacobian_norm"]
    pd.concat([t.to_frame() for t in tables.values()])[columns]
    """),
]

# ------------------------------------------------------------------------------------------
# 04: robustness and stacking
# ------------------------------------------------------------------------------------------

NB04 = [
    md(r"""
    # 04 — Robustness and stacking: NL, NS and SNL

    Tao et al. (NeurIPS 2018) analysed trained nonlocal blocks through the eigenvalues of the
    symmetric part of their weight matrices and reported that adding more nonlocal blocks
    caused convergence problems; the SNL paper argues that its normalized, symmetric affinity
    makes stacking safe. This notebook measures, for three blocks:

    1. **Tao et al.'s spectrum**: eigenvalues of $\operatorname{sym}(G W_1 S)$, the block's
       effective channel map ($G$ the value projection, $W_1$ the nonlocal weight, $S$ the
       output BN scale); negative eigenvalues damp.
    2. **Linearized growth**: with the affinity fixed, on a frequency $\lambda$ the block maps
       channels by $M(\lambda) = I + G H(\lambda) S$; a stack of $n$ copies sharing the
       affinity grows like $\max_\lambda \|M(\lambda)^n\|_2$.
    3. **Jacobian norms** of real stacks of $k = 1, 2, 4, 8$ blocks, estimated by power
       iteration with autograd.

    **What the models are** (stated honestly): parts 1–2 use tiny PreResNet-8 models
    (width 8) with one NL, NS or SNL block, trained for 3 epochs on the digits ($16 \times 16$)
    on the CPU — far from the paper's CIFAR setup, so the numbers illustrate the measurements,
    not the paper's claims. Part 3 uses *untrained* stacks whose output BN scales are set to
    1 instead of 0 (a new block is the identity; setting the scale to 1 turns its filter on),
    with the default random initialization of every other weight.
    """),
    code("""
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
    """),
    md("## 1. Three briefly trained models"),
    code("""
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
    """),
    md(r"""
    ## 2. Tao et al.'s eigenvalues

    The eigenvalues of the symmetric part of the effective channel map $G W_1 S$ (with the BN
    scale $S$ of the trained block). Tao et al. found most of them negative in trained NL
    blocks (a damping effect).
    """),
    code("""
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
    """),
    md(r"""
    **Why exactly half are negative here.** These blocks have the usual bottleneck
    $C_s = C/2$. Then $G W_1 S = U V^T$ with $U = G$ and $V = (W_1 S)^T$ of $C_s$ columns
    each, and its symmetric part $\tfrac12(UV^T + VU^T) = [U\ V]
    \begin{pmatrix} 0 & I/2 \\ I/2 & 0 \end{pmatrix} [U\ V]^T$ is congruent to a matrix
    with eigenvalues $\pm\tfrac12$, $C_s$ of each sign. By Sylvester's law of inertia it
    has exactly $C_s$ positive and $C_s$ negative eigenvalues whenever $[U\ V]$ has full
    rank — for *any* weights. With this bottleneck the negative share is $1/2$ by
    construction and cannot show damping; what the training changes is the magnitudes.
    """),
    md(r"""
    ## 3. Linearized growth over stacked blocks

    $\max_\lambda \|M(\lambda)^n\|_2$ over the captured spectrum, for $n = 1 \dots 10$ copies
    of each trained block sharing one affinity. For SNL (symmetric $\hat A$) this is exact;
    for NL and NS (non-symmetric) the radius is exact and the norm a lower bound (Schur form).
    """),
    code("""
    stability = {block: linearized_stability(captures[block], n_max=10) for block in BLOCKS}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for block, st in stability.items():
        plot_growth(st, ax=ax, label=f"{block.upper()} (radius {st.radius:.3f})")
    ax.set_title(r"linearized growth of n stacked copies (dashed: $\\rho^n$)")
    plt.tight_layout()
    plt.show()
    for block, st in stability.items():
        print(f"{block:3s} radius {st.radius:.4f} at lambda = {st.argmax_lambda:.3f}; {st.how}")
    """),
    md(r"""
    ## 4. Jacobian norms of real stacks

    Stacks of $k$ independent blocks (NL, SNL) or one nonlocal stage of $k$ units sharing
    its affinity (NS, its native form), on the 8-channel $16 \times 16$ features of the
    trained NL model's first stage. Untrained weights, output BN scale set to 1. The
    spectral norm of the Jacobian of the whole stack is estimated at those features.
    """),
    code("""
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
    """),
    md(r"""
    ## 5. The same numbers from `analysis.analyze`

    `analyze` computes all of the above (and the affinity metrics) for every nonlocal block
    of a model in one call; here, the three trained models on the same 8 test images.
    """),
    code("""
    import pandas as pd

    frames = [analyze(models[b], x, progress=False).to_frame() for b in BLOCKS]
    columns = ["block", "status", "spectrum_method", "complex_share", "tao_negative_share",
               "tao_min", "tao_max", "stability_radius", "stability_norm", "jacobian_norm",
               "noise_gain", "affinity_gain"]
    pd.concat(frames, ignore_index=True)[columns]
    """),
    md(r"""
    ## Reading the results

    - The linearized growth is governed by $\max_\lambda \rho(M(\lambda))$: above 1, a stack
      of copies sharing the affinity eventually amplifies some frequency geometrically. The
      channel maps $M(\lambda)$ need not be normal, so for small $n$ the growth can exceed
      $\rho^n$ (the dashed lines).
    - For SNL the decomposition over frequencies is exact (symmetric $\hat A$, orthonormal
      eigenvectors, $\mu \in [-1, 1]$), so its curve *is* the growth of the linearized stack.
      For NL and NS the softmax operator is non-symmetric with complex eigenvalues: the
      radius is exact but the plotted growth is only a lower bound — the non-normality of
      $\hat A$ itself can add transient growth that no per-frequency number shows.
    - The Jacobian norms of real stacks include everything the linearization leaves out (the
      affinity depends on the input, ReLUs, BN shifts).
    - These are tiny, briefly trained or untrained models: treat the numbers as a
      demonstration of the measurements. Run the same cells on your own checkpoints (see
      `docs/howto-analyse-your-model.md`) for real conclusions.
    """),
]


NOTEBOOKS = {
    "01_unified_view.ipynb": (NB01, "nb01"),
    "02_spectra_on_real_images.ipynb": (NB02, "nb02"),
    "03_filter_responses.ipynb": (NB03, "nb03"),
    "04_robustness_and_stacking.ipynb": (NB04, "nb04"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for filename, (cells, prefix) in NOTEBOOKS.items():
        text = nbformat.writes(build(cells, prefix)) + "\n"
        path = HERE / filename
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(filename)
        else:
            path.write_text(text, encoding="utf-8")
            print("wrote", path.relative_to(HERE.parent))
    if stale:
        print("out of date (run notebooks/_build.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
