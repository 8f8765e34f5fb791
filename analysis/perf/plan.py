"""Device-memory planning from shapes alone: how much a path integral over a checkpoint needs,
in each mode, before any weight is loaded.

Modes (per device, parameters unsharded):

- ``accumulate`` — the engine's default (``riemann.integrate_path``): resident ``W_post``, the
  direction ``ΔW~`` and (for a suite) ``ΔW`` in the parameter dtype, the float32 gradient
  accumulator ``G = Σ w_i ∇L``; per step the point ``W + t·D`` and the gradient (parameter
  dtype), plus activations. Gives ``G``, hence per-module terms and any other direction's score.
- ``forward`` — per-edit forward-mode products ``⟨∇L(W + tD), D⟩ = d/dε L(W + tD + εD)``
  (``jax.jvp``): no gradient and no accumulator; the tangent doubles the activations of a forward
  pass, which is not stored for a backward pass. Gives the value (per batch), not ``G``.

Activations (decoders): with per-layer rematerialisation, the backward pass keeps each layer's
input (``L·B·T·H``) and one layer's internals (q/k/v/o at the attention width ``heads·head_dim``;
two norms, four with Gemma's post-norms; gate/up/activation); logits and their gradient are
float32 (``2·B·T·V·4`` bytes). Attention scores are counted as materialised (``B·heads·T²``, float32),
an upper bound when the backend uses a fused kernel. Estimates are within tens of percent; the
point is which mode fits on which card. The figures are for accelerators; on the CPU, remat is
a scan over stacked layers (see ``analysis.hf.models._common.run_layers``), which adds a stacked copy
of the layer parameters and of their gradient.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from analysis.hf import hub

# riemann.MODES (a test checks they agree): planning from shapes does not import JAX.
MODES = ("accumulate", "forward", "leaves")

GiB = 1024**3
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

PRESETS: dict[str, dict[str, Any]] = {
    "llama-3-8b": {
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
    },
    "mistral-7b-v0.3": {
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
    },
    "qwen2-7b": {
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
    },
    "gemma-2-9b": {
        "model_type": "gemma2",
        "vocab_size": 256000,
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "num_hidden_layers": 42,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "rms_norm_eps": 1e-6,
    },
    "llama-3-70b": {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
    },
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Predicted peak device memory per mode, in bytes, with its parts."""

    family: str
    num_params: int
    dtype: str
    batch: int
    seq_len: int
    remat: bool
    parts: dict[str, dict[str, int]]  # mode -> part -> bytes
    device_memory: int | None

    def total(self, mode: str) -> int:
        return int(sum(self.parts[mode].values()))

    def fits(self, mode: str) -> bool | None:
        return None if self.device_memory is None else self.total(mode) <= self.device_memory

    def recommended(self) -> str | None:
        """The mode to use: ``accumulate`` when it fits (per-module terms and the gradient), else
        ``leaves`` (per-module terms without the accumulator), else ``forward`` when that fits,
        else ``None`` (shard over more devices)."""
        for mode in ("accumulate", "leaves", "forward"):
            if self.fits(mode) in (True, None):
                return mode
        return None

    def table(self) -> str:
        lines = [
            f"{self.family}, {self.num_params / 1e9:.2f} B parameters in {self.dtype}; batch {self.batch} × "
            f"{self.seq_len} tokens; remat {'on' if self.remat else 'off'}"
        ]
        for mode, parts in self.parts.items():
            fit = self.fits(mode)
            verdict = "" if fit is None else (" — fits" if fit else " — does not fit")
            lines.append(f"  {mode}: {self.total(mode) / GiB:.1f} GiB{verdict}")
            lines += [f"    {k:<34}{v / GiB:8.2f} GiB" for k, v in parts.items()]
        if self.device_memory is not None:
            rec = self.recommended()
            lines.append(
                f"  device memory {self.device_memory / GiB:.0f} GiB → "
                + (f"use the {rec} mode" if rec else "neither mode fits one device: shard the parameters")
            )
        return "\n".join(lines)


