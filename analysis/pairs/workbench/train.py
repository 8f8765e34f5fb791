"""A seeded Optax training loop over in-memory examples, compiled once and run in chunks of
steps (``lax.scan``) so progress can be shown between chunks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import riemann

PyTree = Any


def train(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    desc: str,
    chunk: int = 50,
    progress: bool = True,
    weight_decay: float = 0.0,
) -> tuple[PyTree, list[float]]:
    """Minimise ``loss_fn(params, batch)`` with AdamW (linear warm-up over 5 % of the steps, cosine
    decay), each step on ``batch_size`` rows of ``data`` (a pytree of arrays with a common leading
    dimension) drawn with replacement from ``seed``. Returns the parameters and the loss curve."""
    n = int(jax.tree.leaves(data)[0].shape[0])
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps, lr * 0.1)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))
    data = jax.tree.map(jnp.asarray, data)

    def step(carry: tuple[PyTree, Any], key: jax.Array) -> tuple[tuple[PyTree, Any], jax.Array]:
        p, s = carry
        idx = jax.random.randint(key, (batch_size,), 0, n)
        batch = jax.tree.map(lambda a: a[idx], data)
        loss, g = jax.value_and_grad(loss_fn)(p, batch)
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), loss

    @jax.jit
    def run(carry: tuple[PyTree, Any], keys: jax.Array) -> tuple[tuple[PyTree, Any], jax.Array]:
        return jax.lax.scan(step, carry, keys)

    keys = jax.random.split(jax.random.key(seed), steps)
    curve: list[float] = []
    # Optax mixes Python floats and int32 counters, which strict promotion (our tests) refuses;
    # training is not engine code, so it runs under JAX's standard promotion rules.
    with (
        riemann.progress_bar(progress, desc=desc, total=steps, leave=False) as bar,
        jax.numpy_dtype_promotion("standard"),
    ):
        carry = (params, opt.init(params))
        for start in range(0, steps, chunk):
            carry, losses = run(carry, keys[start : start + chunk])
            curve.extend(np.asarray(losses).tolist())
            bar.update(len(losses))
            bar.set_postfix_str(f"loss={curve[-1]:.3f}")
    return carry[0], curve
