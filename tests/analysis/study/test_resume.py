"""Resumable path integrals: stepwise equals one call bit for bit, a killed run resumes to the
same bits, and a state is never resumed against other inputs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import riemann
from analysis.study import resume

ROOT = Path(__file__).resolve().parents[3]

# A child process that integrates with a save after every step and a short pause per step, so
# the parent can kill it part way; it prints the result's bits when it finishes.
CHILD = """
import sys, time
import jax, numpy as np
from analysis.study import resume
from analysis.pairs.mlp import MLPConfig, build_pair
pair = build_pair(MLPConfig(hidden=24, teacher_hidden=16, pre_steps=60, post_steps=40, batch=128, eval_batches=3))
delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
res = resume.integrate_path_resumable(pair.loss_fn, pair.pre, delta, pair.batches, state_file=sys.argv[1],
                                      rule="gauss-legendre", n=6, endpoints=True, every=1,
                                      on_step=lambda s: time.sleep(float(sys.argv[2])))
g = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(res.grad)])
print(repr(res.value), repr(res.gap), g.tobytes().hex())
"""


def _child(state, pause):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), str(pause)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def test_a_state_file_of_the_previous_format_resumes_to_the_same_bits(tmp_path):
    """Format 1 kept NaN-padded [batches, nodes] float64 arrays; such a file still resumes, and to
    the same bits as an uninterrupted integral."""
    import json

    from tests.riemann.test_path import logistic_problem

    loss, start, direction, batches = logistic_problem()
    ref = riemann.integrate_path(loss, start, direction, batches, rule="gauss-legendre", n=3, endpoints=True)
    fp = resume.fingerprint(start, direction, "gauss-legendre", 3, len(batches), True)
    state = riemann.path_state(start, rule="gauss-legendre", n=3, num_batches=len(batches), endpoints=True)
    state = riemann.advance_path(loss, state, start, direction, batches, steps=4).host()  # batch 1 of 3 done, + 1 node

    def grid(values, shape):  # format 1: NaN where a step had not run yet
        values = np.asarray(values, np.float64)
        return np.concatenate([values, np.full(int(np.prod(shape)) - len(values), np.nan)]).reshape(shape)

    header = {
        "rule": "gauss-legendre",
        "n": 3,
        "num_batches": 3,
        "endpoints": True,
        "step": 4,
        "fingerprint": fp,
        "leaves": riemann.leaf_names(start),
    }
    old = tmp_path / "old.npz"
    np.savez(
        old,
        header=np.frombuffer(json.dumps(header).encode(), np.uint8),
        losses=grid(state.losses, (3, 3)),
        dots=grid(state.dots, (3, 3)),
        loss_start=grid(state.loss_start, (3,)),
        loss_end=grid(state.loss_end, (3,)),
        **{f"acc/{nm}": np.asarray(x) for nm, x in zip(riemann.leaf_names(state.acc), jax.tree.leaves(state.acc))},
    )
    res = resume.integrate_path_resumable(
        loss, start, direction, batches, state_file=old, rule="gauss-legendre", n=3, endpoints=True
    )
    assert res.value == ref.value and res.gap == ref.gap and res.loss_start == ref.loss_start
    header["format"] = 99
    np.savez(tmp_path / "new.npz", header=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(ValueError, match="format 99 is newer"):
        resume.load_state(tmp_path / "new.npz", start, fp)


def test_killed_integral_resumes_bit_identical(tmp_path):
    full = _child(tmp_path / "full.npz", 0.0)
    expected = full.communicate(timeout=600)[0].strip()
    assert full.returncode == 0 and expected
    state = tmp_path / "killed.npz"
    proc = _child(state, 0.3)
    deadline = time.time() + 300
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if state.is_file():
            try:
                with np.load(state) as f:
                    import json

                    step = json.loads(bytes(f["header"]).decode())["step"]
            except (OSError, ValueError, KeyError):
                step = 0  # a reader racing a rename sees the old or the new file; retry
            if step >= 5:
                break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert 5 <= step < 18, "the child should have been killed part way through its 18 steps"
    resumed = _child(state, 0.0)
    got = resumed.communicate(timeout=600)[0].strip()
    assert resumed.returncode == 0
    assert got == expected  # value, gap and every accumulator bit


def test_a_state_is_not_resumed_against_other_inputs(tmp_path):
    from tests.riemann.test_path import logistic_problem

    loss, start, direction, batches = logistic_problem()
    f = tmp_path / "s.npz"
    a = resume.integrate_path_resumable(loss, start, direction, batches, state_file=f, rule="left", n=3)
    b = resume.integrate_path_resumable(loss, start, direction, batches, state_file=f, rule="left", n=3)
    assert a.value == b.value  # resumed from the finished state: nothing recomputed
    other = jax.tree.map(lambda d: 2 * d, direction)
    with pytest.raises(ValueError, match="belongs to other inputs"):
        resume.integrate_path_resumable(loss, start, other, batches, state_file=f, rule="left", n=3)
    with pytest.raises(ValueError, match="belongs to other inputs"):
        resume.integrate_path_resumable(loss, start, direction, batches, state_file=f, rule="left", n=4)
