"""The patient's prescription: target doses and fractions, from the first source that states them.

Order: the patient's RT Plan (DoseReferenceSequence, FractionGroupSequence), then ``--prescription PTV70=70,...``
with ``--fractions``, then target names that state a dose (``PTV_7000``, ``PTV 56Gy``), then the protocol with a
printed note. The chosen source must give every contoured target a dose; one that misses a target is an error
naming it, never a silent fallback to the protocol's dose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from protocols.dicom.names import normalise
from protocols.dicom.rtplan import PlanSummary
from protocols.errors import ConfigError, DataError
from protocols.protocol import Protocol

# A target name that states its dose: PTV_7000, PTV70, PTV 70Gy, PTV7000cGy, CTV_56.0
NAMED_DOSE = re.compile(r"^(?:PTV|CTV|GTV)[\s_-]*(\d+(?:[.,]\d+)?)\s*(c?gy)?$", re.IGNORECASE)
CGY_FROM = 200.0  # a bare number this large is in cGy (no target is prescribed 200 Gy)
VOLUME_TYPES = ("VOLUME", "SITE", "")  # dose references of a region, not of a point


@dataclass(frozen=True)
class Prescription:
    """Target doses (Gy, whole course) and fractions for one patient, and where they came from."""

    doses_gy: dict[str, float]
    fractions: int
    source: str
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """E.g. ``PTV70 70 Gy, PTV56 56 Gy in 35 fractions (from RTPLAN rp.dcm)``."""
        doses = ", ".join(f"{name} {dose:g} Gy" for name, dose in self.doses_gy.items())
        return f"{doses} in {self.fractions} fractions ({self.source})"


def parse_prescription(text: str) -> dict[str, float]:
    """``PTV70=70,PTV56=56`` -> {'PTV70': 70.0, 'PTV56': 56.0}; errors say the expected form."""
    doses = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            doses[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip() or doses[name.strip()] <= 0:
            raise ConfigError(f"--prescription {text!r}: expected TARGET=GY pairs separated by commas, e.g. "
                              "PTV70=70,PTV56=56 (the dose of the whole course, in Gy)")
    return doses


def dose_in_name(roi_name: str) -> float | None:
    """The dose a target's name states (``PTV_7000`` -> 70.0), or None."""
    match = NAMED_DOSE.match(roi_name.strip())
    if match is None:
        return None
    value = float(match.group(1).replace(",", "."))
    unit = (match.group(2) or "").lower()
    return value / 100.0 if unit == "cgy" or (not unit and value >= CGY_FROM) else value


def _from_plan(plan: PlanSummary, targets: dict[str, str], roi_numbers: dict[str, int]) -> dict[str, float]:
    """Each target's dose from the plan: by referenced ROI, by description, or the one region prescription."""
    regions = [p for p in plan.prescriptions if p.reference_type == "TARGET" and p.dose_gy
               and p.structure_type in VOLUME_TYPES]
    doses = {}
    for canonical, roi in targets.items():
        number = roi_numbers.get(roi)
        by_roi = [p.dose_gy for p in regions if number is not None and p.referenced_roi_number == number]
        by_name = [p.dose_gy for p in regions if normalise(p.description) in (normalise(roi), normalise(canonical))]
        if by_roi or by_name:
            doses[canonical] = (by_roi or by_name)[0]
    if not doses and len(targets) == 1 and regions:
        doses[next(iter(targets))] = max(p.dose_gy for p in regions)
    return doses


def resolve_prescription(protocol: Protocol, targets: dict[str, str], plan: PlanSummary | None = None,
                         roi_numbers: dict[str, int] | None = None, given: dict[str, float] | None = None,
                         fractions: int | None = None, named: bool = True) -> Prescription:
    """The prescription of a patient whose contoured targets are ``targets`` (canonical name -> ROI name).

    Args:
        protocol: the protocol, the last source.
        targets: the contoured targets.
        plan: the patient's RT Plan, if the input holds one.
        roi_numbers: ROI name -> ROI number in the structure set the plan references.
        given: ``--prescription`` doses by canonical or ROI name.
        fractions: ``--fractions``.
        named: whether target names may state the dose (not for canonical names, which are the protocol's).
    """
    if not targets:
        raise DataError(f"no target contoured ({', '.join(protocol.targets)}); contour a target before planning")
    notes: list[str] = []
    if plan is not None and (doses := _from_plan(plan, targets, roi_numbers or {})):
        source, count = f"from RTPLAN {plan.path.name}", plan.fractions or fractions
        if given:
            notes.append("the patient's RTPLAN states the prescription; --prescription was not used")
    elif given:
        unknown = [name for name in given if name not in targets and name not in targets.values()]
        if unknown:
            raise ConfigError(f"--prescription names {', '.join(unknown)}, which is not a contoured target "
                              f"({', '.join(f'{c} (ROI {r!r})' for c, r in targets.items())})")
        doses = {c: given[c] if c in given else given[r] for c, r in targets.items() if c in given or r in given}
        source, count = "from --prescription", fractions
    elif named and any(dose_in_name(roi) for roi in targets.values()):
        doses = {c: dose for c, roi in targets.items() if (dose := dose_in_name(roi))}
        source, count = "from the target names", fractions
    else:
        doses = {c: protocol.structure(c).prescription_gy for c in targets}
        source, count = f"from protocol {protocol.name}", fractions
        notes.append(f"no RTPLAN, --prescription or dose in the target names: the prescription of protocol "
                     f"{protocol.name} is used")
    missing = [f"{c} (ROI {r!r})" for c, r in targets.items() if c not in doses]
    if missing:
        raise DataError(f"{', '.join(missing)}: no prescription {source}; give every target's dose, e.g. "
                        f"--prescription {','.join(f'{c}=GY' for c in targets)}")
    if not count:
        count = protocol.fractions
        notes.append(f"fractions not stated: the protocol's {count} are used (give --fractions)")
    return Prescription(doses, int(count), source, notes)
