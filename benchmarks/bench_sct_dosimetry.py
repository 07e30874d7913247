"""Benchmark (issue 16): a synthetic-CT model's images and doses against the real CT, and the bulk-density references.

For each validation patient of a simulated-MR dataset (``fedrt data simulate-mr``): the sCT's MAE, PSNR and SSIM inside
the MR's body (SynthRAD's definitions, ``protocols.metrics``); then a plan optimised on the real CT to mimic the
clinical dose (``runtime.planning.plan.make_plan``), recomputed with the same segments and MU on the sCT, on bulk
density water only (the MR's body water, air outside) and on water + bone (bone where the real CT is above
``BONE_HU``: idealised bone contours, the best a bulk-bone override can do), each compared with the real-CT dose:
gamma 2%/2 mm (global, voxels above 10% of the maximum), each target's D95 and each OAR's mean dose. Every figure is on
simulated MR.

    python benchmarks/bench_sct_dosimetry.py --model sct.pt --data DATASET --out DIR [--patients N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

BONE_HU = 200.0  # above this on the real CT a voxel counts as bone for the idealised bone override
GAMMA_POINTS = 30000  # gamma scored on a random subset of the voxels above the cutoff (the rate to about 0.5%)


def dose_differences(case, protocol, reference: np.ndarray, dose: np.ndarray) -> dict[str, float]:
    """Gamma pass rate of ``dose`` against ``reference`` and its targets' D95 and OARs' mean-dose differences (Gy)."""
    from protocols.metrics import dvh_metric, gamma_pass_rate

    out = {"gamma_2_2": gamma_pass_rate(reference, dose, case.spacing_mm, max_points=GAMMA_POINTS)}
    for name in protocol.targets:
        if case.mask(name).any():
            out[f"{name}_D95_diff_gy"] = (dvh_metric(dose, case.mask(name), "D95", case.voxel_volume_mm3)
                                          - dvh_metric(reference, case.mask(name), "D95", case.voxel_volume_mm3))
    for name in protocol.oars:
        if case.mask(name).any():
            out[f"{name}_Dmean_diff_gy"] = (dvh_metric(dose, case.mask(name), "Dmean", case.voxel_volume_mm3)
                                            - dvh_metric(reference, case.mask(name), "Dmean", case.voxel_volume_mm3))
    return out


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per density: mean gamma pass rate, worst gamma, mean |D95 difference| over targets, mean |Dmean difference| over
    OARs (Gy).
    """
    gammas = [r["gamma_2_2"] for r in rows]
    d95 = [abs(v) for r in rows for k, v in r.items() if k.endswith("_D95_diff_gy")]
    dmean = [abs(v) for r in rows for k, v in r.items() if k.endswith("_Dmean_diff_gy")]
    return {"gamma_2_2_mean": statistics.mean(gammas), "gamma_2_2_min": min(gammas),
            "target_D95_abs_diff_gy": statistics.mean(d95), "oar_Dmean_abs_diff_gy": statistics.mean(dmean)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="sct checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="dataset with mr.csv (validation-pats/ is used)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=None, help="only the first N validation patients")
    args = parser.parse_args()

    from models import loop
    from models.checkpoint import load_checkpoint
    from protocols.dataset import find_patient_dirs
    from protocols.openkbp import load_openkbp_case
    from protocols.simulated_mr import SIMULATED_MR_LABEL
    from runtime.planning.plan import PlanConfig, make_plan, recompute_dose
    from runtime.planning.synthetic_ct import BULK_BONE_HU, bulk_density_ct

    model = load_checkpoint(args.model)
    protocol = model.task.protocol
    folders = find_patient_dirs(args.data / "validation-pats")[:args.patients]
    images, doses = [], {"sct": [], "bulk_water": [], "bulk_water_bone": []}
    for folder in folders:
        start = time.perf_counter()
        case, _ = load_openkbp_case(folder, protocol)
        sct = loop.predict(model.network, model.task, case)
        images.append({"patient": case.patient_id, **model.task.score(case, sct)})
        plan = make_plan(case, protocol, case.dose_gy, PlanConfig())
        body = case.mr_body()
        densities = {"sct": sct, "bulk_water": bulk_density_ct(body),
                     "bulk_water_bone": bulk_density_ct(body, body & (case.ct_hu > BONE_HU))}
        for name, hu in densities.items():
            doses[name].append({"patient": case.patient_id,
                                **dose_differences(case, protocol, plan.dose_gy, recompute_dose(plan, case, hu))})
        print(f"{case.patient_id}: sCT MAE {images[-1]['mae_hu']:.1f} HU, gamma 2%/2 mm sCT "
              f"{doses['sct'][-1]['gamma_2_2']:.3f}, water {doses['bulk_water'][-1]['gamma_2_2']:.3f}, water+bone "
              f"{doses['bulk_water_bone'][-1]['gamma_2_2']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    result = {"label": SIMULATED_MR_LABEL, "machine": f"{platform.node()} {platform.machine()}",
              "date": time.strftime("%Y-%m-%d"), "model": str(args.model), "data": str(args.data),
              "bone_override_hu": BULK_BONE_HU, "bone_from_ct_above_hu": BONE_HU,
              "images": {k: statistics.mean(r[k] for r in images) for k in model.task.site_metrics},
              "doses": {name: summary(rows) for name, rows in doses.items()},
              "per_patient": {"images": images, "doses": doses}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sct_dosimetry.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("label", "images", "doses")}, indent=2))


if __name__ == "__main__":
    main()
