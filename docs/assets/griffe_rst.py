"""Griffe extension: render the reST roles used in our numpydoc docstrings as Markdown.

The code base writes numpydoc docstrings with Sphinx roles (``:math:`x```, ``:func:`f```,
``.. math::`` blocks), which PyGSP users expect and which read well in ``help()``.
mkdocstrings renders docstrings as Markdown, so before rendering this extension rewrites

- ``:math:`...``` to ``$...$`` and ``.. math::`` blocks to ``$$ ... $$`` (pymdownx.arithmatex);
- ``:func:`name```, ``:class:`~pkg.Name``` and the other Python roles to code spans.

It only changes what the documentation site shows; the docstrings themselves are untouched.
Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_INLINE_MATH = re.compile(r":math:`([^`]+)`")
_PY_ROLE = re.compile(
    r":(?:py:)?(?:func|class|mod|data|attr|meth|obj|exc|const|ref|term):`~?([^`]+)`"
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


def rst_to_markdown(text: str) -> str:
    """Rewrite the reST roles and math directives of a docstring as Markdown."""
    text = _math_blocks(text)
    text = _INLINE_MATH.sub(lambda m: "$" + m.group(1).strip() + "$", text)
    return _PY_ROLE.sub(lambda m: "`" + m.group(1) + "`", text)


class RstRoles(griffe.Extension):
    """Rewrite docstrings once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
