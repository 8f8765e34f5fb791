"""Full-size configurations of the paper's models, built abstractly (no weights): our tensor
names and shapes equal transformers' on the meta device."""

import jax
import pytest
import torch
import transformers

from analysis.hf import checkpoints

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}
LLAMA31_8B = {
    **LLAMA3_8B,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "max_position_embeddings": 131072,
}
MISTRAL_7B_V03 = {
    "model_type": "mistral",
    "vocab_size": 32768,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "bfloat16",
    "hidden_act": "silu",
}
QWEN2_7B = {
    "model_type": "qwen2",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "sliding_window": 131072,
    "max_window_layers": 28,
    "rms_norm_eps": 1e-6,
    "torch_dtype": "bfloat16",
    "hidden_act": "silu",
}
CLIP_B32 = {
    "model_type": "clip_vision_model",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
    "projection_dim": 512,
    "hidden_act": "quick_gelu",
}

HF = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "clip_vision_model": (transformers.CLIPVisionConfig, transformers.CLIPVisionModelWithProjection),
}


@pytest.mark.parametrize(
    "raw,count",
    [
        (LLAMA3_8B, 8_030_261_248),
        (LLAMA31_8B, 8_030_261_248),
        (MISTRAL_7B_V03, 7_248_023_552),
        (QWEN2_7B, 7_615_616_512),
        (CLIP_B32, None),
    ],
    ids=["llama3-8b", "llama3.1-8b", "mistral-7b-v0.3", "qwen2-7b", "clip-vit-b32"],
)
def test_full_size_tensors_match_transformers(raw, count):
    _, _, module = checkpoints.build(raw)
    ours = {n: tuple(s.shape) for n, s in checkpoints.expected_tensors(module).items()}
    cfg_cls, model_cls = HF[raw["model_type"]]
    fields = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "torch_dtype")}
    with torch.device("meta"):
        hf = model_cls(cfg_cls(**fields))
    theirs = {n: tuple(p.shape) for n, p in hf.state_dict().items()}
    assert ours == theirs
    if count is not None:
        assert sum(int(jax.numpy.prod(jax.numpy.array(s))) for s in ours.values()) == count
