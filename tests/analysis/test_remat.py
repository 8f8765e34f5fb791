"""``remat=True`` asks XLA to recompute each decoder / encoder layer in the backward pass: the
lowered gradient puts one optimization barrier in front of each layer's recomputation (how
``jax.checkpoint`` keeps the recomputation from being merged with the forward pass), and the
gradient is unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import checkpoints, data

LLAMA = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
         "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
         "tie_word_embeddings": False}
CLIP = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "image_size": 16, "patch_size": 8, "projection_dim": 8, "hidden_act": "quick_gelu"}


def _loss_and_batch(raw, remat):
    model = checkpoints.from_config(raw, seed=0, remat=remat)
    if raw["model_type"] == "llama":
        ids = np.random.default_rng(0).integers(0, raw["vocab_size"], (2, 8)).astype(np.int32)
        return model.params, data.causal_lm_loss(model.forward), {"input_ids": ids, "loss_mask": np.ones((2, 8), np.float32)}
    pixels = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    return model.params, lambda p, b: jnp.sum(model.forward(p, b["pixel_values"]) ** 2), {"pixel_values": pixels}


@pytest.mark.parametrize("raw", [LLAMA, CLIP], ids=["llama", "clip"])
def test_remat_puts_each_layer_behind_a_barrier_and_keeps_the_gradient(raw):
    lowered, grads = {}, {}
    for remat in (False, True):
        params, loss, batch = _loss_and_batch(raw, remat)
        f = jax.jit(jax.grad(loss))
        lowered[remat] = f.lower(params, batch).as_text()
        grads[remat] = f(params, batch)
    assert lowered[False].count("optimization_barrier") == 0
    assert lowered[True].count("optimization_barrier") == raw["num_hidden_layers"]
    for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
