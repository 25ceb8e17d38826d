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
# # 01 — The unified view: every nonlocal block is a Chebyshev graph filter
#
# A nonlocal block computes $Y = X + F(A, Z)$: $Z$ is a projection of the input, $A$ an
# $N \times N$ affinity between positions. Read $A$ as the adjacency of a fully connected
# graph and $F$ is a graph filter. This notebook
#
# 1. writes the generic Chebyshev filter $F = \sum_{k=0}^{K} T_k(\tilde L)\, Z\, W_k$;
# 2. shows the table of special cases, built from `graphfilters.specs` (the single source
#    of truth read by the symbolic layer and the PyTorch blocks);
# 3. derives every block from the generic filter with sympy, step by step, with a proof;
# 4. goes back from a formula to the block it is (`identify`), and gives each block's
#    frequency response;
# 5. checks the facts the argument rests on (spectrum of the normalized Laplacian in
#    $[0, 2]$, softmax rows summing to one, the Chebyshev parity, the stable hypothesis).
#
# Conventions (see `docs/theory.md`): `order` $K$ is the polynomial degree ($K + 1$
# terms); the Laplacian form uses weights $W^L_k$, the affinity form
# $W_k = (-1)^k W^L_k$.

# %%
import pandas as pd
from IPython.display import Markdown, Math, display

from graphfilters.specs import BLOCK_NAMES, BLOCKS, NL_MODES
from graphfilters.symbolic import (
    W0,
    W1,
    W2,
    A,
    Ahat,
    Z,
    all_facts,
    derive,
    derive_all,
    generic_filter,
    identify,
    latex,
    response,
)

# %% [markdown]
# ## 1. The generic filter
#
# The Chebyshev recursion $T_0 = I$, $T_1 = \tilde L$, $T_{k+1} = 2\tilde L T_k - T_{k-1}$
# on the scaled Laplacian $\tilde L = 2L/\lambda_{max} - I$. With the normalized
# Laplacian $L_{sym} = I - D^{-1/2} A D^{-1/2}$ and $\lambda_{max} = 2$, the order-2
# filter in terms of $A$ and $D$ (matrices do not commute: sympy keeps the order):

# %%
display(Math(r"F = " + latex(generic_filter(2))))

# %% [markdown]
# ## 2. The table of special cases
#
# Built from `graphfilters.specs.BLOCKS`, one row per block. `n_terms` is `order + 1`.

# %%
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

# %% [markdown]
# The affinity and the closed-form filter of each block (affinity form), as LaTeX:

# %%
rows = ["| block | affinity | filter |", "|---|---|---|"]
for s in BLOCKS.values():
    rows.append(f"| `{s.name}` {s.title} | ${s.affinity_latex}$ | ${s.filter_latex}$ |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## 3. Every block derived from the generic filter
#
# `derive(name)` reads the table row and applies one sympy substitution per step: the
# recursion, the rescaling, the Laplacian's definition, the degree rule (softmax rows sum to
# one: $D = I$), the sign absorption $W^L_k \to (-1)^k W_k$, the stable hypothesis
# (`gsnl_stable` only) and the weight constraint. The last line is the closed form of the
# table, and the proof is that *derived − closed form* expands to the zero matrix.

# %%
derivations = {name: derive(name) for name in BLOCK_NAMES}
for name, d in derivations.items():
    display(Markdown(f"### {d.title}"))
    display(d)
    assert d.verified, name

# %% [markdown]
# The same proofs as plain text, for one block (what `print(derive(...))` shows):

# %%
print(derivations["ns"])

# %% [markdown]
# The non-local block's variants (embedded gaussian, dot product, gaussian, concatenation):

# %%
pd.DataFrame(
    [
        {"mode": m, "affinity": NL_MODES[m][2], "verified": derive("nl", mode=m).verified}
        for m in NL_MODES
    ]
)

# %% [markdown]
# `derive_all()` runs every row and mode; all of them are proved:

# %%
everything = derive_all()
print(len(everything), "derivations, all verified:", all(d.verified for d in everything))

# %% [markdown]
# A wrong closed form is caught. gSNL's exact order-2 term is $T_2(\hat A) = 2\hat A^2 - I$;
# the authors' 2019 code used $2\hat A - I$, which is only right under the "stable
# hypothesis" $\hat A^2 = \hat A$ (that is the separate row `gsnl_stable`):

# %%
wrong = derive("gsnl", closed_form=r"Z W_0 + \hat A Z W_1 + (2\hat A - I) Z W_2")
print("verified:", wrong.verified)
display(Math(r"\text{derived} - \text{claimed} = " + latex(wrong.differences[0])))

# %% [markdown]
# ## 4. The reverse direction, and the frequency responses
#
# `identify` takes a polynomial filter in $A$ or $\hat A$ and returns its order, its
# Chebyshev weights and the weight constraint, and the table rows it matches.

# %%
for expr in (Ahat * Z * W1, Z * W0 - A * Z * W0, Z * W0 + Ahat * Z * W1 + Ahat**2 * Z * W2):
    print(identify(expr), end="\n\n")

# %% [markdown]
# For an eigenvalue $\lambda$ of the block's Laplacian and one entry $w_k$ of each weight,
# the response is $h(\lambda) = \sum_k B_k(\mu(\lambda))\, w_k$ with $\mu = 1 - \lambda$
# for the normalized blocks. Single-weight blocks are shown for unit weight: NL, A², CC and
# DNL are fixed lines through zero at $\lambda = 1$ (DNL's rows sum to 2: pairwise softmax
# plus the unary term), CGNL's zero is at $\lambda_{max}/2$, NS is a pure high-pass
# $-\lambda$, and only SNL and gSNL have a free coefficient for every term.

# %%
rows = ["| block | $h(\\lambda)$ |", "|---|---|"]
for name in BLOCK_NAMES:
    rows.append(f"| `{name}` | ${latex(response(name))}$ |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## 5. The facts behind the argument
#
# Each is checked symbolically (and numerically on random graphs where it is a statement
# about all graphs).

# %%
for fact in all_facts():
    display(Markdown(f"**{'verified' if fact.verified else 'FAILED'}** — {fact.statement}"))
    assert fact.verified
