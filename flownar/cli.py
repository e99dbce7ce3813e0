"""The ``flownar`` command line. Subcommands grow with the package:

    flownar data synth --layout ek100 --profile smoke --out DIR     write the embedded synthetic dataset
    flownar data check DIR --dataset ek100                          validate a dataset root and print statistics
    flownar train --system flownar --profile smoke [--data DIR] [--out DIR]   train one system
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import FlowNarError


def _cmd_data_synth(args) -> int:
    from .data.synth import write_synthetic_dataset

    root = write_synthetic_dataset(
        args.out, layout=args.layout, profile=args.profile, seed=args.seed,
        feature_format=args.format, overwrite=args.overwrite, progress=not args.quiet,
    )
    print(f"wrote synthetic {args.layout} dataset ({args.profile}, seed {args.seed}) to {root}")
    return 0


def _cmd_data_check(args) -> int:
    from .data.readers import FlowNarData
    from .data.stats import statistics_table

    data = FlowNarData(args.root, dataset=args.dataset, strict=args.strict)
    print(data)
    report = data.check_features(progress=not args.quiet)
    print(f"features OK: {report['videos']} videos, {report['frames']} frames, "
          f"{report['tokens_per_frame']} tokens/frame, dim {report['feature_dim']}")
    print(statistics_table(data).round(2).T.to_string())
    if data.skipped:
        for reason, ids in data.skipped.items():
            print(f"skipped {len(ids)} {reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flownar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets: write the synthetic world, validate a data root")
    dsub = data.add_subparsers(dest="data_command", required=True)

    s = dsub.add_parser("synth", help="write the embedded synthetic dataset in a FlowNar-Data layout")
    s.add_argument("--layout", default="ek100", choices=["ek100", "ego4d", "egoexo4d"])
    s.add_argument("--profile", default="smoke", help="size profile: smoke or default")
    s.add_argument("--out", required=True, type=Path, help="dataset root to write")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", default="pt", choices=["pt", "safetensors"], help="feature file format")
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_data_synth)

    c = dsub.add_parser("check", help="validate a dataset root (annotations and every feature file)")
    c.add_argument("root", type=Path)
    c.add_argument("--dataset", default="ek100", choices=["ek100", "ego4d", "egoexo4d"])
    c.add_argument("--strict", action="store_true", help="fail on skipped videos instead of warning")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_data_check)
    t = sub.add_parser("train", help="train one system (embedded default or, with --llm, LoRA at paper scale)")
    from .train import add_train_arguments

    add_train_arguments(t)
    t.set_defaults(func=_cmd_train)
    return p


def _cmd_train(args) -> int:
    from .train import run_from_args

    run_from_args(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FlowNarError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"flownar: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
