r"""What every derivation shares: :class:`DerivationBase`, the parent of the polynomial
:class:`~graphfilters.symbolic.derivation.Derivation` and the rational
:class:`~graphfilters.symbolic.rational.RationalDerivation`.

A derivation has a table row (``spec``), a ``title``, the lines of its ``align``
environment (``latex_lines``, written by each kind) and ``to_latex`` for papers; the checks
of the ``annotations`` and ``numbered`` arguments are written once here.

Examples
--------
>>> print(align([r"F &= a", r"&= b"], numbered=True))
\begin{align}
F &= a \nonumber \\
&= b
\end{align}
"""

from __future__ import annotations

from typing import Any

from graphfilters import _validate as V

__all__ = ["DerivationBase", "ANNOTATIONS", "ANNOTATIONS_ARG", "align"]

#: The ``annotations`` of :meth:`DerivationBase.to_latex`: no notes, what each step does, or
#: that and its substitution.
ANNOTATIONS = ("none", "short", "full")


#: The declaration of an ``annotations`` argument (:func:`graphfilters._validate.validate_params`).
ANNOTATIONS_ARG = [V.StrOptions(ANNOTATIONS)]


@V.validate_params({"numbered": ["boolean"]},
                   valid=lambda: {"lines": [r"F &= a", r"&= b"], "numbered": True})
def align(lines: list[str], numbered: bool) -> str:
    """An ``align*`` (or ``align`` numbering only the last line) of ``lines``."""
    if numbered:
        lines = [line + r" \nonumber" for line in lines[:-1]] + lines[-1:]
    env = "align" if numbered else "align*"
    return f"\\begin{{{env}}}\n" + " \\\\\n".join(lines) + f"\n\\end{{{env}}}"


class DerivationBase:
    """The interface of a derivation: ``spec``, ``name``, ``order``, ``title``,
    ``verified``, ``latex_lines(annotations)`` and ``to_latex(numbered, annotations)``."""

    spec: Any

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def order(self) -> int:
        return self.spec.order

    @property
    def title(self) -> str:
        mode = getattr(self.spec, "mode", None)
        return f"{self.spec.title} ['{self.spec.name}'" + (f", mode {mode}" if mode else "") \
            + "]"

    def latex_lines(self, annotations: str = "short") -> list[str]:  # pragma: no cover
        raise NotImplementedError

    @V.validate_params({"numbered": ["boolean"], "annotations": ANNOTATIONS_ARG},
                       valid=lambda: {"self": _OneLine()})
    def to_latex(self, numbered: bool = False, annotations: str = "short") -> str:
        """LaTeX for papers: one ``align`` line per step (``numbered``: ``align`` with one
        equation number, on the final line; ``annotations``: see :data:`ANNOTATIONS`)."""
        return align(self.latex_lines(annotations), numbered)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.title}: verified={self.verified}>"


class _OneLine(DerivationBase):
    """A one-line derivation (the valid call of :meth:`DerivationBase.to_latex`'s
    declaration)."""

    def latex_lines(self, annotations: str = "short") -> list[str]:
        return [r"F &= A Z W"]
