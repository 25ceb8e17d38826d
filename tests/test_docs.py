"""The documentation: the site builds in strict mode and the theory page matches the code."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphfilters.specs import BLOCK_NAMES, BLOCKS

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"

# A row of the table of special cases: | `name` | `kernel` | `norm` | order | `constraint` | ...
_ROW = re.compile(
    r"^\|\s*`(?P<name>[a-z0-9_]+)`\s*\|\s*`(?P<kernel>[a-z_]+)`\s*\|"
    r"\s*`(?P<normalization>[a-z_]+)`\s*\|\s*(?P<order>\d+)\s*\|\s*`(?P<constraint>[a-z_0-9]+)`\s*\|"
)


def _theory_table() -> list[dict[str, str]]:
    text = THEORY.read_text(encoding="utf-8")
    section = text.split("## The special cases", 1)[1].split("\n## ", 1)[0]
    return [m.groupdict() for line in section.splitlines() if (m := _ROW.match(line))]


def test_theory_table_matches_block_table():
    rows = _theory_table()
    assert [r["name"] for r in rows] == list(BLOCK_NAMES), (
        "docs/theory.md's table of special cases must list the blocks of "
        "graphfilters.specs.BLOCKS, in table order"
    )
    for row in rows:
        spec = BLOCKS[row["name"]]
        documented = (row["kernel"], row["normalization"], int(row["order"]), row["constraint"])
        actual = (spec.kernel, spec.normalization, spec.order, spec.weight_constraint)
        assert documented == actual, f"docs/theory.md row {row['name']!r}: {documented} != {actual}"


def test_theory_page_states_the_conventions():
    text = THEORY.read_text(encoding="utf-8")
    assert "$c_0$ is twice ours" in text  # numpy's c_0 vs Hammond / PyGSP's c_0 / 2
    assert "`order` is the polynomial degree" in text
    assert "\\lambda_{max} \\le 2" in text


def test_every_public_module_has_an_api_page():
    """Each module documented under docs/api/ is in the nav, and each nav page exists."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        assert f"api/{page.name}" in nav, f"{page} is not in the mkdocs.yml nav"
    for target in re.findall(r":\s*(api/[\w.-]+\.md)", nav):
        assert (ROOT / "docs" / target).is_file(), f"nav entry {target} has no page"


def _cli_options() -> dict[str, set[str]]:
    from analysis.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {opt for act in p._actions if act.help != argparse.SUPPRESS
               for opt in act.option_strings if opt.startswith("--") and opt != "--help"}
        for name, p in sub.choices.items()
    }


def test_cli_page_matches_the_parser():
    """docs/cli.md documents every command and option of `python -m analysis`, and no other."""
    pytest.importorskip("analysis.cli")
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    intro, *sections = re.split(r"^## `([\w-]+)`\s*$", text, flags=re.M)
    documented = dict(zip(sections[::2], sections[1::2]))
    options = _cli_options()
    assert set(documented) == set(options), "one '## `command`' section per CLI command"
    shared = set(re.findall(r"--[a-z][a-z-]*", intro))  # --device, --traceback
    for name, body in documented.items():
        mentioned = set(re.findall(r"--[a-z][a-z-]*", body))
        assert mentioned <= options[name], f"{name}: unknown {sorted(mentioned - options[name])}"
        missing = options[name] - mentioned - shared
        assert not missing, f"docs/cli.md does not document {name} {sorted(missing)}"


_OPTION_ROW = re.compile(r"^\|\s*`(?P<flag>--[a-z][a-z0-9-]*)[^`]*`\s*\|(?P<text>.*)\|\s*$", re.M)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _documented_rows(text: str) -> dict[str, str]:
    """``{--flag: meaning}`` from the option tables (``| `--flag ARG` | meaning |``)."""
    return {m["flag"]: m["text"].strip() for m in _OPTION_ROW.finditer(text)}


