"""Benchmark ``import_dicom``: patients per minute on shared OpenKBP patients exported as DICOM.

Run from the repository root: ``python benchmarks/bench_dicom_import.py [--patients 5] [--format fedrt]``.
Each patient is exported (CT series, RTSTRUCT, RTDOSE; not timed), then the whole folder is imported once
(timed: scan, read, rasterise, resample to the protocol grid, write the OpenKBP layout).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from protocols.dataset import find_patient_dirs  # noqa: E402
from protocols.dicom import FORMATS  # noqa: E402
from protocols.dicom.export import export_case  # noqa: E402
from protocols.dicom.importer import import_dicom  # noqa: E402
from protocols.openkbp import read_openkbp_case  # noqa: E402
from protocols.protocol import load_protocol  # noqa: E402

OPENKBP = REPO.parent / "shared" / "data" / "openkbp" / "validation-pats"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=5, help="how many shared patients (default 5)")
    parser.add_argument("--root", type=Path, default=OPENKBP, help="OpenKBP patients to export")
    parser.add_argument("--format", choices=FORMATS, default="fedrt")
    args = parser.parse_args()
    protocol = load_protocol("hn-openkbp")
    patients = find_patient_dirs(args.root)[: args.patients]
    with tempfile.TemporaryDirectory(prefix="bench-dicom-") as tmp:
        src, dst = Path(tmp) / "dicom", Path(tmp) / "dataset"
        slices = 0
        for patient in patients:
            case, _ = read_openkbp_case(patient, protocol)
            exported = export_case(case, src / patient.name, protocol=protocol)
            slices += len(exported.ct_files)
        start = time.perf_counter()
        reports = import_dicom(src, dst, protocol, fmt=args.format)
        seconds = time.perf_counter() - start
    usable = sum(r.usable for r in reports)
    print(f"imported {usable}/{len(patients)} patients ({slices} CT slices, format {args.format}) in "
          f"{seconds:.1f} s: {len(patients) / seconds * 60:.1f} patients per minute, "
          f"{seconds / len(patients):.2f} s per patient")
    return 0 if usable == len(patients) else 1


if __name__ == "__main__":
    sys.exit(main())
