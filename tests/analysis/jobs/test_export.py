"""``riemann export``: W_pre + F(ΔW) written as a Hugging Face checkpoint, never over an existing one."""

import jax
import numpy as np

from analysis.cli import main
from analysis.hf import checkpoints


def test_export_writes_the_edited_model(user_pair, tmp_path):
    out = tmp_path / "exported"
    assert (
        main(
            [
                "export",
                "--pre",
                str(user_pair / "pre"),
                "--post",
                str(user_pair / "post"),
                "--edit",
                "expo:alpha=0.5",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    pre, post, got = (checkpoints.load(p) for p in (user_pair / "pre", user_pair / "post", out))
    for a, b, c in zip(jax.tree.leaves(pre.params), jax.tree.leaves(post.params), jax.tree.leaves(got.params)):
        np.testing.assert_allclose(
            np.asarray(c), np.asarray(a) + 1.5 * (np.asarray(b) - np.asarray(a)), rtol=1e-5, atol=1e-6
        )
    assert (out / "tokenizer.json").is_file()
    assert (
        main(
            [
                "export",
                "--pre",
                str(user_pair / "pre"),
                "--post",
                str(user_pair / "post"),
                "--edit",
                "dare:p=0.5",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )  # never overwritten
