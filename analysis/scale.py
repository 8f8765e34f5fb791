"""An 8B-scale run on one accelerator: a Llama-3-8B-shaped pre/post pair with random weights in
bfloat16, the paper's path integral (left rule, C = 5) over a few thousand tokens, and a 20-edit
suite — printing tokens/s, achieved TFLOP/s against the chip's bfloat16 peak, and peak device
memory. The mode (float32 gradient accumulator, or forward-mode products when the accumulator
does not fit) is chosen by ``analysis.plan`` from the device's memory.

    PYTHONPATH=. python -m analysis.scale                 # on a GPU (H100 / H200)
    PYTHONPATH=. python -m analysis.scale --tiny          # a small config, any device (CI runs this)

FLOPs are counted as ``6 · N · tokens`` per gradient step (``2 · N · tokens`` forward,
``4 · N · tokens`` backward; attention's ``T²`` terms and the remat forward are not counted,
so the figure is the conventional "model FLOPs utilisation"); a forward-mode (jvp) step is
counted as ``4 · N · tokens``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

# Dense bfloat16 peak (no sparsity) by device kind, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "GH200": 989.0, "B200": 2250.0}

SUITE = ([f"dare:p={p}" for p in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)] + [f"dare:p={p},k=-0.5" for p in (0.3, 0.7)]
         + ["dare:p=0.5,k=0.5", "dare:p=0.9,rescale=false", "biased_sign:k=1.5", "magnitude:keep=0.3",
            "magnitude:keep=0.7", "bitdelta", "bitdelta:multiple=2", "expo:alpha=-0.5", "expo:alpha=-0.2",
            "expo:alpha=0.2", "expo:alpha=0.5", "expo:alpha=1"])

TINY = {"model_type": "llama", "vocab_size": 1024, "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 1024, "tie_word_embeddings": False}


def _peak(kind: str) -> float | None:
    for name, tf in PEAK_BF16_TFLOPS.items():
        if name.lower() in kind.lower():
            return tf
    return None


def run(*, tiny: bool = False, tokens: int = 4096, batch: int = 1, mode: str | None = None, edits_limit: int = 20,
        seed: int = 0) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import riemann
    from analysis import checkpoints, data, plan
    from riemann import edits

    raw = TINY if tiny else plan.PRESETS["llama-3-8b"]
    seq = (tokens // batch) if not tiny else min(tokens // batch, 128)
    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    limit = stats.get("bytes_limit")
    p = plan.plan(raw, batch=batch, seq_len=seq, dtype="bfloat16", device_memory_gib=limit / 2**30 if limit else None)
    chosen = mode or {"accumulator": "accumulate"}.get(p.recommended() or "forward", "forward")

    t0 = time.perf_counter()
    model = checkpoints.from_config(raw, seed=seed, dtype=jnp.bfloat16, remat=True)
    n_params = int(sum(x.size for x in jax.tree.leaves(model.params)))
    keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(model.params))))
    # post = pre + a small random delta; the pre-trained weights are dropped once ΔW exists
    # (W_edit = W_post + ΔW~ needs W_post and ΔW only).
    delta = jax.tree.map(lambda x: (1e-3 * jax.random.normal(next(keys), x.shape, jnp.float32)).astype(x.dtype), model.params)
    post = jax.jit(lambda a, d: jax.tree.map(lambda x, y: x + y, a, d), donate_argnums=0)(model.params, delta)
    model.params = None  # donated into `post`; only the graph and abstract state are used from here on
    build_s = time.perf_counter() - t0

    rng = np.random.default_rng(seed)
    ids = rng.integers(3, raw["vocab_size"], (batch, seq)).astype(np.int32)
    batches = [{"input_ids": ids, "loss_mask": np.ones((batch, seq), np.float32)}]
    loss_fn = data.causal_lm_loss(model.forward)
    change = jax.tree.map(lambda d: (-0.5 * d.astype(jnp.float32)).astype(d.dtype), delta)  # interpolation halfway

    def integral() -> float:
        return riemann.integrate_path(loss_fn, post, change, batches, rule="left", n=5, mode=chosen).value

    t = time.perf_counter()
    integral()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    value = integral()
    step_s = (time.perf_counter() - t) / 5
    flops_per_step = (6 if chosen == "accumulate" else 4) * n_params * batch * seq
    achieved = flops_per_step / step_s / 1e12
    peak = _peak(dev.device_kind)

    suite_rows = []
    t_suite = time.perf_counter()
    for spec in SUITE[:edits_limit]:
        e = edits.parse(spec)
        edited = e(delta, key=jax.random.fold_in(jax.random.key(seed), len(suite_rows)) if e.random else None)
        ch = jax.tree.map(lambda a, b: (a.astype(jnp.float32) - b.astype(jnp.float32)).astype(b.dtype), edited, delta)
        del edited
        term = riemann.integrate_path(loss_fn, post, ch, batches, rule="left", n=5, mode=chosen).value
        measured = riemann.estimate(loss_fn, post, ch, batches, method="measured").value
        suite_rows.append({"edit": spec, "term": term, "measured": measured})
        del ch
    suite_s = time.perf_counter() - t_suite
    stats = dev.memory_stats() or {}
    return {
        "device": f"{dev.platform} {dev.device_kind}", "jax": jax.__version__, "model": "tiny" if tiny else "llama-3-8b",
        "params": n_params, "dtype": "bfloat16", "tokens_per_step": batch * seq, "mode": chosen,
        "planned_gib": {m: p.total(m) / 2**30 for m in p.parts}, "build_s": build_s, "compile_s": compile_s,
        "step_s": step_s, "tokens_per_s": batch * seq / step_s, "achieved_tflops": achieved,
        "peak_bf16_tflops": peak, "fraction_of_peak": achieved / peak if peak else None,
        "peak_device_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30 if stats else None,
        "device_memory_gib": stats.get("bytes_limit", 0) / 2**30 if stats else None,
        "path_integral_value": value, "suite_edits": len(suite_rows), "suite_s": suite_s, "suite": suite_rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a small Llama config (any device; for tests)")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per step (default 4096)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    ap.add_argument("--mode", choices=["accumulate", "forward"], help="override the planned mode")
    ap.add_argument("--edits", type=int, default=20, help="edits in the suite (default 20)")
    args = ap.parse_args(argv)
    mode = args.mode
    res = run(tiny=args.tiny, tokens=args.tokens, batch=args.batch, mode=mode, edits_limit=args.edits)
    json.dump(res, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