def _same_default(documented: str, default) -> bool:
    value = documented.strip().strip("`")
    if isinstance(default, bool):
        return value.lower() == str(default).lower()
    if isinstance(default, (int, float)):
        try:
            return float(value) == float(default)
        except ValueError:
            return False
    if isinstance(default, (list, tuple)):
        return value.split() == [str(v) for v in default]
    return value == str(default)


def test_cli_page_defaults_are_the_parsers():
    """Every option of every command (read from the parser, so new options are checked too)
    has a row in docs/cli.md whose stated default is the parser's:

    - a default value is written ``(default VALUE)`` (``VALUE`` in backticks or not; numbers
      compare as numbers, so ``1e-4`` is ``0.0001``);
    - a default of ``None`` is either not stated or described, ``(default: words)``; every
      number in the words must be in the option's ``--help`` text (which says what None does);
    - a required option says ``(required)``; flags (``store_true``) state no default.
    Rows of the table before the first command section apply to every command (``--device``).
    """
    from analysis.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    intro, *sections = re.split(r"^## `([\w-]+)`\s*$", text, flags=re.M)
    documented = dict(zip(sections[::2], sections[1::2]))
    shared = _documented_rows(intro)
    problems = []
    for name, command in sub.choices.items():
        rows = {**shared, **_documented_rows(documented.get(name, ""))}
        for action in command._actions:
            flags = [f for f in action.option_strings if f.startswith("--") and f != "--help"]
            if not flags or action.help == argparse.SUPPRESS:
                continue
            flag = flags[0]
            where = f"docs/cli.md `{name}` {flag}"
            row = rows.get(flag)
            if row is None:
                problems.append(f"{where}: no row in the option table")
                continue
            stated = re.search(r"\(default(?P<colon>:)?\s+(?P<value>[^)]*)\)", row)
            help_text = (action.help or "").replace("%%", "%")
            default = action.default
            if action.required:
                if "(required)" not in row:
                    problems.append(f"{where}: required, the page does not say so")
            elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                if stated:
                    problems.append(f"{where}: a flag, the page states a default")
            elif default is None:
                if stated and not stated["colon"]:
                    problems.append(f"{where}: the parser's default is None, the page says "
                                    f"{stated['value']!r}")
                elif stated:
                    missing = [n for n in _NUMBER.findall(stated["value"])
                               if n not in help_text]
                    if missing:
                        problems.append(f"{where}: the page's default {stated['value']!r} "
                                        f"has {missing}, the --help text {help_text!r} not")
            elif not stated or stated["colon"]:
                problems.append(f"{where}: the page states no default (parser: {default!r})")
            elif not _same_default(stated["value"], default):
                problems.append(f"{where}: the page says default {stated['value']!r}, "
                                f"the parser {default!r}")
    assert not problems, "\n".join(problems)


