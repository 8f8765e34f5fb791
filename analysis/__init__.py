"""analysis — everything that binds the ``riemann`` engine to real things.

Subpackages, each importing only those listed before it (and :mod:`riemann`)::

    files, progress   atomic output files, slugs; progress bars
    hf/               Hugging Face checkpoints: safetensors, the model families, load / save
    pairs/            the Pair type and its registry, user checkpoints, data, losses, accuracy,
                      the built-in workbench
    study/            estimators (registry), the edit suite, statistics, claims, resumable integrals
    reporting/        report.md, figures
    jobs/             the main job (run directories), reproductions, export
    perf/             memory plans, benchmarks, the 8B-scale run
    cli               the ``riemann`` command

The modules users reach for most are also importable by their short names, loaded on first use:
``from analysis import checkpoints, data, pairs, workbench, plan, suite, resume``.
"""

from __future__ import annotations

import importlib
from typing import Any

_SHORT = {
    "checkpoints": "analysis.hf.checkpoints",
    "data": "analysis.pairs.data",
    "workbench": "analysis.pairs.workbench",
    "plan": "analysis.perf.plan",
    "suite": "analysis.study.suite",
    "resume": "analysis.study.resume",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that `riemann --help` does not import JAX.
    if name in _SHORT:
        return importlib.import_module(_SHORT[name])
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SHORT])
