"""``fedrt run [overrides] --superlink HOST:PORT --ca CA.crt --operator NAME.pem``: submit a federated training
run to a deployment and follow it (progress and one summary per round, as the server's ServerApp prints them).
"""

from __future__ import annotations

import argparse
import sys

from fedrt.commands.server import add_connection_arguments, control_access
from fedrt.config import add_override_arguments, composed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="submit a federated training run to a deployment (SuperLink) and follow it",
        description="Hydra overrides as for `fedrt simulate` (e.g. preset=smoke rounds=5 strategy=fedprox "
                    "federation.min_available_nodes=2 tracking.uri=sqlite:///mlflow.db, or resume=<run id>). "
                    "They are composed on the SERVER: data.root, tracking.uri and output are server paths "
                    "(relative ones land in the SuperLink's state folder). Each hospital trains on the data of "
                    "its own `fedrt node start --data`.")
    add_override_arguments(parser)
    add_connection_arguments(parser)
    parser.add_argument("--detach", action="store_true", help="submit and return; do not follow the run")
    parser.add_argument("--follow", type=int, metavar="RUN_ID",
                        help="submit nothing: attach to run RUN_ID (e.g. one started with --detach) and follow it")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from protocols.errors import ConfigError
    from server.submit import attach_run, submit_run

    if args.follow is not None:
        if args.overrides or args.detach:
            raise ConfigError("--follow RUN_ID attaches to a submitted run: give it without overrides or --detach")
        result = attach_run(control_access(args), args.follow)
    elif composed(args) is None:  # a bad override fails here, before anything is submitted
        return 0
    else:
        result = submit_run(control_access(args), args.overrides, follow=not args.detach)
    if args.detach:
        print(f"run {result.run_id}: {result.status}; follow it with `fedrt run --follow {result.run_id} "
              f"--superlink {args.superlink} ...`")
        return 0
    if result.completed:
        print(f"run {result.run_id} completed")
        return 0
    print(f"fedrt run: run {result.run_id} ended {result.status}:{result.sub_status}: {result.details}; the "
          "ServerApp's output above and superlink.log on the server say why; a run with round checkpoints "
          "resumes with resume=<MLflow run id>", file=sys.stderr)
    return 1
