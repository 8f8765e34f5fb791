"""The README is true: its set-up commands come first, every public name it mentions exists, and
every command it shows is a real subcommand."""

import importlib
import re
from pathlib import Path

from analysis.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
MODULES = {"riemann": "riemann", "edits": "riemann.edits", "checkpoints": "analysis.checkpoints", "data": "analysis.data",
           "workbench": "analysis.workbench", "pairs": "analysis.pairs", "plan": "analysis.plan", "suite": "analysis.suite"}


def test_setup_commands_open_the_readme():
    block = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block[0].startswith("python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/riemann run")
    assert block[1].startswith('python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest')
    assert README.index("```bash") < README.index("##")


def test_every_public_name_in_the_readme_exists():
    names = set(re.findall(r"\b(riemann|edits|checkpoints|data|workbench|pairs|plan|suite)\.([a-z_][a-zA-Z_0-9]*)\b", README))
    names |= {(m.split(".")[-1], a) for m, a in re.findall(r"\banalysis\.(\w+)\.(\w+)\b", README)
              if m in MODULES}
    assert len(names) > 15
    missing = []
    for mod, attr in sorted(names):
        if mod == "riemann" and attr in ("edits",):
            continue
        target = importlib.import_module(MODULES[mod])
        if not hasattr(target, attr) and not (Path(__file__).resolve().parents[1] / mod / f"{attr}.py").exists():
            missing.append(f"{mod}.{attr}")
    assert not missing, f"README mentions names that do not exist: {missing}"


def test_every_command_in_the_readme_is_a_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    used = set(re.findall(r"`riemann ([a-z]+)", README)) | set(re.findall(r"bin/riemann ([a-z]+)", README))
    unknown = {u for u in used if u not in sub.choices}
    assert {"run", "reproduce", "export", "plan", "bench", "edits", "workbench"} <= set(sub.choices)
    assert not unknown, unknown
