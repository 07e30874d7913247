"""The ClientApp a real node's Flower SuperNode runs for each message: light to start (no torch), it hands the
message to the node's warm worker (``client.worker``) and returns the worker's reply. Without a worker (a
SuperNode started by hand, no ``worker-socket`` in its node config) it runs fedrt's ClientApp itself.

Its mods are the node's guarantees: no exception's text leaves the node, and the process ends when the server no
longer waits for the reply.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.deadline import within_deadline
from client.failures import SiteFailed, withhold_failures
from client.worker import forward
from wire.failures import NODE_WORKER
from wire.sites import WORKER_CONFIG

app = ClientApp(mods=[withhold_failures, within_deadline])


def _run(msg: Message, context: Context) -> Message:
    if WORKER_CONFIG not in context.node_config:
        from client.app import app as in_process  # the cold path: torch is imported here

        return in_process(msg, context)
    path = Path(str(context.node_config[WORKER_CONFIG]))
    try:
        return forward(path, msg, context, time.monotonic() + float(msg.metadata.ttl))
    except (EOFError, OSError) as exc:  # no worker listening, or it closed the channel without a reply
        raise SiteFailed(NODE_WORKER, f"the node worker at {path} did not answer: {exc}") from exc


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Training, run by the node's worker."""
    return _run(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluation, run by the node's worker."""
    return _run(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The site's name, told by the node's worker."""
    return _run(msg, context)
