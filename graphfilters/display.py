r"""How results show themselves: short summaries for ``repr``, HTML cards and tables for Jupyter.

One place for the formatting of every result object (analysis tables, derivations,
identifications, spectra, responses, stability, captures, affinities, operators); the classes
have thin ``__repr__`` / ``_repr_html_`` / ``_repr_latex_`` methods that call these. A summary
names shapes, the method, the status and the key numbers, never a tensor's values.

Examples
--------
>>> import numpy as np
>>> describe(np.zeros((2, 6, 6)))
'array (2, 6, 6) float64'
>>> short_repr("Spectrum", {"operator": "normalized", "method": "eig", "tol": 1e-3})
'<Spectrum operator=normalized, method=eig, tol=0.001>'
>>> "<table>" in card_html("Spectrum", {"method": "eig"})
True
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["describe", "fmt", "short_repr", "card_html", "table_html", "table_text"]


def pandas() -> Any:
    """The ``pandas`` module, or an ImportError that says how to install it (the
    ``to_frame()`` methods' one import)."""
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is a dev dependency
        raise ImportError("to_frame() needs pandas: pip install pandas") from exc
    return pd


def describe(value: Any) -> str:
    """One line for any value: a tensor or array by its shape and dtype, a number formatted,
    a long sequence by its length.

    Examples
    --------
    >>> import torch
    >>> describe(torch.zeros(3, 4)), describe(0.123456), describe(list(range(20)))
    ('tensor (3, 4) float32', '0.1235', 'list of 20')
    """
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (int, float)):
        kind = "tensor" if type(value).__module__.startswith("torch") else "array"
        dtype = str(value.dtype).replace("torch.", "")
        return f"{kind} {tuple(int(s) for s in value.shape)} {dtype}"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(describe(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return fmt(value)


def fmt(value: Any, spec: str = ".4g") -> str:
    """A number with ``spec`` (``-`` for NaN or None), anything else as ``str``.

    Examples
    --------
    >>> fmt(float("nan")), fmt(0.5, ".0%"), fmt(True), fmt("eig")
    ('-', '50%', 'True', 'eig')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if spec == "s":
        return str(value)
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def short_repr(name: str, items: Mapping[str, Any]) -> str:
    """``<name k=v, ...>`` with every value through :func:`describe`."""
    body = ", ".join(f"{k}={describe(v)}" for k, v in items.items())
    return f"<{name} {body}>" if body else f"<{name}>"


_STATUS_COLOUR = {"ok": "#1a7f37", "exact": "#1a7f37", "certified": "#1a7f37",
                  "uncertified": "#cf222e", "partial": "#9a6700", "skipped": "#cf222e",
                  "VERIFIED": "#1a7f37", "NOT VERIFIED": "#cf222e"}


def _status_html(status: str) -> str:
    colour = _STATUS_COLOUR.get(status, "#57606a")
    return f'<span style="color:{colour};font-weight:600">{html.escape(status)}</span>'


def card_html(title: str, items: Mapping[str, Any], *, status: str | None = None,
              notes: Iterable[str] = ()) -> str:
    """A small HTML card: a title (with a coloured status), one row per item, notes below.

    Values are rendered with :func:`describe` (strings as given, HTML-escaped).
    """
    head = f"<b>{html.escape(title)}</b>" + (f" &middot; {_status_html(status)}" if status else "")
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(str(k))}</th>"
        f"<td style='text-align:left'>{html.escape(describe(v))}</td></tr>"
        for k, v in items.items())
    foot = "".join(f"<div style='font-size:90%'>{html.escape(n)}</div>" for n in notes if n)
    return f"<div>{head}<table>{rows}</table>{foot}</div>"


def table_html(headers: Sequence[str], rows: Sequence[Sequence[str]], *, caption: str = "",
               notes: Iterable[str] = (), status_column: int | None = None) -> str:
    """An HTML table of pre-formatted cells (escaped), with a caption and notes below.

    ``status_column`` is the index of a column whose cells are coloured as statuses.
    """
    th = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [(_status_html(c) if i == status_column else html.escape(c))
                 for i, c in enumerate(row)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    foot = "".join(f"<div style='font-size:90%'>{html.escape(n)}</div>" for n in notes if n)
    return (f"<div><table>{cap}<thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody>"
            f"</table>{foot}</div>")


def table_text(headers: Sequence[str], rows: Sequence[Sequence[str]], *,
               left: int = 3) -> str:
    """A fixed-width text table; the first ``left`` columns left-aligned, the rest right.

    Examples
    --------
    >>> print(table_text(["block", "λ_max"], [["a", "1.000"]], left=1))
    block  λ_max
    -----  -----
    a      1.000
    """
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# symbolic results: one display per step, each with its explanation (no alignment marks)
# ---------------------------------------------------------------------------------------------


def _steps(d: Any) -> list[tuple[str, str]]:
    """(explanation in markdown, equation in LaTeX) per line of a derivation."""
    from graphfilters.symbolic.printing import latex

    K = d.spec.order
    out = [("the generic Chebyshev filter, Laplacian form",
            rf"F = \sum_{{k=0}}^{{{K}}} T_{{k}}(\tilde{{L}})\, Z\, W^{{L}}_{{k}}")]
    for step in d.steps:
        out.append((step.paper_text, rf"F = {latex(step.expr)}"))
    return out


def _verdict(d: Any) -> str:
    return "VERIFIED" if d.verified else "NOT VERIFIED"


def derivation_markdown(d: Any) -> str:
    """Markdown of a derivation: its title and verdict, then one display per step, each
    after the explanation of the step, and the closed form it proves.

    Examples
    --------
    >>> from graphfilters.symbolic import derive
    >>> md = derivation_markdown(derive("snl"))
    >>> md.count("$$") // 2 >= 3, "&" in md
    (True, False)
    """
    from graphfilters.symbolic.printing import latex

    lines = [f"**Derivation of {d.title}**: {_verdict(d)} "
             f"({len(d.assumptions)} assumptions, `str()` lists them)", ""]
    for i, (why, eq) in enumerate(_steps(d)):
        # "Step i." as text: a markdown list item per step restarts at 1 between displays
        lines += [f"**Step {i}.** {why}:" if i else f"From {why}:", "", f"$$ {eq} $$", ""]
    for cf, diff in zip(d.closed_forms, d.differences):
        zero = bool(getattr(diff, "is_ZeroMatrix", False)) or diff == 0
        lines.append(f"Closed form ({d.source}): $F = {latex(cf)}$, "
                     + ("proved: derived $-$ closed form $= 0$." if zero else
                        f"NOT proved: derived $-$ closed form $= {latex(diff)}$."))
    return "\n".join(lines).rstrip() + "\n"


def derivation_latex(d: Any) -> str:
    """One ``aligned`` display of a derivation with each step's explanation beside it."""
    from graphfilters.symbolic.printing import text_latex

    rows = []
    for i, (why, eq) in enumerate(_steps(d)):
        lhs, rhs = eq.split("=", 1)
        text = text_latex(why) if "$" not in why else rf"\text{{{why}}}"
        rows.append(f"{lhs if i == 0 else ''}&={rhs} && {text}")
    return "$$\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}$$"


def _identification_forms(ident: Any) -> list[tuple[str, str]]:
    """(label, LaTeX of F) for each form of an identification."""
    import sympy as sp

    from graphfilters.symbolic.printing import latex

    if hasattr(ident, "operators"):  # a projector term or two graphs (attention table)
        return [("Terms", " + ".join(
            rf"{' '.join(_latex_op(w) for w in word) or 'I'}\, Z \left({sp.latex(c)}\right)"
            for word, c in ident.coefficients.items()))]
    X = latex(ident.operator)
    if hasattr(ident, "poles"):     # a rational (ARMA) identification
        terms = " + ".join(rf"(I - {sp.latex(p)} {X})^{{-1}} Z\, {sp.latex(w)}"
                           for p, w in zip(ident.poles, ident.weights))
        return [("Resolvent terms", terms + (r" + P(X) Z" if ident.polynomial else ""))]
    power = " + ".join(rf"{X}^{{{p}}} Z \left({sp.latex(c)}\right)"
                       for p, c in ident.power_coefficients.items())
    cheb = " + ".join(rf"T_{{{k}}}({X}) Z \left({sp.latex(c)}\right)"
                      for k, c in ident.chebyshev_coefficients.items())
    return [("Power basis", power), ("Chebyshev basis (affinity form)", cheb)]


def _latex_op(name: str) -> str:
    """LaTeX of an operator by its symbol name (``A_1`` -> ``A_{1}``)."""
    from graphfilters.symbolic.printing import latex
    from graphfilters.symbolic.symbols import SYMBOLS

    return latex(SYMBOLS[name])


def identification_latex(ident: Any) -> str:
    """The identified filter as one display per form (power and Chebyshev basis)."""
    return "$$\\begin{gathered}\n" + " \\\\\n".join(
        rf"F = {eq} \quad \text{{({label.lower()})}}"
        for label, eq in _identification_forms(ident)) + "\n\\end{gathered}$$"


def identification_markdown(ident: Any) -> str:
    """Markdown of :func:`graphfilters.symbolic.identify`'s result: the filter in the power
    and the Chebyshev basis (or its resolvent terms), the weight constraint and the table rows
    it matches.

    Examples
    --------
    >>> from graphfilters.symbolic import identify
    >>> md = identification_markdown(identify(r"Z W_0 + \\hat A Z W_1"))
    >>> "snl" in md and "$$" in md
    True
    """
    from graphfilters.symbolic.printing import latex

    if hasattr(ident, "operators"):  # a projector term or two graphs (attention table)
        lines = [f"**Filter of order {ident.order}** on "
                 + ", ".join(f"${_latex_op(o)}$" for o in ident.operators), ""]
        lines += [f"{label}: $$ F = {eq} $$" for label, eq in _identification_forms(ident)]
        if ident.scalars is not None:
            lines += ["", f"Gain on the constant vector (DC): ${latex(ident.dc_gain())}$."]
        lines += ["", "Attention-table rows: "
                  + (", ".join(f"`{m}`" for m in ident.matches) or "none") + "."]
        if ident.note:
            lines += ["", f"Note: {ident.note}"]
        lines += [f"- assumed: {a}" for a in ident.assumptions]
        return "\n".join(lines) + "\n"
    X = latex(ident.operator)
    rational = hasattr(ident, "poles")
    lines = [f"**Rational (ARMA) filter** with {ident.order} pole(s) in ${X}$" if rational
             else f"**Polynomial filter of order {ident.order}** in ${X}$", ""]
    for label, eq in _identification_forms(ident):
        lines += [f"{label}: $$ F = {eq} $$", ""]
    if not rational:
        rel = ", ".join(f"${r}$" for r in ident.relations_latex) or "none"
        lines += [f"Weight constraint: `{ident.weight_constraint}` (relations: {rel}).", ""]
    lines.append(f"Table rows: {', '.join(f'`{m}`' for m in ident.matches) or 'none'}.")
    if ident.note:
        lines += ["", f"Note: {ident.note}"]
    lines += [f"- assumed: {a}" for a in ident.assumptions]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# numeric results: the key numbers, never the values of a tensor
# ---------------------------------------------------------------------------------------------


def _range(values: Any) -> str:
    import numpy as np

    v = np.asarray(values).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "-"
    if np.iscomplexobj(v):
        return f"|·| ≤ {np.abs(v).max():.4g}, Re in [{v.real.min():.4g}, {v.real.max():.4g}]"
    return f"[{v.min():.4g}, {v.max():.4g}]"


def spectrum_items(s: Any) -> dict[str, Any]:
    """Key facts of an :class:`analysis.eigen.Spectrum`."""
    per = {len(e) for e in s.eigenvalues}
    out = {"operator": f"{s.operator} ({s.kind})", "nodes": s.n,
           "samples": s.n_samples, "eigenvalues per sample": ", ".join(map(str, sorted(per))),
           "method": f"{s.method}: {s.reason}" if s.reason else s.method,
           "status": s.status + (f" ({s.n_uncertified} missed tol={s.tol:g})"
                                 if s.n_uncertified else ""),
           "range": _range(s.all()), "real spectrum": not s.is_complex}
    if s.residuals:
        out["max residual"] = s.max_residual()
    return out


def response_items(r: Any) -> dict[str, Any]:
    """Key facts of an :class:`analysis.response.BlockResponse`."""
    st = r.stats
    out = {"class": r.label + (f" (forced: {r.forced})" if r.forced else ""),
           "form": r.form, "basis": r.basis,
           "grid": f"{len(r.lam)} points on [0, {r.lambda_max:g}]",
           "singular values": r.gains.shape[1] if r.gains.ndim == 2 else 1,
           "mean gain low / mid / high": " / ".join(fmt(st.get(k, float("nan")))
                                                   for k in ("low", "mid", "high")),
           "captured eigenvalues": sum(len(e) for e in r.eigenvalues)}
    if r.head_labels:
        out["heads"] = ", ".join(r.head_labels)
    return out


def stability_items(st: Any) -> dict[str, Any]:
    """Key facts of an :class:`analysis.stability.linear.Stability`."""
    g = list(st.growth)
    return {"ρ(M) (exact)": st.radius, "‖M‖₂ (exact)": st.norm,
            f"growth ‖Mⁿ‖, n = 1..{len(g)}": (f"{g[0]:.4g} … {g[-1]:.4g}" if g else "-"),
            "‖M‖ lower bound (per frequency)": st.norm_lower_bound,
            "frequencies": st.n_frequencies, "how": st.how, "converged": st.converged}


def capture_items(c: Any) -> dict[str, Any]:
    """Key facts of an :class:`analysis.capture_record.Capture`."""
    out = {"module": f"{c.module_type} ({c.source})",
           "block": c.spec.name if c.spec is not None else "-",
           "affinity": (f"{type(c.affinity).__name__} {tuple(c.affinity.shape)}"
                        if c.affinity is not None else "-"),
           "normalization": c.normalization, "nodes": c.n,
           "grid": "×".join(map(str, c.spatial_shape)) or "-",
           "samples": getattr(c, "n_samples", "-"), "order": c.order}
    if c.z is not None:
        out["values Z"] = c.z
    if c.weights:
        out["weights"] = ", ".join(describe(w) for w in c.weights)
    return out


def affinity_items(a: Any) -> dict[str, Any]:
    """Key facts of a :class:`graphfilters.graph.Affinity` (no entries)."""
    return {"structure": type(a).__name__, "shape": tuple(a.shape), "symmetric": a.symmetric,
            "backend": "torch" if a.is_torch else "numpy"}


def operator_items(op: Any) -> dict[str, Any]:
    """Key facts of a :class:`graphfilters.graph.NormalizedOperator`."""
    return {"normalization": op.kind, "nodes": op.n, "symmetric": op.symmetric,
            "affinity": f"{type(op.affinity).__name__} {tuple(op.affinity.shape)}"}
