"""An in-process Flower grid for the server tests: the round driver talks to nodes that answer in Python."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Message


class ReplyingGrid:
    """An in-process grid: each node answers through ``respond(node, message)``, like a SuperNode would."""

    def __init__(self, nodes: Iterable[int], respond: Callable[[int, Message], Message] | None):
        self.nodes, self.respond = list(nodes), respond

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        for message in messages:  # pushing gives each message its id, as Flower's grids do
            message.metadata.__dict__["_message_id"] = str(uuid4())
        replies = [self.respond(m.metadata.dst_node_id, m) for m in messages]
        return [r for r in replies if r is not None]  # a node that answers None never replies
