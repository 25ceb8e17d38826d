"""Griffe extension: render the reST roles used in our numpydoc docstrings as Markdown.

The code base writes numpydoc docstrings with Sphinx roles (``:math:`x```, ``:func:`f```,
``.. math::`` blocks), which PyGSP users expect and which read well in ``help()``.
mkdocstrings renders docstrings as Markdown, so before rendering this extension rewrites

- ``:math:`...``` to ``$...$`` and ``.. math::`` blocks to ``$$ ... $$`` (pymdownx.arithmatex);
- ``:func:`name```, ``:class:`~pkg.Name``` and the other Python roles to code spans;
- reST literal blocks (``text::`` and an indented block) to fenced code blocks;
- reST "simple tables" (columns under ``=====  =====`` borders) to Markdown tables;
- double backticks on the ``name : type`` lines of numpydoc sections (mkdocstrings already
  shows types as code, so ````(B, N)```` would show its backticks);
- reST definition lists (a term line, then an indented definition) to Markdown definition
  lists (``def_list``), outside the numpydoc sections that griffe parses itself (their
  ``name : type`` entries are left alone).

Sphinx-style ``#:`` comments above module attributes (``BLOCKS``, ``KERNEL_NAMES``, ...) are
read as their docstrings, so the constants appear in the API pages.

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


_NOT_A_TERM = re.compile(r"^\s*(?:[-*+] |\d+[.)] |>>>|\.\.|\||\$\$|=+\s|[-=~^]+$)")


def _is_term(line: str) -> bool:
    """A line that can start a definition-list item (``term`` / an indented definition)."""
    stripped = line.strip()
    return bool(stripped) and not stripped.endswith("::") and not _NOT_A_TERM.match(line)


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
    """Term lines followed by a deeper-indented definition, outside numpydoc sections."""
    lines = _retitle_option_sections(text.split("\n"))
    out: list[str] = []
    section = ""
    fenced = False
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("```"):
            fenced = not fenced
        if fenced or lines[i].strip().startswith("```"):
            out.append(lines[i])
            i += 1
            continue
        if i + 1 < len(lines) and lines[i].strip() and _is_underline(lines[i + 1]):
            section = lines[i].strip().lower()
        m = None if section in _KNOWN_SECTIONS else _is_term(lines[i])
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


def _literal_blocks(text: str) -> str:
    """reST literal blocks (``text::`` then an indented block) to fenced code blocks."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::") or line.strip().startswith(".."):
            out.append(line)
            i += 1
            continue
        base = _indent(line)
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines) or _indent(lines[j]) <= base:
            out.append(line)
            i += 1
            continue
        body: list[str] = []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        deeper = min(_indent(b) for b in body if b.strip())
        head = line.rstrip()[:-2].rstrip()
        if head.strip():
            out.append(head + ("" if head.endswith(":") else ":"))
        pad = " " * base
        out += ["", pad + "```text"]
        out += [(pad + b.expandtabs()[deeper:]) if b.strip() else "" for b in body]
        out += [pad + "```", ""]
        i = j
    return "\n".join(out)


_TYPED_SECTIONS = {
    "parameters", "other parameters", "attributes", "returns", "yields", "receives", "raises",
    "warns",
}


def _plain_type_lines(text: str) -> str:
    """Drop ``double backticks`` from the entry lines (not the descriptions) of typed sections."""
    lines = text.split("\n")
    section, base = "", -1
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and line.strip() and _is_underline(lines[i + 1]):
            section, base = line.strip().lower(), _indent(line)
            continue
        if section in _TYPED_SECTIONS and line.strip() and _indent(line) == base:
            if not _is_underline(line):
                lines[i] = line.replace("``", "")
    return "\n".join(lines)


def _join_wrapped_entries(text: str) -> str:
    """Join an entry line of a typed section that wraps after a comma with its continuation.

    numpydoc allows ``a, b, c,`` on one line and ``d, e : float`` on the next (too many names
    for one line); griffe would read the first line as an entry of its own, with no type and
    no description.
    """
    lines = text.split("\n")
    out: list[str] = []
    section, base = "", -1
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and line.strip() and _is_underline(lines[i + 1]):
            section, base = line.strip().lower(), _indent(line)
        elif (
            section in _TYPED_SECTIONS
            and out
            and line.strip()
            and _indent(line) == base
            and out[-1].rstrip().endswith(",")
            and _indent(out[-1]) == base
            and " : " not in out[-1]
        ):
            out[-1] = out[-1].rstrip() + " " + line.strip()
            continue
        out.append(line)
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    r"""Rewrite the reST roles, math directives and simple tables of a docstring as Markdown.

    Examples
    --------
    >>> doc = "Attributes\n----------\na, b,\nc : float\n    Three numbers.\n"
    >>> rst_to_markdown(doc).splitlines()[2]
    'a, b, c : float'
    """
    text = _join_wrapped_entries(text)
    text = _plain_type_lines(text)
    text = _literal_blocks(text)
    text = _simple_tables(text)
    text = _definition_lists(text)
    text = _math_blocks(text)
    # reST's escaped space "\ " glues markup to its neighbours; Markdown needs nothing there.
    text = re.sub(r"(?<=`)\\ |\\ (?=`|:[a-z]+:`)", "", text)
    text = _INLINE_MATH.sub(lambda m: "$" + m.group(1).strip() + "$", text)
    return _PY_ROLE.sub(_role, text)


def _role(m: re.Match) -> str:
    """``:class:`~pkg.mod.Name``` shows ``Name``; without the tilde the full target."""
    target = m.group(2).lstrip(".")
    if m.group(1):
        target = target.rsplit(".", 1)[-1]
    return "`" + target + "`"


class RstRoles(griffe.Extension):
    """Rewrite docstrings once the object tree is complete; read ``#:`` attribute comments."""

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        """Sphinx-style ``#:`` comments above a module or class attribute become its docstring
        (griffe reads only string literals after the assignment)."""
        if attr.docstring is not None or not attr.lineno:
            return
        try:
            lines = attr.parent.lines if attr.parent is not None else []
        except (AttributeError, OSError, ValueError):
            return
        comment: list[str] = []
        i = attr.lineno - 2
        while 0 <= i < len(lines) and lines[i].strip().startswith("#:"):
            comment.insert(0, lines[i].strip()[2:].strip())
            i -= 1
        if comment:
            attr.docstring = griffe.Docstring("\n".join(comment), parent=attr)

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
