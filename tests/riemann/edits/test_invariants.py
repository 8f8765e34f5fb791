"""Every registered edit through the same invariants (as optax tests every transformation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from riemann import edits

# One representative spec per registered edit, plus variants that take other code paths.
SPECS = [
    "dare:p=0.7",
    "dare:p=0.5,k=-1",
    "dare:p=0.3,rescale=false",
    "biased_sign:k=0.5",
    "biased_sign:p=0.3,k=1.5",
    "biased_product:k=0.5",
    "della:density=0.4,epsilon=0.2",
    "magnitude:keep=0.3",
    "magnitude:keep=0.5,scope=global,rescale=true",
    "ties:keep=0.2,lam=1.5",
    "bitdelta",
    "bitdelta:magnitude_bits=2",
    "bitdelta:magnitude_bits=3,blocks=width,scope=global",
    "bitdelta:magnitudes=normal",
    "bitdelta:magnitudes=uniform,multiple=2",
    "lowrank:rank=3",
    "lowrank:fraction=0.5",
    "lowrank:energy=0.8",
    "lowrank:rank=4,method=randomized,oversample=0,power_iters=0",
    "expo:alpha=-0.4",
]


def test_every_registered_edit_is_covered():
    assert {s.split(":")[0] for s in SPECS} == set(edits.REGISTRY)


def make_delta(dtype):
    k = jax.random.split(jax.random.key(42), 4)
    return {
        "model": {
            "layers": [
                {
                    "mlp": {"down_proj": {"weight": jax.random.normal(k[0], (12, 20), dtype)}},
                    "input_layernorm": {"weight": jax.random.normal(k[1], (12,), dtype)},
                }
            ]
        },
        "embed_tokens": {"weight": jax.random.normal(k[2], (30, 12), dtype)},
        "scalar": jax.random.normal(k[3], (), dtype),
    }


def run(spec, delta, key):
    e = edits.parse(spec)
    grad = jax.tree.map(lambda x: jnp.flip(x).astype(jnp.float32), delta) if e.needs_grad else None
    return e(delta, key=key, grad=grad)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("spec", SPECS)
def test_structure_dtype_determinism_finiteness(spec, dtype):
    delta = make_delta(dtype)
    out = run(spec, delta, jax.random.key(7))
    assert jax.tree.structure(out) == jax.tree.structure(delta)
    for a, b in zip(jax.tree.leaves(delta), jax.tree.leaves(out)):
        assert a.shape == b.shape and b.dtype == a.dtype
        assert bool(jnp.all(jnp.isfinite(b)))
    again = run(spec, delta, jax.random.key(7))
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    if edits.parse(spec).random:
        other = run(spec, delta, jax.random.key(8))
        assert any(
            not np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
            for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(other))
        )


@pytest.mark.parametrize("spec", SPECS)
def test_zero_delta_gives_zero_without_nan(spec):
    delta = jax.tree.map(jnp.zeros_like, make_delta(jnp.float32))
    for leaf in jax.tree.leaves(run(spec, delta, jax.random.key(0))):
        np.testing.assert_array_equal(leaf, 0.0)


@pytest.mark.parametrize("spec", SPECS)
def test_input_is_not_modified(spec):
    delta = jax.tree.map(np.asarray, make_delta(jnp.float32))
    copy = jax.tree.map(np.copy, delta)
    run(spec, delta, jax.random.key(3))
    for a, b in zip(jax.tree.leaves(delta), jax.tree.leaves(copy)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec", [s for s in SPECS if edits.parse(s).random])
def test_leaf_randomness_depends_on_key_and_name_only(spec):
    delta = make_delta(jnp.float32)
    full = run(spec, delta, jax.random.key(5))
    w = delta["model"]["layers"][0]["mlp"]["down_proj"]["weight"]
    alone = run(spec, {"model": {"layers": [{"mlp": {"down_proj": {"weight": w}}}]}}, jax.random.key(5))
    np.testing.assert_array_equal(
        full["model"]["layers"][0]["mlp"]["down_proj"]["weight"],
        alone["model"]["layers"][0]["mlp"]["down_proj"]["weight"],
    )


@pytest.mark.parametrize("spec", SPECS)
def test_sharded_leaf_gives_the_same_edit(spec):
    w = jax.random.normal(jax.random.key(1), (16, 24))
    mesh = jax.make_mesh((8,), ("fsdp",))
    sharded = jax.device_put(w, jax.sharding.NamedSharding(mesh, jax.P("fsdp")))
    a = run(spec, {"w": w}, jax.random.key(9))["w"]
    b = run(spec, {"w": sharded}, jax.random.key(9))["w"]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
