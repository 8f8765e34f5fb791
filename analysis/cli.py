"""The ``riemann`` command. Heavy modules are imported inside the commands so ``--help`` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


def _run_settings(args: argparse.Namespace) -> Any:
    from analysis.jobs import run
    from analysis.pairs import registry
    from analysis.study import estimators, suite

    specs = tuple(args.edits or ())
    suite.check_specs(list(specs) or suite.default_suite())  # bad specs fail before anything heavy
    user = None
    if args.pre or args.post or args.data:
        missing = [f"--{n}" for n in ("pre", "post", "data") if not getattr(args, n)]
        if missing:
            raise ValueError(f"checkpoint pairs need --pre, --post and --data; missing {', '.join(missing)}")
        if args.pair:
            raise ValueError("give either --pair or --pre/--post/--data, not both")
        user = {
            # Directories made absolute; Hub ids kept as given, for each process to resolve in its own cache.
            "pre": str(Path(args.pre).resolve()) if Path(args.pre).is_dir() else args.pre,
            "post": str(Path(args.post).resolve()) if Path(args.post).is_dir() else args.post,
            "data": str(Path(args.data).resolve()),
            "batch_size": args.batch_size,
            "max_len": args.max_len,
            "max_batches": args.max_batches,
            "dtype": args.dtype,
            "remat": args.remat,
        }
        pairs: tuple[str, ...] = (f"{Path(args.pre).name}→{Path(args.post).name}",)
    else:
        pairs = registry.check_names(args.pair or run.DEFAULT_PAIRS)
    names = tuple(estimators.check_names(tuple(args.estimators or estimators.DEFAULT_ESTIMATORS)))
    if args.probes < 1:
        raise ValueError(f"--probes {args.probes}: expected at least 1 Hutchinson probe per batch")
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: expected at least 1 mask per random edit")
    if args.calibration_batches < 1:
        raise ValueError(f"--calibration-batches {args.calibration_batches}: expected at least 1")
    return run.RunSettings(
        pairs=pairs,
        edits=specs,
        seed=args.seed,
        seeds=args.seeds,
        calibration=args.calibration_batches,
        probes=args.probes,
        estimators=names,
        size=args.size,
        checkpoints=user,
    )


def _pair_loader(settings: Any, quiet: bool) -> Callable[[str], Any]:
    from analysis.jobs import run

    return run.PairLoader(settings, quiet)


def _cmd_run(args: argparse.Namespace) -> int:
    from analysis import hosts
    from analysis.jobs import run, workers

    several = hosts.from_env()  # RIEMANN_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID (or JAX's): several processes
    settings = _run_settings(args)
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: expected at least 1 worker process")
    if several:
        _check_several(args, settings)
    if settings.checkpoints is not None:
        # Architectures from headers and the data's tokens, before any weights; on every process,
        # and if any process fails, every process stops with its message.
        hosts.all_ok(lambda: _check_user_pair(settings.checkpoints), "checking the checkpoints and data")
    out, resumed = run.prepare(args.out, settings)
    if not hosts.is_writer():  # process 0 reports for all
        run.execute(settings, out, _pair_loader(settings, True), progress=False, log=lambda s: None)
        return 0
    print(
        f"[riemann] {'resuming' if resumed else 'writing'} {out}: {len(settings.pairs)} pair(s), "
        f"{len(settings.edits) or 'default'} edits, seed {settings.seed}",
        flush=True,
    )
    jobs = args.jobs if args.jobs is not None else workers.default_jobs(len(settings.pairs))
    results = run.execute(settings, out, _pair_loader(settings, args.quiet), progress=not args.quiet, jobs=jobs)
    summ = results["summary"]
    best = summ["estimators"][summ["best"]]
    print(
        f"[riemann] best estimator: {summ['best']} (Spearman {best['spearman_min']:.3f}–"
        f"{max(best['spearman_by_pair'].values()):.3f} across pairs, class agreement {best['class_agreement']:.2f}); "
        f"report: {out / 'report.md'}"
    )
    return 0


def _check_user_pair(c: dict[str, Any], headers: bool = True) -> None:
    """Refuse a bad --pre/--post/--data before any weights are read; with ``headers=False`` only
    what needs no tensor header (nor a Hub id's weights downloaded)."""
    from analysis.hf import adapters, checkpoints
    from analysis.pairs import data

    # What needs no tensor header first (configs, adapter options, the data and its tokens: a Hub id
    # fetches configs and tokenizer files only), then the headers (which downloads a Hub id's weights).
    checkpoints.check_configs(c["pre"], c["post"])
    if not str(c["data"]).endswith(".npz"):
        kind, records = data.read_jsonl(c["data"])
        tok = data.load_tokenizer(adapters.tokenizer_source(c["pre"], c["post"]))
        data.tokenize(tok, kind, records, max_len=c["max_len"], source=c["data"])
    if headers:
        checkpoints.check_pair(c["pre"], c["post"])


# Of a checkpoint directory, the files the loader reads (analysis.hf.checkpoints, .adapters, pairs.data)
# besides the safetensors weights the index names: other files a cache holds (added_tokens.json
# written by another tool, a README) differ between hosts without changing what is analysed.
_READ_FILES = ("config.json", "model.safetensors.index.json", "tokenizer.json", "adapter_config.json")
_READ_WEIGHTS = ("model.safetensors", "adapter_model.safetensors")


def _fingerprint(path: str) -> str:
    """A hash of what a process will read from ``path``: a data file's bytes, or a checkpoint
    directory's ``config.json``, safetensors index, ``tokenizer.json`` and adapter config and, for
    each safetensors file the loader reads, its size, its header (the tensor table) and 64 KiB of
    data at its start, middle and end (a copy that differs in shape or in any of those bytes is
    caught without reading gigabytes). Files the loader does not read are left out."""
    import hashlib
    import struct

    h, p = hashlib.sha256(), Path(path)
    if p.is_file():
        files = [p]
    else:
        shards: list[str] = []
        index = p / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                shards = []  # the index's own bytes are hashed; the loader names what is wrong with it
        files = [p / n for n in sorted({*_READ_FILES, *_READ_WEIGHTS, *map(str, shards)})]
    for f in files:
        if not f.is_file():
            continue
        if f.suffix == ".safetensors":
            size = f.stat().st_size
            with open(f, "rb") as stream:
                head = stream.read(8)
                h.update(f.name.encode() + str(size).encode() + head)
                h.update(stream.read(struct.unpack("<Q", head)[0]) if len(head) == 8 else b"")
                for at in (stream.tell(), size // 2, max(size - 65536, 0)):
                    stream.seek(at)
                    h.update(stream.read(65536))
        else:
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _check_several(args: argparse.Namespace, settings: Any) -> None:
    """Several processes analyse one checkpoint pair into one run directory: the same command on the
    same data and checkpoints everywhere, refused on every process alike otherwise."""
    from analysis import hosts
    from analysis.hf import hub
    from analysis.pairs import data

    if settings.checkpoints is None:
        raise ValueError(
            "several processes analyse --pre/--post/--data checkpoints; the workbench pairs run in one process"
        )
    if args.out is None:
        raise ValueError("several processes need --out: one run directory, written by process 0")
    c = settings.checkpoints

    def inputs() -> dict[str, str]:
        if not str(c["data"]).endswith(".npz") and data.read_jsonl(c["data"])[0] == "preference":
            raise ValueError(
                f"{c['data']}: preference (DPO) data runs in one process; several processes take text or "
                "prompt/response records"
            )
        # A Hub id's snapshot may sit in a different cache on each host: compared by content, not path.
        return {k: _fingerprint(str(c[k] if k == "data" else hub.resolve(c[k]))) for k in ("pre", "post", "data")}

    # Fingerprints read (and for a Hub id, download) the weights: refuse what needs none first.
    hosts.all_ok(lambda: _check_user_pair(c, headers=False), "checking the checkpoints and data")
    seen = hosts.all_ok(inputs, "reading the inputs")
    hosts.agree(json.dumps({**settings.record(), "inputs": seen}, sort_keys=True), "arguments, checkpoints or data")


def _cmd_export(args: argparse.Namespace) -> int:
    from analysis import files
    from analysis.hf import checkpoints
    from analysis.jobs import export

    if args.merge is not None:
        if args.edit or args.pre or args.post:
            raise ValueError("--merge exports a merge configuration; give it without --edit, --pre or --post")
        return _export_merge(args)
    if args.edit is None:
        raise ValueError("export needs --edit SPEC (an edit of a pair) or --merge CONFIG.yml (a mergekit merge)")
    edit = export.check_edit(args.edit)  # a bad spec or an occupied --out fails before any weights are read
    files.check_new_dir(args.out)
    if args.pre or args.post:
        if not (args.pre and args.post):
            raise ValueError("export from checkpoints needs both --pre and --post")
        base, template = checkpoints.load_pair(args.pre, args.post, dtype=args.dtype)  # --post: a dir or an adapter
        pre = base.params
    else:
        from analysis.pairs import registry

        pair = registry.load_pair(args.pair, size=args.size, seed=args.seed, progress=not args.quiet)
        if pair.template is None:
            raise ValueError(f"pair {args.pair!r} is not a Hugging Face checkpoint pair; nothing to export it as")
        pre, template = pair.pre, pair.template
    if args.mask < 0:
        raise ValueError(f"--mask {args.mask}: expected a mask index ≥ 0")
    path = export.export(args.out, pre, template, edit.spec, seed=args.seed, mask=args.mask)
    print(f"[riemann] wrote {path}: W_pre + F(ΔW) with F = {edit.spec} (seed {args.seed}), Hugging Face layout")
    return 0


def _export_merge(args: argparse.Namespace) -> int:
    from analysis import files
    from analysis.jobs import export
    from analysis.study import merges

    plan = merges.check(merges.read(args.merge))  # everything checked before any weights are read
    _check_merge_dtype(args.dtype, plan)
    files.check_new_dir(args.out)
    path = export.export_merge(args.out, plan, dtype=args.dtype)
    print(
        f"[riemann] wrote {path}: {plan.config.method} of {len(plan.donors)} models, W_base + Σ parts in "
        f"{args.dtype or plan.config.dtype or 'the stored dtype'}, Hugging Face layout"
    )
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from analysis import files
    from analysis.jobs import reproduce, run

    names = list(reproduce.EXPERIMENTS) if "all" in args.experiment else list(dict.fromkeys(args.experiment))
    unknown = [n for n in names if n not in reproduce.EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; accepted: {', '.join(reproduce.EXPERIMENTS)}, all")
    marker = Path(args.out) / "reproduce.json" if args.out else None
    if marker is not None and marker.is_file():
        if json.loads(marker.read_text()).get("seed") != args.seed:
            raise FileExistsError(f"{args.out} holds reproductions with another seed; choose a new --out")
        out = Path(args.out)  # earlier reproductions: finished experiments are kept, the rest computed
    else:
        out = files.fresh_output_dir(args.out, root="runs")
        files.write_json(out / "reproduce.json", {"seed": args.seed, "size": args.size})
    settings = run.RunSettings(seed=args.seed, size=args.size)
    records = reproduce.reproduce(
        names, _pair_loader(settings, args.quiet), out, seed=args.seed, progress=not args.quiet
    )
    for rec in records:
        print(f"[riemann] {rec['title']}\n    paper: {rec['paper_claim']}\n    ours:  {rec['ours']}")
    print(f"[riemann] wrote {out / 'README.md'}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from analysis import files
    from analysis.jobs import run, sweep
    from analysis.pairs import registry

    names = registry.check_names(args.pair or run.DEFAULT_PAIRS)
    if args.seeds < 2:
        raise ValueError(f"--seeds {args.seeds}: a sweep needs at least 2 masks per measured random point")
    if args.probes < 1:
        raise ValueError(f"--probes {args.probes}: expected at least 1 Hutchinson probe per batch")
    out = files.fresh_output_dir(args.out, root="runs")
    settings = run.RunSettings(seed=args.seed, size=args.size)
    record = sweep.sweep(
        names,
        _pair_loader(settings, args.quiet),
        out,
        seed=args.seed,
        seeds=args.seeds,
        probes=args.probes,
        progress=not args.quiet,
    )
    for r in record["pairs"]:
        sec, ex = r["seconds"], r["expo"]
        print(
            f"[riemann] {r['pair']}: {sec['points_predicted']} points predicted in {sec['predict']:.2f} s "
            f"(+{sec['shared']:.1f} s shared passes; 10 measurements: {sec['ten_measurements']:.2f} s); "
            f"within 2 SE at {r['within_2se']['hits']}/{r['within_2se']['of']} measured points; "
            f"EXPO best α predicted {ex['predicted_best_alpha']:g}, measured {ex['measured_best_alpha']:g}"
        )
    print(f"[riemann] wrote {out / 'sweep.md'}")
    return 0


def _check_merge_dtype(dtype: str | None, plan: Any) -> None:
    """A ``--dtype`` other than the config's ``dtype`` is refused: the merge is mergekit's in its dtype."""
    if dtype is not None and plan.config.dtype is not None and dtype != plan.config.dtype:
        raise ValueError(
            f"--dtype {dtype} differs from the config's dtype {plan.config.dtype} ({plan.config.source}); mergekit "
            "loads and merges in the config's dtype: leave --dtype out, or change dtype in the config"
        )


# riemann merge: the options of one mode that the other does not use (refused, not silently ignored).
_MERGE_SUITE_ONLY = {"family": "--family", "configs": "--configs", "no_weights": "--no-weights", "size": "--size"}
_MERGE_CONFIG_ONLY = {
    "data": "--data",
    "batch_size": "--batch-size",
    "max_len": "--max-len",
    "max_batches": "--max-batches",
    "dtype": "--dtype",
    "calibration_batches": "--calibration-batches",
}
_MERGE_DEFAULTS = {"batch_size": 8, "max_len": 512, "size": "full"}


def _check_merge_options(args: argparse.Namespace) -> None:
    with_config = args.config is not None
    unused = _MERGE_SUITE_ONLY if with_config else _MERGE_CONFIG_ONLY
    given = [flag for dest, flag in unused.items() if getattr(args, dest) not in (None, False, [])]
    if given:
        what = "a merge configuration (scored on --data)" if with_config else "the built-in suite (no CONFIG)"
        applies = "the built-in suite (no CONFIG)" if with_config else "a merge configuration: riemann merge CONFIG.yml"
        raise ValueError(
            f"{', '.join(given)}: not used with {what}; "
            f"{'it applies' if len(given) == 1 else 'they apply'} to {applies}"
        )


def _cmd_merge(args: argparse.Namespace) -> int:
    from analysis import files
    from analysis.pairs.split import DEFAULT_CALIBRATION

    _check_merge_options(args)
    if args.config is None:
        args.size = args.size or _MERGE_DEFAULTS["size"]
        return _merge_suite(args)
    from analysis.jobs import merge
    from analysis.study import merges

    for k, v in {**_MERGE_DEFAULTS, "calibration_batches": DEFAULT_CALIBRATION}.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not args.data:
        raise ValueError("riemann merge CONFIG needs --data: one evaluation file per model, or one for all")
    # The configuration, the checkpoints' headers, the data files and their tokens, --out: all before any weights.
    plan = merges.check(merges.read(args.config))
    _check_merge_dtype(args.dtype, plan)
    merge.check_data(plan, args.data, max_len=args.max_len)
    if args.calibration_batches < 1:
        raise ValueError(f"--calibration-batches {args.calibration_batches}: expected at least 1")
    out = files.fresh_output_dir(args.out, root="runs")
    say = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    say(f"[riemann] merge {args.config}: {plan.config.method} of {len(plan.donors)} models; writing {out}")
    tasks = merge.tasks_from_checkpoints(
        plan,
        args.data,
        batch_size=args.batch_size,
        max_len=args.max_len,
        max_batches=args.max_batches,
        dtype=args.dtype,
        seed=args.seed,
        calibration=args.calibration_batches,
    )
    record = merge.run(plan, tasks, out, log=say)
    for t in record["merges"][0]["tasks"]:
        print(
            f"[riemann] {t['task']}: predicted ΔL {t['estimates']['riemann']:+.4g} (Riemann), "
            f"{t['estimates']['second-order']:+.4g} (second order), measured {t['measured']:+.4g} "
            f"({t['class']['measured']})"
        )
    print(f"[riemann] report: {out / 'merge.md'}")
    return 0


def _merge_suite(args: argparse.Namespace) -> int:
    from analysis import files
    from analysis.jobs import merge
    from analysis.pairs import registry, workbench

    families = list(dict.fromkeys(args.family or merge.FAMILIES))
    if args.configs:
        accepted = list(dict.fromkeys(c for f in families for c in merge.suite_configs(Path("."), f)))
        unknown = [c for c in args.configs if c not in accepted]
        if unknown:
            raise ValueError(
                f"--configs: unknown configuration(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}"
            )
    out = files.fresh_output_dir(args.out, root="runs")
    root, _ = workbench.locate(args.size, progress=not args.quiet)

    def load(name: str) -> Any:
        return registry.load_pair(name, size=args.size, seed=args.seed, progress=not args.quiet)

    log = (lambda s: None) if args.quiet else print
    record = merge.suite_run(
        out,
        load,
        root,
        families=families,
        configs=args.configs,
        seed=args.seed,
        weights=not args.no_weights,
        progress=not args.quiet,
        log=log,
    )
    for n, s in record["summary"].items():
        lo, hi = s["spearman_ci95"]
        tlo, thi = s["spearman_ci95_tasks"]
        print(
            f"[riemann] {n}: Spearman {s['spearman']:.3f} [{lo:.3f}, {hi:.3f}] (rows) [{tlo:.3f}, {thi:.3f}] (tasks), "
            f"within-task {s['spearman_within_task_mean']:.3f}, class agreement "
            f"{s['class_agreement']:.2f} over {record['rows']} (merge, task) rows"
        )
    print(f"[riemann] {len(record['merges'])} merges in {record['elapsed_s']:.1f} s; report: {out / 'merge.md'}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from analysis.perf import plan

    p = plan.plan(
        args.model,
        batch=args.batch,
        seq_len=args.seq_len,
        dtype=args.dtype,
        remat=not args.no_remat,
        device_memory_gib=args.memory,
    )
    print(p.table())
    if args.xla:
        for mode in plan.MODES:
            c = plan.compiled(
                args.model, mode=mode, batch=args.batch, seq_len=args.seq_len, dtype=args.dtype, remat=not args.no_remat
            )
            verdict = (
                "" if p.device_memory is None else (" — fits" if c.total <= p.device_memory else " — does not fit")
            )
            print(c.line() + verdict)
    return 0


def _cmd_edits(args: argparse.Namespace) -> int:
    from riemann import edits

    for name, info in sorted(edits.REGISTRY.items()):
        params = ", ".join(f"{p.name}{'' if p.required else '=' + repr(p.default)}" for p in info.params.values())
        print(f"{name} [{info.paper_class}] ({params})\n    {info.summary}\n    ref: {info.reference}")
    return 0


def _cmd_workbench(args: argparse.Namespace) -> int:
    from analysis.pairs import workbench

    if args.ship and args.size != "full":
        raise ValueError("--ship: only the full workbench ships (drop --size mini)")
    root = workbench.build(args.size, progress=not args.quiet)
    manifest = json.loads((root / "manifest.json").read_text())
    for name, result in manifest["stages"].items():
        keep = {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in result.items()
            if k in ("loss_pre", "loss_post", "accuracy_pre", "accuracy_post", "heldout_loss", "seconds")
        }
        print(f"{name}: {keep}")
    print(f"[riemann] workbench ready in {root}")
    if "shipped" in manifest:
        print(f"[riemann] retrained here vs shipped ({manifest['shipped']['path']}):")
        for name, row in manifest["shipped"]["stages"].items():
            figures = [
                f"{k} {v['shipped']:.4f} shipped, {v['retrained']:.4f} retrained"
                for k, v in row.items()
                if k != "relative_distance"
            ]
            distance = f"‖W_retrained − W_shipped‖/‖W_shipped‖ {row['relative_distance']:.3g}"
            print(f"  {name}: {'; '.join(figures + [distance])}")
    if args.ship:
        print(f"[riemann] shipped this build into {workbench.ship(root)}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from analysis.perf import bench

    return bench.main(args)


def _options(
    *, seed: bool = False, size: bool = False, quiet: bool = False, out: str | None = None
) -> argparse.ArgumentParser:
    """A parent parser holding the options several subcommands share, each declared once."""
    parent = argparse.ArgumentParser(add_help=False)
    if out is not None:
        parent.add_argument(
            "--out", required=out == "required", help=out if out != "required" else "new (or empty) output directory"
        )
    if seed:
        parent.add_argument("--seed", type=int, default=0, help="seed for every random edit and probe (default 0)")
    if size:
        parent.add_argument(
            "--size", choices=["full", "mini"], default="full", help="workbench size (mini: seconds, for tests)"
        )
    if quiet:
        parent.add_argument("--quiet", action="store_true", help="no progress bars")
    return parent


def build_parser() -> argparse.ArgumentParser:
    # Registries without heavy imports: --help stays instant.
    from analysis.pairs import registry
    from analysis.pairs.split import DEFAULT_CALIBRATION, MIN_TEST
    from analysis.perf.bench import BENCHMARKS
    from analysis.study.estimators import (
        DEFAULT_ESTIMATORS,
        DEFAULT_PROBES,
        DEFAULT_SEEDS,
        DEFAULT_SWEEP_SEEDS,
        ESTIMATORS,
    )

    parser = argparse.ArgumentParser(
        prog="riemann",
        description="Delta parameter editing theory: predict and measure how pruning, quantizing, compressing or "
        "extrapolating a post-trained model's delta changes its loss.",
    )
    workbench = _options(seed=True, size=True, quiet=True)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser(
        "run",
        parents=[
            workbench,
            _options(out="output directory (new or empty, or an unfinished run to resume; default: runs/<timestamp>)"),
        ],
        help="analyse an edit suite end to end (default: the built-in workbench)",
        description="Every estimator of every edit's loss change, validated against the measured change. "
        f"With no arguments: the default suite on the workbench pairs {', '.join(registry.DEFAULT)} "
        "(built on first use). Rerun with the same --out and arguments to resume. Several processes (one per "
        "host) analyse one --pre/--post/--data pair together when started with RIEMANN_COORDINATOR=host:port, "
        "RIEMANN_NUM_PROCESSES and RIEMANN_PROCESS_ID (or JAX's JAX_* names) and the same arguments.",
    )
    run.add_argument(
        "--pair",
        nargs="+",
        metavar="NAME",
        help=f"registered pair(s): {', '.join(registry.PAIRS)}; or 'all' (the workbench pairs); "
        f"default: {' '.join(registry.DEFAULT)}",
    )
    run.add_argument(
        "--pre", help="pre-trained HF checkpoint: directory or Hub id org/name[@revision] (with --post and --data)"
    )
    run.add_argument(
        "--post",
        help="post-trained HF checkpoint: directory or Hub id org/name[@revision], or a PEFT LoRA adapter "
        "(directory or Hub id) trained on --pre",
    )
    run.add_argument(
        "--data", help="evaluation JSONL (decoders: text, prompt/response or prompt/chosen/rejected) or .npz (CLIP)"
    )
    run.add_argument("--batch-size", type=int, default=8, help="evaluation batch size for --data (default 8)")
    run.add_argument("--max-len", type=int, default=512, help="token limit per sequence for --data (default 512)")
    run.add_argument("--max-batches", type=int, help="use at most this many evaluation batches of --data")
    run.add_argument("--dtype", choices=DTYPES, help="parameter dtype for --pre/--post (default: as stored)")
    run.add_argument(
        "--remat",
        action="store_true",
        help="recompute each layer in the backward pass for --pre/--post (less memory, ~1 more forward per step)",
    )
    run.add_argument(
        "--edits", nargs="+", metavar="SPEC", help="edit specs, e.g. dare:p=0.9,k=0.5 (default: the built-in suite)"
    )
    run.add_argument(
        "--estimators",
        nargs="+",
        metavar="NAME",
        help=f"default: {' '.join(DEFAULT_ESTIMATORS)}; 'all' for every one of: "
        + "; ".join(f"{n} ({e.cost})" for n, e in ESTIMATORS.items()),
    )
    run.add_argument(
        "--probes",
        type=int,
        default=DEFAULT_PROBES,
        help=f"Hutchinson probes per batch for the shared-curvature estimator (default {DEFAULT_PROBES})",
    )
    run.add_argument(
        "--seeds",
        type=int,
        default=DEFAULT_SEEDS,
        help="masks per random edit (DARE, DELLA, random BitDelta magnitudes), nested across p "
        f"(default {DEFAULT_SEEDS})",
    )
    run.add_argument(
        "--calibration-batches",
        type=int,
        default=DEFAULT_CALIBRATION,
        help=f"evaluation batches kept for calibration (shared gradient, curvature, tolerance); the rest, at least "
        f"{MIN_TEST}, are test batches (default {DEFAULT_CALIBRATION})",
    )
    run.add_argument(
        "--jobs",
        type=int,
        help="pairs analysed at once, each in its own process (default: one per CPU core, up to the number of "
        "pairs, on a CPU backend; 1 on an accelerator). Each pair's numbers are the same; its seconds are "
        "timed on a core it may share",
    )
    run.set_defaults(func=_cmd_run)
    ex = sub.add_parser(
        "export",
        parents=[workbench, _options(out="required")],
        help="write an edited model W_pre + F(ΔW) in Hugging Face layout",
    )
    ex.add_argument("--edit", metavar="SPEC", help="the edit, e.g. dare:p=0.9")
    ex.add_argument(
        "--merge",
        metavar="CONFIG",
        help="instead of an edit: a mergekit YAML; writes W_base + the merged deltas in the config's dtype",
    )
    ex.add_argument("--pair", default="lm/arithmetic", help="workbench pair (default lm/arithmetic)")
    ex.add_argument(
        "--pre", help="pre-trained HF checkpoint: directory or Hub id org/name[@revision] (instead of --pair)"
    )
    ex.add_argument(
        "--post",
        help="post-trained HF checkpoint: directory or Hub id org/name[@revision], or a PEFT LoRA adapter "
        "(directory or Hub id) trained on --pre",
    )
    ex.add_argument(
        "--dtype",
        choices=DTYPES,
        help="parameter dtype (default: as stored; with --merge: the config's dtype, and a different one is refused)",
    )
    ex.add_argument(
        "--mask", type=int, default=0, help="which draw of a random edit, as numbered in riemann run (default 0)"
    )
    ex.set_defaults(func=_cmd_export)
    rp = sub.add_parser(
        "reproduce",
        parents=[
            workbench,
            _options(out="output directory (default: runs/<timestamp>); rerun into it to keep finished experiments"),
        ],
        help="reproduce the paper's figures and tables on the workbench",
        description="Experiments: fig1 fig2 table1 fig3 fig4 fig5 fig6 fig7, or all. Each writes "
        "<name>.json, <name>.md (the paper's claim next to ours) and <name>.png.",
    )
    rp.add_argument("experiment", nargs="+", help="fig1 fig2 table1 fig3 fig4 fig5 fig6 fig7 or all")
    rp.set_defaults(func=_cmd_reproduce)
    sw = sub.add_parser(
        "sweep",
        parents=[workbench, _options(out="output directory (new or empty; default: runs/<timestamp>)")],
        help="predict whole DARE, DELLA, EXPO, BitDelta and low-rank curves from shared passes; check them at "
        "measured points",
        description="From the gradient, Hutchinson diagonal and one Hessian-vector product along ΔW on the "
        "calibration batches: DARE's expected ΔL over a 20 × 10 p × k grid, drop-only, DELLA, EXPO's ΔL(α), "
        "BitDelta's ΔL(multiple) (three more HVPs) and ΔL(magnitude bits), and low rank's ΔL(fraction of the rank "
        "kept), with no model pass per point; then a few points of each measured on the test batches (random "
        "edits over --seeds masks). "
        "Writes sweep.json, sweep.md and <pair>-sweep.png.",
    )
    sw.add_argument(
        "--pair",
        nargs="+",
        metavar="NAME",
        help=f"registered pair(s): {', '.join(registry.PAIRS)}; default: {' '.join(registry.DEFAULT)}",
    )
    sw.add_argument(
        "--seeds",
        type=int,
        default=DEFAULT_SWEEP_SEEDS,
        help=f"masks per measured random point (default {DEFAULT_SWEEP_SEEDS})",
    )
    sw.add_argument(
        "--probes", type=int, default=DEFAULT_PROBES, help=f"Hutchinson probes per batch (default {DEFAULT_PROBES})"
    )
    sw.set_defaults(func=_cmd_sweep)
    mg = sub.add_parser(
        "merge",
        parents=[_options(quiet=True, out="output directory (new or empty; default: runs/<timestamp>)")],
        help="predict and measure what a mergekit merge does to each fine-tune's task",
        description="With a mergekit YAML (models, base_model, merge_method, parameters, dtype, random_seed): for "
        "each fine-tune i, the merge is the edit W_merge − W_i; its loss change on task i (--data) is predicted "
        "(the paper's Riemann sum, first and second order), split per donor and per module, and measured on the "
        "test batches, without writing the merged model. Without a config: the built-in suite, every merge method "
        "on the workbench's fine-tunes. Writes merge.json, merge.md and merge.png.",
    )
    mg.add_argument("config", nargs="?", help="mergekit YAML (default: the built-in suite)")
    mg.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the calibration/test split of every task's batches (default 0); the DARE/DELLA masks come "
        "from the config's random_seed, a riemann extension that mergekit 0.1.5 ignores in YAML (its masks: "
        "its --random-seed and torch's RNG)",
    )
    mg.add_argument(
        "--size",
        choices=["full", "mini"],
        help="built-in suite: workbench size (default full; mini: seconds, for tests)",
    )
    mg.add_argument(
        "--data", nargs="+", metavar="FILE", help="evaluation file per model, in the config's order (or one for all)"
    )
    mg.add_argument("--batch-size", type=int, help="with a config: evaluation batch size for --data (default 8)")
    mg.add_argument("--max-len", type=int, help="with a config: token limit per sequence for --data (default 512)")
    mg.add_argument(
        "--max-batches", type=int, help="with a config: at most this many evaluation batches of each --data"
    )
    mg.add_argument(
        "--dtype",
        choices=DTYPES,
        help="with a config: parameter dtype (default: the config's dtype, else as stored; a different one than the "
        "config's is refused)",
    )
    mg.add_argument(
        "--calibration-batches",
        type=int,
        help=f"with a config: batches per task kept for calibration (default {DEFAULT_CALIBRATION})",
    )
    mg.add_argument("--family", nargs="+", choices=["vision", "language"], help="built-in suite: these families")
    mg.add_argument("--configs", nargs="+", metavar="NAME", help="built-in suite: only these configurations")
    mg.add_argument(
        "--no-weights",
        action="store_true",
        help="built-in suite: skip recommending task-arithmetic weights (and measuring them against a grid)",
    )
    mg.set_defaults(func=_cmd_merge)
    pl = sub.add_parser("plan", help="predict device memory for a checkpoint from its shapes alone (no weights read)")
    pl.add_argument(
        "model",
        help="checkpoint directory or Hub id org/name[@revision] (its config.json alone is fetched), a config.json, "
        "or a preset: llama-3-8b, mistral-7b-v0.3, qwen2-7b, llama-3-70b",
    )
    pl.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    pl.add_argument("--seq-len", type=int, default=4096, help="tokens per sequence (default 4096)")
    pl.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="parameter dtype (default bfloat16)")
    pl.add_argument("--memory", type=float, metavar="GIB", help="device memory in GiB, e.g. 80 (H100) or 141 (H200)")
    pl.add_argument("--no-remat", action="store_true", help="without per-layer rematerialisation")
    pl.add_argument(
        "--xla",
        action="store_true",
        help="also compile the engine's step from shapes on this machine's backend and print XLA's own memory plan",
    )
    pl.set_defaults(func=_cmd_plan)
    ed = sub.add_parser("edits", help="list the registered edits and their parameters")
    ed.set_defaults(func=_cmd_edits)
    wb = sub.add_parser("workbench", help="the built-in pre/post pairs")
    wb_sub = wb.add_subparsers(dest="workbench_command", required=True)
    wb_build = wb_sub.add_parser(
        "build",
        parents=[_options(size=True, quiet=True)],
        help="train (or verify the cache of) every built-in pair and compare the full size with the shipped models",
        description="Trains the workbench into the cache ($RIEMANN_CACHE); pairs load the models shipped with the "
        "package unless RIEMANN_WORKBENCH=cache.",
    )
    wb_build.add_argument(
        "--ship",
        action="store_true",
        help="then copy the full build into the package as the shipped models (for maintainers, before a release)",
    )
    wb_build.set_defaults(func=_cmd_workbench)
    bench = sub.add_parser("bench", help="performance ratios measured side by side in one run")
    bench.add_argument("--json", help="also write the figures as JSON to this file")
    bench.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    bench.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=list(BENCHMARKS),
        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})",
    )
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    try:
        if args.command not in ("bench", "plan"):  # they time or plan compilation itself
            from analysis.jobs import compile_cache

            compile_cache.enable()
        return args.func(args)
    except (ValueError, FileExistsError, ConnectionError) as e:
        print(f"riemann: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
