"""An 8B-scale run on one accelerator: a Llama-3-8B-shaped pre/post pair with random weights in
bfloat16, the paper's path integral (left rule, C = 5) over a few thousand tokens, and a 20-edit
suite — printing tokens/s, achieved TFLOP/s against the chip's bfloat16 peak, and peak device
memory. The mode (float32 gradient accumulator, or forward-mode products when the accumulator
does not fit) is chosen by ``analysis.perf.plan`` from the device's memory; the other mode is timed
too when it fits.

    PYTHONPATH=. python -m analysis.perf.scale --json scale.json   # on a GPU (H100 / H200)
    PYTHONPATH=. python -m analysis.perf.scale --tiny              # a small config, any device (CI runs this)

FLOPs are model FLOPs (the "MFU" convention): per token, a forward pass costs ``2·N + 2·L·T·d``
(``N`` the parameters of every matrix product, the input embedding's lookup excluded; the second
term is causal attention's ``QKᵀ`` and ``AV``) and a gradient step or a forward-mode (jvp) step
three times that. The remat forward is work the hardware does but is not counted. A path
integral with ``n`` nodes is ``n`` steps plus two forward passes (``L`` at both ends, for the
completeness gap), all counted. The bfloat16 ceiling is the data sheet's dense peak; the script
also times one large bfloat16 matrix product on the card, the practical ceiling.

Unless ``XLA_PYTHON_CLIENT_MEM_FRACTION`` is set, the script lets JAX's allocator take 95 % of
the card (JAX's default 75 % can leave the accumulator mode short of memory that the card has).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import riemann
from analysis import files
from analysis.hf import checkpoints
from analysis.pairs import data
from analysis.perf import plan
from riemann import edits

# Dense bfloat16 peak (no sparsity) by device kind, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "GH200": 989.0, "B200": 2250.0}

SUITE = (
    [f"dare:p={p}" for p in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)]
    + [f"dare:p={p},k=-0.5" for p in (0.3, 0.7)]
    + [
        "dare:p=0.5,k=0.5",
        "dare:p=0.9,rescale=false",
        "biased_sign:k=1.5",
        "magnitude:keep=0.3",
        "magnitude:keep=0.7",
        "bitdelta",
        "bitdelta:multiple=2",
        "expo:alpha=-0.5",
        "expo:alpha=-0.2",
        "expo:alpha=0.2",
        "expo:alpha=0.5",
        "expo:alpha=1",
    ]
)

TINY = {
    "model_type": "llama",
    "vocab_size": 1024,
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}


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


@dataclasses.dataclass
class _Scale:
    """What the phases of :func:`run` share: the figures so far (``res``) and the pair."""

    res: dict[str, Any]
    on_update: Callable[[dict[str, Any]], None] | None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch: int = 1
    seq: int = 0
    seed: int = 0
    dev: Any = None
    plan: Any = None
    post: Any = None
    delta: Any = None
    loss_fn: Any = None
    batches: list[Any] = dataclasses.field(default_factory=list)
    forward_flops: float = 0.0
    nodes: int = 5

    def say(self, msg: str) -> None:
        print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def update(self, **figures: Any) -> None:
        self.res.update(figures)
        if self.on_update is not None:
            self.on_update(self.res)


def run(
    *,
    tiny: bool = False,
    tokens: int = 4096,
    batch: int = 1,
    mode: str | None = None,
    edits_limit: int = 20,
    seed: int = 0,
    layers: int | None = None,
    other_mode: bool = True,
    xla_plan: bool = True,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build the pair, time the path integral in the planned mode (and the other when it fits and
    ``other_mode``), score ``edits_limit`` edits, and (``xla_plan``) compile each mode's step from
    shapes for XLA's own memory plan (:func:`analysis.perf.plan.compiled`); ``on_update(result)``
    is called after each phase so a caller can save partial figures. ``layers`` overrides the
    number of decoder layers (a quick look at a big model's per-layer cost)."""
    raw = dict(TINY if tiny else plan.PRESETS["llama-3-8b"])
    if layers is not None:
        raw["num_hidden_layers"] = layers
    seq = (tokens // batch) if not tiny else min(tokens // batch, 128)
    sc = _Scale(res={}, on_update=on_update, raw=raw, batch=batch, seq=seq, seed=seed)
    _device(sc, tiny, mode)
    _build(sc)
    _integral(sc, explicit=mode is not None)
    _suite(sc, edits_limit)
    if other_mode and mode is None:
        _other_mode(sc)
    if xla_plan:  # last, so that it can only cost time: XLA's own plan next to the analytic one and the peak
        _xla_plan(sc)
    return sc.res


def _device(sc: _Scale, tiny: bool, mode: str | None) -> None:
    """The device, the memory plan and the mode it picks, and (on a GPU) the matmul ceiling."""
    import jax

    sc.dev = jax.devices()[0]
    limit = (sc.dev.memory_stats() or {}).get("bytes_limit")
    sc.plan = plan.plan(
        sc.raw, batch=sc.batch, seq_len=sc.seq, dtype="bfloat16", device_memory_gib=limit / 2**30 if limit else None
    )
    chosen = mode or sc.plan.recommended() or "forward"
    peak = _peak(sc.dev.device_kind)
    sc.res.update(
        {
            "device": f"{sc.dev.platform} {sc.dev.device_kind}",
            "jax": jax.__version__,
            "model": "tiny" if tiny else "llama-3-8b",
            "layers": int(sc.raw["num_hidden_layers"]),
            "dtype": "bfloat16",
            "tokens_per_step": sc.batch * sc.seq,
            "mode": chosen,
            "planned_gib": {m: sc.plan.total(m) / 2**30 for m in sc.plan.parts},
            "device_memory_gib": limit / 2**30 if limit else None,
            "peak_bf16_tflops": peak,
        }
    )
    sc.say(
        f"{sc.res['device']}, jax {jax.__version__}; device memory {sc.res['device_memory_gib']} GiB; planned "
        + ", ".join(f"{m} {g:.1f} GiB" for m, g in sc.res["planned_gib"].items())
        + f"; mode {chosen}"
    )
    if sc.dev.platform == "gpu":
        sc.res["matmul_tflops"] = matmul_tflops(8192)
        sc.say(f"bf16 8192³ matrix product: {sc.res['matmul_tflops']:.0f} TFLOP/s")
    sc.update()


def _build(sc: _Scale) -> None:
    """A random bfloat16 model as ``pre`` and ``post = pre + ΔW`` (small random ``ΔW``), one batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    t0 = time.perf_counter()
    model = checkpoints.from_config(sc.raw, seed=sc.seed, dtype=jnp.bfloat16, remat=True)
    n_params = int(sum(x.size for x in jax.tree.leaves(model.params)))
    embed = int(np.prod(model.params["model"]["embed_tokens"]["weight"].shape))
    keys = iter(jax.random.split(jax.random.key(sc.seed + 1), len(jax.tree.leaves(model.params))))
    # The pre-trained weights are dropped once ΔW exists: W_edit = W_post + ΔW~ needs W_post and ΔW only.
    sc.delta = jax.tree.map(
        lambda x: (1e-3 * jax.random.normal(next(keys), x.shape, jnp.float32)).astype(x.dtype), model.params
    )
    sc.post = jax.jit(lambda a, d: jax.tree.map(lambda x, y: x + y, a, d), donate_argnums=0)(model.params, sc.delta)
    jax.block_until_ready(sc.post)
    model.params = None  # donated into `post`; only the graph and abstract state are used from here on
    ids = np.random.default_rng(sc.seed).integers(3, sc.raw["vocab_size"], (sc.batch, sc.seq)).astype(np.int32)
    sc.batches = [{"input_ids": ids, "loss_mask": np.ones((sc.batch, sc.seq), np.float32)}]
    sc.loss_fn = data.causal_lm_loss(model.forward)
    sc.forward_flops = forward_flops(sc.raw, n_params - embed, sc.batch * sc.seq, sc.seq)
    sc.say(f"built {n_params / 1e9:.2f} B parameters in {time.perf_counter() - t0:.0f} s")
    sc.update(params=n_params, matmul_params=n_params - embed, build_s=time.perf_counter() - t0)


def _time_integral(sc: _Scale, mode: str) -> dict[str, Any]:
    """One path integral (halfway back to ``pre``) in ``mode``: compile, then time a second call."""
    import jax
    import jax.numpy as jnp

    change = jax.tree.map(lambda d: (-0.5 * d.astype(jnp.float32)).astype(d.dtype), sc.delta)
    t = time.perf_counter()
    riemann.integrate_path(sc.loss_fn, sc.post, change, sc.batches, rule="left", n=sc.nodes, mode=mode)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    value = riemann.integrate_path(sc.loss_fn, sc.post, change, sc.batches, rule="left", n=sc.nodes, mode=mode).value
    total = time.perf_counter() - t
    achieved = (3 * sc.nodes + 2) * sc.forward_flops / total / 1e12
    peak = sc.res["peak_bf16_tflops"]
    return {
        "compile_s": compile_s,
        "integral_s": total,
        "step_s": total / sc.nodes,
        "tokens_per_s": sc.nodes * sc.batch * sc.seq / total,
        "achieved_tflops": achieved,
        "fraction_of_peak": achieved / peak if peak else None,
        "fraction_of_matmul": achieved / sc.res["matmul_tflops"] if "matmul_tflops" in sc.res else None,
        "path_integral_value": value,
        "peak_device_memory_gib": _peak_gib(sc.dev),
    }


def _integral(sc: _Scale, *, explicit: bool) -> None:
    """The integral in the chosen mode; an accumulator the device cannot hold falls back to forward
    mode (unless the mode was asked for explicitly)."""
    import jax

    chosen = sc.res["mode"]
    sc.res["modes"] = {}
    try:
        first = _time_integral(sc, chosen)
    except jax.errors.JaxRuntimeError as err:  # out of memory, mostly: the plan is an estimate
        if explicit or chosen == "forward":
            raise
        sc.say(f"{chosen} failed ({str(err).splitlines()[0][:200]}); falling back to forward mode")
        sc.res["modes"][chosen] = {"error": str(err)[:2000]}
        chosen = sc.res["mode"] = "forward"
        first = _time_integral(sc, chosen)
    sc.res["modes"][chosen] = first
    peak = sc.res["peak_bf16_tflops"]
    sc.say(
        f"{chosen}: {first['integral_s']:.2f} s per integral ({sc.nodes} steps + 2 forwards), "
        f"{first['tokens_per_s']:.0f} tokens/s, {first['achieved_tflops']:.0f} TFLOP/s"
        + (f" = {first['fraction_of_peak']:.0%} of {peak:.0f}" if peak else "")
        + f"; compile {first['compile_s']:.0f} s; peak memory {first['peak_device_memory_gib']} GiB"
    )
    sc.update(
        **{
            k: first[k]
            for k in (
                "compile_s",
                "step_s",
                "tokens_per_s",
                "achieved_tflops",
                "fraction_of_peak",
                "path_integral_value",
            )
        }
    )


def _suite(sc: _Scale, edits_limit: int) -> None:
    """The paper's term and the measured change of up to ``edits_limit`` edits, one at a time."""
    import jax
    import jax.numpy as jnp

    rows: list[dict[str, Any]] = []
    sc.res.update(suite=rows, suite_edits=0)
    t_suite = time.perf_counter()
    specs = SUITE[:edits_limit]
    for spec in specs:
        e = edits.parse(spec)
        edited = e(sc.delta, key=jax.random.fold_in(jax.random.key(sc.seed), len(rows)) if e.random else None)
        change = jax.tree.map(
            lambda a, b: (a.astype(jnp.float32) - b.astype(jnp.float32)).astype(b.dtype), edited, sc.delta
        )
        del edited
        t = time.perf_counter()
        term = riemann.integrate_path(
            sc.loss_fn, sc.post, change, sc.batches, rule="left", n=sc.nodes, mode=sc.res["mode"]
        ).value
        measured = riemann.estimate(sc.loss_fn, sc.post, change, sc.batches, method="measured").value
        rows.append({"edit": spec, "term": term, "measured": measured, "seconds": time.perf_counter() - t})
        del change
        sc.say(f"edit {len(rows)}/{len(specs)} {spec}: term {term:+.4g}, measured {measured:+.4g}")
        sc.update(
            suite_edits=len(rows), suite_s=time.perf_counter() - t_suite, peak_device_memory_gib=_peak_gib(sc.dev)
        )
    sc.res.update(suite_s=time.perf_counter() - t_suite, peak_device_memory_gib=_peak_gib(sc.dev))
    sc.update()


def _other_mode(sc: _Scale) -> None:
    """The mode not chosen, when the plan says it fits and it has not run (or failed) already."""
    other = "forward" if sc.res["mode"] == "accumulate" else "accumulate"
    if sc.plan.fits(other) is False or other in sc.res["modes"]:
        return
    o = sc.res["modes"][other] = _time_integral(sc, other)
    sc.say(
        f"{other}: {o['integral_s']:.2f} s per integral, {o['tokens_per_s']:.0f} tokens/s, "
        f"{o['achieved_tflops']:.0f} TFLOP/s; compile {o['compile_s']:.0f} s"
    )
    sc.update()


def _xla_plan(sc: _Scale) -> None:
    """XLA's own memory plan of each mode's step, compiled from shapes."""
    sc.res["xla_plan_gib"] = {}
    for m in riemann.MODES:
        c = plan.compiled(sc.raw, mode=m, batch=sc.batch, seq_len=sc.seq, dtype="bfloat16", remat=True)
        sc.res["xla_plan_gib"][m] = c.total / 2**30
    sc.say("XLA's plan: " + ", ".join(f"{m} {g:.1f} GiB" for m, g in sc.res["xla_plan_gib"].items()))
    sc.update()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.perf.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a small Llama config (any device; for tests)")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per step (default 4096)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    ap.add_argument("--mode", choices=plan.MODES, help="override the planned mode (and time only it)")
    ap.add_argument("--edits", type=int, default=20, help="edits in the suite (default 20)")
    ap.add_argument("--layers", type=int, help="decoder layers (default: the model's 32)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures here, rewritten atomically after each phase")
    args = ap.parse_args(argv)
    for name, v in (("--tokens", args.tokens), ("--batch", args.batch), ("--layers", args.layers or 1)):
        if v < 1:
            ap.error(f"{name} must be ≥ 1, got {v}")
    if args.tokens % args.batch:
        ap.error(f"--tokens ({args.tokens}) must be a multiple of --batch ({args.batch})")
    # JAX is imported above but starts its backend (and allocator) only at the first device use.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    save = (lambda r: files.write_json(args.json, r)) if args.json else None
    res = run(
        tiny=args.tiny,
        tokens=args.tokens,
        batch=args.batch,
        mode=args.mode,
        edits_limit=args.edits,
        layers=args.layers,
        on_update=save,
    )
    json.dump(res, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
