"""The round driver: Flower strategy hooks in order, from any round (so a run can resume), with bounded waits
and a report per round (wall time, bytes on the wire, per-site metrics, rejections) for tracking.

Flower's ``Strategy.start`` always starts at round 1 and offers no per-round hook; this runs the same steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from server.strategies import ScreenedStrategy
from server.strategies.privacy import PrivateStrategy
from server.validation import Screened
from wire.sites import reply_site_name

log = logging.getLogger(__name__)


@dataclass
class RoundReport:
    """What happened in one round; ``seconds`` covers training and evaluation, ``train_phase_s`` training only;
    ``sequential``: the sites trained one after another (strategy=cyclic), not at once.
    """

    server_round: int
    sequential: bool = False
    seconds: float = 0.0
    train_phase_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    train_metrics: dict[str, float] = field(default_factory=dict)
    evaluate_metrics: dict[str, float] = field(default_factory=dict)
    server_metrics: dict[str, float] = field(default_factory=dict)
    site_train: dict[str, dict[str, float]] = field(default_factory=dict)
    site_evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    privacy: dict[str, float] = field(default_factory=dict)

    @property
    def slowest_site_train_s(self) -> float:
        """Training time of the slowest accepted site: the part of the round the framework cannot cut."""
        return max((m.get("train_seconds", 0.0) for m in self.site_train.values()), default=0.0)

    @property
    def site_train_total_s(self) -> float:
        """All accepted sites' training time added up."""
        return sum(m.get("train_seconds", 0.0) for m in self.site_train.values())

    @property
    def required_train_s(self) -> float:
        """The training time the round cannot be shorter than: the slowest site's, or all sites' in a relay."""
        return self.site_train_total_s if self.sequential else self.slowest_site_train_s


def wait_for_nodes(grid: Grid, minimum: int, wait_s: float) -> int:
    """Block until ``minimum`` nodes are connected; a TimeoutError (not a hang) when they do not come."""
    deadline = time.monotonic() + wait_s
    while (connected := len(list(grid.get_node_ids()))) < minimum:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {connected} of the {minimum} required nodes connected within {wait_s:g} s; "
                               "start the missing hospitals' nodes or lower federation.min_available_nodes")
        time.sleep(0.5)
    return connected


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


def _exchange(grid: Grid, messages: list[Message], timeout_s: float, report: RoundReport) -> list[Message]:
    if not messages:
        return []
    report.bytes_sent += _array_bytes(messages)
    replies = list(grid.send_and_receive(messages, timeout=timeout_s))
    report.bytes_received += _array_bytes(replies)
    if len(replies) < len(messages):
        log.warning("round %d: %d of %d nodes did not reply within %g s; going on without them",
                    report.server_round, len(messages) - len(replies), len(messages), timeout_s)
    return replies


def run_rounds(strategy: ScreenedStrategy | PrivateStrategy, grid: Grid, arrays: ArrayRecord, first_round: int,
               last_round: int, train_config: ConfigRecord, evaluate_config: ConfigRecord, timeout_s: float,
               node_wait_s: float,
               evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
               on_round: Callable[[RoundReport, ArrayRecord], None] | None = None) -> ArrayRecord:
    """Run rounds ``first_round..last_round`` from ``arrays``; returns the final global arrays."""
    for server_round in range(first_round, last_round + 1):
        log.info("round %d/%d", server_round, last_round)
        report = RoundReport(server_round, sequential=strategy.sequential)
        start = time.perf_counter()
        wait_for_nodes(grid, strategy.min_available_nodes, node_wait_s)
        messages = list(strategy.configure_train(server_round, arrays, train_config, grid))
        exchange = partial(_exchange, grid, timeout_s=timeout_s, report=report)
        replies = strategy.send_train(server_round, messages, exchange)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is None:
            log.warning("round %d: no usable training reply; the global model stays as it was", server_round)
        else:
            arrays = new_arrays
        report.train_phase_s = time.perf_counter() - start
        report.train_metrics = _scalars(train_metrics)
        report.site_train = _site_metrics(strategy.screened.get("train"))
        report.rejected = {f"train/{k}": v for k, v in strategy.screened["train"].rejected.items()}
        report.privacy = strategy.privacy_metrics()

        messages = list(strategy.configure_evaluate(server_round, arrays, evaluate_config, grid))
        replies = exchange(messages)
        if messages:
            report.evaluate_metrics = _scalars(strategy.aggregate_evaluate(server_round, replies))
            report.site_evaluate = _site_metrics(strategy.screened.get("evaluate"))
            report.rejected.update({f"evaluate/{k}": v for k, v in strategy.screened["evaluate"].rejected.items()})
        if evaluate_fn is not None:
            report.server_metrics = _scalars(evaluate_fn(server_round, arrays))
        report.seconds = time.perf_counter() - start
        if on_round is not None:
            on_round(report, arrays)
    return arrays
