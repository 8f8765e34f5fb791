"""Pairs: a pre-trained and a post-trained model with the loss, data and metric they are judged on.

- :mod:`~analysis.pairs.pair`: the :class:`Pair` type.
- :mod:`~analysis.pairs.registry`: names → loaders (``PAIRS``, ``register_pair``, ``load_pair``).
- :mod:`~analysis.pairs.split`: calibration and test batches.
- :mod:`~analysis.pairs.user`: a pair from two Hugging Face checkpoints and a data file.
- :mod:`~analysis.pairs.data`: JSONL and image data, tokenization, batches, and the losses.
- :mod:`~analysis.pairs.accuracy`: every task metric (token, top-1, exact match, DPO reward).
- :mod:`~analysis.pairs.decode`: greedy decoding for exact match.
- :mod:`~analysis.pairs.mlp`: the ``mlp-teacher`` pair, trained in seconds.
- :mod:`~analysis.pairs.workbench`: the built-in pairs, trained offline and cached.
"""

from typing import Any

from analysis.pairs.pair import Pair as Pair
from analysis.pairs.registry import PAIRS as PAIRS
from analysis.pairs.registry import PairSource as PairSource
from analysis.pairs.registry import load_pair as load_pair
from analysis.pairs.registry import register_pair as register_pair


def __getattr__(name: str) -> Any:
    # from_checkpoints needs the model code (Flax); the registry and the Pair type do not.
    if name == "from_checkpoints":
        from analysis.pairs.user import from_checkpoints

        return from_checkpoints
    raise AttributeError(f"module 'analysis.pairs' has no attribute {name!r}")
