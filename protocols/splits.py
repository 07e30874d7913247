"""Which patients a run uses: the one patient selection of centralised training, federated simulation, the
baselines and every hospital node. A dataset root (or, with no root, the generated phantoms) is split into
training and validation folders, and ``max_cases`` / ``max_val_cases`` keep the first N patient folders of each
(flawed ones among them are reported under the policy and skipped, never replaced by later ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from protocols.case import Case
from protocols.dataset import find_patient_dirs
from protocols.errors import ConfigError, DataError
from protocols.openkbp import load_openkbp_case
from protocols.protocol import Protocol
from protocols.validation import Policy

SELECTION_KEYS = ("train_split", "val_split", "val_fraction", "max_cases", "max_val_cases")  # what a node applies


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section of the config: where the patients are and which of them a run uses."""

    root: str | None = None  # a protocol dataset; None = generated phantoms
    train_split: str = "train-pats"
    val_split: str = "validation-pats"
    val_fraction: float = 0.2  # held out (the last folders) when the root has no validation folder
    max_cases: int | None = None  # the first N training patient folders
    max_val_cases: int | None = None  # the first N validation patient folders
    phantoms: int = 10  # how many phantoms the embedded default generates
    phantom_shape: tuple[int, int, int] | None = None  # None = the protocol grid

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> DataConfig:
        """From the config's ``data`` mapping; unknown keys are an error naming the known ones."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ConfigError(f"unknown data setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if data.get("phantom_shape") is not None:
            data["phantom_shape"] = tuple(int(s) for s in data["phantom_shape"])
        return cls(**data)

    def selection(self) -> dict[str, Any]:
        """The settings a hospital node applies to its own dataset (everything but where the data is)."""
        return {k: getattr(self, k) for k in SELECTION_KEYS}


@dataclass
class PatientSelection:
    """The patient folders a run uses, in order, and the protocol (grid included) to read them with."""

    root: Path
    protocol: Protocol
    train: list[Path]
    val: list[Path]


@dataclass
class DataSplit:
    """The cases a run trains and validates on, and where they came from."""

    root: Path
    train: list[Case]
    val: list[Case]


def split_dirs(root: Path, train_split: str, val_split: str, val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Use ``root/train_split`` and ``root/val_split`` when both exist, else hold out the last fraction."""
    if (root / train_split).is_dir() and (root / val_split).is_dir():
        return find_patient_dirs(root / train_split), find_patient_dirs(root / val_split)
    dirs = find_patient_dirs(root)
    n_val = max(1, round(len(dirs) * val_fraction)) if len(dirs) > 1 else 0
    return dirs[: len(dirs) - n_val], dirs[len(dirs) - n_val:]


def data_root(data: DataConfig, protocol: Protocol, seed: int = 0) -> tuple[Path, Protocol]:
    """The dataset folder and the protocol to read it with; with no root the generated phantoms (generated once,
    cached), read on their own grid.
    """
    if data.root:
        return Path(data.root).expanduser(), protocol
    from protocols.phantom import ensure_phantom_dataset, phantom_protocol

    root = ensure_phantom_dataset(protocol, n_patients=data.phantoms, seed=seed, shape=data.phantom_shape)
    return root, phantom_protocol(protocol, data.phantom_shape)


def select_folders(root: Path, data: DataConfig) -> tuple[list[Path], list[Path]]:
    """The training and validation patient folders of ``root`` under the selection rule of this module."""
    train, val = split_dirs(root, data.train_split, data.val_split, data.val_fraction)
    if data.max_cases is not None:
        train = train[: data.max_cases]
    if data.max_val_cases is not None:
        val = val[: data.max_val_cases]
    return train, val


def select_patients(data: DataConfig, protocol: Protocol, seed: int = 0) -> PatientSelection:
    """The run's patient folders; no training patient at all is an error naming the fix."""
    root, protocol = data_root(data, protocol, seed)
    train, val = select_folders(root, data)
    if not train:
        raise DataError(f"no training patients under {root}; give data.root=PATH of a protocol dataset")
    return PatientSelection(root, protocol, train, val)


def load_cases(folders: list[Path], protocol: Protocol, policy: Policy | str = Policy.WARN) -> list[Case]:
    """The usable cases among ``folders`` (flawed ones reported under the policy and skipped)."""
    cases = []
    for folder in folders:
        case, _ = load_openkbp_case(folder, protocol, policy)
        if case is not None:
            cases.append(case)
    return cases


def load_split(data: DataConfig, protocol: Protocol, policy: Policy | str = Policy.WARN, seed: int = 0) -> DataSplit:
    """The usable cases of the run's selected patients."""
    selection = select_patients(data, protocol, seed)
    train = load_cases(selection.train, selection.protocol, policy)
    if not train:
        raise DataError(f"no usable training cases under {selection.root}; run `fedrt data check "
                        f"{selection.root}` to see why")
    return DataSplit(selection.root, train, load_cases(selection.val, selection.protocol, policy))
