"""Gemma-2 and Gemma-3 (text) causal decoders in Flax NNX, by configuration.

Follows ``transformers``' ``Gemma2ForCausalLM`` (``model_type = gemma2``) and ``Gemma3ForCausalLM``
(``model_type = gemma3_text``): embeddings scaled by √hidden_size (the factor cast to the parameter
dtype first), RMSNorm scaled by ``1 + weight`` in float32, a norm after attention and around the
GeGLU MLP as well as before, attention scaled by ``query_pre_attn_scalar^-½``, sliding-window and
global layers per ``layer_types`` with RoPE bases per layer type (Gemma-3), attention-logit and
final-logit soft-capping (Gemma-2; Gemma-3 applies only the final one), q/k norms (Gemma-3), tied
embeddings. Parameter paths are the HF tensor names, weights keep HF's ``(out, in)`` layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from analysis.hf.models._common import ConfigError, Linear, along_last, get_dtype, run_layers
from analysis.hf.models.llama import Embedding, apply_rope

FAMILIES = ("gemma2", "gemma3_text")
LAYER_TYPES = ("sliding_attention", "full_attention")
ROPE_TYPES = ("default", "linear")
_ROPE_KEYS = {"rope_type", "type", "rope_theta", "factor"}


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """The fields of a Gemma-2 / Gemma-3 text ``config.json`` this family uses, with transformers'
    defaults (``Gemma2Config`` / ``Gemma3TextConfig``); anything we do not implement is refused."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    rope: tuple[tuple[str, float, float], ...]  # (layer type, rope_theta, linear factor)
    sliding_window: int
    query_pre_attn_scalar: float = 256.0
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    torch_dtype: str = "float32"

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "gemma3_text"

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], *, source: str = "config.json") -> GemmaConfig:
        mt = cfg.get("model_type")
        if mt not in FAMILIES:
            raise ConfigError(f"{source}: model_type {mt!r} is not a Gemma text decoder ({', '.join(FAMILIES)})")
        gemma3 = mt == "gemma3_text"
        # Gemma2Config and Gemma3TextConfig read hidden_activation (hidden_act, also written by
        # some hub configs, is ignored by both).
        act = cfg.get("hidden_activation", "gelu_pytorch_tanh")
        if act != "gelu_pytorch_tanh":
            raise ConfigError(f"{source}: hidden_activation={act!r} is not supported (only 'gelu_pytorch_tanh')")
        for key in ("attention_bias", "use_bidirectional_attention"):
            if cfg.get(key):
                raise ConfigError(f"{source}: {key}={cfg[key]!r} is not supported (only false)")
        layers = int(cfg["num_hidden_layers"])
        types = cfg.get("layer_types")
        if types is None:
            # transformers' defaults: Gemma-2 alternates local and global layers, Gemma-3 puts a
            # global layer after every sliding_window_pattern − 1 local ones.
            period = int(cfg.get("sliding_window_pattern", 6)) if gemma3 else 2
            types = ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(layers)]
        bad = sorted({t for t in types if t not in LAYER_TYPES})
        if bad or len(types) != layers:
            raise ConfigError(
                f"{source}: layer_types must list one of {', '.join(LAYER_TYPES)} per layer ({layers} layers); "
                f"got {bad or types}"
            )
        window = cfg.get("sliding_window", 4096)
        if window is None and "sliding_attention" in types:
            raise ConfigError(f"{source}: sliding_window=null with sliding_attention layers is not supported")
        heads = int(cfg["num_attention_heads"])
        dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
        return cls(
            model_type=mt,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or 256),  # transformers' default, not hidden // heads
            layer_types=tuple(types),
            rope=_rope(cfg, source, gemma3),
            sliding_window=int(window or 0),
            query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", 256)),
            # Gemma3Attention does not pass attn_logit_softcapping on to its attention function, so a
            # Gemma-3 config's value has no effect in transformers; it has none here either.
            attn_logit_softcapping=None if gemma3 else _cap(cfg.get("attn_logit_softcapping", 50.0)),
            final_logit_softcapping=_cap(cfg.get("final_logit_softcapping", None if gemma3 else 30.0)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 131072 if gemma3 else 8192)),
            initializer_range=float(cfg.get("initializer_range", 0.02)),
            torch_dtype=str(dtype),
        )


def _cap(v: Any) -> float | None:
    return None if v is None else float(v)


