"""Layers shared by the model families, in HF's parameter layout."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16, "float64": jnp.float64}


class ConfigError(ValueError):
    """A ``config.json`` asks for something this toolkit does not implement."""


def get_dtype(name: Any) -> Any:
    if not isinstance(name, str):
        return name
    key = name.replace("torch.", "")
    if key not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not supported; accepted: {', '.join(DTYPES)}")
    return DTYPES[key]


def along_last(v: jax.Array, x: jax.Array) -> jax.Array:
    """``v`` [d] shaped to broadcast against ``x`` [..., d] explicitly (rank promotion is an error
    under our strict test settings, as it should be in model code)."""
    return v.reshape((1,) * (x.ndim - 1) + v.shape)


# The K-FAC collection's tap (analysis.study.kfac): while one is installed, every Linear hands it its
# input (2-D, rows × in) and its output and uses what it returns as the output (the output plus a zero
# perturbation whose gradient is the output gradient). Read at trace time only: with no tap the traced
# computation is exactly what it was.
_LINEAR_TAP: contextvars.ContextVar[Callable[[nnx.Module, jax.Array, jax.Array], jax.Array] | None] = (
    contextvars.ContextVar("linear_tap", default=None)
)


@contextlib.contextmanager
def linear_tap(tap: Callable[[nnx.Module, jax.Array, jax.Array], jax.Array]) -> Iterator[None]:
    """Install ``tap(linear, inputs_2d, outputs) -> outputs`` for every :class:`Linear` traced inside."""
    token = _LINEAR_TAP.set(tap)
    try:
        yield
    finally:
        _LINEAR_TAP.reset(token)


class Linear(nnx.Module):
    """``y = x Wᵀ + b`` with ``W`` stored as HF does, shape (out, in)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: Any, std: float, rngs: nnx.Rngs):
        w = std * jax.random.normal(rngs.params(), (out_features, in_features), jnp.float32)
        self.weight = nnx.Param(w.astype(dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        # A 2-D product: for x of rank > 2 the weight gradient would contract over several batch
        # axes at once, which XLA's CPU backend runs as a slow loop instead of one matrix product.
        lead = x.shape[:-1]
        y = (x.reshape(-1, x.shape[-1]) @ self.weight[...].T).reshape(*lead, -1)
        if self.bias is not None:
            y = y + along_last(self.bias[...], y)
        tap = _LINEAR_TAP.get()
        return y if tap is None else tap(self, x.reshape(-1, x.shape[-1]), y)


class RMSNorm(nnx.Module):
    """HF's RMSNorm: normalise in float32, cast back, then scale by ``weight``."""

    def __init__(self, dim: int, eps: float, *, dtype: Any):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + jnp.float32(self.eps))
        return along_last(self.weight[...], x) * h.astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with HF names ``weight`` and ``bias`` (computed in float32)."""

    def __init__(self, dim: int, eps: float, *, dtype: Any):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + jnp.float32(self.eps))
        w, b = along_last(self.weight[...], h), along_last(self.bias[...], h)
        return (h * w.astype(jnp.float32) + b.astype(jnp.float32)).astype(x.dtype)


def scan_remat_default() -> bool:
    """Whether :func:`run_layers` rematerialises by a scan over stacked layers: on XLA's CPU
    backend, whose pipeline drops ``jax.checkpoint``'s optimization barriers and merges the
    recomputation back into the forward pass (so a plain per-layer checkpoint saves nothing)."""
    return jax.default_backend() == "cpu"


def run_layers(
    layers: Any,
    x: jax.Array,
    call: Callable[[nnx.Module, jax.Array], jax.Array],
    *,
    remat: bool,
    scan: bool | None = None,
) -> jax.Array:
    """``x ← call(layer, x)`` for each layer in order.

    With ``remat`` each layer's internals are recomputed in the backward pass instead of stored
    (only each layer's input is kept). Two ways, same values and gradients:

    - per-layer ``jax.checkpoint`` in a Python loop (accelerators: XLA keeps the recomputation
      next to the layer's backward pass);
    - ``scan`` (default on the CPU, see :func:`scan_remat_default`): the layers' parameters are
      stacked and a checkpointed body is scanned over them, so the recomputation sits inside the
      backward loop's iteration, where no compiler pass can hoist it. It costs one stacked copy of
      the layer parameters (and of their gradient) per step, which is why accelerators don't use it.
      Layers whose structure differs (not one graph) fall back to the loop.
    """
    layers = list(layers)
    if not remat or not layers:
        for layer in layers:
            x = call(layer, x)
        return x
    if (scan_remat_default() if scan is None else scan) and all(
        nnx.graphdef(lyr) == nnx.graphdef(layers[0]) for lyr in layers[1:]
    ):
        graphdef, template = nnx.split(layers[0])
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.to_pure_dict(nnx.state(layer)) for layer in layers])

        def body(h: jax.Array, pure: Any) -> tuple[jax.Array, None]:
            state = jax.tree.map(lambda v: v, template)
            nnx.replace_by_pure_dict(state, pure)
            return call(nnx.merge(graphdef, state), h), None

        x, _ = jax.lax.scan(jax.checkpoint(body), x, stacked)
        return x
    for layer in layers:
        x = nnx.remat(call)(layer, x)
    return x
