"""The unit every analysis works on: a pre-trained / post-trained pair with its task loss."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jax

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Pair:
    """A pre/post pair with its task loss, held-out batches and (optionally) accuracy.

    ``loss_fn(params, batch)`` is the loss the estimators use; ``batches`` are held-out data never
    seen in post-training; ``accuracy_fn(params, batches)`` is the task metric the paper's plots use
    (see :mod:`analysis.pairs.accuracy`). ``template`` (an ``analysis.hf.checkpoints.Checkpoint``),
    when present, is what an edited model is saved as (``riemann export``).

    ``calibration`` is empty until the pair is split (:func:`analysis.pairs.split.split_pair`):
    then ``calibration`` holds the batches that shared predictors and tolerances are fitted on and
    ``batches`` the disjoint test batches every estimate and measurement is validated on.
    """

    name: str
    description: str
    pre: PyTree
    post: PyTree
    loss_fn: Callable[[PyTree, Any], jax.Array]
    batches: list[Any]
    accuracy_fn: Callable[[PyTree, list[Any]], float] | None
    info: dict[str, Any]
    template: Any = None
    calibration: list[Any] = dataclasses.field(default_factory=list)
