"""A restarted node takes its place at once. Flower's SuperLink refuses to activate a node it still counts as
online (until two missed 30 s heartbeats: ``Failed to activate SuperNode``, exit 305), and only a SuperNode that
stops cleanly says goodbye. Before the SuperNode starts, the node ends its previous session itself: it signs a
``DeactivateNode`` for its own node id with its own key over the Fleet API, the call a clean stop makes.

The node id (the SuperLink's number for this key, stable while it is registered) is learnt the first time the node
starts and kept in its state folder.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL
from flwr.proto.fleet_pb2 import ActivateNodeRequest, DeactivateNodeRequest
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

from protocols.files import atomic_write, cache_dir
from wire.identity import key_fingerprint, load_node_private_key

log = logging.getLogger(__name__)
NODE_ID_FILE = "node-id"


def node_id_file(key: Path, state_dir: Path | None) -> Path:
    """Where the node keeps its id: its state folder, else fedrt's cache, per key."""
    if state_dir is not None:
        return state_dir / NODE_ID_FILE
    name = re.sub(r"[^A-Za-z0-9]", "", key_fingerprint(load_node_private_key(key).public_key()))
    return cache_dir() / "nodes" / f"{name}.{NODE_ID_FILE}"


def end_previous_session(superlink: str, ca: Path, key: Path, state_dir: Path | None) -> int | None:
    """Deactivate this node's previous session on the SuperLink (a no-op when it has none); its node id, or
    None when the SuperLink would not say (the SuperNode then reports why when it starts).
    """
    private_key = load_node_private_key(key)
    public_key = private_key.public_key()
    saved = node_id_file(key, state_dir)
    interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperNode"),
                    NodeAuthHttpInterceptor(private_key, public_key)]
    with FleetHttpClient.from_server_address(superlink, False, str(ca.resolve()), interceptors) as client:
        if saved.is_file():
            _deactivate(client, int(saved.read_text()))
        try:
            node_id = client.ActivateNode(ActivateNodeRequest(public_key=public_key_to_bytes(public_key),
                                                              heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL)).node_id
        except httpx.HTTPError as exc:
            log.info("the SuperLink did not activate this node before its start (%s)", exc)
            return None
        _deactivate(client, node_id)
    saved.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(saved, str(node_id))
    return node_id


def _deactivate(client: FleetHttpClient, node_id: int) -> None:
    try:
        client.DeactivateNode(DeactivateNodeRequest(node_id=node_id))
    except httpx.HTTPError as exc:  # not online (the usual case), or the id is stale: activation says more
        log.debug("deactivating node %d: %s", node_id, exc)
