"""The README is true: its set-up commands come first, every public name it mentions exists, every
command it shows is a real subcommand, and every file it points to is there."""

import importlib
import re
from pathlib import Path

from analysis.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# Short names the README's code uses for modules, and the modules they are.
MODULES = {
    "riemann": "riemann",
    "edits": "riemann.edits",
    "tree_utils": "riemann.tree_utils",
    "closed_form": "riemann.closed_form",
    "checkpoints": "analysis.hf.checkpoints",
    "adapters": "analysis.hf.adapters",
    "hub": "analysis.hf.hub",
    "data": "analysis.pairs.data",
    "workbench": "analysis.pairs.workbench",
    "pairs": "analysis.pairs",
    "plan": "analysis.perf.plan",
    "suite": "analysis.study.suite",
}


def _resolve(dotted: str) -> bool:
    """Whether ``dotted`` (``analysis.study.resume.integrate_path_resumable``) names a module or an
    attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_setup_commands_open_the_readme():
    block = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block[0].startswith("python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/riemann run")
    assert block[1].startswith(
        'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'
    )
    assert README.index("```bash") < README.index("##")


def test_every_public_name_in_the_readme_exists():
    short = "|".join(MODULES)
    names = {f"{MODULES[m]}.{a}" for m, a in re.findall(rf"(?<![\w.])({short})\.([a-z_][a-zA-Z_0-9]*)\b", README)}
    names |= set(re.findall(r"\b(analysis(?:\.\w+)+)", README))
    assert len(names) > 20
    missing = sorted(n for n in names if not _resolve(n) and not n.endswith(".py"))
    assert not missing, f"README mentions names that do not exist: {missing}"


def test_every_file_the_readme_points_to_exists():
    paths = set(re.findall(r"`((?:tests|docs|notebooks|analysis|riemann)/[\w/.-]+\.(?:py|md|png))`", README))
    paths |= set(re.findall(r"\]\(((?:docs|notebooks)/[\w/.-]+)\)", README))
    assert len(paths) > 5
    assert not [p for p in sorted(paths) if not (ROOT / p).exists()]


def test_every_command_in_the_readme_is_a_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    used = set(re.findall(r"`riemann ([a-z]+)", README)) | set(re.findall(r"bin/riemann ([a-z]+)", README))
    unknown = {u for u in used if u not in sub.choices}
    assert {"run", "reproduce", "export", "plan", "bench", "edits", "workbench"} <= set(sub.choices)
    assert not unknown, unknown
