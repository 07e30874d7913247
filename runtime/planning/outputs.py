"""Write a finished plan: DICOM (RT Plan, RT Dose, and an RT Structure Set where needed) and the OpenKBP dose file.

For a patient's own DICOM (:func:`write_patient_plan`) everything joins the patient's study and Frame of Reference:
the RT Plan references the patient's structure set (or its new version holding the added auto-contours), the
RT Dose lies on the planning grid (every n-th CT voxel: aligned with the CT), and no CT is written unless asked. An
MR-only patient's plan joins the MR's study and frame the same way, and the synthetic CT it was computed on is always
written (a derived CT series saying what made it), since the reviewer has no other planning image.
For an OpenKBP folder (:func:`write_plan_files`) the case carries no position of its own: a new study on the grid
centred on the DICOM origin, with its CT series and structure set. ``plan_dose.csv`` is the plan's final dose on
the planning grid as an OpenKBP prediction file, so ``fedrt evaluate`` scores plans like predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pydicom

from protocols.case import Case
from protocols.dicom.export import add_rois, centred_grid, write_ct_series, write_rtdose, write_rtstruct
from protocols.dicom.geometry import VolumeGrid, resample
from protocols.dicom.header import StudyContext
from protocols.openkbp import write_prediction
from protocols.protocol import Protocol
from runtime.planning.inputs import PLANNED_POSITION, PlanningPatient
from runtime.planning.plan import PlanResult
from runtime.planning.rtplan import write_rtplan

PLAN_DOSE_CSV = "plan_dose.csv"
DICOM_FOLDER = "dicom"


@dataclass
class PlanFiles:
    """Where the plan's outputs were written (``rtstruct`` None when the patient's own one was referenced)."""

    dicom_folder: Path
    rtplan: Path
    rtdose: Path
    rtstruct: Path | None
    plan_dose_csv: Path

    def moved(self, old: Path, new: Path) -> PlanFiles:
        """The same files after the folder ``old`` they were written in was renamed to ``new``."""
        return PlanFiles(*(None if (p := getattr(self, f.name)) is None else new / p.relative_to(old)
                           for f in fields(self)))


def _plan_and_dose(dicom: Path, plan: PlanResult, protocol: Protocol, context: StudyContext, structure_set_uid: str,
                   roi_numbers: dict[str, int], dose_gy: np.ndarray, dose_grid: VolumeGrid) -> tuple[Path, Path]:
    rtplan = write_rtplan(dicom / "RTPLAN.dcm", plan, protocol, context, structure_set_uid, roi_numbers)
    plan_uid = str(pydicom.dcmread(rtplan, stop_before_pixels=True).SOPInstanceUID)
    return rtplan, write_rtdose(dose_gy, dose_grid, dicom / "RTDOSE.dcm", context, plan_uid)


def write_plan_files(folder: Path, case: Case, protocol: Protocol, plan: PlanResult,
                     generation: dict[str, str] | None = None) -> PlanFiles:
    """Write an OpenKBP patient's plan as a new DICOM study and ``plan_dose.csv`` into ``folder`` (which must exist);
    ``generation`` names the auto-contours and what drew them.
    """
    grid = VolumeGrid(case.shape, tuple(case.spacing_mm), plan.frame.origin_lps)
    if not np.allclose(centred_grid(case.shape, case.spacing_mm).origin_mm, grid.origin_mm, atol=1e-3):
        raise ValueError("the plan's patient frame is not the case's centred grid; plan with PatientFrame.for_case")
    dicom = folder / DICOM_FOLDER
    dicom.mkdir()
    context = StudyContext(case.patient_id)
    ct_ref, _ = write_ct_series(case.ct_hu, grid, dicom, context)
    targets = set(protocol.targets)
    masks = {name: mask for name, mask in case.structures.items() if mask.any()}
    types = {name: "PTV" if name in targets else "ORGAN" for name in masks}
    rtstruct = write_rtstruct(masks, grid, ct_ref, dicom / "RTSTRUCT.dcm", context, types, generation)
    written = pydicom.dcmread(rtstruct, stop_before_pixels=True)
    roi_numbers = {str(r.ROIName): int(r.ROINumber) for r in written.StructureSetROISequence}
    rtplan, rtdose = _plan_and_dose(dicom, plan, protocol, context, str(written.SOPInstanceUID), roi_numbers,
                                    plan.dose_gy, grid)
    csv = write_prediction(folder / PLAN_DOSE_CSV, plan.dose_gy)
    return PlanFiles(dicom, rtplan, rtdose, rtstruct, csv)


def write_patient_plan(folder: Path, patient: PlanningPatient, plan: PlanResult, added: dict[str, np.ndarray],
                       generated_by: str = "", write_ct: bool = False) -> PlanFiles:
    """Write the plan of a patient read from DICOM into ``folder``, in the patient's study and frame.

    ``added`` are the auto-contours (on the planning grid) drawn by ``generated_by``; with any, a new version of
    the patient's structure set holds them and the plan references it. ``write_ct`` adds the CT the plan was
    computed on (the planning grid) as a derived series; a synthetic CT (an MR-only patient) is always written, its
    series description and derivation saying what made it from which MR.
    """
    source = patient.dicom
    dicom = folder / DICOM_FOLDER
    dicom.mkdir()
    context = source.context
    rtstruct, structure_set_uid = None, str(source.structure_set.SOPInstanceUID)
    numbers = dict(source.roi_numbers)
    if added:
        on_ct = {name: resample(mask.astype(np.float32), patient.grid, source.ct_grid, order=1) >= 0.5
                 for name, mask in added.items()}
        rtstruct, numbers = add_rois(source.structure_set, on_ct, source.ct_grid, source.ct_reference, generated_by,
                                     dicom / "RTSTRUCT.dcm")
        structure_set_uid = str(pydicom.dcmread(rtstruct, stop_before_pixels=True).SOPInstanceUID)
    roi_numbers = {c: numbers[r] for c, r in source.roi_names.items() if r in numbers}
    roi_numbers.update({name: numbers[name] for name in added})
    if patient.synthetic is not None:
        write_ct_series(patient.case.ct_hu, patient.grid, dicom, context, patient.synthetic.description,
                        patient.synthetic.derivation, PLANNED_POSITION)
    elif write_ct:
        write_ct_series(patient.case.ct_hu, patient.grid, dicom, context)
    rtplan, rtdose = _plan_and_dose(dicom, plan, patient.protocol, context, structure_set_uid, roi_numbers,
                                    plan.dose_gy, patient.grid)  # the planning grid is on the CT's lattice
    csv = write_prediction(folder / PLAN_DOSE_CSV, plan.dose_gy)
    return PlanFiles(dicom, rtplan, rtdose, rtstruct, csv)
