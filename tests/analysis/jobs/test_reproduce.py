"""``riemann reproduce`` on the mini workbench: each experiment's JSON, Markdown and figure."""

import json

from analysis.cli import main


def test_reproductions_on_the_mini_workbench(mini_cache, tmp_path, capsys):
    out = tmp_path / "repro"
    assert main(["reproduce", "fig4", "table1", "--size", "mini", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Fig. 4" in printed and "paper:" in printed and "ours:" in printed
    fig4 = json.loads((out / "fig4.json").read_text())
    assert [p["pair"] for p in fig4["pairs"]] == ["lm/arithmetic", "vit/rotated"]
    for p in fig4["pairs"]:
        assert [r["spec"] for r in p["edits"]] == [f"bitdelta:magnitude_bits={b}" for b in range(6)]
        # More magnitude bits can only bring the edit closer to ΔW (nested blocks): the change shrinks.
        norms = [r["change_norm"] for r in p["edits"]]
        assert all(a >= b - 1e-6 for a, b in zip(norms, norms[1:]))
    table = json.loads((out / "table1.json").read_text())
    assert {r["name"] for r in table["pairs"][0]["edits"]} == {"dare", "biased_sign", "biased_product"}
    assert (out / "fig4.png").stat().st_size > 10_000 and "**Paper:**" in (out / "table1.md").read_text()
    stamp = (out / "fig4.json").stat().st_mtime_ns
    assert main(["reproduce", "fig4", "--size", "mini", "--out", str(out), "--quiet"]) == 0  # kept, not recomputed
    assert (out / "fig4.json").stat().st_mtime_ns == stamp
    assert main(["reproduce", "fig9", "--out", str(tmp_path / "x")]) == 2
    assert "unknown experiment(s) ['fig9']" in capsys.readouterr().err
