"""Resumable path integrals: the engine's step-wise state (``riemann.path_state``) saved
atomically to disk every N steps, and resumed after a crash or a kill with a bit-identical result.

The state file is an ``.npz`` (arrays only, loaded with ``allow_pickle=False``): the float32
accumulator leaf by leaf, the per-step losses and directional derivatives, and a JSON header with
the rule, node count, number of batches, position and a fingerprint of the inputs (leaf names,
shapes, dtypes and per-leaf sums of ``start`` and ``direction``), so that a state is never resumed
against different parameters, a different direction or a different quadrature.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import riemann
from analysis import files

PyTree = Any


@jax.jit
def _sums(tree: PyTree) -> list[jax.Array]:
    return [jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(tree)]


def fingerprint(start: PyTree, direction: PyTree, rule: str, n: int, num_batches: int, endpoints: bool) -> str:
    """A hash of what determines the result: quadrature, batch count, leaf names, shapes, dtypes
    and per-leaf sums of the two trees (one pass over the parameters)."""
    names = riemann.leaf_names(start)
    meta = [(nm, tuple(np.shape(x)), str(jnp.result_type(x))) for nm, x in zip(names, jax.tree.leaves(start))]
    sums = np.asarray(jax.device_get(_sums(start) + _sums(direction)), np.float32)
    blob = json.dumps({"rule": rule, "n": n, "batches": num_batches, "endpoints": endpoints, "leaves": meta}).encode()
    return hashlib.sha256(blob + sums.tobytes()).hexdigest()


FORMAT = 2  # 1: per-step scalars as NaN-padded [batches, nodes] arrays; 2: flat, in step order
_SCALARS = ("losses", "dots", "loss_start", "loss_end")


class HostCopies:
    """The per-step scalars of a run's states, copied to the host once each: a state saved every N
    steps fetches only what came since the last save, never the whole history again."""

    def __init__(self) -> None:
        self.values: dict[str, list[Any]] = {f: [] for f in _SCALARS}

    def __call__(self, state: riemann.PathState) -> dict[str, np.ndarray]:
        for f in _SCALARS:
            have, now = self.values[f], getattr(state, f)
            have += [np.asarray(x)[()] for x in jax.device_get(list(now[len(have) :]))]
        # Kept in the steps' own dtype: a resumed result must equal an uninterrupted one bit for bit.
        return {f: np.asarray(v) for f, v in self.values.items()}


def save_state(path: str | os.PathLike, state: riemann.PathState, fp: str, *, host: HostCopies | None = None) -> Path:
    """Write ``state`` to ``path`` atomically (readers see the old state or the new one). Pass the
    same ``host`` for every save of one run to copy each per-step scalar to the host only once."""
    if state.mode != "accumulate":
        raise ValueError(f"only accumulate-mode states are saved (this one is {state.mode!r})")
    if not all(x.is_fully_addressable for x in jax.tree.leaves(state.acc)):
        raise ValueError("this state's accumulator spans several processes; saving it to one file is not supported")
    names = riemann.leaf_names(state.acc)
    arrays = {f"acc/{nm}": np.asarray(jax.device_get(x)) for nm, x in zip(names, jax.tree.leaves(state.acc))}
    header = {
        "format": FORMAT,
        "rule": state.rule,
        "n": state.n,
        "num_batches": state.num_batches,
        "endpoints": state.endpoints,
        "step": state.step,
        "fingerprint": fp,
        "leaves": names,
    }
    buf = _io.BytesIO()
    np.savez(
        buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **(host or HostCopies())(state), **arrays
    )
    return files.write_bytes(path, buf.getvalue())


def _scalars(f: Any, header: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """The per-step scalars of a state file, in step order, whatever its format."""
    if header.get("format", 1) == FORMAT:
        return {k: tuple(np.asarray(f[k])) for k in _SCALARS}
    # Format 1 kept [batches, nodes] arrays (NaN where not yet computed) in float64 and the endpoint
    # losses per batch; the values were float32 steps', so they go back to float32 exactly.
    step, n = header["step"], header["n"]
    batches_done = step // n
    out = {k: tuple(np.asarray(f[k], np.float64).reshape(-1)[:step].astype(np.float32)) for k in ("losses", "dots")}
    for k in ("loss_start", "loss_end"):
        done = np.asarray(f[k], np.float64)[:batches_done]
        out[k] = tuple(done.astype(np.float32)) if np.all(np.isfinite(done)) and header["endpoints"] else ()
    return out


def load_state(path: str | os.PathLike, start: PyTree, fp: str) -> riemann.PathState:
    """Read a state written by :func:`save_state` (in this format or the previous one); refuses one
    whose fingerprint differs."""
    with np.load(path, allow_pickle=False) as f:
        header = json.loads(bytes(f["header"]).decode())
        if header.get("format", 1) > FORMAT:
            raise ValueError(
                f"{path}: state file format {header['format']} is newer than this version reads ({FORMAT})"
            )
        if header["fingerprint"] != fp:
            raise ValueError(
                f"{path}: this saved path integral belongs to other inputs (parameters, direction, rule, n "
                "or batch count differ); remove it or choose another state file"
            )
        names = riemann.leaf_names(start)
        if header["leaves"] != names:
            raise ValueError(f"{path}: saved leaves {header['leaves'][:3]}… do not match the parameters {names[:3]}…")
        shardings = [getattr(x, "sharding", None) for x in jax.tree.leaves(start)]
        acc = [jax.device_put(np.array(f[f"acc/{nm}"]), s) for nm, s in zip(names, shardings)]
        fresh = riemann.path_state(
            start,
            rule=header["rule"],
            n=header["n"],
            num_batches=header["num_batches"],
            endpoints=header["endpoints"],
            mode="forward",
        )  # no zero accumulator made
        return dataclasses.replace(
            fresh,
            mode="accumulate",
            acc=jax.tree.unflatten(jax.tree.structure(start), acc),
            step=header["step"],
            **_scalars(f, header),
        )


def integrate_path_resumable(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    start: PyTree,
    direction: PyTree,
    batches: Sequence[Any],
    *,
    state_file: str | os.PathLike,
    rule: str = "left",
    n: int = 5,
    endpoints: bool = False,
    every: int = 10,
    progress: bool = False,
    on_step: Callable[[riemann.PathState], None] | None = None,
) -> riemann.PathIntegral:
    """``riemann.integrate_path`` that saves its state to ``state_file`` every ``every`` steps
    (and at the end) and, if the file exists, resumes from it. The result is bit-identical to an
    uninterrupted ``integrate_path`` with the same arguments. The state file is kept after the
    run (it holds the finished accumulator); delete it to start over."""
    if every < 1:
        raise ValueError(f"every={every}; expected a positive number of steps between saves")
    batches = list(batches)
    fp = fingerprint(start, direction, rule, n, len(batches), endpoints)
    state_file = Path(state_file)
    if state_file.is_file():
        state = load_state(state_file, start, fp)
    else:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state = riemann.path_state(start, rule=rule, n=n, num_batches=len(batches), endpoints=endpoints)

    host = HostCopies()

    def step(s: riemann.PathState) -> None:
        if s.step % every == 0 or s.done:
            save_state(state_file, s, fp, host=host)
        if on_step is not None:
            on_step(s)

    state = riemann.advance_path(loss_fn, state, start, direction, batches, on_step=step, progress=progress)
    return riemann.path_result(loss_fn, state, start, direction, batches)
