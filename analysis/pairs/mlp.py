"""A small trained pre/post pair that needs no files: a two-hidden-layer MLP classifier
pre-trained on one teacher task and post-trained (fine-tuned) on a related one.

Data: inputs ``x ~ N(0, I_d)``; labels ``argmax`` of a fixed random two-layer teacher network.
The post-training teacher is the pre-training teacher with a perturbed first layer, so
post-training learns a related skill from the pre-trained starting point, as in the paper's
setting. Everything is seeded; the pair trains in seconds on one CPU core with Optax (Adam).

Parameters use HF-style names and (out, in) weight layout (``fc1.weight``, ``fc1.bias``, …),
like every other pair in the toolkit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import riemann
from analysis.pairs.pair import Pair

PyTree = Any


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    inputs: int = 32
    hidden: int = 64
    classes: int = 10
    teacher_hidden: int = 48
    shift: float = 0.6  # relative size of the perturbation between the two teachers
    pre_steps: int = 400
    post_steps: int = 250
    batch: int = 256
    lr: float = 3e-3
    eval_batches: int = 12  # 4 calibration + 8 test (analysis.pairs.split)
    seed: int = 0


def init_mlp(key: jax.Array, cfg: MLPConfig) -> PyTree:
    sizes = [("fc1", cfg.inputs, cfg.hidden), ("fc2", cfg.hidden, cfg.hidden), ("head", cfg.hidden, cfg.classes)]
    keys = jax.random.split(key, len(sizes))
    return {
        name: {
            "weight": jax.random.normal(k, (fan_out, fan_in)) * jnp.sqrt(1.0 / fan_in),
            "bias": jnp.zeros((fan_out,)),
        }
        for k, (name, fan_in, fan_out) in zip(keys, sizes)
    }


def mlp_logits(params: PyTree, x: jax.Array) -> jax.Array:
    h = jax.nn.gelu(x @ params["fc1"]["weight"].T + params["fc1"]["bias"][None])
    h = jax.nn.gelu(h @ params["fc2"]["weight"].T + params["fc2"]["bias"][None])
    return h @ params["head"]["weight"].T + params["head"]["bias"][None]


def cross_entropy(params: PyTree, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Mean softmax cross-entropy of the MLP on ``batch = (x, labels)``."""
    x, y = batch
    logits = mlp_logits(params, x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def accuracy(params: PyTree, batches: list[tuple[jax.Array, jax.Array]]) -> float:
    """Top-1 accuracy over ``batches``."""
    hits = [riemann.pace(jnp.mean(jnp.argmax(mlp_logits(params, x), axis=-1) == y)) for x, y in batches]
    return float(np.mean(jax.device_get(hits)))


def _teacher(key: jax.Array, cfg: MLPConfig) -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(key)
    return (
        jax.random.normal(k1, (cfg.inputs, cfg.teacher_hidden)),
        jax.random.normal(k2, (cfg.teacher_hidden, cfg.classes)),
    )


def _labels(teacher: tuple[jax.Array, jax.Array], x: jax.Array) -> jax.Array:
    w1, w2 = teacher
    return jnp.argmax(jnp.tanh(x @ w1) @ w2, axis=-1)


def _sample(key: jax.Array, teacher: tuple[jax.Array, jax.Array], cfg: MLPConfig) -> tuple[jax.Array, jax.Array]:
    x = jax.random.normal(key, (cfg.batch, cfg.inputs))
    return x, _labels(teacher, x)


def _train(params: PyTree, teacher: Any, key: jax.Array, steps: int, cfg: MLPConfig) -> tuple[PyTree, list[float]]:
    opt = optax.adam(cfg.lr)

    @jax.jit
    def step(carry: tuple[PyTree, Any], k: jax.Array) -> tuple[tuple[PyTree, Any], jax.Array]:
        p, s = carry
        loss, g = jax.value_and_grad(cross_entropy)(p, _sample(k, teacher, cfg))
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), loss

    # Optax mixes Python floats with int32 step counts, which strict promotion (used in our tests)
    # refuses; training is not engine code, so it runs under JAX's standard rules.
    with jax.numpy_dtype_promotion("standard"):
        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
    return params, np.asarray(losses).tolist()


def build_pair(cfg: MLPConfig = MLPConfig()) -> Pair:
    """Train the pair: pre-training on teacher A, post-training from there on teacher B.

    The returned pair's loss is teacher B's cross-entropy on held-out batches (drawn with a key
    never used in training), which is what post-training improved.
    """
    root = jax.random.key(cfg.seed)
    k_teach, k_shift, k_init, k_pre, k_post, k_eval = jax.random.split(root, 6)
    teacher_a = _teacher(k_teach, cfg)
    shift = jax.random.normal(k_shift, teacher_a[0].shape) * cfg.shift
    teacher_b = (teacher_a[0] + shift, teacher_a[1])
    pre, pre_curve = _train(init_mlp(k_init, cfg), teacher_a, k_pre, cfg.pre_steps, cfg)
    post, post_curve = _train(pre, teacher_b, k_post, cfg.post_steps, cfg)
    batches = [_sample(k, teacher_b, cfg) for k in jax.random.split(k_eval, cfg.eval_batches)]
    info = {
        "config": dataclasses.asdict(cfg),
        "pre_training_final_loss": float(np.mean(pre_curve[-20:])),
        "post_training_final_loss": float(np.mean(post_curve[-20:])),
        "accuracy_pre": accuracy(pre, batches),
        "accuracy_post": accuracy(post, batches),
    }
    return Pair(
        name="mlp-teacher",
        description=(
            f"MLP {cfg.inputs}-{cfg.hidden}-{cfg.hidden}-{cfg.classes} (GELU), pre-trained {cfg.pre_steps} Adam "
            f"steps on teacher A, post-trained {cfg.post_steps} steps on teacher B (first layer shifted by "
            f"{cfg.shift}×N(0,1)); loss: teacher-B cross-entropy on {cfg.eval_batches}×{cfg.batch} held-out inputs"
        ),
        pre=pre,
        post=post,
        loss_fn=cross_entropy,
        batches=batches,
        accuracy_fn=accuracy,
        info=info,
    )
