"""Calibration and test batches: the split that keeps every validated figure out of sample.

A pair's evaluation batches are divided, by a seeded permutation of their indices, into
*calibration* batches — the only data shared predictors (the gradient and curvature at
``W_post``), data-dependent edits (the biased split's mask) and the classification tolerance may
use — and disjoint *test* batches, on which every estimate and every measured loss change is
computed. Splitting whole batches keeps each batch's rows together, so the per-batch standard
errors stay those of the batches the pair was built with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from analysis.pairs.pair import Pair

DEFAULT_CALIBRATION = 4  # calibration batches
MIN_TEST = 8  # the fewest test batches a split may leave
# The permutation's seed is the run seed with this constant, apart from every other use of the seed.
_SPLIT_SALT = 0x53504C54


@dataclasses.dataclass(frozen=True)
class Split:
    """Which of ``n`` batches calibrate and which test, and how they were chosen."""

    calibration: tuple[int, ...]
    test: tuple[int, ...]
    seed: int

    def record(self) -> dict[str, Any]:
        """What ``results.json`` keeps under ``split``."""
        return {
            "calibration_batches": list(self.calibration),
            "test_batches": list(self.test),
            "seed": self.seed,
            "rule": "seeded permutation of batch indices: default_rng([seed, 0x53504C54]).permutation(n); "
            "the first `calibration` indices calibrate, the rest test",
        }


def choose(n: int, *, calibration: int = DEFAULT_CALIBRATION, seed: int = 0, min_test: int = MIN_TEST) -> Split:
    """Split ``n`` batch indices into ``calibration`` calibration batches and the rest as test
    batches (at least ``min_test``), by a permutation seeded with ``seed``.

    Example:
      >>> s = choose(12, calibration=4, seed=0)
      >>> len(s.calibration), len(s.test), set(s.calibration) & set(s.test)
      (4, 8, set())
    """
    if calibration < 1:
        raise ValueError(f"calibration={calibration}; at least 1 calibration batch is needed")
    if min_test < 1:
        raise ValueError(f"min_test={min_test}; at least 1 test batch is needed")
    if n < calibration + min_test:
        raise ValueError(
            f"the pair has {n} evaluation batches; a split needs at least {calibration + min_test} "
            f"({calibration} calibration + {min_test} test): give more evaluation data or a smaller batch size"
        )
    import numpy as np  # here, so that the command line's help can read the defaults without NumPy

    order = np.random.default_rng([seed, _SPLIT_SALT]).permutation(n)
    return Split(
        tuple(sorted(int(i) for i in order[:calibration])), tuple(sorted(int(i) for i in order[calibration:])), seed
    )


def split_pair(pair: Pair, *, calibration: int = DEFAULT_CALIBRATION, seed: int = 0, min_test: int = MIN_TEST) -> Pair:
    """``pair`` with its batches split (:func:`choose`): ``calibration`` holds the calibration
    batches, ``batches`` the test batches, and ``info["split"]`` the record of the split. A pair
    that already has calibration batches is returned as it is."""
    if pair.calibration:
        return pair
    s = choose(len(pair.batches), calibration=calibration, seed=seed, min_test=min_test)
    return dataclasses.replace(
        pair,
        batches=[pair.batches[i] for i in s.test],
        calibration=[pair.batches[i] for i in s.calibration],
        info={**pair.info, "split": s.record()},
    )
