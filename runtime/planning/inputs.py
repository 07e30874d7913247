"""What a plan is made for: one patient, read from an OpenKBP folder or from the patient's own DICOM.

For DICOM (a CT series, an RT Structure Set with the targets, optionally an RT Plan) the case is taken onto the
planning grid (:func:`planning_grid`): every n-th voxel of the CT, n giving about the protocol's spacing, over the
whole CT. Nothing is interpolated on the way in or out (the CT and masks are sub-sampled, the plan's RT Dose lies
on that lattice), so the dose along the skin is not blurred with the air outside, and everything written back sits in
the CT's Frame of Reference. The patient's own
prescription (``runtime.planning.prescription``) replaces the protocol's, and a scan too short for the beams is
reported.

An MR-only patient (one MR series and the structure set contoured on it, no CT) is planned the same way on a
synthetic CT (``runtime.planning.synthetic_ct``: an sct model's, or bulk densities): the MR's grid, Frame of Reference
and study take the CT's place, the synthetic CT on the MR's grid is sub-sampled onto the planning grid as a CT is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from protocols.case import Case
from protocols.dicom.attributes import text
from protocols.dicom.export import CtReference, centred_grid
from protocols.dicom.geometry import VolumeGrid, aligned_grid
from protocols.dicom.header import StudyContext
from protocols.dicom.importer import SIDECAR, read_sidecar_grid, scan_folder, to_protocol_grid
from protocols.dicom.mr_only import read_mr_only_patient
from protocols.dicom.names import NameTable, build_name_table
from protocols.dicom.series import Item, series_name
from protocols.dicom.study import DicomCase, PatientFiles, read_patient
from protocols.errors import ConfigError, DataNotFoundError, DicomError
from protocols.openkbp import is_patient_dir, load_openkbp_case
from protocols.protocol import Protocol
from protocols.validation import CaseReport, DataValidationError, Policy, Severity
from runtime.planning import BULK_DENSITIES
from runtime.planning.prescription import Prescription, resolve_prescription
from runtime.planning.synthetic_ct import SctSource, SyntheticCt, synthesise

SCAN_MARGIN_MM = 20.0  # planning image beyond the targets that the beams' penumbra and scatter need
PLANNED_POSITION = "HFS"  # the beam geometry of the dose engine and the RT Plan
# Import findings about training use (no dose to learn from, a plan unlike the protocol's) that say nothing
# about a plan made with the patient's own prescription.
TRAINING_ONLY = ("no-dose", "fractions", "prescription")


@dataclass
class DicomInput:
    """The patient's own DICOM that the written plan joins: study and frame, the planning image (the CT, or the MR of
    an MR-only patient), structure set.
    """

    context: StudyContext
    ct_grid: VolumeGrid  # the planning image's grid
    ct_reference: CtReference  # the planning image's series and slices
    structure_set: Dataset
    roi_numbers: dict[str, int]  # ROI name -> ROI number in the structure set
    roi_names: dict[str, str]  # canonical name -> the patient's ROI name
    modality: str = "CT"  # of the planning image


@dataclass
class PlanningPatient:
    """One patient ready to plan: the case on the planning grid and where that grid sits in patient space."""

    case: Case
    grid: VolumeGrid
    protocol: Protocol  # with the patient's prescription
    prescription: Prescription
    dicom: DicomInput | None = None
    frame_of_reference_uid: str = ""  # of the patient's CT (or MR of an MR-only patient), when known
    warnings: list[str] = field(default_factory=list)
    synthetic: SyntheticCt | None = None  # what the case's CT is when it is a synthetic CT from the MR


def load_planning_patient(source: Path, protocol: Protocol, names: Path | None = None,
                          given: dict[str, float] | None = None, fractions: int | None = None,
                          sct: SctSource | None = None) -> PlanningPatient:
    """Read the patient in ``source`` (an OpenKBP patient folder or a DICOM folder of one patient).

    Args:
        source: the patient's folder.
        protocol: the protocol the patient is planned for.
        names: a structure-name override file for DICOM input.
        given: ``--prescription`` doses by canonical or ROI name.
        fractions: ``--fractions``.
        sct: for an MR-only DICOM folder (no CT), where its synthetic CT comes from; refused with a CT.
    """
    source = Path(source)
    if is_patient_dir(source):
        if sct is not None:
            raise ConfigError(f"{sct.option}: {source} is an OpenKBP patient folder, planned on its own CT; give an "
                              "MR-only DICOM folder (MR series + RTSTRUCT) or leave the option out")
        return _openkbp_patient(source, protocol, given, fractions)
    if not source.is_dir():
        raise DataNotFoundError(f"{source} does not exist; give a DICOM folder (CT series + RTSTRUCT with the "
                                "targets) or an OpenKBP patient folder")
    return _dicom_patient(source, protocol, names, given, fractions, sct)


def _openkbp_patient(source: Path, protocol: Protocol, given: dict[str, float] | None,
                     fractions: int | None) -> PlanningPatient:
    case, _ = load_openkbp_case(source, protocol, Policy.RAISE, require_dose=False)
    targets = {name: name for name in protocol.targets if case.mask(name).any()}
    prescription = resolve_prescription(protocol, targets, given=given, fractions=fractions, named=False)
    grid = read_sidecar_grid(source) or centred_grid(case.shape, case.spacing_mm)
    frame = ""
    if (source / SIDECAR).is_file():
        frame = str(json.loads((source / SIDECAR).read_text()).get("uids", {}).get("frame_of_reference", ""))
    return PlanningPatient(case, grid, protocol.with_prescription(prescription.doses_gy, prescription.fractions),
                           prescription, frame_of_reference_uid=frame, warnings=list(prescription.notes))


def _one_patient(source: Path) -> PatientFiles:
    patients, skipped = scan_folder(source)
    if len(patients) == 1:
        return next(iter(patients.values()))
    if not patients:
        why = "; ".join(f.message for f in skipped.findings[:3]) or "no DICOM file"
        raise DicomError(f"{source}: no patient's CT or RT objects found ({why}); give the folder of one patient's "
                         "planning CT and structure set")
    raise DicomError(f"{source}: {len(patients)} patients ({', '.join(patients)}); give the folder of one patient")


@dataclass
class _DicomRead:
    """One patient's DICOM read on its planning image's grid: the case, its report, the image's first slice and
    series, the structure set file.
    """

    dicom_case: DicomCase
    report: CaseReport
    first_image: Dataset
    reference: CtReference
    structure_set_path: Path


def _dicom_patient(source: Path, protocol: Protocol, names: Path | None, given: dict[str, float] | None,
                   fractions: int | None, sct: SctSource | None) -> PlanningPatient:
    files = _one_patient(source)
    table = build_name_table(protocol, names)
    if sct is not None:
        if files.ct_series:
            raise DicomError(f"{source} holds a CT ({_series_names(files.ct_series, 'CT')}); {sct.option} plans an "
                             "MR-only patient on a synthetic CT: plan on the CT (leave the option out), or remove the "
                             "CT from the folder")
        read, synthetic = _mr_only(files, protocol, table, source, sct)
        return _planning_patient(read, protocol, given, fractions, synthetic)
    if not files.ct_series and files.mr_series:
        raise DicomError(f"{source} holds an MR ({_series_names(files.mr_series, 'MR')}) and no CT: plan this "
                         "MR-only patient on a synthetic CT, made by an sct model (--sct-model MODEL) or by bulk "
                         f"densities (--sct {'|'.join(BULK_DENSITIES)})")
    report = CaseReport(files.patient_id, source)
    dicom_case = read_patient(files, protocol, table, report)
    if dicom_case is None or not report.usable:
        raise DataValidationError(report)
    first_ct = next(ds for _, ds in files.ct_series[dicom_case.uids["ct_series"]])
    rtstruct_path = next(p for p, ds in files.structure_sets
                         if text(ds, "SOPInstanceUID") == dicom_case.uids["structure_set"])
    read = _DicomRead(dicom_case, report, first_ct, _ct_reference(files, dicom_case), rtstruct_path)
    return _planning_patient(read, protocol, given, fractions)


def _mr_only(files: PatientFiles, protocol: Protocol, table: NameTable, source: Path,
             sct: SctSource) -> tuple[_DicomRead, SyntheticCt]:
    """An MR-only patient read on the MR's grid, its synthetic CT in the CT's place."""
    report = CaseReport(files.patient_id, source)
    mr_only = read_mr_only_patient(files, protocol, table, report)
    if mr_only is None or not report.usable:
        raise DataValidationError(report)
    sct_hu, synthetic = synthesise(sct, mr_only)
    first_mr = next(ds for _, ds in files.mr_series[mr_only.mr.series_uid])
    reference = CtReference(mr_only.mr.series_uid, mr_only.mr.sop_instance_uids)
    return _DicomRead(mr_only.with_ct(sct_hu), report, first_mr, reference, mr_only.structure_set.path), synthetic


def _planning_patient(read: _DicomRead, protocol: Protocol, given: dict[str, float] | None, fractions: int | None,
                      synthetic: SyntheticCt | None = None) -> PlanningPatient:
    """What the CT and MR-only paths share: the position check, the planning grid, the prescription, the warnings."""
    dicom_case, report, first = read.dicom_case, read.report, read.first_image
    modality = text(first, "Modality", "CT")
    position = text(first, "PatientPosition", PLANNED_POSITION).upper()
    if position != PLANNED_POSITION:
        raise DicomError(f"{report.path}: the {modality} was scanned {position}; fedrt's beam geometry plans "
                         f"head-first supine ({PLANNED_POSITION}) patients only; plan this patient in the planning "
                         "system")
    case, grid = to_protocol_grid(dicom_case, protocol, report, planning_grid(dicom_case.grid, protocol))
    structure_set = pydicom.dcmread(read.structure_set_path)
    roi_numbers = {str(r.ROIName): int(r.ROINumber) for r in structure_set.StructureSetROISequence}
    targets = {c: dicom_case.names.matched[c] for c in protocol.targets
               if c in dicom_case.names.matched and case.mask(c).any()}
    prescription = resolve_prescription(protocol, targets, dicom_case.plan, roi_numbers, given, fractions)
    warnings = synthetic.warnings if synthetic is not None else []
    warnings += [f"{f.message} [{Path(f.path).name if f.path else report.path.name}]" for f in report.findings
                 if f.severity is Severity.WARNING and f.code not in TRAINING_ONLY]
    warnings += scan_length_warnings(dicom_case, protocol.targets, modality)
    dicom = DicomInput(StudyContext.of_image(first), dicom_case.grid, read.reference, structure_set, roi_numbers,
                       dict(dicom_case.names.matched), modality)
    return PlanningPatient(case, grid, protocol.with_prescription(prescription.doses_gy, prescription.fractions),
                           prescription, dicom, dicom_case.uids["frame_of_reference"],
                           warnings + prescription.notes, synthetic)


def _series_names(series: dict[str, list[Item]], modality: str) -> str:
    """Image series as messages name them, by their files."""
    return "; ".join(series_name(sorted(items, key=lambda item: item[0]), modality) for items in series.values())


def planning_grid(ct: VolumeGrid, protocol: Protocol) -> VolumeGrid:
    """Every n-th voxel of the CT over its whole extent, n per axis the nearest integer to the protocol's spacing over
    the CT's (a 512 x 512 x 150 CT at 0.98 x 0.98 x 3 mm gives 128 x 128 x 150 for hn-openkbp).
    """
    spacing = protocol.grid.spacing_mm
    extent = (np.asarray(ct.shape) - 1) * np.asarray(ct.spacing_mm)
    cover = VolumeGrid(tuple(int(n) for n in np.ceil(extent / np.asarray(spacing)) + 1), tuple(spacing), ct.origin_mm)
    return aligned_grid(ct, cover)


def _ct_reference(files: PatientFiles, dicom_case: DicomCase) -> CtReference:
    """The input CT's series and its slices' SOP instances, superior first (the case's axis 2)."""
    slices = [ds for _, ds in files.ct_series[dicom_case.uids["ct_series"]]]
    unique = {text(ds, "SOPInstanceUID"): float(ds.ImagePositionPatient[2]) for ds in slices}
    return CtReference(dicom_case.uids["ct_series"], tuple(sorted(unique, key=lambda uid: -unique[uid])))


def scan_length_warnings(dicom_case: DicomCase, target_names: tuple[str, ...], modality: str = "CT") -> list[str]:
    """Warnings when the planning image (the CT, or the MR of an MR-only patient) ends at the targets or too close to
    them for the beams' penumbra and scatter.
    """
    grid, case = dicom_case.grid, dicom_case.case
    targets = np.zeros(case.shape, dtype=bool)
    for name in target_names:
        targets |= case.mask(name)
    slices = np.flatnonzero(targets.any(axis=(0, 1)))
    if slices.size == 0:
        return []
    step = grid.spacing_mm[2]
    out = []
    for end, margin_mm in (("superior", slices[0] * step), ("inferior", (case.shape[2] - 1 - slices[-1]) * step)):
        if margin_mm < 0.5 * step:
            out.append(f"the targets touch the {end} end of the {modality} ({case.shape[2]} slices, "
                       f"{(case.shape[2] - 1) * step:.0f} mm): the dose beyond it is not computed; rescan or "
                       f"export the whole planning {modality} (at least {SCAN_MARGIN_MM:.0f} mm beyond the targets)")
        elif margin_mm < SCAN_MARGIN_MM:
            out.append(f"the {modality} extends only {margin_mm:.0f} mm beyond the targets at its {end} end; the "
                       f"beams' penumbra and scatter need at least {SCAN_MARGIN_MM:.0f} mm: export the whole planning "
                       f"{modality}")
    return out
