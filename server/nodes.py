"""Which hospitals may join: register a node's public key under a site name, unregister it, list the nodes; and
stop a run. These are the calls ``flwr supernode register/unregister/list`` and ``flwr stop`` make to the
SuperLink's Control API, made directly so that names and key fingerprints can be shown (``flwr supernode list``
prints neither), the operator's credential is presented (``flwr`` cannot) and no Flower configuration file is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest, StopRunRequest, UnregisterNodeRequest
from flwr.supercore.error import FlowerError
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from protocols.errors import ConfigError, DataNotFoundError, DeploymentError
from wire.connection import connection_failure
from wire.control import ControlAccess
from wire.identity import key_fingerprint

NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")
_FIXES = {
    22: "the SuperLink rejected the key; create node keys with `fedrt certs node NAME --out DIR`",
    23: ("this key is already registered, or was registered once and then unregistered: Flower (1.42) never frees a "
         "key it has seen. If `fedrt server nodes` lists it, it is registered; otherwise the hospital creates a new "
         "key pair (`fedrt certs node NAME --out DIR`) and you register its new .pub"),
    24: "no such node (see `fedrt server nodes`)",
}


class ControlError(DeploymentError):
    """The SuperLink's Control API could not do what was asked; the message names the cause and the fix."""


@dataclass(frozen=True)
class RegisteredNode:
    """A node the SuperLink knows: its id, site name, status and the fingerprint of its public key."""

    node_id: int
    name: str
    status: str
    fingerprint: str
    registered_at: str
    last_seen: str


def load_node_public_key(path: Path | str) -> ec.EllipticCurvePublicKey:
    """A node's OpenSSH EC public key (NIST curve), as ``flwr supernode register`` accepts it."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"public key {path} not found; the hospital creates it with `fedrt certs node NAME "
                                "--out DIR` and sends DIR/NAME.pub")
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        raise DeploymentError(f"{path} is a PRIVATE key: register the .pub file; the private key never leaves the "
                              "hospital (if it was sent, create a new key pair)")
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DeploymentError(f"{path} is not an OpenSSH public key ({exc}); give the NAME.pub written by "
                              "`fedrt certs node`") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in NIST_CURVES:
        raise DeploymentError(f"{path}: Flower's node authentication needs an EC key on a NIST curve (P-256/384/521); "
                              "create one with `fedrt certs node NAME --out DIR`")
    return key


class SuperLinkControl:
    """A connection to a running server's Control API over TLS, verified with the federation's CA and
    authenticated with the operator's credential.
    """

    def __init__(self, access: ControlAccess, timeout_s: float = 30.0):
        self.access = access
        self._client = access.client(timeout_s)

    def __enter__(self) -> SuperLinkControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection."""
        self._client.close()

    def _call(self, method: str, request: object) -> object:
        try:
            return getattr(self._client, method)(request)
        except httpx.HTTPStatusError as exc:
            error = FlowerError.from_json(exc.response.text)
            if error is None:
                raise ControlError(f"the SuperLink at {self.access.endpoint} answered {exc.response.status_code} to "
                                   f"{method}; see its log (superlink.log in its state folder)") from exc
            fix = _FIXES.get(error.code, "see the SuperLink's log (superlink.log in its state folder)")
            raise ControlError(f"the SuperLink refused {method}: {error.message} (code {error.code}); {fix}") from exc
        except httpx.TransportError as exc:
            access = self.access
            raise ControlError(connection_failure(access.endpoint, access.ca, access.insecure, exc)) from exc

    def nodes(self) -> list[RegisteredNode]:
        """The registered nodes (unregistered ones left out), in registration order."""
        response = self._call("ListNodes", ListNodesRequest())
        nodes = []
        for info in response.nodes_info:
            if info.status == "unregistered":
                continue
            key = serialization.load_pem_public_key(info.public_key)
            last_seen = info.last_activated_at if info.HasField("last_activated_at") else ""
            nodes.append(RegisteredNode(info.node_id, info.name, info.status, key_fingerprint(key),
                                        info.registered_at, last_seen))
        return sorted(nodes, key=lambda n: n.registered_at)

    def find(self, name_or_id: str) -> RegisteredNode:
        """The node with this site name or node id; an error listing the known names otherwise."""
        nodes = self.nodes()
        match = [n for n in nodes if n.name == name_or_id or str(n.node_id) == name_or_id]
        if len(match) != 1:
            known = ", ".join(f"{n.name or '(no name)'} ({n.node_id})" for n in nodes) or "none"
            raise ControlError(f"no registered node named {name_or_id!r} (registered: {known})")
        return match[0]

    def register(self, public_key_path: Path | str, name: str) -> RegisteredNode:
        """Allow the node holding the private half of ``public_key_path`` to join, under site ``name``."""
        key = load_node_public_key(public_key_path)
        if not name:
            raise ConfigError("give --name SITE: the pseudonymous site name shown in `fedrt server nodes`")
        taken = [n for n in self.nodes() if n.name == name]
        if taken:
            raise ControlError(f"site name {name!r} is already registered (node {taken[0].node_id}); unregister it "
                               "first (`fedrt server unregister NAME`) or choose another name")
        response = self._call("RegisterNode", RegisterNodeRequest(public_key=public_key_to_bytes(key), name=name))
        return self.find(str(response.node_id))

    def unregister(self, name_or_id: str) -> RegisteredNode:
        """Remove a node: its key no longer authenticates, and a running SuperNode with it is disconnected."""
        node = self.find(name_or_id)
        self._call("UnregisterNode", UnregisterNodeRequest(node_id=node.node_id))
        return node

    def stop_run(self, run_id: int) -> None:
        """Stop a run: Flower ends its ServerApp and the nodes' work for it; an error if it is unknown or finished."""
        self._call("StopRun", StopRunRequest(run_id=run_id))
