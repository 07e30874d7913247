"""The site-name rule, as a node applies it to itself and as the server reads it from a reply: an operator's
``site-name``, ``site-<partition>`` in simulation, else a digest of the node id. A name is never a hospital's or a
patient's identity unless the operator sets one, and only short plain names are accepted from the wire.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from wire.records import SITE, SITE_NAME

if TYPE_CHECKING:
    from flwr.app import Context, Message

NAME_CONFIG = "site-name"  # node-config key of the operator's pseudonym
PARTITION_CONFIG = "partition-id"  # node-config key Flower's simulation gives each virtual node
DATA_CONFIG = "data-path"  # node-config key of the site's dataset folder
WORKER_CONFIG = "worker-socket"  # node-config key of the node's warm worker (``client.worker``)
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
_ERROR_SITE = re.compile(r"^\[site (?P<site>[A-Za-z0-9_.-]{1,40})\] ")


def node_digest_name(node_id: int) -> str:
    """The name of a node that gave none: ``node-`` and 8 hex digits of its id's SHA-256."""
    return "node-" + hashlib.sha256(str(node_id).encode()).hexdigest()[:8]


def own_site_name(context: Context) -> str:
    """The name this node reports about itself."""
    config = context.node_config
    if NAME_CONFIG in config:
        return str(config[NAME_CONFIG])
    if PARTITION_CONFIG in config:
        return f"site-{int(config[PARTITION_CONFIG])}"
    return node_digest_name(context.node_id)


def error_reason(site: str, message: str) -> str:
    """An error reply's reason: ``[site NAME] message``, the name left out when it is not a safe one."""
    return f"[site {site}] {message}" if SAFE_NAME.match(site) else message


def reply_site_name(reply: Message) -> str:
    """The name a reply (or an error reply, in ``error_reason``'s form) reports, if it is a safe one, else the
    digest of the node it came from.
    """
    if reply.has_error():
        match = _ERROR_SITE.match(reply.error.reason or "")
        name = match.group("site") if match else ""
    else:
        record = reply.content.config_records.get(SITE)
        name = str(record.get(SITE_NAME, "")) if record is not None else ""
    return name if SAFE_NAME.match(name) else node_digest_name(reply.metadata.src_node_id)
