"""Validate fedrt's photon engine against pyRadPlan's SVD pencil beam: same phantom, beams and fluence.

pyRadPlan (0.5.0, BSD-3, a matRad reimplementation) runs in a SEPARATE environment (default ``/tmp/prp``; see
docs/BENCHMARKS.md for its installation), never as a fedrt dependency: ``pyradplan_reference.py`` computes its dose
and saves phantom, density, beams, beamlet positions and weights; this script feeds the same density, isocentre,
beamlets and weights to fedrt's engine and compares central-axis depth dose, lateral profiles and the 3 %/3 mm
global gamma pass rate over voxels above 10 % of the maximum (acceptance: >= 95 %). Absolute dose is compared too
(both engines in the tabulated kernel units, ``mu_scale=1``).

Usage: ``python benchmarks/bench_engine_vs_pyradplan.py [--phantom water tg119] [--python /tmp/prp/bin/python]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtime.planning.engine import PIXEL_MM, DoseEngine  # noqa: E402
from runtime.planning.geometry import BEAMLET_WIDTH_MM, Beam, BeamletGrid, PatientFrame  # noqa: E402

BEAMS = {"water": [0.0], "tg119": [0.0, 40.0, 80.0, 120.0, 160.0, 200.0, 240.0, 280.0, 320.0]}


def gamma_pass_rate(reference: np.ndarray, evaluated: np.ndarray, spacing_mm, dose_pct: float = 3.0,
                    dta_mm: float = 3.0, cutoff_pct: float = 10.0, step_mm: float = 0.5) -> tuple[float, np.ndarray]:
    """Global gamma: share of reference voxels above the cutoff with gamma <= 1 (evaluated dose interpolated)."""
    dd = dose_pct / 100.0 * reference.max()
    where = np.argwhere(reference >= cutoff_pct / 100.0 * reference.max())
    ref = reference[tuple(where.T)]
    best = (evaluated[tuple(where.T)] - ref) ** 2 / dd**2  # offset 0
    n = int(np.ceil(dta_mm / step_mm))
    grid = np.arange(-n, n + 1) * step_mm
    for dx in grid:
        for dy in grid:
            for dz in grid:
                r2 = dx * dx + dy * dy + dz * dz
                if r2 == 0 or r2 > dta_mm**2:
                    continue
                shift = np.array([dx, dy, dz]) / np.asarray(spacing_mm)
                value = ndimage.map_coordinates(evaluated, (where + shift).T, order=1, mode="nearest")
                np.minimum(best, r2 / dta_mm**2 + (value - ref) ** 2 / dd**2, out=best)
    gamma = np.sqrt(best)
    return float(np.mean(gamma <= 1.0)), gamma


def fedrt_dose(ref: dict) -> tuple[np.ndarray, float]:
    """Fedrt's dose for pyRadPlan's phantom density, isocentre, beamlets (5 mm squares) and weights."""
    shape = ref["density"].shape
    frame = PatientFrame(shape, tuple(ref["spacing_mm"]), tuple(ref["origin_lps"]))
    iso = tuple(float(v) for v in ref["isocenter_lps"])
    beams, grids, weights = [], [], []
    start = 0
    for gantry, count in zip(ref["gantry_deg"], ref["ray_counts"], strict=True):
        rays = ref["rays_bev"][start: start + count]
        w = ref["weights"][start: start + count]
        start += count
        half = BEAMLET_WIDTH_MM / 2
        cols = np.arange(rays[:, 0].min() - half, rays[:, 0].max() + half + 1e-6, BEAMLET_WIDTH_MM)
        rows = np.arange(rays[:, 2].min() - half, rays[:, 2].max() + half + 1e-6, BEAMLET_WIDTH_MM)
        ci = np.rint((rays[:, 0] - cols[0] - half) / BEAMLET_WIDTH_MM).astype(int)
        ri = np.rint((rays[:, 2] - rows[0] - half) / BEAMLET_WIDTH_MM).astype(int)
        active = np.zeros((len(rows) - 1, len(cols) - 1), dtype=bool)
        active[ri, ci] = True
        fluence = np.zeros(active.shape)
        fluence[ri, ci] = w
        beams.append(Beam(float(gantry), iso))
        grids.append(BeamletGrid(cols, rows, active))
        weights.append(fluence[active])
    start_t = time.perf_counter()
    body = ref["density"] > 0.05
    engine = DoseEngine.build(ref["density"], frame, beams, grids, body, mu_scale=1.0)
    flat, points = frame.mask_points(body)
    dose = np.zeros(int(np.prod(shape)), dtype=np.float32)
    dose[flat] = engine.dose_from_weights(np.concatenate(weights), points)
    return dose.reshape(shape), time.perf_counter() - start_t


def compare(name: str, ref: dict) -> dict:
    """Depth dose, profiles and gamma of fedrt against pyRadPlan on one phantom."""
    mine, seconds = fedrt_dose(ref)
    theirs = ref["dose"].astype(np.float64)
    frame = PatientFrame(theirs.shape, tuple(ref["spacing_mm"]), tuple(ref["origin_lps"]))
    iso_index = np.rint(frame.to_index(np.asarray([ref["isocenter_lps"]]))[0]).astype(int)
    i, j, k = iso_index
    rate, gamma = gamma_pass_rate(theirs, mine, ref["spacing_mm"])
    peak = theirs.max()
    result = {
        "phantom": name,
        "beams": len(ref["gantry_deg"]),
        "beamlets": len(ref["weights"]),
        "pyradplan_seconds": float(ref["seconds"]),
        "fedrt_seconds": seconds,
        "max_dose_ratio_fedrt_over_pyradplan": float(mine.max() / peak),
        "iso_dose_ratio": float(mine[i, j, k] / theirs[i, j, k]),
        "gamma_3pct_3mm_pass_rate": rate,
        "gamma_voxels": int(gamma.size),
        "mean_abs_diff_pct_of_max_above_10pct": float(np.mean(np.abs(mine - theirs)[theirs > 0.1 * peak]) / peak * 100),
    }
    if name == "water":
        depth_axis = theirs[:, j, k]
        surface = int(np.argmax(ref["density"][:, j, k] > 0.5))
        depth_mm = (np.arange(theirs.shape[0]) - surface + 0.5) * ref["spacing_mm"][0]
        ours = mine[:, j, k]
        sel = (depth_mm > 0) & (depth_mm <= 250)
        top = depth_axis.max()
        result["depth_dose_mm_pyradplan_fedrt_pct"] = [
            [round(float(d), 1), round(float(a / top * 100), 1), round(float(b / top * 100), 1)]
            for d, a, b in zip(depth_mm[sel][::4], depth_axis[sel][::4], ours[sel][::4], strict=True)]
        result["dmax_mm_pyradplan_fedrt"] = [float(depth_mm[np.argmax(depth_axis)]),
                                             float(depth_mm[np.argmax(ours)])]
        lateral = theirs[i, :, k]
        x = (np.arange(theirs.shape[1]) - j) * ref["spacing_mm"][1]
        sel = np.abs(x) <= 90
        result["profile_at_iso_mm_pyradplan_fedrt_pct"] = [
            [round(float(a), 1), round(float(b / lateral.max() * 100), 1), round(float(c / lateral.max() * 100), 1)]
            for a, b, c in zip(x[sel][::2], lateral[sel][::2], mine[i, :, k][sel][::2], strict=True)]
    else:
        masks = {str(n): ref[f"mask_{n}"] for n in ref["mask_names"]}
        result["structure_mean_dose_ratio"] = {n: float(mine[m].mean() / theirs[m].mean())
                                               for n, m in masks.items() if m.any()}
    result["pixel_mm"] = PIXEL_MM
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantom", nargs="+", default=["water", "tg119"], choices=sorted(BEAMS))
    parser.add_argument("--python", default="/tmp/prp/bin/python", help="the pyRadPlan environment's python")
    parser.add_argument("--work", default="/tmp/fedrt-bench", help="where pyRadPlan's results are kept")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.phantom:
        cached = work / f"pyradplan_{name}.npz"
        if not cached.is_file():
            subprocess.run([args.python, str(REPO / "benchmarks" / "pyradplan_reference.py"), name, str(cached),
                            *map(str, BEAMS[name])], check=True)
        with np.load(cached) as data:
            ref = {key: data[key] for key in data.files}
        result = compare(name, ref)
        results.append(result)
        print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0 if all(r["gamma_3pct_3mm_pass_rate"] >= 0.95 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
