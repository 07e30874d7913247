"""Plan one OpenKBP patient end to end: load the case, contour the OARs it lacks, resolve the dose to mimic, plan,
and write the plan folder (DICOM, ``plan_dose.csv``, ``report/report.html``, ``plan.json``), which appears complete
or not at all. :func:`target_dose_for` is the one place where a dose-prediction model plugs in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from protocols.case import Case
from protocols.dicom.export import centred_grid
from protocols.dicom.rtdose import read_rtdose
from protocols.errors import ConfigError, DataNotFoundError, DicomError
from protocols.files import NEW_FOLDER_FIX, refuse_non_empty, staged_folder
from protocols.metrics import evaluate_goals, openkbp_dose_error
from protocols.openkbp import is_patient_dir, load_openkbp_case, read_prediction
from protocols.protocol import Protocol
from protocols.validation import CaseReport, Policy
from runtime.planning.outputs import PlanFiles, write_plan_files
from runtime.planning.plan import PlanConfig, PlanResult, Progress, StageClock, make_plan
from runtime.planning.report import write_report

SUMMARY_JSON = "plan.json"
REPORT_FOLDER = "report"


@dataclass(frozen=True)
class PlanRequest:
    """One patient to plan and where to put the plan.

    Args:
        patient_dir: an OpenKBP patient folder (ct.csv, structures, possible_dose_mask, ...).
        out: a new or empty folder for the plan.
        protocol: the protocol the patient is planned for.
        config: beams, intensity levels, optimisation effort and density table.
        dose_model: a dose-prediction model (checkpoint or ``models:/NAME@ALIAS``) whose prediction is mimicked.
        target_dose: instead of ``dose_model``, the dose to mimic: an OpenKBP prediction CSV or an RT Dose.
        seg_model: a segmentation model that contours the OARs the patient has no contour for.
        report: whether to write the HTML review report.
    """

    patient_dir: Path
    out: Path
    protocol: Protocol
    config: PlanConfig
    dose_model: str | None = None
    target_dose: Path | None = None
    seg_model: str | None = None
    report: bool = True


@dataclass
class PlanOutcome:
    """What :func:`plan_patient` wrote: the plan folder, its files and the summary saved as ``plan.json``."""

    out: Path
    files: PlanFiles
    summary: dict[str, Any]


def target_dose_for(case: Case, protocol: Protocol, dose_model: str | None = None,
                    target_dose: Path | None = None) -> tuple[np.ndarray, str]:
    """The dose to mimic on the case grid and a label for it: the model's prediction, or a given dose file."""
    if (dose_model is None) == (target_dose is None):
        raise ConfigError("give exactly one of a dose model (--dose-model) and a target dose file (--target-dose)")
    if dose_model:
        from models import loop
        from models.checkpoint import load_checkpoint
        from models.registry import resolve_model
        from models.tasks import expect_task

        model = load_checkpoint(resolve_model(dose_model))
        expect_task(model.task, "dose", f"--dose-model {dose_model}")
        return loop.predict(model.network, model.task, case), f"predicted by {dose_model}"
    path = Path(target_dose)
    if not path.is_file():
        raise DataNotFoundError(f"--target-dose {path} does not exist; give an OpenKBP prediction CSV or RT Dose")
    if path.suffix.lower() == ".dcm":
        report = CaseReport(case.patient_id, path)
        dose = read_rtdose(pydicom.dcmread(path), path, report)
        if dose is None:
            raise DicomError("; ".join(str(f) for f in report.findings))
        return dose.on_grid(centred_grid(case.shape, case.spacing_mm)), f"RT Dose {path.name}"
    return read_prediction(path, case.shape).astype(np.float32), f"dose file {path.name}"


def contour_missing_oars(case: Case, seg_model: str) -> list[str]:
    """Add the segmentation model's masks for the OARs the case has no contour for; returns their names."""
    from models import loop
    from models.checkpoint import load_checkpoint
    from models.registry import resolve_model
    from models.tasks import expect_task

    model = load_checkpoint(resolve_model(seg_model))
    expect_task(model.task, "seg", f"--seg-model {seg_model}")
    missing = [name for name in model.task.protocol.oars if name not in case.structures]
    if missing:
        masks = loop.predict(model.network, model.task, case)
        case.structures.update({name: masks[name] for name in missing if masks[name].any()})
    return [name for name in missing if name in case.structures]


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
    if not is_patient_dir(request.patient_dir):
        raise DataNotFoundError(f"{request.patient_dir} is not an OpenKBP patient folder (no ct.csv or ct.csv.gz); "
                                "give a patient folder, or import DICOM first with `fedrt data import-dicom`")
    protocol = request.protocol
    clock = StageClock(progress)
    with clock.stage("load"):
        case, _ = load_openkbp_case(request.patient_dir, protocol, Policy.RAISE, require_dose=False)
    if request.seg_model:
        with clock.stage("segmentation"):
            added = contour_missing_oars(case, request.seg_model)
            if progress:
                progress("segmentation", f"contoured {', '.join(added) or 'nothing (all OARs present)'}")
    with clock.stage("target dose"):
        target, label = target_dose_for(case, protocol, request.dose_model, request.target_dose)
    plan = make_plan(case, protocol, target, request.config, progress, clock)
    with staged_folder(request.out, fix=fix) as staging:
        with clock.stage("export"):
            files = write_plan_files(staging, case, protocol, plan)
        if request.report:
            with clock.stage("report"):
                write_report(staging / REPORT_FOLDER, case, protocol, plan, target, label, dict(clock.timings))
        summary = plan_summary(case, protocol, plan, target, label, clock.timings, time.perf_counter() - start)
        (staging / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    return PlanOutcome(request.out, files.moved(staging, request.out), summary)
