"""The round driver: Flower strategy hooks in order, from any round (so a run can resume), with bounded waits
naming lost sites, and a report per round (wall time, bytes on the wire, per-site metrics, rejections) for tracking.

Flower's ``Strategy.start`` always starts at round 1 and offers no per-round hook; this runs the same steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid

from protocols.errors import DeploymentError
from server.strategies import ScreenedStrategy
from server.strategies.privacy import PrivateStrategy
from server.validation import Screened
from wire.failures import FAILURES, NO_REPLY, NODE_LOST, failure_error
from wire.records import EVAL_SECONDS, EVALUATE_RECEIVED, METRICS, RECEIVED_METRICS, SITE, TRAIN_SECONDS
from wire.sites import node_digest_name, reply_site_name

log = logging.getLogger(__name__)
MIN_TTL_S = 1.0  # Flower refuses to send a message whose time-to-live is not positive
REPLY_POLL_S = 0.1  # how often the server asks the SuperLink for replies (Flower's grids wait 3 s between asks)


@dataclass
class RoundReport:
    """What happened in one round; ``seconds`` covers training and evaluation, ``train_phase_s`` training only,
    ``server_eval_s`` the server's own evaluation; ``sequential``: the sites trained one after another
    (strategy=cyclic), not at once. ``evaluate_metrics`` and ``site_evaluate`` score this round's global model
    (when evaluation is folded into the next round's training they arrive then); ``folded_eval_s`` is the time
    each site spent in this round's training message evaluating the model it received, ``slowest_site_eval_s``
    the slowest site's time in this round's evaluation step.
    """

    server_round: int
    sequential: bool = False
    seconds: float = 0.0
    train_phase_s: float = 0.0
    server_eval_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    train_metrics: dict[str, float] = field(default_factory=dict)
    evaluate_metrics: dict[str, float] = field(default_factory=dict)
    server_metrics: dict[str, float] = field(default_factory=dict)
    site_train: dict[str, dict[str, float]] = field(default_factory=dict)
    site_evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    privacy: dict[str, float] = field(default_factory=dict)
    folded_eval_s: dict[str, float] = field(default_factory=dict)
    slowest_site_eval_s: float = 0.0

    @property
    def slowest_site_train_s(self) -> float:
        """Training time of the slowest accepted site: the part of the round the framework cannot cut."""
        return max((m.get(TRAIN_SECONDS, 0.0) for m in self.site_train.values()), default=0.0)

    @property
    def site_train_total_s(self) -> float:
        """All accepted sites' training time added up."""
        return sum(m.get(TRAIN_SECONDS, 0.0) for m in self.site_train.values())

    @property
    def required_train_s(self) -> float:
        """The site work of the training step the round cannot be shorter than: the slowest site's training (with
        the evaluation folded into it), or all sites' training in a relay.
        """
        if self.sequential:
            return self.site_train_total_s
        return max((m.get(TRAIN_SECONDS, 0.0) + self.folded_eval_s.get(site, 0.0)
                    for site, m in self.site_train.items()), default=0.0)

    @property
    def overhead_s(self) -> float:
        """The round's time beyond the work it cannot skip (training, the sites' and the server's evaluation):
        what the framework costs, the evaluation step included.
        """
        return max(self.seconds - self.required_train_s - self.slowest_site_eval_s - self.server_eval_s, 0.0)


class NodesLostError(DeploymentError):
    """Too few nodes (or usable sites) for a round: the run stops instead of waiting or merging fewer sites."""


class BoundedGrid:
    """The run's Grid with a bound on waiting for nodes. Flower's strategies size a round's sample from the nodes
    connected when it is configured and then (``sample_nodes``) poll ``get_node_ids`` until enough are there,
    without a time limit: a site rejoining a moment late is then connected but left out of the round. Here
    ``get_node_ids`` itself waits until the phase's ``required`` nodes are connected, so the sample counts them,
    and raises ``NodesLostError`` naming the missing sites when that takes longer than ``wait_s``.
    """

    poll_s = 0.5  # how often a waiting phase asks the SuperLink again

    def __init__(self, grid: Grid, wait_s: float, names: dict[int, str]):
        self.grid, self.wait_s, self.names = grid, wait_s, names
        self.required, self.phase, self.started = 0, "", time.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def begin(self, phase: str, required: int) -> None:
        """Start a phase that needs ``required`` connected nodes (its wait starts now)."""
        self.phase, self.required, self.started = phase, required, time.monotonic()

    def get_node_ids(self) -> Iterable[int]:
        """The connected nodes once ``required`` are; raises when the phase is still asking ``wait_s`` after it
        began (also when Flower's own count exceeds ``required``, e.g. a node left after the sample was sized).
        """
        while True:
            nodes = list(self.grid.get_node_ids())
            if time.monotonic() - self.started > self.wait_s:
                missing = sorted(name for node, name in self.names.items() if node not in nodes)
                lost = f" (missing: {', '.join(missing)})" if missing else ""
                raise NodesLostError(f"{self.phase}: still too few nodes after {self.wait_s:g} s ({len(nodes)} "
                                     f"connected, at least {self.required} required){lost}; restart the missing "
                                     "hospitals' nodes or lower federation.min_*_nodes, then resume the run with "
                                     "resume=<MLflow run id>")
            if len(nodes) >= self.required:
                return nodes
            time.sleep(self.poll_s)


def _name(node: int, names: dict[int, str]) -> str:
    return names.get(node) or node_digest_name(node)


def _array_bytes(messages: Iterable[Message]) -> int:
    return sum(record.count_bytes() for m in messages if not m.has_error()
               for record in m.content.array_records.values())


def _site_metrics(screened: Screened | None) -> dict[str, dict[str, float]]:
    if screened is None:
        return {}
    return {reply_site_name(m): {k: float(v) for k, v in next(iter(m.content.metric_records.values())).items()
                           if not isinstance(v, list)} for m in screened.accepted}


def _scalars(record: MetricRecord | None) -> dict[str, float]:
    return {k: float(v) for k, v in (record or {}).items() if not isinstance(v, list)}


def send_and_receive(grid: Grid, messages: list[Message], timeout_s: float) -> list[Message]:
    """Flower's ``Grid.send_and_receive`` asking for replies every ``REPLY_POLL_S`` instead of every 3 s: a reply
    is taken up within a tenth of a second of its arrival at the SuperLink. Returns the replies that came in time.
    """
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout_s
    received: list[Message] = []
    while pending:
        replies = list(grid.pull_messages(list(pending)))
        received.extend(replies)
        pending.difference_update(r.metadata.reply_to_message_id for r in replies)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(REPLY_POLL_S, max(deadline - time.monotonic(), 0.0)))
    return received


