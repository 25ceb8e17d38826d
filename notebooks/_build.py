"""Build the notebooks of this folder from the Python source below, as clean JSON.

The notebooks are stored without outputs or execution counts, with fixed cell ids, so that
a diff shows only what changed in the source. Edit the cells here, then run::

    .venv/bin/python notebooks/_build.py            # (re)write notebooks/NN_*.ipynb
    .venv/bin/python notebooks/_build.py --check    # exit 1 if a notebook is out of date

The test suite executes every notebook (tests/test_notebooks.py) and checks that the stored
files are what this script writes.
"""

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


NOTEBOOKS = {
    "01_unified_view.ipynb": (NB01, "nb01"),
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
