"""Radiological depth: the electron-density path length from the source, along divergent rays through the CT.

A fast vectorised approximation of Siddon's exact ray tracing: density is sampled (trilinear) every ``step``
mm of axis distance along a fan of rays through a regular iso-plane grid, accumulated along each ray, and each point
takes its depth by trilinear interpolation in that (u, w, t) volume. With ray pitch and step below the CT voxel size
it differs from exact tracing only at sharp density edges, by about one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from runtime.planning.geometry import Beam, PatientFrame

RAY_PITCH_MM = 4.0
STEP_MM = 2.5
ENTRY_MARGIN_MM = 20.0  # tracing starts this far before the region's box
BODY_DENSITY = 0.5  # first density above this along the central ray is the skin, for the SSD


@dataclass
class DepthVolume:
    """Radiological depth (mm of water) on a beam's fan of rays: axis (u, w) at the iso plane, t from the source."""

    beam: Beam
    origin: tuple[float, float, float]  # (u, w, t) of sample [0, 0, 0]
    pitch_mm: float
    step_mm: float
    depth_mm: np.ndarray  # (n_u, n_w, n_t) float32
    ssd_mm: float

    def depth_at(self, points_lps: np.ndarray) -> np.ndarray:
        """Radiological depth of points (trilinear; points beyond the traced region take the nearest ray)."""
        u, w, t = self.beam.bev(points_lps)
        coords = np.stack([(u - self.origin[0]) / self.pitch_mm, (w - self.origin[1]) / self.pitch_mm,
                           (t - self.origin[2]) / self.step_mm])
        return ndimage.map_coordinates(self.depth_mm, coords, order=1, mode="nearest").astype(np.float32)


def box_corners(frame: PatientFrame, mask: np.ndarray | None = None) -> np.ndarray:
    """LPS corners of the bounding box of a mask's voxels (the whole grid without a mask), half a voxel out."""
    if mask is None or not mask.any():
        lo, hi = np.zeros(3), np.asarray(frame.shape) - 1.0
    else:
        where = np.argwhere(mask)
        lo, hi = where.min(0).astype(float), where.max(0).astype(float)
    corners = [[a, b, c] for a in (lo[0] - 0.5, hi[0] + 0.5) for b in (lo[1] - 0.5, hi[1] + 0.5)
               for c in (lo[2] - 0.5, hi[2] + 0.5)]
    return frame.to_lps(np.asarray(corners))


def trace_depths(density: np.ndarray, frame: PatientFrame, beam: Beam, region_corners_lps: np.ndarray,
                 ray_pitch_mm: float = RAY_PITCH_MM, step_mm: float = STEP_MM) -> DepthVolume:
    """Trace one beam's rays over the projection of a box (its 8 LPS corners), from just before the box.

    Density outside the CT counts as air; material outside the box (a couch beyond the body's box) is ignored.
    """
    u, w, t = beam.bev(region_corners_lps)
    t_entry = max(float(t.min()) - ENTRY_MARGIN_MM, 1.0)
    u_lo, u_hi = min(u.min(), 0.0) - ray_pitch_mm, max(u.max(), 0.0) + ray_pitch_mm
    w_lo, w_hi = min(w.min(), 0.0) - ray_pitch_mm, max(w.max(), 0.0) + ray_pitch_mm
    ray_u = np.arange(u_lo, u_hi + ray_pitch_mm, ray_pitch_mm)
    ray_w = np.arange(w_lo, w_hi + ray_pitch_mm, ray_pitch_mm)
    ray_t = np.arange(t_entry, max(float(t.max()), beam.sad_mm) + 2 * step_mm, step_mm)
    # Voxel index is affine in LPS, so along ray (u, w): index = index(source) + t/SAD * (u a + w b - SAD c).
    zero = frame.to_index(np.zeros((1, 3)))[0]
    axes_index = frame.to_index(beam.axes) - zero
    source = frame.to_index(beam.source_lps[None])[0]
    f = (ray_t / beam.sad_mm).astype(np.float32)
    padded = np.pad(density, 1)  # index -1 and n fall on the zero border
    limit = np.asarray(density.shape) + 1

    def fan_density(u_mm: float, w_mm: np.ndarray) -> np.ndarray:
        """Density samples (n_w, n_t) of the rays through (u_mm, each w_mm), trilinear between voxel centres."""
        base, frac = [], []
        for d in range(3):
            direction = u_mm * axes_index[0, d] + w_mm * axes_index[1, d] - beam.sad_mm * axes_index[2, d]
            pos = np.clip(source[d] + 1.0 + f[None, :] * direction[:, None].astype(np.float32), 0, limit[d] - 1e-3)
            low = np.floor(pos).astype(np.int32)
            base.append(low)
            frac.append((pos - low).astype(np.float32))
        (i, j, k), (a, b, c) = base, frac
        rho = np.zeros(i.shape, dtype=np.float32)
        for di, wi in ((0, 1 - a), (1, a)):
            for dj, wj in ((0, 1 - b), (1, b)):
                wij = wi * wj
                rho += wij * ((1 - c) * padded[i + di, j + dj, k] + c * padded[i + di, j + dj, k + 1])
        return rho

    depth = np.empty((len(ray_u), len(ray_w), len(ray_t)), dtype=np.float32)
    for a, u_mm in enumerate(ray_u):  # one fan slice at a time bounds memory
        rho = fan_density(u_mm, ray_w)
        stretch = np.sqrt(beam.sad_mm**2 + u_mm**2 + ray_w**2) / beam.sad_mm * step_mm
        depth[a] = (np.cumsum(rho, axis=1) - 0.5 * rho) * stretch[:, None].astype(np.float32)
    skin = np.flatnonzero(fan_density(0.0, np.zeros(1))[0] > BODY_DENSITY)
    ssd = float(ray_t[skin[0]]) if skin.size else beam.sad_mm
    return DepthVolume(beam, (float(ray_u[0]), float(ray_w[0]), float(ray_t[0])), ray_pitch_mm, step_mm, depth, ssd)
