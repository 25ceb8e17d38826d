"""The demo pipeline end to end, with tiny settings (the real run is `make demo`)."""

from __future__ import annotations

import re

import analysis.demo as demo
from graphfilters.training import TrainConfig


def test_demo_writes_a_complete_report(tmp_path, monkeypatch):
    def tiny(quick=False, epochs=None):
        cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, max_steps=2, seed=0,
                          progress=False).to_dict()
        return {"depth": 8, "width": 4, "block_positions": [1]}, cfg, {"name": "digits", "size": 8}

    monkeypatch.setattr(demo, "demo_settings", tiny)
    path = demo.run_demo(tmp_path, device="cpu", image_size=(12, 16))
    text = path.read_text()
    assert text.count("| verified |") == 14 and "FAILED" not in text   # 12 + cayley, arma
    assert len(list((tmp_path / "derivations").glob("*.tex"))) == 14
    for name in ("nl", "snl"):
        assert f"## Model `{name}`" in text
        assert (tmp_path / "checkpoints" / f"{name}.pt").is_file()
    assert "## The papers' claims in this run" in text and "‖J‖ full" in text
    assert re.search(r"growth@\d+", text) and "growth lower bound@" in text
    verdicts = "held|did not hold|not separated|inconclusive|not tested"
    assert re.search(rf"\| \*\*({verdicts})\*\* \|", text)
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "figures/photo_affinities.png" in figures and "figures/robustness.png" in figures
    for fig in figures:
        assert (tmp_path / fig).stat().st_size > 5000, fig
    # a second run would reuse the checkpoints (same configuration), not a changed one
    model, cfg, data = tiny()
    ckpt = tmp_path / "checkpoints" / "snl.pt"
    assert demo._reusable(ckpt, {**model, "block": "snl"}, cfg, data) is None
    assert demo._reusable(ckpt, {**model, "block": "snl"}, {**cfg, "lr": 0.2}, data) == (
        "training configuration changed")
    assert demo._reusable(tmp_path / "nope.pt", model, cfg, data) == "no checkpoint yet"
