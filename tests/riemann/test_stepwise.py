"""The step-wise engine API on its own: states are values, any split of the steps gives the one-call
result bit for bit in both modes, and misuse is refused."""

import dataclasses

import equinox as eqx
import jax
import numpy as np
import pytest

import riemann
from tests.riemann.test_path import logistic_problem


def _same(a: riemann.PathIntegral, b: riemann.PathIntegral) -> None:
    assert a.value == b.value and a.loss_start == b.loss_start and a.loss_end == b.loss_end
    np.testing.assert_array_equal(a.batch_values, b.batch_values)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert a.modules == b.modules
    if a.grad is not None:
        for x, y in zip(jax.tree.leaves(a.grad), jax.tree.leaves(b.grad)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("mode", riemann.MODES)
@pytest.mark.parametrize("chunks", [(1,), (4, 2), (7, 100)])
def test_any_split_of_the_steps_gives_the_one_call_result(mode, chunks):
    loss, start, direction, batches = logistic_problem()
    whole = riemann.integrate_path(loss, start, direction, batches, rule="simpson", n=5, endpoints=True, mode=mode)
    state = riemann.path_state(start, rule="simpson", n=5, num_batches=len(batches), endpoints=True, mode=mode)
    for k in chunks * 20:
        if state.done:
            break
        state = riemann.advance_path(loss, state, start, direction, batches, steps=k)
    _same(riemann.path_result(loss, state, start, direction, batches), whole)


def test_states_are_values_never_changed_in_place():
    loss, start, direction, batches = logistic_problem()
    s0 = riemann.path_state(start, rule="left", n=2, num_batches=len(batches), mode="forward")
    s1 = riemann.advance_path(loss, s0, start, direction, batches, steps=3)
    s2 = riemann.advance_path(loss, s1, start, direction, batches, steps=1)
    assert (s0.step, s1.step, s2.step) == (0, 3, 4)
    assert (len(s0.losses), len(s1.losses), len(s2.losses)) == (0, 3, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s2.step = 0
    # In forward mode nothing is donated, so an earlier state can be advanced again: same result.
    again = riemann.advance_path(loss, s1, start, direction, batches, steps=1)
    assert again.host().losses == s2.host().losses and again.host().dots == s2.host().dots


def test_a_consumed_accumulate_state_is_refused_with_a_reason():
    loss, start, direction, batches = logistic_problem()
    s0 = riemann.path_state(start, rule="left", n=2, num_batches=len(batches))
    s1 = riemann.advance_path(loss, s0, start, direction, batches, steps=2)
    assert s0.step == 0 and len(s0.losses) == 0  # its fields are as they were …
    with pytest.raises(ValueError, match="advanced already: its accumulator was donated"):
        riemann.advance_path(loss, s0, start, direction, batches, steps=1)  # … but its accumulator is spent
    s2 = riemann.advance_path(loss, s1, start, direction, batches)
    ref = riemann.integrate_path(loss, start, direction, batches, rule="left", n=2)
    _same(riemann.path_result(loss, s2, start, direction, batches), ref)


def test_on_step_sees_each_new_state_and_host_copies_scalars():
    loss, start, direction, batches = logistic_problem()
    seen = []
    state = riemann.path_state(start, rule="trapezoid", n=3, num_batches=len(batches), endpoints=True)
    state = riemann.advance_path(loss, state, start, direction, batches, on_step=lambda s: seen.append(s.step))
    assert seen == list(range(1, state.total + 1)) and state.done
    host = state.host()
    assert all(isinstance(x, np.floating) for x in host.losses + host.dots)
    # The trapezoid has nodes at both ends: the endpoint losses come from the nodes, not extra passes.
    assert host.loss_start == () and host.loss_end == ()


def test_compiles_once_however_the_steps_are_split():
    loss0, start, direction, batches = logistic_problem()
    loss = eqx.debug.assert_max_traces(loss0, max_traces=1)
    state = riemann.path_state(start, rule="midpoint", n=3, num_batches=len(batches))
    while not state.done:
        state = riemann.advance_path(loss, state, start, direction, batches, steps=2)
    riemann.path_result(loss, state, start, direction, batches)
    assert eqx.debug.get_num_traces(loss) == 1


def test_misuse_is_refused():
    loss, start, direction, batches = logistic_problem()
    state = riemann.path_state(start, num_batches=len(batches))
    with pytest.raises(ValueError, match="sequence of the state's 3 batches"):
        riemann.advance_path(loss, state, start, direction, batches[:2])
    with pytest.raises(ValueError, match="at step 0 of 15"):
        riemann.path_result(loss, state, start, direction, batches)
    with pytest.raises(ValueError, match="num_batches=0"):
        riemann.path_state(start, num_batches=0)
    with pytest.raises(ValueError, match="mode='reverse'"):
        riemann.path_state(start, num_batches=1, mode="reverse")
    with pytest.raises(ValueError, match="leaf 'w'"):
        riemann.advance_path(loss, state, start, {**direction, "w": direction["w"][:3]}, batches)


@pytest.mark.parametrize(("rule", "n"), [("left", 5), ("gauss-legendre", 8), ("simpson", 5)])
def test_leaves_mode_gives_every_rules_value_and_modules_without_an_accumulator(rule, n):
    loss, start, direction, batches = logistic_problem()
    acc = riemann.integrate_path(loss, start, direction, batches, rule=rule, n=n, endpoints=True)
    leaves = riemann.integrate_path(loss, start, direction, batches, rule=rule, n=n, endpoints=True, mode="leaves")
    assert leaves.grad is None and riemann.path_state(start, num_batches=1, mode="leaves").acc is None
    assert leaves.value == pytest.approx(acc.value, rel=1e-5)
    assert leaves.modules.keys() == acc.modules.keys()
    for name, v in acc.modules.items():
        assert leaves.modules[name] == pytest.approx(v, rel=1e-5, abs=1e-7), name
    assert sum(leaves.modules.values()) == pytest.approx(leaves.value, rel=1e-6)
    np.testing.assert_allclose(leaves.batch_values, acc.batch_values, rtol=1e-5)
    assert leaves.loss_start == acc.loss_start and leaves.loss_end == acc.loss_end
    with pytest.raises(ValueError, match="without a gradient accumulator"):
        leaves.score(direction)
