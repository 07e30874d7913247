"""Reply validation: the one check every strategy runs on site replies before anything is merged.

A reply is rejected, with its reason logged, when it carries an error (shown by its code's fixed text only),
lacks the expected records, has non-finite values, arrays whose keys, shapes or dtypes differ from the global
model, metric keys that differ from the other sites', or no examples. The round goes on with the accepted replies
(``server.rounds`` stops the run when fewer than ``min_train_nodes`` remain).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Message

from wire.failures import describe_failure
from wire.records import NUM_EXAMPLES
from wire.sites import reply_site_name

log = logging.getLogger(__name__)


@dataclass
class Screened:
    """The replies of one phase of one round: accepted (sorted by site) and rejected with their reasons."""

    accepted: list[Message] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


def _array_problem(arrays: ArrayRecord, reference: ArrayRecord) -> str | None:
    if list(arrays.keys()) != list(reference.keys()):
        missing = sorted(set(reference) - set(arrays))[:3]
        extra = sorted(set(arrays) - set(reference))[:3]
        return f"array keys differ from the global model (missing {missing}, unexpected {extra})"
    for key, array in arrays.items():
        expected = reference[key]
        if tuple(array.shape) != tuple(expected.shape):
            return f"array {key}: shape {tuple(array.shape)}, expected {tuple(expected.shape)}"
        if array.dtype != expected.dtype:
            return f"array {key}: dtype {array.dtype}, expected {expected.dtype}"
        values = array.numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"array {key}: non-finite values"
    return None


def reply_problem(reply: Message, reference: ArrayRecord | None) -> str | None:
    """Why a reply cannot be merged, or None. ``reference`` (the global arrays) is None for evaluation."""
    if reply.has_error():
        return describe_failure(reply.error)
    content = reply.content
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(content.metric_records)}"
    metrics = next(iter(content.metric_records.values()))
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(v) for v in values):
            return f"metric {key} is not finite"
    examples = metrics.get(NUM_EXAMPLES)
    if not isinstance(examples, int | float) or examples <= 0:
        return f"zero examples ({NUM_EXAMPLES}={examples})"
    if reference is not None:
        if len(content.array_records) != 1:
            return f"expected one ArrayRecord, got {len(content.array_records)}"
        return _array_problem(next(iter(content.array_records.values())), reference)
    return None


def _metric_keys(reply: Message) -> frozenset[str]:
    return frozenset(next(iter(reply.content.metric_records.values())).keys())


def screen_replies(replies: Iterable[Message], reference: ArrayRecord | None, phase: str,
                   server_round: int) -> Screened:
    """Split replies into accepted and rejected (reason logged); accepted ones come sorted by site name.

    Metric keys must agree across sites (Flower merges them key by key): replies whose keys differ from
    the most common set are rejected too.
    """
    screened = Screened()
    candidates: list[tuple[str, Message]] = []
    for reply in replies:
        name = reply_site_name(reply)
        problem = reply_problem(reply, reference)
        if name in screened.rejected or any(name == n for n, _ in candidates):
            name, problem = f"{name} (node {reply.metadata.src_node_id})", "another reply uses the same site name"
        if problem is None:
            candidates.append((name, reply))
        else:
            screened.rejected[name] = problem
    if candidates:
        common, _ = Counter(_metric_keys(r) for _, r in candidates).most_common(1)[0]
        for name, reply in candidates:
            if _metric_keys(reply) != common:
                screened.rejected[name] = f"metric keys {sorted(_metric_keys(reply))} differ from {sorted(common)}"
    screened.accepted = [r for n, r in sorted(candidates, key=lambda item: item[0]) if n not in screened.rejected]
    for name, reason in screened.rejected.items():
        log.warning("round %d %s: rejected the reply of %s: %s", server_round, phase, name, reason)
    return screened
