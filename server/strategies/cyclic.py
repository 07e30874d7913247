"""Cyclic weight transfer (Chang et al., JAMIA 2018): in each round the model visits the sites one after
another, each training it further from where the previous site left it, and the last accepted site's model is
the round's global model. Sites are visited in the order of their pseudonymous names.

Why: at an equal number of epochs FedAvg's mean moves about as far as one site's training, while the steps of
a relay add up like centralised training's. The price is no parallelism: a round lasts the sum of the sites'
training times. Replies are screened as they arrive; a rejected one is not passed on (the next site gets the
model the rejected site was sent), and a site that does not reply is skipped after the round timeout.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from server.strategies.screening import Exchange, ScreenedStrategy, cast_like
from server.validation import reply_problem, screen_replies
from wire.sites import reply_site_name


class CyclicWeightTransfer(ScreenedStrategy, FlowerFedAvg):
    """Sites train in turn within a round, in the order of their pseudonymous names; only weights and scalar
    metrics travel, as with FedAvg.
    """

    sequential = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.site_names: dict[int, str] = {}
        self.asked: set[int] = set()

    def visiting_order(self, messages: Iterable[Message], exchange: Exchange) -> list[Message]:
        """The round's train messages in visiting order: by site name (asked once per node with a query
        message, so reruns and resumed runs visit in the same order); nodes that do not tell go last, by node id.
        """
        messages = list(messages)
        unasked = [m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id not in self.asked]
        if unasked:
            self.asked.update(unasked)
            for reply in exchange([Message(RecordDict(), node, MessageType.QUERY) for node in unasked]):
                if not reply.has_error():
                    self.site_names[reply.metadata.src_node_id] = reply_site_name(reply)

        def key(message: Message) -> tuple[str, int]:
            node = message.metadata.dst_node_id
            return self.site_names.get(node, "\uffff"), node

        return sorted(messages, key=key)

    def send_train(self, server_round: int, messages: list[Message], exchange: Exchange) -> list[Message]:
        """Send the model to one site at a time (``exchange`` delivers a list of messages and returns the
        replies), each carrying the last usable reply's weights; returns every reply in visiting order.
        """
        if self.global_arrays is None:
            raise RuntimeError("send_train called before configure_train: no global model to start from")
        arrays, replies = self.global_arrays, []
        for message in self.visiting_order(messages, exchange):
            content = RecordDict({self.arrayrecord_key: arrays,
                                  self.configrecord_key: message.content[self.configrecord_key]})
            for reply in exchange([Message(content, message.metadata.dst_node_id, message.metadata.message_type)]):
                replies.append(reply)
                if reply_problem(reply, self.global_arrays) is None:
                    arrays = reply.content[self.arrayrecord_key]
        return replies

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The last usable reply of the relay (``replies`` in visiting order) is the new global model; the
        training metrics are the accepted sites' means weighted by ``num-examples``, as in FedAvg.
        """
        if self.global_arrays is None:
            raise RuntimeError("aggregate_train called before configure_train: no global model to check against")
        replies = list(replies)
        self.screened["train"] = screen_replies(replies, self.global_arrays, "train", server_round)
        usable = [r for r in replies if reply_problem(r, self.global_arrays) is None]
        if not usable:
            return None, None
        accepted = self.screened["train"].accepted
        metrics = self.train_metrics_aggr_fn([r.content for r in accepted], self.weighted_by_key) if accepted else None
        return cast_like(usable[-1].content[self.arrayrecord_key], self.global_arrays), metrics
