"""An in-process Flower grid for the server tests: the round driver talks to nodes that answer in Python."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Message


class ReplyingGrid:
    """An in-process grid: each node answers through ``respond(node, message)``, like a SuperNode would."""

    def __init__(self, nodes: Iterable[int], respond: Callable[[int, Message], Message] | None):
        self.nodes, self.respond = list(nodes), respond
        self.replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Give each message its id, as Flower's grids do, and have its node answer it at once."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            reply = self.respond(message.metadata.dst_node_id, message)
            if reply is not None:  # a node that answers None never replies
                self.replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies that arrived for ``message_ids`` (each handed out once)."""
        return [self.replies.pop(i) for i in message_ids if i in self.replies]
