"""The decoder families people fine-tune today — Qwen2.5, Qwen3, Llama-3.2, Phi-3 — against
transformers on PyTorch (CPU): logits and LM-loss gradients on tiny random checkpoints written by
the test itself, every tensor perturbed (norms and biases too); refusals name the config key;
remat and save round-trips keep working for them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the parity reference: the test extra installs torch (CPU) and transformers
import transformers
from flax import nnx

from analysis.hf import checkpoints
from analysis.hf.models import _common
from analysis.hf.models._common import ConfigError
from analysis.pairs.data import causal_lm_loss
from tests.analysis.hf.parity import IDS, TINY_DECODER, assert_lm_loss_and_gradients_match, randomize_

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"),
    pytest.mark.isolated,  # a child pytest process (tests/conftest.py)
]

TINY = TINY_DECODER
LLAMA3_ROPE = {  # Llama-3.2's scaling, with an original context short enough to matter at 12 tokens
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
}
# Phi-3-128k / Phi-4-mini style: LongRoPE with short and long factors per rotary frequency, an
# original context of 8 tokens (so 12 tokens use the long factors) and half the head rotating.
LONGROPE = {"type": "longrope", "short_factor": [1.0, 1.7], "long_factor": [2.5, 11.0]}

CASES = {
    # Qwen3: q/k norms, head_dim 16 ≠ hidden/heads = 8, q/k/v/o biases
    "qwen3": ("qwen3", {"head_dim": 16, "attention_bias": True}),
    # Qwen3 small sizes: tied embeddings; the window on layers ≥ max_window_layers only
    "qwen3-tied-sliding": (
        "qwen3",
        {"tie_word_embeddings": True, "use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1},
    ),
    "qwen2.5-sliding": ("qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1}),
    "llama3.2-tied-llama3-rope": ("llama", {"tie_word_embeddings": True, "rope_scaling": LLAMA3_ROPE}),
    "phi3-sliding": ("phi3", {"sliding_window": 5}),
    "phi3-longrope-partial-tied": (
        "phi3",
        {
            "rope_scaling": LONGROPE,
            "original_max_position_embeddings": 8,
            "partial_rotary_factor": 0.5,
            "tie_word_embeddings": True,
        },
    ),
}
HF = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    # pad_token_id: Phi3Config's default 32000 lies outside a tiny vocabulary
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
}
MASK = np.concatenate([np.zeros((2, 4), np.float32), np.ones((2, 8), np.float32)], axis=1)


def _hf(kind, overrides):
    cfg_cls, model_cls = HF[kind]
    extra = {"pad_token_id": None} if kind == "phi3" else {}
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**{**TINY, **extra, **overrides})).eval()
    randomize_(model.parameters())
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def _with_config(ck, **changes):
    """``ck``'s parameters under a changed config (same tensors)."""
    raw = {**ck.raw_config, **changes}
    family, cfg, module = checkpoints.build(raw)
    graphdef, state = nnx.split(module)
    return checkpoints.Checkpoint(None, family, cfg, raw, ck.params, graphdef, state)


