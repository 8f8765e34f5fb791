"""Pairs side by side in worker processes: results in order, log lines and ticks relayed, a worker's
exception raised in the parent with its pair named, a worker that dies without one named too."""

import functools
import os
import pickle
import subprocess
import sys

import pytest

from analysis.jobs import workers
from tests.analysis.helpers import ROOT


def _square(name: str, relay: workers.Relay, *, times: int = 1) -> tuple[str, int, int]:
    for _ in range(times):
        relay.tick()
    relay.log(f"{name} done")
    return name, int(name) ** 2, os.getpid()


def _fails(name: str, relay: workers.Relay) -> int:
    if name == "2":
        raise ValueError(f"pair {name} is malformed")
    return int(name)


def _dies(name: str, relay: workers.Relay) -> int:
    relay.log("about to die")
    if name == "2":
        os._exit(3)
    return int(name)


def _unsendable(name: str, relay: workers.Relay):
    return lambda: name  # a result that cannot be pickled back


def test_results_come_back_in_order_from_other_processes():
    lines = []
    out = workers.each(_square, ["3", "1", "2"], jobs=2, log=lines.append, progress=False)
    assert [(n, sq) for n, sq, _ in out] == [("3", 9), ("1", 1), ("2", 4)]
    assert os.getpid() not in {pid for *_, pid in out}
    assert sorted(lines) == ["1 done", "2 done", "3 done"]


def test_ticks_move_the_one_bar(capsys):
    out = workers.each(
        functools.partial(_square, times=4), ["1", "2"], jobs=2, log=print, progress=True, total=10, initial=2
    )
    assert len(out) == 2
    captured = capsys.readouterr()
    assert "10/10" in captured.err  # 2 done before + 4 ticks from each worker
    assert "1 done" in captured.out + captured.err


def test_one_job_runs_here_and_takes_anything():
    lines = []
    out = workers.each(lambda n, r: (r.log(n), n * 2)[1], ["a", "b"], jobs=1, log=lines.append, progress=False)
    assert out == ["aa", "bb"] and lines == ["a", "b"]


def test_a_workers_exception_is_raised_here_naming_its_pair():
    with pytest.raises(ValueError, match="pair 2 is malformed") as info:
        workers.each(_fails, ["1", "2", "3"], jobs=2, log=lambda s: None, progress=False)
    assert any("worker process for 2" in note for note in info.value.__notes__)


def test_a_worker_that_dies_is_named():
    with pytest.raises(RuntimeError, match=r"worker process for 2 stopped with exit code 3"):
        workers.each(_dies, ["1", "2"], jobs=2, log=lambda s: None, progress=False)


def test_work_that_cannot_be_sent_is_refused_clearly():
    with pytest.raises(ValueError, match="must be picklable"):
        workers.each(lambda n, r: n, ["1", "2"], jobs=2, progress=False)
    with pytest.raises(ValueError, match="jobs=0"):
        workers.each(_square, ["1"], jobs=0, progress=False)


def test_a_result_that_cannot_be_sent_back_is_named():
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)) as info:
        workers.each(_unsendable, ["1", "2"], jobs=2, log=lambda s: None, progress=False)
    assert any("worker process for" in note for note in info.value.__notes__)


def test_a_worker_whose_parent_is_gone_ends():
    # Its parent is not process 1 here, so the watch sees "gone" at once and ends the process.
    code = "from analysis.jobs import workers; workers._watch_parent(1); print('still here')"
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True
    )
    assert done.returncode == 1 and b"still here" not in done.stdout


def test_default_jobs_are_the_cores_up_to_the_pairs(monkeypatch):
    assert workers.default_jobs(1) == 1
    assert workers.default_jobs(50) == workers.cpu_cores() >= 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    assert workers.cpu_cores() == (os.cpu_count() or 1)
