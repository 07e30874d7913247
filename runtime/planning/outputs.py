"""Write a finished plan: DICOM (CT, RT Structure Set, RT Plan, RT Dose in one study) and the OpenKBP dose file.

The DICOM objects share one study and frame of reference; the CT, structure set and dose come from
:mod:`protocols.dicom.export`, the plan from :mod:`runtime.planning.rtplan`, and the case sits on the grid centred
on the DICOM origin (rounded to 1 um) that the planning geometry uses too. ``plan_dose.csv`` is the plan's final
dose as an OpenKBP prediction file (same grid), so ``fedrt evaluate`` scores plans like predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pydicom

from protocols.case import Case
from protocols.dicom.export import centred_grid, write_ct_series, write_rtdose, write_rtstruct
from protocols.dicom.geometry import VolumeGrid
from protocols.dicom.header import StudyContext
from protocols.openkbp import write_prediction
from protocols.protocol import Protocol
from runtime.planning.plan import PlanResult
from runtime.planning.rtplan import write_rtplan

PLAN_DOSE_CSV = "plan_dose.csv"


@dataclass
class PlanFiles:
    """Where the plan's outputs were written."""

    dicom_folder: Path
    rtplan: Path
    rtdose: Path
    rtstruct: Path
    plan_dose_csv: Path

    def moved(self, old: Path, new: Path) -> PlanFiles:
        """The same files after the folder ``old`` they were written in was renamed to ``new``."""
        return PlanFiles(*(new / getattr(self, f.name).relative_to(old) for f in fields(self)))


def write_plan_files(folder: Path, case: Case, protocol: Protocol, plan: PlanResult) -> PlanFiles:
    """Write the DICOM study and ``plan_dose.csv`` into ``folder`` (which must exist)."""
    grid = VolumeGrid(case.shape, tuple(case.spacing_mm), plan.frame.origin_lps)
    if not np.allclose(centred_grid(case.shape, case.spacing_mm).origin_mm, grid.origin_mm, atol=1e-3):
        raise ValueError("the plan's patient frame is not the case's centred grid; plan with PatientFrame.for_case")
    dicom = folder / "dicom"
    dicom.mkdir()
    context = StudyContext(case.patient_id)
    ct_ref, _ = write_ct_series(case.ct_hu, grid, dicom, context)
    targets = set(protocol.targets)
    masks = {name: mask for name, mask in case.structures.items() if mask.any()}
    types = {name: "PTV" if name in targets else "ORGAN" for name in masks}
    rtstruct = write_rtstruct(masks, grid, ct_ref, dicom / "RTSTRUCT.dcm", context, types)
    written = pydicom.dcmread(rtstruct, stop_before_pixels=True)
    roi_numbers = {str(r.ROIName): int(r.ROINumber) for r in written.StructureSetROISequence}
    rtplan = write_rtplan(dicom / "RTPLAN.dcm", plan, protocol, context, str(written.SOPInstanceUID), roi_numbers)
    plan_uid = str(pydicom.dcmread(rtplan, stop_before_pixels=True).SOPInstanceUID)
    rtdose = write_rtdose(plan.dose_gy, grid, dicom / "RTDOSE.dcm", context, plan_uid)
    csv = write_prediction(folder / PLAN_DOSE_CSV, plan.dose_gy)
    return PlanFiles(dicom, rtplan, rtdose, rtstruct, csv)
