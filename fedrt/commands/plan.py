"""``fedrt plan INPUT (--dose-model MODEL | --target-dose FILE) --out DIR``: a deliverable IMRT plan mimicking a dose.

INPUT is an OpenKBP patient folder. The dose to mimic is predicted by ``--dose-model`` or read from
``--target-dose``: an OpenKBP prediction file (``fedrt predict`` output, or a patient's ``dose.csv(.gz)``) or an
RT Dose on the exported case grid.
:func:`target_dose_for` is the one place where a dose-prediction model plugs in. Prints progress per stage and a
timing breakdown; writes DICOM (CT, RTSTRUCT, RTPLAN, RTDOSE), ``plan_dose.csv``, ``plan.json`` and
``report/report.html`` into DIR, which appears complete or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from protocols.case import Case
from protocols.dicom.export import centred_grid
from protocols.dicom.rtdose import read_rtdose
from protocols.metrics import evaluate_goals, openkbp_dose_error
from protocols.openkbp import is_patient_dir, load_openkbp_case, read_prediction
from protocols.protocol import Protocol, load_protocol
from protocols.validation import CaseReport, Policy
from runtime.planning.density import DensityTable, parse_density_table
from runtime.planning.outputs import write_plan_files
from runtime.planning.plan import PlanConfig, StageClock, make_plan
from runtime.planning.report import write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plan", help="plan a patient: mimic a dose with a deliverable IMRT plan")
    parser.add_argument("input", help="an OpenKBP patient folder (ct.csv, structures, possible_dose_mask, ...)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dose-model", help="dose-prediction model (checkpoint or models:/NAME@ALIAS) whose "
                        "prediction is mimicked")
    source.add_argument("--target-dose",
                        help="dose to mimic: OpenKBP prediction CSV (or a patient's dose.csv.gz), or an RT Dose")
    parser.add_argument("--seg-model", help="segmentation model (checkpoint or models:/NAME@ALIAS) that contours "
                        "the OARs the patient has no contour for")
    parser.add_argument("--out", required=True, help="new or empty output folder")
    parser.add_argument("--protocol", default="hn-openkbp", help="protocol name or YAML path (default hn-openkbp)")
    parser.add_argument("--beams", type=int, default=9, help="equally spaced coplanar beams (default 9)")
    parser.add_argument("--levels", type=int, default=10, help="intensity levels per beam for sequencing")
    parser.add_argument("--iterations", type=int, default=150, help="L-BFGS-B iterations (default 150)")
    parser.add_argument("--density-table", type=parse_density_table, default=DensityTable(),
                        help="HU to relative electron density, 'HU:density,...' (default a typical CT table)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML review report")
    parser.set_defaults(run=run_plan)


def target_dose_for(args: argparse.Namespace, case: Case, protocol: Protocol) -> tuple[np.ndarray, str]:
    """The dose to mimic on the case grid and a label for it: the model's prediction, or a given dose file."""
    if args.dose_model:
        from models import loop
        from models.checkpoint import load_checkpoint
        from models.registry import resolve_model

        model = load_checkpoint(resolve_model(args.dose_model))
        if model.task.name != "dose":
            raise ValueError(f"--dose-model {args.dose_model} is a {model.task.name} model; give a dose model")
        return loop.predict(model.network, model.task, case), f"predicted by {args.dose_model}"
    path = Path(args.target_dose)
    if not path.is_file():
        raise FileNotFoundError(f"--target-dose {path} does not exist; give an OpenKBP prediction CSV or RT Dose")
    if path.suffix.lower() == ".dcm":
        report = CaseReport(case.patient_id, path)
        dose = read_rtdose(pydicom.dcmread(path), path, report)
        if dose is None:
            raise ValueError("; ".join(str(f) for f in report.findings))
        return dose.on_grid(centred_grid(case.shape, case.spacing_mm)), f"RT Dose {path.name}"
    return read_prediction(path, case.shape).astype(np.float32), f"dose file {path.name}"


