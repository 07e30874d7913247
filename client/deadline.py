"""A node's ClientApp never outlives the round it works for. Each instruction's time-to-live is what is left of
the server's round (``server.rounds``); past it the server no longer waits for the reply, and a ClientApp of a
run whose server died would otherwise train on (Flower starts one process per message and never stops it). On a
real node (one process per message, its ``data-path`` in the node config) this mod ends the process then, and the
node's warm worker drops a message whose time ran out before its turn (``client.worker``); one it already runs
goes on to its end (a round of training), its reply unread.
"""

from __future__ import annotations

import logging
import os
import threading

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from client.failures import SITE_LOGGER
from wire.sites import DATA_CONFIG

log = logging.getLogger(SITE_LOGGER)
GIVE_UP_EXIT = 3  # the exit status of a ClientApp stopped by its deadline


def _give_up(seconds: float) -> None:
    log.error("the server stopped waiting for this reply %.0f s after the message arrived (the round's time is up, "
              "or its run is gone); stopping this ClientApp", seconds)
    logging.shutdown()
    os._exit(GIVE_UP_EXIT)


def within_deadline(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the message; on a real node, end the process if it is still busy when the message's time is up."""
    if DATA_CONFIG not in context.node_config:  # simulation: one worker serves many messages; Flower bounds it
        return call_next(msg, context)
    seconds = float(msg.metadata.ttl)
    timer = threading.Timer(seconds, _give_up, args=(seconds,))
    timer.daemon = True
    timer.start()
    try:
        return call_next(msg, context)
    finally:
        timer.cancel()
