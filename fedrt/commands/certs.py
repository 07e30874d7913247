"""``fedrt certs``: the federation's CA and server certificate (``init``, ``renew``), an operator's Control API
credential (``operator``) and a node's key pair (``node``), written with safe permissions and never over existing
files unless ``--force``.
"""

from __future__ import annotations

import argparse

from server.certs import (
    CA_DAYS,
    OPERATOR_DAYS,
    SERVER_DAYS,
    create_node_keys,
    init_certificates,
    issue_operator_credential,
    renew_server_certificate,
)
from wire.identity import key_fingerprint, load_node_private_key


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("certs", help="create the deployment's CA, server certificate and node keys")
    sub = parser.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="create the CA and the aggregation server's TLS certificate")
    init.add_argument("--out", required=True, help="folder for ca.crt, ca.key, server.crt, server.key")
    init.add_argument("--host", action="extend", nargs="+", required=True, metavar="NAME_OR_IP",
                      help="DNS name(s) and IP address(es) the hospitals use to reach the server (SANs)")
    init.add_argument("--days", type=int, default=SERVER_DAYS,
                      help=f"server certificate validity (default {SERVER_DAYS})")
    init.add_argument("--ca-days", type=int, default=CA_DAYS, help=f"CA validity (default {CA_DAYS})")
    init.add_argument("--force", action="store_true", help="replace existing files (hospitals then need the new CA)")
    init.set_defaults(run=run_init)
    renew = sub.add_parser("renew", help="issue a new server certificate with the existing CA (rotation)")
    renew.add_argument("--out", required=True, help="the folder of `certs init` (holding ca.crt and ca.key)")
    renew.add_argument("--host", action="extend", nargs="+", required=True, metavar="NAME_OR_IP",
                       help="DNS name(s) and IP address(es) of the server")
    renew.add_argument("--days", type=int, default=SERVER_DAYS, help=f"validity (default {SERVER_DAYS})")
    renew.set_defaults(run=run_renew)
    operator = sub.add_parser("operator", help="issue an operator's credential for the Control API (NAME.pem)",
                              description="Signs a TLS client certificate with the federation's CA (run where "
                                          "ca.key is). The server's proxy passes Control API calls (register, "
                                          "list, submit, stop) only with it: `--operator NAME.pem`.")
    operator.add_argument("name", help="the operator's name, e.g. alice (shown in the server's control-access.log)")
    operator.add_argument("--certs", required=True, help="the folder of `certs init` (holding ca.crt and ca.key)")
    operator.add_argument("--out", required=True, help="folder for NAME.pem (key and certificate, owner-only)")
    operator.add_argument("--days", type=int, default=OPERATOR_DAYS, help=f"validity (default {OPERATOR_DAYS})")
    operator.add_argument("--force", action="store_true", help="replace an existing NAME.pem")
    operator.set_defaults(run=run_operator)
    node = sub.add_parser("node", help="create a node key pair (NAME.key stays at the hospital, NAME.pub is sent)")
    node.add_argument("name", help="the site's pseudonymous name, e.g. site-a")
    node.add_argument("--out", required=True, help="folder for NAME.key and NAME.pub")
    node.add_argument("--force", action="store_true", help="replace an existing key pair")
    node.set_defaults(run=run_node)


def run_init(args: argparse.Namespace) -> int:
    files = init_certificates(args.out, args.host, force=args.force, ca_days=args.ca_days, server_days=args.days)
    print(f"CA:     {files.ca_cert} (give to every hospital: --ca)")
    print(f"        {files.ca_key} (secret, owner-only: it signs server certificates; only `certs renew` needs it)")
    print(f"server: {files.server_cert}, {files.server_key} (for `fedrt server start --certs {args.out}`)")
    return 0


def run_renew(args: argparse.Namespace) -> int:
    files = renew_server_certificate(args.out, args.host, days=args.days)
    print(f"new server certificate {files.server_cert}; restart the server to use it (hospitals change nothing)")
    return 0


def run_operator(args: argparse.Namespace) -> int:
    path = issue_operator_credential(args.certs, args.name, args.out, force=args.force, days=args.days)
    print(f"operator credential: {path} (secret, owner-only: key and client certificate, valid {args.days} days); "
          f"give it to the operator's commands as --operator {path}")
    return 0


def run_node(args: argparse.Namespace) -> int:
    files = create_node_keys(args.name, args.out, force=args.force)
    fingerprint = key_fingerprint(load_node_private_key(files.private_key).public_key())
    print(f"private key: {files.private_key} (stays on this node: --key)")
    print(f"public key:  {files.public_key} ({fingerprint}); send it to the server operator, who runs "
          f"`fedrt server register {files.public_key.name} --name {args.name} ...`")
    return 0
