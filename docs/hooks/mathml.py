"""MkDocs hook: the formulas of every page become MathML when the site is built.

``pymdownx.arithmatex`` (generic mode) wraps each formula of the Markdown, the docstrings and
the notebook pages in ``<span class="arithmatex">\\( … \\)</span>`` (inline) or
``<div class="arithmatex">\\[ … \\]</div>`` (display). This hook replaces each of them by the
MathML that ``latex2mathml`` makes of it, so the pages need no script at all to show math:
browsers render MathML natively (Chromium ≥ 109, Firefox, Safari), offline, behind a proxy and
in a PDF export. A formula the converter cannot read fails the build, naming the page.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*'
    r"(?P<open>\\\(|\\\[)(?P<tex>.*?)(?:\\\)|\\\])\s*</(?P=tag)>",
    flags=re.S,
)
# latex2mathml does not know these spacing/sizing commands; they only change the look.
_DROP = re.compile(r"\\(?:displaystyle|textstyle|nonumber|notag)\b")


# Alignment environments become MathML tables (latex2mathml would emit the alignment marks
# ``&`` as text and line breaks that browsers ignore).
_ALIGNED = re.compile(r"\\begin\{(aligned|align\*?|gathered|split)\}(.*?)\\end\{\1\}", re.S)
_INTERTEXT = re.compile(r"^\s*\\intertext\{")
_SIZE = re.compile(r"\\(?:small|footnotesize|scriptsize|normalsize|large)\b\s*")


def _split_top(tex: str, sep: str) -> list[str]:
    """``tex`` split at ``sep`` outside braces (``\\&`` and ``\\\\`` escapes respected)."""
    parts, depth, cur, i = [], 0, "", 0
    while i < len(tex):
        if tex.startswith(sep, i) and depth == 0 and not (sep == "&" and tex[i - 1:i] == "\\"):
            parts.append(cur)
            cur, i = "", i + len(sep)
            continue
        ch = tex[i]
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
        i += 1
    return [*parts, cur]


def _braced(tex: str, start: int) -> tuple[str, int]:
    """The content of the brace group opening at ``tex[start]`` and the index after it."""
    depth = 0
    for i in range(start, len(tex)):
        depth += tex[i] == "{"
        depth -= tex[i] == "}"
        if depth == 0:
            return tex[start + 1:i], i + 1
    raise ValueError(f"unbalanced braces in {tex!r}")


def _text(text: str) -> str:
    """LaTeX text with ``$…$`` math as one math-mode formula (``\\text{…}`` pieces)."""
    text = _SIZE.sub("", text)
    pieces = text.split("$")
    return " ".join(p if i % 2 else rf"\text{{{p}}}" for i, p in enumerate(pieces) if p)


def _inner(tex: str) -> str:
    if not tex.strip():
        return ""
    return convert(tex).split(">", 1)[1].rsplit("</math>", 1)[0]


def _table(body: str) -> str:
    rows = []
    for row in _split_top(body, "\\\\"):
        if _INTERTEXT.match(row):
            start = row.index("{")
            text, end = _braced(row, start)
            rows.append(f'<mtr><mtd columnspan="4" columnalign="left">{_inner(_text(text))}'
                        "</mtd></mtr>")
            row = row[end:]
        if not row.strip():
            continue
        cells = []
        for i, cell in enumerate(_split_top(row, "&")):
            text = re.fullmatch(r"\s*\\text\{(.*)\}\s*", cell, re.S)
            tex = _text(text.group(1)) if text and "$" in text.group(1) else cell
            cells.append(f'<mtd columnalign="{"right" if i % 2 == 0 else "left"}">'
                         f"{_inner(tex)}</mtd>")
        rows.append("<mtr>" + "".join(cells) + "</mtr>")
    return f'<mtable displaystyle="true" rowspacing="0.4em">{"".join(rows)}</mtable>'


def _convert(tex: str, display: bool) -> str:
    """latex2mathml's MathML of ``tex``, alignment environments as tables."""
    pieces, last = [], 0
    for m in _ALIGNED.finditer(tex):
        pieces += [_inner(tex[last:m.start()]), _table(m.group(2))]
        last = m.end()
    if not pieces:
        return convert(tex, display="block" if display else "inline")
    pieces.append(_inner(tex[last:]))
    head = convert("x", display="block" if display else "inline").split(">", 1)[0]
    return f"{head}><mrow>{''.join(pieces)}</mrow></math>"


