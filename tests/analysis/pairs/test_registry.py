"""The pair registry: one name → loader table for the command line, the main job and reproductions."""

import jax
import numpy as np
import pytest

from analysis import pairs
from analysis.pairs import registry
from analysis.pairs.mlp import MLPConfig, build_pair


def test_built_in_pairs_are_registered_with_their_kind():
    assert registry.names("workbench") == (
        "lm/arithmetic",
        "lm/strings",
        "lm/arithmetic-dpo",
        "vit/rotated",
        "vit/inverted",
        "vit/parity",
    )
    assert registry.names("example") == ("mlp-teacher",)
    assert registry.check_names(["all"]) == registry.names("workbench")
    assert registry.check_names(["vit/parity", "mlp-teacher", "vit/parity"]) == ("vit/parity", "mlp-teacher")
    with pytest.raises(ValueError, match=r"unknown pair\(s\) \['lm/poetry'\]; accepted: lm/arithmetic"):
        registry.check_names(["lm/poetry"])
    with pytest.raises(ValueError, match="unknown pair 'all'"):  # 'all' names several pairs, not one to load
        registry.load_pair("all")


def test_loading_by_name_is_loading_directly():
    got = pairs.load_pair("mlp-teacher", seed=3, progress=False)
    ref = build_pair(MLPConfig(seed=3))
    assert got.name == ref.name == "mlp-teacher"
    for a, b in zip(jax.tree.leaves(got.post), jax.tree.leaves(ref.post)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_users_register_their_own_pairs(monkeypatch):
    monkeypatch.setattr(registry, "PAIRS", dict(registry.PAIRS))
    made = []

    def load(*, size, seed, progress, log):
        made.append((size, seed))
        return build_pair(MLPConfig(seed=seed, pre_steps=10, post_steps=10))

    registry.register_pair("my/pair", load, description="a user's pair", kind="example")
    assert registry.load_pair("my/pair", seed=7).name == "mlp-teacher" and made == [("full", 7)]
    with pytest.raises(ValueError, match="already registered"):
        registry.register_pair("my/pair", load, description="again")
    with pytest.raises(ValueError, match="kind='toy'"):
        registry.register_pair("other", load, description="x", kind="toy")
