"""analysis — everything that binds the ``riemann`` engine to real things.

Parts, each importing only those listed before it (and :mod:`riemann`)::

    hosts.py          several processes: start-up from the environment, agreement, who writes
    files.py          atomic output files (process 0 of several), fresh output directories, slugs
    hf/               Hugging Face checkpoints: safetensors, the model families, load / save
    pairs/            the Pair type and its registry, user checkpoints, data, losses, accuracy,
                      the built-in workbench
    study/            estimators (registry), the edit suite, statistics, claims, resumable integrals
    reporting/        report.md, figures
    jobs/             the main job (run directories, pairs in worker processes, the cache of compiled
                      programs), reproductions, export
    perf/             memory plans, benchmarks, the 8B-scale run
    cli.py            the ``riemann`` command

The modules' earlier short names still import (``from analysis import checkpoints, data, suite``):
each resolves to the module's new home on first use, without importing anything before.
"""

from __future__ import annotations

import importlib
from typing import Any

# Short name -> module, for every module that lived directly under analysis/ before the parts.
SHORT_NAMES = {
    "io": "analysis.files",
    "checkpoints": "analysis.hf.checkpoints",
    "safetensors_file": "analysis.hf.safetensors_file",
    "models": "analysis.hf.models",
    "data": "analysis.pairs.data",
    "generate": "analysis.pairs.decode",
    "example": "analysis.pairs.mlp",
    "workbench": "analysis.pairs.workbench",
    "suite": "analysis.study.suite",
    "stats": "analysis.study.stats",
    "claims": "analysis.study.claims",
    "resume": "analysis.study.resume",
    "report": "analysis.reporting.report",
    "plots": "analysis.reporting.plots",
    "reproduce_plots": "analysis.reporting.paper_figures",
    "run": "analysis.jobs.run",
    "reproduce": "analysis.jobs.reproduce",
    "plan": "analysis.perf.plan",
    "bench": "analysis.perf.bench",
    "scale": "analysis.perf.scale",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that `riemann --help` does not import JAX.
    if name in SHORT_NAMES:
        return importlib.import_module(SHORT_NAMES[name])
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *SHORT_NAMES])
