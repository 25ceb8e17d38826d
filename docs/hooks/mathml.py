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


def to_mathml(tex: str, *, display: bool) -> str:
    """MathML of one LaTeX formula (the ``\\(``/``\\[`` delimiters removed).

    >>> to_mathml("x^2", display=False)[:5]
    '<math'
    """
    tex = _DROP.sub("", tex).strip()
    mathml = convert(tex, display="block" if display else "inline")
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
