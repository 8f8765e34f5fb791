"""The main job: an edit suite on one or more pairs, written to a run directory that a killed
run resumes from.

Run directory::

    run.json                 settings, versions, status ("running" → "complete")
    progress/<pair>/checks.json        per-pair checks, written when done
    progress/<pair>/edits/<id>.json    one record per scored edit, each written atomically
    results.json, report.md, *.png     at the end

Starting with an ``out`` that holds an unfinished run with the same settings resumes it: the
pair checks and every edit already written are kept; only the rest is computed. Anything else
already in ``out`` (a complete run, another run's settings, unrelated files) is refused, never
overwritten.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import platform
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from analysis import files, hosts
from analysis.jobs import workers
from analysis.pairs import registry, split
from analysis.pairs.pair import Pair
from analysis.study import claims, suite
from analysis.study.estimators import DEFAULT_ESTIMATORS, DEFAULT_SEEDS, ESTIMATORS

DEFAULT_PAIRS = registry.DEFAULT
TOLERANCE_RULE = (
    "max(0.05·|gain|, t(0.975, n_cal − 1)·sd_b(L_b(W_post − 0.05·ΔW) − L_b(W_post))/√n_test), both from the "
    "calibration batches, fixed before any edit is scored (analysis.study.tolerance)"
)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What a run computes; two runs with equal settings give equal numbers."""

    pairs: tuple[str, ...] = DEFAULT_PAIRS
    edits: tuple[str, ...] = ()
    seed: int = 0
    seeds: int = DEFAULT_SEEDS
    calibration: int = split.DEFAULT_CALIBRATION
    probes: int = suite.DEFAULT_PROBES
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    size: str = "full"
    checkpoints: dict[str, Any] | None = (
        None  # {"pre", "post", "data", "batch_size", "max_len", "max_batches", "dtype", "remat"}
    )

    def record(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def versions() -> dict[str, str]:
    import flax
    import jax
    import numpy as np
    import optax

    import riemann

    return {
        "riemann": riemann.__version__,
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": f"{jax.device_count()} × {jax.devices()[0].device_kind}",
    }


def _edit_file(spec: str) -> str:
    return f"{zlib.crc32(spec.encode()):08x}-{files.slug(spec)[:60]}.json"


def prepare(out: str | Path | None, settings: RunSettings) -> tuple[Path, bool]:
    """The run directory and whether this is a resumption. Refuses (``FileExistsError``) a
    directory holding anything but an unfinished run with identical settings.

    With several processes, process 0 decides (it alone reads and writes the directory) and every
    process gets its decision, or the same error."""
    if hosts.count() == 1:
        return _prepare(out, settings)
    if out is None:
        raise ValueError("several processes need --out: one run directory, written by process 0")

    def decide() -> tuple[str, bool]:  # JSON-broadcastable: the path as text
        path, resumed = _prepare(out, settings)
        return str(path), resumed

    path, resumed = hosts.on_writer(decide)
    return Path(path), resumed


def _prepare(out: str | Path | None, settings: RunSettings) -> tuple[Path, bool]:
    state = {"settings": settings.record()}
    if out is not None and Path(out).is_dir() and (Path(out) / "run.json").is_file():
        out = Path(out)
        try:
            prev = json.loads((out / "run.json").read_text())
        except json.JSONDecodeError:
            raise FileExistsError(f"{out}/run.json is not valid JSON; choose a new --out") from None
        if prev.get("status") == "complete":
            raise FileExistsError(f"{out} holds a complete run; it is never overwritten — choose a new --out")
        if prev.get("settings") != state["settings"]:
            diff = sorted(
                k
                for k in set(prev.get("settings", {})) | set(state["settings"])
                if prev.get("settings", {}).get(k) != state["settings"].get(k)
            )
            raise FileExistsError(
                f"{out} holds an unfinished run with other settings (differing: {', '.join(diff)}); "
                "rerun with the same arguments to resume it, or choose a new --out"
            )
        return out, True
    path = files.fresh_output_dir(out)
    files.write_json(
        path / "run.json",
        {
            **state,
            "status": "running",
            "versions": versions(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        },
    )
    return path, False


@dataclasses.dataclass(frozen=True)
class SharedStore:
    """A store read by process 0 alone and broadcast to the others, so that every process resumes
    the same edits (their collectives must match) even when they do not share a disk."""

    inner: suite.Store

    def checks(self) -> dict[str, Any] | None:
        return hosts.on_writer(self.inner.checks)

    def save_checks(self, checks: dict[str, Any]) -> None:
        hosts.on_writer(lambda: self.inner.save_checks(checks))

    def records(self) -> dict[str, dict[str, Any]]:
        return hosts.on_writer(self.inner.records)

    def save_record(self, record: dict[str, Any]) -> None:
        hosts.on_writer(lambda: self.inner.save_record(record))


@dataclasses.dataclass(frozen=True)
class PairStore:
    """The :class:`analysis.study.suite.Store` of one pair in a run directory:
    ``progress/<pair>/checks.json`` and ``progress/<pair>/edits/<id>.json``, each written atomically."""

    root: Path

    def checks(self) -> dict[str, Any] | None:
        f = self.root / "checks.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def save_checks(self, checks: dict[str, Any]) -> None:
        files.write_json(self.root / "checks.json", checks)

    def records(self) -> dict[str, dict[str, Any]]:
        done = {}
        for f in sorted((self.root / "edits").glob("*.json")):
            rec = json.loads(f.read_text())
            done[rec["spec"]] = _restore_nan(rec)
        return done

    def save_record(self, record: dict[str, Any]) -> None:
        files.write_json(self.root / "edits" / _edit_file(record["spec"]), record)


def _restore_nan(record: dict[str, Any]) -> dict[str, Any]:
    """A record read back from JSON, where NaN was written as null: the measured change, every
    estimate and every standard error are NaN again, so resumed and uninterrupted runs give the
    same statistics (whatever estimators are registered)."""
    nan = float("nan")
    out = dict(record)
    if out.get("measured", 0.0) is None:
        out["measured"] = nan
    for key in ("estimates", "stderr"):
        if isinstance(out.get(key), dict):
            out[key] = {k: nan if v is None else v for k, v in out[key].items()}
    if isinstance(out.get("measured_seeds"), list):
        out["measured_seeds"] = [nan if v is None else v for v in out["measured_seeds"]]
    if isinstance(out.get("estimates_seeds"), dict):
        out["estimates_seeds"] = {k: [nan if v is None else v for v in vs] for k, vs in out["estimates_seeds"].items()}
    return out


@dataclasses.dataclass(frozen=True)
class PairLoader:
    """Loads a pair by name for ``settings`` (a workbench pair, or the ``--pre/--post/--data`` pair).
    A plain object, so that worker processes can be sent it (:mod:`analysis.jobs.workers`)."""

    settings: Any  # RunSettings, or any object with .checkpoints, .size and .seed
    quiet: bool = True

    def prepare(self, names: Sequence[str]) -> None:
        """What loading ``names`` would build, built here once: worker processes loading workbench
        pairs from an empty cache would each build the whole workbench, over each other."""
        if self.settings.checkpoints is None and any(registry.PAIRS[n].kind == "workbench" for n in names):
            from analysis.pairs import workbench

            workbench.locate(self.settings.size, progress=not self.quiet)

    def __call__(self, name: str) -> Pair:
        c = self.settings.checkpoints
        if c is None:
            return registry.load_pair(name, size=self.settings.size, seed=self.settings.seed, progress=not self.quiet)
        from analysis import pairs

        mesh = None
        if hosts.count() > 1:  # one FSDP axis over every process's devices
            import jax

            mesh = jax.make_mesh((jax.device_count(),), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
        return pairs.from_checkpoints(
            c["pre"],
            c["post"],
            c["data"],
            batch_size=c["batch_size"],
            max_len=c["max_len"],
            max_batches=c["max_batches"],
            dtype=c["dtype"],
            name=name,
            remat=bool(c.get("remat", False)),
            mesh=mesh,
            axis="fsdp" if mesh is not None else None,
        )


@dataclasses.dataclass(frozen=True)
class _Ticking:
    """A store that also tells the relay each time an edit's record is saved (the parent's bar)."""

    inner: suite.Store
    tick: Callable[[], None]

    def checks(self) -> dict[str, Any] | None:
        return self.inner.checks()

    def save_checks(self, checks: dict[str, Any]) -> None:
        self.inner.save_checks(checks)

    def records(self) -> dict[str, dict[str, Any]]:
        return self.inner.records()

    def save_record(self, record: dict[str, Any]) -> None:
        self.inner.save_record(record)
        self.tick()


def _analyse_pair(
    name: str,
    relay: workers.Relay,
    *,
    settings: RunSettings,
    out: Path,
    specs: list[str],
    load_pair: Callable[[str], Pair],
) -> dict[str, Any]:
    """One pair of a run in a worker process: its bars are the parent's one bar, its lines the parent's."""
    relay.log(f"[riemann] pair {name}")
    store = _Ticking(_pair_store(out, name), relay.tick)
    return _analyse(load_pair(name), settings, specs, store, progress=False, log=relay.log)


def _pair_store(out: Path, name: str) -> PairStore:
    return PairStore(out / "progress" / files.slug(name))


def _analyse(
    pair: Pair,
    settings: RunSettings,
    specs: list[str],
    store: suite.Store,
    *,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    return suite.analyse(
        pair,
        specs,
        seed=settings.seed,
        seeds=settings.seeds,
        calibration=settings.calibration,
        probes=settings.probes,
        estimators=settings.estimators,
        progress=progress,
        log=log,
        store=store,
    )


def execute(
    settings: RunSettings,
    out: Path,
    load_pair: Callable[[str], Pair],
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run every pair of ``settings`` into ``out`` (see :func:`prepare`), resuming what exists,
    and write the report. Returns the results record.

    ``jobs`` > 1 analyses up to that many pairs at once, each in its own worker process
    (:mod:`analysis.jobs.workers`; ``load_pair`` must then be picklable, e.g. a :class:`PairLoader`),
    with one progress bar over all edits. Each pair's numbers are the same either way: nothing in
    a pair's analysis depends on another's. Its seconds are its process's, on a core it may share."""
    from analysis.reporting import report  # Matplotlib only when a report is written

    t0 = time.perf_counter()
    specs = list(settings.edits) or suite.default_suite()
    side_by_side = jobs > 1 and hosts.count() == 1 and len(settings.pairs) > 1
    if side_by_side:
        if isinstance(load_pair, PairLoader):
            load_pair.prepare(settings.pairs)
        for n in settings.pairs:
            (_pair_store(out, n).root / "edits").mkdir(parents=True, exist_ok=True)
        wanted = {e.spec for e in suite.check_specs(specs)}  # records keep the canonical spec
        done = sum(len(_pair_store(out, n).records().keys() & wanted) for n in settings.pairs)
        per_pair = workers.each(
            functools.partial(_analyse_pair, settings=settings, out=out, specs=specs, load_pair=load_pair),
            settings.pairs,
            jobs=jobs,
            log=log,
            progress=progress,
            total=len(specs) * len(settings.pairs),
            initial=done,
            desc=f"{len(settings.pairs)} pairs in {min(jobs, len(settings.pairs))} processes",
        )
    else:
        per_pair = []
        for name in settings.pairs:
            here = _pair_store(out, name)
            hosts.on_writer(lambda here=here: (here.root / "edits").mkdir(parents=True, exist_ok=True))
            store = here if hosts.count() == 1 else SharedStore(here)
            log(f"[riemann] pair {name}")
            per_pair.append(_analyse(load_pair(name), settings, specs, store, progress=progress, log=log))
    run_state = hosts.on_writer(lambda: json.loads((out / "run.json").read_text()))
    results = {
        "settings": {
            **settings.record(),
            "edits": specs,
            "estimators": {n: ESTIMATORS[n].settings for n in settings.estimators},
            "tolerance_rule": TOLERANCE_RULE,
            "edit_keys": suite.KEY_RULE,
        },
        "versions": run_state.get("versions", versions()),
        "pairs": per_pair,
        "summary": summary(per_pair),
        "elapsed_s": time.perf_counter() - t0,
        # Pairs analysed at once (one process each) and the cores they shared: their seconds are
        # each process's own, timed beside the others'.
        "processes": {
            "pairs_at_once": min(jobs, len(settings.pairs)) if side_by_side else 1,
            "cpu_cores": workers.cpu_cores(),
        },
    }
    results["claims"] = claims.check(results)

    def finish() -> None:  # process 0 of several writes; the others do not even draw the figures
        for path in report.write(results, out):
            log(f"[riemann] wrote {path}")
        files.write_json(
            out / "run.json",
            {**run_state, "status": "complete", "finished": datetime.datetime.now().isoformat(timespec="seconds")},
        )

    hosts.on_writer(finish)
    return results


def summary(per_pair: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per estimator, across pairs: Spearman per pair (min and mean), class agreement pooled over
    every edit of every pair, seconds spent (and, for shared estimators, how many of them went to the
    passes made once, the seconds per edit beyond those, and from how many edits on the shared passes
    cost less than measuring each edit), and for ``auto`` the share of edits it measured; and the best
    estimator by mean Spearman among those that measure nothing."""
    import numpy as np

    from analysis.study import stats

    names = list(per_pair[0]["agreement"]) if per_pair else []
    out: dict[str, Any] = {}
    for n in names:
        rhos = [p["agreement"][n]["spearman"] for p in per_pair]
        # Each estimator against the measurement of the masks it ran on, as in the per-pair agreement.
        agree = np.array(
            [
                r["class"][n] == r.get("class_measured_for", {}).get(n, r["class"]["measured"])
                for p in per_pair
                for r in p["edits"]
            ],
            float,
        )
        out[n] = {
            "spearman_by_pair": {p["pair"]["name"]: p["agreement"][n]["spearman"] for p in per_pair},
            "spearman_ci95_by_pair": {p["pair"]["name"]: p["agreement"][n].get("spearman_ci95") for p in per_pair},
            "spearman_min": float(np.min(rhos)),
            "spearman_mean": float(np.mean(rhos)),
            "class_agreement": float(np.mean(agree)) if len(agree) else float("nan"),
            "class_agreement_ci95": stats.bootstrap_ci(np.mean, agree),
            "seconds": float(sum(p["agreement"][n]["seconds"] for p in per_pair)),
            "edits": len(agree),
        }
        once = [p.get("shared", {}).get("estimators", {}).get(n) for p in per_pair]
        if len(agree) and all(o is not None for o in once):
            shared_s = float(sum(o["seconds"] for o in once))
            out[n]["seconds_shared"] = shared_s
            out[n]["seconds_per_edit"] = (out[n]["seconds"] - shared_s) / len(agree)
    measured_s = float(sum(r["seconds"]["measured"] for p in per_pair for r in p["edits"]))
    n_edits = sum(len(p["edits"]) for p in per_pair)
    measured_per_edit = measured_s / n_edits if n_edits else float("nan")
    for n in names:
        if "seconds_shared" in out[n]:
            # Edits at which the passes made once are paid for by what each edit saves against measuring.
            saved = measured_per_edit - out[n]["seconds_per_edit"]
            out[n]["break_even_edits"] = out[n]["seconds_shared"] / saved if saved > 0 else None  # never
        fractions = [p["agreement"][n].get("measured_fraction") for p in per_pair]
        if fractions and all(f is not None for f in fractions):
            sizes = [p["agreement"][n]["edits"] for p in per_pair]
            out[n]["measured_fraction"] = float(np.average(fractions, weights=sizes))
            out[n]["measured_fraction_by_pair"] = {p["pair"]["name"]: f for p, f in zip(per_pair, fractions)}
    # An estimator that measures some edits (auto) is not a prediction: it does not compete for best.
    predictors = [n for n in names if "measured_fraction" not in out[n]]
    best = max(predictors, key=lambda n: (out[n]["spearman_mean"], out[n]["class_agreement"])) if predictors else None
    return {
        "estimators": out,
        "best": best,
        "measured_seconds": measured_s,
        "measured_seconds_per_edit": measured_per_edit,
    }
