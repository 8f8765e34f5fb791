"""Llama-style causal decoders in Flax NNX: Llama-3 (and 3.1's ``llama3`` RoPE scaling),
Mistral (sliding-window attention) and Qwen2 (q/k/v biases, tied embeddings), by configuration.

Parameter paths spell the Hugging Face tensor names (``model.layers.0.self_attn.q_proj.weight``)
and weights keep HF's ``(out, in)`` layout, so deltas, edits and reports use the names users
know and checkpoints round-trip exactly. The computation follows ``transformers``'
``LlamaForCausalLM`` / ``MistralForCausalLM`` / ``Qwen2ForCausalLM``: RMSNorm in float32,
rotary embeddings on the halves of each head (``rotate_half``), grouped-query attention, SwiGLU MLP.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from analysis.hf.models._common import ConfigError, Linear, RMSNorm, get_dtype, run_layers

FAMILIES = ("llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The fields of an HF ``config.json`` this family uses; anything we do not implement is refused."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    attention_bias: bool = False  # q, k, v and o biases (Llama)
    qkv_bias: bool = False  # q, k, v biases only (Qwen2)
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    torch_dtype: str = "float32"

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], *, source: str = "config.json") -> LlamaConfig:
        mt = cfg.get("model_type")
        if mt not in FAMILIES:
            raise ConfigError(f"{source}: model_type {mt!r} is not a Llama-style decoder ({', '.join(FAMILIES)})")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: hidden_act={act!r} is not supported (only 'silu')")
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        head_dim = cfg.get("head_dim") or hidden // heads
        # transformers v5 writes rope settings as rope_parameters={rope_theta, rope_type, …};
        # v4 checkpoints (most on the hub) as rope_theta plus rope_scaling.
        rope = dict(cfg.get("rope_parameters") or {})
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = dict(cfg.get("rope_scaling") or {})
        scaling.update(rope)
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise ConfigError(f"{source}: rope scaling type {rope_type!r} is not supported (only default and 'llama3')")
        if rope_type == "llama3":
            for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if k not in scaling:
                    raise ConfigError(f"{source}: llama3 rope scaling needs {k!r}")
        sliding = cfg.get("sliding_window")
        if mt == "qwen2":
            if cfg.get("use_sliding_window", False):
                raise ConfigError(f"{source}: Qwen2 use_sliding_window=true is not supported")
            sliding = None
        if mt == "llama":
            sliding = None
        layer_types = cfg.get("layer_types")
        if layer_types and any(t != "full_attention" for t in layer_types) and sliding is None:
            raise ConfigError(f"{source}: layer_types {sorted(set(layer_types))} are not supported")
        dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
        return cls(
            model_type=mt,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=tuple(sorted((k, v) for k, v in scaling.items() if k != "type"))
            if rope_type == "llama3"
            else None,
            attention_bias=bool(cfg.get("attention_bias", False)) if mt != "qwen2" else False,
            qkv_bias=mt == "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            sliding_window=int(sliding) if sliding else None,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
            initializer_range=float(cfg.get("initializer_range", 0.02)),
            torch_dtype=str(dtype),
        )


def rope_frequencies(cfg: LlamaConfig) -> jax.Array:
    """Inverse frequencies ``θ^(−2i/d)``, rescaled per Llama 3.1 when ``rope_type = llama3``."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    if cfg.rope_scaling is None:
        return inv
    s = dict(cfg.rope_scaling)
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return jnp.where(medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotary embedding of ``x`` [batch, seq, heads, head_dim] (HF's ``rotate_half`` convention)."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb)[:, :, None, :].astype(x.dtype), jnp.sin(emb)[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype: Any, rngs: nnx.Rngs):
        h, kv, d, e = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        qkv_bias = cfg.attention_bias or cfg.qkv_bias
        init = cfg.initializer_range
        self.q_proj = Linear(e, h * d, bias=qkv_bias, dtype=dtype, std=init, rngs=rngs)
        self.k_proj = Linear(e, kv * d, bias=qkv_bias, dtype=dtype, std=init, rngs=rngs)
        self.v_proj = Linear(e, kv * d, bias=qkv_bias, dtype=dtype, std=init, rngs=rngs)
        self.o_proj = Linear(h * d, e, bias=cfg.attention_bias, dtype=dtype, std=init, rngs=rngs)
        self.heads, self.kv_heads, self.head_dim = h, kv, d
        self.window = cfg.sliding_window

    def __call__(self, x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        # HF's sliding window lets query i see keys j with i − j < window.
        window = (self.window - 1, 0) if self.window is not None and self.window < t else None
        # jax.nn.dot_product_attention mixes float32 internals with bfloat16 inputs, which strict
        # promotion (our tests' setting) refuses; the mixing is its own, so allow it here.
        with jax.numpy_dtype_promotion("standard"):
            out = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=window)
        return self.o_proj(out.reshape(b, t, self.heads * self.head_dim))


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype: Any, rngs: nnx.Rngs):
        e, i, bias, init = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, cfg.initializer_range
        self.gate_proj = Linear(e, i, bias=bias, dtype=dtype, std=init, rngs=rngs)
        self.up_proj = Linear(e, i, bias=bias, dtype=dtype, std=init, rngs=rngs)
        self.down_proj = Linear(i, e, bias=bias, dtype=dtype, std=init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype: Any, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.input_layernorm(x), positions, inv_freq)
        return x + self.mlp(self.post_attention_layernorm(x))


class Embedding(nnx.Module):
    def __init__(self, vocab: int, dim: int, *, dtype: Any, std: float, rngs: nnx.Rngs):
        self.weight = nnx.Param(std * jax.random.normal(rngs.params(), (vocab, dim), jnp.float32).astype(dtype))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0)


class Backbone(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype: Any, rngs: nnx.Rngs):
        self.embed_tokens = Embedding(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, std=cfg.initializer_range, rngs=rngs
        )
        self.layers = nnx.List([DecoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)


class LlamaForCausalLM(nnx.Module):
    """``logits = model(input_ids)`` for int32 ids [batch, seq]; positions 0…seq−1 (right padding)."""

    def __init__(self, cfg: LlamaConfig, *, dtype: Any = None, rngs: nnx.Rngs | None = None, remat: bool = False):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        dtype = get_dtype(dtype or cfg.torch_dtype)
        self.config = cfg
        self.model = Backbone(cfg, dtype=dtype, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(
                cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype, std=cfg.initializer_range, rngs=rngs
            )
        self.remat = remat

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg = self.config
        b, t = input_ids.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
        inv_freq = rope_frequencies(cfg)
        x = self.model.embed_tokens(input_ids)
        x = run_layers(self.model.layers, x, lambda lyr, h: lyr(h, positions, inv_freq), remat=self.remat)
        x = self.model.norm(x)
        if cfg.tie_word_embeddings:
            return x @ self.model.embed_tokens.weight[...].T
        return self.lm_head(x)
