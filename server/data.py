"""Where a run's patients are: the dataset root of ``data`` (or the generated phantoms), its protocol grid, and
the training and validation patient folders. Server-side evaluation, the simulation's partitioners and the
baselines all start from here, so they see the same patients in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.case import Case
from protocols.openkbp import load_openkbp_case
from protocols.protocol import Protocol
from protocols.splits import data_root, split_dirs
from protocols.validation import Policy


@dataclass
class PatientFolders:
    """The patient folders of a run (after ``data.max_cases`` / ``max_val_cases``) and how to read them."""

    root: Path
    protocol: Protocol
    train: list[Path]
    val: list[Path]


def patient_folders(data: dict[str, Any], protocol: Protocol, seed: int = 0) -> PatientFolders:
    """The ``data`` section's patients; ``root: null`` means the generated phantoms (read on their own grid)."""
    root, protocol = data_root(data, protocol, seed)
    train, val = split_dirs(root, data.get("train_split", "train-pats"), data.get("val_split", "validation-pats"),
                            float(data.get("val_fraction", 0.2)))
    if data.get("max_cases") is not None:
        train = train[: int(data["max_cases"])]
    if data.get("max_val_cases") is not None:
        val = val[: int(data["max_val_cases"])]
    if not train:
        raise ValueError(f"no training patients under {root}; give data.root=PATH of a protocol dataset")
    return PatientFolders(root, protocol, train, val)


def load_cases(folders: list[Path], protocol: Protocol, policy: Policy | str = Policy.WARN) -> list[Case]:
    """The usable cases among ``folders`` (flawed ones reported under the policy and skipped)."""
    cases = []
    for folder in folders:
        case, _ = load_openkbp_case(folder, protocol, policy)
        if case is not None:
            cases.append(case)
    return cases
