"""Voxels the optimiser looks at: every structure subsampled to a budget, rings around the targets, the body."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from protocols.case import Case
from protocols.protocol import Protocol

RING_EDGES_MM = (0.0, 10.0, 30.0)


@dataclass(frozen=True)
class SampleBudget:
    """Most voxels drawn per region (all of them when a region is smaller)."""

    per_target: int = 3000
    per_oar: int = 1500
    per_ring: int = 3000
    body: int = 4000


@dataclass
class VoxelSample:
    """Sampled flat voxel indices (unique) and, per region name, positions into them."""

    flat_index: np.ndarray
    regions: dict[str, np.ndarray]
    kinds: dict[str, str]  # region -> "target", "oar", "ring" or "body"
    sizes: dict[str, int]  # region -> voxels in the whole region (before sampling)
    rx_gy: np.ndarray  # per sampled voxel, the highest prescription of the targets holding it (0 outside)


def target_union(case: Case, protocol: Protocol) -> np.ndarray:
    union = np.zeros(case.shape, dtype=bool)
    for name in protocol.targets:
        union |= case.mask(name)
    return union


def sample_voxels(case: Case, protocol: Protocol, budget: SampleBudget = SampleBudget(),
                  seed: int = 0) -> VoxelSample:
    """Draw the optimisation voxels: targets, OARs, rings at 0-10 and 10-30 mm outside the targets, the rest."""
    rng = np.random.default_rng(seed)
    body = case.dose_region()
    targets = target_union(case, protocol)
    picked: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    sizes: dict[str, int] = {}

    def draw(name: str, mask: np.ndarray, cap: int, kind: str) -> None:
        flat = np.flatnonzero(mask)
        if flat.size == 0:
            return
        picked[name] = flat if flat.size <= cap else np.sort(rng.choice(flat, cap, replace=False))
        kinds[name] = kind
        sizes[name] = int(flat.size)

    for name in protocol.targets:
        draw(name, case.mask(name), budget.per_target, "target")
    for name in protocol.oars:
        draw(name, case.mask(name), budget.per_oar, "oar")
    # Distance outside the targets, on a box around them (rings reach 30 mm).
    distance = _distance_outside(targets, case.spacing_mm, RING_EDGES_MM[-1])
    for lo, hi in itertools.pairwise(RING_EDGES_MM):
        draw(f"ring {lo:g}-{hi:g} mm", body & ~targets & (distance > lo) & (distance <= hi), budget.per_ring, "ring")
    draw("body", body & ~targets & (distance > RING_EDGES_MM[-1]), budget.body, "body")
    flat_index = np.unique(np.concatenate(list(picked.values())))
    regions = {name: np.searchsorted(flat_index, flat) for name, flat in picked.items()}
    rx = np.zeros(flat_index.size)
    for name in protocol.targets:
        inside = case.mask(name).ravel()[flat_index]
        rx[inside] = np.maximum(rx[inside], protocol.structure(name).prescription_gy)
    return VoxelSample(flat_index, regions, kinds, sizes, rx)


def _distance_outside(mask: np.ndarray, spacing_mm: tuple[float, float, float], reach_mm: float) -> np.ndarray:
    """Distance (mm) from each voxel to the mask, exact within ``reach_mm`` of it, infinite beyond."""
    out = np.full(mask.shape, np.inf, dtype=np.float32)
    if not mask.any():
        return out
    pad = [int(np.ceil(reach_mm / s)) + 1 for s in spacing_mm]
    where = np.argwhere(mask)
    box = tuple(slice(max(lo - p, 0), min(hi + p + 1, n))
                for lo, hi, p, n in zip(where.min(0), where.max(0), pad, mask.shape, strict=True))
    out[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing_mm)
    return out
