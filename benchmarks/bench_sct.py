"""Benchmark (issue 16): ``fedrt sct`` wall time for a 128^3 MR, and ``fedrt plan MR_FOLDER --sct-model`` from the MR
folder to the written plan, DICOM read and write included.

The MR is a simulated T1 MR (``protocols.simulated_mr``, one hospital's scanner) of a shared validation patient,
written as a DICOM MR series on the patient's 128^3 grid (3.906 x 3.906 x 2.5 mm); for the plan, the patient's
structures as an RT Structure Set on the MR's frame and the clinical dose as the RT Dose to mimic. The model is
``--model`` or, without one, the benchmark network of ``preset=cpu60`` with fresh weights (the time does not depend
on the weights' values). Usage:

    python benchmarks/bench_sct.py --out bench-sct [--model sct.pt] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATIENT = REPO.parent / "shared" / "data" / "openkbp" / "validation-pats" / "pt_201"
sys.path.insert(0, str(REPO / "tests"))

from bench_segment import time_command  # noqa: E402
from dicom_cases import write_mr_series  # noqa: E402


def export_mr(folder: Path, dose_file: Path) -> Path:
    """The shared patient's simulated MR (scanner of site 1) as a DICOM MR series on a centred grid, its structures
    as an RT Structure Set on the MR, and its clinical dose as an RT Dose in that frame at ``dose_file``.
    """
    import pydicom
    from pydicom.uid import generate_uid

    from protocols.dicom.export import CtReference, centred_grid, write_rtdose, write_rtstruct
    from protocols.dicom.header import StudyContext
    from protocols.openkbp import load_openkbp_case
    from protocols.protocol import load_protocol
    from protocols.simulated_mr import Scanner, simulate_mr

    case, _ = load_openkbp_case(PATIENT, load_protocol("hn-openkbp"))
    mr = simulate_mr(case.ct_hu, case.spacing_mm, Scanner.for_site(1), case.possible_dose_mask)
    grid, context = centred_grid(case.shape, case.spacing_mm), StudyContext("bench-sct")
    paths = write_mr_series(folder, mr, grid, context)
    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    reference = CtReference(str(slices[0].SeriesInstanceUID), tuple(str(ds.SOPInstanceUID) for ds in slices))
    types = {name: "PTV" if name.startswith("PTV") else "ORGAN" for name in case.structures}
    write_rtstruct(case.structures, grid, reference, folder / "RTSTRUCT.dcm", context, types)
    write_rtdose(case.dose_gy, grid, dose_file, context, generate_uid())  # a plan of its own, not in the folder
    return folder


def time_plan(model: Path, mr_folder: Path, dose_file: Path, out: Path) -> dict:
    """Wall time of one ``fedrt plan MR_FOLDER --sct-model`` process and its stages."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fedrt.cli", "plan", str(mr_folder), "--sct-model", str(model),
                           "--target-dose", str(dose_file), "--out", str(out)], check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    return {"wall_s": time.perf_counter() - start, "output_tail": proc.stdout.splitlines()[-12:]}


def benchmark_model(path: Path) -> Path:
    """A checkpoint of the cpu60 benchmark network for the sct task, fresh weights."""
    from configs.compose import compose
    from models.centralized import task_from_config
    from models.checkpoint import save_checkpoint

    task = task_from_config(compose(["preset=cpu60", "task=sct"]))
    return save_checkpoint(path, task, task.build_network())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, help="sct checkpoint (default: the cpu60 network, fresh weights)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = args.model or benchmark_model(args.out / "sct-cpu60-fresh.pt")
    dose = args.out / "RD.dcm"
    mr = export_mr(args.out / "mr-128", dose)
    result = {"machine": f"{platform.node()} {platform.machine()}", "date": time.strftime("%Y-%m-%d"),
              "model": str(model),
              "mr_128": time_command(["sct", str(mr), "--model", str(model)], args.out / "sct-128", args.repeats),
              "plan": time_plan(model, mr, dose, args.out / "plan")}
    (args.out / "sct.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
