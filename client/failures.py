"""The ClientApp's outermost mod: no exception leaves the node. Flower would put an exception's text (patient ids,
paths) into the reply, the server's log and the SuperLink's database; this mod logs the full detail on the node
only and replies with a fixed code and message from ``wire.failures`` instead, for every message type.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from protocols.errors import ConfigError, DataError, DataNotFoundError, DeploymentError
from wire.failures import (
    DATA_INVALID,
    NO_USABLE_DATA,
    SITE_CONFIG,
    SITE_INTERNAL,
    VERSION_MISMATCH,
    SiteFailure,
    failure_error,
)
from wire.sites import own_site_name

SITE_LOGGER = "fedrt.site"  # the node's own log (``fedrt node start`` timestamps and rotates it); never sent
log = logging.getLogger(SITE_LOGGER)

# The first matching class decides; anything else (a bug) is SITE_INTERNAL.
_KINDS: tuple[tuple[type[BaseException], SiteFailure], ...] = (
    (DataNotFoundError, NO_USABLE_DATA), (DataError, DATA_INVALID), (ConfigError, SITE_CONFIG),
    (DeploymentError, VERSION_MISMATCH))


class SiteFailed(Exception):
    """Raised inside the ClientApp to end a message with a known failure (e.g. no usable patients)."""

    def __init__(self, failure: SiteFailure, detail: str):
        super().__init__(detail)
        self.failure = failure


def classify(error: Exception) -> SiteFailure:
    """The fixed failure an exception is reported as."""
    if isinstance(error, SiteFailed):
        return error.failure
    return next((failure for kind, failure in _KINDS if isinstance(error, kind)), SITE_INTERNAL)


def withhold_failures(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the message; on any exception log it here in full and reply with its fixed failure only."""
    try:
        return call_next(msg, context)
    except Exception as error:
        failure = classify(error)
        log.error("%s message failed (reported to the server as code %d: %s)", msg.metadata.message_type,
                  failure.code, failure.message, exc_info=error)
        return Message(failure_error(failure, own_site_name(context)), reply_to=msg)
