"""One federated run on a Flower Grid: build the model and strategy from the composed config, run (or resume)
the rounds, evaluate on the server's validation set, and record everything through ``server.tracking``.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from omegaconf import DictConfig, OmegaConf

from models import loop
from models.centralized import data_config, task_from_config, train_config
from models.checkpoint import load_checkpoint, save_checkpoint
from models.tasks import Task
from models.weights import set_weights
from protocols.case import Case
from protocols.errors import ConfigError
from protocols.phantom import phantom_protocol
from protocols.protocol import Protocol
from protocols.splits import load_cases, select_patients
from server.rounds import RoundReport, run_rounds
from server.strategies import ScreenedStrategy, build_strategy
from server.strategies.privacy import PrivateStrategy, with_privacy
from server.tracking import CHECKPOINT_FILE, Tracker, model_name
from wire.plan import encode_plan
from wire.records import NOT_SCORES, PLAN

log = logging.getLogger(__name__)


@dataclass
class FederationOutcome:
    """How a federated run ended: its MLflow run, the final model file and version, the last scores."""

    run_id: str
    rounds: int
    first_round: int
    checkpoint: Path
    model_version: str | None
    validation: dict[str, float]
    reports: list[RoundReport] = field(default_factory=list)


def scenario_name(config: DictConfig) -> str:
    """The label shared by a federated run and its baselines: data, task, partition, sites and seed."""
    if config.scenario:
        return str(config.scenario)
    data = Path(config.data.root).name if config.data.root else "phantoms"
    return (f"{config.protocol}-{config.task.name}-{data}-{config.partition.name}-{config.num_sites}sites"
            f"-seed{config.seed}")


def open_run(config: DictConfig) -> tuple[Tracker, DictConfig]:
    """A new MLflow run for ``config``, or with ``resume=<run id>`` that run and the config it recorded
    (only ``tracking`` and ``resume`` are taken from the command line then).
    """
    uri = config.tracking.uri
    if config.resume:
        tracker, recorded = Tracker.reopen(uri, str(config.resume), kind="federated")
        log.info("resuming run %s with the configuration it recorded (other overrides are ignored)", tracker.run_id)
        recorded = OmegaConf.create(recorded)
        recorded.tracking = config.tracking
        recorded.resume = str(config.resume)
        return tracker, recorded
    tags = {"fedrt.kind": "federated", "fedrt.scenario": scenario_name(config), "fedrt.task": config.task.name,
            "fedrt.protocol": config.protocol, "fedrt.strategy": config.strategy.name,
            "fedrt.sites": str(config.num_sites)}
    container = OmegaConf.to_container(config, resolve=True)
    name = f"federated-{config.task.name}-{config.strategy.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Tracker.start(uri, config.tracking.experiment, container, tags, run_name=name), config


def data_protocol(config: DictConfig, protocol: Protocol) -> Protocol:
    """The protocol the sites read their data with: the phantom grid when the run uses generated phantoms."""
    if not config.data.root and config.data.phantom_shape:
        return phantom_protocol(protocol, tuple(config.data.phantom_shape))
    return protocol


def site_plan(config: DictConfig, task: Task) -> str:
    """The training plan sent to the sites: one round of ``federation.local_epochs`` epochs of the loop, the
    learning-rate schedule spread over the run's rounds.
    """
    local = dataclasses.replace(train_config(config), epochs=int(config.federation.local_epochs))
    return encode_plan(task.name, data_protocol(config, task.protocol), task.model_config, local, config.policy,
                       data_config(config), int(config.rounds),
                       bool(config.federation.keep_optimizer_state))


def node_counts(config: DictConfig) -> tuple[int, int, int]:
    """Minimum connected, training and evaluating nodes (each defaults to ``num_sites``)."""
    fed = config.federation
    return tuple(int(v if v is not None else config.num_sites)
                 for v in (fed.min_available_nodes, fed.min_train_nodes, fed.min_evaluate_nodes))


def server_evaluator(task: Task, cases: list[Case], every: int,
                     last_round: int) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """Server-side evaluation of the global model with the same ``models.loop.evaluate`` the sites use."""
    network = task.build_network()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round % every and server_round != last_round:
            return None
        set_weights(network, arrays.to_numpy_ndarrays())
        return MetricRecord(loop.evaluate(network, task, cases))

    return evaluate


def _optimizer_state_tensors(strategy: ScreenedStrategy | PrivateStrategy) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: torch.from_numpy(v.copy()) for k, v in moments.items()}
            for name, moments in strategy.optimizer_state().items()}


def _resume_point(tracker: Tracker, task: Task, strategy: ScreenedStrategy | PrivateStrategy,
                  workdir: Path) -> tuple[int, ArrayRecord | None]:
    """The round to start from and the global arrays to start with (None: a fresh model)."""
    found = tracker.latest_checkpoint(workdir)
    if found is None:
        return 1, None
    last, path = found
    checkpoint = load_checkpoint(path)
    state = checkpoint.metadata.get("optimizer_state", {})
    strategy.load_optimizer_state({n: {k: t.numpy() for k, t in m.items()} for n, m in state.items()})
    if isinstance(strategy, PrivateStrategy):
        if "privacy_state" not in checkpoint.metadata:
            raise ConfigError(f"run {tracker.run_id} was started without differential privacy; it cannot be resumed "
                              "with privacy.clipping set")
        strategy.load_privacy_state(checkpoint.metadata["privacy_state"])
    log.info("resuming run %s after round %d", tracker.run_id, last)
    return last + 1, ArrayRecord(checkpoint.network.state_dict())


def run_federation(grid: Grid, config: DictConfig, tracker: Tracker) -> FederationOutcome:
    """Run rounds 1..``rounds`` (or resume after the last checkpointed one) and register the final model.

    A run interrupted after its last round (e.g. while registering) resumes straight to the registration.
    """
    task = task_from_config(config)
    torch.manual_seed(config.seed)
    network = task.build_network()
    available, train_nodes, evaluate_nodes = node_counts(config)
    strategy = with_privacy(build_strategy(OmegaConf.to_container(config.strategy, resolve=True), available,
                                           train_nodes, evaluate_nodes, float(config.federation.fraction_evaluate)),
                            OmegaConf.to_container(config.privacy, resolve=True), int(config.num_sites))
    rounds = int(config.rounds)
    plan = ConfigRecord({PLAN: site_plan(config, task)})
    evaluate_fn = None
    if config.federation.server_eval:
        folders = select_patients(data_config(config), task.protocol, config.seed)
        cases = load_cases(folders.val, folders.protocol, config.policy)
        if cases:
            evaluate_fn = server_evaluator(task, cases, int(config.federation.server_eval_every), rounds)
        else:
            log.warning("no validation cases under %s: server-side evaluation is off", folders.root)
    reports: list[RoundReport] = []
    metadata = {"config": OmegaConf.to_container(config, resolve=True), "run_id": tracker.run_id, "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="fedrt-rounds-") as tmp:
        workdir = Path(tmp)
        first_round, arrays = _resume_point(tracker, task, strategy, workdir)
        arrays = arrays if arrays is not None else ArrayRecord(network.state_dict())

        def on_round(report: RoundReport, global_arrays: ArrayRecord) -> None:
            reports.append(report)
            tracker.log_round(report)
            set_weights(network, global_arrays.to_numpy_ndarrays())
            privacy = {"privacy_state": strategy.privacy_state()} if isinstance(strategy, PrivateStrategy) else {}
            path = save_checkpoint(workdir / CHECKPOINT_FILE, task, network, {
                **metadata, "round": report.server_round, "strategy": config.strategy.name,
                "optimizer_state": _optimizer_state_tensors(strategy), "validation": report.server_metrics,
                **privacy})
            tracker.log_checkpoint(path, report.server_round)

        arrays = run_rounds(strategy, grid, arrays, first_round, rounds, plan, ConfigRecord(dict(plan)),
                            float(config.federation.round_timeout_s), float(config.federation.node_wait_s),
                            evaluate_fn, on_round, tracker.log_evaluation, bool(config.federation.fold_evaluation))
    set_weights(network, arrays.to_numpy_ndarrays())
    validation = _last_scores(reports)
    output = Path(config.output) if config.output else (
        Path("runs") / f"{task.name}-federated-{time.strftime('%Y%m%d-%H%M%S')}.pt")
    save_checkpoint(output, task, network, {**metadata, "round": rounds, "validation": validation})
    version = None
    if config.tracking.register:
        tags = {"protocol": config.protocol, "task": task.name, "sites": str(config.num_sites),
                "rounds": str(rounds), "strategy": config.strategy.name, "scenario": scenario_name(config),
                **{f"val.{k}": f"{v:.6g}" for k, v in validation.items() if not k.startswith("hd95")}}
        version = tracker.register_model(output, model_name(config.protocol, task.name), tags)
    return FederationOutcome(tracker.run_id, rounds, first_round, output, version, validation, reports)


def run_recorded(grid: Grid, config: DictConfig, tracker: Tracker) -> FederationOutcome:
    """Run the federation in ``tracker``'s MLflow run: FINISHED when it ends, FAILED (so resumable with
    ``resume=<run id>``) on any failure or interruption.
    """
    with tracker:
        return run_federation(grid, config, tracker)


def _last_scores(reports: list[RoundReport]) -> dict[str, Any]:
    """The latest server-side scores, else the latest site-side ones (without the example count)."""
    for report in reversed(reports):
        scores = report.server_metrics or report.evaluate_metrics
        if scores:
            return {k: v for k, v in scores.items() if k not in NOT_SCORES}
    return {}
