"""``riemann bench --quick``: every benchmark runs in its quick form, in one call, and returns the
figures it promises; the figures that are not timings hold (values agree, memory stays flat)."""

import json
import math
from argparse import Namespace

import pytest

from analysis.perf import bench


def _numbers(o):
    """Every number in the figures; NaN and infinities were written to JSON as null, so null counts
    as a number that is not finite."""
    if isinstance(o, dict):
        for v in o.values():
            yield from _numbers(v)
    elif o is None:
        yield float("nan")
    elif isinstance(o, (int, float)) and not isinstance(o, bool):
        yield float(o)


@pytest.fixture(scope="module")
def figures(mini_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert bench.main(Namespace(quick=True, only=None, json=str(out))) == 0
    return json.loads(out.read_text())


def test_every_benchmark_returns_the_fields_it_promises(figures):
    assert set(bench.FIELDS) == set(bench.BENCHMARKS)
    for name, fields in bench.FIELDS.items():
        missing = [f for f in fields if f not in figures[name]]
        assert not missing, f"{name} lacks {missing}"
        assert all(math.isfinite(x) for x in _numbers(figures[name])), name
    assert figures["quick"] is True and figures["machine"]["cpu_count"] >= 1


def test_figures_that_are_not_timings_hold(figures):
    # Per-node gradients are never stored: 32 nodes need about the memory of 2.
    assert figures["path_memory"]["ratio"] < 1.5
    # Our path integral and PyTorch's compute the same number, in both of our modes.
    assert figures["torch_path"]["relative_difference"] < 1e-4
    assert figures["torch_path"]["relative_difference_forward_mode"] < 1e-4
    assert figures["lowrank"]["error_full_over_optimum"] == pytest.approx(1.0, abs=1e-3)
    assert figures["lowrank"]["error_randomized_over_optimum"] < 1.05
    for row in (v for k, v in figures["path_step"].items() if k.startswith("batch ")):
        assert row["path_step_ms"] > 0 and row["bare_value_and_grad_ms"] > 0
    assert figures["suite_scoring"]["edits"] == 15 and figures["suite_scoring"]["riemann"]["spearman"] > 0.5
    assert figures["load_checkpoint"]["shards"] >= 1


def test_only_runs_the_named_benchmarks(tmp_path, capsys):
    assert bench.main(Namespace(quick=True, only=["lowrank"], json=None)) == 0  # the quickest
    printed = capsys.readouterr().out
    assert "[bench] lowrank" in printed and "[bench] path_step" not in printed
