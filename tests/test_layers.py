"""The package's arrows point one way: ``riemann`` never imports ``analysis``, nothing outside
``riemann/`` imports ``riemann._src``, and each part of ``analysis`` imports only the parts below it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# analysis's parts, bottom to top; a part may import its own modules and any part of a lower rank.
RANKS = {"hosts": 0, "files": 1, "hf": 2, "pairs": 3, "study": 4, "reporting": 5, "jobs": 6, "perf": 6, "cli": 7}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, at any depth (lazy imports count too). Relative
    imports are refused: the rules below read absolute module names."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}:{node.lineno}: relative import"
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "analysis" and len(parts) > 1 else None


def _sources(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def test_every_module_of_analysis_belongs_to_a_ranked_part():
    parts = {p.relative_to(ROOT / "analysis").parts[0].removesuffix(".py") for p in _sources("analysis")}
    assert parts - {"__init__"} == set(RANKS)


def test_analysis_imports_point_down():
    wrong = []
    for path in _sources("analysis"):
        rel = path.relative_to(ROOT / "analysis").parts
        if rel == ("__init__.py",):
            continue
        own = rel[0].removesuffix(".py")
        for line, module in _imports(path):
            target = _part(module)
            if target in RANKS and target != own and RANKS[target] >= RANKS[own]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {module} ({target})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_the_engine_stands_alone():
    wrong = [
        f"{p.relative_to(ROOT)}:{line} imports {m}"
        for p in _sources("riemann")
        for line, m in _imports(p)
        if m.split(".")[0] == "analysis"
    ]
    wrong += [
        f"{p.relative_to(ROOT)}:{line} imports {m}"
        for p in _sources("analysis", "tests", "notebooks")
        for line, m in _imports(p)
        if m.startswith("riemann._src")
    ]
    assert not wrong, "\n".join(wrong)


def test_the_old_short_names_still_import_and_cost_nothing_until_used():
    import importlib
    import subprocess
    import sys

    import analysis

    for short, module in analysis.SHORT_NAMES.items():
        assert getattr(analysis, short) is importlib.import_module(module), short
    assert (
        (ROOT / "analysis" / analysis.SHORT_NAMES["checkpoints"].split(".", 1)[1].replace(".", "/"))
        .with_suffix(".py")
        .is_file()
    )
    probe = "import sys, analysis; analysis.__dir__(); print('jax' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr
