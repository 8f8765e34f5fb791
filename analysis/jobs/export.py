"""``riemann export``: an edited model ``W_pre + F(ΔW)`` written as a Hugging Face checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from analysis import files
from analysis.hf import checkpoints
from analysis.study import artefact, merges, suite
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


def export_merge(out: str | os.PathLike, plan: Any, *, dtype: Any = None) -> Path:
    """Write the merge of ``plan`` (:class:`analysis.study.merges.Plan`), ``W_base + Σ_j part_j``, to
    ``out`` (new or empty), with the tokenizer of the config's ``tokenizer_source`` (default: the
    base's): the model ``riemann merge`` scores. Every checkpoint is loaded in ``dtype`` (default:
    the config's ``dtype``, else as stored) before its delta is taken, as ``riemann merge`` and
    mergekit load them, and the merge is rounded to that dtype once, as
    :func:`analysis.study.artefact.stored` rounds the artefact ``riemann merge`` measures."""
    import jax

    from analysis.jobs import merge

    out = files.check_new_dir(out)
    dtype = dtype or plan.config.dtype
    base = checkpoints.load(plan.base, dtype=dtype)
    posts = [checkpoints.load(p, dtype=dtype).params for p in plan.donors]
    deltas = [artefact.delta_of(base.params, p) for p in posts]
    result = merge.merged_from_deltas(plan, base.params, deltas)
    # W_base + Σ parts in float32, rounded once to the loaded dtype: what artefact.stored gives riemann merge.
    params = jax.tree.map(
        lambda b, t: (b.astype("float32") + t.astype("float32")).astype(b.dtype), base.params, result.total
    )
    tok = plan.config.tokenizer_source
    named = [p for d, p in zip(plan.config.donors, plan.donors) if tok is not None and merges.same_model(d.model, tok)]
    source = named[0] if named else plan.base
    return checkpoints.save(out, base, params, dtype=dtype, copy_from=source)
