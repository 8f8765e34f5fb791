"""An 8B-scale run on one accelerator: a Llama-3-8B-shaped pre/post pair with random weights in
bfloat16, the paper's path integral (left rule, C = 5) over a few thousand tokens, and a 20-edit
suite — printing tokens/s, achieved TFLOP/s against the chip's bfloat16 peak, and peak device
memory. The mode (float32 gradient accumulator, or forward-mode products when the accumulator
does not fit) is chosen by ``analysis.plan`` from the device's memory; the other mode is timed
too when it fits.

    PYTHONPATH=. python -m analysis.scale --json scale.json   # on a GPU (H100 / H200)
    PYTHONPATH=. python -m analysis.scale --tiny              # a small config, any device (CI runs this)

FLOPs are model FLOPs (the "MFU" convention): per token, a forward pass costs ``2·N + 2·L·T·d``
(``N`` the parameters of every matrix product, the input embedding's lookup excluded; the second
term is causal attention's ``QKᵀ`` and ``AV``) and a gradient step or a forward-mode (jvp) step
three times that. The remat forward is work the hardware does but is not counted. A path
integral with ``n`` nodes is ``n`` steps plus two forward passes (``L`` at both ends, for the
completeness gap), all counted. The bfloat16 ceiling is the data sheet's dense peak; the script
also times one large bfloat16 matrix product on the card, the practical ceiling.

Unless ``XLA_PYTHON_CLIENT_MEM_FRACTION`` is set, the script lets JAX's allocator take 95 % of
the card (JAX's default 75 % leaves the accumulator mode 35 GiB short on a 141 GiB H200).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
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

_MODES = {"accumulator": "accumulate", "forward": "forward"}  # plan's names -> integrate_path's


def _peak(kind: str) -> float | None:
    for name, tf in PEAK_BF16_TFLOPS.items():
        if name.lower() in kind.lower():
            return tf
    return None


def forward_flops(raw: dict[str, Any], matmul_params: int, tokens: int, seq: int) -> float:
    """Model FLOPs of one forward pass over ``tokens`` tokens in sequences of ``seq``:
    ``tokens · (2·N + 2·L·seq·d)`` (causal attention counted at half the full ``4·L·seq·d``)."""
    layers, width = int(raw["num_hidden_layers"]), int(raw["hidden_size"])
    return float(tokens) * (2.0 * matmul_params + 2.0 * layers * seq * width)


def matmul_tflops(size: int, reps: int = 10) -> float:
    """Achieved TFLOP/s of one ``size × size × size`` bfloat16 matrix product (random operands,
    median of ``reps`` after a warm-up): the card's practical ceiling for the figures above."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (size, size), jnp.bfloat16)
    b = jax.random.normal(kb, (size, size), jnp.bfloat16)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        mm(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * size**3 / float(np.median(times)) / 1e12


def _peak_gib(dev: Any) -> float | None:
    stats = dev.memory_stats()
    return stats["peak_bytes_in_use"] / 2**30 if stats and "peak_bytes_in_use" in stats else None


def run(*, tiny: bool = False, tokens: int = 4096, batch: int = 1, mode: str | None = None, edits_limit: int = 20,
        seed: int = 0, layers: int | None = None, other_mode: bool = True, xla_plan: bool = True,
        on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Build the pair, time the path integral in the planned mode (and the other when it fits and
    ``other_mode``), score ``edits_limit`` edits, and (``xla_plan``) compile each mode's step from
    shapes for XLA's own memory plan (:func:`analysis.plan.compiled`); ``on_update(result)`` is called after each phase
    so a caller can save partial figures. ``layers`` overrides the number of decoder layers (a
    quick look at a big model's per-layer cost)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import riemann
    from analysis import checkpoints, data, plan
    from riemann import edits

    def say(msg: str) -> None:
        print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def update() -> None:
        if on_update is not None:
            on_update(res)

    raw = dict(TINY if tiny else plan.PRESETS["llama-3-8b"])
    if layers is not None:
        raw["num_hidden_layers"] = layers
    seq = (tokens // batch) if not tiny else min(tokens // batch, 128)
    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    limit = stats.get("bytes_limit")
    p = plan.plan(raw, batch=batch, seq_len=seq, dtype="bfloat16", device_memory_gib=limit / 2**30 if limit else None)
    chosen = mode or _MODES.get(p.recommended() or "forward", "forward")
    peak = _peak(dev.device_kind)
    res: dict[str, Any] = {
        "device": f"{dev.platform} {dev.device_kind}", "jax": jax.__version__, "model": "tiny" if tiny else "llama-3-8b",
        "layers": int(raw["num_hidden_layers"]), "dtype": "bfloat16", "tokens_per_step": batch * seq, "mode": chosen,
        "planned_gib": {_MODES[m]: p.total(m) / 2**30 for m in p.parts},
        "device_memory_gib": limit / 2**30 if limit else None, "peak_bf16_tflops": peak,
    }
    say(f"{res['device']}, jax {jax.__version__}; device memory {res['device_memory_gib']} GiB; planned "
        + ", ".join(f"{m} {g:.1f} GiB" for m, g in res["planned_gib"].items()) + f"; mode {chosen}")
    if dev.platform == "gpu":
        res["matmul_tflops"] = matmul_tflops(8192)
        say(f"bf16 8192³ matrix product: {res['matmul_tflops']:.0f} TFLOP/s")
    update()

    t0 = time.perf_counter()
    model = checkpoints.from_config(raw, seed=seed, dtype=jnp.bfloat16, remat=True)
    n_params = int(sum(x.size for x in jax.tree.leaves(model.params)))
    embed = int(np.prod(model.params["model"]["embed_tokens"]["weight"].shape))
    keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(model.params))))
    # post = pre + a small random delta; the pre-trained weights are dropped once ΔW exists
    # (W_edit = W_post + ΔW~ needs W_post and ΔW only).
    delta = jax.tree.map(lambda x: (1e-3 * jax.random.normal(next(keys), x.shape, jnp.float32)).astype(x.dtype), model.params)
    post = jax.jit(lambda a, d: jax.tree.map(lambda x, y: x + y, a, d), donate_argnums=0)(model.params, delta)
    jax.block_until_ready(post)
    model.params = None  # donated into `post`; only the graph and abstract state are used from here on
    res.update(params=n_params, matmul_params=n_params - embed, build_s=time.perf_counter() - t0)
    say(f"built {n_params / 1e9:.2f} B parameters in {res['build_s']:.0f} s")
    update()

    rng = np.random.default_rng(seed)
    ids = rng.integers(3, raw["vocab_size"], (batch, seq)).astype(np.int32)
    batches = [{"input_ids": ids, "loss_mask": np.ones((batch, seq), np.float32)}]
    loss_fn = data.causal_lm_loss(model.forward)
    fwd = forward_flops(raw, n_params - embed, batch * seq, seq)
    nodes = 5

    def time_integral(m: str) -> dict[str, Any]:
        change = jax.tree.map(lambda d: (-0.5 * d.astype(jnp.float32)).astype(d.dtype), delta)  # halfway back to pre
        t = time.perf_counter()
        riemann.integrate_path(loss_fn, post, change, batches, rule="left", n=nodes, mode=m)
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        value = riemann.integrate_path(loss_fn, post, change, batches, rule="left", n=nodes, mode=m).value
        total = time.perf_counter() - t
        achieved = (3 * nodes + 2) * fwd / total / 1e12
        return {"compile_s": compile_s, "integral_s": total, "step_s": total / nodes,
                "tokens_per_s": nodes * batch * seq / total, "achieved_tflops": achieved,
                "fraction_of_peak": achieved / peak if peak else None,
                "fraction_of_matmul": achieved / res["matmul_tflops"] if "matmul_tflops" in res else None,
                "path_integral_value": value, "peak_device_memory_gib": _peak_gib(dev)}

    res["modes"] = {}
    try:
        first = time_integral(chosen)
    except jax.errors.JaxRuntimeError as err:  # out of memory, mostly: the plan is an estimate
        if mode is not None or chosen == "forward":
            raise
        say(f"{chosen} failed ({str(err).splitlines()[0][:200]}); falling back to forward mode")
        res["modes"][chosen] = {"error": str(err)[:2000]}
        chosen = res["mode"] = "forward"
        first = time_integral(chosen)
    res.update({k: first[k] for k in ("compile_s", "step_s", "tokens_per_s", "achieved_tflops", "fraction_of_peak",
                                      "path_integral_value")})
    res["modes"][chosen] = first
    say(f"{chosen}: {first['integral_s']:.2f} s per integral ({nodes} steps + 2 forwards), "
        f"{first['tokens_per_s']:.0f} tokens/s, {first['achieved_tflops']:.0f} TFLOP/s"
        + (f" = {first['fraction_of_peak']:.0%} of {peak:.0f}" if peak else "")
        + f"; compile {first['compile_s']:.0f} s; peak memory {first['peak_device_memory_gib']} GiB")
    update()

    suite_rows: list[dict[str, Any]] = []
    res.update(suite=suite_rows, suite_edits=0)
    t_suite = time.perf_counter()
    for spec in SUITE[:edits_limit]:
        e = edits.parse(spec)
        edited = e(delta, key=jax.random.fold_in(jax.random.key(seed), len(suite_rows)) if e.random else None)
        ch = jax.tree.map(lambda a, b: (a.astype(jnp.float32) - b.astype(jnp.float32)).astype(b.dtype), edited, delta)
        del edited
        t = time.perf_counter()
        term = riemann.integrate_path(loss_fn, post, ch, batches, rule="left", n=nodes, mode=chosen).value
        measured = riemann.estimate(loss_fn, post, ch, batches, method="measured").value
        suite_rows.append({"edit": spec, "term": term, "measured": measured, "seconds": time.perf_counter() - t})
        del ch
        res.update(suite_edits=len(suite_rows), suite_s=time.perf_counter() - t_suite,
                   peak_device_memory_gib=_peak_gib(dev))
        say(f"edit {len(suite_rows)}/{min(edits_limit, len(SUITE))} {spec}: term {term:+.4g}, measured {measured:+.4g}")
        update()
    res["suite_s"] = time.perf_counter() - t_suite
    res["peak_device_memory_gib"] = _peak_gib(dev)
    update()

    other = "forward" if chosen == "accumulate" else "accumulate"
    fits = p.fits({v: k for k, v in _MODES.items()}[other])
    if other_mode and fits is not False and mode is None and other not in res["modes"]:
        res["modes"][other] = time_integral(other)
        o = res["modes"][other]
        say(f"{other}: {o['integral_s']:.2f} s per integral, {o['tokens_per_s']:.0f} tokens/s, "
            f"{o['achieved_tflops']:.0f} TFLOP/s; compile {o['compile_s']:.0f} s")
        update()
    if xla_plan:  # last, so that it can only cost time: XLA's own plan next to the analytic one and the peak
        res["xla_plan_gib"] = {}
        for m in ("accumulator", "forward"):
            c = plan.compiled(raw, mode=m, batch=batch, seq_len=seq, dtype="bfloat16", remat=True)
            res["xla_plan_gib"][_MODES[m]] = c.total / 2**30
        say("XLA's plan: " + ", ".join(f"{m} {g:.1f} GiB" for m, g in res["xla_plan_gib"].items()))
        update()
    return res


def _write_atomic(path: str, obj: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a small Llama config (any device; for tests)")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per step (default 4096)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    ap.add_argument("--mode", choices=["accumulate", "forward"], help="override the planned mode (and time only it)")
    ap.add_argument("--edits", type=int, default=20, help="edits in the suite (default 20)")
    ap.add_argument("--layers", type=int, help="decoder layers (default: the model's 32)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures here, rewritten atomically after each phase")
    args = ap.parse_args(argv)
    for name, v in (("--tokens", args.tokens), ("--batch", args.batch), ("--layers", args.layers or 1)):
        if v < 1:
            ap.error(f"{name} must be ≥ 1, got {v}")
    if args.tokens % args.batch:
        ap.error(f"--tokens ({args.tokens}) must be a multiple of --batch ({args.batch})")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # before JAX starts its allocator
    save = (lambda r: _write_atomic(args.json, r)) if args.json else None
    res = run(tiny=args.tiny, tokens=args.tokens, batch=args.batch, mode=args.mode, edits_limit=args.edits,
              layers=args.layers, on_update=save)
    json.dump(res, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
