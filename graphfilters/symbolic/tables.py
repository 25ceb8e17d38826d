r"""A compact LaTeX table of every block: block, affinity, order, constraint, closed form.

Read from the block table (:mod:`graphfilters.specs`), one row per block (``nl`` in its
default mode), as one ``tabular`` that fits a page with 1-inch margins (needs the ``array``
package for its ragged paragraph columns and ``amsmath``).

Examples
--------
>>> tex = blocks_table_latex()
>>> tex.splitlines()[0]
'\\begin{tabular}{@{}l>{\\raggedright\\arraybackslash}p{5.6cm}c>{\\raggedright\\arraybackslash}p{1.8cm}>{\\raggedright\\arraybackslash}p{4.2cm}@{}}'
>>> sum(line.endswith(r"\\") for line in tex.splitlines()) - 1     # rows (minus the header)
11
"""

from __future__ import annotations

from collections.abc import Sequence

from graphfilters.specs import BLOCK_NAMES, get_spec

__all__ = ["blocks_table_latex", "CONSTRAINT_LATEX"]

#: The weight constraints as equations.
CONSTRAINT_LATEX = {
    "free": "free",
    "drop_order0": "$W_0 = 0$",
    "tied": "$W_0 = -W_1$",
}


def blocks_table_latex(names: Sequence[str] | None = None) -> str:
    r"""The blocks as one LaTeX ``tabular`` (``\usepackage{array, amsmath}``).

    Parameters
    ----------
    names : sequence of str, optional
        Table names (default: every block, :data:`graphfilters.specs.BLOCK_NAMES`).
    """
    rows = []
    for name in BLOCK_NAMES if names is None else names:
        spec = get_spec(name)
        affinity = spec.affinity_latex.replace(r",\ ", r",$ $")
        closed = spec.filter_latex.replace(r",\ ", r",$ $")
        rows.append(
            rf"\texttt{{{spec.name.replace('_', chr(92) + '_')}}} & ${affinity}$ & "
            rf"{spec.order} & "
            rf"{CONSTRAINT_LATEX[spec.weight_constraint]} & ${closed}$ \\"
        )
    col = r">{\raggedright\arraybackslash}p"
    head = rf"\begin{{tabular}}{{@{{}}l{col}{{5.6cm}}c{col}{{1.8cm}}{col}{{4.2cm}}@{{}}}}"
    return "\n".join([
        head,
        r"\hline",
        r"block & affinity & order & constraint & closed form \\",
        r"\hline",
        *rows,
        r"\hline",
        r"\end{tabular}",
    ])
