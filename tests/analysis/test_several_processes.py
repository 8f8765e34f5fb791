"""Several processes on one machine (``jax.distributed`` on a localhost coordinator, Gloo between
the CPU processes) give the single-process numbers, and only process 0 writes; ``riemann run``
under several processes writes one run directory with a single process's results; what goes wrong
is said clearly. Every process is ended by the test itself, with a timeout."""

import json
import sys

import pytest

from analysis.cli import main
from tests.analysis.helpers import finish_processes, free_port, hosts_env, results, start_process


def _worker(pid: int, n: int, port: int, work, out) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.analysis.several_processes_worker",
        str(pid),
        str(n),
        str(port),
        str(work),
        str(out),
    ]


def _figures(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _close(got: dict, ref: dict, key: str) -> bool:
    """Sums over sharded devices come in another order: 1e-5 relative. A measured change is the
    difference of two float32 losses (about 5.6 here), each within 1e-7 relative: within 2e-7 of
    the loss, absolutely."""
    scale = 2e-7 * ref["loss_post"] if "measured" in key else 1e-12
    return got[key] == pytest.approx(ref[key], rel=1e-5, abs=scale)


def test_two_processes_give_the_single_process_numbers_and_one_writes(user_pair, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (reference,) = finish_processes([start_process(_worker(0, 0, 0, user_pair, tmp_path / "one"), {}, logs)])
    assert reference[0] == 0, reference[2][-3000:]
    ref = _figures(reference[1])
    port = free_port()
    workers = [_worker(i, 2, port, user_pair, tmp_path / "two") for i in range(2)]
    done = finish_processes([start_process(w, {}, logs) for w in workers])
    assert [rc for rc, _, _ in done] == [0, 0], [err[-3000:] for _, _, err in done]
    compared = [k for k in ref if k not in ("devices", "sharded_leaves")]
    assert sum(k.startswith("module ") for k in compared) == 21  # every leaf's term, one by one
    for _, stdout, _ in done:
        got = _figures(stdout)
        assert got["devices"] == 4 and got["sharded_leaves"] > 0 and ref["devices"] == 1
        assert not [k for k in compared if not _close(got, ref, k)], [(k, got[k], ref[k]) for k in compared]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["figures-0.json"]  # process 1 wrote nothing


def _run_args(user_pair, out) -> list[str]:
    return [
        "run",
        "--pre",
        str(user_pair / "pre"),
        "--post",
        str(user_pair / "post"),
        "--data",
        str(user_pair / "resp.jsonl"),
        "--batch-size",
        "2",  # 24 records: 12 batches, 4 calibrate and 8 test
        "--edits",
        "dare:p=0.5",
        "lowrank:fraction=0.25",
        "expo:alpha=0.5",
        "--estimators",  # second order under several processes: the worker's test above
        "riemann",
        "first-order",
        "shared-curvature",
        "--probes",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]


_TIMINGS = (
    "seconds",
    "seconds_shared",
    "seconds_per_edit",
    "break_even_edits",
    "elapsed_s",
    "measured_seconds",
    "measured_seconds_per_edit",
    "versions",
    "started",
    "finished",
    "checkpoints",
)


def _numbers(tree, path=""):
    """Every number in a results tree with its path, timings and versions left out."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k not in _TIMINGS:
                yield from _numbers(v, f"{path}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, float(tree)


def test_riemann_run_under_two_processes_writes_the_single_process_results(user_pair, tmp_path):
    single, logs = tmp_path / "single", tmp_path / "logs"
    logs.mkdir()
    assert main(_run_args(user_pair, single)) == 0
    port, out = free_port(), tmp_path / "two"
    cli = [sys.executable, "-m", "analysis.cli", *_run_args(user_pair, out)]
    done = finish_processes([start_process(cli, hosts_env(port, 2, i), logs) for i in range(2)])
    assert [rc for rc, _, _ in done] == [0, 0], [err[-3000:] for _, _, err in done]
    ours = [[line for line in stdout.splitlines() if line.startswith("[riemann]")] for _, stdout, _ in done]
    assert any("report:" in line for line in ours[0]) and ours[1] == []  # process 0 reports for both
    two, one = results(out), results(single)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert [r["class"] for r in two["pairs"][0]["edits"]] == [r["class"] for r in one["pairs"][0]["edits"]]
    a, b = dict(_numbers(two)), dict(_numbers(one))
    assert a.keys() == b.keys() and len(a) > 300
    loss = one["pairs"][0]["pair"]["loss_post"]
    # Differences of losses (measured changes, gaps, the gain) to 2e-7 of the loss; everything else
    # (estimates, module terms, losses, accuracies) to 1e-5 relative. A relative gap divides a gap
    # at float32 noise level by a small change: a ratio of round-off, compared through the gap.
    off = [
        k
        for k in b
        if not k.endswith("relative_gap")
        and "median_abs_log_ratio" not in k
        and a[k] != pytest.approx(b[k], rel=1e-5, abs=2e-7 * loss)
    ]
    assert not off, [(k, a[k], b[k]) for k in off[:10]]
    # A log ratio log|pred| − log|meas| moves by the relative errors of both sides: 1e-5 for the
    # estimate, 2e-7·loss/|meas| for a measured change (an absolute error over its size).
    smallest = min(abs(m) for r in one["pairs"][0]["edits"] for m in r["measured_seeds"] if m != 0)
    log_tol = 1e-5 + 2e-7 * loss / smallest
    logs = [k for k in b if "median_abs_log_ratio" in k]
    assert logs and all(a[k] == pytest.approx(b[k], rel=0, abs=log_tol) for k in logs), log_tol


def test_what_goes_wrong_with_several_processes_is_said(user_pair, tmp_path):
    # A process whose coordinator never answers stops with the address it tried, not a hang or a crash.
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**hosts_env(free_port(), 2, 1), "RIEMANN_INIT_TIMEOUT": "2"}
    ((rc, _, err),) = finish_processes(
        [start_process([sys.executable, "-m", "analysis.cli", *_run_args(user_pair, tmp_path / "x")], env, logs)]
    )
    assert rc == 2 and "could not reach the coordinator at 127.0.0.1:" in err
    # Processes given different arguments are all refused, before any weights are read.
    port = free_port()
    cmds = [[sys.executable, "-m", "analysis.cli", *_run_args(user_pair, tmp_path / "y")] for _ in range(2)]
    cmds[1][cmds[1].index("dare:p=0.5")] = "dare:p=0.6"
    done = finish_processes([start_process(cmd, hosts_env(port, 2, i), logs) for i, cmd in enumerate(cmds)])
    assert [rc for rc, _, _ in done] == [2, 2]
    assert all(
        "processes [1] were given other arguments, checkpoints or data than process 0" in err for _, _, err in done
    )
    assert not (tmp_path / "y").exists()
    # Half a description of the processes is refused, naming what is missing.
    from analysis import hosts

    with pytest.raises(ValueError, match="missing RIEMANN_PROCESS_ID or JAX_PROCESS_ID"):
        hosts.settings_from_env({"RIEMANN_COORDINATOR": "h:1", "RIEMANN_NUM_PROCESSES": "2"})
    assert hosts.settings_from_env({"JAX_COORDINATOR_ADDRESS": "h:1"}) is None  # JAX's names ask all together
    with pytest.raises(ValueError, match="RIEMANN_INIT_TIMEOUT='soon'"):
        hosts.settings_from_env({**hosts_env(1, 2, 0), "RIEMANN_INIT_TIMEOUT": "soon"})
    # What each process reads is fingerprinted: the same bytes agree, other bytes do not.
    from analysis.cli import _fingerprint

    other = tmp_path / "other.jsonl"
    other.write_text((user_pair / "resp.jsonl").read_text().replace("=", "= "))
    assert _fingerprint(str(user_pair / "post")) == _fingerprint(str(user_pair / "post"))
    assert _fingerprint(str(other)) != _fingerprint(str(user_pair / "resp.jsonl"))
    assert _fingerprint(str(user_pair / "pre")) != _fingerprint(str(user_pair / "post"))
