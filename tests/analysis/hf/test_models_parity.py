"""Our Flax NNX models against the reference implementation: transformers on PyTorch (CPU).

Every checkpoint here is tiny, random, and written by the test itself with ``save_pretrained``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the parity reference: the test extra installs torch (CPU) and transformers
import transformers

from analysis.hf import checkpoints
from analysis.pairs.data import causal_lm_loss
from tests.analysis.hf.parity import IDS, TINY_DECODER, randomize_

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

DECODER = TINY_DECODER


def _save(model, path, **kw):
    torch.manual_seed(0)
    model.eval()
    model.save_pretrained(path, **kw)
    return path


def _hf_decoder(kind, **overrides):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**{**DECODER, "rope_theta": 500000.0, **overrides})
        return transformers.LlamaForCausalLM(cfg)
    if kind == "mistral":
        cfg = transformers.MistralConfig(**{**DECODER, "sliding_window": 5, **overrides})
        return transformers.MistralForCausalLM(cfg)
    cfg = transformers.Qwen2Config(**{**DECODER, **overrides})
    return transformers.Qwen2ForCausalLM(cfg)


CASES = {
    "llama": ("llama", {}),
    "llama3.1-rope": (
        "llama",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8,
            }
        },
    ),
    "llama-attention-bias": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "mistral-sliding": ("mistral", {}),
    "qwen2-untied": ("qwen2", {"tie_word_embeddings": False}),
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_decoder_logits_match_transformers(case, tmp_path):
    kind, overrides = CASES[case]
    hf = _hf_decoder(kind, **overrides)
    randomize_(hf.parameters())
    _save(hf, tmp_path)
    ck = checkpoints.load(tmp_path)
    assert ck.family == kind
    with torch.no_grad():
        ref = hf(torch.tensor(IDS, dtype=torch.long)).logits.numpy()
    ours = np.asarray(jax.jit(ck.forward)(ck.params, jnp.asarray(IDS)))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
    if overrides.get("tie_word_embeddings"):
        assert "lm_head.weight" not in ck.names
    if kind == "mistral":
        # The window matters at this length: disabling it must change the logits.
        hf.config.sliding_window = None
        hf2 = transformers.MistralForCausalLM(hf.config)
        hf2.load_state_dict(hf.state_dict())
        with torch.no_grad():
            full = hf2(torch.tensor(IDS, dtype=torch.long)).logits.numpy()
        assert np.abs(full - ref).max() > 1e-3


def test_lm_loss_gradients_match_torch_autograd(tmp_path):
    hf = _hf_decoder("qwen2", tie_word_embeddings=False)
    randomize_(hf.parameters())
    _save(hf, tmp_path)
    ck = checkpoints.load(tmp_path)
    mask = np.ones_like(IDS, np.float32)
    mask[:, :4] = 0
    batch = {"input_ids": jnp.asarray(IDS), "loss_mask": jnp.asarray(mask)}
    loss_fn = causal_lm_loss(ck.forward)
    loss, grads = jax.value_and_grad(loss_fn)(ck.params, batch)
    ids = torch.tensor(IDS, dtype=torch.long)
    logits = hf(ids).logits[:, :-1]
    tm = torch.tensor(mask)[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    )
    ref_loss = (nll * tm.reshape(-1)).sum() / tm.sum()
    ref_loss.backward()
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    named = dict(hf.named_parameters())
    flat = dict(zip(ck.names, jax.tree.leaves(grads)))
    for name in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.bias",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.embed_tokens.weight",
    ):
        np.testing.assert_allclose(np.asarray(flat[name]), named[name].grad.numpy(), atol=2e-5, rtol=1e-4, err_msg=name)


def _hf_clip():
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    return transformers.CLIPVisionModelWithProjection(cfg)


def test_clip_vision_embeddings_match_transformers(tmp_path):
    hf = _hf_clip()
    randomize_(hf.parameters())
    _save(hf, tmp_path)
    ck = checkpoints.load(tmp_path)
    assert ck.family == "clip"
    pixels = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(pixels)).image_embeds.numpy()
    ours = np.asarray(jax.jit(ck.forward)(ck.params, jnp.asarray(pixels)))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
    assert "vision_model.embeddings.patch_embedding.weight" in ck.names


def test_load_save_reload_in_transformers_gives_identical_logits(tmp_path):
    hf = _hf_decoder("llama")
    randomize_(hf.parameters())
    _save(hf, tmp_path / "src")
    (tmp_path / "src" / "tokenizer.json").write_text("{}")
    ck = checkpoints.load(tmp_path / "src")
    out = checkpoints.save(tmp_path / "out", ck, max_shard_bytes=20_000)
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.json").is_file()
    back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        a = hf(torch.tensor(IDS, dtype=torch.long)).logits.numpy()
        b = back(torch.tensor(IDS, dtype=torch.long)).logits.numpy()
    np.testing.assert_array_equal(a, b)
    again = checkpoints.load(out)
    for x, y in zip(jax.tree.leaves(ck.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sharded_checkpoint_and_bfloat16(tmp_path):
    hf = _hf_decoder("mistral")
    randomize_(hf.parameters())
    _save(hf, tmp_path / "f32", max_shard_size="20KB")
    assert (tmp_path / "f32" / "model.safetensors.index.json").is_file()
    ck = checkpoints.load(tmp_path / "f32")
    hf16 = hf.to(torch.bfloat16)
    _save(hf16, tmp_path / "bf16")
    ck16 = checkpoints.load(tmp_path / "bf16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(ck16.params))
    l32 = np.asarray(ck.forward(ck.params, jnp.asarray(IDS)))
    l16 = np.asarray(ck16.forward(ck16.params, jnp.asarray(IDS)), np.float32)
    assert np.abs(l16 - l32).max() < 0.05 * np.abs(l32).max()
    up = checkpoints.load(tmp_path / "bf16", dtype=jnp.float32)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(up.params))


def test_missing_tensor_is_named(tmp_path):
    from analysis.hf.safetensors_file import read_header, read_tensor, write_file

    hf = _hf_decoder("llama")
    _save(hf, tmp_path)
    infos, _ = read_header(tmp_path / "model.safetensors")
    tensors = {n: np.array(read_tensor(i)) for n, i in infos.items() if n != "model.layers.1.mlp.up_proj.weight"}
    write_file(tmp_path / "model.safetensors", tensors)
    with pytest.raises(checkpoints.CheckpointError, match=r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]"):
        checkpoints.load(tmp_path)


def test_config_is_hf_readable_after_save(tmp_path):
    hf = _hf_clip()
    _save(hf, tmp_path / "src")
    ck = checkpoints.load(tmp_path / "src")
    checkpoints.save(tmp_path / "out", ck)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "clip_vision_model"
    back = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path / "out")
    assert back.config.projection_dim == 16
