"""What a learning task is: the class every task derives from, and the registry tasks join by subclassing.

The training loop, the federation and the commands are task-agnostic; everything that differs between tasks
(channels, loss, native-grid output, metrics, what a site reports, how a prediction is written) is on the task.
A new task is one module in this package (found automatically) plus its ``configs/task/<name>.yaml``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from models import encoding
from models.config import ModelConfig
from models.networks import build_unet
from protocols.case import Case
from protocols.errors import ConfigError
from protocols.protocol import Protocol

Prediction = TypeVar("Prediction")  # a task's native-grid output for one case
Score = TypeVar("Score")  # a task's per-case score
TASK_CLASSES: dict[str, type[Task]] = {}  # task name -> class; filled by subclassing ``Task``


@dataclass
class Prepared:
    """A case ready for training: working-grid tensors (channel-first) plus where they sit natively;
    ``labelled``: 1 per target channel the case has a reference for, 0 where it has none.
    """

    patient_id: str
    image: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    labelled: torch.Tensor
    crop: encoding.Crop


class Task(ABC, Generic[Prediction, Score]):
    """Common shape of a task; subclasses fill in the channels, targets, loss, metrics and outputs.

    A subclass that sets ``name`` registers itself under it (``make_task`` finds it by that name).
    """

    name: ClassVar[str]
    title: ClassVar[str]  # what a user calls a model of this task: "dose", "segmentation"
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    site_metrics: ClassVar[tuple[str, ...]]  # what each site reports from local evaluation (same keys everywhere)
    ct_channels: ClassVar[tuple[int, ...]] = (0,)  # input channels holding CT: padded with air, jittered

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is not None:
            if name in TASK_CLASSES and TASK_CLASSES[name].__qualname__ != cls.__qualname__:
                raise TypeError(f"two tasks are named {name!r}: {TASK_CLASSES[name].__qualname__} and "
                                f"{cls.__qualname__}")
            TASK_CLASSES[name] = cls

    def __init__(self, protocol: Protocol, model: ModelConfig):
        self.protocol = protocol
        self.model_config = model

    @property
    @abstractmethod
    def in_channels(self) -> int:
        """Input channels of the network."""

    @property
    @abstractmethod
    def out_channels(self) -> int:
        """Output channels of the network."""

    def build_network(self) -> nn.Module:
        """The task's network for its model configuration."""
        return build_unet(self.in_channels, self.out_channels, self.model_config)

    def crop(self, case: Case) -> encoding.Crop:
        """The box of the case the network sees, on the working grid."""
        return encoding.plan_crop(case.dose_region(), self.model_config.downsample, self.model_config.divisor)

    @abstractmethod
    def inputs(self, case: Case) -> np.ndarray:
        """The network's channel-first input on the native grid."""

    @abstractmethod
    def prepare(self, case: Case) -> Prepared:
        """The case as training tensors."""

    @abstractmethod
    def permutations(self) -> dict[str, list[int]]:
        """Channel reorderings of image and target under a left-right flip."""

    @abstractmethod
    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of a batch."""

    @abstractmethod
    def postprocess(self, output: torch.Tensor, case: Case, crop: encoding.Crop) -> Prediction:
        """The network's working-grid output as the task's native-grid prediction."""

    @abstractmethod
    def score(self, case: Case, prediction: Prediction) -> Score:
        """Score one native-grid prediction against the case's reference."""

    @abstractmethod
    def summarize(self, scores: list[Score]) -> dict[str, float]:
        """Aggregate per-case scores into the task's metrics over a set of cases."""

    @abstractmethod
    def write_prediction(self, case: Case, prediction: Prediction, out_dir: Path) -> Path:
        """Write one case's prediction under ``out_dir`` (``fedrt predict``); return what was written."""


def task_class(name: str) -> type[Task]:
    """The task class registered as ``name``; an error listing the known tasks otherwise."""
    if name not in TASK_CLASSES:
        known = " | ".join(sorted(TASK_CLASSES))
        raise ConfigError(f"unknown task {name!r}; choose task={known}")
    return TASK_CLASSES[name]


def make_task(name: str, protocol: Protocol, model: ModelConfig) -> Task:
    """The task called ``name`` for a protocol and network configuration."""
    return task_class(name)(protocol, model)


def expect_task(task: Task, name: str, what: str) -> None:
    """Refuse a model of another task where one of task ``name`` is needed (``what``: the argument given)."""
    if task.name != name:
        raise ConfigError(f"{what} is a {task.title} model; give a {task_class(name).title} model")
