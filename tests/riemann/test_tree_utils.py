"""The public pytree helpers and the public lowering of the engine's step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import riemann
from riemann import tree_utils


def test_widen_picks_the_accumulation_dtype():
    for dtype, wide in ((jnp.bfloat16, jnp.float32), (jnp.float16, jnp.float32), (jnp.float32, jnp.float32)):
        assert tree_utils.widen(jnp.ones(2, dtype)).dtype == wide
    tree = {"a": jnp.ones((2, 3), jnp.bfloat16), "b": [jnp.zeros(4, jnp.float32)]}
    assert [x.dtype for x in jax.tree.leaves(tree_utils.widen_tree(tree))] == [jnp.float32, jnp.float32]
    zeros = tree_utils.zeros_like_wide(tree)
    assert jax.tree.map(jnp.shape, zeros) == jax.tree.map(jnp.shape, tree)
    assert all(x.dtype == jnp.float32 and not x.any() for x in jax.tree.leaves(zeros))


def test_vdot_of_bfloat16_leaves_is_accumulated_in_float32():
    a = {"x": jnp.full((4096,), 1.0 / 3.0, jnp.bfloat16), "y": jnp.ones((3,), jnp.float32)}
    exact = 4096 * float(np.float32(jnp.bfloat16(1.0 / 3.0))) ** 2 + 3.0
    assert float(tree_utils.tree_vdot(a, a)) == pytest.approx(exact, rel=1e-6)
    assert [float(v) for v in tree_utils.leaf_vdots(a, a)] == pytest.approx([exact - 3.0, 3.0], rel=1e-6)
    assert tree_utils.leaf_names({"model": {"layers": [{"w": 0.0}]}}) == ["model.layers.0.w"]


@pytest.mark.parametrize("mode", riemann.MODES)
def test_the_lowered_step_is_the_one_integrate_path_runs(mode):
    spec = {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32), "b": jax.ShapeDtypeStruct((64,), jnp.float32)}
    batch = jax.ShapeDtypeStruct((8, 32), jnp.float32)

    def loss(p, x):
        return jnp.mean(jnp.tanh(x @ p["w"].T + p["b"][None, :]) ** 2)

    ma = riemann.lower_path_step(loss, spec, batch, mode=mode).compile().memory_analysis()
    params = 4 * (64 * 32 + 64)
    # accumulate: float32 accumulator + start + direction + t, w + batch; forward: start + direction + t + batch.
    expected = (3 * params + 2 * 4 if mode == "accumulate" else 2 * params + 4) + 8 * 32 * 4
    assert ma.argument_size_in_bytes == expected
    assert ma.alias_size_in_bytes == (params if mode == "accumulate" else 0)
    with pytest.raises(ValueError, match="mode="):
        riemann.lower_path_step(loss, spec, batch, mode="backward")
