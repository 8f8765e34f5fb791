import jax
import jax.numpy as jnp
import numpy as np
import pytest

from riemann import edits


def test_every_edit_has_reference_class_and_summary():
    for name, info in edits.REGISTRY.items():
        assert info.reference and info.summary, name
        assert info.paper_class in ("competitive", "decreased", "improved")
    assert edits.REGISTRY["dare"].paper_class == "competitive"
    assert edits.REGISTRY["bitdelta"].paper_class == "decreased"
    assert edits.REGISTRY["expo"].paper_class == "improved"


@pytest.mark.parametrize(
    "spec,canonical",
    [
        ("dare:p=0.9,k=0.5", "dare:p=0.9,k=0.5"),
        (" dare : k=0.5 , p=0.9 ", "dare:p=0.9,k=0.5"),
        ("bitdelta:magnitude_bits=2", "bitdelta:magnitude_bits=2"),
        ("bitdelta", "bitdelta"),
        ("dare:p=0.5,rescale=False", "dare:p=0.5,rescale=false"),
        ("lowrank:rank=4", "lowrank:rank=4"),
        ("biased_sign:p=none,k=1.5", "biased_sign:p=none,k=1.5"),
        ("expo:alpha=-0.3", "expo:alpha=-0.3"),
    ],
)
def test_parse_round_trips(spec, canonical):
    e = edits.parse(spec)
    assert e.spec == canonical
    assert edits.parse(e.spec) == e
    assert e.to_dict()["spec"] == canonical


def test_parsed_edit_equals_direct_call():
    d = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
    key = jax.random.key(1)
    np.testing.assert_array_equal(
        edits.parse("dare:p=0.3,k=0.5")(d, key=key)["w"], edits.dare(d, 0.3, k=0.5, key=key)["w"]
    )
    np.testing.assert_array_equal(
        edits.parse("bitdelta:magnitude_bits=2")(d)["w"], edits.bitdelta(d, magnitude_bits=2)["w"]
    )
    assert edits.parse("lowrank:rank=2").params["rank"] == 2
    assert isinstance(edits.parse("dare:p=1e-1").params["p"], float)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("drop:p=0.5", "unknown edit 'drop'; registered edits: biased_product, biased_sign, bitdelta, dare"),
        ("dare:q=0.5", r"dare: unknown parameter\(s\) \['q'\]; accepted: p, k, rescale"),
        ("dare:k=0.5", r"missing required parameter\(s\) \['p'\]"),
        ("dare:p=high", "p='high' is not float"),
        ("dare:p=1.5", r"p=1.5 is outside the accepted range \[0, 1\)"),
        ("dare:p", "not of the form param=value"),
        ("dare:p=0.1,p=0.2", "given twice"),
        ("", "non-empty"),
        ("lowrank:rank=2.5", "rank='2.5' is not int"),
        ("dare:p=0.5,rescale=maybe", "rescale='maybe' is not bool"),
    ],
)
def test_bad_specs_fail_before_any_work(spec, match):
    with pytest.raises(ValueError, match=match):
        edits.parse(spec)


def test_register_a_user_defined_edit():
    def halve(delta, factor: float = 0.5, *, include: str | None = None):
        return jax.tree.map(lambda x: x * factor, delta)

    try:
        edits.register("halve_test", reference="ours", paper_class="decreased")(halve)
        e = edits.parse("halve_test:factor=0.25")
        np.testing.assert_allclose(e({"w": jnp.ones(2)})["w"], [0.25, 0.25])
        assert not e.random
        with pytest.raises(ValueError, match="already registered"):
            edits.register("halve_test", reference="x", paper_class="decreased")(lambda d: d)
    finally:
        edits.REGISTRY.pop("halve_test", None)


def test_register_checks_annotations_and_names():
    def bad(delta, factor=0.5):
        return delta

    with pytest.raises(TypeError, match="parameter 'factor' has no type annotation"):
        edits.register("bad_test", reference="x", paper_class="decreased")(bad)
    with pytest.raises(ValueError, match="lowercase"):
        edits.register("Bad Name", reference="x", paper_class="decreased")
    with pytest.raises(ValueError, match="paper_class"):
        edits.register("x_test", reference="x", paper_class="neutral")


def test_only_scalars_beside_a_mapping_reach_specs():
    # dare's p is a float or a per-leaf mapping: a spec sets the float. lowrank's ndim (int or a
    # tuple of ints) stays Python's: a spec cannot set half of it.
    assert edits.parse("dare:p=0.3").params["p"] == 0.3
    with pytest.raises(ValueError, match=r"lowrank: unknown parameter\(s\) \['ndim'\]"):
        edits.parse("lowrank:fraction=0.5,ndim=2")
    with pytest.raises(ValueError, match=r"bitdelta: unknown parameter\(s\) \['ndim'\]"):
        edits.parse("bitdelta:ndim=none")


def test_noise_edits_multiply_each_entry_of_the_delta_by_a_random_factor():
    assert {n for n, info in edits.REGISTRY.items() if info.noise} == {"dare", "della"}
    d = {"w": jax.random.normal(jax.random.key(0), (64, 64))}
    dare = edits.parse("dare:p=0.7")
    assert dare.noise and dare.random
    ra, rb = (np.asarray(dare(d, key=jax.random.key(k))["w"] / d["w"]) for k in (1, 2))
    np.testing.assert_allclose(np.unique(np.round(ra, 4)), [0.0, round(1 / 0.3, 4)])  # dropped or rescaled
    assert not np.array_equal(ra, rb)  # another key, another mask of the same delta
    della = edits.parse("della:density=0.3,epsilon=0.1")
    assert della.noise and della.random
    assert not edits.parse("bitdelta").noise and not edits.parse("lowrank:rank=2").noise
    # Drop-only's mean part −p·ΔW lies along ΔW only when one rate covers every leaf.
    assert edits.parse("dare:p=0.5,rescale=false").noise
    assert not edits.parse("dare:p=0.5,rescale=false,include=w").noise
    assert edits.parse("dare:p=0.5,include=w").noise  # rescaled: no mean part at all
    per_leaf = edits.Edit("dare", {"p": {"w": 0.5}, "rescale": False})  # per-leaf rates: Python only
    assert not per_leaf.noise and edits.Edit("dare", {"p": {"w": 0.5}}).noise
