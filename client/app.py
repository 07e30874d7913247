"""The hospital's Flower ClientApp: train the received global model on the site's own patients with the one
training loop, evaluate it on the site's validation patients, or tell its site name. Replies carry the weights,
scalar metrics and the site's pseudonymous name, nothing else: no case ids, no voxels, and a failure travels only
as a fixed code and message (``client.failures``).

Deployment: ``fedrt node start`` runs it in the node's warm worker (``client.worker``), which the per-message
ClientApp ``client.forwarder:app`` hands each message to.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from client.clipping import clipping_when_asked
from client.failures import SITE_LOGGER, SiteFailed, withhold_failures
from client.site import Locator, SiteData, data_path, load_site, round_seed
from models import loop
from models.weights import set_weights
from protocols.errors import DeploymentError
from wire.failures import NO_USABLE_DATA
from wire.plan import SitePlan, decode_plan
from wire.records import (
    ARRAYS,
    CONFIG,
    EVAL_SECONDS,
    EVALUATE_RECEIVED,
    METRICS,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    RECEIVED_METRICS,
    SERVER_ROUND,
    SITE,
    SITE_NAME,
    TRAIN_SECONDS,
)
from wire.sites import own_site_name

log = logging.getLogger(SITE_LOGGER)
OPTIMIZER_KEY = "fedrt-optimizer"  # the site's AdamW state in the node's Context.state; it never leaves the node


def _network(plan: SitePlan, arrays: ArrayRecord) -> nn.Module:
    """The plan's network holding the received global weights (names, shapes and dtypes must match)."""
    network = plan.task.build_network()
    expected = list(network.state_dict())
    if list(arrays.keys()) != expected:
        raise DeploymentError(f"the global model's arrays ({len(arrays)}) do not match the planned network "
                              f"({len(expected)} tensors); server and site run different fedrt versions?")
    set_weights(network, arrays.to_numpy_ndarrays())
    return network


def _reply(msg: Message, context: Context, metrics: dict[str, float], arrays: ArrayRecord | None = None,
           received: dict[str, float] | None = None) -> Message:
    content = RecordDict({METRICS: MetricRecord(metrics), SITE: ConfigRecord({SITE_NAME: own_site_name(context)})})
    if arrays is not None:
        content[ARRAYS] = arrays
    if received is not None:
        content[RECEIVED_METRICS] = MetricRecord(received)
    return Message(content=content, reply_to=msg)


def _evaluation(plan: SitePlan, data: SiteData, network: nn.Module, server_round: object) -> dict[str, float]:
    """The site's scores of ``network`` on its validation patients, their count and the time it took."""
    if not data.val:
        return {NUM_EXAMPLES: 0}
    start = time.perf_counter()
    scores = loop.evaluate(network, plan.task, data.val)
    metrics = {k: scores[k] for k in plan.task.site_metrics}
    seconds = time.perf_counter() - start
    log.info("round %s: evaluated the global model on %d patients: %s, %.1f s", server_round, len(data.val),
             " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), seconds)
    return {**metrics, NUM_EXAMPLES: len(data.val), EVAL_SECONDS: seconds}


def _kept_optimizer(context: Context, plan: SitePlan) -> dict | None:
    """The AdamW state this site kept from its previous round of the run, when the plan keeps one."""
    if not plan.keep_optimizer or OPTIMIZER_KEY not in context.state:
        return None
    return torch.load(io.BytesIO(context.state[OPTIMIZER_KEY]["adamw"]), weights_only=True)


def _keep_optimizer(context: Context, plan: SitePlan, state: dict | None) -> None:
    """Store the site's AdamW state for its next round (Flower keeps ``Context.state`` for the run)."""
    if plan.keep_optimizer and state is not None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        context.state[OPTIMIZER_KEY] = ConfigRecord({"adamw": buffer.getvalue()})


def _site(msg: Message, context: Context, locate: Locator | None) -> tuple[SitePlan, SiteData]:
    plan = decode_plan(msg.content[CONFIG])
    if plan.train.threads:
        torch.set_num_threads(plan.train.threads)
    return plan, load_site(data_path(context, locate), plan)


def make_client_app(locate: Locator | None = None) -> ClientApp:
    """The ClientApp; ``locate`` stands in for ``data-path`` in simulation (a virtual node's folder).

    Its mods, outermost first: no exception's text leaves the node; the site's update is clipped when the server
    runs client-side differential privacy. (On a real node ``client.forwarder`` runs it in the node's worker.)
    """
    app = ClientApp(mods=[withhold_failures, clipping_when_asked])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        plan, data = _site(msg, context, locate)
        network = _network(plan, msg.content[ARRAYS])
        if not data.train:
            raise SiteFailed(NO_USABLE_DATA, f"no usable training patients under {data_path(context, locate)}")
        config = msg.content[CONFIG]
        # the server folds the evaluation of the model it sends into this message (one message per round)
        received = _evaluation(plan, data, network, int(config[SERVER_ROUND]) - 1) if config.get(
            EVALUATE_RECEIVED) else None
        seed = round_seed(plan.train.seed, int(config[SERVER_ROUND]), own_site_name(context))
        settings = dataclasses.replace(plan.round_settings(int(config[SERVER_ROUND])), seed=seed,
                                       proximal_mu=float(config.get(PROXIMAL_MU, 0.0)))
        result = loop.train(network, plan.task, data.train, settings, progress=False, label=own_site_name(context),
                            optimizer_state=_kept_optimizer(context, plan))
        _keep_optimizer(context, plan, result.optimizer_state)
        metrics = {NUM_EXAMPLES: result.num_examples, "train_loss": result.loss,
                   TRAIN_SECONDS: result.seconds, "train_steps": result.steps}
        log.info("round %s: trained on %d patients, %d steps, loss %.4f, %.1f s", config[SERVER_ROUND],
                 len(data.train), result.steps, result.loss, result.seconds)
        return _reply(msg, context, metrics, ArrayRecord(network.state_dict()), received)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """The site's pseudonymous name and nothing else: a relay (strategy=cyclic) orders its visits by it."""
        return _reply(msg, context, {})

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        plan, data = _site(msg, context, locate)
        network = _network(plan, msg.content[ARRAYS])
        return _reply(msg, context, _evaluation(plan, data, network, msg.content[CONFIG].get(SERVER_ROUND, "?")))

    return app


app = make_client_app()
