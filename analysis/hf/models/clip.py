"""The CLIP vision tower with its projection (``CLIPVisionModelWithProjection``), in Flax NNX,
plus an optional linear classification head on the image embeddings (as task-arithmetic
fine-tunes of ViT-B/32 use).

Parameter paths spell the HF names (``vision_model.encoder.layers.0.self_attn.q_proj.weight``,
``visual_projection.weight``); the patch embedding keeps HF's Conv2d layout
``(hidden, channels, patch, patch)``. Computation follows ``transformers``' ``CLIPVisionModel``:
CLS token + patch embeddings + learned positions, ``pre_layrnorm`` (HF's spelling), pre-norm
encoder layers with scaled dot-product attention, ``post_layernorm`` on the CLS token, projection.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from analysis.hf.models._common import ConfigError, LayerNorm, Linear, get_dtype, run_layers

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    projection_dim: int
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    num_labels: int | None = None  # classification head on image embeddings when set
    torch_dtype: str = "float32"
    model_type: str = "clip_vision_model"

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], *, source: str = "config.json") -> CLIPVisionConfig:
        mt = cfg.get("model_type")
        if mt == "clip":  # a full CLIPModel checkpoint: the vision tower's settings are nested
            vision = dict(cfg.get("vision_config") or {})
            vision.setdefault("projection_dim", cfg.get("projection_dim", 512))
            vision.setdefault("dtype", cfg.get("dtype") or cfg.get("torch_dtype"))
            vision["model_type"] = "clip_vision_model"
            return cls.from_dict(vision, source=source)
        if mt != "clip_vision_model":
            raise ConfigError(f"{source}: model_type {mt!r} is not a CLIP vision model")
        act = cfg.get("hidden_act", "quick_gelu")
        if act not in ACTIVATIONS:
            raise ConfigError(f"{source}: hidden_act={act!r} is not supported ({', '.join(ACTIVATIONS)})")
        labels = cfg.get("riemann_num_labels")
        return cls(
            hidden_size=int(cfg.get("hidden_size", 768)),
            intermediate_size=int(cfg.get("intermediate_size", 3072)),
            num_hidden_layers=int(cfg.get("num_hidden_layers", 12)),
            num_attention_heads=int(cfg.get("num_attention_heads", 12)),
            image_size=int(cfg.get("image_size", 224)),
            patch_size=int(cfg.get("patch_size", 32)),
            projection_dim=int(cfg.get("projection_dim", 512)),
            num_channels=int(cfg.get("num_channels", 3)),
            hidden_act=act,
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
            num_labels=int(labels) if labels else None,
            torch_dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"),
        )

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


class PatchEmbedding(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, dtype: Any, rngs: nnx.Rngs):
        p, c, e = cfg.patch_size, cfg.num_channels, cfg.hidden_size
        self.weight = nnx.Param((0.02 * jax.random.normal(rngs.params(), (e, c, p, p))).astype(dtype))
        self.patch = p

    def __call__(self, pixels: jax.Array) -> jax.Array:
        # A stride-p, p×p convolution without padding is a matmul over non-overlapping patches.
        b, c, h, w = pixels.shape
        p = self.patch
        x = (
            pixels.reshape(b, c, h // p, p, w // p, p)
            .transpose(0, 2, 4, 1, 3, 5)
            .reshape(b, (h // p) * (w // p), c * p * p)
        )
        kernel = self.weight[...].reshape(self.weight.shape[0], -1)
        return x @ kernel.T


class Embeddings(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, dtype: Any, rngs: nnx.Rngs):
        self.class_embedding = nnx.Param((0.02 * jax.random.normal(rngs.params(), (cfg.hidden_size,))).astype(dtype))
        self.patch_embedding = PatchEmbedding(cfg, dtype=dtype, rngs=rngs)
        self.position_embedding = _Table(cfg.num_positions, cfg.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        patches = self.patch_embedding(pixels.astype(self.class_embedding.dtype))
        b = patches.shape[0]
        cls = jnp.broadcast_to(self.class_embedding[...][None, None], (b, 1, patches.shape[-1]))
        x = jnp.concatenate([cls, patches], axis=1)
        return x + self.position_embedding.weight[...][None]


class _Table(nnx.Module):
    def __init__(self, n: int, dim: int, *, dtype: Any, rngs: nnx.Rngs):
        self.weight = nnx.Param((0.02 * jax.random.normal(rngs.params(), (n, dim))).astype(dtype))


class Attention(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, dtype: Any, rngs: nnx.Rngs):
        e = cfg.hidden_size
        self.k_proj = Linear(e, e, bias=True, dtype=dtype, std=0.02, rngs=rngs)
        self.v_proj = Linear(e, e, bias=True, dtype=dtype, std=0.02, rngs=rngs)
        self.q_proj = Linear(e, e, bias=True, dtype=dtype, std=0.02, rngs=rngs)
        self.out_proj = Linear(e, e, bias=True, dtype=dtype, std=0.02, rngs=rngs)
        self.heads = cfg.num_attention_heads

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, e = x.shape
        d = e // self.heads
        q = self.q_proj(x).reshape(b, t, self.heads, d)
        k = self.k_proj(x).reshape(b, t, self.heads, d)
        v = self.v_proj(x).reshape(b, t, self.heads, d)
        with jax.numpy_dtype_promotion("standard"):  # see analysis.hf.models.llama.Attention
            out = jax.nn.dot_product_attention(q, k, v)
        return self.out_proj(out.reshape(b, t, e))


class MLP(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, dtype: Any, rngs: nnx.Rngs):
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size, bias=True, dtype=dtype, std=0.02, rngs=rngs)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size, bias=True, dtype=dtype, std=0.02, rngs=rngs)
        self.act = cfg.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


class EncoderLayer(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, dtype: Any, rngs: nnx.Rngs):
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.layer_norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, dtype: Any, rngs: nnx.Rngs):
        self.layers = nnx.List([EncoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])


class VisionTransformer(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, dtype: Any, rngs: nnx.Rngs):
        self.embeddings = Embeddings(cfg, dtype=dtype, rngs=rngs)
        self.pre_layrnorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)
        self.encoder = Encoder(cfg, dtype=dtype, rngs=rngs)
        self.post_layernorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)


class CLIPVisionModelWithProjection(nnx.Module):
    """``model(pixel_values)`` → image embeddings [batch, projection_dim] from pixels [batch, 3, H, W];
    ``model.classify(pixel_values)`` → logits of the classification head, when it has one."""

    def __init__(self, cfg: CLIPVisionConfig, *, dtype: Any = None, rngs: nnx.Rngs | None = None, remat: bool = False):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        dtype = get_dtype(dtype or cfg.torch_dtype)
        self.config = cfg
        self.vision_model = VisionTransformer(cfg, dtype=dtype, rngs=rngs)
        self.visual_projection = Linear(
            cfg.hidden_size, cfg.projection_dim, bias=False, dtype=dtype, std=0.02, rngs=rngs
        )
        if cfg.num_labels:
            self.classifier = Linear(cfg.projection_dim, cfg.num_labels, bias=True, dtype=dtype, std=0.02, rngs=rngs)
        self.remat = remat

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixel_values))
        x = run_layers(vm.encoder.layers, x, lambda lyr, h: lyr(h), remat=self.remat)
        return self.visual_projection(vm.post_layernorm(x[:, 0]))

    def classify(self, pixel_values: jax.Array) -> jax.Array:
        if not self.config.num_labels:
            raise ConfigError("this CLIP vision model has no classification head (riemann_num_labels unset)")
        return self.classifier(self(pixel_values))
