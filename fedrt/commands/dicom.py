"""``fedrt data import-dicom SRC DST`` and ``fedrt export-dicom PATIENT OUT``: DICOM RT in and out."""

from __future__ import annotations

import argparse
from pathlib import Path

from protocols.dicom import FORMATS
from protocols.errors import OutputError
from protocols.validation import Policy


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export-dicom`` (top level); ``import-dicom`` goes under ``data`` via :func:`add_import_dicom`."""
    parser = subparsers.add_parser("export-dicom", help="write an OpenKBP patient as CT series + RTSTRUCT + RTDOSE")
    parser.add_argument("patient", help="an OpenKBP patient folder (ct.csv(.gz), structures, dose)")
    parser.add_argument("out", help="a new or empty folder for the DICOM files")
    parser.add_argument("--protocol", default="hn-openkbp", help="protocol name or YAML path (default hn-openkbp)")
    parser.set_defaults(run=run_export)


def add_import_dicom(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``import-dicom`` to the ``fedrt data`` actions."""
    parser = data_subparsers.add_parser("import-dicom", help="convert a folder of DICOM RT exports into a "
                                        "protocol dataset (one folder per patient)")
    parser.add_argument("src", help="folder with the DICOM files of any number of patients (nested, any names)")
    parser.add_argument("dst", help="dataset folder to write the patients into")
    parser.add_argument("--protocol", required=True, help="protocol name or YAML path, e.g. hn-openkbp")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="fedrt",
                        help="fedrt: OpenKBP layout, gzip, plus an import record (default); "
                             "openkbp: exactly the challenge's files")
    parser.add_argument("--names", type=Path, help="site structure-name override YAML (canonical: [local names])")
    parser.add_argument("--policy", choices=[p.value for p in Policy], default=Policy.WARN.value,
                        help="raise: a patient with warnings is not imported (default warn)")
    parser.add_argument("--json", action="store_true", help="print the per-patient report as JSON")
    parser.set_defaults(run=run_import)


def run_import(args: argparse.Namespace) -> int:
    from protocols.dicom.importer import import_dicom
    from protocols.protocol import load_protocol
    from protocols.validation import print_reports

    if Path(args.dst).exists() and not Path(args.dst).is_dir():
        raise OutputError(f"{args.dst} exists and is not a folder; give the dataset folder to import the patients into")
    reports = import_dicom(args.src, args.dst, load_protocol(args.protocol), args.fmt, args.names, args.policy)
    return print_reports(reports, args.json)


def run_export(args: argparse.Namespace) -> int:
    from protocols.dicom.export import export_case
    from protocols.dicom.importer import read_sidecar_grid
    from protocols.files import refuse_non_empty
    from protocols.openkbp import load_openkbp_case
    from protocols.protocol import load_protocol

    fix = "choose another OUT folder or delete it"
    refuse_non_empty(args.out, fix)
    protocol = load_protocol(args.protocol)
    case, _ = load_openkbp_case(args.patient, protocol, Policy.RAISE, require_dose=False)
    exported = export_case(case, args.out, read_sidecar_grid(Path(args.patient)), protocol, fix=fix)
    print(f"wrote {len(exported.ct_files)} CT slices, {exported.rtstruct.name}"
          f"{', ' + exported.rtdose.name if exported.rtdose else ''} to {exported.folder}")
    return 0
