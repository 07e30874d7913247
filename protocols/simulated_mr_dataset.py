"""An OpenKBP-layout dataset with a simulated MR beside every CT: paired MR/CT data for tests and benchmarks.

Each patient folder of the source is reproduced in the destination (files hard-linked where the file system
allows, copied otherwise; fedrt replaces files rather than editing them, so a link never changes the source) and
gets ``mr.csv`` (``mr.csv.gz`` beside a ``ct.csv.gz``) simulated from its CT by one site's scanner
(:mod:`protocols.simulated_mr`). A record of the scanner, ``simulated_mr.json``, says that the MR is simulated.
The destination appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protocols.dataset import find_patient_dirs
from protocols.errors import DataNotFoundError
from protocols.files import refuse_non_empty, staged_folder
from protocols.openkbp import MR, PATIENT_FILES, read_openkbp_case, source_file, write_mr
from protocols.protocol import Protocol
from protocols.simulated_mr import SIMULATED_MR_LABEL, SIMULATOR_VERSION, Scanner, simulate_mr
from protocols.validation import DataValidationError

RECORD = "simulated_mr.json"
DST_FIX = "choose another DST folder or delete it"


@dataclass(frozen=True)
class SimulatedPatient:
    """One patient written: its id and the MR file in the destination."""

    patient_id: str
    mr_file: Path


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst``, or copy it where links are refused (another file system, no permission)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _source_patients(src: Path) -> list[Path]:
    """The patient folders of ``src``; a clear error when it is not an OpenKBP-layout dataset."""
    fix = (f"give SRC, an OpenKBP-layout dataset: patient folders holding "
           f"{', '.join(f'{n}.csv(.gz)' for n in PATIENT_FILES)} (e.g. one written by fedrt phantoms)")
    if not src.is_dir():
        raise DataNotFoundError(f"{src} {'is not a folder' if src.exists() else 'does not exist'}; {fix}")
    patients = find_patient_dirs(src)
    if not patients:
        raise DataNotFoundError(f"no patients under {src}; {fix}")
    return patients


def write_simulated_mr_dataset(
    src: Path | str,
    dst: Path | str,
    protocol: Protocol,
    scanner: Scanner | Callable[[str], Scanner],
    on_patient: Callable[[SimulatedPatient], None] | None = None,
) -> list[SimulatedPatient]:
    """Reproduce the dataset ``src`` under ``dst`` with a simulated MR of every patient's CT, all or nothing.

    Args:
        src: an OpenKBP-layout dataset (patient folders, directly or one level down) or one patient folder.
        dst: a new or empty folder.
        protocol: the protocol whose grid the patients are on.
        scanner: the site's scanner, the same for every patient; or the scanner of each patient (by folder name),
            e.g. hospitals whose patients are pooled in one dataset, each scanned at its own site.
        on_patient: called after each patient is written (e.g. to print a line).
    """
    src, dst = Path(src), Path(dst)
    refuse_non_empty(dst, DST_FIX)
    patients = _source_patients(src)
    written, scanners = [], {}
    with staged_folder(dst, fix=DST_FIX) as staging:
        for patient_dir in patients:
            case, report = read_openkbp_case(patient_dir, protocol, require_dose=False)
            if case is None:
                raise DataValidationError(report)
            relative = patient_dir.relative_to(src) if patient_dir != src else Path(patient_dir.name)
            folder = staging / relative
            folder.mkdir(parents=True)
            for path in sorted(patient_dir.iterdir()):
                if path.is_file() and not path.name.startswith(f"{MR}.csv"):
                    _link_or_copy(path, folder / path.name)
            outline = case.possible_dose_mask
            used = scanner(patient_dir.name) if callable(scanner) else scanner
            scanners[str(relative)] = used.to_dict()
            mr = simulate_mr(case.ct_hu, case.spacing_mm, used, outline if outline is not None and outline.any()
                             else None)
            compress = source_file(patient_dir, "ct").suffix == ".gz"
            patient = SimulatedPatient(case.patient_id, dst / relative / write_mr(folder, mr, compress).name)
            written.append(patient)
            if on_patient is not None:
                on_patient(patient)
        record = {"label": SIMULATED_MR_LABEL, "simulator_version": SIMULATOR_VERSION, "source": str(src),
                  "protocol": protocol.name,
                  **({"scanners": scanners} if callable(scanner) else {"scanner": scanner.to_dict()}),
                  "patients": [str(p.mr_file.relative_to(dst)) for p in written]}
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return written
