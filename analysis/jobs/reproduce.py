"""Reproductions of the paper's experiments (Tang et al., 2024, arXiv 2410.13841) on the
workbench pairs, or on any pair the caller loads.

Each experiment sweeps the edits of one figure or table and records, per point, the paper's
approximation term (left rule, C = 5 on ``W_post → W_edit``), the first-order term at
``W_post``, the measured loss change, the task accuracy and the per-module terms. It writes
``<name>.json``, ``<name>.md`` (the paper's claim next to ours) and ``<name>.png``.

Experiments (``EXPERIMENTS``):

- ``fig1``: DARE extension, p ∈ {0.1 … 0.9} × k ∈ {−1, −0.5, 0, 0.5, 0.8}, language (``lm/arithmetic``).
- ``fig2``: the same grid on the vision pairs.
- ``table1``: Random / Biased ΔW / Biased ΔW·∇L over k ∈ {0.5 … 1.5} (``lm/arithmetic``).
- ``fig3``: per-module terms (box plots) for DARE and drop-only over p, TIES trim over the kept
  fraction, BitDelta and low rank.
- ``fig4``: BitDelta with 0–5 magnitude bits.
- ``fig5``: BitDelta multiples m ∈ [0.5, 3] with constant, normal and uniform magnitudes.
- ``fig6``: EXPO term and measured change over α ∈ [0, 0.6] (the DPO pair, as Zephyr in the paper).
- ``fig7``: EXPO α ∈ [−1, 1]: interpolation vs extrapolation on every pair.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

import riemann
from analysis import files
from analysis.pairs import Pair
from analysis.study import suite

Loader = Callable[[str], Pair]
VISION = ("vit/rotated", "vit/inverted", "vit/parity")


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    claim: str
    pairs: tuple[str, ...]
    specs: Callable[[], list[str]]
    estimators: tuple[str, ...] = ("riemann", "first-order")


def _g(x: float) -> str:
    return f"{x:g}"


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "fig1",
            "Fig. 1 — DARE extension (p × k), language",
            "The approximation term stays near zero over p and k (including k < 0), and accuracy is kept "
            "until large p; k < 0 flips the dropped entries and still works.",
            ("lm/arithmetic",),
            lambda: [
                f"dare:p={_g(p)},k={_g(k)}"
                for k in (-1.0, -0.5, 0.0, 0.5, 0.8)
                for p in np.round(np.arange(0.1, 0.91, 0.1), 2)
            ],
        ),
        Experiment(
            "fig2",
            "Fig. 2 — DARE extension (p × k), vision",
            "As Fig. 1, on the ViT task vectors: accuracy is kept over the grid until large p.",
            VISION,
            lambda: [
                f"dare:p={_g(p)},k={_g(k)}"
                for k in (-1.0, -0.5, 0.0, 0.5, 0.8)
                for p in np.round(np.arange(0.1, 0.91, 0.1), 2)
            ],
        ),
        Experiment(
            "table1",
            "Table 1 — random vs biased rescaling over k",
            "Random (DARE extension) and Biased ΔW keep accuracy for every k; Biased ΔW·∇L collapses (0 % "
            "except 26.76 % at k = 0.9): the mask must be independent of ΔW ⊙ ∇L, not merely random.",
            ("lm/arithmetic",),
            lambda: [
                f"{v}k={_g(k)}"
                for v in ("dare:p=0.5,", "biased_sign:", "biased_product:")
                for k in (0.5, 0.7, 0.9, 1.1, 1.3, 1.5)
            ],
            ("riemann", "first-order", "second-order"),
        ),
        Experiment(
            "fig3",
            "Fig. 3 — per-module approximation terms",
            "Per-module terms of DARE and drop-only spread around zero; TIES trim, BitDelta and low rank "
            "give mostly positive per-module terms.",
            ("lm/arithmetic", "vit/rotated"),
            lambda: (
                [f"dare:p={p}" for p in (0.1, 0.5, 0.9)]
                + [f"dare:p={p},rescale=false" for p in (0.1, 0.5, 0.9)]
                + [f"magnitude:keep={q}" for q in (0.9, 0.5, 0.1)]
                + ["bitdelta"]
                + [f"lowrank:fraction={f}" for f in (0.5, 0.1)]
            ),
        ),
        Experiment(
            "fig4",
            "Fig. 4 — BitDelta with more magnitude bits",
            "More magnitude bits shrink the term and the loss increase; at 4 bits the edited model matches or "
            "beats the post-trained one.",
            ("lm/arithmetic", "vit/rotated"),
            lambda: [f"bitdelta:magnitude_bits={b}" for b in range(6)],
        ),
        Experiment(
            "fig5",
            "Fig. 5 — BitDelta magnitude multiple and random magnitudes",
            "The loss is steep around m = 1 (mean |ΔW|) and grows away from it; normal or uniform magnitudes "
            "with the same mean behave like constant ones.",
            ("lm/arithmetic", "vit/rotated"),
            lambda: [
                f"bitdelta:multiple={_g(m)}" + ("" if d == "constant" else f",magnitudes={d}")
                for d in ("constant", "normal", "uniform")
                for m in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
            ],
        ),
        Experiment(
            "fig6",
            "Fig. 6 — EXPO term over α ∈ [0, 0.6]",
            "The term falls as α grows from 0, reaches a trough, then turns positive.",
            ("lm/arithmetic-dpo",),
            lambda: [f"expo:alpha={_g(a)}" for a in np.round(np.arange(0.05, 0.61, 0.05), 2)],
        ),
        Experiment(
            "fig7",
            "Fig. 7 — EXPO α ∈ [−1, 1]: interpolation vs extrapolation",
            "Interpolation (α < 0) beat extrapolation on most tasks (all but IFEval).",
            ("lm/arithmetic", "lm/strings", "lm/arithmetic-dpo") + VISION,
            lambda: [f"expo:alpha={_g(a)}" for a in np.round(np.arange(-1.0, 1.01, 0.1), 2) if abs(a) > 1e-9],
            ("first-order",),
        ),
    )
}


def sweep(
    pair: Pair, specs: Sequence[str], *, estimators: Sequence[str], seed: int = 0, progress: bool = False
) -> dict[str, Any]:
    """Score ``specs`` on ``pair`` (no pair-level checks): per edit the chosen estimators, the
    measured change, the accuracy, the per-module terms."""
    parsed = suite.check_specs(specs)
    scorer = suite.Scorer(pair, seed=seed, estimators=estimators)
    pair = scorer.pair  # split: estimates and measurements on its test batches
    loss_post = float(scorer.loss_post.mean())
    # L(pre) − L(post) is the measured change of moving back by −ΔW: one forward per batch.
    back = jax.tree.map(lambda d: -d, scorer.delta)
    gain = riemann.estimate(
        pair.loss_fn, pair.post, back, pair.batches, method="measured", loss_post=scorer.loss_post
    ).value
    loss_pre = loss_post + gain
    acc_post = scorer.accuracy_post
    records = []
    with riemann.progress_bar(progress, desc=pair.name, unit="edit", total=len(parsed), leave=False) as bar:
        for e in parsed:
            records.append(scorer.record(scorer.score(e)))
            bar.update(1)
    return {
        "pair": pair.name,
        "loss_pre": loss_pre,
        "loss_post": loss_post,
        "gain": gain,
        "accuracy_name": pair.info.get("accuracy_name", "accuracy"),
        "accuracy_post": acc_post,
        "edits": records,
    }


def run_experiment(
    name: str, load_pair: Loader, out: Path, *, seed: int = 0, progress: bool = True, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run one experiment and write its JSON, Markdown and figure into ``out``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; accepted: {', '.join(EXPERIMENTS)}, all")
    exp = EXPERIMENTS[name]
    t0 = time.perf_counter()
    specs = exp.specs()
    suite.check_specs(specs)
    results = []
    for pname in exp.pairs:
        log(f"[reproduce {name}] {pname}: {len(specs)} edits")
        results.append(sweep(load_pair(pname), specs, estimators=exp.estimators, seed=seed, progress=progress))
    record = {
        "experiment": name,
        "title": exp.title,
        "paper_claim": exp.claim,
        "seed": seed,
        "specs": specs,
        "estimators": list(exp.estimators),
        "pairs": results,
        "ours": FINDINGS[name](results),
        "elapsed_s": time.perf_counter() - t0,
    }
    import matplotlib.pyplot as plt

    from analysis.reporting import paper_figures

    fig = paper_figures.FIGURES[name](record)
    files.save_figure(fig, out / f"{name}.png")
    plt.close(fig)
    files.write_text(out / f"{name}.md", markdown(record))
    files.write_json(out / f"{name}.json", record)
    return record


# --- what we find, in numbers -------------------------------------------------------------------


def _param(r: dict[str, Any], key: str, default: Any = None) -> Any:
    from analysis.study.claims import param

    v = param(r, key)
    return default if v is None else v


def _dare_grid(results: list[dict[str, Any]]) -> str:
    out = []
    for res in results:
        edits = res["edits"]
        acc = res["accuracy_post"]
        kept = [r for r in edits if r["class"]["measured"] == "competitive"]
        worst = max(edits, key=lambda r: r["measured"])
        term = max(abs(r["estimates"]["riemann"]) for r in edits if _param(r, "p") <= 0.5)
        first = max(abs(r["estimates"]["first-order"]) for r in edits)
        out.append(
            f"`{res['pair']}`: {len(kept)} of {len(edits)} grid points competitive; |term| ≤ {term:.3g} for p ≤ 0.5; "
            f"|first-order| ≤ {first:.3g} everywhere; worst {worst['spec']} (ΔL {worst['measured']:+.3g}, "
            f"{res['accuracy_name']} {worst['accuracy']:.3f} vs {acc:.3f} post)"
        )
    return "; ".join(out) + "."


def _table1(results: list[dict[str, Any]]) -> str:
    res = results[0]
    out = []
    for variant in ("dare", "biased_sign", "biased_product"):
        rs = [r for r in res["edits"] if r["name"] == variant]
        out.append(
            f"{variant}: {res['accuracy_name']} "
            + "/".join(f"{r['accuracy']:.2f}" for r in rs)
            + " over k; measured ΔL "
            + "/".join(f"{r['measured']:+.2g}" for r in rs)
        )
    return "; ".join(out) + f" (post-trained {res['accuracy_post']:.2f})."


def _fig3(results: list[dict[str, Any]]) -> str:
    out = []
    for res in results:
        parts = []
        for r in res["edits"]:
            v = np.array(list(r["modules"].values()))
            parts.append(f"{r['spec']} {np.mean(v > 0):.0%} positive")
        out.append(f"`{res['pair']}`: " + ", ".join(parts))
    return "Share of modules with a positive term — " + "; ".join(out) + "."


def _fig4(results: list[dict[str, Any]]) -> str:
    return (
        "; ".join(
            f"`{res['pair']}`: measured ΔL by bits 0–5 "
            + "/".join(f"{r['measured']:+.2g}" for r in res["edits"])
            + f", {res['accuracy_name']} "
            + "/".join(f"{r['accuracy']:.3f}" for r in res["edits"])
            + f" (post {res['accuracy_post']:.3f})"
            for res in results
        )
        + "."
    )


def _fig5(results: list[dict[str, Any]]) -> str:
    out = []
    for res in results:
        best = {
            d: min((r for r in res["edits"] if _param(r, "magnitudes", "constant") == d), key=lambda r: r["measured"])
            for d in ("constant", "normal", "uniform")
        }
        out.append(
            f"`{res['pair']}`: lowest loss at m = "
            + ", ".join(f"{_param(r, 'multiple', 1.0):g} ({d}, ΔL {r['measured']:+.2g})" for d, r in best.items())
        )
    return "; ".join(out) + "."


def _fig6(results: list[dict[str, Any]]) -> str:
    res = results[0]
    terms = [(_param(r, "alpha"), r["estimates"]["riemann"], r["measured"]) for r in res["edits"]]
    a_min, t_min, _ = min(terms, key=lambda x: x[1])
    turns = next((a for a, t, _ in terms if a > a_min and t > 0), None)
    return (
        f"`{res['pair']}`: the term is lowest at α = {a_min:g} ({t_min:+.3g}); "
        + (f"positive from α = {turns:g}" if turns is not None else "still negative at α = 0.6")
        + f"; measured ΔL at α = 0.6: {terms[-1][2]:+.3g}."
    )


def _fig7(results: list[dict[str, Any]]) -> str:
    out, interp, helped = [], 0, 0
    for res in results:
        best = min(res["edits"], key=lambda r: r["measured"])
        a = _param(best, "alpha")
        if best["measured"] >= 0:
            out.append(
                f"`{res['pair']}`: no α ≠ 0 on the grid lowers the loss (least increase at α = {a:g}, "
                f"ΔL {best['measured']:+.3g})"
            )
            continue
        helped += 1
        interp += a < 0
        out.append(f"`{res['pair']}` best α = {a:g} (ΔL {best['measured']:+.3g})")
    return (
        f"Some α lowers the loss on {helped} of {len(results)} pairs; interpolation is the better direction on "
        f"{interp} of those {helped}: " + "; ".join(out) + "."
    )


FINDINGS: dict[str, Callable[[list[dict[str, Any]]], str]] = {
    "fig1": _dare_grid,
    "fig2": _dare_grid,
    "table1": _table1,
    "fig3": _fig3,
    "fig4": _fig4,
    "fig5": _fig5,
    "fig6": _fig6,
    "fig7": _fig7,
}


def markdown(record: dict[str, Any]) -> str:
    lines = [
        f"# {record['title']}",
        "",
        f"**Paper:** {record['paper_claim']}",
        "",
        f"**Ours:** {record['ours']}",
        "",
        f"![{record['experiment']}]({record['experiment']}.png)",
        "",
        f"Term = the paper's Eq. 1 (left rule, C = 5, on W_post → W_edit); first-order = ⟨∇L(W_post), ΔW~⟩; "
        f"seed {record['seed']}; {record['elapsed_s']:.0f} s.",
        "",
    ]
    for res in record["pairs"]:
        ests = record["estimators"]
        lines += [
            f"## `{res['pair']}`",
            "",
            f"Loss pre {res['loss_pre']:.4g}, post {res['loss_post']:.4g}; {res['accuracy_name']} post "
            f"{res['accuracy_post']:.3f}."
            if res["accuracy_post"] is not None
            else "",
            "",
            "| edit | " + " | ".join(ests) + f" | measured ΔL | class | {res['accuracy_name']} |",
            "|---|" + "---|" * len(ests) + "---|---|---|",
        ]
        for r in res["edits"]:
            acc = "–" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
            lines.append(
                f"| `{r['spec']}` | "
                + " | ".join(f"{r['estimates'][e]:+.4g}" for e in ests)
                + f" | {r['measured']:+.4g} | {r['class']['measured']} | {acc} |"
            )
        lines.append("")
    return "\n".join(lines)


def reproduce(
    names: Sequence[str],
    load_pair: Loader,
    out: Path,
    *,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run several experiments into ``out``; an experiment whose three files already exist there
    (a resumed ``reproduce all``) is read back, not recomputed. Writes ``README.md`` indexing them."""
    import json

    records = []
    for name in names:
        outputs = [out / f"{name}.{ext}" for ext in ("json", "md", "png")]
        if all(f.is_file() for f in outputs):
            rec = json.loads(outputs[0].read_text())
            if rec.get("seed") == seed:
                log(f"[reproduce {name}] already done in {out}; kept")
                records.append(rec)
                continue
        records.append(run_experiment(name, load_pair, out, seed=seed, progress=progress, log=log))
    lines = ["# Reproductions of Tang et al. (2024) on the workbench", ""]
    for rec in records:
        lines += [
            f"## [{rec['title']}]({rec['experiment']}.md)",
            "",
            f"- Paper: {rec['paper_claim']}",
            f"- Ours: {rec['ours']}",
            "",
        ]
    files.write_text(out / "README.md", "\n".join(lines))
    return records
