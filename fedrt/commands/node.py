"""``fedrt node``: run a hospital's SuperNode (``start``) and check, before joining, everything that would stop
it (``check``), each failure with its cause and fix.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from client.supernode import DEFAULT_RUNTIME_PORT
from protocols.errors import ConfigError
from wire.endpoint import Endpoint
from wire.supervise import LogRotation

MIB = 2**20

if TYPE_CHECKING:
    from client.supernode import NodeSettings


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``node start`` and ``node check`` share."""
    parser.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the aggregation server's address")
    parser.add_argument("--ca", type=Path, help="the federation's ca.crt (from the server operator)")
    parser.add_argument("--key", type=Path, help="this node's private key (NAME.key from `fedrt certs node`)")
    parser.add_argument("--data", type=Path, required=True, help="the site's protocol dataset folder")
    parser.add_argument("--protocol", default="hn-openkbp", help="protocol name or YAML path (default hn-openkbp)")
    parser.add_argument("--site-name", help="the pseudonym this site reports in metrics (default: from the node id)")
    parser.add_argument("--runtime-port", type=int, default=DEFAULT_RUNTIME_PORT,
                        help=f"local port (127.0.0.1 only) for the node's ClientApp (default {DEFAULT_RUNTIME_PORT})")
    parser.add_argument("--state", type=Path,
                        help="folder for Flower's node files and the node's log supernode.log (default ~/.flwr)")
    parser.add_argument("--log-max-mb", type=float, default=LogRotation.max_bytes / MIB,
                        help=f"rotate supernode.log at this size (default {LogRotation.max_bytes // MIB})")
    parser.add_argument("--log-backups", type=int, default=LogRotation.backups,
                        help=f"rotated logs kept, supernode.log.1 ... (default {LogRotation.backups})")
    parser.add_argument("--insecure", action="store_true", help="LOCAL TESTING ONLY: a server started with --insecure")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("node", help="run a hospital's node, or check it can join")
    sub = parser.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    start = sub.add_parser("start", help="run the SuperNode (outbound connection only) training on --data",
                           description="Runs flower-supernode in the foreground; run `fedrt node check` first.")
    add_node_arguments(start)
    start.add_argument("--no-worker", action="store_true",
                       help="no warm worker: each message's ClientApp imports the deep-learning stack and loads "
                            "the patients itself (about 8 s more per message, about 500 MB less memory while idle)")
    start.set_defaults(run=run_start)
    check = sub.add_parser("check", help="preflight: dataset, network, TLS certificate, registered key")
    add_node_arguments(check)
    check.add_argument("--timeout", type=float, default=10.0, help="seconds per network check (default 10)")
    check.add_argument("--json", action="store_true", help="print the checks as JSON")
    check.set_defaults(run=run_check)


def settings_from_args(args: argparse.Namespace) -> NodeSettings:
    """NodeSettings from the shared flags."""
    from client.supernode import NodeSettings

    if args.log_max_mb <= 0 or args.log_backups < 1:
        raise ConfigError("--log-max-mb must be positive and --log-backups at least 1 (otherwise the log grows "
                          "without limit)")
    return NodeSettings(Endpoint.parse(args.superlink), args.ca, args.key, args.data, args.protocol, args.site_name,
                        args.runtime_port, args.state, args.insecure,
                        LogRotation(int(args.log_max_mb * MIB), args.log_backups),
                        worker=not getattr(args, "no_worker", False))


def run_start(args: argparse.Namespace) -> int:
    from client.supernode import run_supernode

    return run_supernode(settings_from_args(args))


def run_check(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not settings.insecure and (settings.ca is None or settings.key is None):
        raise ConfigError("give --ca CA.crt and --key NODE.key (or --insecure for a local test server)")
    from client.preflight import format_checks, run_preflight

    logging.getLogger("httpx").setLevel(logging.WARNING)
    checks, report = run_preflight(settings, args.timeout)
    if args.json:
        print(json.dumps({"checks": [asdict(c) for c in checks], "report": report}, indent=2))
    else:
        if report:
            print(report + "\n")
        print(format_checks(checks))
        failed = [c for c in checks if c.failed]
        print("ready to join: `fedrt node start` with the same flags" if not failed else
              f"{len(failed)} check(s) failed: fix them and run `fedrt node check` again")
    return 1 if any(c.failed for c in checks) else 0
