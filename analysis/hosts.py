"""Several processes, one analysis: starting ``jax.distributed`` from the environment, keeping the
processes in step (same arguments, same data, same decisions), and letting one of them write.

A run over several hosts starts the same command once per process with

    RIEMANN_COORDINATOR=host:port  RIEMANN_NUM_PROCESSES=N  RIEMANN_PROCESS_ID=i

(or JAX's own ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). Every process
computes; process 0 alone writes files (:func:`is_writer`, honoured by :mod:`analysis.files`).
Decisions that depend on files, such as resuming a run, are taken by process 0 and broadcast
(:func:`broadcast_json`), because other hosts need not see the same disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from typing import Any

ENV = {  # ours first, then JAX's names for the same three settings
    "coordinator": ("RIEMANN_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("RIEMANN_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("RIEMANN_PROCESS_ID", "JAX_PROCESS_ID"),
}
DEFAULT_TIMEOUT_S = 300


def settings_from_env(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The coordinator, process count and process id the environment asks for, or ``None`` when
    it asks for none; a partial or malformed setting is refused, naming the variable."""
    environ = dict(os.environ if environ is None else environ)
    found = {k: next(((v, environ[v]) for v in names if environ.get(v)), None) for k, names in ENV.items()}
    if not any(found.values()):
        return None
    missing = [" or ".join(ENV[k]) for k, v in found.items() if v is None]
    if missing:
        raise ValueError(f"several processes need all three settings; missing {'; '.join(missing)}")
    out: dict[str, Any] = {"coordinator": found["coordinator"][1]}
    for key in ("num_processes", "process_id"):
        var, text = found[key]
        try:
            out[key] = int(text)
        except ValueError:
            raise ValueError(f"{var}={text!r}; expected an integer") from None
    if out["num_processes"] < 1 or not 0 <= out["process_id"] < out["num_processes"]:
        raise ValueError(f"process id {out['process_id']} of {out['num_processes']} processes; expected 0 ≤ id < count")
    host, _, port = out["coordinator"].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator {out['coordinator']!r}; expected host:port")
    out["timeout_s"] = int(environ.get("RIEMANN_INIT_TIMEOUT", DEFAULT_TIMEOUT_S))
    return out


def _wait_for(coordinator: str, timeout_s: float) -> None:
    """Return once the coordinator accepts connections; a clear error if it does not in time.

    ``jax.distributed.initialize`` aborts the whole process (no Python exception) when it cannot
    register, so a process that is not the coordinator checks the address itself first."""
    host, _, port = coordinator.rpartition(":")
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s)):
                return
        except OSError as e:
            last = e
            time.sleep(0.2)
    raise ConnectionError(
        f"could not reach the coordinator at {coordinator} within {timeout_s:g} s ({last}); start process 0 "
        "first, or check RIEMANN_COORDINATOR (host:port of process 0)"
    )


def initialize(coordinator: str, num_processes: int, process_id: int, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """``jax.distributed.initialize`` for one process of ``num_processes``. On the CPU the processes
    exchange data with Gloo (JAX's CPU cross-process collectives)."""
    import jax

    if num_processes == 1:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if process_id != 0:
        _wait_for(coordinator, timeout_s)
    else:
        print(
            f"[riemann] process 0 of {num_processes}: coordinating at {coordinator}; waiting up to {timeout_s:g} s "
            "for the others to join",
            file=sys.stderr,
            flush=True,
        )
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=int(timeout_s),
    )


def from_env(environ: dict[str, str] | None = None) -> bool:
    """Join the processes the environment describes (see the module docstring); ``False`` when it
    describes none (a single process)."""
    settings = settings_from_env(environ)
    if settings is None:
        return False
    initialize(
        settings["coordinator"], settings["num_processes"], settings["process_id"], timeout_s=settings["timeout_s"]
    )
    return settings["num_processes"] > 1


def count() -> int:
    """How many processes take part (1 unless ``jax.distributed`` was started)."""
    jax = sys.modules.get("jax")
    return 1 if jax is None else jax.process_count()


def is_writer() -> bool:
    """Whether this process writes files: always in a single process, only process 0 of several."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def agree(text: str, what: str) -> None:
    """Refuse (on every process alike) when the processes hold different ``text``: for example other
    arguments or other data. A hash of it is gathered from every process and compared."""
    if count() == 1:
        return
    import numpy as np
    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(digest))
    differ = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
    if differ:
        raise ValueError(
            f"processes {differ} were given other {what} than process 0; every process must run the "
            "same command on the same data"
        )


def broadcast_json(obj: Any) -> Any:
    """``obj`` as process 0 holds it, on every process (JSON-serialisable values; NaN survives)."""
    if count() == 1:
        return obj
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    blob = json.dumps(obj).encode() if jax.process_index() == 0 else b""
    size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(blob), np.int32)))
    buf = np.zeros(size, np.uint8)
    if jax.process_index() == 0:
        buf[:] = np.frombuffer(blob, np.uint8)
    return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))))