def _rope(cfg: dict[str, Any], source: str, gemma3: bool) -> tuple[tuple[str, float, float], ...]:
    """(layer type, θ, linear factor) per layer type, read as transformers v5 reads it: Gemma-2 has
    one ``rope_parameters`` dict (v4: ``rope_theta`` + ``rope_scaling``); Gemma-3 one per layer type
    (v4: ``rope_theta`` + ``rope_scaling`` for global layers, ``rope_local_base_freq`` for local ones)."""
    given = dict(cfg.get("rope_parameters") or {})
    nested = bool(given) and set(given) <= set(LAYER_TYPES)
    if gemma3:
        if given and not nested:
            raise ConfigError(f"{source}: gemma3_text rope_parameters must be keyed by {', '.join(LAYER_TYPES)}")
        full = dict(given.get("full_attention") or {"rope_type": "default"})
        full.update(cfg.get("rope_scaling") or {})
        full.setdefault("rope_theta", cfg.get("rope_theta", 1_000_000.0))
        local = dict(given.get("sliding_attention") or {"rope_type": "default"})
        local.setdefault("rope_theta", cfg.get("rope_local_base_freq", 10_000.0))
        per_type = {"full_attention": full, "sliding_attention": local}
    else:
        if nested:
            raise ConfigError(f"{source}: gemma2 rope_parameters per layer type is not supported (one dict)")
        one = {**(cfg.get("rope_scaling") or {}), **given}
        one.setdefault("rope_theta", cfg.get("rope_theta", 10_000.0))
        per_type = {t: one for t in LAYER_TYPES}
    out = []
    for layer_type, p in per_type.items():
        extra = sorted(set(p) - _ROPE_KEYS)
        kind = p.get("rope_type", p.get("type", "default"))
        if kind not in ROPE_TYPES or extra:
            raise ConfigError(
                f"{source}: rope parameters for {layer_type} {p} are not supported "
                f"(rope_type one of {', '.join(ROPE_TYPES)}; keys {', '.join(sorted(_ROPE_KEYS))})"
            )
        if kind == "linear" and "factor" not in p:
            raise ConfigError(f"{source}: linear rope scaling for {layer_type} needs 'factor'")
        out.append((layer_type, float(p["rope_theta"]), float(p["factor"]) if kind == "linear" else 1.0))
    return tuple(out)


def rope_frequencies(cfg: GemmaConfig) -> dict[str, jax.Array]:
    """Inverse frequencies ``θ^(−2i/d) / factor`` per layer type (``linear`` scaling divides them)."""
    d = cfg.head_dim
    exps = jnp.arange(0, d, 2, dtype=jnp.float32) / d
    return {t: 1.0 / (theta**exps) / factor for t, theta, factor in cfg.rope}


