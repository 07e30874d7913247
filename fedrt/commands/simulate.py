"""``fedrt simulate [overrides]``: a federated run of virtual hospitals; prints each round and the model."""

from __future__ import annotations

import argparse

from fedrt.config import add_override_arguments, composed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate", help="federated training of N virtual hospitals (Flower simulation, MLflow tracking)",
        description="Hydra overrides, e.g. preset=smoke task=seg data.root=../shared/data/openkbp num_sites=4 "
                    "rounds=5 partition=skew strategy=fedadam tracking.uri=sqlite:///X.db, or resume=<run id>. "
                    "With no data.root, generated phantoms are used (offline).")
    add_override_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from simulation.run import simulate

    config = composed(args)
    if config is None:
        return 0
    outcome = simulate(config)
    federation = outcome.federation
    model = f", registered version {federation.model_version}" if federation.model_version else ""
    print(f"MLflow run {federation.run_id} ({config.tracking.uri}){model}; {outcome.seconds:.0f} s in all")
    print(federation.checkpoint)
    return 0
