"""The record and metric keys of every message between server and sites: one home for each, so a renamed key
cannot drift between the ClientApp, the strategies, the screening and the tracking.
"""

from __future__ import annotations

ARRAYS = "arrays"  # ArrayRecord: the model's weights (Flower strategies' ``arrayrecord_key``)
CONFIG = "config"  # ConfigRecord: the server's instructions (Flower strategies' ``configrecord_key``)
METRICS = "metrics"  # MetricRecord: a site's scalar metrics, nothing else
RECEIVED_METRICS = "received-metrics"  # MetricRecord of a training reply: the received model's evaluation
SITE = "site"  # ConfigRecord: the site's pseudonymous name under ``SITE_NAME``
SITE_NAME = "name"
PLAN = "fedrt-plan"  # entry of the ``config`` record: the training plan (``wire.plan``)

NUM_EXAMPLES = "num-examples"  # metric every reply carries; the weight of FedAvg (``weighted_by_key``)
SERVER_ROUND = "server-round"  # entry Flower's strategies put in the ``config`` record
EVALUATE_RECEIVED = "evaluate-received"  # entry of a train message's ``config``: evaluate the received model first
PROXIMAL_MU = "proximal-mu"  # entry Flower's FedProx puts in the ``config`` record
TRAIN_SECONDS = "train_seconds"  # metric of a training reply: the site's own training time
EVAL_SECONDS = "eval_seconds"  # metric of an evaluation reply: the site's own evaluation time
NOT_SCORES = frozenset({NUM_EXAMPLES, EVAL_SECONDS})  # evaluation metrics that are bookkeeping, not model scores
