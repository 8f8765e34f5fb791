"""``remat=True`` recomputes each decoder / encoder layer in the backward pass instead of storing
its internals: per-layer ``jax.checkpoint`` on accelerators, a checkpointed scan over the stacked
layers on the CPU (whose XLA pipeline drops the checkpoint's barriers). Both give the gradient of
``remat=False``; on the CPU only the scan lowers the memory XLA plans for a gradient step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.hf import checkpoints
from analysis.hf.models import _common
from analysis.pairs import data

LLAMA = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
CLIP = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 16,
    "patch_size": 8,
    "projection_dim": 8,
    "hidden_act": "quick_gelu",
}


def _loss_and_batch(raw, remat, tokens=8):
    model = checkpoints.from_config(raw, seed=0, remat=remat)
    if raw["model_type"] != "clip_vision_model":
        ids = np.random.default_rng(0).integers(0, raw["vocab_size"], (2, tokens)).astype(np.int32)
        batch = {"input_ids": ids, "loss_mask": np.ones((2, tokens), np.float32)}
        return model.params, data.causal_lm_loss(model.forward), batch
    pixels = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    return model.params, lambda p, b: jnp.sum(model.forward(p, b["pixel_values"]) ** 2), {"pixel_values": pixels}


@pytest.mark.parametrize("scan", [False, True], ids=["checkpoint-loop", "checkpoint-scan"])
@pytest.mark.parametrize("raw", [LLAMA, CLIP], ids=["llama", "clip"])
def test_both_remat_ways_keep_the_gradient(raw, scan, monkeypatch):
    monkeypatch.setattr(_common, "scan_remat_default", lambda: scan)
    lowered, grads = {}, {}
    for remat in (False, True):
        params, loss, batch = _loss_and_batch(raw, remat)
        f = jax.jit(jax.grad(loss))
        lowered[remat] = f.lower(params, batch).as_text()
        grads[remat] = f(params, batch)
    assert "optimization_barrier" not in lowered[False] and "while" not in lowered[False]
    # One barrier per layer in the loop; one in the scan's body (and a loop) with the scan.
    assert lowered[True].count("optimization_barrier") == (1 if scan else raw["num_hidden_layers"])
    assert ("stablehlo.while" in lowered[True]) == scan
    for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scan", [False, True], ids=["checkpoint-loop", "checkpoint-scan"])
def test_gemma_remat_scans_whole_repeats_of_its_layer_pattern(scan, monkeypatch):
    """Local and global Gemma layers are different graphs, so the scan runs over repeats of the
    pattern and then over the remaining layers (Gemma-3-1B: four repeats of five local + one
    global, then two local); here two repeats of two local + one global, then two local."""
    monkeypatch.setattr(_common, "scan_remat_default", lambda: scan)
    raw = {
        **LLAMA,
        "model_type": "gemma3_text",
        "num_hidden_layers": 8,
        "sliding_window_pattern": 3,
        "sliding_window": 4,
        "head_dim": 8,
    }
    lowered, grads = {}, {}
    for remat in (False, True):
        params, loss, batch = _loss_and_batch(raw, remat)
        f = jax.jit(jax.grad(loss))
        lowered[remat] = f.lower(params, batch).as_text()
        grads[remat] = f(params, batch)
    # A barrier in each scan's body (repeats, tail), or one per repeat and per tail layer.
    assert lowered[True].count("optimization_barrier") == (2 if scan else 4)
    assert ("stablehlo.while" in lowered[True]) == scan
    # Recomputed layers are compiled apart from their backward pass, so float32 sums round in
    # another order: through eight layers of four norms each, relative differences reach ~5e-5.
    for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)


def test_scan_remat_keeps_second_order_and_forward_mode_products():
    """Hessian-vector products (jvp of the gradient) and jvps run through the scan as through
    the plain model."""
    outs = []
    for remat in (False, True):
        params, loss, batch = _loss_and_batch(LLAMA, remat)
        d = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
        hvp = jax.jit(lambda p, v, loss=loss, batch=batch: jax.jvp(lambda q: jax.grad(loss)(q, batch), (p,), (v,))[1])
        jvp = jax.jit(lambda p, v, loss=loss, batch=batch: jax.jvp(lambda q: loss(q, batch), (p,), (v,))[1])
        hvp, jvp = hvp(params, d), jvp(params, d)
        outs.append((hvp, jvp))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_on_the_cpu_only_the_scan_saves_memory():
    raw = {**LLAMA, "num_hidden_layers": 6, "hidden_size": 64, "intermediate_size": 256}

    def temp(remat, scan):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(_common, "scan_remat_default", lambda: scan)
            params, loss, batch = _loss_and_batch(raw, remat, tokens=512)
            return jax.jit(jax.grad(loss)).lower(params, batch).compile().memory_analysis().temp_size_in_bytes

    plain, loop, scanned = temp(False, False), temp(True, False), temp(True, True)
    assert loop > 0.9 * plain  # XLA's CPU pipeline undoes the per-layer checkpoint
    assert scanned < 0.5 * plain
