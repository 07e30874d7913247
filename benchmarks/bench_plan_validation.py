"""``fedrt plan`` on the shared validation patients, mimicking each patient's clinical dose (or, with
``--dose-model``, the model's predicted dose).

Reports per patient the timing breakdown, the OpenKBP-Opt clinical criteria met by the plan and by the clinical
dose, and the plan's OpenKBP dose and DVH errors against the clinical dose; then the totals.
Usage: ``python benchmarks/bench_plan_validation.py [--patients DIR] [--dose-model MODEL] [--out results.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedrt.commands import plan as plan_command  # noqa: E402
from protocols.dataset import find_patient_dirs  # noqa: E402
from protocols.metrics import evaluate_goals, openkbp_dose_error, openkbp_dvh_errors  # noqa: E402
from protocols.openkbp import load_openkbp_case, read_prediction, source_file  # noqa: E402
from protocols.protocol import load_protocol  # noqa: E402

DEFAULT_PATIENTS = REPO.parent / "shared" / "data" / "openkbp" / "validation-pats"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default=str(DEFAULT_PATIENTS))
    parser.add_argument("--dose-model", default=None, help="mimic this model's prediction instead of the clinical dose")
    parser.add_argument("--out", default=None, help="write per-patient results as JSON here")
    args = parser.parse_args()
    protocol = load_protocol("hn-openkbp")
    cli = argparse.ArgumentParser()
    plan_command.register(cli.add_subparsers(dest="command"))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for patient in find_patient_dirs(Path(args.patients)):
            out = Path(scratch) / patient.name
            source = (["--dose-model", args.dose_model] if args.dose_model
                      else ["--target-dose", str(source_file(patient, "dose"))])
            plan_command.run_plan(cli.parse_args(["plan", str(patient), *source, "--out", str(out)]))
            summary = json.loads((out / "plan.json").read_text())
            case, _ = load_openkbp_case(patient, protocol)
            planned = read_prediction(out / "plan_dose.csv", case.shape)
            dvh = openkbp_dvh_errors(case.dose_gy, planned, case.structures, case.voxel_volume_mm3, protocol)
            summary["dvh_error_vs_target_gy"] = float(np.mean([e.abs_error_gy for e in dvh]))
            summary["dose_error_vs_target_gy"] = openkbp_dose_error(case.dose_gy, planned, case.possible_dose_mask)
            clinical = evaluate_goals(case.dose_gy, case.structures, case.voxel_volume_mm3, protocol)
            summary["goals_met"]["target"] = sum(bool(g.passed) for g in clinical)
            rows.append(summary)
    print(f"{'patient':<8} {'met plan':>8} {'clinical':>8} {'dose err':>8} {'DVH err':>8} {'MU/fx':>6} "
          f"{'segs':>5} {'total s':>7}  breakdown (s)")
    for r in rows:
        t = r["timings_s"]
        print(f"{r['patient']:<8} {r['goals_met']['plan']:>4}/{r['goals_evaluated']:<3} "
              f"{r['goals_met']['target']:>4}/{r['goals_evaluated']:<3} {r['dose_error_vs_target_gy']:>8.2f} "
              f"{r['dvh_error_vs_target_gy']:>8.2f} {r['mu_per_fraction']:>6.0f} {r['segments']:>5} "
              f"{r['total_s']:>7.1f}  " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    met = [sum(r["goals_met"][k] for r in rows) for k in ("plan", "target")]
    evaluated = sum(r["goals_evaluated"] for r in rows)
    no_worse = sum(r["goals_met"]["plan"] >= r["goals_met"]["target"] for r in rows)
    dose_score = np.mean([r["dose_error_vs_target_gy"] for r in rows])
    dvh_score = np.mean([r["dvh_error_vs_target_gy"] for r in rows])
    print(f"{len(rows)} patients: criteria met plan {met[0]}/{evaluated}, clinical {met[1]}/{evaluated}; "
          f"plan >= clinical on {no_worse}/{len(rows)}; dose score {dose_score:.2f} Gy, DVH score {dvh_score:.2f} Gy; "
          f"time mean {np.mean([r['total_s'] for r in rows]):.1f} s, max {max(r['total_s'] for r in rows):.1f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
