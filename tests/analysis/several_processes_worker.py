"""One process of the several-process test (``tests/analysis/test_several_processes.py``).

``python -m tests.analysis.several_processes_worker PROCESS_ID NUM_PROCESSES PORT WORK OUT`` joins
the other processes (none when NUM_PROCESSES is 1), loads the pair in ``WORK`` sharded over a
4-device mesh that spans every process (each process reading only its slices), builds each batch
from this process's rows, runs the public API, prints its numbers as one JSON line, and asks
``analysis.files`` to write them to ``OUT/figures-<process index>.json`` (process 0 alone does). NUM_PROCESSES 0
is the reference: one process, one device, nothing sharded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    pid, n, port, work, out = int(argv[0]), int(argv[1]), argv[2], Path(argv[3]), Path(argv[4])
    import jax

    jax.config.update("jax_num_cpu_devices", 4 // max(n, 1))  # 4 devices in all, however many processes
    from analysis import files, hosts

    hosts.initialize(f"127.0.0.1:{port}", max(n, 1), pid, timeout_s=120)
    import riemann
    from analysis.hf import checkpoints
    from analysis.pairs import data
    from riemann import edits

    kind, records = data.read_jsonl(work / "resp.jsonl")
    items = data.tokenize(data.load_tokenizer(work / "post"), kind, records, max_len=64)
    batches = data.make_batches(items, batch_size=8, max_len=64)
    if n == 0:
        pre, post = checkpoints.load(work / "pre"), checkpoints.load(work / "post")
    else:
        mesh = jax.make_mesh((2, 2), ("fsdp", "data"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
        pre = checkpoints.load(work / "pre", sharding=checkpoints.fsdp(mesh, "fsdp"))
        post = checkpoints.load(work / "post", sharding=checkpoints.fsdp(mesh, "fsdp"))
        batches = data.global_batches(batches, mesh, "data")
    loss_fn = data.causal_lm_loss(pre.forward)
    sub = jax.jit(lambda a, b: jax.tree.map(lambda x, y: x - y, a, b))
    delta = sub(post.params, pre.params)
    change = jax.jit(lambda d: jax.tree.map(lambda x: -0.5 * x, d))(delta)

    figures: dict[str, float] = {}
    acc = riemann.integrate_path(loss_fn, post.params, change, batches, endpoints=True)
    fwd = riemann.integrate_path(loss_fn, post.params, change, batches, mode="forward")
    figures.update(
        integral=acc.value,
        loss_post=acc.loss_start,
        loss_half_back=acc.loss_end,
        modules=sum(acc.modules.values()),
        forward=fwd.value,
        grad_norm2=float(riemann.tree_utils.tree_vdot(acc.grad, acc.grad)),
    )
    for method in ("riemann", "second-order", "measured"):
        figures[method] = riemann.estimate(loss_fn, post.params, change, batches, method=method).value
    sc = riemann.shared_curvature(loss_fn, post.params, batches, probes=2, key=jax.random.key(0))
    figures.update(first_order=sc.first_order(change).value, shared_curvature=sc.estimate(change).value)
    for spec, edited in (
        ("lowrank", edits.lowrank(delta, fraction=0.25)),  # gathers whole tensors
        ("dare", edits.dare(delta, 0.5, key=jax.random.key(1))),
    ):  # per-leaf keyed masks
        ch = sub(edited, delta)
        figures[f"{spec}_measured"] = riemann.estimate(loss_fn, post.params, ch, batches, method="measured").value
        figures[f"{spec}_riemann"] = riemann.estimate(loss_fn, post.params, ch, batches).value
    figures["sharded_leaves"] = float(sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(post.params)))
    figures["devices"] = float(len({d for x in jax.tree.leaves(post.params) for d in x.sharding.device_set}))
    figures.update({f"module {k}": v for k, v in acc.modules.items()})
    print(json.dumps(figures), flush=True)
    if hosts.is_writer():
        out.mkdir(parents=True, exist_ok=True)
    # Every process asks; only process 0's file may appear.
    files.write_json(out / f"figures-{jax.process_index()}.json", figures)
    if n > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
