"""Baselines for a federated scenario, with the same loop, patients and budget: centralised (all sites' patients
pooled) and local-only (each site alone). Every model is scored on the server's validation cases, as the
federated model is, and recorded as an MLflow run of the scenario.

Budget: a federated site trains ``rounds x federation.local_epochs`` epochs in all; a local-only model trains as
many epochs on its site, the centralised model as many epochs on the pooled patients (with a fixed
``train.steps_per_epoch``, ``num_sites`` times the steps, the sites' steps added up).
``train.max_minutes`` (per round) becomes ``rounds x max_minutes`` per model.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from models import loop
from models.centralized import data_config, task_from_config, train_config
from models.config import TrainConfig
from models.tasks import Prepared, Task
from protocols.case import Case
from protocols.errors import ConfigError
from protocols.splits import load_cases, select_patients
from server.federation import scenario_name
from server.tracking import Tracker, validation_metrics
from simulation.partition import partition

log = logging.getLogger(__name__)
KINDS = ("centralized", "local")


@dataclass
class BaselineOutcome:
    """One baseline model: what it is, its MLflow run, its training and its validation scores."""

    kind: str
    site: str
    run_id: str
    result: loop.TrainResult
    validation: dict[str, float]
    network: nn.Module  # the trained model, to score it on other patients too


def budget(config: DictConfig, pooled: bool) -> TrainConfig:
    """The training budget of a baseline equal to one federated site's (``pooled``: all sites' together)."""
    base = train_config(config)
    rounds, local = int(config.rounds), int(config.federation.local_epochs)
    steps = base.steps_per_epoch * int(config.num_sites) if pooled and base.steps_per_epoch else base.steps_per_epoch
    return dataclasses.replace(base, epochs=rounds * local, steps_per_epoch=steps,
                               max_minutes=base.max_minutes * rounds if base.max_minutes else None)


def _train_one(config: DictConfig, task: Task, kind: str, site: str, prepared: list[Prepared],
               settings: TrainConfig, val: list[Case], progress: bool) -> BaselineOutcome:
    tags = {"fedrt.kind": kind, "fedrt.site": site, "fedrt.scenario": scenario_name(config),
            "fedrt.task": task.name, "fedrt.protocol": config.protocol}
    tracker = Tracker.start(config.tracking.uri, config.tracking.experiment,
                            OmegaConf.to_container(config, resolve=True), tags, run_name=f"{kind}-{site}-{task.name}")
    with tracker:
        torch.manual_seed(config.seed)
        network = task.build_network()
        result = loop.train(network, task, prepared, settings, progress=progress, label=f"{kind} {site}")
        validation = loop.evaluate(network, task, val, progress=progress) if val else {}
        tracker.log_metrics({**validation_metrics(validation), "train/train_loss": result.loss,
                             "train/train_seconds": result.seconds, "train/train_steps": result.steps,
                             "train/cases": result.num_examples}, step=settings.epochs)
    log.info("%s %s: %d cases, %d steps in %.0f s", kind, site, result.num_examples, result.steps, result.seconds)
    return BaselineOutcome(kind, site, tracker.run_id, result, validation, network)


def run_baselines(config: DictConfig, kinds: tuple[str, ...] = KINDS, progress: bool = True) -> list[BaselineOutcome]:
    """Train and score the centralised and/or local-only baselines of the config's scenario."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ConfigError(f"unknown baseline kind(s) {unknown}; choose from {list(KINDS)}")
    task = task_from_config(config)
    folders = select_patients(data_config(config), task.protocol, int(config.seed))
    train_parts, _ = partition(folders, OmegaConf.to_container(config.partition, resolve=True),
                               int(config.num_sites), int(config.seed))
    val = load_cases(folders.val, folders.protocol, config.policy)
    sites = [[task.prepare(c) for c in load_cases(part, folders.protocol, config.policy)] for part in train_parts]
    outcomes = []
    if "centralized" in kinds:
        pooled = [p for site in sites for p in site]
        outcomes.append(_train_one(config, task, "centralized", "all", pooled, budget(config, True), val, progress))
    if "local" in kinds:
        for i, prepared in enumerate(sites):
            if not prepared:
                log.warning("site-%d has no usable training cases: no local-only model", i)
                continue
            outcomes.append(_train_one(config, task, "local", f"site-{i}", prepared, budget(config, False), val,
                                       progress))
    return outcomes
