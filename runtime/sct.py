"""Make a synthetic CT from a patient's MR: resample the MR to the model's spacing, predict the CT in HU, resample
it back onto the MR's own grid, and write it as a DICOM CT series in the MR's Frame of Reference and study.

Input is a DICOM folder holding one MR series or an OpenKBP patient folder with ``mr.csv``. The series says what
it is: ImageType DERIVED and SECONDARY, a series description naming fedrt's synthetic CT and the model, and a
derivation description naming the MR series it was made from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import loop
from models.checkpoint import Checkpoint
from models.tasks import expect_task
from protocols.case import Case
from protocols.dicom.attributes import text
from protocols.dicom.export import CtReference, centred_grid, write_ct_series
from protocols.dicom.geometry import VolumeGrid, resample
from protocols.dicom.header import StudyContext
from protocols.dicom.importer import single_series
from protocols.dicom.mr import read_mr_series
from protocols.errors import DataNotFoundError
from protocols.files import refuse_non_empty, staged_folder
from protocols.openkbp import is_patient_dir, load_openkbp_case
from protocols.protocol import Protocol
from protocols.validation import CaseReport, DataValidationError, Policy, apply_policy
from runtime.segmentation import AIR_HU, model_grid
from runtime.stages import StageClock

SCT_DESCRIPTION = "fedrt synthetic CT"  # the start of every synthetic CT series' description


@dataclass
class PatientMr:
    """An MR in case axis order, where it sits in patient space, whose it is and what it was."""

    patient_id: str
    mr: np.ndarray
    grid: VolumeGrid
    context: StudyContext
    series: str  # how the MR is named in what is written: its series description and UID, or its file
    patient_position: str = "HFS"


@dataclass
class SyntheticCtResult:
    """The synthetic CT on the MR's grid, the files written and the time each stage took (seconds)."""

    sct_hu: np.ndarray
    grid: VolumeGrid
    reference: CtReference
    files: list[Path]
    timings_s: dict[str, float] = field(default_factory=dict)


def read_patient_mr(source: Path, protocol: Protocol, policy: Policy | str = Policy.WARN) -> PatientMr:
    """The MR of one patient from a DICOM folder (one MR series expected) or an OpenKBP patient folder."""
    source = Path(source)
    if is_patient_dir(source):
        case, _ = load_openkbp_case(source, protocol, Policy.RAISE, require_dose=False)
        if case.mr is None:
            raise DataNotFoundError(f"{source} has no mr.csv; give a patient folder with an MR (e.g. written by "
                                    "`fedrt data simulate-mr`) or a DICOM folder with the MR series")
        return PatientMr(case.patient_id, case.mr, centred_grid(case.shape, case.spacing_mm),
                         StudyContext(case.patient_id), f"{source.name}/mr.csv")
    if not source.is_dir():
        raise DataNotFoundError(f"{source} is neither a DICOM folder nor an OpenKBP patient folder; give the folder "
                                "of one patient's MR series")
    patient_id, uid, items = single_series(source, "MR", "the one MR series to make the synthetic CT from")
    report = CaseReport(patient_id, source)
    mr = read_mr_series(items, report)
    apply_policy(report, policy)
    if mr is None:
        raise DataValidationError(report)
    first = items[0][1]
    name = " ".join(part for part in (mr.description, f"series {uid}") if part)
    return PatientMr(patient_id, mr.values, mr.grid, StudyContext.of_image(first), name,
                     text(first, "PatientPosition") or "HFS")


def predict_sct(model: Checkpoint, mr: PatientMr) -> np.ndarray:
    """The synthetic CT in HU on the MR's own grid: predicted on the protocol's spacing and resampled back."""
    work = model_grid(mr.grid, model.task.protocol.grid.spacing_mm)
    mr_work = resample(mr.mr, mr.grid, work, order=1, cval=0.0)  # no signal outside the MR
    # An MR-only patient: the sct task reads only the MR (its inputs and body outline); there is no CT to give.
    case = Case(mr.patient_id, np.full(work.shape, AIR_HU, np.float32), work.spacing_mm, mr=mr_work)
    sct = loop.predict(model.network, model.task, case)
    return resample(sct, work, mr.grid, order=1, cval=AIR_HU)


def synthesize_ct(source: Path | str, model: Checkpoint, out_dir: Path | str, label: str) -> SyntheticCtResult:
    """Write the synthetic CT of one patient's MR into a new or empty ``out_dir`` (``CT.NNNN.dcm``, one file per
    slice, in the MR's study and Frame of Reference); the folder appears complete or not at all.

    ``label`` names the model in the series' description (``models.registry.model_label``).
    """
    expect_task(model.task, "sct", "the model given to `fedrt sct`")
    out_dir = Path(out_dir)
    fix = "choose another --out or delete it"
    refuse_non_empty(out_dir, fix)
    clock = StageClock()
    with clock.stage("read"):
        mr = read_patient_mr(Path(source), model.task.protocol)
    with clock.stage("predict"):
        sct = predict_sct(model, mr)
    with clock.stage("write"), staged_folder(out_dir, fix=fix) as staging:
        reference, paths = write_ct_series(sct, mr.grid, staging, mr.context, f"{SCT_DESCRIPTION} ({label})",
                                           f"synthetic CT from MR {mr.series} by fedrt sct model {label}",
                                           mr.patient_position)
    return SyntheticCtResult(sct, mr.grid, reference, [out_dir / p.name for p in paths], clock.timings)
