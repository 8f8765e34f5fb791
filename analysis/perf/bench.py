"""``riemann bench``: performance figures measured side by side in one run, printed as ratios.

Each benchmark is a function registered in :data:`BENCHMARKS` that returns a dict of figures
(ratios first); later performance work adds its own. Timings are the median of several warm
repeats; compile time is excluded by a warm-up call. Peak memory runs each configuration in a
fresh subprocess and reads its peak resident set size.

- ``path_step``: cost of one (node, batch) step of :func:`riemann.integrate_path` against one
  bare jitted ``value_and_grad`` on the same batch and parameters (target ≤ 1.10).
- ``path_memory``: peak memory of a path integral with n = 32 nodes against n = 2 (target ≤ 1.10).
- ``edit_cost``: each edit on a Llama-3-8B MLP matrix (4096 × 14336) against a jitted
  elementwise multiply of the same tensor, float32 and bfloat16 (elementwise edits: target ≤ 3).
- ``load_checkpoint``: loading a ~1 GB sharded checkpoint against ``safetensors`` into numpy
  (targets: time ≤ 2×, peak host memory ≤ checkpoint size + 2× its largest tensor).
- ``lowrank``: randomized SVD at rank 64 against the full SVD truncated to rank 64, with the
  Frobenius error of each relative to the optimum (target: ≥ 5× faster at ≤ 1 % more error).
- ``torch_path``: our path integral on a small HF Llama checkpoint against a straightforward
  PyTorch + transformers implementation of the same computation (same checkpoint, tokens, nodes,
  CPU threads): time ratio (goal: ours ≥ 1.5× faster) and the relative difference of the values.
- ``suite_scoring``: a 30-edit suite scored with shared gradients (first order, shared curvature)
  against per-edit Riemann sums, second order and Gauss–Legendre: seconds and agreement with the
  measured change, so users can choose knowingly.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

Benchmark = Callable[[bool], dict[str, Any]]
BENCHMARKS: dict[str, Benchmark] = {}
FIELDS: dict[str, tuple[str, ...]] = {}


def benchmark(*fields: str) -> Callable[[Benchmark], Benchmark]:
    """Register a benchmark ``fn(quick) -> figures`` under its name, promising the top-level
    ``fields`` of its figures (checked by the tests)."""

    def register(fn: Benchmark) -> Benchmark:
        BENCHMARKS[fn.__name__] = fn
        FIELDS[fn.__name__] = fields
        return fn

    return register


def _time(f: Callable[[], Any], repeats: int) -> float:
    import jax

    jax.block_until_ready(f())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mlp(width: int, depth: int, batch: int, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(seed), 2 * depth + 2)
    params = {f"layers.{i}.weight": jax.random.normal(keys[i], (width, width)) / jnp.sqrt(width) for i in range(depth)}
    direction = {k: 0.01 * jax.random.normal(keys[depth + i], v.shape) for i, (k, v) in enumerate(params.items())}
    x = jax.random.normal(keys[-2], (batch, width))
    y = jax.random.normal(keys[-1], (batch, width))

    def loss(p: Any, b: Any) -> Any:
        h = b[0]
        for i in range(depth):
            h = jnp.tanh(h @ p[f"layers.{i}.weight"].T)
        return jnp.mean((h - b[1]) ** 2)

    return loss, params, direction, (x, y)


def _path_step_row(width: int, depth: int, batch: int, n: int, nb: int, repeats: int) -> dict[str, float]:
    import jax

    import riemann

    loss, params, direction, data = mlp(width, depth, batch)
    bare = jax.jit(jax.value_and_grad(loss))

    def minimal(acc: Any, s: Any, d: Any, t: Any, w: Any, b: Any) -> Any:
        p = jax.tree.map(lambda a, c: a + t * c, s, d)
        loss_value, g = jax.value_and_grad(loss)(p, b)
        return jax.tree.map(lambda a, gi: a + w * gi, acc, g), loss_value

    step = jax.jit(minimal, donate_argnums=0)
    state = {"acc": jax.tree.map(jax.numpy.zeros_like, params)}

    def run_minimal() -> Any:
        for t in (0.0, 0.2, 0.4, 0.6, 0.8) * nb:
            state["acc"], _ = step(state["acc"], params, direction, jax.numpy.float32(t), jax.numpy.float32(0.2), data)
        return state["acc"]

    t_bare = _time(lambda: bare(params, data), repeats * n * nb)
    t_min = _time(run_minimal, repeats) / (n * nb)
    t_path = _time(
        lambda: riemann.integrate_path(loss, params, direction, [data] * nb, rule="left", n=n).grad, repeats
    ) / (n * nb)
    return {
        "ratio_vs_value_and_grad": t_path / t_bare,
        "ratio_vs_minimal_path_step": t_path / t_min,
        "path_step_ms": 1e3 * t_path,
        "bare_value_and_grad_ms": 1e3 * t_bare,
        "minimal_path_step_ms": 1e3 * t_min,
    }


@benchmark("target", "model", "n", "batches")
def path_step(quick: bool) -> dict[str, Any]:
    """Per (node, batch) cost at two batch sizes, against (a) one bare jitted ``value_and_grad``
    at a fixed point and (b) a minimal hand-written path step (point formed inside jit,
    ``value_and_grad``, donated accumulator): (a) includes the inherent cost of forming the point
    and accumulating, (b) isolates the toolkit's own overhead."""
    width, depth = (512, 4) if quick else (1024, 8)
    n, nb = 5, 4
    repeats = 3 if quick else 5
    rows = {
        f"batch {b}": _path_step_row(width, depth, b, n, nb, repeats) for b in ((256, 1024) if quick else (1024, 4096))
    }
    return {
        "target": "ratio_vs_value_and_grad ≤ 1.10",
        **rows,
        "model": f"tanh MLP {depth}×{width}² ({depth * width * width / 1e6:.1f} M params, float32)",
        "n": n,
        "batches": nb,
    }


