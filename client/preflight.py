"""``fedrt node check``: before a hospital joins, check each thing that would stop its node, and for each
failure name the cause and the fix: the dataset (the same report as ``fedrt data check``), the network path
to the SuperLink, its TLS certificate against the federation's CA (a real handshake with the name the node
dials), and whether the SuperLink accepts the node's key.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, SYSTEM_TIME_TOLERANCE
from flwr.proto.fleet_pb2 import ActivateNodeRequest, DeactivateNodeRequest
from flwr.supercore.error import ApiErrorCode, FlowerError
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

from client.supernode import NodeSettings
from protocols.dataset import ProtocolDataset
from protocols.errors import FedrtError
from protocols.protocol import load_protocol
from protocols.validation import Policy, format_reports
from wire.connection import Check, check_network, check_plaintext, check_tls, connection_failure
from wire.endpoint import Endpoint
from wire.identity import key_fingerprint, load_node_private_key


def check_dataset(data: Path, protocol_name: str) -> tuple[Check, str]:
    """The site's dataset under the protocol: the per-patient report and a summary check."""
    try:
        protocol = load_protocol(protocol_name)
        reports = ProtocolDataset(data, protocol, Policy.IGNORE, require_dose=True).reports()
    except FedrtError as exc:
        return Check("dataset", "fail", "dataset", f"{exc}"), ""
    usable = sum(r.usable for r in reports)
    if not usable:
        return Check("dataset", "fail", "dataset", f"none of the {len(reports)} patients under {data} is usable for "
                     f"{protocol_name}; fix the errors in the report above (`fedrt data check {data}`)"), \
            format_reports(reports)
    if usable < len(reports):
        return Check("dataset", "warn", "dataset", f"{usable} of {len(reports)} patients usable for {protocol_name}; "
                     "the others are skipped in training (see the report above)"), format_reports(reports)
    return Check("dataset", "ok", "ok", f"{usable} patients usable for {protocol_name}"), format_reports(reports)


def check_node_key(endpoint: Endpoint, ca: Path, key_path: Path, timeout_s: float = 10.0) -> Check:
    """Ask the SuperLink, signed with the node's key, to activate the node (then deactivate it again): only a
    registered key is accepted. This is the call a SuperNode makes when it joins.
    """
    try:
        key = load_node_private_key(key_path)
    except FedrtError as exc:
        return Check("node key", "fail", "bad-key", str(exc))
    fingerprint = key_fingerprint(key.public_key())
    client = FleetHttpClient(f"https://{endpoint}", interceptors=[NodeAuthHttpInterceptor(key, key.public_key())],
                             verify=str(ca.resolve()), timeout=timeout_s)
    try:
        response = client.ActivateNode(ActivateNodeRequest(public_key=public_key_to_bytes(key.public_key()),
                                                            heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL))
        client.DeactivateNode(DeactivateNodeRequest(node_id=response.node_id))
    except httpx.HTTPStatusError as exc:
        error = FlowerError.from_json(exc.response.text)
        if error is not None and error.code == ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED:
            return Check("node key", "fail", "unregistered",
                         f"unregistered key: the SuperLink does not accept the key {key_path} ({fingerprint}): send "
                         f"{key_path.with_suffix('.pub').name} to the operator, who runs `fedrt server register "
                         f"{key_path.with_suffix('.pub').name} --name SITE`. (If it is registered, a SuperNode with "
                         "this key is already connected: stop it first.)")
        if exc.response.status_code == httpx.codes.UNAUTHORIZED:
            return Check("node key", "fail", "clock",
                         "the SuperLink rejected the key's signed timestamp: this machine's clock differs from the "
                         f"server's (a node may be at most {SYSTEM_TIME_TOLERANCE} s ahead); sync both with NTP")
        detail = error.message if error is not None else exc.response.text[:200]
        return Check("node key", "fail", "node-key", f"the SuperLink refused the node ({exc.response.status_code}: "
                     f"{detail}); see the server's log")
    except httpx.TransportError as exc:
        return Check("node key", "fail", "unreachable", connection_failure(endpoint, ca, False, exc))
    finally:
        client.close()
    return Check("node key", "ok", "ok", f"key {fingerprint} is registered (node {response.node_id})")


def run_preflight(settings: NodeSettings, timeout_s: float = 10.0) -> tuple[list[Check], str]:
    """All checks for ``settings`` in order (later network checks skipped once one fails), and the dataset
    report.
    """
    dataset, report = check_dataset(settings.data, settings.protocol)
    checks = [dataset, check_network(settings.superlink, timeout_s)]
    if checks[-1].failed:
        checks += [Check("tls", "skip", "skip", "not checked: the SuperLink is unreachable"),
                   Check("node key", "skip", "skip", "not checked: the SuperLink is unreachable")]
        return checks, report
    if settings.insecure:
        return [*checks, check_plaintext(settings.superlink, timeout_s)], report
    checks.append(check_tls(settings.superlink, settings.ca, timeout_s))
    if checks[-1].failed:
        checks.append(Check("node key", "skip", "skip", "not checked: no trusted TLS connection"))
        return checks, report
    checks.append(check_node_key(settings.superlink, settings.ca, settings.key, timeout_s))
    return checks, report


def format_checks(checks: list[Check]) -> str:
    """One line per check: ``[ok]``, ``[warn]``, ``[FAIL]`` or ``[skip]``, the check and its message."""
    labels = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}
    return "\n".join(f"{labels[c.status]} {c.name:<9} {c.message}" for c in checks)
