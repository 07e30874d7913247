"""``fedrt server``: run the aggregation server (``start``: the SuperLink behind its TLS proxy, as one service) and,
with an operator's credential, manage which hospitals may join (``register``, ``unregister``, ``nodes``) and stop
a run (``stop-run``) on a running one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from server.superlink import DEFAULT_HOST, DEFAULT_INTERNAL_PORT, DEFAULT_PORT, INSECURE_HOST, SuperLinkSettings
from wire.control import ControlAccess
from wire.endpoint import Endpoint

if TYPE_CHECKING:
    from server.nodes import RegisteredNode, SuperLinkControl


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--superlink HOST:PORT --ca CA.crt --operator NAME.pem`` (or ``--insecure``): how an operator's command
    reaches a running server's Control API.
    """
    parser.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the server's public address")
    parser.add_argument("--ca", type=Path, help="the federation's ca.crt (from `fedrt certs init`)")
    parser.add_argument("--operator", type=Path, metavar="NAME.pem",
                        help="your operator credential (from `fedrt certs operator NAME`)")
    parser.add_argument("--insecure", action="store_true", help="a local test server without TLS")


def control_access(args: argparse.Namespace) -> ControlAccess:
    """The parsed connection flags, checked before anything is sent: an error naming a missing or unusable file."""
    access = ControlAccess(Endpoint.parse(args.superlink), args.ca, args.operator, args.insecure)
    if not access.insecure:
        access.tls_context()
    return access


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("server", help="run the aggregation server and manage the hospitals")
    sub = parser.add_subparsers(dest="server_command", required=True, metavar="ACTION")
    start = sub.add_parser("start", help="run the server: the SuperLink behind a TLS proxy on one public port",
                           description="Runs flower-superlink on loopback and nginx on ONE public port in the "
                                       "foreground, as one service (hospitals connect out to the port; the Control "
                                       "API needs an operator credential). Stop it with Ctrl-C or your service "
                                       "manager.")
    start.add_argument("--certs", type=Path, help="folder from `fedrt certs init` (ca.crt, server.crt, server.key)")
    start.add_argument("--host", help=f"address to bind (default {DEFAULT_HOST}; {INSECURE_HOST} with --insecure)")
    start.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the one port to open (default {DEFAULT_PORT})")
    start.add_argument("--internal-port", type=int, default=DEFAULT_INTERNAL_PORT,
                       help=f"the SuperLink's own port behind the proxy, on 127.0.0.1 only (default "
                            f"{DEFAULT_INTERNAL_PORT})")
    start.add_argument("--state", type=Path, default=Path("superlink-state"),
                       help="folder for the database (registered nodes, runs) and logs (default ./superlink-state)")
    start.add_argument("--insecure", action="store_true",
                       help="LOCAL TESTING ONLY: no TLS, no node authentication, loopback only")
    start.set_defaults(run=run_start)
    reg = sub.add_parser("register", help="allow a hospital's node to join (its NAME.pub from `fedrt certs node`)")
    reg.add_argument("public_key", type=Path, help="the node's public key file (NAME.pub)")
    reg.add_argument("--name", required=True, help="the site's pseudonymous name")
    add_connection_arguments(reg)
    reg.set_defaults(run=run_register)
    unreg = sub.add_parser("unregister", help="remove a hospital: its key no longer joins, a running node is cut off")
    unreg.add_argument("node", help="site name or node id (see `fedrt server nodes`)")
    add_connection_arguments(unreg)
    unreg.set_defaults(run=run_unregister)
    nodes = sub.add_parser("nodes", help="list the registered hospitals and whether they are online")
    add_connection_arguments(nodes)
    nodes.add_argument("--json", action="store_true", help="print the list as JSON")
    nodes.set_defaults(run=run_nodes)
    stop = sub.add_parser("stop-run", help="stop a run (its ServerApp, and the nodes' work for it)")
    stop.add_argument("run_id", type=int, help="Flower's run id (`fedrt run` prints it: submitted run N)")
    add_connection_arguments(stop)
    stop.set_defaults(run=run_stop)


def run_start(args: argparse.Namespace) -> int:
    from server.service import run_server

    host = args.host or (INSECURE_HOST if args.insecure else DEFAULT_HOST)
    return run_server(SuperLinkSettings(args.state, args.certs, host, args.port, args.insecure,
                                        internal_port=args.internal_port))


def _control(args: argparse.Namespace) -> SuperLinkControl:
    access = control_access(args)
    from server.nodes import SuperLinkControl

    logging.getLogger("httpx").setLevel(logging.WARNING)
    return SuperLinkControl(access)


def _describe(node: RegisteredNode) -> str:
    return f"{node.name or '(no name)':<20} {node.node_id:<21} {node.status:<11} {node.fingerprint}"


def run_register(args: argparse.Namespace) -> int:
    with _control(args) as control:
        node = control.register(args.public_key, args.name)
    print(f"registered {node.name} as node {node.node_id} (key {node.fingerprint}); it can now join with its "
          "private key")
    return 0


def run_unregister(args: argparse.Namespace) -> int:
    with _control(args) as control:
        node = control.unregister(args.node)
    print(f"unregistered {node.name or node.node_id} (node {node.node_id}); its key can no longer join")
    return 0


def run_nodes(args: argparse.Namespace) -> int:
    with _control(args) as control:
        nodes = control.nodes()
    if args.json:
        print(json.dumps([asdict(n) for n in nodes], indent=2))
        return 0
    print(f"{'site':<20} {'node id':<21} {'status':<11} key")
    for node in nodes:
        print(_describe(node))
    print(f"{len(nodes)} registered, {sum(n.status == 'online' for n in nodes)} online", file=sys.stderr)
    return 0


def run_stop(args: argparse.Namespace) -> int:
    with _control(args) as control:
        control.stop_run(args.run_id)
    print(f"run {args.run_id} stopped; a run with round checkpoints resumes with `fedrt run resume=<MLflow run id>`")
    return 0