def test_wrapped_numpydoc_entry_is_one_entry():
    """An Attributes entry whose names wrap onto a second line is one row with its type and
    description on the API page (docs/assets/griffe_rst.py joins the lines)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "docs/assets/griffe_rst.py")
    griffe_rst = importlib.util.module_from_spec(spec)
    pytest.importorskip("griffe")
    spec.loader.exec_module(griffe_rst)
    doc = ("One row.\n\nAttributes\n----------\nlambda_max, spectral_gap,\n"
           "effective_rank : float\n    Metrics.\nname : str\n    A name.\n")
    lines = griffe_rst.rst_to_markdown(doc).splitlines()
    assert "lambda_max, spectral_gap, effective_rank : float" in lines
    assert "name : str" in lines and "One row." in lines
    from analysis.analyze import BlockReport

    converted = griffe_rst.rst_to_markdown(BlockReport.__doc__)
    assert not [x for x in converted.splitlines() if x.rstrip().endswith(",") and
                x.startswith("    ") and not x.startswith("        ")], "an entry still wraps"


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("page", ["getting-started.md", "howto-analyse-your-model.md",
                                  "howto-official-snl.md"])
def test_python_examples_run(page, tmp_path, monkeypatch):
    """The ```python examples of the guide pages run as written, in order, in one namespace
    (```py blocks are shown only: they need files the test does not have)."""
    pytest.importorskip("analysis")
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks(ROOT / "docs" / page)
    assert blocks, f"no python example in docs/{page}"
    namespace: dict = {"__name__": "__docs__"}
    try:
        for code in blocks:
            exec(compile(code, f"docs/{page}", "exec"), namespace)  # noqa: S102
    finally:  # adapters registered by an example must not leak into other tests
        from analysis import unregister_adapter

        for value in list(namespace.values()):
            if isinstance(value, type):
                unregister_adapter(value)


def check_no_external_script(site: Path) -> None:
    """No built page loads a script or a style sheet from the network: the site reads the
    same offline, behind a proxy, or saved to disk."""
    tag = re.compile(r"<(script|link)\b[^>]*>", re.I)
    url = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)
    offenders = []
    for page in sorted(site.rglob("*.html")):
        for m in tag.finditer(page.read_text(encoding="utf-8")):
            is_script = m[1].lower() == "script"
            is_style = "stylesheet" in m[0].lower() or "preload" in m[0].lower()
            if (is_script or is_style) and url.search(m[0]):
                offenders.append(f"{page.relative_to(site)}: {m[0]}")
    assert not offenders, "pages load from the network:\n" + "\n".join(offenders)


#: Alignment marks or TeX that leaked into MathML (latex2mathml's ``aligned`` output).
_LEAKS = re.compile(r"<m[io][^>]*>&amp;</m[io]>|linebreak=\"newline\"|\\begin\{|\\end\{|"
                    r"\\intertext|\\\\|<m(?:i|o|n|text)(?:\s[^>]*)?>\\[A-Za-z]+")


def _leaks(html: str) -> list[str]:
    """Alignment marks and raw TeX inside the MathML of ``html`` (annotations excepted)."""
    found = []
    for math in re.findall(r"<math.*?</math>", html, flags=re.S):
        body = re.sub(r"<annotation.*?</annotation>", "", math, flags=re.S)
        found += [m.group(0) for m in _LEAKS.finditer(body)]
    return found


def _mathml_hook():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_mathml_hook",
                                                  ROOT / "docs/hooks/mathml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_aligned_derivations_become_mathml_tables():
    """Every derivation's LaTeX (its aligned display and its align* document form) becomes
    MathML rows: no alignment mark ``&``, line break or raw TeX leaks into the HTML."""
    pytest.importorskip("latex2mathml")
    from graphfilters.symbolic import derive

    hook = _mathml_hook()
    for name in ("snl", "gsnl", "ns", "cayley"):
        d = derive(name)
        for tex in (d._repr_latex_().strip("$"), d.to_latex()):
            html = hook.render(f'<div class="arithmatex">\\[{tex}\\]</div>', where=name)
            assert "<mtable" in html and html.count("<mtr>") >= len(d.steps), name
            assert _leaks(html) == [], (name, _leaks(html)[:3])
    # the check itself catches latex2mathml's own aligned output
    from latex2mathml.converter import convert
    assert _leaks(convert(r"\begin{aligned} F &= a \\ &= b \end{aligned}"))


def _math_body(tex: str) -> str:
    """The MathML the docs hook makes of ``tex`` (inline), its TeX annotation dropped."""
    import html

    mathml = _mathml_hook().to_mathml(tex, display=False)
    return html.unescape(re.sub(r"<annotation.*?</annotation>", "", mathml, flags=re.S))


_SIGN = '<mo form="prefix" lspace="0" rspace="0">\u2212</mo>'


@pytest.mark.parametrize("tex", [r"-x", r"a = -b", r"(-1)^k", r"e^{-x}", r"\frac{-1}{2}",
                                 r"a \leq -1", r"\left(-x\right)", r"a, -b",
                                 r"\begin{aligned} F &= -a \\ & -b \end{aligned}"])
def test_unary_minus_is_a_prefix_sign(tex):
    """A minus at the start of a group or after an operator, relation, opening bracket or
    alignment mark is a sign: a prefix operator with no space around it."""
    pytest.importorskip("latex2mathml")
    body = _math_body(tex)
    assert _SIGN in body, body
    assert "<mo>\u2212</mo>" not in body, body


@pytest.mark.parametrize("tex", [r"a - b", r"(a) - b", r"x^2 - 1", r"n! - 1",
                                 r"\left(a\right) - b"])
def test_binary_minus_keeps_its_spacing(tex):
    pytest.importorskip("latex2mathml")
    body = _math_body(tex)
    assert "<mo>\u2212</mo>" in body and _SIGN not in body, body


@pytest.mark.parametrize(("tex", "prime"), [("x'", "\u2032"), (r"x^{\prime}", "\u2032"),
                                            ("f''", "\u2033"), (r"x^{\prime\prime}", "\u2033")])
def test_primes_are_superscript_operators(tex, prime):
    pytest.importorskip("latex2mathml")
    body = _math_body(tex)
    base = "f" if tex.startswith("f") else "x"
    assert f"<msup><mi>{base}</mi><mo>{prime}</mo></msup>" in body, body


def test_index_pairs_stay_italic():
    """``A_{ij}`` is two indices, not a name: italic letters, unlike ``L_{rw}``."""
    pytest.importorskip("latex2mathml")
    body = _math_body("A_{ij}")
    assert '<mi mathvariant="normal">' not in body and "<mi>i</mi>" in body, body


@pytest.mark.parametrize(("tex", "name"), [(r"\max_i x_i", "max"),
                                           (r"\operatorname{softmax}(x)", "softmax"),
                                           (r"\lambda_{\max}", "max"), (r"\lambda_{max}", "max"),
                                           (r"\lambda_\max", "max"), (r"\log x", "log"),
                                           (r"L_{sym}", "sym"), (r"L_{\sym}", "sym"),
                                           (r"L_{rw}", "rw"), (r"\lambda_{init}", "init"),
                                           (r"\operatorname{softmax}_{row}(x)", "row"),
                                           (r"\operatorname*{arg\,max}_x f", "arg\u2009max")])
def test_operator_names_are_upright(tex, name):
    """Operator names are one upright token (``<mo>`` or ``<mi mathvariant="normal">``), never
    italic letters or a broken ``\\operatorname``."""
    pytest.importorskip("latex2mathml")
    body = _math_body(tex)
    upright = re.search(rf'<mo[^>]*>{name}</mo>|<mi mathvariant="normal">{name}</mi>', body)
    assert upright, body
    assert "<mo />" not in body and "<mi>m</mi><mi>a</mi>" not in body, body


def check_math_is_rendered(site: Path) -> None:
    """Formulas are MathML in the built HTML: none is left as raw TeX for a script to typeset,
    and no alignment mark or raw TeX leaks into the MathML (notebook pages included)."""
    nb_pages = [f"{folder}/index.html" for _, folder in _notebook_sources()]
    for rel in ("theory/index.html", "api/graph/index.html", "design/index.html", *nb_pages):
        html = (site / rel).read_text(encoding="utf-8")
        assert not _leaks(html), f"{rel}: alignment marks or TeX in the MathML: {_leaks(html)[:3]}"
        if rel in nb_pages:
            continue
        assert "<math" in html, f"{rel}: no MathML"
        assert 'class="arithmatex"' not in html, f"{rel}: a formula was left to a script"
        body = re.sub(r"<annotation.*?</annotation>|<pre.*?</pre>|<code.*?</code>", "", html,
                      flags=re.S)
        raw = re.findall(r"\\\(.{0,40}|\\\[.{0,40}", body)
        assert not raw, f"{rel}: raw TeX on the page: {raw[:3]}"
        if rel.startswith("api/"):
            assert ":math:" not in html, f"{rel}: a reST role was not rewritten"


def _notebook_sources() -> list[tuple[Path, str]]:
    """(source, page folder in the site) of every executed notebook page."""
    pages = [(p, f"notebooks/{p.stem}") for p in sorted((ROOT / "notebooks").glob("[0-9]*.py"))]
    return [*pages, (ROOT / "docs" / "gallery.py", "gallery")]


def check_notebook_pages_have_their_figures(site: Path) -> None:
    """Every notebook (and the gallery) has a page showing every figure it made: the page's
    images are exactly the PNG outputs of the executed notebook published beside it, each a
    real PNG file of the site, and there is at least one per ``plt.show()`` of the source."""
    import nbformat

    for source, folder in _notebook_sources():
        page = site / folder / "index.html"
        assert page.is_file(), f"{source.name}: no page {folder}/"
        html = page.read_text(encoding="utf-8")
        executed = nbformat.read(site / f"{folder}.ipynb", as_version=4)
        outputs = [out for cell in executed.cells if cell.cell_type == "code"
                   for out in cell.outputs]
        assert not [o for o in outputs if o.output_type == "error"], f"{source.name} failed"
        pngs = sum("image/png" in out.get("data", {}) for out in outputs)
        shows = source.read_text(encoding="utf-8").count("plt.show()")
        images = re.findall(r'<img[^>]*src="([^"]+\.png)"', html)
        assert len(images) == pngs >= shows, (
            f"{folder}: {len(images)} images on the page, {pngs} figures in the notebook, "
            f"{shows} plt.show()"
        )
        for src in images:
            target = (page.parent / src).resolve()
            assert target.is_file(), f"{folder}: missing figure {src}"
            assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{folder}: {src} not a PNG"
        assert 'class="arithmatex"' not in html, f"{folder}: a formula was left to a script"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mkdocs_build_strict(tmp_path, notebook_cache):
    """``mkdocs build --strict`` of the whole site, notebooks executed (as ``make docs``),
    then the built pages are checked: no script from the network, math rendered as MathML,
    every notebook page with its figures."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("latex2mathml")
    pytest.importorskip("jupytext")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               GRAPHFILTERS_DOCS_CACHE=str(notebook_cache))
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index.html", "theory/index.html", "api/graph/index.html", "gallery/index.html",
                 "design/index.html", "notebooks/index.html"):
        assert (site / page).is_file(), page
    check_no_external_script(site)
    check_math_is_rendered(site)
    check_notebook_pages_have_their_figures(site)
    check_no_raw_rst_tables(site)
    shutil.rmtree(site, ignore_errors=True)


