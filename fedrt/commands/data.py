"""``fedrt data check PATH``: the validation report of every patient in a dataset."""

from __future__ import annotations

import argparse

from fedrt.commands.dicom import add_import_dicom
from fedrt.commands.simulate_mr import add_simulate_mr


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect and prepare protocol datasets")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate every patient under PATH and print a per-case report")
    check.add_argument("path", help="a dataset folder (patients as subfolders) or one patient folder")
    check.add_argument("--protocol", default="hn-openkbp", help="protocol name or YAML path (default hn-openkbp)")
    check.add_argument("--no-dose", action="store_true", help="do not require dose (inputs for prediction)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=run_check)
    add_import_dicom(sub)
    add_simulate_mr(sub)


def run_check(args: argparse.Namespace) -> int:
    from protocols.dataset import ProtocolDataset
    from protocols.protocol import load_protocol
    from protocols.validation import Policy, print_reports

    protocol = load_protocol(args.protocol)
    dataset = ProtocolDataset(args.path, protocol, Policy.IGNORE, require_dose=not args.no_dose)
    reports = dataset.reports()
    return print_reports(reports, args.json)
