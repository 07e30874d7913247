"""What a site may say when it fails: a fixed code, a fixed generic message and its pseudonymous name, never an
exception's text (which can hold patient ids and paths). The server reads only the code, so a reply whose reason
says more (another program, an older fedrt) is shown by its code alone.

Flower's own error codes (a lost node, a crashed ClientApp) get fixed texts here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Error
from flwr.common.constant import ErrorCode

from wire.sites import error_reason


@dataclass(frozen=True)
class SiteFailure:
    """One kind of failure: the code that travels and the one message the server shows for it."""

    code: int
    message: str


DATA_INVALID = SiteFailure(4101, "site data invalid: a patient failed validation; see the node's log")
NO_USABLE_DATA = SiteFailure(4102, "no usable patients at the site: all failed validation or none were found; "
                                   "see the node's log")
SITE_CONFIG = SiteFailure(4103, "the site's node is misconfigured; see the node's log")
VERSION_MISMATCH = SiteFailure(4104, "the site runs another fedrt version (the model does not match); "
                                     "see the node's log")
NODE_WORKER = SiteFailure(4105, "the node's fedrt worker did not answer; restart the node (see its log)")
SITE_INTERNAL = SiteFailure(4199, "the site failed; see the node's log")
NO_REPLY = SiteFailure(4201, "no reply within the round timeout")
NODE_LOST = SiteFailure(ErrorCode.NODE_UNAVAILABLE, "the node was lost (no heartbeat); see the node's log")
REPLY_EXPIRED = SiteFailure(ErrorCode.REPLY_MESSAGE_UNAVAILABLE, "the node's reply expired before it was read")
APP_NOT_LOADED = SiteFailure(ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
                             "the node could not load fedrt's ClientApp (is fedrt installed there?); "
                             "see the node's log")
APP_RAISED = SiteFailure(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                         "the ClientApp failed (its text is withheld); see the node's log")
APP_CRASHED = SiteFailure(ErrorCode.CLIENT_APP_CRASHED, "the ClientApp process crashed; see the node's log")

FAILURES = {f.code: f for f in (DATA_INVALID, NO_USABLE_DATA, SITE_CONFIG, VERSION_MISMATCH, NODE_WORKER, SITE_INTERNAL,
                                NO_REPLY, NODE_LOST, REPLY_EXPIRED, APP_NOT_LOADED, APP_RAISED, APP_CRASHED)}


def failure_error(failure: SiteFailure, site: str) -> Error:
    """The Error a site replies with: its fixed message and the site's name."""
    return Error(code=failure.code, reason=error_reason(site, failure.message))


def describe_failure(error: Error) -> str:
    """The fixed text for an error's code; the reason it carries is never shown."""
    known = FAILURES.get(int(error.code))
    return known.message if known else f"the node reported Flower error code {error.code}; see the node's log"

