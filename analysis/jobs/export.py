"""``riemann export``: an edited model ``W_pre + F(ΔW)`` written as a Hugging Face checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax

from analysis import files
from analysis.hf import checkpoints
from analysis.study import suite
from riemann import edits


def check_edit(spec: str) -> edits.Edit:
    """The parsed edit, refused if it needs the gradient at ``W_post`` (which export does not compute)."""
    edit = suite.check_specs([spec])[0]
    if edit.needs_grad:
        raise ValueError(
            f"edit {edit.spec!r} needs the gradient at W_post, which export does not compute; "
            "use riemann run or the Python API"
        )
    return edit


def edited_params(pre: Any, post: Any, spec: str, *, seed: int = 0) -> Any:
    """``W_pre + F(ΔW)`` for the edit ``spec``, computed in float32 and cast to each tensor's dtype;
    a random edit gets the key ``riemann run`` gives it (:func:`analysis.study.suite.edit_key`)."""
    edit = check_edit(spec)
    delta = jax.tree.map(lambda a, b: b.astype("float32") - a.astype("float32"), pre, post)
    edited = edit(delta, key=suite.edit_key(seed, edit.spec) if edit.random else None)
    return jax.tree.map(lambda a, d, ref: (a.astype("float32") + d).astype(ref.dtype), pre, edited, post)


def export(out: str | os.PathLike, pre: Any, template: checkpoints.Checkpoint, spec: str, *, seed: int = 0) -> Path:
    """Write ``W_pre + F(ΔW)`` (``W_post`` from ``template``, whose config and tokenizer are copied)
    to ``out``, which must not exist or be empty."""
    out = files.check_new_dir(out)
    return checkpoints.save(out, template, edited_params(pre, template.params, spec, seed=seed))
