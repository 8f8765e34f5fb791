"""Shared by the analysis tests: reading a run's results, a tiny Llama config, and starting and
ending processes of the CLI (several processes on one machine, each with a timeout)."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MLP_EDITS = [
    "dare:p=0.3",
    "dare:p=0.9",
    "dare:p=0.99",
    "dare:p=0.5,k=-1",
    "bitdelta",
    "bitdelta:magnitude_bits=4",
    "magnitude:keep=0.3",
    "lowrank:fraction=0.25",
    "expo:alpha=-0.2",
    "expo:alpha=0.2",
    "biased_product:k=1.5",
    "della:density=0.3,epsilon=0.1",
]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def numbers(res: dict) -> list:
    return [
        (r["spec"], r["estimates"], r["measured"], r["class"], r["accuracy"]) for p in res["pairs"] for r in p["edits"]
    ]


def llama(vocab: int) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }


TIMEOUT_S = 300
QUIET_JAX = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(cmd: list[str], env: dict[str, str], logs) -> subprocess.Popen:
    """A process of its own group, its output to files (a full pipe could stall it mid-collective)."""
    i = len(list(logs.glob("*.out")))
    with open(logs / f"{i}.out", "w") as out, open(logs / f"{i}.err", "w") as err:  # the child keeps its copies
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **QUIET_JAX, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    proc.logs = (logs / f"{i}.out", logs / f"{i}.err")
    return proc


def finish_processes(procs: list[subprocess.Popen]) -> list[tuple[int | None, str, str]]:
    """Wait for every process against one deadline; past it, end them all (whole process groups)
    and report them with return code ``None``, so that the assertion shows their logs."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                p.returncode = None
    return [(p.returncode, p.logs[0].read_text(), p.logs[1].read_text()) for p in procs]


def hosts_env(port: int, n: int, i: int) -> dict[str, str]:
    return {
        "RIEMANN_COORDINATOR": f"127.0.0.1:{port}",
        "RIEMANN_NUM_PROCESSES": str(n),
        "RIEMANN_PROCESS_ID": str(i),
        "JAX_NUM_CPU_DEVICES": "2",
        "RIEMANN_INIT_TIMEOUT": "120",
    }
