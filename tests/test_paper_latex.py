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


# ----------------------------------------------------------------------------------------
# identify: Laplacian symbols, A vs Ahat, the sum notation, rational expressions, limits
def test_identify_laplacians_and_operators():
    from graphfilters.symbolic import identify

    r = identify("L Z W")
    assert r.matches == ("ns",) and r.assumptions and "L = I - Ahat" in r.assumptions[0]
    assert identify(r"-L_{rw} Z W").matches == ("ns",)
    assert identify("L_sym Z W0").order == 1
    raw = identify("Z W0 + A Z W1 + A^2 Z W2")
    assert raw.matches == () and "act on Ahat" in raw.note and "note:" in str(raw)
    assert identify("Z W0 + Ahat Z W1 + Ahat^2 Z W2").matches == ("gsnl",)
    assert identify(r"\sum_{k=0}^{2} T_k(\hat A) Z W_k").matches == ("gsnl",)
    assert identify(r"F = \sum_{k=0}^{1} T_{k}(\hat A)\, Z\, W_{k}").matches == ("snl",
                                                                                "gsnl_stable")


def test_identify_rational_round_trip():
    from graphfilters.specs import get_spec
    from graphfilters.symbolic import RationalIdentification, identify

    r = identify(get_spec("arma").filter_latex)            # the table's ARMA closed form
    assert isinstance(r, RationalIdentification) and r.matches == ("arma",)
    assert str(r.poles[0]) == "psi_1" and r.polynomial.order == 0
    two = identify(r"Z W_0 + (2 I - \hat A)^{-1} Z W_1 + (I + 0.3 \hat A)^{-1} Z W_2")
    assert [float(p) for p in two.poles] == [0.5, -0.3] and two.order == 2
    raw = identify("(I + A)^{-1} Z W")
    assert raw.matches == () and "|psi| >= 1" in raw.note and "acts on Ahat" in raw.note
    with pytest.raises(ValueError, match="not .a I . b X.\\^-1 Z W_k"):
        identify(r"(I + A)^{-1} (I - A)^{-1} Z W")


def test_symbolic_limits_fail_fast():
    import time

    from graphfilters.symbolic import derive, identify
    from graphfilters.symbolic.limits import SymbolicLimitError

    cases = [
        (lambda: derive("snl", order=50), "MAX_ORDER"),
        (lambda: identify(" + ".join(["A Z W_1"] * 3000)), "MAX_TEXT"),
        (lambda: identify("(" * 40 + "A" + ")" * 40 + " Z W_0"), "MAX_DEPTH"),
        (lambda: identify("A^100 Z W_0"), "MAX_POWER"),
    ]
    for call, name in cases:
        t0 = time.perf_counter()
        with pytest.raises(SymbolicLimitError, match=name):
            call()
        assert time.perf_counter() - t0 < 0.5, name
