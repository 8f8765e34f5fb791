"""Pairs analysed side by side, one worker process per pair, on a CPU with cores to spare.

Each pair's analysis is independent of the others' (its own split, keys, shared passes and store),
and on two or more CPU cores one process leaves cores idle: on a small model most of the work is
one thread dispatching many short XLA calls. :func:`each` runs ``fn(name, relay)`` for every name
in worker processes started with ``spawn`` (JAX's runtime is multithreaded, so forking a process
that has used it is unsafe) and returns the results in the order of ``names``. A worker's log lines
and "one edit done" ticks travel back through ``relay`` to the parent, which prints the lines and
moves one progress bar. A worker's exception is raised in the parent, and a worker that dies
without one (killed, out of memory) is named; either way the other workers are stopped, and what
they had saved is kept, so that a rerun resumes.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue as queues
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import riemann


class Relay:
    """What a worker tells the parent: log lines and finished edits. Built with ``log`` and ``tick``
    it calls them directly (the work runs in the parent's process); built with a queue it posts."""

    def __init__(
        self,
        log: Callable[[str], None] | None = None,
        tick: Callable[[], None] | None = None,
        queue: Any = None,
    ) -> None:
        self._log, self._tick, self._queue = log, tick, queue

    def log(self, text: str) -> None:
        if self._queue is not None:
            self._queue.put(("log", None, text))
        elif self._log is not None:
            self._log(text)

    def tick(self) -> None:
        if self._queue is not None:
            self._queue.put(("tick", None, None))
        elif self._tick is not None:
            self._tick()


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity where the platform says, else the count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_jobs(tasks: int) -> int:
    """Worker processes for ``tasks`` pairs: one per pair up to the CPU cores on a CPU backend, 1 on
    an accelerator (each process would reserve most of its memory)."""
    import jax

    return max(1, min(tasks, cpu_cores())) if jax.default_backend() == "cpu" else 1


def _watch_parent(parent: int) -> None:
    """End this worker when the process that started it is gone (killed by a signal its cleanup
    never saw): a worker must not go on writing to a run directory that a rerun resumes."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _work(fn: Callable[[str, Relay], Any], name: str, q: Any, parent: int) -> None:
    """A worker: the result, or the exception with its traceback, is the last thing it posts,
    pickled here (a queue pickles in a background thread and drops what fails)."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        out = ("result", name, pickle.dumps(fn(name, Relay(queue=q))))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent, which decides
        text = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:
            e = RuntimeError(f"{type(e).__name__}: {e}")
        out = ("error", name, (e, text))
    q.put(out)


def each(
    fn: Callable[[str, Relay], Any],
    names: Sequence[str],
    *,
    jobs: int,
    log: Callable[[str], None] = print,
    progress: bool = True,
    total: int | None = None,
    initial: int = 0,
    desc: str = "edits",
) -> list[Any]:
    """``[fn(name, relay) for name in names]``, at most ``jobs`` at a time in worker processes.

    ``fn`` must be picklable (a module-level function, or a ``functools.partial`` of one): it is
    sent to the workers. ``total``/``initial`` size the progress bar that the workers' ticks move.
    With ``jobs=1`` (or a single name) everything runs in this process, through the same relay.
    """
    if jobs < 1:
        raise ValueError(f"jobs={jobs}; expected at least 1 worker process")
    with riemann.progress_bar(progress, desc=desc, unit="edit", total=total, initial=initial) as bar:

        def say(text: str) -> None:  # a line above the bar, not through it
            bar.write(text) if progress and log is print else log(text)

        if jobs == 1 or len(names) < 2:
            relay = Relay(say, lambda: bar.update(1))
            return [fn(name, relay) for name in names]
        try:
            pickle.dumps(fn)
        except Exception as e:  # a lambda or a local function: say what could not be sent
            raise ValueError(
                f"jobs={jobs} runs each pair in its own process, so the work must be picklable (a module-level "
                f"function or a functools.partial of one): {e}"
            ) from None
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        waiting, running, results, silent = list(names), {}, {}, set()
        try:
            while waiting or running:
                while waiting and len(running) < jobs:
                    name = waiting.pop(0)
                    running[name] = ctx.Process(
                        target=_work, args=(fn, name, q, os.getpid()), name=f"riemann {name}", daemon=True
                    )
                    running[name].start()
                try:
                    kind, name, payload = q.get(timeout=0.5)
                except queues.Empty:
                    for name, p in running.items():
                        # Exited, and its last message (in the pipe before it exited) did not come in
                        # the half second since: it died without one.
                        if p.exitcode is not None and name in silent:
                            raise RuntimeError(
                                f"the worker process for {name} stopped with exit code {p.exitcode} and no result "
                                "(killed, or out of memory?); rerun with the same --out to resume, or with --jobs 1"
                            ) from None
                        if p.exitcode is not None:
                            silent.add(name)
                    continue
                if kind == "log":
                    say(payload)
                elif kind == "tick":
                    bar.update(1)
                elif kind == "error":
                    e, text = payload
                    e.add_note(f"in the worker process for {name}:\n{text}")
                    raise e
                else:
                    results[name] = pickle.loads(payload)
                    running.pop(name).join()
        finally:
            for p in running.values():
                p.terminate()
                p.join()
        return [results[name] for name in names]
