"""Treatment geometry: patient coordinates (DICOM LPS), coplanar IEC 61217 beams, MLC and beamlet grids.

Patients are head-first supine at couch 0 and collimator 0. Beam frame (IEC BEAM LIMITING DEVICE) in LPS for gantry
angle g: X_b = (cos g, sin g, 0) (leaf travel, patient left at g = 0), Y_b = (0, 0, 1) (towards the gantry = head),
Z_b = (sin g, -cos g, 0) (towards the source). Beam's-eye-view coordinates (u, w) are along X_b and Y_b, projected
onto the isocentre plane, where all field and beamlet sizes are given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.case import Case
from protocols.errors import ConfigError, DataError

SAD_MM = 1000.0
BEAMLET_WIDTH_MM = 5.0

# Varian Millennium 120: 60 leaf pairs, 10 x 10 mm, 40 x 5 mm, 10 x 10 mm (at isocentre), over 400 mm.
MLC_BOUNDARIES_MM = np.concatenate([-200.0 + 10.0 * np.arange(10), -100.0 + 5.0 * np.arange(40),
                                    100.0 + 10.0 * np.arange(11)])
MLC_NAME = "Varian Millennium 120"
MLC_MAX_FIELD_MM = 400.0  # jaw and leaf positions within +-200 mm at the isocentre


@dataclass(frozen=True)
class PatientFrame:
    """Maps case voxel indices (axis0 A->P, axis1 R->L, axis2 S->I) to DICOM patient coordinates LPS in mm."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps: tuple[float, float, float]  # LPS position of the centre of voxel (0, 0, 0)

    @classmethod
    def for_case(cls, case: Case, origin_lps: tuple[float, float, float] | None = None) -> PatientFrame:
        """The frame of a case; by default the grid the DICOM export uses (centred on the LPS origin)."""
        from protocols.dicom.export import centred_grid

        origin = origin_lps or centred_grid(case.shape, case.spacing_mm).origin_mm
        return cls(case.shape, tuple(case.spacing_mm), tuple(float(v) for v in origin))

    def to_lps(self, index: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (i, j, k) -> (N, 3) LPS positions in mm."""
        index = np.asarray(index, dtype=np.float64)
        s0, s1, s2 = self.spacing_mm
        x0, y0, z0 = self.origin_lps
        return np.stack([x0 + index[:, 1] * s1, y0 + index[:, 0] * s0, z0 - index[:, 2] * s2], axis=1)

    def to_index(self, lps: np.ndarray) -> np.ndarray:
        """(N, 3) LPS positions in mm -> (N, 3) fractional voxel indices (i, j, k)."""
        lps = np.asarray(lps, dtype=np.float64)
        s0, s1, s2 = self.spacing_mm
        x0, y0, z0 = self.origin_lps
        return np.stack([(lps[:, 1] - y0) / s0, (lps[:, 0] - x0) / s1, (z0 - lps[:, 2]) / s2], axis=1)

    def mask_points(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat C-order indices and LPS positions of the voxels in a mask."""
        flat = np.flatnonzero(mask)
        return flat, self.to_lps(np.stack(np.unravel_index(flat, self.shape), axis=1))


@dataclass(frozen=True)
class Beam:
    """A coplanar static beam: IEC gantry angle, isocentre in LPS mm, source-axis distance."""

    gantry_deg: float
    isocenter_lps: tuple[float, float, float]
    sad_mm: float = SAD_MM

    @property
    def axes(self) -> np.ndarray:
        """Rows X_b, Y_b, Z_b of the beam-limiting-device frame in LPS (Z_b points to the source)."""
        g = np.deg2rad(self.gantry_deg)
        return np.array([[np.cos(g), np.sin(g), 0.0], [0.0, 0.0, 1.0], [np.sin(g), -np.cos(g), 0.0]])

    @property
    def source_lps(self) -> np.ndarray:
        return np.asarray(self.isocenter_lps) + self.sad_mm * self.axes[2]

    def bev(self, points_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u, w) of points projected to the isocentre plane and their distance t from the source along the axis."""
        p = np.asarray(points_lps, dtype=np.float64)
        d = [p[:, i] - self.isocenter_lps[i] for i in range(3)]
        x, _, z = self.axes  # coplanar: Y_b is the z axis, X_b and Z_b lie in the axial plane
        t = self.sad_mm - (d[0] * z[0] + d[1] * z[1])
        scale = self.sad_mm / t
        return (d[0] * x[0] + d[1] * x[1]) * scale, d[2] * scale, t



@dataclass(frozen=True)
class BeamletGrid:
    """A beam's fluence grid at the iso plane: columns along X_b, rows along Y_b, active beamlets marked.

    Planning grids have 5 mm columns and one row per MLC leaf pair (:func:`beamlet_grid`).
    """

    col_edges_mm: np.ndarray
    row_edges_mm: np.ndarray
    active: np.ndarray  # (n_rows, n_cols) bool

    @property
    def first_leaf(self) -> int:
        """The MLC leaf pair of row 0; an error when the rows are not the MLC's leaf pairs."""
        first = int(np.argmin(np.abs(MLC_BOUNDARIES_MM - self.row_edges_mm[0])))
        leaves = MLC_BOUNDARIES_MM[first: first + len(self.row_edges_mm)]
        if len(leaves) != len(self.row_edges_mm) or not np.allclose(leaves, self.row_edges_mm):
            raise ValueError(f"beamlet rows {self.row_edges_mm[[0, -1]]} mm are not {MLC_NAME} leaf pairs")
        return first

    @property
    def shape(self) -> tuple[int, int]:
        return self.active.shape

    @property
    def n_beamlets(self) -> int:
        return int(self.active.sum())

    def to_map(self, weights: np.ndarray) -> np.ndarray:
        """Active beamlet weights (row-major order) -> (n_rows, n_cols) fluence map, zero elsewhere."""
        fluence = np.zeros(self.active.shape, dtype=np.float64)
        fluence[self.active] = weights
        return fluence


def beamlet_grid(beam: Beam, target_points_lps: np.ndarray, margin_mm: float = BEAMLET_WIDTH_MM) -> BeamletGrid:
    """Beamlets covering the target's projection plus a margin, on 5 mm columns and the MLC's leaf pairs."""
    u, w, _ = beam.bev(target_points_lps)
    lo_u = np.floor((u.min() - margin_mm) / BEAMLET_WIDTH_MM) * BEAMLET_WIDTH_MM
    hi_u = np.ceil((u.max() + margin_mm) / BEAMLET_WIDTH_MM) * BEAMLET_WIDTH_MM
    half = MLC_MAX_FIELD_MM / 2
    if w.min() - margin_mm < -half or w.max() + margin_mm > half or lo_u < -half or hi_u > half:
        raise DataError(f"the target's projection at gantry {beam.gantry_deg:g} deg exceeds the "
                         f"{MLC_MAX_FIELD_MM:g} mm field of the {MLC_NAME}; check the target contours and isocentre")
    cols = np.arange(lo_u, hi_u + BEAMLET_WIDTH_MM / 2, BEAMLET_WIDTH_MM)
    first = int(np.searchsorted(MLC_BOUNDARIES_MM, w.min() - margin_mm, side="right") - 1)
    last = int(np.searchsorted(MLC_BOUNDARIES_MM, w.max() + margin_mm, side="left"))
    rows = MLC_BOUNDARIES_MM[first: last + 1]
    # A beamlet is active when its rectangle, grown by the margin, holds a projected target point.
    active = np.zeros((len(rows) - 1, len(cols) - 1), dtype=bool)
    iu = np.clip(np.searchsorted(cols, u, side="right") - 1, 0, len(cols) - 2)
    iw = np.clip(np.searchsorted(rows, w, side="right") - 1, 0, len(rows) - 2)
    active[iw, iu] = True
    grow_cols = int(np.ceil(margin_mm / BEAMLET_WIDTH_MM))
    grown = active.copy()
    for shift in range(1, grow_cols + 1):
        grown[:, shift:] |= active[:, :-shift]
        grown[:, :-shift] |= active[:, shift:]
    # Rows closer than the margin (edge to edge) take each other's columns.
    lower, upper = rows[:-1], rows[1:]
    gap = np.maximum(lower[None, :] - upper[:, None], lower[:, None] - upper[None, :])
    near = gap < margin_mm - 1e-9
    rows_grown = (near.astype(np.int32) @ grown.astype(np.int32)) > 0
    return BeamletGrid(cols, rows, rows_grown)


def isocenter_of(target_points_lps: np.ndarray) -> tuple[float, float, float]:
    """Isocentre at the targets' centroid, rounded to 1 mm as a planner would set it."""
    return tuple(float(v) for v in np.round(np.asarray(target_points_lps).mean(axis=0)))


def coplanar_beams(n_beams: int, isocenter_lps: tuple[float, float, float], start_deg: float = 0.0) -> list[Beam]:
    """Equally spaced coplanar beams (9 -> 0, 40, ..., 320 degrees)."""
    if n_beams < 1:
        raise ConfigError(f"need at least one beam, got {n_beams}; give --beams 1 or more")
    return [Beam(float((start_deg + i * 360.0 / n_beams) % 360.0), isocenter_lps) for i in range(n_beams)]
