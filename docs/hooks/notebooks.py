"""MkDocs hook: the notebooks and the gallery, executed at build time, as pages with their figures.

Sources (jupytext percent format, plain Python with ``# %%`` cells):

- every ``notebooks/[0-9]*.py`` becomes the page ``notebooks/<name>.md``, listed under the
  nav section ``Notebooks`` (after the pages written there by hand), so a new notebook shows up
  without editing ``mkdocs.yml``;
- ``docs/gallery.py`` becomes the page ``gallery.md``.

Each source is executed top to bottom in a fresh kernel (``nbclient``; an error fails the build)
and turned into Markdown: markdown cells as written, code cells as Python blocks, text outputs
as text blocks, tables (HTML) and formulas (LaTeX) as themselves, and every figure as a PNG file
next to the page. The executed ``.ipynb`` is published beside the page for download.

Executed notebooks are cached in ``.cache/docs-notebooks/`` (or ``$GRAPHFILTERS_DOCS_CACHE``),
keyed by the source and by every ``.py`` file of ``graphfilters/`` and ``analysis/``, so a
rebuild without code changes does not rerun them. Nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
NAV_SECTION = "Notebooks"
TIMEOUT_S = 300  # per cell
CODE_DIRS = ("graphfilters", "analysis")


@dataclass(frozen=True)
class Source:
    path: Path  # the jupytext source
    page: str  # the page's src_uri in the site, e.g. "notebooks/01_unified_view.md"

    @property
    def stem(self) -> str:
        return self.page[: -len(".md")]


def sources(docs_dir: Path) -> list[Source]:
    """The notebook sources and the pages they become, notebooks in name order first."""
    found = [Source(p, f"notebooks/{p.stem}.md") for p in sorted(NOTEBOOK_DIR.glob("[0-9]*.py"))]
    gallery = docs_dir / "gallery.py"
    if gallery.is_file():
        found.append(Source(gallery, "gallery.md"))
    return found


# ---------------------------------------------------------------------------------------------
# execution (cached)
# ---------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path(os.environ.get("GRAPHFILTERS_DOCS_CACHE", ROOT / ".cache" / "docs-notebooks"))


def _cache_key(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes())
    for folder in CODE_DIRS:
        for code in sorted((ROOT / folder).rglob("*.py")):
            digest.update(str(code.relative_to(ROOT)).encode())
            digest.update(code.read_bytes())
    return digest.hexdigest()[:20]


def _kernel_manager():
    """A kernel running this interpreter, whatever the installed kernelspecs say."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    km.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    return km


def execute(path: Path):
    """The notebook of a jupytext source, executed in a scratch folder (an error raises).

    The wall time is recorded in ``nb.metadata["graphfilters"]["seconds"]``.
    """
    import time

    import jupytext
    import nbclient

    nb = jupytext.read(path)
    env_before = dict(os.environ)
    # The kernel inherits this environment: inline figures (PNG), the repository importable.
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # figures, not speed: be kind to the CPU
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            workdir = Path(scratch) / "notebooks"  # so that ../out is not the repository's
            workdir.mkdir()
            client = nbclient.NotebookClient(
                nb,
                km=_kernel_manager(),
                timeout=TIMEOUT_S,
                kernel_name="python3",
                resources={"metadata": {"path": str(workdir)}},
                allow_errors=False,
            )
            start = time.perf_counter()
            client.execute()
            nb.metadata["graphfilters"] = {"seconds": round(time.perf_counter() - start, 1)}
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    return nb


