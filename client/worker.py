"""A node's warm worker: one long-lived process beside the SuperNode that keeps torch, the network and the site's
prepared patients in memory and runs fedrt's ClientApp for every message. Flower starts a new ``flwr-clientapp``
process per message (no long-lived ClientApp in 1.42: flwrlabs/flower#3670), which would import torch and MONAI
and load the patients each time (about 8 s); the per-message ClientApp (``client.forwarder``) only hands the
message to this worker and its reply back.

The channel is a Unix socket in the node's state folder: the folder is the node user's only (0700) and so is the
socket (0600), served with the standard library's ``multiprocessing.connection`` (pickled objects over a
stream): (Message, Context, deadline) in, (reply, Context state) out. Pickles are read only from that socket,
which only the node's own user can open. Messages wait their turn (one at a time); one whose deadline
(``time.monotonic``, shared by the node's processes) passed while it waited is dropped unrun: its ClientApp has
ended and the server no longer waits for it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from flwr.app import Context, Message

from client.failures import SITE_LOGGER

log = logging.getLogger(SITE_LOGGER)


def _serve_one(conn: Connection, app: Any, lock: threading.Lock) -> None:
    with conn:
        message, context, deadline = conn.recv()  # from the node's own user only (the socket is 0600)
        with lock:  # one message at a time: they share the CPUs and the site's cached patients
            if time.monotonic() > deadline:
                log.warning("dropped a %s message whose time ran out while it waited (the server no longer waits "
                            "for it)", message.metadata.message_type)
                return
            reply = app(message, context)
        try:
            conn.send((reply, context.state))
        except OSError:  # the ClientApp gave up (its deadline) or its run is gone: the reply has no taker
            log.warning("the ClientApp for a %s message left before its reply was ready", message.metadata.message_type)


def serve(path: Path) -> None:
    """Listen on the Unix socket ``path`` (owner-only) and run each message fedrt's ClientApp receives."""
    from client.app import make_client_app  # torch, MONAI: imported once, here

    app = make_client_app()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    lock = threading.Lock()
    old_mask = os.umask(0o177)
    try:
        listener = Listener(str(path), family="AF_UNIX")
    finally:
        os.umask(old_mask)
    log.warning("fedrt node worker ready on %s", path)
    with listener:
        while True:
            conn = listener.accept()
            threading.Thread(target=_serve_one, args=(conn, app, lock), daemon=True).start()


def forward(path: Path, message: Message, context: Context, deadline: float) -> Message:
    """Have the worker at ``path`` run ``message`` unless ``deadline`` (``time.monotonic``) passes before its
    turn; its reply, with the Context state it left. ``EOFError`` when the worker closes without one.
    """
    with Client(str(path), family="AF_UNIX") as conn:
        conn.send((message, context, deadline))
        reply, state = conn.recv()
    context.state = state
    return reply


def main() -> None:
    """``python -m client.worker --socket PATH`` (``fedrt node start`` runs it beside the SuperNode)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # the node stamps lines
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stopped with the node: a clean stop
    serve(parser.parse_args().socket)


if __name__ == "__main__":
    main()
