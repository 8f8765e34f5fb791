"""Greedy decoding for exact-match accuracy (no KV cache: the workbench models are small and
prompts short, so each step re-runs the forward pass on a fixed-size buffer and compiles once)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


@functools.partial(jax.jit, static_argnums=(0, 4))
def _greedy(
    forward: Callable[[PyTree, jax.Array], jax.Array], params: PyTree, buf: jax.Array, lens: jax.Array, max_new: int
) -> jax.Array:
    rows = jnp.arange(buf.shape[0])

    def body(i: int, state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        buf, lens = state
        logits = forward(params, buf)
        nxt = jnp.argmax(logits[rows, lens - 1], axis=-1).astype(buf.dtype)
        return buf.at[rows, lens].set(nxt), lens + 1

    buf, _ = jax.lax.fori_loop(0, max_new, body, (buf, lens))
    return buf


def greedy_decode(
    forward: Callable[[PyTree, jax.Array], jax.Array],
    params: PyTree,
    prompts: Sequence[Sequence[int]],
    *,
    max_new: int,
    eos_id: int | None = None,
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy continuations (up to ``max_new`` tokens, cut at ``eos_id``) of tokenized prompts.
    ``forward`` must be the same function object across calls to reuse its compilation."""
    width = max(len(p) for p in prompts) + max_new
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        real = len(chunk)
        chunk += [chunk[0]] * (batch_size - real)
        buf = np.zeros((batch_size, width), np.int32)
        for i, p in enumerate(chunk):
            buf[i, : len(p)] = p
        lens = np.array([len(p) for p in chunk], np.int32)
        res = np.asarray(_greedy(forward, params, jnp.asarray(buf), jnp.asarray(lens), max_new))
        for i in range(real):
            gen = res[i, lens[i] : lens[i] + max_new].tolist()
            if eos_id is not None and eos_id in gen:
                gen = gen[: gen.index(eos_id)]
            out.append(gen)
    return out