def _child(*args: str) -> list[float]:
    """Run :mod:`analysis.perf.bench_children` with ``args`` in a fresh process; its printed figures."""
    out = subprocess.run(
        [sys.executable, "-m", "analysis.perf.bench_children", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    return [float(x) for x in out.stdout.split()[-3:]]


@benchmark("ratio", "target", "peak_rss_mib_n2", "peak_rss_mib_n32", "params_mib")
def path_memory(quick: bool) -> dict[str, Any]:
    width, depth = (1024, 8) if quick else (2048, 12)
    peaks = {}
    for n in (2, 32):
        peaks[n] = _child("memory", str(width), str(depth), str(n))[-1] / 1024
    params_mib = depth * width * width * 4 / 2**20
    return {
        "ratio": peaks[32] / peaks[2],
        "target": 1.10,
        "peak_rss_mib_n2": peaks[2],
        "peak_rss_mib_n32": peaks[32],
        "params_mib": params_mib,
        "note": f"storing per-node gradients would add {31 * params_mib:.0f} MiB at n = 32",
    }


@benchmark("shape", "float32", "bfloat16", "target")
def edit_cost(quick: bool) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from riemann import edits

    shape = (1024, 3584) if quick else (4096, 14336)
    specs = {
        "elementwise": [
            "dare:p=0.9",
            "dare:p=0.5,k=-0.5",
            "dare:p=0.9,rescale=false",
            "expo:alpha=0.3",
            "biased_sign:k=0.5",
            "biased_product:k=1.5",
            "bitdelta",
            "bitdelta:multiple=2",
            "bitdelta:magnitudes=uniform",
        ],
        "ranking": ["della:density=0.3,epsilon=0.1", "magnitude:keep=0.2", "bitdelta:magnitude_bits=2"],
    }
    mul = jax.jit(lambda a, s: a * s)
    key = jax.random.key(0)
    out: dict[str, Any] = {"shape": list(shape)}
    for dtype in (jnp.float32, jnp.bfloat16):
        x = {"model.layers.0.mlp.up_proj.weight": jax.random.normal(key, shape, dtype)}
        g = jax.tree.map(lambda v: jnp.flip(v, 0), x)
        scale = jnp.asarray(1.5, dtype)
        base = _time(lambda x=x, scale=scale: mul(x["model.layers.0.mlp.up_proj.weight"], scale), 5)
        rows = {}
        for group, group_specs in specs.items():
            for spec in group_specs:
                e = edits.parse(spec)
                grad = g if e.needs_grad else None
                reps = 3 if group == "elementwise" else 1  # a ranking edit sorts the whole tensor: one repeat
                rows[spec] = {
                    "group": group,
                    "ratio": _time(lambda e=e, x=x, grad=grad: e(x, key=key, grad=grad), reps) / base,
                }
        out[jnp.dtype(dtype).name] = {"multiply_ms": 1e3 * base, "edits": rows}
    out["target"] = "elementwise ≤ 3"
    return out


@benchmark("speedup", "full_svd_s", "randomized_s", "error_full_over_optimum", "error_randomized_over_optimum")
def lowrank(quick: bool) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from riemann import edits

    shape, rank = ((1024, 3584), 64) if quick else ((4096, 14336), 64)
    key = jax.random.key(0)
    # A delta-like spectrum: a decaying low-rank part plus noise, as fine-tuning deltas show.
    k1, k2, k3 = jax.random.split(key, 3)
    r0 = 256
    u = jax.random.normal(k1, (shape[0], r0)) / np.sqrt(shape[0])
    v = jax.random.normal(k2, (r0, shape[1])) / np.sqrt(shape[1])
    x = (u * (0.97 ** jnp.arange(r0, dtype=jnp.float32))[None]) @ v + 1e-3 * jax.random.normal(k3, shape)
    d = {"w": x}
    t_full = _time(lambda: edits.lowrank(d, rank)["w"], 1 if not quick else 2)
    t_rand = _time(lambda: edits.lowrank(d, rank, method="randomized", key=key)["w"], 3)
    s = (
        np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
        if quick
        else np.asarray(jnp.linalg.svd(x, compute_uv=False), np.float64)
    )
    optimum = float(np.sqrt(np.sum(s[rank:] ** 2)))
    err_full = float(jnp.linalg.norm(edits.lowrank(d, rank)["w"] - x))
    err_rand = float(jnp.linalg.norm(edits.lowrank(d, rank, method="randomized", key=key)["w"] - x))
    return {
        "speedup": t_full / t_rand,
        "target": "≥ 5× at ≤ 1 % more error",
        "full_svd_s": t_full,
        "randomized_s": t_rand,
        "error_full_over_optimum": err_full / optimum,
        "error_randomized_over_optimum": err_rand / optimum,
        "shape": list(shape),
        "rank": rank,
    }


@benchmark(
    "time_ratio_ours_over_safetensors", "peak_rss_growth_over_budget", "checkpoint_mib", "largest_tensor_mib", "shards"
)
def load_checkpoint(quick: bool) -> dict[str, Any]:
    """Load a synthetic sharded Llama-shaped float32 checkpoint (~1 GB; quick: ~0.1 GB) with
    ``analysis.hf.checkpoints.load`` and with ``safetensors.numpy.load_file``, each in a fresh
    process after the files are in the page cache; peak RSS growth and wall time."""
    import tempfile
    from pathlib import Path

    from analysis.hf import checkpoints

    hidden, layers, inter = (512, 8, 1536) if quick else (1024, 20, 3584)
    raw = {
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
    }
    with tempfile.TemporaryDirectory() as d:
        path = checkpoints.save(Path(d) / "ck", checkpoints.from_config(raw, seed=0), max_shard_bytes=200 * 2**20)
        shards = sorted(path.glob("*.safetensors"))
        size = sum(f.stat().st_size for f in shards)
        from analysis.hf.safetensors_file import read_header

        largest = max(i.nbytes for f in shards for i in read_header(f)[0].values())
        for f in shards:  # page cache warm for both readers
            f.read_bytes()
        runs = {}
        for mode in ("safetensors", "ours", "safetensors", "ours"):
            elapsed, base, peak = _child("load", mode, str(path))
            runs.setdefault(mode, []).append((elapsed, (peak - base) * 1024))
    t_ours = min(e for e, _ in runs["ours"])
    t_st = min(e for e, _ in runs["safetensors"])
    peak_ours = min(p for _, p in runs["ours"])
    return {
        "time_ratio_ours_over_safetensors": t_ours / t_st,
        "target_time": "≤ 2",
        "peak_rss_growth_over_budget": peak_ours / (size + 2 * largest),
        "target_memory": "≤ 1 (size + 2× largest tensor)",
        "checkpoint_mib": size / 2**20,
        "largest_tensor_mib": largest / 2**20,
        "shards": len(shards),
        "ours_s": t_ours,
        "safetensors_numpy_s": t_st,
        "ours_peak_rss_growth_mib": peak_ours / 2**20,
        "safetensors_peak_rss_growth_mib": min(p for _, p in runs["safetensors"]) / 2**20,
    }


_TORCH_CFG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 2048,
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "max_position_embeddings": 512,
    "hidden_act": "silu",
}


def _torch_path(
    model: Any, start: dict[str, Any], direction: dict[str, Any], batches: list[Any], nodes: Any, weights: Any
) -> float:
    """The same quadrature written the obvious way in PyTorch: set W + t·D, forward with labels,
    backward, accumulate w·grad; the estimate is <Σ w ∇L, D> averaged over batches."""
    import torch

    params = dict(model.named_parameters())
    acc = {k: torch.zeros_like(v) for k, v in params.items()}
    for ids in batches:
        for t, w in zip(nodes, weights):
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(start[k] + float(t) * direction[k])
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            with torch.no_grad():
                for k, p in params.items():
                    acc[k].add_(p.grad, alpha=float(w))
    with torch.no_grad():
        return float(sum((acc[k] * direction[k]).sum() for k in params)) / len(batches)


def _gemm_rates(m: int, k: int, n: int, reps: int = 30) -> dict[str, Any]:
    """GFLOP/s of one float32 ``[m, k] @ [k, n]`` product (the decoder's MLP shape), XLA's CPU
    backend vs PyTorch's, median of ``reps``: the ceiling each side's path step is built on."""
    import jax
    import numpy as np
    import torch

    a = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32)
    ja, jb, ta, tb = jax.device_put(a), jax.device_put(b), torch.from_numpy(a), torch.from_numpy(b)
    mm = jax.jit(lambda x, y: x @ y)
    t_jax = _time(lambda: mm(ja, jb).block_until_ready(), reps)
    t_torch = _time(lambda: ta @ tb, reps)
    flops = 2.0 * m * k * n
    return {
        "gemm_shape": [m, k, n],
        "gemm_gflops_ours": flops / t_jax / 1e9,
        "gemm_gflops_torch": flops / t_torch / 1e9,
    }


