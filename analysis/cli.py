"""Command line ``riemann``. Heavy modules are imported inside the commands so ``--help`` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _cmd_run(args: argparse.Namespace) -> int:
    from analysis import io, report, suite
    from analysis.example import MLPConfig, build_pair
    from riemann import edits

    specs = args.edits or suite.default_suite()
    for s in specs:
        edits.parse(s)  # fail on a bad spec before training or computing anything
    out = io.fresh_output_dir(args.out)
    print(f"[riemann] building the pair (seed {args.seed}) …", flush=True)
    pair = build_pair(MLPConfig(seed=args.seed))
    results = suite.analyse(pair, specs, seed=args.seed, progress=not args.quiet)
    for path in report.write(results, out):
        print(f"[riemann] wrote {path}")
    best = max(results["agreement"].items(), key=lambda kv: kv[1]["spearman"])
    print(f"[riemann] best estimator: {best[0]} (Spearman {best[1]['spearman']:.3f}, "
          f"class agreement {best[1]['class_agreement']:.2f}); report: {out / 'report.md'}")
    return 0


def _cmd_edits(args: argparse.Namespace) -> int:
    from riemann import edits

    for name, info in sorted(edits.REGISTRY.items()):
        params = ", ".join(f"{p.name}{'' if p.required else '=' + repr(p.default)}" for p in info.params.values())
        print(f"{name} [{info.paper_class}] ({params})\n    {info.summary}\n    ref: {info.reference}")
    return 0


def _cmd_workbench(args: argparse.Namespace) -> int:
    from analysis import workbench

    root = workbench.build(args.size, progress=not args.quiet)
    manifest = json.loads((root / "manifest.json").read_text())
    for name, result in manifest["stages"].items():
        keep = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()
                if k in ("loss_pre", "loss_post", "accuracy_pre", "accuracy_post", "heldout_loss", "seconds")}
        print(f"{name}: {keep}")
    print(f"[riemann] workbench ready in {root}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from analysis import bench

    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="riemann",
        description="Delta parameter editing theory: predict and measure how pruning, quantizing, compressing or "
        "extrapolating a post-trained model's delta changes its loss.",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="analyse an edit suite end to end (default: the built-in pair)")
    run.add_argument("--edits", nargs="+", metavar="SPEC", help="edit specs, e.g. dare:p=0.9,k=0.5 (default: the built-in suite)")
    run.add_argument("--out", help="output directory (must not exist or be empty; default: runs/<timestamp>)")
    run.add_argument("--seed", type=int, default=0, help="seed for training and for every random edit")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)
    ed = sub.add_parser("edits", help="list the registered edits and their parameters")
    ed.set_defaults(func=_cmd_edits)
    wb = sub.add_parser("workbench", help="the built-in pre/post pairs")
    wb_sub = wb.add_subparsers(dest="workbench_command", required=True)
    wb_build = wb_sub.add_parser("build", help="train (or verify the cache of) every built-in pair")
    wb_build.add_argument("--size", choices=["full", "mini"], default="full", help="mini: seconds, for tests")
    wb_build.add_argument("--quiet", action="store_true", help="no progress bars")
    wb_build.set_defaults(func=_cmd_workbench)
    bench = sub.add_parser("bench", help="performance ratios measured side by side in one run")
    bench.add_argument("--json", help="also write the figures as JSON to this file")
    bench.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    bench.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (path_step, path_memory, edit_cost, lowrank, load_checkpoint)")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    try:
        return args.func(args)
    except (ValueError, FileExistsError) as e:
        print(f"riemann: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
