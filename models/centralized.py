"""Centralised training from a composed config: load the split, run the one loop, validate, save a checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from models import loop
from models.checkpoint import save_checkpoint
from models.config import ModelConfig, TrainConfig, from_mapping
from models.tasks import Task, make_task
from protocols.errors import ConfigError
from protocols.protocol import load_protocol
from protocols.splits import DataConfig, DataSplit, load_split


@dataclass
class TrainingOutcome:
    """Where the checkpoint went and how training and validation went."""

    checkpoint: Path
    result: loop.TrainResult
    validation: dict[str, float]


def task_from_config(config: DictConfig) -> Task:
    """The run's task on its protocol and network; a patch the network cannot halve is an error."""
    model = from_mapping(ModelConfig, OmegaConf.to_container(config.model, resolve=True))
    for size in model.patch:
        if size % model.divisor:
            raise ConfigError(f"model.patch {list(model.patch)} must be multiples of {model.divisor} "
                             f"(one halving per stride in model.strides)")
    return make_task(config.task.name, load_protocol(config.protocol), model)


def train_config(config: DictConfig) -> TrainConfig:
    """The typed ``train`` section, seeded with the run's seed."""
    return from_mapping(TrainConfig, {**OmegaConf.to_container(config.train, resolve=True), "seed": config.seed})


def data_config(config: DictConfig) -> DataConfig:
    """The typed ``data`` section: where the patients are and which of them the run uses."""
    return DataConfig.from_mapping(OmegaConf.to_container(config.data, resolve=True))


def load_data(config: DictConfig, task: Task) -> DataSplit:
    """The usable cases of the run's selected patients."""
    return load_split(data_config(config), task.protocol, config.policy, config.seed)


def default_output(task_name: str) -> Path:
    return Path("runs") / f"{task_name}-{time.strftime('%Y%m%d-%H%M%S')}.pt"


def score_line(scores: dict[str, float], primary: str) -> str:
    """Validation scores on one line, the task's primary score first (per-organ Dice for seg; no HD95)."""
    keys = [primary, *sorted(k for k in scores if k != primary and not k.startswith("hd95_"))]
    return ", ".join(f"{k}={scores[k]:.4f}" for k in keys if k in scores)


def run_training(config: DictConfig, progress: bool = True,
                 on_validation: Callable[[int, dict[str, float]], None] | None = None) -> TrainingOutcome:
    """Train centrally on the config's data; the checkpoint carries the composed config for provenance.
    Periodic validation (``train.validate_every_min``) is printed and passed to ``on_validation(step, scores)``.
    """
    task = task_from_config(config)
    split = load_data(config, task)
    network = task.build_network()
    prepared = [task.prepare(case) for case in split.train]

    def validated(step: int, minutes: float, scores: dict[str, float]) -> None:
        tqdm.write(f"{time.strftime('%H:%M:%S')} {minutes:.1f} min, step {step}: "
                   f"{score_line(scores, task.primary_metric)}")
        if on_validation is not None:
            on_validation(step, scores)

    result = loop.train(network, task, prepared, train_config(config), progress=progress, validation=split.val,
                        on_validation=validated)
    validation = loop.evaluate(network, task, split.val, progress=progress) if split.val else {}
    output = Path(config.output) if config.output else default_output(task.name)
    metadata = {"config": OmegaConf.to_container(config, resolve=True), "data_root": str(split.root),
                "train_cases": len(split.train), "validation": validation, "loss_history": result.history,
                "precision": result.precision}
    save_checkpoint(output, task, network, metadata)
    return TrainingOutcome(output, result, validation)
