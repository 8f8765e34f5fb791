"""``riemann merge``: what a mergekit merge does to each fine-tune's task, predicted before it is run
and measured without writing the merged model.

Fine-tune ``i`` of the base has ``τ_i = W_i − W_base``; the merge gives ``W_merge = W_base + Σ_j
part_j`` (:func:`riemann.edits.merge.merge`). Seen from fine-tune ``i`` the merge is an edit,
``ΔW~_i = W_merge − W_i = Σ_j part_j − τ_i``, and its loss change on task ``i`` is the path
integral every edit gets: the paper's Riemann sum (left rule, C = 5), first and second order, and
the measured change, on the *test* batches of task ``i``'s data; the calibration batches fix the
tolerance and the shared gradient, once per fine-tune, reused by every merge of it
(:class:`analysis.study.suite.Scorer`, as ``riemann run`` does for edits).

Per donor: with ``ḡ_i`` the quadrature's weighted gradient sum, donor ``j ≠ i`` contributes
``⟨ḡ_i, part_j⟩`` and the task's own model ``⟨ḡ_i, part_i − τ_i⟩``; ``rounding`` is computed on its
own, ``⟨ḡ_i, ΔW~_i − (Σ_j part_j − τ_i)⟩`` (the merged model as stored in its dtype against the
float32 parts), so that the terms summing to the Riemann estimate is a check, not a definition.
Tasks and donors are labelled by their reference as given, its basename where that is unique
(:func:`labels`).

Writes ``merge.json``, ``merge.md`` and ``merge.png`` (the task-interference matrix).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

import riemann
from analysis import files
from analysis.pairs import Pair, split
from analysis.study import artefact, merge_weights, merges, suite
from riemann.tree_utils import tree_vdot

ESTIMATORS = ("riemann", "first-order", "second-order")
ESTIMATOR_NOTES = {
    "riemann": "the paper's Eq. 1 term: left rule, C = 5, on the test batches (gradients inside the segment)",
    "first-order": "⟨∇L(W_post_i), ΔW~_i⟩ with the gradient from the calibration batches (shared by every merge)",
    "second-order": "first order + ½⟨ΔW~_i, H ΔW~_i⟩ at W_post_i, one Hessian-vector product per test batch",
}


@dataclasses.dataclass
class Task:
    """One fine-tune with its data, split and scored once: the calibration passes (gradient,
    tolerance) and the test losses at ``W_post`` shared by every merge of it."""

    name: str
    model: str
    scorer: suite.Scorer

    @property
    def pair(self) -> Pair:
        return self.scorer.pair


def labels(refs: Sequence[str]) -> list[str]:
    """Unique short names of model references: the basename where it is unique, else the shortest
    tail of the path that is (``runs/a/final``, ``runs/b/final`` → ``a/final``, ``b/final``), else
    the reference as given (numbered if even that repeats).

    Example:
      >>> labels(["runs/a/final", "runs/b/final", "org/other"])
      ['a/final', 'b/final', 'other']
    """
    parts = [Path(r).parts or (r,) for r in refs]
    out = []
    for i, p in enumerate(parts):
        for k in range(1, len(p) + 1):
            tail = p[-k:]
            if all(q[-k:] != tail for j, q in enumerate(parts) if j != i):
                out.append("/".join(tail))
                break
        else:
            out.append(str(refs[i]))
    return [x if out.count(x) == 1 else f"{x} #{i}" for i, x in enumerate(out)]


def check_data(plan: merges.Plan, data: Sequence[str], *, max_len: int = 512) -> list[str]:
    """One data file per fine-tune of ``plan`` (in the config's order), or one for all, each read
    and tokenized with its fine-tune's tokenizer (as ``riemann run`` does) before any weights are
    read; an image ``.npz`` must hold ``pixel_values`` and ``labels``."""
    from analysis.hf import adapters
    from analysis.pairs import data as data_

    n = len(plan.donors)
    if len(data) not in (1, n):
        names = ", ".join(d.model for d in plan.config.donors)
        raise ValueError(
            f"--data: {len(data)} files for {n} models ({names}); give one data file per model, in the config's "
            "order, or one for all"
        )
    missing = [d for d in data if not Path(d).is_file()]
    if missing:
        raise ValueError(f"--data: no such file(s): {', '.join(missing)}")
    files_ = list(data) * n if len(data) == 1 else list(data)
    done: set[tuple[str, str]] = set()
    for d, f in zip(plan.config.donors, files_):
        if f.endswith(".npz"):
            with np.load(f) as z:
                if "pixel_values" not in z or "labels" not in z:
                    raise data_.DataError(f"{f}: expected arrays 'pixel_values' [N, 3, H, W] and 'labels' [N]")
            continue
        source = adapters.tokenizer_source(plan.config.base, d.model)  # configs and tokenizer only
        if (str(source), f) in done:
            continue
        kind, records = data_.read_jsonl(f)
        data_.tokenize(data_.load_tokenizer(source), kind, records, max_len=max_len, source=f)
        done.add((str(source), f))
    return files_


def tasks_from_checkpoints(
    plan: merges.Plan,
    data: Sequence[str],
    *,
    batch_size: int = 8,
    max_len: int = 512,
    max_batches: int | None = None,
    dtype: Any = None,
    seed: int = 0,
    calibration: int = split.DEFAULT_CALIBRATION,
) -> list[Task]:
    """Every fine-tune of ``plan`` as a task on its data file (``--data``), loaded in ``dtype``
    (default: the config's ``dtype``, else as stored)."""
    from analysis import pairs

    files_ = check_data(plan, data, max_len=max_len)
    dtype = dtype or plan.config.dtype
    out = []
    names = labels([d.model for d in plan.config.donors])
    for d, path, f, label in zip(plan.config.donors, plan.donors, files_, names):
        pair = pairs.from_checkpoints(
            plan.base,
            path,
            f,
            batch_size=batch_size,
            max_len=max_len,
            max_batches=max_batches,
            dtype=dtype,
            name=label,
        )
        out.append(task_of(pair, d.model, seed=seed, calibration=calibration))
    return out


def task_of(pair: Pair, model: str, *, seed: int = 0, calibration: int = split.DEFAULT_CALIBRATION) -> Task:
    """``pair`` (base → fine-tune) split and calibrated once for every merge that includes it."""
    return Task(pair.name, model, suite.Scorer(pair, seed=seed, estimators=["first-order"], calibration=calibration))


def merged(plan: merges.Plan, tasks: Sequence[Task]) -> Any:
    """The merge of ``plan`` over the tasks' deltas (:func:`merged_from_deltas`)."""
    return merged_from_deltas(plan, tasks[0].pair.pre, [t.scorer.delta for t in tasks])


def merged_from_deltas(plan: merges.Plan, base: Any, deltas: Sequence[Any]) -> Any:
    """:func:`riemann.edits.merge.merge` of ``deltas`` (one per fine-tune, in the config's order) as
    ``plan`` resolves its parameters, keyed by ``jax.random.key(random_seed)``; ``linear`` gets the
    base as one more input, of zero delta, as mergekit merges it."""
    from riemann.edits import merge as merging

    deltas = list(deltas)
    if plan.base_weight is not None:
        deltas.append(jax.tree.map(np.zeros_like, deltas[0]))
    key = jax.random.key(plan.config.random_seed) if plan.config.random else None
    return merging.merge(
        plan.config.method, deltas, **plan.kwargs(), base=base, key=key, compute_dtype=compute_dtype_of(base)
    )


def compute_dtype_of(base: Any) -> Any:
    """The dtype mergekit computes a merge of these checkpoints in: that of the (loaded) base when
    it is a 16-bit float dtype for every tensor, else ``None`` (float32, where our float32 merge is
    mergekit's bit for bit). mergekit loads every tensor in the config's ``dtype`` and merges in it."""
    kinds = {np.dtype(x.dtype) for x in jax.tree.leaves(base)}
    if len(kinds) == 1 and kinds <= {np.dtype(jax.numpy.bfloat16), np.dtype(np.float16)}:
        return kinds.pop()
    return None


_vdot = jax.jit(tree_vdot)


def _minus(a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: x.astype(np.float32) - y.astype(np.float32), a, b)


@jax.jit
def _rounding(change: Any, parts: Sequence[Any], delta: Any) -> Any:
    f32 = np.float32

    def one(c: Any, d: Any, *ps: Any) -> Any:
        total = ps[0].astype(f32)
        for p in ps[1:]:
            total = total + p.astype(f32)
        return c.astype(f32) - (total - d.astype(f32))

    return jax.tree.map(one, change, delta, *parts)


def score_task(task: Task, i: int, result: Any, donors: Sequence[str]) -> dict[str, Any]:
    """Merge ``result`` seen from task ``i``: every estimator, the measured change on its test
    batches, the classes, the accuracy, per-module and per-donor terms."""
    sc, pair = task.scorer, task.pair
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    art = artefact.stored(pair.pre, pair.post, sc.delta, result.total)
    artefact.warn_unmoved(art, f"[{task.name}] merge")
    change = art.change
    est: dict[str, float] = {}
    t = time.perf_counter()
    path = riemann.integrate_path(pair.loss_fn, pair.post, change, pair.batches, rule="left", n=5)
    est["riemann"], times["riemann"] = path.value, time.perf_counter() - t
    t = time.perf_counter()
    est["first-order"] = sc.shared.gradient.first_order(change).value
    times["first-order"] = time.perf_counter() - t
    t = time.perf_counter()
    second = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="second-order")
    est["second-order"], times["second-order"] = second.value, time.perf_counter() - t
    t = time.perf_counter()
    meas = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="measured", loss_post=sc.loss_post)
    times["measured"] = time.perf_counter() - t
    t = time.perf_counter()
    acc = pair.accuracy_fn(art.params, pair.batches) if pair.accuracy_fn else None
    times["accuracy"] = time.perf_counter() - t
    # Per donor: ⟨ḡ, part_j⟩, the own model ⟨ḡ, part_i − τ_i⟩; rounding on its own: the stored merge
    # against the float32 parts, ⟨ḡ, ΔW~_i − (Σ_j part_j − τ_i)⟩.
    g = path.grad
    terms = {}
    for j, (name, part) in enumerate(zip(donors, result.parts)):
        terms[name] = float(_vdot(g, _minus(part, sc.delta) if j == i else part))
    rounding = float(_vdot(g, _rounding(change, result.parts, sc.delta)))
    tol = sc.tolerance["value"]
    acc_delta = None if acc is None or sc.accuracy_post is None else acc - sc.accuracy_post
    acc_tol = sc.accuracy_tolerance["value"] if sc.accuracy_tolerance else None
    times["total"] = time.perf_counter() - t0
    return {
        "task": task.name,
        "model": task.model,
        "estimates": est,
        "measured": meas.value,
        "measured_stderr": meas.stderr,
        "loss_post": float(np.mean(sc.loss_post)),
        "tolerance": tol,
        "class": {
            **{n: riemann.classify(v, tol) for n, v in est.items()},
            "measured": riemann.classify(meas.value, tol),
        },
        "accuracy_name": pair.info.get("accuracy_name"),
        "accuracy_post": sc.accuracy_post,
        "accuracy": acc,
        "accuracy_delta": acc_delta,
        "class_accuracy": None if acc_delta is None or acc_tol is None else riemann.classify(-acc_delta, acc_tol),
        "donors": terms,
        "own": donors[i],
        "rounding": rounding,
        "modules": path.modules,
        "second_order_terms": second.terms,
        "change_norm": float(np.sqrt(float(_vdot(change, change)))),
        "unmoved_fraction": art.unmoved_fraction,
        "seconds": times,
    }