def _from_superlink(reply: Message) -> bool:
    """An error the SuperLink made for a node that cannot answer (lost, or its reply expired)."""
    return reply.has_error() and reply.metadata.src_node_id == SUPERLINK_NODE_ID


def _exchange(grid: Grid, messages: list[Message], deadline: float, report: RoundReport,
              names: dict[int, str]) -> list[Message]:
    """Send ``messages``, wait for replies until the round's ``deadline``, and return exactly one reply per
    message: a node that did not reply, or that Flower reports lost (those replies come from the SuperLink,
    node 1), is given an error reply of its own node, named by the site name it gave before.
    """
    if not messages:
        return []
    report.bytes_sent += _array_bytes(messages)
    timeout_s = max(deadline - time.monotonic(), 0.0)
    for message in messages:  # a node's ClientApp gives up when the server no longer waits (client.deadline)
        message.metadata.ttl = max(timeout_s, MIN_TTL_S)
    received = send_and_receive(grid, messages, timeout_s)
    report.bytes_received += _array_bytes(received)
    for reply in received:
        if not _from_superlink(reply):
            name = reply_site_name(reply)
            if name != node_digest_name(reply.metadata.src_node_id):
                names[reply.metadata.src_node_id] = name
    by_request = {r.metadata.reply_to_message_id: r for r in received}
    replies = []
    for message in messages:
        node = message.metadata.dst_node_id
        reply = by_request.get(message.metadata.message_id)
        if reply is not None and not _from_superlink(reply):
            replies.append(reply)
            continue
        failure = NO_REPLY if reply is None else FAILURES.get(int(reply.error.code), NODE_LOST)
        log.warning("round %d: %s: %s", report.server_round, _name(node, names), failure.message)
        replies.append(Message(failure_error(failure, _name(node, names)), reply_to=message))
    return replies


def folds_evaluation(strategy: ScreenedStrategy | PrivateStrategy) -> bool:
    """Whether the sites can evaluate the model they receive for training instead of in a message of its own:
    every site evaluates (``fraction_evaluate`` 1) and every site receives the global model (no relay).
    """
    return not strategy.sequential and float(strategy.fraction_evaluate) == 1.0


def _split_received_evaluation(messages: list[Message], replies: list[Message]) -> tuple[list[Message], dict]:
    """Take the received model's evaluation out of each training reply (``RECEIVED_METRICS``) as an evaluation
    reply of its own, so the strategy merges training and evaluation as if they had come in two messages; also
    each site's evaluation time.
    """
    sent = {m.metadata.message_id: m for m in messages}
    evaluations, seconds = [], {}
    for reply in replies:
        if reply.has_error() or RECEIVED_METRICS not in reply.content:
            continue
        record = reply.content.metric_records.pop(RECEIVED_METRICS)
        site = reply.content.config_records[SITE]
        evaluations.append(Message(RecordDict({METRICS: record, SITE: site}),
                                   reply_to=sent[reply.metadata.reply_to_message_id]))
        seconds[reply_site_name(reply)] = float(record.get(EVAL_SECONDS, 0.0))
    return evaluations, seconds


