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


    def affinities(im):
        X = node_features(im)
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
    $W_\phi$ they are larger (orange).

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

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    circle = np.exp(1j * np.linspace(0, 2 * np.pi, 200))
    for ax in axes[:2]:
        ax.plot(circle.real, circle.imag, color="0.7", lw=1)
        ax.set_aspect("equal")
        ax.set_xlabel("Re")
        ax.set_ylabel("Im")
    axes[0].scatter(mu_nl.real, mu_nl.imag, s=8, label=r"$W_\phi \approx W_\theta$")
    axes[0].scatter(mu_nl_indep.real, mu_nl_indep.imag, s=8, label=r"independent $W_\phi$")
    axes[0].legend(loc="lower left", fontsize=8)
    axes[0].set_title("NL: eigenvalues of A (complex plane)")
    axes[1].scatter(mu_a2.real, mu_a2.imag, s=8)
    axes[1].set_title("A2: eigenvalues of A (complex plane)")
    axes[2].hist(lam_snl, bins=60, range=(0, 2))
    axes[2].set_yscale("log")
    axes[2].set_title("SNL: eigenvalues of $L_{sym}$ (real)")
    axes[2].set_xlabel(r"$\lambda$")
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


    def draw_rows(im, ops, queries):
        fig, axes = plt.subplots(len(ops), len(queries), figsize=(3 * len(queries), 2.3 * len(ops)))
        for r, (name, op) in enumerate(ops.items()):
            for c, (y, x) in enumerate(queries):
                e = np.zeros((N, 1))
                e[y * W + x] = 1
                row = (op.dense().T @ e).reshape(H, W)  # row i of the operator
                ax = axes[r, c]
                ax.imshow(im)
                ax.imshow(row, cmap="magma", alpha=0.65)
                ax.plot(x, y, marker="*", color="cyan", markersize=12)
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(name)
        plt.tight_layout()
        plt.show()


    for name, im in images.items():
        a = affinities(im)
        draw_rows(im, {"NL": a["NL"].normalized("rw"), "A2": a["A2"].normalized("rw"),
                       "SNL": a["SNL"].normalized("sym")}, queries)
    """),
    md(r"""
    NL's softmax rows concentrate on a few similar pixels; A²'s rows are mixtures of only $m$
    global maps (rank $\le m$); SNL's rows are non-negative, symmetric in $(i, j)$, and
    spread more evenly because of the $D^{-1/2}$ scaling on both sides.
    """),
]


NOTEBOOKS = {
    "01_unified_view.ipynb": (NB01, "nb01"),
    "02_spectra_on_real_images.ipynb": (NB02, "nb02"),
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