# Cases run with remat=True, as the scan over stacked layers (the CPU's way; the per-layer loop is the
# same for every family, tests/analysis/hf/test_remat.py): True where the layers are one graph and
# are scanned, False where windows differ by layer and the scan falls back to the loop.
REMAT_SCANNED = {"qwen3": True, "qwen3-tied-sliding": False, "phi3-longrope-partial-tied": True}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_loss_gradients_match_transformers(case, tmp_path, monkeypatch):
    kind, overrides = CASES[case]
    hf = _hf(kind, overrides)
    hf.save_pretrained(tmp_path)
    monkeypatch.setattr(_common, "scan_remat_default", lambda: True)
    ck = checkpoints.load(tmp_path, remat=case in REMAT_SCANNED)
    assert ck.family == kind
    forward = jax.jit(ck.forward)
    ref = _logits(hf, IDS)
    ours = np.asarray(forward(ck.params, jnp.asarray(IDS)))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
    assert ("lm_head.weight" in ck.names) != bool(overrides.get("tie_word_embeddings"))

    if "sliding_window" in overrides:  # the window matters at 12 tokens: without it the logits change
        plain = _with_config(ck, sliding_window=None, use_sliding_window=False, layer_types=None)
        full = np.asarray(jax.jit(plain.forward)(ck.params, IDS))
        assert np.abs(full - ref).max() > 1e-3
    if "rope_scaling" in overrides:  # short sequences take the other branch (LongRoPE's short factors)
        np.testing.assert_allclose(np.asarray(forward(ck.params, IDS[:, :6])), _logits(hf, IDS[:, :6]), 1e-4, 1e-4)

    batch = {"input_ids": jnp.asarray(IDS), "loss_mask": jnp.asarray(MASK)}
    lowered = jax.jit(jax.value_and_grad(causal_lm_loss(ck.forward))).lower(ck.params, batch)
    if case in REMAT_SCANNED:
        assert ("stablehlo.while" in lowered.as_text()) == REMAT_SCANNED[case]
        assert "optimization_barrier" in lowered.as_text()
    loss, grads = lowered.compile()(ck.params, batch)
    assert_lm_loss_and_gradients_match(hf, ck.names, loss, grads, IDS, MASK)


def test_fused_and_normed_tensors_keep_their_hf_names():
    def names(raw):
        return set(checkpoints.expected_tensors(checkpoints.build(raw)[2]))

    phi3 = names({"model_type": "phi3", **TINY})
    assert {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.1.mlp.gate_up_proj.weight"} <= phi3
    assert not any(n.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj") for n in phi3)
    assert checkpoints.build({"model_type": "qwen3", **TINY})[1].head_dim == 128  # Qwen3Config's default
    assert {"model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight"} <= names(
        {"model_type": "qwen3", **TINY}
    )


@pytest.mark.parametrize("case", ["phi3-longrope-partial-tied", "qwen3-tied-sliding"])
def test_save_round_trips_through_transformers(case, tmp_path):
    kind, overrides = CASES[case]
    hf = _hf(kind, overrides)
    hf.save_pretrained(tmp_path / "src")
    ck = checkpoints.load(tmp_path / "src")
    out = checkpoints.save(tmp_path / "out", ck, max_shard_bytes=20_000)
    back = HF[kind][1].from_pretrained(out).eval()
    np.testing.assert_array_equal(_logits(back, IDS), _logits(hf, IDS))
    again = checkpoints.load(out)
    assert again.names == ck.names and again.config == ck.config
    for x, y in zip(jax.tree.leaves(ck.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


REFUSED = [
    ({"model_type": "qwen3_moe"}, "unknown architecture model_type='qwen3_moe'; supported: .*qwen3, phi3"),
    ({"model_type": "qwen3", "hidden_act": "gelu"}, "hidden_act='gelu' is not supported for qwen3"),
    ({"model_type": "phi3", "hidden_act": "gelu_new"}, "hidden_act='gelu_new' is not supported for phi3"),
    (
        {"model_type": "qwen3", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
        "rope scaling type 'yarn' is not supported for qwen3: rope_scaling.rope_type must be one of 'default', "
        "'llama3'",
    ),
    (
        {"model_type": "phi3", "rope_scaling": LLAMA3_ROPE},
        "rope scaling type 'llama3' is not supported for phi3: rope_scaling.rope_type must be one of 'default', "
        "'longrope'",
    ),
    (
        {"model_type": "phi3", "partial_rotary_factor": 0.5, "rope_scaling": {**LONGROPE, "short_factor": [1.0]}},
        r"longrope rope_scaling.short_factor needs 2 numbers",
    ),
    ({"model_type": "llama", "partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5 is not supported for llama"),
    (
        {"model_type": "qwen3", "layer_types": ["full_attention", "sliding_attention"]},
        "layer_types has sliding_attention layers but no window",
    ),
    ({"model_type": "qwen2", "layer_types": ["full_attention"]}, "layer_types must name 2 layers"),
]


@pytest.mark.parametrize("change,match", REFUSED)
def test_unsupported_settings_are_refused_by_key(change, match):
    with pytest.raises(ConfigError, match=match):
        checkpoints.build({**TINY, **change})
