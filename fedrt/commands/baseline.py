"""``fedrt baseline [overrides]``: centralised and local-only models of a federated scenario, same budget."""

from __future__ import annotations

import argparse

from fedrt.config import add_override_arguments, composed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "baseline", help="train the centralised and local-only baselines of a federated scenario",
        description="Give the same overrides as `fedrt simulate` (task, data.root, num_sites, partition, rounds, "
                    "preset, ...): the baselines use the same patients, loop and budget, and are recorded in "
                    "MLflow under the same scenario for `fedrt compare`.")
    add_override_arguments(parser)
    parser.add_argument("--kind", choices=["centralized", "local", "both"], default="both",
                        help="which baselines to train (default both)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from models.tasks import task_class
    from simulation.baselines import KINDS, run_baselines

    config = composed(args)
    if config is None:
        return 0
    kinds = KINDS if args.kind == "both" else (args.kind,)
    for outcome in run_baselines(config, kinds):
        scores = ", ".join(f"{k}={outcome.validation[k]:.4f}" for k in task_class(config.task.name).site_metrics
                           if k in outcome.validation)
        print(f"{outcome.kind} {outcome.site}: {outcome.result.num_examples} cases, {outcome.result.steps} steps "
              f"in {outcome.result.seconds:.0f} s; {scores} (MLflow run {outcome.run_id})")
    return 0
