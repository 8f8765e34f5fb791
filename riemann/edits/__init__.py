"""Delta edit operators: ``F(ΔW)`` for pruning, quantizing, compressing and extrapolating a
post-trained model's delta, each a pure function over a delta pytree that returns the edited
delta with the same structure, shapes and dtypes.

Competitive (Tang et al., 2024, §4): :func:`dare` (with the k-extension and "drop only"),
:func:`biased_sign` and :func:`biased_product` (Table 1), :func:`della`.
Decreased (§5): :func:`magnitude`, :func:`ties`, :func:`bitdelta`, :func:`lowrank`.
Improved (§6): :func:`expo`.

Random edits take an explicit ``key``; each leaf's randomness is ``fold_in(key, crc32(leaf
name))`` (:func:`leaf_key`). :data:`REGISTRY`, :func:`parse` and :func:`make` give every edit by name and compact
spec (``dare:p=0.9,k=0.5``) for command lines and reports; :func:`register` adds your own.

Merges of several fine-tunes of one base (mergekit's methods: ``linear``, ``task_arithmetic``,
``ties``, ``dare_ties``, ``della``, ``breadcrumbs``, ...) are in :mod:`riemann.edits.merge`
(``merge.merge(method, deltas, ...)`` → :class:`Merged`). They return one part per donor rather
than one edited delta, so they are not in :data:`REGISTRY`.
"""

from collections.abc import Mapping as _Mapping

from riemann.edits._bitdelta import bitdelta as bitdelta
from riemann.edits._bitdelta import check_bitdelta
from riemann.edits._common import EMBEDDING_PATTERN as EMBEDDING_PATTERN
from riemann.edits._common import leaf_key as leaf_key
from riemann.edits._dare import biased_product as biased_product
from riemann.edits._dare import biased_sign as biased_sign
from riemann.edits._dare import check_biased, check_dare, check_della
from riemann.edits._dare import dare as dare
from riemann.edits._dare import della as della
from riemann.edits._expo import check_expo
from riemann.edits._expo import expo as expo
from riemann.edits._lowrank import check_lowrank
from riemann.edits._lowrank import lowrank as lowrank
from riemann.edits._magnitude import check_magnitude, check_ties
from riemann.edits._magnitude import magnitude as magnitude
from riemann.edits._magnitude import ties as ties
from riemann.edits._registry import REGISTRY as REGISTRY
from riemann.edits._registry import Edit as Edit
from riemann.edits._registry import EditInfo as EditInfo
from riemann.edits._registry import make as make
from riemann.edits._registry import parse as parse
from riemann.edits._registry import register as register
from riemann.edits.merge import METHODS as MERGE_METHODS  # noqa: F401  (re-export)
from riemann.edits.merge import Merged as Merged

_TANG = "Tang et al., 2024, A Unified View of Delta Parameter Editing, arXiv:2410.13841"
register(
    "dare",
    reference="Yu et al., 2024, arXiv:2311.03099; k-extension: " + _TANG + " (Fig. 1/2)",
    paper_class="competitive",
    random=True,
    validate=check_dare,
    # Without rescaling the mean part −(1 − k)·p·ΔW lies along ΔW only when one rate covers every leaf.
    noise=lambda p: (
        bool(p.get("rescale", True)) or not (isinstance(p.get("p"), _Mapping) or p.get("include") or p.get("exclude"))
    ),
)(dare)
register("biased_sign", reference=_TANG + " (Table 1, Biased ΔW)", paper_class="competitive", validate=check_biased)(
    biased_sign
)
register(
    "biased_product",
    reference=_TANG + " (Table 1, Biased ΔW·∇L)",
    paper_class="competitive",
    needs_grad=True,
    validate=check_biased,
)(biased_product)
register(
    "della",
    reference="Deep et al., 2024, DELLA-Merging, arXiv:2406.11617",
    paper_class="competitive",
    random=True,
    validate=check_della,
    noise=True,
)(della)
register(
    "magnitude",
    reference="Yadav et al., 2023, TIES-Merging (trim), arXiv:2306.01708",
    paper_class="decreased",
    validate=check_magnitude,
)(magnitude)
register(
    "ties",
    reference="Yadav et al., 2023, TIES-Merging, arXiv:2306.01708",
    paper_class="decreased",
    multi=True,
    validate=check_ties,
)(ties)
register(
    "bitdelta",
    reference="Liu et al., 2024, BitDelta, arXiv:2402.10193; extensions: " + _TANG + " (Fig. 4/5)",
    paper_class="decreased",
    random=lambda p: p.get("magnitudes", "constant") != "constant",
    validate=check_bitdelta,
)(bitdelta)
register(
    "lowrank",
    reference="Lu et al., 2024, Twin-Merging, arXiv:2406.15479",
    paper_class="decreased",
    random=lambda p: p.get("method") == "randomized",
    validate=check_lowrank,
)(lowrank)
register("expo", reference="Zheng et al., 2024, EXPO, arXiv:2404.16792", paper_class="improved", validate=check_expo)(
    expo
)

del check_bitdelta, check_biased, check_dare, check_della, check_expo, check_lowrank, check_magnitude, check_ties
