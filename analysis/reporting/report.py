"""Readable Markdown report, JSON record and PNG figures of a run (one or more pairs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis import files
from analysis.reporting import plots
from analysis.study import claims
from analysis.study.estimators import ESTIMATORS


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.{digits}g}"
    return str(x)


def _passes(cost: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in cost.items() if v) or "0"


def _ci(x: Any, ci: Any, digits: int = 3) -> str:
    """A value with its 95 % interval: ``0.87 [0.80, 0.93]``."""
    if ci is None or any(v is None or v != v for v in ci):
        return _f(x, digits)
    return f"{_f(x, digits)} [{_f(ci[0], 2)}, {_f(ci[1], 2)}]"


def _measured(r: dict[str, Any]) -> str:
    seeds = r.get("measured_seeds") or [r["measured"]]
    if len(seeds) < 2:
        return _f(r["measured"])
    return f"{_f(r['measured'])} ± {_f(r['measured_std'], 2)} ({len(seeds)} masks)"


def _validation(p: dict[str, Any], res: dict[str, Any]) -> list[str]:
    """How the pair was split, the tolerances fixed from calibration, loss against accuracy."""
    lines = []
    sp = p.get("split")
    if sp:
        lines.append(
            f"- Data: {len(sp['calibration_batches'])} calibration batches (indices "
            f"{', '.join(map(str, sp['calibration_batches']))}) fit the shared gradient, the curvature, the biased "
            f"masks and the tolerance; {len(sp['test_batches'])} disjoint test batches carry every estimate and "
            "measurement below."
        )
    tol = p.get("tolerance")
    if tol:
        lines.append(
            f"- Tolerance {_f(tol['value'], 3)} = max({_f(tol['fraction'])} × calibration gain {_f(tol['gain'], 3)} "
            f"= {_f(tol['gain_part'], 3)}, t({_f((1 + tol['level']) / 2)}, {tol['dof']} dof) = "
            f"{_f(tol['t_quantile'], 3)} × sd of the paired per-batch change of a step back to "
            f"{tol.get('reference', 'W_post − 0.05·ΔW')} / √{tol['n_test']} = {_f(tol['noise_part'], 3)}), "
            "fixed before any edit was scored."
        )
    acc_tol = p.get("accuracy_tolerance")
    if acc_tol:
        lines.append(f"- Accuracy tolerance (the same rule on per-batch accuracy): {_f(acc_tol['value'], 3)}.")
    corr = res.get("accuracy_correlation")
    if corr:
        lines.append(
            f"- Loss against accuracy: Spearman(measured ΔL, Δ{p.get('accuracy_name', 'accuracy')}) = "
            f"{_ci(corr['spearman'], corr['spearman_ci95'])} over {corr['edits']} edits (negative: they agree)."
        )
    moved = [r for r in res["edits"] if r.get("unmoved_fraction", 0.0) > 0.0]
    if moved:
        worst = max(moved, key=lambda r: r["unmoved_fraction"])
        lines.append(
            f"- Rounding to the storage dtype left intended changes unmoved in {len(moved)} edits (worst: "
            f"`{worst['spec']}`, {worst['unmoved_fraction']:.1%}); every figure is of the rounded model."
        )
    return lines


def _agreement_tables(res: dict[str, Any]) -> list[str]:
    names = list(res["agreement"])
    lines = [
        "Against the measured change on the test batches, of the masks each estimator ran on (random edits: "
        "shared estimators on every mask and the mean of their measurements, per-edit estimators on the first "
        "mask); 95 % bootstrap intervals over edits in brackets (edits that share a mask are not independent, so "
        "the intervals are, if anything, narrow).",
        "",
        "| estimator | Spearman | class agreement | sign agreement | median abs. log ratio "
        "| passes / edit / batch | shared passes / batch | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        a = res["agreement"][n]
        lines.append(
            f"| {n} | {_ci(a['spearman'], a.get('spearman_ci95'))} | "
            f"{_ci(a['class_agreement'], a.get('class_agreement_ci95'))} | "
            f"{_ci(a['sign_agreement'], a.get('sign_agreement_ci95'))} | "
            f"{_ci(a.get('median_abs_log_ratio'), a.get('median_abs_log_ratio_ci95'))} | "
            f"{_passes(a['passes_per_edit_per_batch'])} | {_passes(a['passes_once_per_batch'])} | {a['seconds']:.1f} |"
        )
    fams = list(next(iter(res["agreement"].values())).get("by_family", {})) if names else []
    if fams:
        lines += [
            "",
            "Per edit family: Spearman, and class agreement after the slash (95 % intervals in brackets).",
            "",
            "| estimator | "
            + " | ".join(f"{f} ({res['agreement'][names[0]]['by_family'][f]['edits']})" for f in fams)
            + " |",
            "|---|" + "---|" * len(fams),
        ]
        for n in names:
            bf = res["agreement"][n]["by_family"]
            lines.append(
                f"| {n} | "
                + " | ".join(
                    f"{_ci(bf[f]['spearman'], bf[f]['spearman_ci95'], 2)} / "
                    f"{_ci(bf[f]['class_agreement'], bf[f]['class_agreement_ci95'], 2)}"
                    for f in fams
                )
                + " |"
            )
    return lines


def _identity(res: dict[str, Any]) -> list[str]:
    quads = [n for n, a in res["agreement"].items() if "identity" in a]
    if not quads:
        return []
    lines = [
        "### In-sample identity",
        "",
        "Each quadrature of Eq. 1 against the measurement of the same mask on the same test batches: the "
        "integral identity itself, not a prediction. The adaptive rule states its error; a gap counts as within it "
        "when |gap| ≤ error + the float32 resolution of the measured difference.",
        "",
        "| quadrature | median abs. gap | max abs. gap | within stated error |",
        "|---|---|---|---|",
    ]
    for n in quads:
        i = res["agreement"][n]["identity"]
        within = f"{i['within_error']:.1%}" if "within_error" in i else "– (no error estimate)"
        lines.append(f"| {n} | {_f(i['median_abs_gap'], 3)} | {_f(i['max_abs_gap'], 3)} | {within} |")
    for n in quads:
        i = res["agreement"][n]["identity"]
        if i.get("outside_error"):
            rows = [r for r in res["edits"] if r["spec"] in set(i["outside_error"])]
            lines += ["", f"`{n}`: edits whose gap exceeds the stated error:", ""]
            lines += [
                f"- `{r['spec']}`: gap {_f(r['identity'][n]['gap'], 3)}, error {_f(r['identity'][n]['error'], 3)}, "
                f"resolution {_f(r['identity'][n]['resolution'], 3)}, "
                f"{'converged' if r['identity'][n]['converged'] else 'not converged'}"
                for r in rows
            ]
        if i.get("not_converged"):
            lines += [
                "",
                f"`{n}` did not converge within its budget on: " + ", ".join(f"`{x}`" for x in i["not_converged"]),
            ]
    return lines + [""]


def pair_section(res: dict[str, Any], prefix: str) -> list[str]:
    """The Markdown of one pair: data split and tolerance, agreement with intervals (overall and per
    family), edits, first-order failures, the in-sample identity, segment checks."""
    p = res["pair"]
    names = list(res["agreement"])
    acc_name = p.get("accuracy_name", "accuracy")
    lines = [
        f"## Pair `{p['name']}`",
        "",
        p["description"] + ".",
        "",
        f"- {p['num_params']:,} parameters; test loss: pre {_f(p['loss_pre'])}, post {_f(p['loss_post'])} "
        f"(post-training gain {_f(p['gain'])}).",
    ]
    if p.get("accuracy_post") is not None:
        lines.append(f"- {acc_name} (test): pre {_f(p['accuracy_pre'], 3)}, post {_f(p['accuracy_post'], 3)}.")
    lines += _validation(p, res)
    lines += [f"- {len(res['edits'])} edits; pair total {res['elapsed_s']:.0f} s.", ""]
    lines += _agreement_tables(res)
    fo = res.get("first_order_on_test")
    if fo and "first-order" in res["agreement"]:
        a = res["agreement"]["first-order"]
        lines += [
            "",
            "`first-order` and `shared-curvature` are fitted on the calibration batches and judged on the test "
            "batches: held-out predictions. The per-edit quadratures and `second-order` compute on the test batches "
            "themselves. The first-order term with the test batches' own gradient (free from the paper's rule) "
            f"separates data from method: Spearman {_ci(fo['spearman'], fo['spearman_ci95'])}, class agreement "
            f"{_ci(fo['class_agreement'], fo['class_agreement_ci95'])} (calibration gradient: "
            f"{_ci(a['spearman'], a.get('spearman_ci95'))}, "
            f"{_ci(a['class_agreement'], a.get('class_agreement_ci95'))}).",
        ]
    for n in names:
        a = res["agreement"][n]
        if "measured_fraction" in a:
            lines += [
                "",
                f"`{n}` measured {a['measured_fraction']:.0%} of the edits (validity score ≥ 1 on a mask; an edit "
                "built from the calibration gradient also when one calibration batch left nothing to cross-fit): "
                + (", ".join(f"`{s}`" for s in a["measured_edits"]) or "none")
                + ". "
                + _envelopes(res["shared"]),
            ]
    measured_s = sum(r["seconds"]["measured"] for r in res["edits"])
    lines += [
        "",
        f"Measuring every edit: 1 forward pass per test batch per mask, {measured_s:.1f} s in all.",
        "",
        f"![calibration]({prefix}calibration.png)",
        "",
        f"![confusion]({prefix}confusion.png)",
        "",
        "### Edits",
        "",
        "Estimates of random edits: shared estimators averaged over every mask, per-edit estimators on the first. "
        "Measured: mean ± standard deviation over masks.",
        "",
        "| edit | paper class | " + " | ".join(names) + f" | measured | class (measured) | {acc_name} |",
        "|---|---|" + "---|" * len(names) + "---|---|---|",
    ]
    for r in res["edits"]:
        e = r["estimates"]
        lines.append(
            f"| `{r['spec']}` | {r['paper_class']} | "
            + " | ".join(_f(e[n]) for n in names)
            + f" | {_measured(r)} | {r['class']['measured']} | {_f(r['accuracy'], 3)} |"
        )
    if "first-order" in names:
        wrong = [r for r in res["edits"] if r["class"]["first-order"] != r["class"]["measured"]]
        lines += ["", "### Where first order is not enough", ""]
        if wrong:
            fix = [n for n in ("second-order", "shared-curvature", "riemann") if n in names]
            lines.append("| edit | first-order | " + " | ".join(fix) + " | measured |")
            lines.append("|---|---|" + "---|" * len(fix) + "---|")
            for r in wrong:
                lines.append(
                    f"| `{r['spec']}` | {r['class']['first-order']} | "
                    + " | ".join(r["class"][n] for n in fix)
                    + f" | {r['class']['measured']} |"
                )
            lines += ["", f"First order misclassifies {len(wrong)} of {len(res['edits'])} edits."]
            for n in fix:
                fixed = sum(
                    r["class"][n] == r.get("class_measured_for", {}).get(n, r["class"]["measured"]) for r in wrong
                )
                lines.append(f"- {n} classifies {fixed} of these {len(wrong)} edits as measured.")
        else:
            lines.append("First order classifies every edit as measured.")
    lines += ["", *_identity(res)]
    lines += [
        "### The pre→post segment",
        "",
        "In-sample identity on the pre→post segment (the completeness check, on the test batches): each rule's "
        "estimate of L(post) − L(pre) and its gap to the exact change.",
        "",
        "| rule | estimate | gap | relative gap |",
        "|---|---|---|---|",
    ]
    for rule, c in p["completeness"].items():
        lines.append(f"| {rule} | {_f(c['value'])} | {_f(c['gap'], 3)} | {_f(c['relative_gap'], 3)} |")
    top = sorted(p["gain_modules"].items(), key=lambda kv: kv[1])[:8]
    lines += [
        "",
        "Per-module attribution of the post-training loss change (Gauss–Legendre, 8 nodes; most negative first):",
        "",
        "| module | contribution |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | {_f(v)} |" for k, v in top]
    lines += ["", f"![line profile]({prefix}line_profile.png)", ""]
    return lines


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    summ = results["summary"]
    pairs = results["pairs"]
    names = list(summ["estimators"])
    lines = [
        "# Delta edit analysis",
        "",
        f"{len(s['edits'])} edits × {len(pairs)} pair(s): "
        + ", ".join(f"`{p['pair']['name']}`" for p in pairs)
        + f"; seed {s['seed']}, {s['probes']} Hutchinson probes per batch; {results['elapsed_s']:.0f} s "
        f"(jax {results['versions'].get('jax')}, {results['versions'].get('devices')}){_side_by_side(results)}.",
        "",
        f"Every pair's evaluation batches are split into calibration and disjoint test batches; random edits "
        f"are scored over {s.get('seeds', 1)} masks each. Classes use one tolerance per pair, "
        f"{s['tolerance_rule']}.",
        "",
        "## Estimators",
        "",
    ]
    lines += [f"- `{n}`: {ESTIMATORS[n].description if n in ESTIMATORS else ''}" for n in names]
    lines += [
        "- `measured`: L(W_edit) − L(W_post), one forward pass per batch per edit.",
        "",
        "## Which estimator agrees with the measured loss change",
        "",
        "On the test batches; 95 % bootstrap intervals over edits in brackets.",
        "",
        "| estimator | "
        + " | ".join(f"Spearman `{p['pair']['name']}`" for p in pairs)
        + " | class agreement (all edits) | seconds (all pairs) |",
        "|---|" + "---|" * len(pairs) + "---|---|",
    ]
    for n in names:
        e = summ["estimators"][n]
        cis = e.get("spearman_ci95_by_pair", {})
        lines.append(
            f"| {n} | "
            + " | ".join(_ci(e["spearman_by_pair"][p["pair"]["name"]], cis.get(p["pair"]["name"])) for p in pairs)
            + f" | {_ci(e['class_agreement'], e.get('class_agreement_ci95'))} | {e['seconds']:.0f} |"
        )
    for n in names:
        e = summ["estimators"][n]
        if "measured_fraction" in e:
            by_pair = ", ".join(f"`{k}` {v:.0%}" for k, v in e["measured_fraction_by_pair"].items())
            lines += [
                "",
                f"`{n}` measured {e['measured_fraction']:.0%} of the edits ({by_pair}; a random edit counts by "
                "the share of its masks measured) — those whose validity "
                "score (the shared prediction's error at the edit's step length and alignment with ΔW, measured "
                "once along ΔW, random-sign copies of it and its gradient-sign copy on the calibration batches, "
                "over the distance to a class boundary) was 1 or more — and returned the shared prediction for "
                "the rest; an edit built from the calibration gradient is judged with its cross-fitted "
                "first-order term and that term's standard error (measured when there is a single calibration "
                f"batch to fit on); class agreement {_f(e['class_agreement'], 3)}.",
            ]
    best = summ["best"]
    if best is not None:
        b = summ["estimators"][best]
        lines += [
            "",
            f"Measuring every edit took {summ['measured_seconds']:.0f} s. Best estimator: **{best}** "
            f"(Spearman {_f(b['spearman_min'], 3)}–{_f(max(b['spearman_by_pair'].values()), 3)} across pairs, "
            f"class agreement {_f(b['class_agreement'], 3)}); acceptance asks for ≥ 0.9 and ≥ 0.85: "
            f"{'met' if b['spearman_min'] >= 0.9 and b['class_agreement'] >= 0.85 else 'not met — see below'}.",
            "",
            "![cost and accuracy](frontier.png)",
            "",
        ]
    costs = {n: e for n, e in summ["estimators"].items() if "seconds_shared" in e}
    if costs and "measured_seconds_per_edit" in summ:
        per = 1e3 * summ["measured_seconds_per_edit"]
        lines += [
            "",
            f"Per edit, beyond the passes made once (measuring: {per:.1f} ms per edit, all its masks): "
            + "; ".join(
                f"`{n}` {1e3 * e['seconds_per_edit']:.1f} ms after {e['seconds_shared']:.1f} s once, "
                + (
                    f"cheaper than measuring from {e['break_even_edits']:.0f} edits on"
                    if e["break_even_edits"] is not None
                    else "never cheaper than measuring"
                )
                for n, e in costs.items()
            )
            + f" (this suite: {next(iter(costs.values()))['edits']} edits over {len(pairs)} pair(s); the passes "
            "are made once per pair).",
            "",
        ]
    lines += [
        "## The paper's claims on these pairs",
        "",
        "Each claim is judged twice: on the measured loss change, classified with each pair's fixed tolerance, "
        "and on the accuracy change, classified with the pair's accuracy tolerance (– where no accuracy was "
        "recorded). The paper's claims are about accuracy; the loss is what its theory speaks of.",
        "",
    ]
    checked = results.get("claims") or claims.check(results)
    if not checked:
        lines += ["No claim's edits are in this suite.", ""]
    for source, title in (("paper", "Claims of Tang et al. (2024)"), ("project", "This project's own claims")):
        listed = [c for c in checked if c.get("source", "paper") == source]
        if not listed:
            continue
        lines += [f"### {title}", ""]
        for c in listed:
            # Claims recorded before the loss/accuracy split carry one verdict and its evidence.
            loss = c.get("loss") or {"verdict": c["verdict"], "evidence": c.get("evidence", "")}
            acc = c.get("accuracy")
            lines += [
                f"- loss: **{loss['verdict']}**; accuracy: **{acc['verdict'] if acc else '–'}** — {c['claim']}",
                f"  - Loss: {loss['evidence']}",
            ]
            if acc:
                lines.append(f"  - Accuracy: {acc['evidence']}")
        lines.append("")
    for res in pairs:
        lines += pair_section(res, f"{files.slug(res['pair']['name'])}-")
    return "\n".join(lines)


def _side_by_side(results: dict[str, Any]) -> str:
    """How the pairs shared the machine, when they ran at once (each pair's seconds are its process's)."""
    p = results.get("processes") or {}
    if p.get("pairs_at_once", 1) <= 1:
        return ""
    return (
        f"; {p['pairs_at_once']} pairs at once, each in its own process, on {p['cpu_cores']} CPU cores: a pair's "
        "seconds were timed beside the others'"
    )


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Write ``results.json``, ``report.md`` and the figures into ``out`` (each atomically)."""
    import matplotlib.pyplot as plt

    written = [files.write_json(out / "results.json", results), files.write_text(out / "report.md", markdown(results))]
    figures = [("frontier.png", plots.frontier(results))]
    for res in results["pairs"]:
        s = files.slug(res["pair"]["name"])
        figures += [
            (f"{s}-calibration.png", plots.calibration(res)),
            (f"{s}-confusion.png", plots.confusions(res)),
            (f"{s}-line_profile.png", plots.line_profile(res)),
        ]
    for name, fig in figures:
        written.append(files.save_figure(fig, out / name))
        plt.close(fig)
    return written


