"""Every notebook executes top to bottom (``RIEMANN_SMOKE=1``: the miniature workbench), and its
``.ipynb`` twin holds the same cells as the jupytext ``.py`` source."""

from pathlib import Path

import jupytext
import nbclient
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))
EXPECTED = {"quickstart", "reproduce_the_paper", "bring_your_own_checkpoints", "beyond_first_order"}


def test_every_notebook_is_there_with_its_twin():
    assert {p.stem for p in SOURCES} == EXPECTED
    for src in SOURCES:
        twin = src.with_suffix(".ipynb")
        assert twin.is_file(), f"{twin.name} missing: run `jupytext --sync {src.name}`"
        a = [(c.cell_type, c.source) for c in jupytext.read(src).cells]
        b = [(c.cell_type, c.source) for c in jupytext.read(twin).cells]
        assert a == b, f"{twin.name} differs from {src.name}: run `jupytext --sync notebooks/{src.name}`"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_executes(name, mini_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("RIEMANN_SMOKE", "1")
    monkeypatch.setenv("RIEMANN_CACHE", str(mini_cache.parent))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    assert any(
        o.get("output_type") in ("stream", "display_data", "execute_result")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
