"""Named pairs: one registry from a name to the function that loads it, read by the command line,
the main job and the reproductions alike.

Built in: the workbench pairs (trained offline on first use, then cached; see
:mod:`analysis.pairs.workbench`) and ``mlp-teacher``, a pair small enough to train in seconds.
Users add their own with :func:`register_pair`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from analysis.pairs.pair import Pair


class Loader(Protocol):
    def __call__(self, *, size: str, seed: int, progress: bool, log: Callable[[str], None]) -> Pair: ...


@dataclasses.dataclass(frozen=True)
class PairSource:
    """A registered pair: its name, what it is, how to load it, and its kind (``workbench`` pairs
    are what ``--pair all`` means; ``example`` pairs are named explicitly)."""

    name: str
    description: str
    load: Loader
    kind: str = "workbench"


PAIRS: dict[str, PairSource] = {}
DEFAULT = ("lm/arithmetic", "lm/arithmetic-dpo", "vit/rotated")  # what a bare `riemann run` analyses


def register_pair(name: str, load: Loader, *, description: str, kind: str = "workbench") -> PairSource:
    """Register ``load`` under ``name``; refuses a name already taken."""
    if name in PAIRS:
        raise ValueError(f"a pair named {name!r} is already registered ({PAIRS[name].description})")
    if kind not in ("workbench", "example"):
        raise ValueError(f"kind={kind!r}; expected 'workbench' or 'example'")
    PAIRS[name] = source = PairSource(name, description, load, kind)
    return source


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered names, all or of one kind, in registration order."""
    return tuple(n for n, s in PAIRS.items() if kind is None or s.kind == kind)


def check_names(requested: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``requested`` without repeats, ``all`` expanded to the workbench pairs; unknown names are
    refused with the accepted ones."""
    wanted = list(names("workbench")) if "all" in requested else list(requested)
    unknown = [n for n in wanted if n not in PAIRS]
    if unknown:
        raise ValueError(f"unknown pair(s) {unknown}; accepted: {', '.join(PAIRS)}, all")
    return tuple(dict.fromkeys(wanted))


def load_pair(
    name: str, *, size: str = "full", seed: int = 0, progress: bool = True, log: Callable[[str], None] = print
) -> Pair:
    """Load a registered pair (workbench pairs are built first if the cache lacks them)."""
    if name not in PAIRS:
        raise ValueError(f"unknown pair {name!r}; accepted: {', '.join(PAIRS)}")
    return PAIRS[name].load(size=size, seed=seed, progress=progress, log=log)


def _workbench(name: str) -> Loader:
    def load(*, size: str, seed: int, progress: bool, log: Callable[[str], None]) -> Pair:
        from analysis.pairs import workbench

        return workbench.load_pair(name, size, progress=progress, log=log)

    return load


def _mlp_teacher(*, size: str, seed: int, progress: bool, log: Callable[[str], None]) -> Pair:
    from analysis.pairs.mlp import MLPConfig, build_pair

    return build_pair(MLPConfig(seed=seed))


_WORKBENCH: dict[str, str] = {
    "lm/arithmetic": "Llama-architecture decoder, SFT on two-digit addition (response cross-entropy)",
    "lm/strings": "the same decoder, SFT on word reversal",
    "lm/arithmetic-dpo": "the arithmetic model and its DPO successor (DPO loss)",
    "vit/rotated": "CLIP-ViT encoder fine-tuned on rotated digits",
    "vit/inverted": "the same encoder fine-tuned on inverted digits",
    "vit/parity": "the same encoder fine-tuned to label digit parity",
}
for _name, _description in _WORKBENCH.items():
    register_pair(_name, _workbench(_name), description=_description)
register_pair(
    "mlp-teacher",
    _mlp_teacher,
    kind="example",
    description="a 10-second MLP pair: pre-trained on one teacher network, post-trained on a shifted one",
)