def _config(source: str | os.PathLike | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(source, dict):
        return source, "config"
    if str(source) in PRESETS:
        return PRESETS[str(source)], str(source)
    p = Path(source)
    if not p.exists() and hub.parse(source) is not None:
        p = hub.resolve(source, weights=False)  # a Hub id: its config.json alone, no weights
    f = p / "config.json" if p.is_dir() else p
    if not f.is_file():
        raise ValueError(
            f"{source}: not a preset ({', '.join(PRESETS)}), a checkpoint directory, a Hub id org/name[@revision] "
            "or a config.json"
        )
    try:
        return json.loads(f.read_text()), str(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None


def _check_sizes(dtype: str, batch: int, seq_len: int) -> None:
    if dtype not in _BYTES:
        raise ValueError(f"dtype {dtype!r}; expected one of {', '.join(_BYTES)}")
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch={batch}, seq_len={seq_len}; both must be positive")


def plan(
    source: str | os.PathLike | dict[str, Any],
    *,
    batch: int = 1,
    seq_len: int = 4096,
    dtype: str = "bfloat16",
    remat: bool = True,
    device_memory_gib: float | None = None,
) -> Plan:
    """Predict device memory for a path integral over the model described by ``source`` (a preset
    name, a checkpoint directory, a Hub id ``org/name[@revision]`` (its ``config.json`` alone is
    fetched), a ``config.json``, or a config dict) from shapes alone."""
    from analysis.hf import checkpoints

    _check_sizes(dtype, batch, seq_len)
    raw, where = _config(source)
    family, cfg, module = checkpoints.build(raw, source=where)  # abstract: shapes only
    n = int(sum(int(np.prod(s.shape)) for s in checkpoints.expected_tensors(module).values()))
    pb = _BYTES[dtype]
    if family == "clip":
        tokens_per_seq = (raw["image_size"] // raw["patch_size"]) ** 2 + 1
        h, inter, layers, heads, vocab = (
            raw["hidden_size"],
            raw["intermediate_size"],
            raw["num_hidden_layers"],
            raw["num_attention_heads"],
            raw.get("projection_dim", 512),
        )
        seq_len = tokens_per_seq
        width, norms = h, 2
    else:
        h, inter, layers, heads, vocab = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.vocab_size,
        )
        # Gemma's attention is wider than its hidden size (heads·head_dim), and it norms each
        # sub-block's output as well as its input.
        width, norms = heads * cfg.head_dim, 4 if family in checkpoints.GEMMAS else 2
    bt = batch * seq_len
    scores = batch * heads * seq_len * seq_len * 4
    layer_internals = bt * (norms * h + 4 * width + 3 * inter) * pb + scores  # norms, q/k/v/o, gate/up/act
    logits = 2 * bt * vocab * 4
    saved_inputs = layers * bt * h * pb
    backward_acts = (saved_inputs + 2 * layer_internals) if remat else layers * layer_internals
    # The suite forms ΔW and ΔW~ exactly, in float32, and stores each leaf in the parameter dtype
    # where that is exact — nearly always for differences of nearby models; a leaf where it is not
    # stays float32 (up to twice this; analysis.study.artefact.compact).
    resident = {"W_post": n * pb, "ΔW (suite)": n * pb, "direction ΔW~": n * pb}
    parts = {
        "accumulate": {
            **resident,
            "accumulator (float32)": n * 4,
            "point W + t·D": n * pb,
            "gradient": n * pb,
            "activations": backward_acts,
            "logits + gradient (float32)": logits,
        },
        "forward": {
            **resident,
            "point W + t·D": n * pb,
            "activations (primal + tangent)": 2 * layer_internals + 2 * bt * h * pb,
            "logits + tangent (float32)": logits,
        },
        # A gradient per node, reduced leaf by leaf at once: per-module terms, no accumulator.
        "leaves": {
            **resident,
            "point W + t·D": n * pb,
            "gradient": n * pb,
            "activations": backward_acts,
            "logits + gradient (float32)": logits,
        },
    }
    mem = None if device_memory_gib is None else int(device_memory_gib * GiB)
    return Plan(
        family=family,
        num_params=n,
        dtype=dtype,
        batch=batch,
        seq_len=seq_len,
        remat=remat,
        parts={m: {k: int(v) for k, v in p.items()} for m, p in parts.items()},
        device_memory=mem,
    )


@dataclasses.dataclass(frozen=True)
class CompiledPlan:
    """XLA's own memory plan for one step of the engine on this process's default backend.

    ``step`` is what the compiled step holds at its peak: its arguments (``W_post``, the direction,
    the float32 accumulator in accumulate mode), its outputs not aliased to an argument, and its
    temporaries; ``total`` adds the suite's resident ``ΔW``, as :class:`Plan` counts it."""

    backend: str
    mode: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    suite_delta_bytes: int
    compile_seconds: float

    @property
    def step(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def total(self) -> int:
        return self.step + self.suite_delta_bytes

    def line(self) -> str:
        return (
            f"  XLA ({self.backend}), {self.mode} step: {self.total / GiB:.1f} GiB = arguments "
            f"{self.argument_bytes / GiB:.2f} + temporaries {self.temp_bytes / GiB:.2f} + unaliased outputs "
            f"{(self.output_bytes - self.alias_bytes) / GiB:.2f} + ΔW (suite) {self.suite_delta_bytes / GiB:.2f} GiB "
            f"(compiled in {self.compile_seconds:.0f} s)"
        )


def compiled(
    source: str | os.PathLike | dict[str, Any],
    *,
    mode: str = "accumulate",
    batch: int = 1,
    seq_len: int = 4096,
    dtype: str = "bfloat16",
    remat: bool = True,
) -> CompiledPlan:
    """Compile the engine's own path-integral step for ``source`` from abstract shapes (no weights
    exist, nothing is allocated) and read XLA's memory plan for it on the default backend — the
    exact figure for this card and software, where :func:`plan` is a backend-free estimate.

    Decoders get the causal-LM loss over ``batch × seq_len`` tokens; CLIP vision models the mean
    squared image embedding (the same activations as any loss on the embedding, without a head).
    The backend matters: XLA's CPU backend plans a scan over stacked layers for remat (see
    ``analysis.hf.models._common.run_layers``), accelerators a checkpoint per layer.
    """
    import time

    import jax
    import jax.numpy as jnp
    from flax import nnx

    import riemann
    from analysis.hf import checkpoints
    from analysis.pairs import data

    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected one of {', '.join(MODES)}")
    _check_sizes(dtype, batch, seq_len)
    raw, where = _config(source)
    family, cfg, module = checkpoints.build(raw, source=where, dtype=jnp.dtype(dtype), remat=remat)
    graphdef, state = nnx.split(module)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
    model = checkpoints.Checkpoint(None, family, cfg, raw, params, graphdef, state)
    if family == "clip":
        size = int(raw.get("image_size", 224))
        batch_spec: Any = {"pixel_values": jax.ShapeDtypeStruct((batch, 3, size, size), jnp.float32)}

        def loss_fn(p: Any, b: dict[str, Any]) -> jax.Array:
            return jnp.mean(jnp.square(model.forward(p, b["pixel_values"]).astype(jnp.float32)))
    else:
        batch_spec = {
            "input_ids": jax.ShapeDtypeStruct((batch, seq_len), jnp.int32),
            "loss_mask": jax.ShapeDtypeStruct((batch, seq_len), jnp.float32),
        }
        loss_fn = data.causal_lm_loss(model.forward)
    t0 = time.perf_counter()
    lowered = riemann.lower_path_step(loss_fn, params, batch_spec, mode=mode)
    ma = lowered.compile().memory_analysis()
    n_bytes = sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
    return CompiledPlan(
        backend=jax.default_backend(),
        mode=mode,
        argument_bytes=int(ma.argument_size_in_bytes),
        output_bytes=int(ma.output_size_in_bytes),
        alias_bytes=int(ma.alias_size_in_bytes),
        temp_bytes=int(ma.temp_size_in_bytes),
        suite_delta_bytes=n_bytes,
        compile_seconds=time.perf_counter() - t0,
    )
