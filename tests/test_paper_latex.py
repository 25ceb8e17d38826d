"""Paper-ready output of the symbolic layer: LaTeX options, the blocks table, plain text, and
a pdflatex compilation at 1-inch margins without overfull boxes."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from graphfilters.symbolic import blocks_table_latex, derive_all, latex_to_text

PREAMBLE = (r"\documentclass{article}" "\n" r"\usepackage[margin=1in]{geometry}" "\n"
            r"\usepackage{amsmath,amssymb,array}" "\n" r"\begin{document}" "\n")


@pytest.fixture(scope="module")
def derivations():
    return derive_all()


def test_to_latex_options(derivations):
    for d in derivations:
        plain = d.to_latex()
        assert plain.startswith("\\begin{align*}") and "\\nonumber" not in plain
        numbered = d.to_latex(numbered=True)
        lines = numbered.split(" \\\\\n")
        assert numbered.startswith("\\begin{align}")
        assert all("\\nonumber" in line for line in lines[:-1]) and "\\nonumber" not in lines[-1]
        assert "\\intertext" not in d.to_latex(annotations="none")
        full = d.to_latex(annotations="full")
        for text in (plain, full):
            assert "lambda_{max}" not in text and "\\_" not in text and "''" not in text
            assert not re.search(r"\^\{- ?\\frac", text)       # one notation: D^{-1/2}
        rows = [line.split("\n")[-1] for line in d.to_latex(annotations="none").split(" \\\\\n")]
        assert all(a != b for a, b in zip(rows, rows[1:])), d.name     # no repeated line
    with pytest.raises(ValueError, match="annotations"):
        derivations[0].to_latex(annotations="long")


def test_plain_text_is_readable(derivations):
    for d in derivations:
        text = str(d)
        assert "\\" not in text, (d.name, [t for t in text.splitlines() if "\\" in t])
    assert latex_to_text(r"\hat A = D^{-1/2} \operatorname{sym}(M)") == "Ahat = D^-1/2 sym(M)"


def test_blocks_table():
    tex = blocks_table_latex()
    assert tex.count("\\texttt{") == 11 and "\\texttt{cayley}" in tex and "$W_0 = 0$" in tex


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex not installed (apt-get install texlive-latex-recommended)")
def test_latex_compiles_without_overfull_boxes(derivations, tmp_path):
    body = ["\\small", blocks_table_latex(), "\\normalsize"]
    for d in derivations:
        for ann in ("none", "short", "full"):
            body.append(d.to_latex(numbered=ann == "short", annotations=ann))
    (tmp_path / "doc.tex").write_text(PREAMBLE + "\n\n".join(body) + "\n\\end{document}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert run.returncode == 0, log[-2000:]
    overfull = re.findall(r"Overfull \\hbox.*", log)
    assert not overfull, overfull
