"""Plan one patient end to end: read the patient (OpenKBP folder or the patient's own DICOM), contour the OARs it
lacks, resolve the dose to mimic, plan, and write the plan folder (DICOM, ``plan_dose.csv``, ``report/report.html``,
``plan.json``), which appears complete or not at all. :func:`target_dose_for` is the one place where a
dose-prediction model plugs in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocols.case import Case
from protocols.dicom.attributes import text
from protocols.dicom.importer import KINDS, read_dicom_header
from protocols.dicom.rtdose import RT_DOSE_STORAGE, read_rtdose
from protocols.errors import ConfigError, DataNotFoundError, DicomError
from protocols.files import NEW_FOLDER_FIX, refuse_non_empty, staged_folder
from protocols.metrics import evaluate_goals, openkbp_dose_error
from protocols.openkbp import read_prediction
from protocols.protocol import Protocol
from protocols.validation import CaseReport
from runtime.planning.inputs import PlanningPatient, load_planning_patient
from runtime.planning.outputs import PlanFiles, write_patient_plan, write_plan_files
from runtime.planning.plan import PlanConfig, PlanResult, make_plan
from runtime.planning.report import write_report
from runtime.planning.synthetic_ct import SctSource
from runtime.stages import Progress, StageClock

SUMMARY_JSON = "plan.json"
REPORT_FOLDER = "report"


@dataclass(frozen=True)
class PlanRequest:
    """One patient to plan and where to put the plan.

    Args:
        patient_dir: a DICOM folder of one patient (CT series, RT Structure Set with the targets, optionally an
            RT Plan with the prescription) or an OpenKBP patient folder.
        out: a new or empty folder for the plan.
        protocol: the protocol the patient is planned for.
        config: beams, intensity levels, optimisation effort and density table.
        dose_model: a dose-prediction model (checkpoint or ``models:/NAME@ALIAS``) whose prediction is mimicked.
        target_dose: instead of ``dose_model``, the dose to mimic: an OpenKBP prediction CSV or an RT Dose.
        seg_model: a segmentation model that contours the OARs the patient has no contour for.
        report: whether to write the HTML review report.
        names: a structure-name override file (canonical: [local names]) for DICOM input.
        prescription: target doses in Gy (``--prescription``), used when the input holds no RT Plan.
        fractions: the number of fractions (``--fractions``).
        write_ct: also write the CT the plan was computed on (DICOM input; OpenKBP input always gets one).
        sct: for an MR-only DICOM folder, where its synthetic CT comes from (an sct model or bulk densities); the
            synthetic CT the plan was computed on is always written.
    """

    patient_dir: Path
    out: Path
    protocol: Protocol
    config: PlanConfig
    dose_model: str | None = None
    target_dose: Path | None = None
    seg_model: str | None = None
    report: bool = True
    names: Path | None = None
    prescription: dict[str, float] | None = None
    fractions: int | None = None
    write_ct: bool = False
    sct: SctSource | None = None

    def __post_init__(self) -> None:
        if self.sct is not None and self.seg_model:
            raise ConfigError(f"--seg-model contours OARs on a CT, not on a synthetic CT ({self.sct.option}); "
                              "contour the OARs of an MR-only patient on the MR, in its structure set")


@dataclass
class PlanOutcome:
    """What :func:`plan_patient` wrote: the plan folder, its files and the summary saved as ``plan.json``."""

    out: Path
    files: PlanFiles
    summary: dict[str, Any]


def target_dose_for(patient: PlanningPatient, dose_model: str | None = None,
                    target_dose: Path | None = None) -> tuple[np.ndarray, str]:
    """The dose to mimic on the planning grid and a label for it: the model's prediction, or a given dose file.

    A model trained for another prescription has its dose scaled to the patient's highest target dose.
    """
    if (dose_model is None) == (target_dose is None):
        raise ConfigError("give exactly one of a dose model (--dose-model) and a target dose file (--target-dose)")
    case = patient.case
    if dose_model:
        from models import loop
        from models.checkpoint import load_checkpoint
        from models.registry import resolve_model
        from models.tasks import expect_task

        model = load_checkpoint(resolve_model(dose_model))
        expect_task(model.task, "dose", f"--dose-model {dose_model}")
        dose, label = loop.predict(model.network, model.task, case), f"predicted by {dose_model}"
        scale = patient.protocol.max_prescription_gy / model.task.protocol.max_prescription_gy
        if abs(scale - 1.0) > 1e-6:
            dose, label = dose * np.float32(scale), f"{label}, scaled x{scale:.3g} to the patient's prescription"
        return dose, label
    path = Path(target_dose)
    if not path.is_file():
        raise DataNotFoundError(f"--target-dose {path} does not exist; give an OpenKBP prediction CSV or RT Dose")
    if path.suffix.lower() == ".dcm":
        return read_target_rtdose(path, patient), f"RT Dose {path.name}"
    return read_prediction(path, case.shape).astype(np.float32), f"dose file {path.name}"


def read_target_rtdose(path: Path, patient: PlanningPatient) -> np.ndarray:
    """An RT Dose read in patient coordinates onto the planning grid; another patient's or frame's is refused."""
    ds = read_dicom_header(path)
    kind = KINDS.get(text(ds, "SOPClassUID"), text(ds, "Modality", "unknown")) if ds is not None else "not DICOM"
    if ds is None or text(ds, "SOPClassUID") != RT_DOSE_STORAGE:
        raise DicomError(f"--target-dose {path}: a {kind} file, not an RT Dose; give the RTDOSE file of the dose to "
                         "mimic (or an OpenKBP dose CSV)")
    own = patient.dicom.context.patient_id if patient.dicom else ""
    image = patient.dicom.modality if patient.dicom else "CT"
    if own and text(ds, "PatientID") != own:
        raise DicomError(f"--target-dose {path}: RT Dose of patient {text(ds, 'PatientID') or '(no ID)'}, but the "
                         f"{image} is of patient {own}; give this patient's dose")
    frame = text(ds, "FrameOfReferenceUID")
    if patient.frame_of_reference_uid and frame and frame != patient.frame_of_reference_uid:
        raise DicomError(f"--target-dose {path}: its Frame of Reference {frame} is not the {image}'s "
                         f"{patient.frame_of_reference_uid}, so it cannot be placed on this {image}; give a dose "
                         f"computed on this planning {image} (or register it first)")
    report = CaseReport(patient.case.patient_id, path)
    dose = read_rtdose(ds, path, report)
    if dose is None:
        raise DicomError("; ".join(str(f) for f in report.findings))
    return dose.on_grid(patient.grid)


def contour_missing_oars(case: Case, seg_model: str) -> tuple[list[str], str]:
    """Add the segmentation model's masks for the OARs the case has no contour for; returns their names and the
    model's label (``models.registry.model_label``).
    """
    from models import loop
    from models.checkpoint import load_checkpoint
    from models.registry import model_label, resolve_model
    from models.tasks import expect_task

    model = load_checkpoint(resolve_model(seg_model))
    expect_task(model.task, "seg", f"--seg-model {seg_model}")
    missing = [name for name in model.task.protocol.oars if name not in case.structures]
    if missing:
        masks = loop.predict(model.network, model.task, case)
        case.structures.update({name: masks[name] for name in missing if masks[name].any()})
    return [name for name in missing if name in case.structures], model_label(seg_model)


def plan_summary(case: Case, protocol: Protocol, plan: PlanResult, target: np.ndarray, label: str,
                 timings: dict[str, float], total_s: float) -> dict[str, Any]:
    """What the plan achieved, against the target dose, and where the time went (also saved as plan.json)."""
    goals = {}
    for name, dose in (("plan", plan.dose_gy), ("target", target)):
        goals[name] = [{"goal": r.goal.label, "value_gy": r.value_gy, "passed": r.passed}
                       for r in evaluate_goals(dose, case.structures, case.voxel_volume_mm3, protocol)]
    return {
        "patient": case.patient_id,
        "target_dose": label,
        "beams": [b.gantry_deg for b in plan.beams],
        "segments": plan.n_segments,
        "mu_per_fraction": plan.total_mu / plan.fractions,
        "iterations": plan.optimisation.iterations,
        "goals_met": {k: sum(bool(g["passed"]) for g in v) for k, v in goals.items()},
        "goals_evaluated": sum(g["passed"] is not None for g in goals["plan"]),
        "goals": goals,
        "dose_error_vs_target_gy": openkbp_dose_error(target, plan.dose_gy, case.dose_region()),
        "timings_s": timings,
        "total_s": total_s,
    }


def plan_patient(request: PlanRequest, progress: Progress | None = None, fix: str = NEW_FOLDER_FIX) -> PlanOutcome:
    """Plan one patient into ``request.out``; ``progress(stage, message)`` hears each stage start and end.

    A non-empty ``request.out`` is refused (telling the user ``fix``) before any work is done.
    """
    start = time.perf_counter()
    refuse_non_empty(request.out, fix)
    clock = StageClock(progress)
    with clock.stage("load"):
        patient = load_planning_patient(request.patient_dir, request.protocol, request.names, request.prescription,
                                        request.fractions, request.sct)
        if progress:
            progress("load", f"prescription {patient.prescription.describe()}")
            for warning in patient.warnings:
                progress("load", f"warning: {warning}")
    case, protocol = patient.case, patient.protocol
    added, seg_label = [], ""
    if request.seg_model:
        with clock.stage("segmentation"):
            added, seg_label = contour_missing_oars(case, request.seg_model)
            if progress:
                progress("segmentation", f"contoured {', '.join(added) or 'nothing (all OARs present or none found)'}")
    with clock.stage("target dose"):
        target, label = target_dose_for(patient, request.dose_model, request.target_dose)
    origin = patient.grid.origin_mm if patient.dicom else None
    plan = make_plan(case, protocol, target, request.config, progress, clock, origin)
    with staged_folder(request.out, fix=fix) as staging:
        with clock.stage("export"):
            generated_by = f"fedrt seg model {seg_label}"
            if patient.dicom:
                files = write_patient_plan(staging, patient, plan, {n: case.structures[n] for n in added},
                                           generated_by, request.write_ct)
            else:
                files = write_plan_files(staging, case, protocol, plan, dict.fromkeys(added, generated_by))
        if request.report:
            with clock.stage("report"):
                write_report(staging / REPORT_FOLDER, case, protocol, plan, target, label, dict(clock.timings),
                             patient.warnings)
        summary = plan_summary(case, protocol, plan, target, label, clock.timings, time.perf_counter() - start)
        summary["prescription"] = {"doses_gy": patient.prescription.doses_gy,
                                   "fractions": patient.prescription.fractions,
                                   "source": patient.prescription.source}
        summary["warnings"] = patient.warnings
        summary["synthetic_ct"] = {"source": patient.synthetic.label, "mr": patient.synthetic.mr_series} \
            if patient.synthetic else None
        summary["auto_contours"] = {"structures": added, "model": seg_label} if added else None
        (staging / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    return PlanOutcome(request.out, files.moved(staging, request.out), summary)
