"""Strict JAX settings for the whole suite (as Equinox does): implicit dtype promotion and rank
promotion are errors, and 8 CPU devices are simulated for sharding tests."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
