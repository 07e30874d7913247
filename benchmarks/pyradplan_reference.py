"""The pyRadPlan side of bench_engine_vs_pyradplan.py: a forward photon dose on a phantom, saved as .npz.

Runs in the separate benchmark environment only (``/tmp/prp/bin/python``, pyRadPlan 0.5.0), never in fedrt's.
Usage: ``pyradplan_reference.py {water,tg119} OUT.npz GANTRY_DEG [GANTRY_DEG ...]``, or
``pyradplan_reference.py geometry OUT.npz`` for TG-119's CT and contours alone (no dose). Saved arrays use fedrt's
case axis order (axis 0 anterior->posterior, 1 right->left, 2 superior->inferior) and LPS millimetres.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import SimpleITK as sitk
from pyRadPlan import PhotonPlan, calc_dose_forward, generate_stf, load_tg119
from pyRadPlan.ct import default_hlut

WATER_SURFACE_INDEX = 30  # rows of air above the water (axis y, anterior)
KERNEL_RANGE_MM = 180.0  # pyRadPlan's 6 MV kernels are tabulated to 179.5 mm: compute all of them


def to_case_axes(image: sitk.Image) -> np.ndarray:
    """SimpleITK (z, y, x) array -> (y, x, superior->inferior)."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(1, 2, 0)[:, :, ::-1])


def water_phantom(ct, cst):
    """TG-119's grid filled with water below an air gap, with a 100 x 100 x 100 mm cubic target at its centre."""
    hu = sitk.GetArrayFromImage(ct.cube_hu)
    hu[:] = -1000.0
    hu[:, WATER_SURFACE_INDEX:, :] = 0.0
    water = sitk.GetImageFromArray(hu)
    water.CopyInformation(ct.cube_hu)
    ct.cube_hu = water
    nz, ny, nx = hu.shape
    res = ct.resolution
    half = [round(50.0 / res[k]) for k in ("z", "y", "x")]
    centre = (nz // 2, ny // 2, nx // 2)
    for voi in cst.vois:
        mask = np.zeros(hu.shape, dtype=np.uint8)
        if voi.voi_type == "TARGET":
            mask[tuple(slice(c - h, c + h) for c, h in zip(centre, half, strict=True))] = 1
        elif voi.name == "BODY":
            mask[:, WATER_SURFACE_INDEX:, :] = 1
        image = sitk.GetImageFromArray(mask)
        image.CopyInformation(ct.cube_hu)
        voi.mask = image
    return ct, cst


def modulated_weights(rays: np.ndarray) -> np.ndarray:
    """A fixed, smooth, non-uniform fluence of the ray positions (mm), so the comparison is not of open fields."""
    return 1.0 + 0.5 * np.sin(rays[:, 0] / 23.0) * np.cos(rays[:, 2] / 31.0)


def main(argv: list[str]) -> int:
    phantom, out, gantry = argv[0], argv[1], [float(g) for g in argv[2:]]
    ct, cst = load_tg119()
    if phantom == "geometry":
        res = ct.resolution
        np.savez_compressed(out, ct_hu=to_case_axes(ct.cube_hu).astype(np.float32),
                            spacing_mm=np.array([res["y"], res["x"], res["z"]]),
                            mask_names=np.array([voi.name for voi in cst.vois]),
                            **{f"mask_{voi.name}": to_case_axes(voi.mask).astype(bool) for voi in cst.vois})
        print(f"TG-119 geometry -> {out}")
        return 0
    if phantom == "water":
        ct, cst = water_phantom(ct, cst)
    pln = PhotonPlan(machine="Generic")
    pln.prop_stf = {"gantry_angles": gantry, "couch_angles": [0.0] * len(gantry), "bixel_width": 5.0}
    pln.prop_dose_calc = {"dose_grid": ct.grid, "geometric_lateral_cutoff": KERNEL_RANGE_MM,
                          "enable_dij_sampling": False, "ignore_outside_densities": False}
    stf = generate_stf(ct, cst, pln)
    rays = [np.array([r.ray_pos_bev for r in beam.rays]) for beam in stf.beams]
    all_rays = np.concatenate(rays)
    weights = np.ones(len(all_rays)) if phantom == "water" else modulated_weights(all_rays)
    start = time.perf_counter()
    result = calc_dose_forward(ct, cst, stf, pln, weights)
    seconds = time.perf_counter() - start
    density = ct.compute_wet(default_hlut())
    res = ct.resolution
    origin = np.array(ct.origin, dtype=float)
    nz = ct.size[2]
    masks = {voi.name: to_case_axes(voi.mask).astype(bool) for voi in cst.vois}
    np.savez_compressed(
        out,
        dose=to_case_axes(result["physical_dose"]).astype(np.float32),
        density=to_case_axes(density).astype(np.float32),
        ct_hu=to_case_axes(ct.cube_hu).astype(np.float32),
        spacing_mm=np.array([res["y"], res["x"], res["z"]]),
        origin_lps=origin + np.array([0.0, 0.0, (nz - 1) * res["z"]]),
        isocenter_lps=np.asarray(stf.beams[0].iso_center, dtype=float),
        gantry_deg=np.array(gantry),
        ray_counts=np.array([len(r) for r in rays]),
        rays_bev=all_rays,
        weights=weights,
        seconds=seconds,
        mask_names=np.array(list(masks)),
        **{f"mask_{name}": mask for name, mask in masks.items()},
    )
    print(f"pyRadPlan {phantom}: {len(all_rays)} beamlets, forward dose {seconds:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
