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


def pair_section(res: dict[str, Any], prefix: str) -> list[str]:
    """The Markdown of one pair: losses, agreement table, edits, first-order failures, segment checks."""
    p = res["pair"]
    names = list(res["agreement"])
    acc_name = p.get("accuracy_name", "accuracy")
    lines = [
        f"## Pair `{p['name']}`",
        "",
        p["description"] + ".",
        "",
        f"- {p['num_params']:,} parameters; loss: pre {_f(p['loss_pre'])}, post {_f(p['loss_post'])} "
        f"(post-training gain {_f(p['gain'])}).",
    ]
    if p.get("accuracy_post") is not None:
        lines.append(f"- {acc_name}: pre {_f(p['accuracy_pre'], 3)}, post {_f(p['accuracy_post'], 3)}.")
    lines += [
        f"- {len(res['edits'])} edits on {p['num_batches']} held-out batches; pair total {res['elapsed_s']:.0f} s.",
        "",
        "| estimator | Spearman | Pearson | sign agreement | class agreement | mean abs. error "
        "| passes / edit / batch | shared passes / batch | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        a = res["agreement"][n]
        lines.append(
            f"| {n} | {_f(a['spearman'], 3)} | {_f(a['pearson'], 3)} | {_f(a['sign_agreement'], 3)} | "
            f"{_f(a['class_agreement'], 3)} | {_f(a['mean_abs_error'], 3)} | "
            f"{_passes(a['passes_per_edit_per_batch'])} | "
            f"{_passes(a['passes_once_per_batch'])} | {a['seconds']:.1f} |"
        )
    measured_s = sum(r["seconds"]["measured"] for r in res["edits"])
    lines += [
        "",
        f"Measuring every edit: 1 forward pass per batch per edit, {measured_s:.1f} s in all.",
        "",
        f"![calibration]({prefix}calibration.png)",
        "",
        f"![confusion]({prefix}confusion.png)",
        "",
        "### Edits",
        "",
        "| edit | paper class | " + " | ".join(names) + f" | measured | class (measured) | {acc_name} |",
        "|---|---|" + "---|" * len(names) + "---|---|---|",
    ]
    for r in res["edits"]:
        e = r["estimates"]
        lines.append(
            f"| `{r['spec']}` | {r['paper_class']} | "
            + " | ".join(_f(e[n]) for n in names)
            + f" | {_f(r['measured'])} | {r['class']['measured']} | {_f(r['accuracy'], 3)} |"
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
                fixed = sum(r["class"][n] == r["class"]["measured"] for r in wrong)
                lines.append(f"- {n} classifies {fixed} of these {len(wrong)} edits as measured.")
        else:
            lines.append("First order classifies every edit as measured.")
    lines += [
        "",
        "### The pre→post segment",
        "",
        "Completeness: each rule's estimate of L(post) − L(pre) and its gap to the exact change.",
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
        f"(jax {results['versions'].get('jax')}, {results['versions'].get('devices')}).",
        "",
        f"Classes use the tolerance {s['tolerance_rule']} per edit.",
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
        "| estimator | "
        + " | ".join(f"Spearman `{p['pair']['name']}`" for p in pairs)
        + " | class agreement (all edits) | seconds (all pairs) |",
        "|---|" + "---|" * len(pairs) + "---|---|",
    ]
    for n in names:
        e = summ["estimators"][n]
        lines.append(
            f"| {n} | "
            + " | ".join(_f(e["spearman_by_pair"][p["pair"]["name"]], 3) for p in pairs)
            + f" | {_f(e['class_agreement'], 3)} | {e['seconds']:.0f} |"
        )
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
    lines += ["## The paper's claims on these pairs", ""]
    for c in results.get("claims") or claims.check(results):
        lines.append(f"- **{c['verdict']}** — {c['claim']} {c['evidence']}")
    lines.append("")
    for res in pairs:
        lines += pair_section(res, f"{files.slug(res['pair']['name'])}-")
    return "\n".join(lines)


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