def _envelopes(shared: dict) -> str:
    """The shared prediction's error envelopes on the calibration batches, as a sentence."""
    sat = shared.get("saturation")
    if sat and "coherent" in sat:

        def one(c: dict) -> str:
            return ", ".join(f"{s:.3g}: {_f(e, 3)}" for s, e in zip(c["steps"], c["errors"]))

        along_g = f"; along the gradient-sign copy S⊥: {one(sat['gradient'])}" if sat.get("gradient") else ""
        multiple = sat.get("quantile")  # the band's multiple of an estimated standard error
        if "quantile" not in sat:  # written before the band took the Student-t multiple
            band = f"a {sat['band']:g}-standard-error band"
        elif multiple is None:  # infinite: one calibration batch
            band = "no band: one calibration batch has no spread to estimate, so nothing is trusted"
        else:
            band = f"a {multiple:.3g}-standard-error band, the Student-t multiple covering {sat['band']:g} known ones"
        return (
            f"The shared prediction's error ({band}) on the calibration "
            f"batches, by step along ±ΔW: {one(sat['coherent'])}; along random-sign copies of ΔW: "
            f"{one(sat['noise'])}{along_g}."
        )
    tr = shared.get("trust_region") or {}  # results written before the two saturation curves
    errs = ", ".join(f"{s:g}: {_f(e, 3)}" for s, e in zip(tr.get("steps", []), tr.get("errors", [])))
    return f"The shared surrogate's error along ±ΔW on the calibration batches, by relative step: {errs}."