def score_merge(plan: merges.Plan, tasks: Sequence[Task], *, name: str | None = None) -> dict[str, Any]:
    """Build the merge of ``plan`` and score it on every task (``tasks`` in the config's order)."""
    t0 = time.perf_counter()
    result = merged(plan, tasks)
    build_s = time.perf_counter() - t0
    donors = [t.name for t in tasks] + (["base (input)"] if plan.base_weight is not None else [])
    if len(set(donors)) != len(donors):
        raise ValueError(f"tasks need unique names to key per-donor terms; got {donors} (see merge.labels)")
    rows = [score_task(task, i, result, donors) for i, task in enumerate(tasks)]
    return {
        "name": name or Path(plan.config.source).stem,
        "config": plan.record(),
        "merge_settings": _settings_record(result.settings),
        "tasks": rows,
        "seconds": {"merge": build_s, "total": time.perf_counter() - t0},
    }


def _settings_record(settings: dict[str, Any]) -> dict[str, Any]:
    """The engine's record of the resolved settings, each entry kept if JSON can hold it."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        try:
            json.dumps(v)
            out[k] = v
        except (TypeError, ValueError):
            out[k] = repr(v)[:200]
    return out


def summary(rows: Sequence[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """Per estimator, over every (merge, task) row: Spearman, class agreement (and the rest of
    :func:`analysis.study.suite.metrics`) with bootstrap 95 % intervals resampling rows
    (``<name>_ci95``); the pooled Spearman's interval resampling *tasks* (``spearman_ci95_tasks``:
    the rows of one task share its data and its fine-tune, so they are not independent); and the
    Spearman within each task, over its rows across merges (``spearman_within_task``, with their
    mean)."""
    from analysis.study import stats

    meas = np.asarray([r["measured"] for r in rows], np.float64)
    mc = [r["class"]["measured"] for r in rows]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    of_task = [np.asarray([k for k, r in enumerate(rows) if r["task"] == t]) for t in tasks]
    out = {}
    for n in ESTIMATORS:
        pred = np.asarray([r["estimates"][n] for r in rows], np.float64)
        m = suite.metrics(pred, meas, [r["class"][n] for r in rows], mc, seed=seed)

        def pooled(ids: np.ndarray, pred: np.ndarray = pred) -> float:
            idx = np.concatenate([of_task[int(i)] for i in ids])
            return stats.spearman(pred[idx], meas[idx])

        within = {
            t: stats.spearman(pred[idx], meas[idx]) if len(idx) > 1 else float("nan") for t, idx in zip(tasks, of_task)
        }
        finite = [v for v in within.values() if np.isfinite(v)]
        out[n] = {
            **m,
            "bootstrap": "spearman_ci95 and the other _ci95: rows resampled; spearman_ci95_tasks: tasks resampled "
            "(each with all its rows)",
            "spearman_ci95_tasks": stats.bootstrap_ci(pooled, np.arange(len(tasks)), seed=seed),
            "spearman_within_task": within,
            "spearman_within_task_mean": float(np.mean(finite)) if finite else float("nan"),
            "tasks": len(tasks),
        }
    return out


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:+.4g}"


def markdown_merge(m: dict[str, Any]) -> list[str]:
    c = m["config"]
    lines = [
        f"## {m['name']}",
        "",
        f"`{c['merge_method']}` of {', '.join(f'`{x}`' for x in c['models'])} on base `{c['base_model']}` "
        f"(random_seed {c['random_seed']}, dtype {c['dtype'] or 'as stored'}); merge built in "
        f"{m['seconds']['merge']:.2f} s, scored in {m['seconds']['total']:.1f} s.",
        "",
        "| task | riemann | first-order | second-order | measured | class (riemann / measured) | accuracy "
        "(post → merged) |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in m["tasks"]:
        e = t["estimates"]
        acc = "—" if t["accuracy"] is None else f"{t['accuracy_post']:.4g} → {t['accuracy']:.4g}"
        lines.append(
            f"| {t['task']} | {_f(e['riemann'])} | {_f(e['first-order'])} | {_f(e['second-order'])} | "
            f"{_f(t['measured'])} | {t['class']['riemann']} / {t['class']['measured']} | {acc} |"
        )
    donors = list(m["tasks"][0]["donors"])
    lines += [
        "",
        "Per donor (⟨ḡ_i, part_j⟩; the task's own model: ⟨ḡ_i, part_i − τ_i⟩; rounding, computed on its own: "
        "⟨ḡ_i, ΔW~_i − (Σ part − τ_i)⟩, the stored merge against the float32 parts). The sum checks the Riemann "
        "estimate.",
        "",
        "| task | " + " | ".join(donors) + " | rounding | sum |",
        "|---|" + "---|" * (len(donors) + 2),
    ]
    for t in m["tasks"]:
        cells = [f"**{_f(t['donors'][d])}**" if d == t["own"] else _f(t["donors"][d]) for d in donors]
        total = sum(t["donors"].values()) + t["rounding"]
        lines.append(f"| {t['task']} | " + " | ".join(cells) + f" | {_f(t['rounding'])} | {_f(total)} |")
    lines.append("")
    return lines


def markdown(record: dict[str, Any]) -> str:
    lines = [
        "# Merges: predicted and measured loss change on each fine-tune's task",
        "",
        "For fine-tune i the merge is the edit ΔW~_i = W_merge − W_post_i. Estimates and measurements on the test "
        "batches of task i's data; classes with the tolerance fixed on its calibration batches. Estimators: "
        + "; ".join(f"**{n}**: {d}" for n, d in ESTIMATOR_NOTES.items())
        + ".",
        "",
    ]
    if "summary" in record:
        lines += [
            f"Agreement over {record['rows']} (merge, task) rows; wall time {record['elapsed_s']:.1f} s. "
            "Pooled Spearman over all rows, with bootstrap 95 % intervals resampling rows and resampling tasks "
            "(each task with all its rows: rows of one task share its data and fine-tune); within-task Spearman: "
            "over one task's rows across merges, its mean over tasks, and its range.",
            "",
            "| estimator | Spearman | 95 % CI (rows) | 95 % CI (tasks) | within-task Spearman: mean [min, max] | "
            "class agreement | 95 % CI (rows) |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, s in record["summary"].items():
            lo, hi = s["spearman_ci95"]
            tlo, thi = s["spearman_ci95_tasks"]
            clo, chi = s["class_agreement_ci95"]
            within = [v for v in s["spearman_within_task"].values() if np.isfinite(v)]
            span = f"[{min(within):.3f}, {max(within):.3f}]" if within else "—"
            lines.append(
                f"| {n} | {s['spearman']:.3f} | [{lo:.3f}, {hi:.3f}] | [{tlo:.3f}, {thi:.3f}] | "
                f"{s['spearman_within_task_mean']:.3f} {span} | {s['class_agreement']:.3f} | [{clo:.3f}, {chi:.3f}] |"
            )
        lines.append("")
        first = next(iter(record["summary"].values()))
        cells = {
            t: "; ".join(f"{n} {s['spearman_within_task'][t]:.3f}" for n, s in record["summary"].items())
            for t in first["spearman_within_task"]
        }
        per_task = ", ".join(f"{t} ({c})" for t, c in cells.items())
        lines += [f"Within-task Spearman per task: {per_task}.", ""]
    if "measured_classes" in record:
        counts = ", ".join(f"{c} {k}" for c, k in record["measured_classes"].items())
        lines += [f"Measured classes over the rows: {counts}.", ""]
    for fam, w in record.get("weights", {}).items():
        lines += markdown_weights(fam, w)
    for m in record["merges"]:
        lines += markdown_merge(m)
    return "\n".join(lines)


def markdown_weights(family: str, w: dict[str, Any]) -> list[str]:
    """The task-arithmetic weights recommended for one family, against the measured grid."""
    g = w["grid"]["shared"]
    lines = [
        f"## Choosing task-arithmetic weights: {family}",
        "",
        f"Recommended from one quadratic per task at its fine-tune (calibration batches: one gradient and "
        f"{len(w['pairs'])} Hessian-vector products each), minimising the predicted worst-task ΔL over "
        f"λ ∈ [{w['bounds'][0]:g}, {w['bounds'][1]:g}]; measured on the test batches next to "
        f"{g['points']} shared weights (best: λ = {g['best_lam'][0]:g}, worst-task ΔL "
        f"{g['best_measured_objective']:.4g}). Wall time {w['wall_s']['total']:.1f} s.",
        "",
        "| recommendation | λ | predicted worst-task ΔL | measured worst-task ΔL | above the best grid point |",
        "|---|---|---|---|---|",
    ]
    for kind, r in w["recommended"].items():
        lam = ", ".join(f"{x:.3f}" for x in r["recommendation"]["lam"])
        lines.append(
            f"| {kind} | {lam} | {r['predicted_objective']:.4g} | {r['measured_objective']:.4g} | "
            f"{r['gap_percent']:+.1f} % |"
        )
    best = g["best_measured_objective"]
    for name, r in w["reference"].items():
        lam = ", ".join(f"{x:.3f}" for x in r["lam"])
        lines.append(
            f"| {name} | {lam} | {r['predicted_objective']:.4g} | {r['measured_objective']:.4g} | "
            f"{100 * (r['measured_objective'] - best) / abs(best):+.1f} % |"
        )
    lines.append("")
    for kind, r in w["recommended"].items():
        if r["gap_percent"] > MISS_PERCENT:
            lines += [weights_miss_note(kind, r, g, w["pairs"]), ""]
    return lines


MISS_PERCENT = 5.0
FAR = 0.3  # ‖d_i‖/‖τ_i‖ beyond which a quadratic at the fine-tune is far from where it was fitted


def weights_miss_note(kind: str, r: dict[str, Any], grid: dict[str, Any], tasks: Sequence[str]) -> str:
    """Why a recommendation misses the best measured grid point: predicted against measured
    worst-task ΔL at the recommendation and at the best grid point, and how far the merge moves each
    task's model from its fine-tune (``step_ratio`` = ‖d_i‖/‖τ_i‖, recorded by the recommendation)."""
    pred_best = max(grid["predicted_at_best"])
    ratios = r["recommendation"].get("step_ratio") or []
    lam = ", ".join(f"{x:.3f}" for x in r["recommendation"]["lam"])
    best_lam = ", ".join(f"{x:g}" for x in grid["best_lam"])
    text = (
        f"**Why the {kind} recommendation misses the best grid point by {r['gap_percent']:+.1f} %:** at λ = {lam} "
        f"the quadratic at each fine-tune predicts a worst-task ΔL of {r['predicted_objective']:.3g} where "
        f"{r['measured_objective']:.3g} is measured; at the best grid point (λ = {best_lam}) it predicts "
        f"{pred_best:.3g} where {grid['best_measured_objective']:.3g} is measured."
    )
    if ratios:
        k = int(np.argmax(ratios))
        who = f" ({tasks[k]})" if k < len(tasks) else ""
        text += f" The recommended merge moves ‖d‖ = {ratios[k]:.2g}‖τ‖{who}"
        text += (
            ", far outside the region where a quadratic at the fine-tune holds."
            if ratios[k] > FAR
            else ", a short step: the miss is in the quadratic's curvature, not in how far it is extrapolated."
        )
    return text


