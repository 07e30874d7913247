"""Typed model and training settings, built from the Hydra config (``configs/``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from protocols.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Network size, the resolution it works at (``downsample`` 1 = native grid, 2 = half) and how it predicts;
    saved in every checkpoint, so a model predicts the same way wherever it runs.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    res_units: int = 1
    dropout: float = 0.0
    downsample: int = 1
    patch: tuple[int, int, int] = (96, 96, 96)
    tta_flip: bool = False  # inference averages the patient's prediction with its left-right mirror's

    @property
    def divisor(self) -> int:
        """Spatial sizes fed to the network are multiples of this (one halving per stride)."""
        out = 1
        for s in self.strides:
            out *= s
        return out


@dataclass(frozen=True)
class TrainConfig:
    """How the one training loop runs: budget (epochs and/or minutes), optimiser, augmentation, FedProx,
    arithmetic (``precision`` bf16 = bfloat16 autocast, about twice the steps per hour on a CPU with bfloat16
    instructions and many times fewer without them; auto = bf16 where the CPU has them, fp32 elsewhere).
    """

    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-5
    schedule: str = "cosine"
    flip: bool = True
    intensity_jitter: float = 0.05
    max_minutes: float | None = None
    proximal_mu: float = 0.0
    seed: int = 0
    threads: int | None = None
    precision: str = "fp32"
    average_from: float | None = None  # mean of the weights of every step from this fraction of the budget on
    validate_every_min: float | None = None  # score the validation cases every N minutes of training
    balance_organs: bool = False  # weight each organ's loss by how rarely the training cases contour it
    extra: dict[str, Any] = field(default_factory=dict)


def from_mapping(cls: type, data: dict[str, Any] | None):
    """Build a config dataclass from a mapping, turning lists into tuples; unknown keys are an error."""
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
