"""Plan the TG-119 C-shape with ``fedrt plan`` and check the report's goals (PTV D95 >= 50 Gy, PTV D10 <= 55 Gy,
core D10 <= 25 Gy).

TG-119's CT and contours come from pyRadPlan's TG119.mat, exported once by ``pyradplan_reference.py geometry``
in the separate benchmark environment. They are written as an OpenKBP patient folder (protocol
``benchmarks/tg119/tg119.yaml``); the dose to mimic is the ideal dose of :mod:`runtime.planning.idealdose`.

Usage: ``python benchmarks/bench_tg119_plan.py [--python /tmp/prp/bin/python] [--work /tmp/fedrt-bench]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedrt.commands import plan as plan_command  # noqa: E402
from protocols.case import Case  # noqa: E402
from protocols.openkbp import CT_OFFSET, CT_STORED_MAX, write_prediction  # noqa: E402
from protocols.protocol import load_protocol  # noqa: E402
from runtime.planning.idealdose import ideal_dose  # noqa: E402

PROTOCOL = REPO / "benchmarks" / "tg119" / "tg119.yaml"
NAMES = {"OuterTarget": "PTV", "Core": "Core"}


def _sparse_csv(path: Path, flat: np.ndarray, values: np.ndarray | None) -> None:
    frame = pd.DataFrame({"data": values if values is not None else [""] * len(flat)}, index=pd.Index(flat))
    frame.to_csv(path)


def write_openkbp_patient(geometry: Path, folder: Path) -> Case:
    """TG-119 as an OpenKBP patient folder (CT stored as HU + 1000, masks as flat-index lists)."""
    with np.load(geometry) as data:
        ct_hu = data["ct_hu"]
        masks = {NAMES[n]: data[f"mask_{n}"] for n in NAMES}
        body = data["mask_BODY"]
        spacing = tuple(float(v) for v in data["spacing_mm"])
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.clip(np.round(ct_hu + CT_OFFSET), 0, CT_STORED_MAX).ravel()
    flat = np.flatnonzero(stored)
    _sparse_csv(folder / "ct.csv", flat, stored[flat])
    for name, mask in {**masks, "possible_dose_mask": body}.items():
        _sparse_csv(folder / f"{name}.csv", np.flatnonzero(mask), None)
    np.savetxt(folder / "voxel_dimensions.csv", np.asarray(spacing))
    return Case("tg119", ct_hu.astype(np.float32), spacing, masks, possible_dose_mask=body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="/tmp/prp/bin/python", help="the pyRadPlan environment's python")
    parser.add_argument("--work", default="/tmp/fedrt-bench", help="scratch folder")
    parser.add_argument("--beams", type=int, default=9)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    geometry = work / "tg119_geometry.npz"
    if not geometry.is_file():
        subprocess.run([args.python, str(REPO / "benchmarks" / "pyradplan_reference.py"), "geometry",
                        str(geometry)], check=True)
    patient = work / "tg119_openkbp" / "tg119"
    shutil.rmtree(patient, ignore_errors=True)
    case = write_openkbp_patient(geometry, patient)
    protocol = load_protocol(PROTOCOL)
    target = work / "tg119_ideal_dose.csv"
    write_prediction(target, ideal_dose(case, protocol))
    out = work / "tg119_plan"
    shutil.rmtree(out, ignore_errors=True)
    parser = argparse.ArgumentParser()
    plan_command.register(parser.add_subparsers(dest="command"))
    plan_args = parser.parse_args(["plan", str(patient), "--target-dose", str(target), "--out", str(out),
                                   "--protocol", str(PROTOCOL), "--beams", str(args.beams)])
    plan_command.run_plan(plan_args)
    summary = json.loads((out / "plan.json").read_text())
    goals = {g["goal"]: g for g in summary["goals"]["plan"]}
    print(json.dumps({"goals": goals, "segments": summary["segments"], "mu_per_fraction": summary["mu_per_fraction"],
                      "timings_s": summary["timings_s"], "total_s": summary["total_s"]}, indent=1))
    return 0 if all(g["passed"] for g in goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
