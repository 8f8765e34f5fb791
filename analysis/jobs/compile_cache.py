"""XLA's compiled programs kept on disk, for the ``riemann`` commands and their worker processes.

A run compiles a few hundred programs (every loss's gradient, jvp and Hessian-vector product,
every edit per leaf shape, the curvature and saturation passes). On a two-core CPU that was about
a third of a bare ``riemann run``; two pairs of the same architecture in two worker processes
(:mod:`analysis.jobs.workers`) would each compile them again, and so would every later run. JAX's
persistent compilation cache stores each compiled executable under a hash of its program, its
compile options and the backend, so a program is compiled once per machine and loaded after that;
the numbers are those of the same executable either way.

``RIEMANN_XLA_CACHE`` names the directory (default ``<RIEMANN_CACHE or ~/.cache/riemann>/xla``), or
``off`` to compile everything afresh. A cache the user set for JAX itself
(``JAX_COMPILATION_CACHE_DIR``) is left as it is. The directory is not trimmed: JAX's size bound
lists every entry on each write, which made a test session of thousands of programs spend minutes
in it; a run of the default suite adds about 11 MB, and deleting the directory is always safe.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "RIEMANN_XLA_CACHE"


def directory() -> Path | None:
    """Where compiled programs are kept, or ``None`` when ``RIEMANN_XLA_CACHE=off``."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in ("off", "0", "false", "no"):
        return None
    if value:
        return Path(value).expanduser()
    from analysis.pairs import workbench

    return workbench.cache_root() / "xla"


def enable() -> Path | None:
    """Turn the cache on for this process and for the processes it starts (through JAX's own
    environment variables, read when JAX is imported). Returns the directory in use, or ``None``."""
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user's own choice
        return Path(jax.config.jax_compilation_cache_dir)
    path = directory()
    if path is None:
        return None
    settings = {
        "jax_compilation_cache_dir": str(path),
        # Every program, however quick to compile: a run compiles hundreds of small ones, each
        # loaded faster than compiled, and worker processes share them.
        "jax_persistent_cache_min_compile_time_secs": 0.0,
    }
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)
    return path