def check_no_raw_rst_tables(site: Path) -> None:
    """No docstring table reaches a page as its raw ``=====`` rules (an RST simple table the
    docstring converter did not turn into a table)."""
    for page in sorted((site / "api").glob("*/index.html")):
        text = re.sub(r"<pre.*?</pre>|<code.*?</code>", "", page.read_text(encoding="utf-8"),
                      flags=re.S)
        assert "=====" not in text, f"{page.parent.name}: a raw RST table rule on the page"


# A row of the attention table: | `name` | affinity | operators | order | filter |
_ATTENTION_ROW = re.compile(
    r"^\|\s*`(?P<name>[a-z0-9_]+)`\s*\|[^|]*\|\s*(?P<operators>\d)(?P<projector> \(\+ projector\))?"
    r"\s*\|\s*(?P<order>\d+)\s*\|"
)


def test_theory_attention_table_matches_the_attention_table():
    """docs/theory.md's attention table lists graphfilters.specs.ATTENTION_BLOCKS in order,
    with each row's number of operators, projector and order."""
    from graphfilters.specs import ATTENTION_BLOCK_NAMES, ATTENTION_BLOCKS

    text = THEORY.read_text(encoding="utf-8")
    section = text.split("## The attention table", 1)[1].split("\n## ", 1)[0]
    rows = [m.groupdict() for line in section.splitlines() if (m := _ATTENTION_ROW.match(line))]
    assert [r["name"] for r in rows] == list(ATTENTION_BLOCK_NAMES)
    for row in rows:
        spec = ATTENTION_BLOCKS[row["name"]]
        documented = (int(row["operators"]), row["projector"] is not None, int(row["order"]))
        assert documented == (spec.operators, spec.projector, spec.order), row["name"]
