"""An MR-only patient: one MR series and the RT Structure Set contoured on it (no CT), read onto the MR's own grid.

For MRI-only planning. The structure set must lie in the MR's Frame of Reference; its ROIs are matched to the
protocol's names and rasterised on the MR's grid as the CT path does on the CT's (:mod:`protocols.dicom.study`), and
the RT Plan beside them gives the prescription. The densities a CT would give are the caller's to make (a synthetic
CT from a model, or a bulk-density assignment from the body and bone read here); :meth:`MrOnlyCase.with_ct` then
gives the :class:`~protocols.dicom.study.DicomCase` the CT path gives, the synthetic CT in the CT's place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.case import Case, mr_outline
from protocols.dicom.attributes import text
from protocols.dicom.geometry import VolumeGrid
from protocols.dicom.mr import FIX_REEXPORT, read_mr_series
from protocols.dicom.names import NameMatch, NameTable, is_bone
from protocols.dicom.pairing import PairedMr
from protocols.dicom.rtplan import PlanSummary
from protocols.dicom.rtstruct import StructureSet, rasterise_roi, read_structure_set
from protocols.dicom.series import ImageSeries, series_name
from protocols.dicom.study import (
    DicomCase,
    PatientFiles,
    check_referenced_images,
    contoured_structures,
    linked_plan,
    report_unread,
)
from protocols.protocol import Protocol
from protocols.validation import CaseReport, Severity

FIX_ONE_MR = "give the folder of one patient's MR series and the structure set contoured on it"
FIX_FRAME = ("export the structure set contoured on this MR (in the MR's Frame of Reference), or plan on the CT it "
             "was drawn on")
ITSELF = "the planning image itself"  # how the MR of an MR-only case is paired: it is the image planned on


@dataclass
class MrOnlyCase:
    """An MR-only patient on its MR's grid: all a planning case holds but the CT.

    ``body`` is the MR's outline (:func:`protocols.case.mr_outline`); ``bone`` the voxels inside the ROIs that are
    bone (:func:`protocols.dicom.names.is_bone` of the ROI's name or the protocol name it matched, e.g. Mandible),
    named in ``bone_rois``.
    """

    patient_id: str
    mr: ImageSeries
    structure_set: StructureSet
    names: NameMatch
    structures: dict[str, np.ndarray]  # canonical name -> mask on the MR's grid
    body: np.ndarray
    bone: np.ndarray
    bone_rois: list[str]
    plan: PlanSummary | None

    @property
    def grid(self) -> VolumeGrid:
        """The MR's grid, on which everything here lies."""
        return self.mr.grid

    def with_ct(self, ct_hu: np.ndarray) -> DicomCase:
        """The patient as the CT path reads one, ``ct_hu`` (a synthetic CT in HU on the MR's grid) as its CT."""
        if tuple(ct_hu.shape) != self.grid.shape:
            raise ValueError(f"synthetic CT of shape {ct_hu.shape} is not on the MR's grid {self.grid.shape}")
        case = Case(self.patient_id, np.asarray(ct_hu, np.float32), self.grid.spacing_mm, dict(self.structures),
                    possible_dose_mask=self.body.copy(), source=self.mr.folder, mr=self.mr.values)
        uids = {"study": self.mr.study_uid, "ct_series": "", "frame_of_reference": self.mr.frame_of_reference_uid,
                "structure_set": self.structure_set.sop_instance_uid,
                "plan": self.plan.sop_instance_uid if self.plan else "", "mr_series": self.mr.series_uid}
        return DicomCase(case, self.grid, self.names, self.plan, uids, self.body,
                         PairedMr(self.mr, np.eye(4), ITSELF))


def read_mr_only_patient(files: PatientFiles, protocol: Protocol, table: NameTable,
                         report: CaseReport) -> MrOnlyCase | None:
    """Read one MR-only patient (one MR series, its structure set, optionally an RT Plan) onto the MR's grid; None
    when an ERROR finding (naming the file and the fix) makes it unusable.
    """
    report_unread(files, report)
    if len(files.mr_series) != 1:
        found = [series_name(sorted(items, key=lambda item: item[0]), "MR") for items in files.mr_series.values()]
        report.add(Severity.ERROR, "mr-series", f"{len(found)} MR series ({'; '.join(found) or 'none'}); MRI-only "
                   "planning takes exactly one", files.folder, FIX_ONE_MR)
        return None
    ((series_uid, slices),) = files.mr_series.items()
    slices = sorted(slices, key=lambda item: item[0])
    sets = [s for path, ds in files.structure_sets if (s := read_structure_set(ds, path, report)) is not None]
    if not sets:
        report.add(Severity.ERROR, "no-structure-set", "no readable RT Structure Set for this patient",
                   slices[0][0].parent, "export the structure set contoured on the MR together with it")
        return None
    structure_set = _structure_set_of(sets, series_uid, text(slices[0][1], "FrameOfReferenceUID"), report)
    if structure_set is None:
        return None
    cut = [path for path, _ in slices if path in files.truncated]
    for path in cut:
        report.add(Severity.ERROR, "truncated-slice", f"MR slice {path.name} is truncated: {files.truncated[path]}",
                   path, FIX_REEXPORT)
    complete = check_referenced_images(structure_set, series_uid, slices, report, "MR")
    mr = None if cut else read_mr_series(slices, report)
    if mr is None or not complete:
        return None
    contoured = contoured_structures(structure_set, mr.grid, protocol, table, report, "MR")
    if contoured is None:
        return None
    names, structures = contoured
    bone, bone_rois = _bone(structure_set, names, structures, mr.grid, report)
    return MrOnlyCase(report.patient_id, mr, structure_set, names, structures, mr_outline(mr.values), bone,
                      bone_rois, linked_plan(files, structure_set, report))


def _structure_set_of(sets: list[StructureSet], series_uid: str, frame: str,
                      report: CaseReport) -> StructureSet | None:
    """The structure set contoured on the MR: in its frame first, then referencing its series, then the newest (the
    others reported); one on another frame is an ERROR, as the CT path refuses it.
    """
    def rank(structure_set: StructureSet) -> tuple[bool, bool, str]:
        own = structure_set.frame_of_reference_uid
        return (not own or not frame or own == frame, series_uid in structure_set.referenced_series_uids,
                structure_set.date)

    ranked = sorted(sets, key=rank, reverse=True)
    chosen = ranked[0]
    if not rank(chosen)[0]:
        report.add(Severity.ERROR, "frame-mismatch", "the structure set's frame of reference "
                   f"{chosen.frame_of_reference_uid} differs from the MR's {frame}", chosen.path, FIX_FRAME)
        return None
    if len(ranked) > 1:
        report.add(Severity.WARNING, "several-structure-sets", f"{len(ranked)} structure sets; used "
                   f"{chosen.path.name}, skipped {', '.join(s.path.name for s in ranked[1:])}", chosen.path,
                   "export one structure set per MR")
    return chosen


def _bone(structure_set: StructureSet, names: NameMatch, structures: dict[str, np.ndarray], grid: VolumeGrid,
          report: CaseReport) -> tuple[np.ndarray, list[str]]:
    """The voxels inside the ROIs that are bone (by :func:`is_bone` of their name or the protocol name they matched)
    and those ROIs' names; a NOTE lists them.
    """
    canonical = {roi: name for name, roi in names.matched.items()}
    bone = np.zeros(grid.shape, dtype=bool)
    found = []
    for roi in structure_set.rois:
        if roi.contours and (is_bone(roi.name) or is_bone(canonical.get(roi.name, ""))):
            matched = canonical.get(roi.name)
            bone |= structures[matched] if matched else rasterise_roi(roi, grid, report, structure_set.path)
            found.append(roi.name)
    if found:
        report.add(Severity.NOTE, "bone-rois", f"bone ROIs (for a bulk-density synthetic CT): {', '.join(found)}",
                   structure_set.path)
    return bone, found
