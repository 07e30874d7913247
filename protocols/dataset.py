"""A protocol dataset: the patient folders under a root, loaded into validated cases on demand."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from protocols.case import Case
from protocols.errors import DataNotFoundError
from protocols.openkbp import PATIENT_FILES, load_openkbp_case, looks_like_patient_dir
from protocols.protocol import Protocol
from protocols.validation import CaseReport, Policy


def _natural_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path)))


def find_patient_dirs(root: Path | str) -> list[Path]:
    """Patient folders at ``root``, directly under it, or one level deeper (e.g. ``train-pats/pt_1``); a folder
    holding some of a patient's files but no CT is one too, so that it is reported as unusable, not skipped unseen.
    """
    root = Path(root)
    if not root.exists():
        raise DataNotFoundError(f"dataset {root} does not exist; give data.root=PATH of a protocol dataset")
    if looks_like_patient_dir(root):
        return [root]
    found = [p for p in root.iterdir() if looks_like_patient_dir(p)]
    found += [p for sub in root.iterdir() if sub.is_dir() and not looks_like_patient_dir(sub)
              for p in sub.iterdir() if looks_like_patient_dir(p)]
    return sorted(found, key=_natural_key)


@dataclass
class ProtocolDataset:
    """Patients of one protocol under ``root``; ``split`` picks a subfolder such as ``train-pats``."""

    root: Path
    protocol: Protocol
    policy: Policy = Policy.WARN
    require_dose: bool = True
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.patient_dirs = find_patient_dirs(self.root)
        if not self.patient_dirs:
            raise DataNotFoundError(
                f"no patients under {self.root}: expected folders holding "
                f"{', '.join(f'{n}.csv(.gz)' for n in PATIENT_FILES)} (OpenKBP layout)"
            )

    def __len__(self) -> int:
        return len(self.patient_dirs)

    def load(self, patient_dir: Path) -> tuple[Case | None, CaseReport]:
        return load_openkbp_case(patient_dir, self.protocol, self.policy, self.require_dose, self.cache_dir)

    def cases(self) -> Iterator[Case]:
        """Usable cases in order; unusable ones are reported under the policy and skipped."""
        for patient_dir in self.patient_dirs:
            case, _ = self.load(patient_dir)
            if case is not None:
                yield case

    def reports(self) -> list[CaseReport]:
        return [self.load(p)[1] for p in self.patient_dirs]
