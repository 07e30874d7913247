"""``fedrt evaluate``: the OpenKBP dose and DVH scores of a folder of predictions against reference plans."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocols.evaluation import EvaluationResult


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="score dose predictions (OpenKBP dose and DVH scores)")
    parser.add_argument("--reference", required=True,
                        help="reference dataset: patient folders with dose.csv(.gz), e.g. validation-pats")
    parser.add_argument("--predictions", required=True, help="folder of predictions named pt_N.csv")
    parser.add_argument("--protocol", default="hn-openkbp",
                        help="protocol name or YAML path (default hn-openkbp)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="score only the patients that have a prediction instead of failing")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(run=run_evaluate)


def format_table(result: EvaluationResult) -> str:
    """One row per patient, then the two scores and any skipped patients."""
    lines = [f"{'patient':<12} {'dose error (Gy)':>16} {'DVH error (Gy)':>15} {'DVH metrics':>12}"]
    lines += [f"{p.patient:<12} {p.dose_error:>16.3f} {p.dvh_error:>15.3f} {p.n_metrics:>12d}"
              for p in result.patients]
    lines.append(f"{len(result.patients)} patients: dose score {result.dose_score:.3f} Gy, "
                 f"DVH score {result.dvh_score:.3f} Gy")
    if result.skipped:
        lines.append(f"skipped (no prediction): {', '.join(result.skipped)}")
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    from protocols.evaluation import evaluate_predictions
    from protocols.protocol import load_protocol

    protocol = load_protocol(args.protocol)
    result = evaluate_predictions(args.reference, args.predictions, protocol, skip_missing=args.skip_missing)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_table(result))
    return 0
