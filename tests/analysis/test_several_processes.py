"""Several processes on one machine (``jax.distributed`` on a localhost coordinator, Gloo between
the CPU processes) give the single-process numbers, and only process 0 writes; ``riemann run``
under several processes writes one run directory with a single process's results; what goes wrong
is said clearly. Every process is ended by the test itself, with a timeout."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from analysis.cli import main
from tests.analysis.helpers import ROOT, results

TIMEOUT_S = 300
QUIET_JAX = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **QUIET_JAX, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """Wait for every process; on a timeout end them all (their whole process groups)."""
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT_S)
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return out


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


def test_two_processes_give_the_single_process_numbers_and_one_writes(user_pair, tmp_path):
    (reference,) = _finish([_start(_worker(0, 0, 0, user_pair, tmp_path / "one"), {})])
    assert reference[0] == 0, reference[2][-3000:]
    ref = _figures(reference[1])
    port = _free_port()
    procs = [_start(_worker(i, 2, port, user_pair, tmp_path / "two"), {}) for i in range(2)]
    done = _finish(procs)
    assert [rc for rc, _, _ in done] == [0, 0], [err[-3000:] for _, _, err in done]
    for _, stdout, _ in done:
        got = _figures(stdout)
        assert got["devices"] == 4 and got["sharded_leaves"] > 0 and ref["devices"] == 1
        for key, value in ref.items():
            if key not in ("devices", "sharded_leaves"):
                # Changes of the loss are differences of float32 losses (about 2 here) summed in
                # another order: equal to 1e-5 relative, or to 1e-6 of the loss itself.
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6 * ref["loss_post"]), key
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["figures.json"]
    assert json.loads((tmp_path / "two" / "figures.json").read_text())["written_by"] == 0


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
        "8",
        "--edits",
        "dare:p=0.5",
        "lowrank:fraction=0.25",
        "expo:alpha=0.5",
        "--estimators",
        "riemann",
        "first-order",
        "second-order",
        "shared-curvature",
        "--probes",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]


def _hosts_env(port: int, n: int, i: int) -> dict[str, str]:
    return {
        "RIEMANN_COORDINATOR": f"127.0.0.1:{port}",
        "RIEMANN_NUM_PROCESSES": str(n),
        "RIEMANN_PROCESS_ID": str(i),
        "JAX_NUM_CPU_DEVICES": "2",
        "RIEMANN_INIT_TIMEOUT": "120",
    }


def test_riemann_run_under_two_processes_writes_the_single_process_results(user_pair, tmp_path):
    single = tmp_path / "single"
    assert main(_run_args(user_pair, single)) == 0
    port, out = _free_port(), tmp_path / "two"
    cli = [sys.executable, "-m", "analysis.cli", *_run_args(user_pair, out)]
    done = _finish([_start(cli, _hosts_env(port, 2, i)) for i in range(2)])
    assert [rc for rc, _, _ in done] == [0, 0], [err[-3000:] for _, _, err in done]
    ours = [[line for line in stdout.splitlines() if line.startswith("[riemann]")] for _, stdout, _ in done]
    assert any("report:" in line for line in ours[0]) and ours[1] == []  # process 0 reports for both
    two, one = results(out), results(single)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    for a, b in zip(two["pairs"][0]["edits"], one["pairs"][0]["edits"], strict=True):
        assert a["spec"] == b["spec"] and a["class"] == b["class"]
        loss = one["pairs"][0]["pair"]["loss_post"]  # see the test above for the tolerance
        assert a["measured"] == pytest.approx(b["measured"], rel=1e-5, abs=1e-6 * loss)
        for name, value in b["estimates"].items():
            assert a["estimates"][name] == pytest.approx(value, rel=1e-5, abs=1e-6 * loss), (a["spec"], name)
    for key in ("loss_pre", "loss_post", "accuracy_pre", "accuracy_post"):
        assert two["pairs"][0]["pair"][key] == pytest.approx(one["pairs"][0]["pair"][key], rel=1e-5), key


def test_what_goes_wrong_with_several_processes_is_said(user_pair, tmp_path):
    # A process whose coordinator never answers stops with the address it tried, not a hang or a crash.
    env = {**_hosts_env(_free_port(), 2, 1), "RIEMANN_INIT_TIMEOUT": "2"}
    ((rc, _, err),) = _finish(
        [_start([sys.executable, "-m", "analysis.cli", *_run_args(user_pair, tmp_path / "x")], env)]
    )
    assert rc == 2 and "could not reach the coordinator at 127.0.0.1:" in err
    # Processes given different arguments are all refused, before any weights are read.
    port = _free_port()
    cmds = [[sys.executable, "-m", "analysis.cli", *_run_args(user_pair, tmp_path / "y")] for _ in range(2)]
    cmds[1][cmds[1].index("dare:p=0.5")] = "dare:p=0.6"
    done = _finish([_start(cmd, _hosts_env(port, 2, i)) for i, cmd in enumerate(cmds)])
    assert [rc for rc, _, _ in done] == [2, 2]
    assert all("processes [1] were given other arguments or data than process 0" in err for _, _, err in done)
    assert not (tmp_path / "y").exists()
    # Half a description of the processes is refused, naming what is missing.
    with pytest.raises(ValueError, match="missing RIEMANN_PROCESS_ID or JAX_PROCESS_ID"):
        from analysis import hosts

        hosts.settings_from_env({"RIEMANN_COORDINATOR": "h:1", "RIEMANN_NUM_PROCESSES": "2"})
