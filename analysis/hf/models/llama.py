"""Llama-style causal decoders in Flax NNX, by configuration: Llama-3 (3.1/3.2's ``llama3`` RoPE
scaling, tied embeddings), Mistral (sliding-window attention), Qwen2 / Qwen2.5 (q/k/v biases, tied
embeddings, per-layer sliding windows), Qwen3 (per-head RMSNorm of q and k before RoPE, explicit
``head_dim``) and Phi-3 (fused ``qkv_proj`` and ``gate_up_proj``, sliding window, partial rotary
dimensions, ``longrope`` scaling).

Parameter paths spell the Hugging Face tensor names (``model.layers.0.self_attn.q_proj.weight``;
Phi-3's fused ``model.layers.0.self_attn.qkv_proj.weight`` stays one tensor, split inside the
forward pass) and weights keep HF's ``(out, in)`` layout, so deltas, edits and reports use the names
users know and checkpoints round-trip exactly. The computation follows ``transformers``'
``LlamaForCausalLM`` / ``MistralForCausalLM`` / ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM`` /
``Phi3ForCausalLM``: RMSNorm in float32, rotary embeddings on the halves of each head's rotary part
(``rotate_half``), grouped-query attention, SwiGLU MLP. Dropout settings are ignored (evaluation only).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from analysis.hf.models._common import ConfigError, Linear, RMSNorm, get_dtype, run_layers

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
# rope_scaling.rope_type values each family implements (Phi-3 reads "su" and "yarn" as "longrope",
# as transformers' Phi3Config does).
ROPE_TYPES = {"phi3": ("default", "longrope")}
ROPE_TYPES_DEFAULT = ("default", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")


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
    # Sorted (key, value) pairs with "rope_type" among them (lists as tuples); None for plain RoPE.
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    rotary_dim: int | None = None  # leading dims of each head that rotate (Phi-3's partial_rotary_factor)
    attention_bias: bool = False  # q, k, v and o biases (Llama, Qwen3)
    qkv_bias: bool = False  # q, k, v biases only (Qwen2)
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3)
    fused_projections: bool = False  # qkv_proj and gate_up_proj as single tensors (Phi-3)
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None  # per layer; None: the window (if any) on every layer
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
            raise ConfigError(f"{source}: hidden_act={act!r} is not supported for {mt} (only 'silu')")
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        # Qwen3Config's head_dim defaults to 128, the others' to hidden_size // heads.
        head_dim = int(cfg.get("head_dim") or (128 if mt == "qwen3" else hidden // heads))
        # transformers v5 writes rope settings as rope_parameters={rope_theta, rope_type, …};
        # v4 checkpoints (most on the hub) as rope_theta plus rope_scaling.
        rope = dict(cfg.get("rope_parameters") or {})
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = dict(cfg.get("rope_scaling") or {})
        scaling.update(rope)
        rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
        if mt == "phi3" and rope_type in ("su", "yarn"):
            rope_type = "longrope"
        accepted = ROPE_TYPES.get(mt, ROPE_TYPES_DEFAULT)
        if rope_type not in accepted:
            raise ConfigError(
                f"{source}: rope scaling type {rope_type!r} is not supported for {mt}: "
                f"rope_scaling.rope_type must be one of {', '.join(map(repr, accepted))}"
            )
        partial = float(scaling.pop("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)))
        if partial != 1.0 and mt != "phi3":
            raise ConfigError(f"{source}: partial_rotary_factor={partial} is not supported for {mt} (only phi3)")
        rotary_dim = int(head_dim * partial)
        max_pos = int(cfg.get("max_position_embeddings", 4096 if mt == "phi3" else 8192))
        rope_scaling = _rope_scaling(mt, rope_type, scaling, cfg, head_dim=rotary_dim, max_pos=max_pos, source=source)
        sliding, layer_types = _windows(mt, cfg, layers, source)
        dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
        return cls(
            model_type=mt,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5 if mt == "phi3" else 1e-6)),
            rope_theta=theta,
            rope_scaling=rope_scaling,
            rotary_dim=rotary_dim,
            # Which biases exist is the family's (transformers ignores these keys elsewhere).
            attention_bias=bool(cfg.get("attention_bias", False)) if mt in ("llama", "qwen3") else False,
            qkv_bias=mt == "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)) if mt == "llama" else False,
            qk_norm=mt == "qwen3",
            fused_projections=mt == "phi3",
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            sliding_window=sliding,
            layer_types=layer_types,
            max_position_embeddings=max_pos,
            initializer_range=float(cfg.get("initializer_range", 0.02)),
            torch_dtype=str(dtype),
        )

    def window(self, layer: int) -> int | None:
        """Layer ``layer``'s sliding window (query i sees keys j with i − j < window), or None."""
        if self.sliding_window is None or self.layer_types is None:
            return self.sliding_window
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None


