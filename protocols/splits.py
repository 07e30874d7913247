"""Train/validation cases for a run, from a dataset root or, with no root, from generated phantoms."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocols.case import Case
from protocols.dataset import find_patient_dirs
from protocols.openkbp import load_openkbp_case
from protocols.protocol import Protocol
from protocols.validation import Policy


@dataclass
class DataSplit:
    """The cases a run trains and validates on, and where they came from."""

    root: Path
    train: list[Case]
    val: list[Case]


def _load(dirs: list[Path], protocol: Protocol, policy: Policy, limit: int | None) -> list[Case]:
    cases = []
    for patient_dir in dirs:
        if limit is not None and len(cases) >= limit:
            break
        case, _ = load_openkbp_case(patient_dir, protocol, policy)
        if case is not None:
            cases.append(case)
    return cases


def split_dirs(root: Path, train_split: str, val_split: str, val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Use ``root/train_split`` and ``root/val_split`` when both exist, else hold out the last fraction."""
    if (root / train_split).is_dir() and (root / val_split).is_dir():
        return find_patient_dirs(root / train_split), find_patient_dirs(root / val_split)
    dirs = find_patient_dirs(root)
    n_val = max(1, round(len(dirs) * val_fraction)) if len(dirs) > 1 else 0
    return dirs[: len(dirs) - n_val], dirs[len(dirs) - n_val:]


def data_root(data: dict, protocol: Protocol, seed: int = 0) -> tuple[Path, Protocol]:
    """The dataset folder of the ``data`` section and the protocol to read it with; with ``root: null``
    the generated phantoms (generated once, cached), read on their own grid.
    """
    if data.get("root"):
        return Path(data["root"]).expanduser(), protocol
    from protocols.phantom import ensure_phantom_dataset, phantom_protocol

    shape = tuple(data["phantom_shape"]) if data.get("phantom_shape") else None
    root = ensure_phantom_dataset(protocol, n_patients=int(data.get("phantoms", 10)), seed=seed, shape=shape)
    return root, phantom_protocol(protocol, shape)


def load_split(data: dict, protocol: Protocol, policy: Policy | str = Policy.WARN, seed: int = 0) -> DataSplit:
    """Cases for ``data`` (the ``data`` section of the config); ``root: null`` means generated phantoms."""
    root, protocol = data_root(data, protocol, seed)
    train_dirs, val_dirs = split_dirs(root, data.get("train_split", "train-pats"),
                                      data.get("val_split", "validation-pats"), float(data.get("val_fraction", 0.2)))
    policy = Policy(policy)
    train = _load(train_dirs, protocol, policy, data.get("max_cases"))
    val = _load(val_dirs, protocol, policy, data.get("max_val_cases"))
    if not train:
        raise ValueError(f"no usable training cases under {root}; run `fedrt data check {root}` to see why")
    return DataSplit(root, train, val)
