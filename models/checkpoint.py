"""Checkpoints: weights plus everything needed to rebuild the model (task, protocol, network config)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.config import ModelConfig, from_mapping
from models.tasks import Task, make_task
from protocols.errors import DataError, DataNotFoundError
from protocols.files import atomic_file
from protocols.protocol import protocol_from_dict, protocol_to_dict

FORMAT = "fedrt-checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded model ready to predict: its task (with protocol and network config) and the network."""

    task: Task
    network: nn.Module
    metadata: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: Path | str, task: Task, network: nn.Module, metadata: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temp file + rename), creating the folder if needed."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "task": task.name,
        "protocol": protocol_to_dict(task.protocol),
        "model": dataclasses.asdict(task.model_config),
        "state_dict": network.state_dict(),
        "metadata": metadata or {},
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Rebuild task and network from a checkpoint file; a file of another kind is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"model checkpoint {path} not found; train one with `fedrt train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path} is not a fedrt checkpoint ({exc}); give a file written by `fedrt train`") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{path} is not a fedrt checkpoint (expected format {FORMAT}); give a file written by "
                        "`fedrt train`")
    protocol = protocol_from_dict(payload["protocol"], source=str(path))
    task = make_task(payload["task"], protocol, from_mapping(ModelConfig, payload["model"]))
    network = task.build_network()
    network.load_state_dict(payload["state_dict"])
    network.eval()
    return Checkpoint(task, network, payload.get("metadata", {}))
