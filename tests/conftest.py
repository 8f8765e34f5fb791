"""Strict JAX settings for the whole suite (as Equinox does): implicit dtype promotion and rank
promotion are errors, and 8 CPU devices are simulated for sharding tests."""

import os

import jax
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports matplotlib

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def mini_cache(tmp_path_factory):
    """The workbench in its miniature configuration, built once per test session into a private
    cache (``RIEMANN_CACHE`` points there for the whole session)."""
    from analysis.pairs import workbench

    root = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("RIEMANN_CACHE", str(root))
    built = workbench.build("mini", progress=False, log=lambda s: None)
    yield built
    mp.undo()
