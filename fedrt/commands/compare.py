"""``fedrt compare [overrides] [--out FILE]``: federated vs centralised vs local-only, as a markdown table."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedrt.config import add_override_arguments, composed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="markdown table of a scenario's federated run(s) and baselines (also logged to MLflow)",
        description="Give the same overrides as `fedrt simulate` and `fedrt baseline`; the newest finished run of "
                    "each model of that scenario is compared on the shared validation cases.")
    add_override_arguments(parser)
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from protocols.files import atomic_write
    from simulation.compare import compare

    config = composed(args)
    if config is None:
        return 0
    table, run_id = compare(config)
    print(table)
    if args.out:
        atomic_write(args.out, table)
        print(args.out)
    print(f"logged as comparison.md in MLflow run {run_id}")
    return 0
