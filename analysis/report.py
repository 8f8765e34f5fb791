"""Readable Markdown report, JSON record and PNG figures of a suite's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis import io, plots
from analysis.suite import ESTIMATORS


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.{digits}g}"
    return str(x)


def markdown(results: dict[str, Any]) -> str:
    p = results["pair"]
    lines = [
        f"# Delta edit analysis: {p['name']}",
        "",
        p["description"] + ".",
        "",
        f"- Loss: pre {_f(p['loss_pre'])}, post {_f(p['loss_post'])} (post-training gain {_f(p['gain'])}).",
    ]
    if p.get("accuracy_post") is not None:
        lines.append(f"- Accuracy: pre {_f(p['accuracy_pre'])}, post {_f(p['accuracy_post'])}.")
    lines += [
        f"- {len(results['edits'])} edits, {p['num_batches']} evaluation batches, seed {results['settings']['seed']}; "
        f"{results['elapsed_s']:.1f} s.",
        f"- Classes use tolerance {results['settings']['tolerance_rule']} per edit.",
        "",
        "## Which estimator agrees with the measured loss change",
        "",
        "`riemann` is the paper's computed Eq. 1 term (left rule, C = 5, gradients inside the segment); "
        "`first-order` is the gradient at W_post alone (what the zero-expectation argument is about); "
        "`second-order` adds ½⟨ΔW~, HΔW~⟩; `gauss-legendre` is an 8-node quadrature of the same integral.",
        "",
        "| estimator | Spearman | Pearson | sign agreement | class agreement | mean abs. error | passes / edit / batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ESTIMATORS:
        a = results["agreement"][name]
        cost = ", ".join(f"{k} {v}" for k, v in a["passes_per_edit_per_batch"].items() if v)
        lines.append(f"| {name} | {_f(a['spearman'], 3)} | {_f(a['pearson'], 3)} | {_f(a['sign_agreement'], 3)} | "
                     f"{_f(a['class_agreement'], 3)} | {_f(a['mean_abs_error'], 3)} | {cost} |")
    lines += ["", "Measuring an edit costs 2 forward passes per batch.", "",
              "![calibration](calibration.png)", "", "## Edits", "",
              "| edit | paper class | riemann | first-order | second-order | gauss-legendre | measured | class (measured) | accuracy |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results["edits"]:
        e = r["estimates"]
        lines.append(f"| `{r['spec']}` | {r['paper_class']} | {_f(e['riemann'])} | {_f(e['first-order'])} | "
                     f"{_f(e['second-order'])} | {_f(e['gauss-legendre'])} | {_f(r['measured'])} | "
                     f"{r['class']['measured']} | {_f(r['accuracy'], 3)} |")
    wrong = [r for r in results["edits"] if r["class"]["first-order"] != r["class"]["measured"]]
    lines += ["", "## Where first order is not enough", ""]
    if wrong:
        lines.append("| edit | first-order class | second-order class | measured class |")
        lines.append("|---|---|---|---|")
        for r in wrong:
            lines.append(f"| `{r['spec']}` | {r['class']['first-order']} | {r['class']['second-order']} | {r['class']['measured']} |")
        fixed = sum(r["class"]["second-order"] == r["class"]["measured"] for r in wrong)
        lines += ["", f"First order misclassifies {len(wrong)} of {len(results['edits'])} edits; second order fixes {fixed} of them."]
    else:
        lines.append("First order classifies every edit as measured.")
    lines += ["", "## The pre→post segment", "", "Completeness: each rule's estimate of L(post) − L(pre) and its gap.", "",
              "| rule | estimate | gap | relative gap |", "|---|---|---|---|"]
    for rule, c in p["completeness"].items():
        lines.append(f"| {rule} | {_f(c['value'])} | {_f(c['gap'], 3)} | {_f(c['relative_gap'], 3)} |")
    top = sorted(p["gain_modules"].items(), key=lambda kv: kv[1])[:8]
    lines += ["", "Per-module attribution of the post-training loss change (Gauss–Legendre, 8 nodes; most negative first):", "",
              "| module | contribution |", "|---|---|"]
    lines += [f"| `{k}` | {_f(v)} |" for k, v in top]
    lines += ["", "![line profile](line_profile.png)", ""]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Write ``results.json``, ``report.md`` and the figures into ``out`` (each atomically)."""
    import matplotlib.pyplot as plt

    written = [io.write_json(out / "results.json", results), io.write_text(out / "report.md", markdown(results))]
    for name, fig in (("calibration.png", plots.calibration(results)), ("line_profile.png", plots.line_profile(results))):
        written.append(io.save_figure(fig, out / name))
        plt.close(fig)
    return written
