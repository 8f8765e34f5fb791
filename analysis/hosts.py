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
    it asks for none; a partial or malformed setting is refused, naming the variable. Any
    ``RIEMANN_*`` setting asks; JAX's names ask only when all three are set (one of them alone may
    be meant for something else)."""
    environ = dict(os.environ if environ is None else environ)
    ours = any(environ.get(names[0]) for names in ENV.values())
    theirs = all(environ.get(names[1]) for names in ENV.values())
    if not (ours or theirs):
        return None
    found = {k: next(((v, environ[v]) for v in names if environ.get(v)), None) for k, names in ENV.items()}
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
    text = environ.get("RIEMANN_INIT_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        out["timeout_s"] = float(text)
    except ValueError:
        raise ValueError(f"RIEMANN_INIT_TIMEOUT={text!r}; expected seconds, e.g. 300") from None
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


def _started() -> Any:
    """JAX, if ``jax.distributed`` was started in this process; else ``None``. Asking does not start
    a backend (which would claim an accelerator's memory, or make a later initialize fail)."""
    jax = sys.modules.get("jax")
    return jax if jax is not None and jax.distributed.is_initialized() else None


def count() -> int:
    """How many processes take part (1 unless ``jax.distributed`` was started)."""
    jax = _started()
    return 1 if jax is None else jax.process_count()


def is_writer() -> bool:
    """Whether this process writes files: always in a single process, only process 0 of several."""
    jax = _started()
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


def on_writer(fn: Any) -> Any:
    """``fn()`` run by process 0 alone, its value given to every process; if it raises, every
    process raises the same error (so none is left waiting in a collective for the others)."""
    if count() == 1:
        return fn()
    outcome: dict[str, Any] = {}
    if is_writer():
        try:
            outcome = {"value": fn()}
        except Exception as e:  # re-raised below, on every process
            outcome = {"error": str(e), "type": type(e).__name__}
    outcome = broadcast_json(outcome)
    if "error" in outcome:
        raise _error(outcome["type"], outcome["error"])
    return outcome["value"]


def all_ok(fn: Any, what: str) -> Any:
    """``fn()`` run by every process; if it raises on any process, every process raises, naming
    the processes where ``what`` failed and process 0's or the first failing process's message."""
    if count() == 1:
        return fn()
    try:
        value, message = fn(), ""
    except Exception as e:  # re-raised below, on every process
        value, message = None, f"{type(e).__name__}: {e}"
    import numpy as np
    from jax.experimental import multihost_utils

    text = np.zeros(1024, np.uint8)
    raw = message.encode()[:1023]
    text[: len(raw)] = np.frombuffer(raw, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(text))
    failed = [i for i in range(every.shape[0]) if every[i].any()]
    if failed:
        first = bytes(every[failed[0]]).rstrip(b"\0").decode(errors="replace")
        kind, _, detail = first.partition(": ")
        raise _error(kind, f"{what} failed on processes {failed}; process {failed[0]}: {detail}")
    return value


def _error(kind: str, message: str) -> Exception:
    for cls in (FileExistsError, FileNotFoundError, PermissionError, ConnectionError, OSError):
        if kind == cls.__name__:
            return cls(message)
    return ValueError(message)


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
