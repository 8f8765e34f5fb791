"""The commands' cache of compiled programs: written where RIEMANN_XLA_CACHE says, read back by
another process to the same numbers, off when asked, and never over the user's own JAX setting."""

import json
import os
import subprocess
import sys

from tests.analysis.helpers import ROOT

PROGRAM = """
import json, os, sys
import jax, jax.numpy as jnp
from analysis.jobs import compile_cache
where = compile_cache.enable()
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
value = float(f(jnp.arange(64.0).reshape(8, 8) / 64))
env = {k: os.environ.get(k) for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
hits = events.count("/jax/compilation_cache/cache_hits")
print(json.dumps({"where": None if where is None else str(where), "value": value, "env": env, "hits": hits}))
"""


def _run(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "RIEMANN_XLA_CACHE" and not k.startswith("JAX_")}
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_programs_are_kept_and_read_back_to_the_same_numbers(tmp_path):
    cache = tmp_path / "xla"
    first = _run(RIEMANN_XLA_CACHE=str(cache))
    assert first["where"] == str(cache)
    # Exported for the worker processes a command starts (JAX reads them when it is imported).
    assert first["env"] == {
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.0",
    }

    def entries() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.name.startswith("jit_")}

    kept = entries()
    assert kept and first["hits"] == 0
    second = _run(RIEMANN_XLA_CACHE=str(cache))
    assert second["value"] == first["value"]
    # Read back (JAX's own count of the cache's hits), and no entry written again.
    assert second["hits"] >= 1 and entries() == kept


def test_off_compiles_afresh_and_the_users_own_cache_is_left_alone(tmp_path):
    off = _run(RIEMANN_XLA_CACHE="off", RIEMANN_CACHE=str(tmp_path / "root"))
    assert off["where"] is None and off["env"]["JAX_COMPILATION_CACHE_DIR"] is None
    assert not (tmp_path / "root").exists()
    own = tmp_path / "mine"
    theirs = _run(
        RIEMANN_XLA_CACHE=str(tmp_path / "ours"),
        JAX_COMPILATION_CACHE_DIR=str(own),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    assert theirs["where"] == str(own) and not (tmp_path / "ours").exists()
    assert any(p.name.startswith("jit_") for p in own.iterdir())
    # Unset, it lives beside the workbench's cache.
    default = _run(RIEMANN_CACHE=str(tmp_path / "root"))
    assert default["where"] == str(tmp_path / "root" / "xla")