def _rope_scaling(
    mt: str, rope_type: str, scaling: dict[str, Any], cfg: dict[str, Any], *, head_dim: int, max_pos: int, source: str
) -> tuple[tuple[str, Any], ...] | None:
    """The scaling settings a rope type needs, checked, as sorted hashable pairs."""
    if rope_type == "default":
        return None
    if rope_type == "llama3":
        need = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        for k in need:
            if k not in scaling:
                raise ConfigError(f"{source}: llama3 rope scaling needs {k!r}")
        return (("rope_type", "llama3"), *sorted((k, float(scaling[k])) for k in need))
    # longrope (Phi-3 128k, Phi-3.5, Phi-4-mini), as transformers' _compute_longrope_parameters: Phi3Config
    # always has a top-level original_max_position_embeddings (default 4096), which wins over rope_scaling's.
    for k in ("long_factor", "short_factor"):
        if len(scaling.get(k) or ()) != head_dim // 2:
            raise ConfigError(f"{source}: longrope rope_scaling.{k} needs {head_dim // 2} numbers (one per frequency)")
    original = int(cfg.get("original_max_position_embeddings", scaling.get("original_max_position_embeddings", 4096)))
    factor = scaling.get("factor") or max_pos / original
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return (
        ("attention_factor", float(attention_factor)),
        ("long_factor", tuple(float(x) for x in scaling["long_factor"])),
        ("original_max_position_embeddings", original),
        ("rope_type", "longrope"),
        ("short_factor", tuple(float(x) for x in scaling["short_factor"])),
    )


def _windows(mt: str, cfg: dict[str, Any], layers: int, source: str) -> tuple[int | None, tuple[str, ...] | None]:
    """``(sliding_window, layer_types)`` as transformers applies them for the family."""
    if mt == "llama":
        sliding, types = None, cfg.get("layer_types")
    elif mt in ("qwen2", "qwen3"):
        # Qwen2Config / Qwen3Config: the window exists only with use_sliding_window, on layers
        # i >= max_window_layers unless layer_types says which.
        sliding = cfg.get("sliding_window", 4096) if cfg.get("use_sliding_window", False) else None
        first = int(cfg.get("max_window_layers", 28))
        types = cfg.get("layer_types") or [
            "sliding_attention" if sliding is not None and i >= first else "full_attention" for i in range(layers)
        ]
    else:  # mistral, phi3: the window (if any) on every layer; no layer_types
        sliding, types = cfg.get("sliding_window"), None
    if types is not None:
        if len(types) != layers or any(t not in LAYER_TYPES for t in types):
            raise ConfigError(f"{source}: layer_types must name {layers} layers among {', '.join(LAYER_TYPES)}")
        if "sliding_attention" in types and sliding is None:
            raise ConfigError(
                f"{source}: layer_types has sliding_attention layers but no window "
                f"({'use_sliding_window is false or sliding_window is null' if mt != 'llama' else 'llama has none'})"
            )
        types = tuple(types)
    return (int(sliding) if sliding else None), types