def _record_evaluation(strategy: ScreenedStrategy | PrivateStrategy, report: RoundReport,
                       replies: list[Message]) -> None:
    """Merge the sites' evaluation replies of ``report``'s global model into it."""
    report.evaluate_metrics = _scalars(strategy.aggregate_evaluate(report.server_round, replies))
    report.site_evaluate = _site_metrics(strategy.screened.get("evaluate"))
    report.rejected.update({f"evaluate/{k}": v for k, v in strategy.screened["evaluate"].rejected.items()})


def run_rounds(strategy: ScreenedStrategy | PrivateStrategy, grid: Grid, arrays: ArrayRecord, first_round: int,
               last_round: int, train_config: ConfigRecord, evaluate_config: ConfigRecord, timeout_s: float,
               node_wait_s: float,
               evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
               on_round: Callable[[RoundReport, ArrayRecord], None] | None = None,
               on_evaluated: Callable[[RoundReport], None] | None = None,
               fold_evaluation: bool = False) -> ArrayRecord:
    """Run rounds ``first_round..last_round`` from ``arrays``; returns the final global arrays.

    With ``fold_evaluation`` (and a strategy that ``folds_evaluation``) each round's training message also asks
    the sites to evaluate the model they receive, the previous round's global model: one message per site and
    round instead of two, with an evaluation message after the last round only. That evaluation reaches the
    previous round's report after ``on_round`` has seen it; ``on_evaluated`` is then called with that report.
    """
    names: dict[int, str] = {}
    bounded = BoundedGrid(grid, node_wait_s, names)
    available = int(strategy.min_available_nodes)
    fold = fold_evaluation and folds_evaluation(strategy)
    previous: RoundReport | None = None
    for server_round in range(first_round, last_round + 1):
        log.info("round %d/%d", server_round, last_round)
        report = RoundReport(server_round, sequential=strategy.sequential)
        start = time.perf_counter()
        folded = fold and server_round > 1
        config = ConfigRecord({**train_config, EVALUATE_RECEIVED: True}) if folded else train_config
        bounded.begin(f"round {server_round} training", max(available, int(strategy.min_train_nodes)))
        messages = list(strategy.configure_train(server_round, arrays, config, bounded))
        exchange = partial(_exchange, grid, deadline=time.monotonic() + timeout_s, report=report, names=names)
        replies = strategy.send_train(server_round, messages, exchange)
        evaluations, report.folded_eval_s = _split_received_evaluation(messages, replies)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        report.rejected = {f"train/{k}": v for k, v in strategy.screened["train"].rejected.items()}
        if folded:
            previous = previous or RoundReport(server_round - 1, sequential=strategy.sequential)
            _record_evaluation(strategy, previous, evaluations)
            if on_evaluated is not None:
                on_evaluated(previous)
        _require_sites(strategy, server_round, report)
        if new_arrays is None:
            log.warning("round %d: no usable training reply; the global model stays as it was", server_round)
        else:
            arrays = new_arrays
        report.train_phase_s = time.perf_counter() - start
        report.train_metrics = _scalars(train_metrics)
        report.site_train = _site_metrics(strategy.screened.get("train"))
        report.privacy = strategy.privacy_metrics()

        if not fold or server_round == last_round:
            bounded.begin(f"round {server_round} evaluation", max(available, int(strategy.min_evaluate_nodes)))
            messages = list(strategy.configure_evaluate(server_round, arrays, evaluate_config, bounded))
            replies = exchange(messages)
            if messages:
                _record_evaluation(strategy, report, replies)
                report.slowest_site_eval_s = max((m.get(EVAL_SECONDS, 0.0) for m in report.site_evaluate.values()),
                                                 default=0.0)
        if evaluate_fn is not None:
            evaluated = time.perf_counter()
            report.server_metrics = _scalars(evaluate_fn(server_round, arrays))
            report.server_eval_s = time.perf_counter() - evaluated
        report.seconds = time.perf_counter() - start
        if on_round is not None:
            on_round(report, arrays)
        previous = report
    return arrays


def _require_sites(strategy: ScreenedStrategy | PrivateStrategy, server_round: int, report: RoundReport) -> None:
    """Stop the run when fewer sites than ``min_train_nodes`` gave a usable update: a model from fewer sites
    than the federation requires is never merged, checkpointed or registered.
    """
    accepted = len(strategy.screened["train"].accepted)
    required = int(strategy.min_train_nodes)
    if accepted < required:
        rejected = "; ".join(f"{where.split('/', 1)[1]}: {why}" for where, why in sorted(report.rejected.items()))
        raise NodesLostError(f"round {server_round}: only {accepted} of the {required} required sites gave a usable "
                             f"update ({rejected or 'no replies'}); fix those sites (their node logs say why), then "
                             "resume the run with resume=<MLflow run id>")
