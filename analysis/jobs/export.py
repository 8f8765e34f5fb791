"""``riemann export``: an edited model ``W_pre + F(ΔW)`` written as a Hugging Face checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from analysis import files
from analysis.hf import checkpoints
from analysis.study import artefact, suite
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


def edited_params(pre: Any, post: Any, spec: str, *, seed: int = 0, mask: int = 0) -> Any:
    """``W_pre + F(ΔW)`` for the edit ``spec``, computed in float32 and cast to each tensor's dtype:
    the artefact ``riemann run`` measured (:func:`analysis.study.artefact.stored`); a random edit
    gets the key of its ``mask``-th draw in ``riemann run`` (:func:`analysis.study.suite.edit_key`)."""
    edit = check_edit(spec)
    delta = artefact.delta_of(pre, post)
    edited = edit(delta, key=suite.edit_key(seed, edit.name, mask) if edit.random else None)
    art = artefact.stored(pre, post, delta, edited)
    artefact.warn_unmoved(art, f"export {edit.spec}")
    return art.params


def export(
    out: str | os.PathLike, pre: Any, template: checkpoints.Checkpoint, spec: str, *, seed: int = 0, mask: int = 0
) -> Path:
    """Write ``W_pre + F(ΔW)`` (``W_post`` from ``template``, whose config and tokenizer are copied)
    to ``out``, which must not exist or be empty; a random edit's ``mask``-th draw."""
    out = files.check_new_dir(out)
    return checkpoints.save(out, template, edited_params(pre, template.params, spec, seed=seed, mask=mask))