class GemmaRMSNorm(nnx.Module):
    """``Gemma2RMSNorm`` / ``Gemma3RMSNorm``: normalise in float32, scale by ``1 + weight`` in
    float32, then cast (Llama casts before scaling)."""

    def __init__(self, dim: int, eps: float, *, dtype: Any):
        # Zero-centred: transformers initialises the weight at 0 so that the scale starts at 1.
        self.weight = nnx.Param(jnp.zeros((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + jnp.float32(self.eps))
        return (h * (1.0 + along_last(self.weight[...].astype(jnp.float32), h))).astype(x.dtype)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """``cap · tanh(x / cap)``, in ``x``'s dtype, as transformers writes it."""
    return x if cap is None else jnp.tanh(x / cap) * cap


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, cap: float | None, window: int | None
) -> jax.Array:
    """transformers' ``eager_attention_forward`` for ``q`` [b, t, heads, d], ``k``/``v`` [b, t, kv, d]:
    scores in the input dtype, soft-capped before the mask, softmax in float32. Written out because
    ``jax.nn.dot_product_attention`` has no soft-capping."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, d)
    s = softcap(jnp.einsum("bqkgd,bskd->bkgqs", qg, k) * scale, cap)
    i = jnp.arange(t, dtype=jnp.int32)[:, None]
    j = jnp.arange(t, dtype=jnp.int32)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (i - j < window)  # HF: key j visible from query i when i − j < window
    s = jnp.where(allowed[None, None, None], s, jnp.finfo(s.dtype).min)
    p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(q.dtype)
    return jnp.einsum("bkgqs,bskd->bqkgd", p, v).reshape(b, t, h * d)


class Attention(nnx.Module):
    """``Gemma2Attention`` / ``Gemma3Attention`` (q/k norms on each head before RoPE in Gemma-3)."""

    def __init__(self, cfg: GemmaConfig, layer_type: str, *, dtype: Any, rngs: nnx.Rngs):
        h, kv, d, e = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        init = cfg.initializer_range
        self.q_proj = Linear(e, h * d, bias=False, dtype=dtype, std=init, rngs=rngs)
        self.k_proj = Linear(e, kv * d, bias=False, dtype=dtype, std=init, rngs=rngs)
        self.v_proj = Linear(e, kv * d, bias=False, dtype=dtype, std=init, rngs=rngs)
        self.o_proj = Linear(h * d, e, bias=False, dtype=dtype, std=init, rngs=rngs)
        if cfg.qk_norm:
            self.q_norm = GemmaRMSNorm(d, cfg.rms_norm_eps, dtype=dtype)
            self.k_norm = GemmaRMSNorm(d, cfg.rms_norm_eps, dtype=dtype)
        self.heads, self.kv_heads, self.head_dim = h, kv, d
        self.layer_type = layer_type
        self.window = cfg.sliding_window if layer_type == "sliding_attention" else None
        self.scale = cfg.query_pre_attn_scalar**-0.5
        self.cap = cfg.attn_logit_softcapping
        self.qk_norm = cfg.qk_norm

    def __call__(self, x: jax.Array, positions: jax.Array, inv_freq: dict[str, jax.Array]) -> jax.Array:
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        freqs = inv_freq[self.layer_type]
        q, k = apply_rope(q, positions, freqs), apply_rope(k, positions, freqs)
        out = attention(q, k, v, scale=self.scale, cap=self.cap, window=self.window)
        return self.o_proj(out)


class MLP(nnx.Module):
    """GeGLU: ``down(gelu_tanh(gate(x)) · up(x))`` (``Gemma2MLP``)."""

    def __init__(self, cfg: GemmaConfig, *, dtype: Any, rngs: nnx.Rngs):
        e, i, init = cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range
        self.gate_proj = Linear(e, i, bias=False, dtype=dtype, std=init, rngs=rngs)
        self.up_proj = Linear(e, i, bias=False, dtype=dtype, std=init, rngs=rngs)
        self.down_proj = Linear(i, e, bias=False, dtype=dtype, std=init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.gelu(self.gate_proj(x), approximate=True) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """``Gemma2DecoderLayer``: each sub-block normed on the way in and on the way out."""

    def __init__(self, cfg: GemmaConfig, layer_type: str, *, dtype: Any, rngs: nnx.Rngs):
        e, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(e, eps, dtype=dtype)
        self.self_attn = Attention(cfg, layer_type, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = GemmaRMSNorm(e, eps, dtype=dtype)
        self.pre_feedforward_layernorm = GemmaRMSNorm(e, eps, dtype=dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)
        self.post_feedforward_layernorm = GemmaRMSNorm(e, eps, dtype=dtype)

    def __call__(self, x: jax.Array, positions: jax.Array, inv_freq: dict[str, jax.Array]) -> jax.Array:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), positions, inv_freq))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class LayerGroup(nnx.Module):
    """One repeat of the layer-type pattern (for Gemma-2 a local and a global layer), built on the
    fly around existing layers so that remat's scan (:func:`run_layers`) finds identical graphs to
    stack: local and global layers differ in their static window, so single layers would not."""

    def __init__(self, layers: list[DecoderLayer]):
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array, positions: jax.Array, inv_freq: dict[str, jax.Array]) -> jax.Array:
        for layer in self.layers:
            x = layer(x, positions, inv_freq)
        return x


def pattern_period(types: tuple[str, ...]) -> int:
    """The shortest ``p`` with ``types[i] == types[i % p]`` for all ``i``."""
    return next(p for p in range(1, len(types) + 1) if all(t == types[i % p] for i, t in enumerate(types)))


class Backbone(nnx.Module):
    def __init__(self, cfg: GemmaConfig, *, dtype: Any, rngs: nnx.Rngs):
        self.embed_tokens = Embedding(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, std=cfg.initializer_range, rngs=rngs
        )
        self.layers = nnx.List([DecoderLayer(cfg, t, dtype=dtype, rngs=rngs) for t in cfg.layer_types])
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)


class GemmaForCausalLM(nnx.Module):
    """``logits = model(input_ids)`` for int32 ids [batch, seq]; positions 0…seq−1 (right padding).
    ``Gemma2ForCausalLM`` or ``Gemma3ForCausalLM`` by ``config.model_type``."""

    def __init__(self, cfg: GemmaConfig, *, dtype: Any = None, rngs: nnx.Rngs | None = None, remat: bool = False):
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
        emb = self.model.embed_tokens.weight[...]
        # transformers keeps √hidden as a float32 buffer cast to the weight dtype (55.4256 → 55.5
        # in bfloat16), so the rounding is the same here.
        x = self.model.embed_tokens(input_ids) * jnp.asarray(cfg.hidden_size**0.5, jnp.float32).astype(emb.dtype)

        def call(layer: nnx.Module, h: jax.Array) -> jax.Array:
            return layer(h, positions, inv_freq)

        layers = list(self.model.layers)
        if self.remat:
            # Whole repeats of the pattern as groups, the rest (e.g. Gemma-3-1B's last two local
            # layers) one by one: each part is scanned over when its members share one graph.
            p = pattern_period(cfg.layer_types)
            n = len(layers) // p * p
            groups = [LayerGroup(layers[i : i + p]) for i in range(0, n, p)]
            x = run_layers(groups, x, call, remat=True)
            x = run_layers(layers[n:], x, call, remat=True)
        else:
            x = run_layers(layers, x, call, remat=False)
        x = self.model.norm(x)
        logits = x @ emb.T if cfg.tie_word_embeddings else self.lm_head(x)
        return softcap(logits, cfg.final_logit_softcapping)
