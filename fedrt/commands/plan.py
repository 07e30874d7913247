"""``fedrt plan INPUT (--dose-model MODEL | --target-dose FILE) --out DIR``: a deliverable IMRT plan mimicking a dose.

INPUT is the patient's own DICOM (a CT series and an RT Structure Set with the targets, optionally the RT Plan
holding the prescription), an MR-only patient's DICOM (an MR series and the structure set contoured on it, planned
on a synthetic CT from ``--sct-model`` or bulk densities ``--sct``) or an OpenKBP patient folder. The dose to mimic
is predicted by ``--dose-model`` or read from ``--target-dose``: an RT Dose (placed by its own geometry; another
patient's or frame's is refused) or an OpenKBP prediction file (``fedrt predict`` output, or a patient's
``dose.csv(.gz)``). The work is :func:`runtime.planning.pipeline.plan_patient`; this command parses the arguments,
prints progress per stage and closes with the goals met and a timing breakdown. DIR receives ``dicom/`` (for DICOM
input RTPLAN and RTDOSE in the patient's study and Frame of Reference, an RTSTRUCT only when contours were added, the
synthetic CT of an MR-only patient; for OpenKBP input a new study with its CT), ``plan_dose.csv``, ``plan.json`` and
``report/report.html``, and appears complete or not at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.planning import BULK_DENSITIES

OUT_FIX = "choose another --out or delete it"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plan", help="plan a patient: mimic a dose with a deliverable IMRT plan")
    parser.add_argument("input", type=Path, help="a DICOM folder of one patient (CT series + RTSTRUCT with the "
                        "targets, optionally the RTPLAN; or, with --sct-model/--sct, an MR series + RTSTRUCT "
                        "contoured on it) or an OpenKBP patient folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dose-model", help="dose-prediction model (checkpoint or models:/NAME@ALIAS) whose "
                        "prediction is mimicked")
    source.add_argument("--target-dose", type=Path,
                        help="dose to mimic: OpenKBP prediction CSV (or a patient's dose.csv.gz), or an RT Dose")
    parser.add_argument("--seg-model", help="segmentation model (checkpoint or models:/NAME@ALIAS) that contours "
                        "the OARs the patient has no contour for")
    parser.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    parser.add_argument("--protocol", default="hn-openkbp", help="protocol name or YAML path (default hn-openkbp)")
    parser.add_argument("--beams", type=int, default=9, help="equally spaced coplanar beams (default 9)")
    parser.add_argument("--levels", type=int, default=10, help="intensity levels per beam for sequencing")
    parser.add_argument("--iterations", type=int, default=150, help="L-BFGS-B iterations (default 150)")
    parser.add_argument("--density-table", help="HU to relative electron density, 'HU:density,...' "
                        "(default a typical CT table)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML review report")
    parser.add_argument("--prescription", help="target doses in Gy for the whole course, e.g. PTV70=70,PTV56=56 "
                        "(used when the input holds no RTPLAN)")
    parser.add_argument("--fractions", type=int, help="number of fractions (when the input's RTPLAN states none)")
    parser.add_argument("--names", type=Path, help="structure-name override YAML (canonical: [local names])")
    parser.add_argument("--write-ct", action="store_true", help="also write the CT the plan was computed on "
                        "(DICOM input) as a derived series")
    synthetic = parser.add_mutually_exclusive_group()
    synthetic.add_argument("--sct-model", help="MR-only input (MR series + RTSTRUCT contoured on it, no CT): the sct "
                           "model (checkpoint or models:/NAME@ALIAS) whose synthetic CT the plan is computed on")
    synthetic.add_argument("--sct", choices=BULK_DENSITIES, help="MR-only input: plan on bulk densities instead, the "
                           "reference a model has to beat: bulk = the body (the MR's outline) water, air outside; "
                           "bulk-bone = also the bone ROIs (Mandible, names saying bone, skull, vertebra) bone")
    parser.set_defaults(run=run_plan)


def _progress(stage: str, message: str) -> None:
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def run_plan(args: argparse.Namespace) -> int:
    from protocols.protocol import load_protocol
    from runtime.planning.density import DensityTable, parse_density_table
    from runtime.planning.pipeline import PlanRequest, plan_patient
    from runtime.planning.plan import PlanConfig
    from runtime.planning.prescription import parse_prescription
    from runtime.planning.synthetic_ct import SctSource

    density = parse_density_table(args.density_table) if args.density_table else DensityTable()
    config = PlanConfig(n_beams=args.beams, levels=args.levels, max_iterations=args.iterations, density=density)
    request = PlanRequest(args.input, args.out, load_protocol(args.protocol), config, dose_model=args.dose_model,
                          target_dose=args.target_dose, seg_model=args.seg_model, report=not args.no_report,
                          names=args.names, fractions=args.fractions, write_ct=args.write_ct,
                          prescription=parse_prescription(args.prescription) if args.prescription else None,
                          sct=SctSource(args.sct_model, args.sct) if args.sct_model or args.sct else None)
    outcome = plan_patient(request, _progress, OUT_FIX)
    print(format_summary(outcome.summary, outcome.out, outcome.files.rtplan.name))
    return 0


def format_summary(summary: dict, out: Path, rtplan: str) -> str:
    """The closing lines: goals met, dose error against the target, and the timing breakdown."""
    lines = [f"plan for {summary['patient']}: {len(summary['beams'])} beams, {summary['segments']} segments, "
             f"{summary['mu_per_fraction']:.0f} MU/fraction",
             f"clinical goals met: plan {summary['goals_met']['plan']}, target dose {summary['goals_met']['target']} "
             f"(of {summary['goals_evaluated']}); dose error vs target {summary['dose_error_vs_target_gy']:.2f} Gy",
             "timing (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["timings_s"].items())
             + f"; total {summary['total_s']:.1f}",
             f"prescription {summary['prescription']['doses_gy']} Gy in {summary['prescription']['fractions']} "
             f"fractions ({summary['prescription']['source']})",
             *(f"warning: {w}" for w in summary.get("warnings", [])),
             f"wrote {out}/ (dicom/{rtplan}, plan_dose.csv, report/report.html, plan.json)"]
    return "\n".join(lines)
