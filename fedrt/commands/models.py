"""``fedrt models list|promote``: the MLflow Model Registry of federated models, and production aliases."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list registered models; promote a version for planning")
    sub = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="every registered model version with its aliases and tags")
    promote = sub.add_parser("promote", help="point an alias (e.g. production) at a model version")
    promote.add_argument("name", help="registered model, e.g. fedrt-hn-openkbp-dose")
    promote.add_argument("version", help="model version number")
    promote.add_argument("--alias", required=True, help="alias to set, e.g. production")
    for action in (listing, promote):
        action.add_argument("--tracking-uri", default=None,
                            help="MLflow tracking URI (default: tracking.uri of the config, sqlite:///mlflow.db)")
    listing.set_defaults(run=run_list)
    promote.set_defaults(run=run_promote)


def _uri(args: argparse.Namespace) -> str:
    from configs.compose import compose

    return args.tracking_uri or str(compose([]).tracking.uri)


def run_list(args: argparse.Namespace) -> int:
    from models.tasks import TASK_CLASSES
    from server.tracking import list_models

    versions = list_models(_uri(args))
    if not versions:
        print(f"no registered models in {_uri(args)}; `fedrt simulate` registers one per run")
        return 0
    print(f"{'model':<28} {'version':>7}  {'aliases':<14} {'rounds':>6} {'sites':>5}  validation")
    for v in versions:
        kind = TASK_CLASSES.get(v.tags.get("task", ""))
        headline = kind.site_metrics if kind is not None else ()
        scores = ", ".join(f"{k}={v.tags[f'val.{k}']}" for k in headline if f"val.{k}" in v.tags)
        print(f"{v.name:<28} {v.version:>7}  {','.join(v.aliases) or '-':<14} {v.tags.get('rounds', '-'):>6} "
              f"{v.tags.get('sites', '-'):>5}  {scores}")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from server.tracking import promote

    promote(_uri(args), args.name, args.version, args.alias)
    print(f"models:/{args.name}@{args.alias} -> version {args.version}")
    return 0