# Operator names: ``\\operatorname{…}`` (starred or with spacing inside, which latex2mathml
# breaks into an empty ``<mo/>`` and italic letters) and the names TeX sets upright when they
# stand as a script alone (``\\lambda_{max}``, ``\\lambda_\\max``, ``L_{rw}``).
_OPNAME = re.compile(r"\\operatorname\*?\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_OPMARK = "\x01op:"
#: Words that are names, not products of indices, when they stand alone as a script
#: (``L_{rw}``, ``\lambda_{init}``, ``\operatorname{softmax}_{row}``); ``A_{ij}`` stays italic.
_SCRIPT_WORDS = ("max", "min", "sup", "inf", "sym", "rw", "row", "out", "fix", "full", "init",
                 "eff", "kind", "index")
_SCRIPT_NAME = re.compile(rf"([_^])\s*(?:\{{\s*\\?({'|'.join(_SCRIPT_WORDS)})\s*\}}|"
                          r"\\(max|min|sup|inf)\b)")
_TEX_SPACE = re.compile(r"\\[,;:! ]|\\q?quad\b|~")


def _opname(m: re.Match[str]) -> str:
    name = _TEX_SPACE.sub(" ", m.group(1)).replace("{", "").replace("}", "")
    return rf"\text{{{_OPMARK}{' '.join(name.split())}}}"


def _script_name(m: re.Match[str]) -> str:
    name = m[2] or m[3]
    if name in ("max", "min", "sup", "inf"):       # TeX commands latex2mathml knows
        return rf"{m[1]}{{\{name}}}"
    return rf"{m[1]}{{\text{{{_OPMARK}{name}}}}}"  # not a TeX command (``\sym``)


def _prepare(tex: str) -> str:
    tex = _SCRIPT_NAME.sub(_script_name, tex)
    return _OPNAME.sub(_opname, tex)


_MINUS = "<mo>&#x02212;</mo>"
# What a minus sign follows when it is a sign, not a difference: the start of a group (an
# opening tag), an operator, relation, comma or opening bracket (any ``<mo>`` but a closing
# one), an alignment mark.
_CLOSING = {")", "]", "&#x00029;", "&#x0005D;", "&#x0007D;", "&#x0007C;", "|", "&#x02016;",
            "&#x027E9;", "&#x02309;", "&#x0230B;", "&#x00021;", "!", "\u2032", "\u2033",
            "\u2034"}
_BEFORE = re.compile(r"(?:<m[a-z]+(?:\s[^>]*)?(?<!/)>|<mo(?P<attrs>\s[^>]*)?>(?P<op>[^<]*)</mo>|"
                     r"<mi>&(?:amp;)?</mi>)$")
_PRIMES = re.compile(r"<mi>(&#x02032;|&#x02033;|&#x02034;)</mi>")
_PRIME_RUN = re.compile(r"<mrow>((?:<mo>[\u2032\u2033\u2034]</mo>)+)</mrow>")
_ALONE_NAME = re.compile(r"<mrow><mo(?:\s[^>]*)?>([A-Za-z][A-Za-z ]+)</mo></mrow>")
_WORD_MI = re.compile(r"<mi>([A-Za-z]{2,})</mi>")


def _unary(mathml: str) -> str:
    """Signs (``-x``, ``= -1``, ``(-1)^k``) as prefix operators with no space around."""
    out, last = [], 0
    for m in re.finditer(re.escape(_MINUS), mathml):
        before = _BEFORE.search(mathml, 0, m.start())
        if before and not (before["op"] is not None and (
                before["op"] in _CLOSING or 'form="postfix"' in (before["attrs"] or ""))):
            out += [mathml[last:m.start()], '<mo form="prefix" lspace="0" rspace="0">\u2212</mo>']
            last = m.end()
    return "".join([*out, mathml[last:]])


def _primes(mathml: str) -> str:
    """Primes as the operators ``′``, ``″``, ``‴`` of a superscript (not script-size letters)."""
    mathml = _PRIMES.sub(lambda m: f"<mo>{chr(int(m[1][3:-1], 16))}</mo>", mathml)

    def run(m: re.Match[str]) -> str:
        n = sum({"\u2032": 1, "\u2033": 2, "\u2034": 3}[c] for c in m[1]
                if c in "\u2032\u2033\u2034")
        return "<mo>" + "\u2034" * (n // 3) + ("", "\u2032", "\u2033")[n % 3] + "</mo>"

    return _PRIME_RUN.sub(run, mathml)


def _names(mathml: str) -> str:
    """Operator names upright: ``\\operatorname`` as one operator, a name alone in a script
    (``λ_max``) an upright identifier, multi-letter identifiers marked upright."""
    mathml = re.sub(rf"<mtext>{_OPMARK}([^<]*)</mtext>",
                    lambda m: "<mo>" + re.sub(" |&#x000A0;", "&#x02009;", m[1]) + "</mo>", mathml)
    mathml = _ALONE_NAME.sub(lambda m: f'<mrow><mi mathvariant="normal">{m[1]}</mi></mrow>',
                             mathml)
    return _WORD_MI.sub(r'<mi mathvariant="normal">\1</mi>', mathml)


def _polish(mathml: str) -> str:
    return _unary(_primes(_names(mathml)))


def to_mathml(tex: str, *, display: bool) -> str:
    """MathML of one LaTeX formula (the ``\\(``/``\\[`` delimiters removed); ``aligned``,
    ``align``, ``gathered`` and ``split`` become ``mtable`` rows (``\\intertext`` a row of
    text).

    >>> to_mathml("x^2", display=False)[:5]
    '<math'
    >>> "mtable" in to_mathml(r"\\begin{aligned} F &= a \\\\ &= b \\end{aligned}", display=True)
    True
    """
    tex = _DROP.sub("", tex).strip()
    mathml = _polish(_convert(_prepare(tex), display))
    # The source stays with the formula (screen readers, copy and paste, search engines).
    head, rest = mathml.split(">", 1)
    inner = rest.rsplit("</math>", 1)[0]
    annotation = f'<annotation encoding="application/x-tex">{html.escape(tex)}</annotation>'
    return f"{head}><semantics><mrow>{inner}</mrow>{annotation}</semantics></math>"


def render(text: str, where: str = "page") -> str:
    """``text`` (HTML) with every arithmatex formula replaced by MathML."""

    def one(match: re.Match[str]) -> str:
        tex = html.unescape(match["tex"])
        display = match["tag"] == "div" or match["open"] == "\\["
        try:
            mathml = to_mathml(tex, display=display)
        except Exception as err:  # any converter failure: name the formula
            msg = f"{where}: cannot convert the formula {tex!r} to MathML: {err}"
            raise ValueError(msg) from err
        return f'<div class="math-display">{mathml}</div>' if display else mathml

    return _MATH.sub(one, text)


_TOC_MATH = re.compile(r"\\\((?P<tex>.*?)\\\)", flags=re.S)


def _toc_title(title: str, where: str) -> str:
    """A table-of-contents entry keeps the formula of its heading (as plain ``\\( … \\)``)."""
    return _TOC_MATH.sub(lambda m: to_mathml(html.unescape(m["tex"]), display=False), title)


def on_page_content(html_text: str, page, config, files) -> str:
    where = page.file.src_uri
    stack = list(page.toc or [])
    while stack:
        item = stack.pop()
        item.title = _toc_title(item.title, where)
        stack.extend(item.children)
    return render(html_text, where=where)
