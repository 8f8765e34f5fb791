"""Task metrics of a pair, as ``accuracy(params, batches) -> float`` functions.

Each factory compiles its scoring function once for a model; build it once per model and call it
for every edited parameter set. These are what the paper's plots report beside the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import riemann
from analysis.pairs import data
from analysis.pairs.decode import greedy_decode

PyTree = Any
Forward = Callable[[PyTree, jax.Array], jax.Array]
AccuracyFn = Callable[[PyTree, list[Any]], float]


def token_accuracy_fn(forward: Forward) -> AccuracyFn:
    """The share of scored tokens whose greedy (teacher-forced) prediction is the reference
    token: a cheap task metric for ``text`` / ``response`` batches (``input_ids``, ``loss_mask``)."""

    @jax.jit
    def hits(p: PyTree, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        pred = jnp.argmax(forward(p, ids)[:, :-1], axis=-1)
        m = mask[:, 1:].astype(jnp.float32)
        return jnp.sum((pred == ids[:, 1:]).astype(jnp.float32) * m), jnp.sum(m)

    def accuracy(params: PyTree, batches: list[Any]) -> float:
        got = [riemann.pace(hits(params, b["input_ids"], b["loss_mask"])) for b in batches]
        return float(sum(float(h) for h, _ in got) / max(sum(float(n) for _, n in got), 1.0))

    return accuracy


def top1_accuracy_fn(classify: Forward) -> AccuracyFn:
    """Top-1 accuracy of ``classify(params, pixel_values)`` over image batches (``pixel_values``,
    ``labels``), the mean of per-batch accuracies. Hits are counted on the device, so only a scalar
    per batch comes back (whatever the sharding, on every process alike)."""

    @jax.jit
    def hits(p: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.sum(jnp.argmax(classify(p, x), -1) == y)

    def accuracy(params: PyTree, batches: list[dict[str, np.ndarray]]) -> float:
        return float(
            np.mean(
                [int(hits(params, jnp.asarray(b["pixel_values"]), b["labels"])) / len(b["labels"]) for b in batches]
            )
        )

    return accuracy


def reward_accuracy_fn(forward: Forward) -> AccuracyFn:
    """DPO's implicit-reward accuracy: the share of held-out pairs whose margin
    ``(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))`` is positive (ties count half,
    so the reference model itself scores exactly 0.5: its log-probabilities come from the same
    compiled function as the reference's in ``data.dpo_batches``). Batches come from
    ``data.dpo_batches``."""
    score = jax.jit(lambda p, i, m: data.sequence_logprob(forward, p, i, m))

    def accuracy(params: PyTree, batches: list[dict[str, Any]]) -> float:
        wins, total = 0.0, 0.0
        for b in batches:
            c = np.asarray(score(params, b["chosen_input_ids"], b["chosen_loss_mask"])) - np.asarray(b["ref_chosen"])
            r = np.asarray(score(params, b["rejected_input_ids"], b["rejected_loss_mask"])) - np.asarray(
                b["ref_rejected"]
            )
            valid = np.asarray(b["valid"]) > 0
            wins += float(np.sum((c > r)[valid]) + 0.5 * np.sum((c == r)[valid]))
            total += float(np.sum(valid))
        return wins / total

    return accuracy


def exact_match(
    forward: Forward, params: PyTree, tok: Any, records: Sequence[dict[str, str]], *, max_new: int
) -> float:
    """Share of prompts whose greedy continuation (at most ``max_new`` tokens, until ``</s>``)
    equals the reference response exactly."""
    prompts = [tok.encode(r["prompt"]).ids for r in records]
    outs = greedy_decode(forward, params, prompts, max_new=max_new, eos_id=tok.token_to_id("</s>"))
    return float(np.mean([tok.decode(o) == r["response"] for o, r in zip(outs, records)]))


def exact_match_fn(forward: Forward, tok: Any, records: Sequence[dict[str, str]], *, max_new: int) -> AccuracyFn:
    """:func:`exact_match` on fixed ``records`` as an ``accuracy(params, batches)`` function (the
    batches are not used: decoding starts from the prompts themselves)."""

    def accuracy(params: PyTree, batches: list[Any]) -> float:
        return exact_match(forward, params, tok, records, max_new=max_new)

    return accuracy