def rope_frequencies(cfg: LlamaConfig, seq_len: int) -> tuple[jax.Array, float]:
    """Inverse frequencies ``θ^(−2i/d)`` over the rotary dims ``d``, and the factor on cos and sin:
    rescaled per Llama 3.1 when ``rope_type = llama3``; per LongRoPE (long factors beyond the original
    context, as transformers' ``dynamic_rope_update`` picks them from the sequence length) for ``longrope``."""
    d = cfg.rotary_dim or cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    if cfg.rope_scaling is None:
        return inv, 1.0
    s = dict(cfg.rope_scaling)
    if s["rope_type"] == "longrope":
        ext = s["long_factor"] if seq_len > s["original_max_position_embeddings"] else s["short_factor"]
        return inv / jnp.asarray(ext, jnp.float32), float(s["attention_factor"])
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return jnp.where(medium, smoothed, scaled), 1.0


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array, scale: float = 1.0) -> jax.Array:
    """Rotary embedding of ``x`` [batch, seq, heads, head_dim] (HF's ``rotate_half`` convention) on
    its first ``2·len(inv_freq)`` dims; the rest pass through (partial rotary)."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    r = emb.shape[-1]
    rot = x[..., :r] if r < x.shape[-1] else x
    half = r // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    out = rot * cos + rotated * sin
    return jnp.concatenate([out, x[..., r:]], axis=-1) if r < x.shape[-1] else out


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, window: int | None, *, dtype: Any, rngs: nnx.Rngs):
        h, kv, d, e = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        qkv_bias = cfg.attention_bias or cfg.qkv_bias
        init = cfg.initializer_range
        if cfg.fused_projections:  # Phi-3: rows [q | k | v]
            self.qkv_proj = Linear(e, (h + 2 * kv) * d, bias=False, dtype=dtype, std=init, rngs=rngs)
        else:
            self.q_proj = Linear(e, h * d, bias=qkv_bias, dtype=dtype, std=init, rngs=rngs)
            self.k_proj = Linear(e, kv * d, bias=qkv_bias, dtype=dtype, std=init, rngs=rngs)
            self.v_proj = Linear(e, kv * d, bias=qkv_bias, dtype=dtype, std=init, rngs=rngs)
        self.o_proj = Linear(h * d, e, bias=cfg.attention_bias, dtype=dtype, std=init, rngs=rngs)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head's dims
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype)
        self.heads, self.kv_heads, self.head_dim = h, kv, d
        self.fused, self.qk_norm = cfg.fused_projections, cfg.qk_norm
        self.window = window

    def __call__(self, x: jax.Array, positions: jax.Array, inv_freq: jax.Array, scale: float) -> jax.Array:
        b, t, _ = x.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        if self.fused:
            qkv = self.qkv_proj(x)
            q, k, v = qkv[..., : h * d], qkv[..., h * d : (h + kv) * d], qkv[..., (h + kv) * d :]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = q.reshape(b, t, h, d), k.reshape(b, t, kv, d), v.reshape(b, t, kv, d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, positions, inv_freq, scale), apply_rope(k, positions, inv_freq, scale)
        # HF's sliding window lets query i see keys j with i − j < window.
        window = (self.window - 1, 0) if self.window is not None and self.window < t else None
        # jax.nn.dot_product_attention mixes float32 internals with bfloat16 inputs, which strict
        # promotion (our tests' setting) refuses; the mixing is its own, so allow it here.
        with jax.numpy_dtype_promotion("standard"):
            out = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=window)
        return self.o_proj(out.reshape(b, t, h * d))


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype: Any, rngs: nnx.Rngs):
        e, i, bias, init = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, cfg.initializer_range
        if cfg.fused_projections:  # Phi-3: rows [gate | up]
            self.gate_up_proj = Linear(e, 2 * i, bias=False, dtype=dtype, std=init, rngs=rngs)
        else:
            self.gate_proj = Linear(e, i, bias=bias, dtype=dtype, std=init, rngs=rngs)
            self.up_proj = Linear(e, i, bias=bias, dtype=dtype, std=init, rngs=rngs)
        self.down_proj = Linear(i, e, bias=bias, dtype=dtype, std=init, rngs=rngs)
        self.fused = cfg.fused_projections

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.fused:
            gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(jax.nn.silu(gate) * up)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, layer: int, *, dtype: Any, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(cfg, cfg.window(layer), dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, inv_freq: jax.Array, scale: float) -> jax.Array:
        x = x + self.self_attn(self.input_layernorm(x), positions, inv_freq, scale)
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
        self.layers = nnx.List([DecoderLayer(cfg, i, dtype=dtype, rngs=rngs) for i in range(cfg.num_hidden_layers)])
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
        inv_freq, scale = rope_frequencies(cfg, t)
        x = self.model.embed_tokens(input_ids)
        x = run_layers(self.model.layers, x, lambda lyr, h: lyr(h, positions, inv_freq, scale), remat=self.remat)
        x = self.model.norm(x)
        if cfg.tie_word_embeddings:
            return x @ self.model.embed_tokens.weight[...].T
        return self.lm_head(x)