def executed(path: Path, cache_dir: Path | None = None):
    """``execute(path)``, from the cache when neither the source nor the code changed.

    ``cache_dir`` defaults to ``$GRAPHFILTERS_DOCS_CACHE`` or ``.cache/docs-notebooks``. The
    test suite gives the docs build and tests/test_notebooks.py one cache for the session, so
    a notebook runs once per session whichever of them gets to it first.
    """
    import nbformat

    folder = Path(cache_dir) if cache_dir is not None else _cache_dir()
    cache = folder / f"{path.stem}-{_cache_key(path)}.ipynb"
    if cache.is_file():
        return nbformat.read(cache, as_version=4)
    nb = execute(path)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{path.stem}-*.ipynb"):
        old.unlink(missing_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    nbformat.write(nb, partial)
    os.replace(partial, cache)  # atomic: a reader never sees half a notebook
    return nb


# ---------------------------------------------------------------------------------------------
# notebook -> markdown
# ---------------------------------------------------------------------------------------------

_WIDGET = "application/vnd.jupyter.widget-view+json"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _terminal(text: str) -> str:
    """What a terminal shows: a carriage return rewrites its line (tqdm), no colour codes."""
    lines = [line.rsplit("\r", 1)[-1] for line in _ANSI.sub("", text).split("\n")]
    return "\n".join(lines).rstrip()


def _fence(text: str, lang: str = "text") -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _latex(text: str) -> str:
    """IPython's ``Math`` output (``$\\displaystyle …$``) as a display formula."""
    tex = text.strip()
    for delim in ("$$", "$"):
        if tex.startswith(delim) and tex.endswith(delim) and len(tex) > 2 * len(delim):
            tex = tex[len(delim) : -len(delim)]
            break
    tex = tex.replace("\\displaystyle", "").strip()
    return f"\\[\n{tex}\n\\]"


def _merged_streams(outputs: list) -> list:
    """Consecutive prints to the same stream as one output (one text block on the page)."""
    merged: list = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (out.get("output_type") == "stream" and prev is not None
                and prev.get("output_type") == "stream" and prev.get("name") == out.get("name")):
            merged[-1] = {**prev, "text": _text(prev.get("text", "")) + _text(out.get("text", ""))}
        else:
            merged.append(out)
    return merged


def to_markdown(nb, stem: str, download: str) -> tuple[str, dict[str, bytes]]:
    """The page's Markdown and its figures ``{src_uri: png bytes}``.

    Figures are named ``<stem>/fig-NN.png`` in the order they appear.
    """
    parts: list[str] = []
    figures: dict[str, bytes] = {}
    name = Path(stem).name
    for i, cell in enumerate(nb.cells):
        source = cell.source.strip("\n")
        if cell.cell_type == "markdown":
            parts.append(source)
            if i == 0:  # under the title
                folder = "docs" if stem == "gallery" else "notebooks"
                parts.append(
                    f"[Download the executed notebook]({download}) · source: "
                    f"`{folder}/{name}.py` (jupytext)"
                )
            continue
        if cell.cell_type != "code" or not source:
            continue
        parts.append(_fence(source, "python"))
        for out in _merged_streams(cell.get("outputs", [])):
            kind = out.get("output_type")
            if kind == "stream":
                text = _terminal(_text(out.get("text", "")))
                if text:
                    parts.append(_fence(text))
            elif kind in ("display_data", "execute_result"):
                data = out.get("data", {})
                if _WIDGET in data:  # a live widget (tqdm bar): nothing static to show
                    continue
                if "image/png" in data:
                    uri = f"{stem}/fig-{len(figures) + 1:02d}.png"
                    figures[uri] = base64.b64decode(_text(data["image/png"]))
                    link = f"{name}/{Path(uri).name}"
                    parts.append(f"![Figure {len(figures)}]({link}){{ .nb-figure }}")
                elif "text/html" in data:
                    table = _text(data["text/html"]).strip()
                    parts.append(f'<div class="nb-output" markdown="0">\n{table}\n</div>')
                elif "text/markdown" in data:
                    parts.append(_text(data["text/markdown"]))
                elif "text/latex" in data:
                    parts.append(_latex(_text(data["text/latex"])))
                elif "text/plain" in data:
                    parts.append(_fence(_text(data["text/plain"])))
            elif kind == "error":
                error = f"{out.get('ename')}: {out.get('evalue')}"
                raise RuntimeError(f"{stem}: cell {i} raised {error}")
    return "\n\n".join(parts) + "\n", figures


# ---------------------------------------------------------------------------------------------
# mkdocs hooks
# ---------------------------------------------------------------------------------------------


def _title(path: Path) -> str:
    """The notebook's title (its first markdown heading) for the nav."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# # "):
            return line[4:].strip()
    return path.stem


def on_config(config):
    """Fill the nav section 'Notebooks' with every notebook (after its hand-written pages)."""
    docs_dir = Path(config["docs_dir"])
    pages = [{_title(s.path): s.page} for s in sources(docs_dir) if s.page.startswith("notebooks/")]
    for item in config["nav"] or []:
        if isinstance(item, dict) and NAV_SECTION in item:
            section = item[NAV_SECTION]
            item[NAV_SECTION] = ([section] if isinstance(section, str) else list(section)) + pages
    return config


def on_files(files, config):
    import nbformat
    from mkdocs.structure.files import File

    docs_dir = Path(config["docs_dir"])
    for src in sources(docs_dir):
        nb = executed(src.path)
        name = Path(src.stem).name
        markdown, figures = to_markdown(nb, src.stem, f"{name}.ipynb")
        files.append(File.generated(config, src.page, content=markdown))
        files.append(File.generated(config, f"{src.stem}.ipynb", content=nbformat.writes(nb)))
        for uri, png in figures.items():
            files.append(File.generated(config, uri, content=png))
    return files
