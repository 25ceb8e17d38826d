"""Griffe extension: render the reST roles used in our numpydoc docstrings as Markdown.

The code base writes numpydoc docstrings with Sphinx roles (``:math:`x```, ``:func:`f```,
``.. math::`` blocks), which PyGSP users expect and which read well in ``help()``.
mkdocstrings renders docstrings as Markdown, so before rendering this extension rewrites

- ``:math:`...``` to ``$...$`` and ``.. math::`` blocks to ``$$ ... $$`` (pymdownx.arithmatex);
- ``:func:`name```, ``:class:`~pkg.Name``` and the other Python roles to code spans;
- reST "simple tables" (columns under ``=====  =====`` borders) to Markdown tables;
- reST definition lists whose terms are literals (``"exact"`` then an indented
  definition) to Markdown definition lists (``def_list``). Other indented blocks, such as
  numpydoc ``name : type`` entries, are left alone.

It only changes what the documentation site shows; the docstrings themselves are untouched.
Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_INLINE_MATH = re.compile(r":math:`([^`]+)`")
_PY_ROLE = re.compile(
    r":(?:py:)?(?:func|class|mod|data|attr|meth|obj|exc|const|ref|term):`(~?)([^`]+)`"
)
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*\n")


def _math_blocks(text: str) -> str:
    """Turn ``.. math::`` directives (an indented body) into ``$$`` blocks."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _MATH_DIRECTIVE.match(lines[i] + "\n")
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = len(m.group("indent").expandtabs())
        i += 1
        body: list[str] = []
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            line_indent = len(line.expandtabs()) - len(line.expandtabs().lstrip())
            if stripped and line_indent <= indent:
                break
            body.append(stripped)
            i += 1
        while body and not body[-1]:
            body.pop()
        while body and not body[0]:
            body.pop(0)
        pad = " " * indent
        out.extend(["", pad + "$$", *[pad + b for b in body if b], pad + "$$", ""])
    return "\n".join(out)


_BORDER = re.compile(r"^(?P<indent>[ \t]*)=+(?:[ \t]+=+)+[ \t]*$")


def _split_row(line: str, starts: list[int]) -> list[str]:
    """Cut ``line`` at the column starts, moving a cut right while it falls inside a word."""
    cells, prev = [], starts[0]
    for start in starts[1:]:
        cut = start
        while 0 < cut < len(line) and not line[cut - 1].isspace():
            cut += 1
        cells.append(line[prev:cut].strip())
        prev = cut
    cells.append(line[prev:].strip())
    return [c.replace("|", "\\|") for c in cells]


def _simple_tables(text: str) -> str:
    """Turn reST simple tables (border, header, border, rows, border) into Markdown tables."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _BORDER.match(lines[i])
        borders = [j for j in range(i, len(lines)) if lines[j].strip() and _BORDER.match(lines[j])]
        if not m or len(borders) < 3 or borders[1] != i + 2:
            out.append(lines[i])
            i += 1
            continue
        end = borders[2]
        starts = [r.start() for r in re.finditer(r"=+", lines[i])]
        pad = m.group("indent")
        header = _split_row(lines[i + 1], starts)
        rows = [_split_row(line, starts) for line in lines[i + 3 : end] if line.strip()]
        out.append("")
        out.append(pad + "| " + " | ".join(header) + " |")
        out.append(pad + "|" + "---|" * len(header))
        out.extend(pad + "| " + " | ".join(r) + " |" for r in rows)
        out.append("")
        i = end + 1
    return "\n".join(out)


_LITERAL_TERM = re.compile(r"^(?P<indent>[ \t]*)``[^`]+``(?:\s*(?:/|,|or)\s*``[^`]+``)*[ \t]*$")


def _indent(line: str) -> int:
    return len(line.expandtabs()) - len(line.expandtabs().lstrip())


# numpydoc sections that griffe parses itself (their entries must stay as they are).
_KNOWN_SECTIONS = {
    "parameters", "other parameters", "returns", "yields", "receives", "raises", "warns",
    "attributes", "functions", "methods", "classes", "modules", "examples", "deprecated",
    "type aliases", "type parameters",
}
# Listing sections that some docstrings use for the values of an option (``"exact"`` ...):
# griffe would read the literals as function names, so they are retitled and rendered as
# definition lists.
_LISTING_SECTIONS = {"functions", "methods", "classes", "modules"}


def _is_underline(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= 3 and set(stripped) == {"-"}


def _retitle_option_sections(lines: list[str]) -> list[str]:
    out = list(lines)
    for i in range(len(lines) - 2):
        title = lines[i].strip().lower()
        if title in _LISTING_SECTIONS and _is_underline(lines[i + 1]):
            first = next((x for x in lines[i + 2 :] if x.strip()), "")
            if _LITERAL_TERM.match(first):
                new = lines[i].rstrip() + " (values)"
                out[i] = new
                out[i + 1] = lines[i + 1][: _indent(lines[i + 1])] + "-" * len(new.strip())
    return out


def _definition_lists(text: str) -> str:
    """``term`` lines (literals only) followed by a deeper-indented definition."""
    lines = _retitle_option_sections(text.split("\n"))
    out: list[str] = []
    section = ""
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i].strip() and _is_underline(lines[i + 1]):
            section = lines[i].strip().lower()
        m = None if section in _KNOWN_SECTIONS else _LITERAL_TERM.match(lines[i])
        nxt = i + 1
        if not m or nxt >= len(lines) or not lines[nxt].strip():
            out.append(lines[i])
            i += 1
            continue
        base = _indent(lines[i])
        if _indent(lines[nxt]) <= base:
            out.append(lines[i])
            i += 1
            continue
        body: list[str] = []
        j = nxt
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        j = nxt + len(body)
        deeper = min(_indent(b) for b in body if b.strip())
        pad = " " * base
        if out and out[-1].strip():
            out.append("")
        out.append(lines[i])
        for k, b in enumerate(body):
            rest = b.expandtabs()[deeper:] if b.strip() else ""
            lead = ":   " if k == 0 else "    "
            out.append((pad + lead + rest) if rest else "")
        out.append("")
        i = j
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    """Rewrite the reST roles, math directives and simple tables of a docstring as Markdown."""
    text = _simple_tables(text)
    text = _definition_lists(text)
    text = _math_blocks(text)
    text = _INLINE_MATH.sub(lambda m: "$" + m.group(1).strip() + "$", text)
    return _PY_ROLE.sub(_role, text)


def _role(m: re.Match) -> str:
    """``:class:`~pkg.mod.Name``` shows ``Name``; without the tilde the full target."""
    target = m.group(2).lstrip(".")
    if m.group(1):
        target = target.rsplit(".", 1)[-1]
    return "`" + target + "`"


class RstRoles(griffe.Extension):
    """Rewrite docstrings once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