def contour_missing_oars(case: Case, seg_model: str) -> list[str]:
    """Add the segmentation model's masks for the OARs the case has no contour for; returns their names."""
    from models import loop
    from models.checkpoint import load_checkpoint
    from models.registry import resolve_model

    model = load_checkpoint(resolve_model(seg_model))
    if model.task.name != "seg":
        raise ValueError(f"--seg-model {seg_model} is a {model.task.name} model; give a segmentation model")
    missing = [name for name in model.task.protocol.oars if name not in case.structures]
    if missing:
        masks = loop.predict(model.network, model.task, case)
        case.structures.update({name: masks[name] for name in missing if masks[name].any()})
    return [name for name in missing if name in case.structures]


def _progress(stage: str, message: str) -> None:
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def run_plan(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; give a new or empty --out folder")
    source = Path(args.input)
    if not is_patient_dir(source):
        raise FileNotFoundError(f"{source} is not an OpenKBP patient folder (no ct.csv or ct.csv.gz)")
    protocol = load_protocol(args.protocol)
    clock = StageClock(_progress)
    with clock.stage("load"):
        case, _ = load_openkbp_case(source, protocol, Policy.RAISE, require_dose=False)
    if args.seg_model:
        with clock.stage("segmentation"):
            added = contour_missing_oars(case, args.seg_model)
            _progress("segmentation", f"contoured {', '.join(added) or 'nothing (all OARs present)'}")
    with clock.stage("target dose"):
        target, label = target_dose_for(args, case, protocol)
    config = PlanConfig(n_beams=args.beams, levels=args.levels, max_iterations=args.iterations,
                        density=args.density_table)
    plan = make_plan(case, protocol, target, config, _progress, clock)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with clock.stage("export"):
            files = write_plan_files(staging, case, protocol, plan)
        if not args.no_report:
            with clock.stage("report"):
                write_report(staging / "report", case, protocol, plan, target, label, dict(clock.timings))
        summary = plan_summary(case, protocol, plan, target, label, clock.timings, time.perf_counter() - start)
        (staging / "plan.json").write_text(json.dumps(summary, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(format_summary(summary, out, files.rtplan.name))
    return 0


def plan_summary(case: Case, protocol: Protocol, plan, target: np.ndarray, label: str,
                 timings: dict[str, float], total_s: float) -> dict:
    """What the plan achieved, against the target dose, and where the time went (also saved as plan.json)."""
    goals = {}
    for name, dose in (("plan", plan.dose_gy), ("target", target)):
        goals[name] = [{"goal": r.goal.label, "value_gy": r.value_gy, "passed": r.passed}
                       for r in evaluate_goals(dose, case.structures, case.voxel_volume_mm3, protocol)]
    mask = case.possible_dose_mask if case.possible_dose_mask is not None else np.ones(case.shape, bool)
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
        "dose_error_vs_target_gy": openkbp_dose_error(target, plan.dose_gy, mask),
        "timings_s": timings,
        "total_s": total_s,
    }


def format_summary(summary: dict, out: Path, rtplan: str) -> str:
    """The closing lines: goals met, dose error against the target, and the timing breakdown."""
    lines = [f"plan for {summary['patient']}: {len(summary['beams'])} beams, {summary['segments']} segments, "
             f"{summary['mu_per_fraction']:.0f} MU/fraction",
             f"clinical goals met: plan {summary['goals_met']['plan']}, target dose {summary['goals_met']['target']} "
             f"(of {summary['goals_evaluated']}); dose error vs target {summary['dose_error_vs_target_gy']:.2f} Gy",
             "timing (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["timings_s"].items())
             + f"; total {summary['total_s']:.1f}",
             f"wrote {out}/ (dicom/{rtplan}, plan_dose.csv, report/report.html, plan.json)"]
    return "\n".join(lines)