@benchmark(
    "speedup_ours_over_torch",
    "speedup_ours_forward_mode_over_torch",
    "relative_difference",
    "relative_difference_forward_mode",
    "gemm_gflops_ours",
    "gemm_gflops_torch",
)
def torch_path(quick: bool) -> dict[str, Any]:
    """Left rule, C = 5, over 2 batches of 8 × 128 tokens (quick: 4 × 64) on a 4-layer Llama
    checkpoint (hidden 256, vocab 2048), float32, CPU, warm, median of 3; ours in both modes
    (gradient accumulator, as PyTorch's; forward-mode products, the value alone)."""
    try:
        import torch
        import transformers
    except ImportError:
        return {"skipped": "needs torch and transformers (pip install -e '.[test]')"}
    import tempfile
    from pathlib import Path

    import jax
    import numpy as np

    import riemann
    from analysis.hf import checkpoints
    from analysis.pairs import data

    torch.set_num_threads(os.cpu_count() or 1)
    bsz, seq, repeats = (4, 64, 2) if quick else (8, 128, 3)
    with tempfile.TemporaryDirectory() as d:
        pre = checkpoints.from_config(_TORCH_CFG, seed=0)
        keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(pre.params))))
        post_params = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(next(keys), x.shape, x.dtype), pre.params)
        checkpoints.save(Path(d) / "pre", pre)
        checkpoints.save(Path(d) / "post", pre, post_params)
        a, b = checkpoints.load_pair(Path(d) / "pre", Path(d) / "post")
        rng = np.random.default_rng(0)
        ids = [rng.integers(3, _TORCH_CFG["vocab_size"], (bsz, seq)).astype(np.int32) for _ in range(2)]
        mask = np.ones((bsz, seq), np.float32)
        batches = [{"input_ids": x, "loss_mask": mask} for x in ids]
        loss_fn = data.causal_lm_loss(a.forward)
        direction = jax.tree.map(lambda p, q: q - p, a.params, b.params)

        def ours() -> float:
            return riemann.integrate_path(loss_fn, a.params, direction, batches, rule="left", n=5).value

        t_ours = _time(ours, repeats)
        value_ours = ours()

        # The same value from forward-mode products (no gradient, so no per-module terms).
        def ours_fwd() -> float:
            return riemann.integrate_path(loss_fn, a.params, direction, batches, rule="left", n=5, mode="forward").value

        t_fwd = _time(ours_fwd, repeats)
        value_fwd = ours_fwd()

        model = transformers.LlamaForCausalLM.from_pretrained(Path(d) / "pre", dtype=torch.float32)
        model.train(False)
        pre_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        post_model = transformers.LlamaForCausalLM.from_pretrained(Path(d) / "post", dtype=torch.float32)
        post_sd = post_model.state_dict()
        dir_sd = {k: post_sd[k] - pre_sd[k] for k in pre_sd}
        tb = [torch.from_numpy(x.astype(np.int64)) for x in ids]
        nodes, weights = riemann.quadrature("left", 5)
        _torch_path(model, pre_sd, dir_sd, tb, nodes, weights)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            value_torch = _torch_path(model, pre_sd, dir_sd, tb, nodes, weights)
            times.append(time.perf_counter() - t0)
        t_torch = statistics.median(times)
    gemm = _gemm_rates(bsz * seq, _TORCH_CFG["hidden_size"], _TORCH_CFG["intermediate_size"])
    return {
        "speedup_ours_over_torch": t_torch / t_ours,
        "goal": "≥ 1.5",
        "speedup_ours_forward_mode_over_torch": t_torch / t_fwd,
        **gemm,
        "ours_s": t_ours,
        "ours_forward_mode_s": t_fwd,
        "torch_s": t_torch,
        "value_ours": value_ours,
        "value_ours_forward_mode": value_fwd,
        "value_torch": value_torch,
        "relative_difference": abs(value_ours - value_torch) / max(abs(value_torch), 1e-12),
        "relative_difference_forward_mode": abs(value_fwd - value_torch) / max(abs(value_torch), 1e-12),
        "tokens_per_batch": bsz * seq,
        "batches": 2,
        "nodes": 5,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


@benchmark("edits", "shared_curvature_speedup_over_riemann", "first_order_speedup_over_riemann", "measured_s")
def suite_scoring(quick: bool) -> dict[str, Any]:
    """30 edits on the workbench's ``lm/arithmetic`` pair (quick: every other one of them, on its
    miniature; either is built on first use): every estimator's seconds (shared passes included
    once) and its Spearman / class agreement with the measured change."""
    import riemann
    from analysis.pairs import workbench
    from analysis.study import suite

    pair = workbench.load_pair("lm/arithmetic", "mini" if quick else "full", progress=False, log=lambda s: None)
    full = suite.default_suite()
    specs = (full[::2] + [s for s in full[1::2] if not s.startswith("dare")])[:30]
    specs = specs[::2] if quick else specs  # quick: 15 of them, every family still there
    # An adaptive integral that spends its budget says so in its record (converged=False), which
    # this benchmark reports; the warning it also raises would only repeat it here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", riemann.NotConverged)
        res = suite.analyse(pair, specs, progress=False, log=lambda s: None)
    agree = res["agreement"]
    measured_s = sum(r["seconds"]["measured"] for r in res["edits"])
    out: dict[str, Any] = {
        "pair": pair.name,
        "edits": len(specs),
        "shared_curvature_speedup_over_riemann": agree["riemann"]["seconds"] / agree["shared-curvature"]["seconds"],
        "first_order_speedup_over_riemann": agree["riemann"]["seconds"] / agree["first-order"]["seconds"],
        "measured_s": measured_s,
    }
    for name, a in agree.items():
        out[name] = {
            "seconds": a["seconds"],
            "spearman": a["spearman"],
            "class_agreement": a["class_agreement"],
            "passes_once_per_batch": a["passes_once_per_batch"],
            "passes_per_edit_per_batch": a["passes_per_edit_per_batch"],
        }
        if "not_converged" in a.get("identity", {}):
            out[name]["not_converged"] = a["identity"]["not_converged"]
    return out


def _machine() -> dict[str, Any]:
    import jax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def main(args: Any) -> int:
    quick = bool(getattr(args, "quick", False))
    only = getattr(args, "only", None)
    results: dict[str, Any] = {"machine": _machine(), "quick": quick}
    for name, fn in BENCHMARKS.items():
        if only and name not in only:
            continue
        print(f"[bench] {name} …", flush=True)
        results[name] = fn(quick)
        print(json.dumps(results[name], indent=2, ensure_ascii=False), flush=True)
    if getattr(args, "json", None):
        from analysis import files

        files.write_json(args.json, results)
        print(f"[bench] wrote {args.json}")
    return 0
