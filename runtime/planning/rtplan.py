"""Write a plan as a DICOM RT Plan: prescription, fractions, beams, step-and-shoot control points, MLC, MU.

One RT Plan (RT General Plan, RT Prescription, RT Patient Setup, RT Fraction Scheme, RT Beams, Approval) in the
study and frame of reference of the exported CT, referencing its RT Structure Set. Beam geometry is the engine's:
IEC 61217 gantry angles, collimator and couch 0, the isocentre in LPS mm, head-first supine. Each MLC segment is two
control points with the same leaf positions, the second raising the cumulative meterset weight by the segment's
share (final weight 1). Multi-segment beams are written with BeamType DYNAMIC, as the standard defines it (beam
parameters, here the MLC, change during the beam); jaws are set once, in the first control point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from protocols.dicom.header import MANUFACTURER, StudyContext, new_dataset, save_dataset
from protocols.dicom.rtplan import RT_PLAN_STORAGE
from protocols.dicom.rtstruct import RT_STRUCTURE_SET_STORAGE
from protocols.errors import DataError
from protocols.files import atomic_file
from protocols.protocol import Protocol
from runtime.planning.geometry import MLC_BOUNDARIES_MM, MLC_NAME
from runtime.planning.plan import PlanResult
from runtime.planning.sequencing import BeamSequence

MACHINE_NAME = "fedrt 6 MV"
ENERGY_MV = 6.0
N_LEAF_PAIRS = len(MLC_BOUNDARIES_MM) - 1


def _mm(values) -> list[float]:
    """Positions rounded to 0.01 mm (DS values stay short)."""
    return [round(float(v), 2) for v in np.atleast_1d(values)]


def _device(kind: str, positions: list[float]) -> Dataset:
    item = Dataset()
    item.RTBeamLimitingDeviceType = kind
    item.LeafJawPositions = positions
    return item


def leaf_positions(seq: BeamSequence, segment: int, closed_mm: float) -> list[float]:
    """All 2 x 60 leaf tips of one segment: bank 1 (X1 side) then bank 2; pairs outside the grid closed."""
    first = seq.grid.first_leaf
    bank1 = np.full(N_LEAF_PAIRS, closed_mm)
    bank2 = np.full(N_LEAF_PAIRS, closed_mm)
    s = seq.segments[segment]
    rows = slice(first, first + seq.grid.shape[0])
    bank1[rows] = np.where(s.open_rows, s.left_mm, closed_mm)
    bank2[rows] = np.where(s.open_rows, s.right_mm, closed_mm)
    return _mm(bank1) + _mm(bank2)


def _control_points(seq: BeamSequence, gantry_deg: float, isocenter_lps) -> list[Dataset]:
    x1, x2, y1, y2 = seq.jaws_mm()
    total = seq.mu
    points, cumulative = [], 0.0
    for k, segment in enumerate(seq.segments):
        leaves = leaf_positions(seq, k, x1)
        for end in (False, True):
            cp = Dataset()
            cp.ControlPointIndex = len(points)
            if end:
                cumulative += segment.weight_mu / total
            cp.CumulativeMetersetWeight = round(min(cumulative, 1.0), 6) if end else round(cumulative, 6)
            devices = [_device("MLCX", leaves)]
            if not points:
                devices = [_device("ASYMX", _mm([x1, x2])), _device("ASYMY", _mm([y1, y2])), *devices]
                cp.NominalBeamEnergy = ENERGY_MV
                cp.GantryAngle = round(float(gantry_deg), 2)
                cp.GantryRotationDirection = "NONE"
                cp.BeamLimitingDeviceAngle = 0.0
                cp.BeamLimitingDeviceRotationDirection = "NONE"
                cp.PatientSupportAngle = 0.0
                cp.PatientSupportRotationDirection = "NONE"
                cp.TableTopEccentricAngle = 0.0
                cp.TableTopEccentricRotationDirection = "NONE"
                cp.TableTopVerticalPosition = ""
                cp.TableTopLongitudinalPosition = ""
                cp.TableTopLateralPosition = ""
                cp.IsocenterPosition = _mm(isocenter_lps)
            cp.BeamLimitingDevicePositionSequence = Sequence(devices)
            points.append(cp)
    points[-1].CumulativeMetersetWeight = 1.0
    return points


def _beam(number: int, seq: BeamSequence, gantry_deg: float, isocenter_lps) -> Dataset:
    beam = Dataset()
    beam.Manufacturer = MANUFACTURER
    beam.TreatmentMachineName = MACHINE_NAME
    beam.PrimaryDosimeterUnit = "MU"
    beam.SourceAxisDistance = 1000.0
    devices = [Dataset(), Dataset(), Dataset()]
    for item, kind, pairs in zip(devices, ("ASYMX", "ASYMY", "MLCX"), (1, 1, N_LEAF_PAIRS), strict=True):
        item.RTBeamLimitingDeviceType = kind
        item.NumberOfLeafJawPairs = pairs
    devices[2].LeafPositionBoundaries = _mm(MLC_BOUNDARIES_MM)
    beam.BeamLimitingDeviceSequence = Sequence(devices)
    beam.BeamNumber = number
    beam.BeamName = f"G{gantry_deg:03.0f}"
    beam.BeamDescription = f"IMRT step-and-shoot, {len(seq.segments)} segments, {MLC_NAME}"
    beam.BeamType = "DYNAMIC"
    beam.RadiationType = "PHOTON"
    beam.TreatmentDeliveryType = "TREATMENT"
    beam.NumberOfWedges = 0
    beam.NumberOfCompensators = 0
    beam.NumberOfBoli = 0
    beam.NumberOfBlocks = 0
    beam.FinalCumulativeMetersetWeight = 1.0
    points = _control_points(seq, gantry_deg, isocenter_lps)
    beam.NumberOfControlPoints = len(points)
    beam.ControlPointSequence = Sequence(points)
    beam.ReferencedPatientSetupNumber = 1
    return beam


def build_rtplan(plan: PlanResult, protocol: Protocol, context: StudyContext, structure_set_uid: str,
                 roi_numbers: dict[str, int], label: str = "fedrt") -> Dataset:
    """The RT Plan dataset of a plan; ``roi_numbers`` maps structure names to the structure set's ROI numbers."""
    if any(not seq.segments for seq in plan.sequences):
        raise DataError(f"{plan.patient_id}: a beam has no MLC segment (zero fluence), nothing to deliver; check the "
                        "target dose covers the targets, or plan with other --beams")
    ds = new_dataset(context, RT_PLAN_STORAGE, "RTPLAN", 4, "Plan")
    ds.ManufacturerModelName = "fedrt plan"
    date, time = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.RTPlanLabel = label[:16]
    ds.RTPlanName = f"{protocol.name}"[:64]
    ds.RTPlanDate, ds.RTPlanTime = date, time
    ds.RTPlanGeometry = "PATIENT"
    ds.PlanIntent = "CURATIVE"
    ref = Dataset()
    ref.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ref.ReferencedSOPInstanceUID = structure_set_uid
    ds.ReferencedStructureSetSequence = Sequence([ref])
    refs = []
    for number, name in enumerate((t for t in protocol.targets if t in roi_numbers), start=1):
        item = Dataset()
        item.DoseReferenceNumber = number
        item.DoseReferenceUID = generate_uid()
        item.DoseReferenceDescription = name
        item.DoseReferenceType = "TARGET"
        item.TargetPrescriptionDose = float(protocol.structure(name).prescription_gy)
        item.DoseReferenceStructureType = "VOLUME"
        item.ReferencedROINumber = roi_numbers[name]
        refs.append(item)
    ds.DoseReferenceSequence = Sequence(refs)
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = "HFS"
    ds.PatientSetupSequence = Sequence([setup])
    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = plan.fractions
    group.NumberOfBeams = len(plan.beams)
    group.NumberOfBrachyApplicationSetups = 0
    beam_refs = []
    for number, seq in enumerate(plan.sequences, start=1):
        item = Dataset()
        item.ReferencedBeamNumber = number
        item.BeamMeterset = round(seq.mu / plan.fractions, 3)
        beam_refs.append(item)
    group.ReferencedBeamSequence = Sequence(beam_refs)
    ds.FractionGroupSequence = Sequence([group])
    ds.BeamSequence = Sequence([_beam(number, seq, beam.gantry_deg, plan.isocenter_lps)
                                for number, (seq, beam) in enumerate(zip(plan.sequences, plan.beams, strict=True),
                                                                     start=1)])
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def write_rtplan(path: Path | str, plan: PlanResult, protocol: Protocol, context: StudyContext,
                 structure_set_uid: str, roi_numbers: dict[str, int], label: str = "fedrt") -> Path:
    """Build and save the RT Plan (Part 10 file, written to a temporary name then renamed)."""
    path = Path(path)
    ds = build_rtplan(plan, protocol, context, structure_set_uid, roi_numbers, label)
    with atomic_file(path) as tmp:
        save_dataset(ds, tmp)
    return path
