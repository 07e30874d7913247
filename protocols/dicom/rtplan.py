"""Read an RT Plan's prescription and beam summary (what was prescribed and how it was delivered)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from protocols.dicom.attributes import MALFORMED, AttributeProblem, floats, has, integer, number, sequence, text
from protocols.validation import CaseReport, Severity

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"


@dataclass
class Prescription:
    """One dose reference: a target's prescription or an organ's limit, in Gy."""

    number: int
    description: str
    reference_type: str  # TARGET or ORGAN_AT_RISK
    structure_type: str  # POINT, VOLUME, COORDINATES, SITE
    dose_gy: float | None
    referenced_roi_number: int | None = None


@dataclass
class Beam:
    """One beam as planned: first control point's geometry, and its meterset from the fraction group."""

    number: int
    name: str
    beam_type: str
    radiation_type: str
    machine: str
    energy_mv: float | None
    gantry_angles_deg: list[float]
    collimator_angle_deg: float | None
    couch_angle_deg: float | None
    isocenter_mm: list[float] | None
    control_points: int
    meterset_mu: float | None = None


@dataclass
class PlanSummary:
    """Label, fractions, prescriptions and beams of an RT Plan, plus the structure set it was planned on."""

    path: Path
    sop_instance_uid: str
    label: str
    fractions: int | None
    prescriptions: list[Prescription] = field(default_factory=list)
    beams: list[Beam] = field(default_factory=list)
    referenced_structure_set_uids: tuple[str, ...] = ()
    frame_of_reference_uid: str = ""

    @property
    def target_prescriptions_gy(self) -> list[float]:
        return sorted((p.dose_gy for p in self.prescriptions if p.reference_type == "TARGET" and p.dose_gy),
                      reverse=True)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def read_rtplan(ds: Dataset, path: Path, report: CaseReport) -> PlanSummary | None:
    """Read the prescription and beams; None after an ERROR finding. Missing parts are simply left empty."""
    try:
        return _read(ds, path)
    except AttributeProblem as exc:
        report.add(Severity.ERROR, "bad-attribute", f"RTPLAN: {exc}", path,
                   "re-export the plan from the planning system")
    except MALFORMED as exc:
        report.add(Severity.ERROR, "unreadable", f"RTPLAN cannot be parsed ({exc})", path,
                   "re-export the plan from the planning system")
    return None


def _optional(ds: Dataset, keyword: str) -> float | None:
    try:
        return number(ds, keyword)
    except AttributeProblem:
        return None


def _read(ds: Dataset, path: Path) -> PlanSummary:
    prescriptions = []
    for item in sequence(ds, "DoseReferenceSequence"):
        kind = text(item, "DoseReferenceType").upper()
        dose = _optional(item, "TargetPrescriptionDose") if kind == "TARGET" else (
            _optional(item, "OrganAtRiskMaximumDose") or _optional(item, "DeliveryMaximumDose"))
        roi = _optional(item, "ReferencedROINumber")
        prescriptions.append(Prescription(integer(item, "DoseReferenceNumber", 0), text(item,
                             "DoseReferenceDescription"), kind, text(item, "DoseReferenceStructureType").upper(),
                             dose, None if roi is None else int(roi)))
    groups = sequence(ds, "FractionGroupSequence")
    fractions = integer(groups[0], "NumberOfFractionsPlanned", 0) or None if groups else None
    meterset: dict[int, float] = {}
    for group in groups[:1]:
        for ref in sequence(group, "ReferencedBeamSequence"):
            mu = _optional(ref, "BeamMeterset")
            if mu is not None:
                meterset[integer(ref, "ReferencedBeamNumber", -1)] = mu
    beams = []
    for item in sequence(ds, "BeamSequence"):
        points = sequence(item, "ControlPointSequence")
        first = points[0] if points else Dataset()
        angles = [a for a in (_optional(cp, "GantryAngle") for cp in points) if a is not None]
        iso = floats(first, "IsocenterPosition", 3).tolist() if has(first, "IsocenterPosition") else None
        number_ = integer(item, "BeamNumber", 0)
        beams.append(Beam(number_, text(item, "BeamName"), text(item, "BeamType").upper(),
                          text(item, "RadiationType").upper(), text(item, "TreatmentMachineName"),
                          _optional(first, "NominalBeamEnergy"), sorted(set(angles), key=angles.index),
                          _optional(first, "BeamLimitingDeviceAngle"), _optional(first, "PatientSupportAngle"),
                          iso, len(points), meterset.get(number_)))
    return PlanSummary(
        path=path,
        sop_instance_uid=text(ds, "SOPInstanceUID"),
        label=text(ds, "RTPlanLabel"),
        fractions=fractions,
        prescriptions=prescriptions,
        beams=beams,
        referenced_structure_set_uids=tuple(text(r, "ReferencedSOPInstanceUID")
                                            for r in sequence(ds, "ReferencedStructureSetSequence")),
        frame_of_reference_uid=text(ds, "FrameOfReferenceUID"),
    )


def describe_plan(plan: PlanSummary) -> str:
    """One line: label, fractions, target prescriptions and beams (for the import report)."""
    rx = ", ".join(f"{d:g} Gy" for d in plan.target_prescriptions_gy) or "no target prescription"
    beams = ", ".join(f"{b.name or b.number} ({b.radiation_type} {b.energy_mv or '?'} MV, gantry "
                      f"{'/'.join(f'{a:g}' for a in b.gantry_angles_deg[:3]) or '?'}"
                      f"{'...' if len(b.gantry_angles_deg) > 3 else ''}"
                      f"{f', {b.meterset_mu:.1f} MU' if b.meterset_mu else ''})" for b in plan.beams)
    return (f"plan {plan.label or plan.sop_instance_uid}: {plan.fractions or '?'} fractions, {rx}; "
            f"{len(plan.beams)} beam(s){': ' + beams if beams else ''}")