def write(record: dict[str, Any], out: Path) -> list[Path]:
    """``merge.json``, then ``merge.md``, then ``merge.png``, each written atomically."""
    from analysis.reporting import merge_figures

    paths = [files.write_json(out / "merge.json", record), files.write_text(out / "merge.md", markdown(record))]
    if "summary" in record:
        firsts = {}
        for i, m in enumerate(record["merges"]):
            firsts.setdefault(m.get("family"), i)
        fig = merge_figures.suite_figure(record["merges"], ESTIMATORS, list(firsts.values()))
    else:
        fig = merge_figures.merge_figure(record["merges"][0])
    paths.append(files.save_figure(fig, out / "merge.png"))
    return paths


def run(
    plan: merges.Plan,
    tasks: Sequence[Task],
    out: Path,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score one configuration and write its report into ``out`` (new or empty)."""
    t0 = time.perf_counter()
    log(f"[merge] {plan.config.method} of {len(tasks)} models")
    m = score_merge(plan, tasks)
    record = {"merges": [m], "elapsed_s": time.perf_counter() - t0}
    for p in write(record, out):
        log(f"[merge] wrote {p}")
    return record


# ---------------------------------------------------------------------------------------------
# The built-in suite: every method on the workbench's fine-tunes.

FAMILIES = {"vision": ("vit/rotated", "vit/inverted", "vit/parity"), "language": ("lm/arithmetic", "lm/strings")}


def suite_configs(root: Path, family: str) -> dict[str, dict[str, Any]]:
    """The built-in configurations of one family, as mergekit YAML mappings (read by
    :func:`analysis.study.merges.read` like any file): every method once, and a few at other
    densities or weights."""
    names = FAMILIES[family]
    base = str(root / names[0].split("/")[0] / "pre")
    models = [str(root / n) for n in names]
    w = round(1.0 / len(names), 4)

    def cfg(
        method: str, per: dict[str, Any], top: dict[str, Any] | None = None, lead: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        # ``lead``: the first model's own parameters, so one fine-tune dominates the merge and its task
        # can come out competitive while the others' decrease (a suite of only "decreased" rows would
        # make class agreement uninformative).
        return {
            "merge_method": method,
            "base_model": base,
            "models": [{"model": m, "parameters": dict(lead if lead and not i else per)} for i, m in enumerate(models)],
            **({"parameters": top} if top else {}),
            "random_seed": 0,
        }

    return {
        # The first model at weight 2: with equal weights the normalized linear merge is the average,
        # which duplicates task_arithmetic-w0.5 for two models (and -w1/n in general).
        "linear": cfg("linear", {"weight": 1.0}, {"weight": 0.0}, lead={"weight": 2.0}),
        "task_arithmetic-w0.5": cfg("task_arithmetic", {"weight": 0.5}),
        "task_arithmetic-w1": cfg("task_arithmetic", {"weight": 1.0}),
        "ties-d0.3": cfg("ties", {"weight": 1.0, "density": 0.3}),
        "ties-d0.7": cfg("ties", {"weight": 1.0, "density": 0.7}),
        "dare_ties-d0.5": cfg("dare_ties", {"weight": w, "density": 0.5}),
        "dare_linear-d0.3": cfg("dare_linear", {"weight": 0.5, "density": 0.3}),
        "della-d0.5": cfg("della", {"weight": 1.0, "density": 0.5, "epsilon": 0.1}),
        "della_linear-d0.5": cfg("della_linear", {"weight": 0.5, "density": 0.5, "epsilon": 0.1}),
        "breadcrumbs-d0.8": cfg("breadcrumbs", {"weight": 0.5, "density": 0.8, "gamma": 0.01}),
        "breadcrumbs_ties-grad": cfg("breadcrumbs_ties", {"weight": [0.3, 0.7], "density": 0.8, "gamma": 0.01}),
        "task_arithmetic-lead": cfg("task_arithmetic", {"weight": 0.05}, lead={"weight": 1.0}),
        "ties-lead-d0.7": cfg("ties", {"weight": 0.1, "density": 0.7}, lead={"weight": 1.0, "density": 0.7}),
    }


def suite_run(
    out: Path,
    load_pair: Callable[[str], Pair],
    root: Path,
    *,
    families: Sequence[str] = tuple(FAMILIES),
    configs: Sequence[str] | None = None,
    seed: int = 0,
    weights: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every built-in configuration on the workbench fine-tunes at ``root`` (the directory the
    pairs were loaded from), agreement of each estimator over all (merge, task) rows; writes the
    report into ``out``.

    With ``weights``, each family's task-arithmetic weights are also recommended from its
    calibration statistics (:func:`analysis.study.merge_weights.choose_weights`: one shared ``λ``
    and one ``λ`` per fine-tune, minimising the predicted worst-task ``ΔL``) and measured on the
    test batches against a measured grid of shared weights 0, 0.1, …, 1.5."""
    t0 = time.perf_counter()
    merged_records = []
    chosen_weights: dict[str, Any] = {}
    for fam in families:
        cfgs = suite_configs(root, fam)
        unknown = [c for c in configs or () if c not in cfgs]
        if unknown:
            raise ValueError(f"configs: unknown configuration(s) {', '.join(unknown)}; accepted: {', '.join(cfgs)}")
        chosen = list(cfgs) if configs is None else list(configs)
        tasks = []
        for name in FAMILIES[fam]:
            pair = load_pair(name)
            if tasks:  # one loss of the shared base's forward for the family: compiled once, not per task
                pair = dataclasses.replace(pair, loss_fn=tasks[0].pair.loss_fn)
            tasks.append(task_of(pair, str(root / name), seed=seed))
        with riemann.progress_bar(progress, desc=f"{fam} merges", unit="merge", total=len(chosen)) as bar:
            for c in chosen:
                plan = merges.check(merges.read(cfgs[c], source=f"built-in:{fam}/{c}"))
                rec = score_merge(plan, tasks, name=f"{fam}/{c}")
                rec["family"] = fam
                merged_records.append(rec)
                bar.update(1)
        log(f"[merge] {fam}: {len(chosen)} merges of {len(tasks)} fine-tunes scored")
        if weights:
            w = merge_weights.choose_weights([t.pair for t in tasks], seed=seed, vector_grid=None, progress=progress)
            chosen_weights[fam] = w
            rec = w["recommended"]["shared"]
            log(
                f"[merge] {fam}: recommended shared λ {rec['recommendation']['lam'][0]:.3f}, worst-task ΔL "
                f"measured {rec['measured_objective']:.4g} against the best grid point's "
                f"{rec['best_grid_objective']:.4g} ({rec['gap_percent']:+.1f} %)"
            )
    rows = [t for m in merged_records for t in m["tasks"]]
    record = {
        "suite": "built-in",
        "families": {f: list(FAMILIES[f]) for f in families},
        "merges": merged_records,
        "rows": len(rows),
        "summary": summary(rows, seed=seed),
        "measured_classes": {c: sum(r["class"]["measured"] == c for r in rows) for c in riemann.CLASSES},
        **({"weights": chosen_weights} if weights else {}),
        "elapsed_s": time.perf_counter() - t0,
    }
    for p in write(record, out):
        log(f"[merge] wrote {p}")
    return record
