"""Benchmark: ``fedrt segment`` wall time, DICOM read and write included, for a 128^3 case and a 512x512x150 CT.

The 128^3 case is a shared validation patient exported as a DICOM CT series; the large CT is the same patient
resampled to 0.977 x 0.977 x 3 mm (512 x 512 x 150), the size of a typical clinical planning CT. Usage:

    python benchmarks/bench_segment.py --model seg.pt --out bench-out [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATIENT = REPO.parent / "shared" / "data" / "openkbp" / "validation-pats" / "pt_201"


def export_ct(folder: Path, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> Path:
    """Write the shared patient's CT as a DICOM series on a centred grid of the given shape and spacing."""
    from protocols.dicom.export import StudyContext, centred_grid, write_ct_series
    from protocols.dicom.geometry import resample
    from protocols.openkbp import load_openkbp_case
    from protocols.protocol import load_protocol

    case, _ = load_openkbp_case(PATIENT, load_protocol("hn-openkbp"), require_dose=False)
    source = centred_grid(case.shape, case.spacing_mm)
    target = centred_grid(shape, spacing_mm)
    ct = resample(case.ct_hu, source, target, order=1, cval=-1000.0)
    folder.mkdir(parents=True, exist_ok=True)
    write_ct_series(ct, target, folder, StudyContext(f"bench-{shape[0]}"))
    return folder


def time_command(command: list[str], out: Path, repeats: int) -> dict:
    """Wall time of whole ``fedrt COMMAND ... --out OUT/runN`` processes (start-up included) and the command's own
    breakdown (its ``timing:`` line).
    """
    walls, lines = [], []
    for i in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "fedrt.cli", *command, "--out", str(out / f"run{i}")],
                              check=True, stdout=subprocess.PIPE, text=True)
        walls.append(time.perf_counter() - start)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("timing:")]
    return {"wall_s_median": statistics.median(walls), "wall_s_all": walls, "breakdown": lines[-1] if lines else ""}


def time_segment(model: Path, ct_folder: Path, out: Path, repeats: int) -> dict:
    """``fedrt segment`` of ``ct_folder``, timed."""
    return time_command(["segment", str(ct_folder), "--model", str(model)], out, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="segmentation checkpoint")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    small = export_ct(args.out / "ct-128", (128, 128, 128), (3.906, 3.906, 2.5))
    large = export_ct(args.out / "ct-512", (512, 512, 150), (0.977, 0.977, 3.0))
    result = {"machine": f"{platform.node()} {platform.machine()}", "date": time.strftime("%Y-%m-%d"),
              "ct_128": time_segment(args.model, small, args.out / "seg-128", args.repeats),
              "ct_512x512x150": time_segment(args.model, large, args.out / "seg-512", args.repeats)}
    (args.out / "segment.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
