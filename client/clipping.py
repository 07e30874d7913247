"""Client-side clipping for differential privacy: Flower's ``fixedclipping_mod``, applied to a training
message exactly when the server's DP wrapper asks for it (its ConfigRecord carries the clipping norm).

The site then bounds its own update before it leaves the hospital; without DP the reply passes unchanged.
"""

from __future__ import annotations

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM


def clipping_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip the site's update with ``fixedclipping_mod`` when the instruction names a clipping norm."""
    asked = msg.metadata.message_type == MessageType.TRAIN and any(
        KEY_CLIPPING_NORM in record for record in msg.content.config_records.values())
    return fixedclipping_mod(msg, context, call_next) if asked else call_next(msg, context)
