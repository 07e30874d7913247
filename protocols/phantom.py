"""Generated head-and-neck phantoms in OpenKBP's CSV layout: the offline default dataset of fedrt.

Each phantom is drawn from a seeded random generator: a body of elliptic cross-sections (head, jaw, neck,
shoulders) with skull, vertebrae, mandible, airway, the protocol's OARs and three disjoint targets (a
primary, a ring around it, elective neck nodes) of varied position and size. Its dose is SYNTHETIC, not a
dose calculation: a fixed, deterministic function of the contours (each target at its prescription,
exponential fall-off with distance, a low-dose bath, reduced dose near contoured OARs), so that a network
can learn it from CT and masks. Axes follow :data:`protocols.case.AXES`: axis 0 anterior->posterior,
axis 1 patient right->left, axis 2 superior->inferior.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from protocols.case import Case
from protocols.errors import ConfigError
from protocols.files import cache_dir, staged_folder
from protocols.openkbp import write_openkbp_case
from protocols.protocol import Grid, Protocol

GENERATOR_VERSION = 1
MANIFEST = "phantoms.json"
PHANTOM_OARS = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")
# Chance that an OAR was not contoured, and that the intermediate target is absent (both happen in OpenKBP).
OAR_MISSING_P = {
    "Brainstem": 0.1,
    "SpinalCord": 0.05,
    "RightParotid": 0.05,
    "LeftParotid": 0.05,
    "Esophagus": 0.4,
    "Larynx": 0.4,
    "Mandible": 0.2,
}
MIDDLE_TARGET_MISSING_P = 0.15

# The synthetic dose model (fixed for every patient, so dose is a function of the contours alone).
FALLOFF_MM = 15.0
BATH_FRACTION = 0.12
BATH_FALLOFF_MM = 50.0
OAR_SPARING = {
    "Brainstem": 0.45,
    "SpinalCord": 0.5,
    "RightParotid": 0.45,
    "LeftParotid": 0.45,
    "Esophagus": 0.3,
    "Larynx": 0.35,
    "Mandible": 0.1,
}
SPARING_RANGE_MM = 8.0
TARGET_SHIELD_MM = 6.0

HU_AIR, HU_TISSUE, HU_FAT, HU_BRAIN, HU_PAROTID = -1000.0, 40.0, -90.0, 35.0, 5.0
HU_SKULL, HU_VERTEBRA, HU_MANDIBLE, HU_CARTILAGE = 1100.0, 650.0, 1200.0, 250.0
HU_NOISE_SD = 10.0


def phantom_grid(protocol: Protocol, shape: tuple[int, int, int] | None = None) -> Grid:
    """Return the protocol grid, or ``shape`` over the same field of view (spacing scaled to match)."""
    if shape is None:
        return protocol.grid
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ConfigError(f"phantom shape must be three sizes of at least 16 voxels, got {shape}; give e.g. 64,64,64")
    spacing = tuple(
        round(s * n / m, 6)
        for s, n, m in zip(protocol.grid.spacing_mm, protocol.grid.shape, shape, strict=True)
    )
    return Grid(shape, spacing)


def phantom_protocol(protocol: Protocol, shape: tuple[int, int, int] | None = None) -> Protocol:
    """Return the protocol on the phantom grid: read a dataset written with ``shape`` through it."""
    return dataclasses.replace(protocol, grid=phantom_grid(protocol, shape))


def _check_protocol(protocol: Protocol) -> None:
    unknown = [n for n in protocol.oars if n not in PHANTOM_OARS]
    if unknown or not 1 <= len(protocol.targets) <= 3:
        raise ConfigError(
            f"protocol {protocol.name}: the head-and-neck phantom draws OARs {', '.join(PHANTOM_OARS)} "
            f"and 1-3 targets; it cannot draw {', '.join(unknown) or f'{len(protocol.targets)} targets'}. "
            "Use hn-openkbp, or give data.root=PATH of a real dataset for this protocol"
        )


class _Frame:
    """Millimetre coordinates of a voxel box (open grids), relative to the patient's reference point."""

    def __init__(self, grid: Grid, lo: np.ndarray, hi: np.ndarray, origin_mm: np.ndarray):
        sp = np.asarray(grid.spacing_mm)
        extent = sp * np.asarray(grid.shape)
        self.lo, self.hi, self.spacing_mm = lo, hi, tuple(float(v) for v in sp)
        axes = [(np.arange(lo[i], hi[i]) + 0.5) * sp[i] for i in range(3)]
        self.ap = (axes[0] - extent[0] / 2 - origin_mm[0])[:, None, None]
        self.lr = (axes[1] - extent[1] / 2 - origin_mm[1])[None, :, None]
        self.z = axes[2][None, None, :]
        self.shape = tuple(int(v) for v in hi - lo)

    def ellipsoid(self, center: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
        return ((self.ap - center[0]) / radii[0]) ** 2 + ((self.lr - center[1]) / radii[1]) ** 2 + (
            (self.z - center[2]) / radii[2]
        ) ** 2 <= 1.0

    def tube(self, ap: float, lr: float, radius: float, z0: float, z1: float) -> np.ndarray:
        return ((self.ap - ap) ** 2 + (self.lr - lr) ** 2 <= radius**2) & (self.z >= z0) & (self.z <= z1)

    def distance_mm(self, mask: np.ndarray) -> np.ndarray:
        """Distance in mm from every voxel of the box to the mask (0 inside); inf when the mask is empty."""
        if not mask.any():
            return np.full(self.shape, np.inf, dtype=np.float32)
        return ndimage.distance_transform_edt(~mask, sampling=self.spacing_mm).astype(np.float32)


def _body_profile(rng: np.random.Generator, scale: float, z_skull_mm: float) -> dict[str, np.ndarray]:
    """Cross-section of the body along axis 2: centre (anterior-posterior) and semi-axes in mm at knots."""
    z = z_skull_mm + np.array([-90.0, -30.0, 30.0, 55.0, 90.0, 140.0, 260.0])
    semi_ap = scale * np.array([80.0, 95.0, 88.0, 80.0, 60.0, 64.0, 78.0]) * rng.uniform(0.93, 1.07)
    semi_lr = scale * np.array([66.0, 76.0, 72.0, 68.0, 56.0, 64.0, 95.0]) * rng.uniform(0.93, 1.07)
    centre_ap = np.array([-15.0, -15.0, -18.0, -20.0, -5.0, 0.0, 5.0]) * scale
    return {"z": z, "semi_ap": semi_ap, "semi_lr": semi_lr, "centre_ap": centre_ap}


def _draw_anatomy(rng: np.random.Generator, grid: Grid) -> tuple[_Frame, dict[str, np.ndarray], dict]:
    """Seeded geometry: body box frame, body-related masks (all in the box) and per-patient parameters."""
    extent = np.asarray(grid.spacing_mm) * np.asarray(grid.shape)
    scale = rng.uniform(0.9, 1.1)
    origin = np.array([rng.normal(0, 5.0), rng.normal(0, 5.0)])
    z_top = rng.uniform(0.08, 0.18) * extent[2]
    z_skull = z_top + scale * rng.uniform(65.0, 85.0)
    z_bottom = rng.uniform(0.86, 0.97) * extent[2]
    prof = _body_profile(rng, scale, z_skull)

    half = np.array([prof["semi_ap"].max() + np.abs(prof["centre_ap"]).max(), prof["semi_lr"].max()]) + 8.0
    centre = extent[:2] / 2 + origin
    sp = np.asarray(grid.spacing_mm)
    lo = np.maximum(np.floor(np.r_[(centre - half) / sp[:2], z_top / sp[2]]).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(np.r_[(centre + half) / sp[:2], z_bottom / sp[2]]).astype(int) + 1, grid.shape)
    f = _Frame(grid, lo, hi, origin)

    zz = f.z[0, 0]
    semi_ap = np.interp(zz, prof["z"], prof["semi_ap"])[None, None, :]
    semi_lr = np.interp(zz, prof["z"], prof["semi_lr"])[None, None, :]
    c_ap = np.interp(zz, prof["z"], prof["centre_ap"])[None, None, :]
    radius = np.sqrt(((f.ap - c_ap) / semi_ap) ** 2 + (f.lr / semi_lr) ** 2)
    inside_z = (f.z >= z_top) & (f.z <= z_bottom)
    body = (radius <= 1.0) & inside_z
    depth_mm = (1.0 - radius) * np.minimum(semi_ap, semi_lr)  # approximate depth below the skin
    params = {"scale": scale, "z_skull": z_skull, "z_bottom": z_bottom}
    masks = {
        "body": body,
        "fat": body & (depth_mm < rng.uniform(4.0, 9.0)),
        "skull": body & (depth_mm > 5.0) & (depth_mm < 12.0) & (f.z < z_skull + 10.0),
        "brain": body & (depth_mm >= 12.0) & (f.z < z_skull),
    }
    return f, masks, params


def _draw_organs(rng: np.random.Generator, f: _Frame, p: dict) -> tuple[dict[str, np.ndarray], dict]:
    """OARs and bony anatomy in the body box; returns masks and the landmarks targets are placed by."""
    s, zs, zb = p["scale"], p["z_skull"], p["z_bottom"]

    def jitter(sd_mm: float) -> float:
        return float(rng.normal(0.0, sd_mm))

    cord_a, cord_r = 20.0 * s + jitter(3), rng.uniform(4.5, 6.0)
    vert_a = cord_a - 18.0 * s
    organs = {
        "SpinalCord": f.tube(cord_a, jitter(1.5), cord_r, zs + 5.0, zb),
        "Brainstem": f.ellipsoid((cord_a - 12.0, 0.0, zs - 15.0 * s), (12.0 * s, 13.0 * s, 22.0 * s)),
    }
    canal = f.tube(cord_a, 0.0, cord_r + 3.0, zs, zb)
    organs["vertebra"] = (f.tube(cord_a, 0.0, cord_r + 8.0, zs, zb) & ~canal) | f.tube(
        vert_a, 0.0, 12.0 * s, zs + 10.0, zb
    )
    par_a, par_z = -5.0 * s + jitter(3), zs + 20.0 * s + jitter(4)
    par_r = tuple(r * s * rng.uniform(0.85, 1.15) for r in (16.0, 11.0, 18.0))
    organs["RightParotid"] = f.ellipsoid((par_a + jitter(2), -52.0 * s + jitter(2), par_z + jitter(2)), par_r)
    organs["LeftParotid"] = f.ellipsoid((par_a + jitter(2), 52.0 * s + jitter(2), par_z + jitter(2)), par_r)

    chin_z = zs + 55.0 * s + jitter(4)
    mand_c, mand_ap, mand_lr = -20.0 * s, 65.0 * s * rng.uniform(0.9, 1.1), 50.0 * s * rng.uniform(0.9, 1.1)
    ellipse_r = np.sqrt(((f.ap - mand_c) / mand_ap) ** 2 + (f.lr / mand_lr) ** 2)
    posterior = np.clip((f.ap - (mand_c - mand_ap)) / mand_ap, 0.0, 1.0)  # 0 at the chin, 1 at the rami
    organs["Mandible"] = (
        (np.abs(ellipse_r - 1.0) * min(mand_ap, mand_lr) < 5.0)
        & (f.ap <= mand_c)
        & (f.z <= chin_z + 12.0)
        & (f.z >= chin_z - 12.0 - 35.0 * s * posterior)
    )

    lar_z, air_a = zs + 100.0 * s + jitter(5), -32.0 * s + jitter(2)
    larynx = f.ellipsoid((air_a, 0.0, lar_z), (18.0 * s, 18.0 * s, 20.0 * s))
    airway = f.tube(air_a, 0.0, 7.0 * s, zs + 35.0 * s, zb)
    organs["Larynx"] = larynx
    organs["cartilage"] = larynx & ~f.ellipsoid((air_a, 0.0, lar_z), (14.0 * s, 14.0 * s, 24.0 * s))
    organs["airway"] = airway
    organs["Esophagus"] = f.tube(vert_a - 18.0 * s, jitter(1.5), rng.uniform(5.5, 7.5), lar_z + 15.0, zb)
    return organs, {"larynx_z": lar_z}


def _draw_targets(
    rng: np.random.Generator, f: _Frame, p: dict, organs: dict, body: np.ndarray, landmarks: dict
) -> list[np.ndarray]:
    """Three disjoint targets, highest Rx first: a primary blob, a ring around it, elective neck nodes."""
    s, zs = p["scale"], p["z_skull"]
    centre = (rng.uniform(-45.0, -5.0) * s, rng.uniform(-30.0, 30.0) * s, zs + rng.uniform(35.0, 80.0) * s)
    radii = tuple(rng.uniform(20.0, 34.0) * s for _ in range(3))
    primary = f.ellipsoid(centre, radii)
    for _ in range(rng.integers(1, 3)):
        offset = rng.normal(0.0, 10.0, 3)
        primary |= f.ellipsoid(tuple(np.add(centre, offset)), tuple(r * rng.uniform(0.5, 0.8) for r in radii))

    d_body_edge = f.distance_mm(~body)
    allowed = (d_body_edge > 5.0) & (f.distance_mm(organs["SpinalCord"] | organs["Brainstem"]) > 5.0)
    primary &= allowed
    d_primary = f.distance_mm(primary)
    ring = (d_primary <= rng.uniform(6.0, 12.0)) & ~primary
    side = np.sign(centre[1]) or 1.0
    if rng.random() < 0.6:
        node = (
            rng.uniform(-15.0, 5.0) * s,
            side * rng.uniform(30.0, 45.0) * s,
            centre[2] + rng.uniform(15.0, 35.0),
        )
        ring |= f.ellipsoid(node, tuple(rng.uniform(8.0, 14.0) * s for _ in range(3)))
    ring &= allowed & ~primary

    neck_end = landmarks["larynx_z"] + rng.uniform(10.0, 50.0) * s
    sides = (-1.0, 1.0) if rng.random() < 0.75 else (side,)
    elective = np.zeros(f.shape, dtype=bool)
    for sign in sides:
        lateral, radius = sign * rng.uniform(35.0, 45.0) * s, rng.uniform(12.0, 18.0) * s
        elective |= f.tube(rng.uniform(-10.0, 10.0) * s, lateral, radius, zs + 20.0 * s, neck_end)
    elective |= f.distance_mm(primary | ring) <= rng.uniform(8.0, 15.0)
    elective &= allowed & ~primary & ~ring
    return [primary, ring, elective]


def _synthetic_dose(
    f: _Frame, body: np.ndarray, targets: list[tuple[np.ndarray, float]], oars: dict[str, np.ndarray]
) -> np.ndarray:
    """Deterministic clinical-like dose from the contours alone (not a dose calculation), in Gy."""
    distances = [(f.distance_mm(mask), rx) for mask, rx in targets]
    dose = np.zeros(f.shape, dtype=np.float32)
    for d, rx in distances:
        np.maximum(dose, rx * np.exp(-d / FALLOFF_MM), out=dose)
    d_any = np.minimum.reduce([d for d, _ in distances])
    rx_max = max(rx for _, rx in targets)
    np.maximum(dose, BATH_FRACTION * rx_max * np.exp(-d_any / BATH_FALLOFF_MM), out=dose)
    kept = np.ones(f.shape, dtype=np.float32)
    for name, mask in oars.items():
        kept *= 1.0 - OAR_SPARING[name] * np.exp(-f.distance_mm(mask) / SPARING_RANGE_MM)
    shield = np.exp(-d_any / TARGET_SHIELD_MM)  # 1 inside targets: sparing never cuts target dose
    dose *= shield + (1.0 - shield) * kept
    return np.where(body, dose, 0.0).astype(np.float32)


def generate_phantom(
    protocol: Protocol, seed: int, patient: int, shape: tuple[int, int, int] | None = None
) -> Case:
    """Phantom patient number ``patient`` of dataset ``seed``: CT (HU), contours and synthetic dose (Gy)."""
    _check_protocol(protocol)
    if seed < 0 or patient < 1:
        raise ConfigError(f"phantom seed must be >= 0 and patient >= 1, got seed={seed}, patient={patient}; "
                          "give a seed of 0 or more")
    grid = phantom_grid(protocol, shape)
    rng = np.random.default_rng([int(seed), int(patient), GENERATOR_VERSION])
    f, masks, params = _draw_anatomy(rng, grid)
    body = masks["body"]
    organs, landmarks = _draw_organs(rng, f, params)
    organs = {k: v & body for k, v in organs.items()}
    target_masks = _draw_targets(rng, f, params, organs, body, landmarks)

    ranked = sorted(protocol.targets, key=lambda n: -protocol.prescriptions_gy[n])
    drawn_targets = dict(zip(ranked, target_masks[: len(ranked)], strict=True))
    if len(ranked) == 3 and rng.random() < MIDDLE_TARGET_MISSING_P:
        drawn_targets[ranked[2]] |= drawn_targets.pop(ranked[1])
    contoured = {n: organs[n] for n in protocol.oars if rng.random() >= OAR_MISSING_P[n] and organs[n].any()}

    hu = np.full(f.shape, HU_AIR, dtype=np.float32)
    hu[body] = HU_TISSUE
    hu[masks["fat"]] = HU_FAT
    hu[masks["brain"]] = HU_BRAIN
    hu[organs["RightParotid"] | organs["LeftParotid"]] = HU_PAROTID
    hu[masks["skull"]] = HU_SKULL
    hu[organs["vertebra"]] = HU_VERTEBRA
    hu[organs["Mandible"]] = HU_MANDIBLE
    hu[organs["cartilage"]] = HU_CARTILAGE
    hu += np.where(body, rng.normal(0.0, HU_NOISE_SD, f.shape), 0.0).astype(np.float32)
    hu[organs["airway"]] = HU_AIR

    dose = _synthetic_dose(
        f, body, [(m, protocol.prescriptions_gy[n]) for n, m in drawn_targets.items()], contoured
    )

    def full(box: np.ndarray, fill: float | bool = False) -> np.ndarray:
        out = np.full(grid.shape, fill, dtype=box.dtype)
        out[f.lo[0] : f.hi[0], f.lo[1] : f.hi[1], f.lo[2] : f.hi[2]] = box
        return out

    structures = {n: full(m) for n, m in {**contoured, **drawn_targets}.items() if m.any()}
    return Case(
        patient_id=f"pt_{patient}",
        ct_hu=full(hu, HU_AIR),
        spacing_mm=grid.spacing_mm,
        structures={n: structures[n] for n in protocol.structure_names if n in structures},
        possible_dose_mask=full(body),
        dose_gy=full(dose, 0.0),
    )


def _manifest(protocol: Protocol, n_patients: int, seed: int, grid: Grid) -> dict:
    return {
        "generator": "fedrt head-and-neck phantom",
        "version": GENERATOR_VERSION,
        "protocol": protocol.name,
        "n_patients": n_patients,
        "seed": seed,
        "shape": list(grid.shape),
        "spacing_mm": list(grid.spacing_mm),
        "dose": "synthetic: a fixed function of the contours, not a dose calculation",
    }


def write_phantom_dataset(
    dst: Path | str,
    protocol: Protocol,
    n_patients: int,
    seed: int,
    shape: tuple[int, int, int] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``pt_1..pt_N`` phantoms under ``dst`` atomically (built next to it, then renamed into place)."""
    dst = Path(dst)
    if n_patients < 1:
        raise ConfigError(f"need at least one phantom patient, got n_patients={n_patients}; ask for --n 1 or more")
    fix = "choose another destination or replace it (overwrite=True, fedrt phantoms --overwrite)"
    _check_protocol(protocol)
    grid = phantom_grid(protocol, shape)
    with staged_folder(dst, replace=overwrite, fix=fix) as staging:
        for patient in range(1, n_patients + 1):
            write_openkbp_case(generate_phantom(protocol, seed, patient, shape), staging / f"pt_{patient}")
        (staging / MANIFEST).write_text(json.dumps(_manifest(protocol, n_patients, seed, grid), indent=2) + "\n")
    return [dst / f"pt_{patient}" for patient in range(1, n_patients + 1)]


def phantom_cache_path(
    protocol: Protocol, n_patients: int = 8, seed: int = 0, shape: tuple[int, int, int] | None = None
) -> Path:
    """Where :func:`ensure_phantom_dataset` keeps the phantoms of these parameters."""
    label = "x".join(str(n) for n in phantom_grid(protocol, shape).shape)
    return cache_dir() / "phantoms" / f"{protocol.name}-n{n_patients}-s{seed}-{label}"


def ensure_phantom_dataset(
    protocol: Protocol, n_patients: int = 8, seed: int = 0, shape: tuple[int, int, int] | None = None
) -> Path:
    """Return the cached phantom dataset for these parameters, generated on first use (default data.root).

    With a ``shape`` other than the protocol grid, read it through ``phantom_protocol(protocol, shape)``.
    """
    dst = phantom_cache_path(protocol, n_patients, seed, shape)
    expected = _manifest(protocol, n_patients, seed, phantom_grid(protocol, shape))
    if _is_complete(dst, expected):
        return dst
    try:
        write_phantom_dataset(dst, protocol, n_patients, seed, shape, overwrite=dst.exists())
    except OSError:
        if not _is_complete(dst, expected):  # another process finishing first is fine; anything else is not
            raise
    return dst


def _is_complete(folder: Path, expected: dict) -> bool:
    """Whether ``folder`` holds the phantoms ``expected`` describes (same manifest, every patient folder)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest == expected and all(
        (folder / f"pt_{i}").is_dir() for i in range(1, expected["n_patients"] + 1)
    )
