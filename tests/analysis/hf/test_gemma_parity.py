"""Gemma-2 and Gemma-3 (text) against transformers on PyTorch (CPU): logits and LM-loss gradients
on tiny random checkpoints with every tensor randomised, sequences longer than the sliding window,
and soft-caps small enough to bite (each feature is checked to change the logits)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from analysis.hf import checkpoints
from analysis.hf.models._common import ConfigError
from analysis.pairs.data import causal_lm_loss
from tests.analysis.hf.parity import assert_lm_loss_and_gradients_match, randomize_

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"),
    pytest.mark.isolated,  # a child pytest process (tests/conftest.py)
]

TINY = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    query_pre_attn_scalar=6,  # ≠ head_dim, so the scaling is the config's, not 1/√d
    sliding_window=4,
    max_position_embeddings=64,
    initializer_range=0.1,
)
HF = {
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
    "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
}
CASES = {
    # Alternating local/global layers, tied embeddings, and soft-caps near the largest attention
    # score (~2.3) and logit (~2.4) of these weights: they bite without saturating every value.
    "gemma2": ("gemma2", dict(num_hidden_layers=4, attn_logit_softcapping=1.0, final_logit_softcapping=2.0)),
    "gemma2-untied-uncapped": (
        "gemma2",
        dict(num_hidden_layers=2, attn_logit_softcapping=None, final_logit_softcapping=None, tie_word_embeddings=False),
    ),
    # Five local layers, one global, local and global RoPE bases, linear scaling on the global one.
    "gemma3": (
        "gemma3_text",
        dict(
            num_hidden_layers=6,
            rope_theta=1000.0,
            rope_local_base_freq=10.0,
            rope_scaling={"rope_type": "linear", "factor": 8.0},
            final_logit_softcapping=2.0,
        ),
    ),
}
IDS = np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 12)).astype(np.int32)


def _hf(kind, **overrides):
    cfg_cls, model_cls = HF[kind]
    torch.manual_seed(0)
    return model_cls(cfg_cls(**{**TINY, **overrides})).eval()


def _logits(model):
    with torch.no_grad():
        return model(torch.tensor(IDS, dtype=torch.long)).logits.numpy()


def _variant(hf, kind, **changes):
    """The same weights under a changed config (a feature switched off)."""
    raw = {**hf.config.to_dict(), **changes}
    other = HF[kind][1](HF[kind][0](**{k: v for k, v in raw.items() if k != "model_type"})).eval()
    other.load_state_dict(hf.state_dict())
    return _logits(other)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    kind, overrides = CASES[request.param]
    hf = _hf(kind, **overrides)
    randomize_(hf.parameters())
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return request.param, kind, overrides, hf, checkpoints.load(path)


def test_logits_match_transformers_and_each_feature_matters(case):
    name, kind, overrides, hf, ck = case
    assert ck.family == kind
    ref = _logits(hf)
    ours = np.asarray(jax.jit(ck.forward)(ck.params, jnp.asarray(IDS)))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
    assert ("lm_head.weight" in ck.names) == (overrides.get("tie_word_embeddings") is False)
    # Each feature changes the logits at this length and scale, so the parity above covers it.
    # The window alone: one covering the whole sequence, layer types and RoPE bases kept.
    switches = {"window": {"sliding_window": IDS.shape[1]}}
    if overrides.get("attn_logit_softcapping"):
        switches["attention soft-cap"] = {"attn_logit_softcapping": None}
    if overrides.get("final_logit_softcapping"):
        switches["final soft-cap"] = {"final_logit_softcapping": None}
    if kind == "gemma3_text":
        local = {**hf.config.rope_parameters["sliding_attention"], "rope_theta": 1000.0}
        switches["local RoPE base"] = {"rope_parameters": {**hf.config.rope_parameters, "sliding_attention": local}}
    for feature, change in switches.items():
        assert np.abs(_variant(hf, kind, **change) - ref).max() > 1e-3, feature


def test_lm_loss_gradients_match_torch_autograd(case):
    name, kind, overrides, hf, ck = case
    mask = np.ones_like(IDS, np.float32)
    mask[:, :4] = 0
    batch = {"input_ids": jnp.asarray(IDS), "loss_mask": jnp.asarray(mask)}
    loss, grads = jax.jit(jax.value_and_grad(causal_lm_loss(ck.forward)))(ck.params, batch)
    assert_lm_loss_and_gradients_match(hf, ck.names, loss, grads, IDS, mask)  # every tensor, q/k norms included


def test_save_round_trip_reloads_in_transformers(case, tmp_path):
    name, kind, overrides, hf, ck = case
    out = checkpoints.save(tmp_path / "out", ck)
    back = HF[kind][1].from_pretrained(out).eval()
    np.testing.assert_array_equal(_logits(back), _logits(hf))
    again = checkpoints.load(out)
    for x, y in zip(jax.tree.leaves(ck.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


LINEAR_8 = {"rope_type": "linear", "factor": 8.0}  # Gemma-3 4B, 12B, 27B


@pytest.mark.parametrize(
    "kind,v4",
    [
        ("gemma3_text", {"rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": LINEAR_8}),
        ("gemma3_text", {"rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": None}),
        ("gemma2", {"rope_theta": 1e4}),
    ],
    ids=["gemma3-4b", "gemma3-1b", "gemma2"],
)
def test_hub_v4_rope_settings_read_as_transformers_v5_reads_them(kind, v4):
    """Hub configs (v4) give rope_theta, rope_scaling and Gemma-3's rope_local_base_freq; v5 turns
    them into rope_parameters per layer type, as the parity checkpoints above are saved."""
    raw = {**TINY, "model_type": kind, "num_hidden_layers": 6, **v4}
    _, cfg, _ = checkpoints.build(raw)
    hf = HF[kind][0](**{k: v for k, v in raw.items() if k != "model_type"}).rope_parameters
    for layer_type, theta, factor in cfg.rope:
        p = hf[layer_type] if kind == "gemma3_text" else hf
        assert (theta, factor) == (p["rope_theta"], p.get("factor", 1.0) if p["rope_type"] == "linear" else 1.0)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"model_type": "gemma3"}, "model_type='gemma3'.*use a text-only checkpoint with model_type='gemma3_text'"),
        ({"hidden_activation": "gelu"}, "hidden_activation='gelu'.*gelu_pytorch_tanh"),
        ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        ({"attention_bias": True}, "attention_bias"),
        ({"layer_types": ["chunked_attention"] * 2}, "layer_types must list one of"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type one of default, linear"),
        ({"sliding_window": None}, "sliding_window=null"),
        ({"model_type": "gemma"}, "unknown architecture model_type='gemma'; supported: .*gemma2, gemma3_text"),
    ],
)
def test_unsupported_options_are_refused_by_name(change, match):
    raw = {**TINY, "model_type": "gemma3_text", "num_hidden_layers": 2, **change}
    with pytest.raises(ConfigError, match=match):
        checkpoints.build(raw)
