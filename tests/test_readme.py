"""README.md stays true to the code: its commands exist and its example runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_two_commands_are_make_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "docs", "bench"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "VERIFIED" in out and "snl" in out


def test_layout_names_real_paths():
    for path in re.findall(r"^  (\w+\.py|\w+/)", README, re.M):
        hits = list(ROOT.glob(f"graphfilters/{path}")) + list(ROOT.glob(path))
        assert hits, path
