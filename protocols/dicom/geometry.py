"""Voxel grids in DICOM patient coordinates (LPS, mm) and resampling between them.

Every volume fedrt reads from DICOM is turned into the case axis order of :data:`protocols.case.AXES`:
axis 0 runs anterior -> posterior (+y), axis 1 patient right -> left (+x), axis 2 superior -> inferior
(-z). With the directions fixed, a grid is its shape, spacing and the LPS position of voxel [0, 0, 0], and
resampling between two grids is separable: three 1-D linear (or nearest) interpolations. Only an image of another
frame of reference, rotated by a rigid registration, is sampled point by point (:func:`resample_rigid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from protocols.validation import CaseReport, Severity

# LPS direction of each case axis: +y (posterior), +x (left), -z (inferior).
AXIS_DIRECTIONS = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
AXIS_LPS = (1, 0, 2)  # which LPS coordinate each case axis runs along
AXIS_SIGN = (1.0, 1.0, -1.0)
SNAP = 1e-4  # fractional voxel indices this close to an integer are taken as that integer


@dataclass(frozen=True)
class VolumeGrid:
    """A voxel grid in case axis order; ``origin_mm`` is the LPS position (x, y, z) of voxel [0, 0, 0]."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]

    def axis_positions_mm(self, axis: int) -> np.ndarray:
        """Coordinate of each voxel centre along the axis: y for axis 0, x for axis 1, z for axis 2."""
        step = self.spacing_mm[axis] * AXIS_SIGN[axis]
        return self.origin_mm[AXIS_LPS[axis]] + step * np.arange(self.shape[axis])

    def to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """Fractional voxel indices (axis 0, 1, 2) of LPS points, shape (..., 3) -> (..., 3)."""
        offset = np.asarray(points_mm, dtype=np.float64) - np.asarray(self.origin_mm)
        return (offset @ AXIS_DIRECTIONS.T) / np.asarray(self.spacing_mm)

    def to_mm(self, index: np.ndarray) -> np.ndarray:
        """LPS positions of fractional voxel indices, shape (..., 3) -> (..., 3)."""
        steps = np.asarray(index, dtype=np.float64) * np.asarray(self.spacing_mm)
        return np.asarray(self.origin_mm) + steps @ AXIS_DIRECTIONS

    def same_as(self, other: VolumeGrid, tol_mm: float = 1e-3) -> bool:
        """Same shape, spacing and position (within ``tol_mm``)."""
        return (self.shape == other.shape
                and np.allclose(self.spacing_mm, other.spacing_mm, atol=tol_mm)
                and np.allclose(self.origin_mm, other.origin_mm, atol=tol_mm))


def aligned_grid(reference: VolumeGrid, cover: VolumeGrid) -> VolumeGrid:
    """A grid on ``reference``'s voxel lattice (every n-th voxel, n the nearest integer to ``cover``'s spacing over
    ``reference``'s) spanning the part of ``cover`` inside ``reference``: e.g. a dose grid aligned with the CT.
    """
    corners = reference.to_index(cover.to_mm(np.array([[0, 0, 0], np.asarray(cover.shape) - 1], dtype=float)))
    start, shape, spacing = [], [], []
    for axis in range(3):
        stride = max(1, round(cover.spacing_mm[axis] / reference.spacing_mm[axis]))
        low = max(0, int(np.ceil(corners[:, axis].min() - SNAP)))
        high = min(reference.shape[axis] - 1, int(np.floor(corners[:, axis].max() + SNAP)))
        if high < low:
            raise ValueError("the grids do not overlap")
        start.append(low)
        shape.append((high - low) // stride + 1)
        spacing.append(reference.spacing_mm[axis] * stride)
    origin = reference.to_mm(np.asarray(start, dtype=float))
    return VolumeGrid(tuple(shape), tuple(float(v) for v in spacing), tuple(float(v) for v in origin))


def _interp_axis(array: np.ndarray, axis: int, coords: np.ndarray, order: int, cval: float) -> np.ndarray:
    """Sample ``array`` along one axis at fractional indices; outside [0, n-1] gives ``cval``."""
    n = array.shape[axis]
    coords = np.where(np.abs(coords - np.round(coords)) < SNAP, np.round(coords), coords)
    inside = (coords >= 0) & (coords <= n - 1)
    shape = [1] * array.ndim
    shape[axis] = coords.size
    if order == 0:
        index = np.clip(np.floor(coords + 0.5).astype(np.int64), 0, n - 1)
        out = np.take(array, index, axis=axis)
    else:
        low = np.clip(np.floor(coords).astype(np.int64), 0, max(n - 2, 0))
        high = np.minimum(low + 1, n - 1)
        weight = (coords - low).reshape(shape).astype(np.float32)
        lo, hi = np.take(array, low, axis=axis), np.take(array, high, axis=axis)
        out = lo + (hi - lo) * weight
    return np.where(inside.reshape(shape), out, np.asarray(cval, dtype=out.dtype))


def resample_to_positions(array: np.ndarray, axis: int, source_mm: np.ndarray, target_mm: np.ndarray,
                          order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Resample one axis from increasing source positions to target positions (uneven sources allowed)."""
    coords = np.interp(target_mm, source_mm, np.arange(source_mm.size, dtype=np.float64), left=-1.0,
                       right=source_mm.size)
    return _interp_axis(array, axis, coords, order, cval)


def resample(array: np.ndarray, source: VolumeGrid, target: VolumeGrid, order: int = 1,
             cval: float = 0.0) -> np.ndarray:
    """Resample a volume from one grid onto another (linear for order 1, nearest for 0); ``cval`` outside."""
    if source.same_as(target):
        return array.copy()
    out = array.astype(np.float32) if order == 1 else array
    for axis in np.argsort(np.asarray(target.shape) / np.asarray(source.shape)):
        axis = int(axis)
        step_mm = source.spacing_mm[axis] * AXIS_SIGN[axis]
        coords = (target.axis_positions_mm(axis) - source.axis_positions_mm(axis)[0]) / step_mm
        out = _interp_axis(out, axis, coords, order, cval)
    return out


def resample_rigid(array: np.ndarray, source: VolumeGrid, target: VolumeGrid, source_from_target: np.ndarray,
                   cval: float = 0.0) -> np.ndarray:
    """Resample a volume (trilinear) onto a grid of another frame of reference; ``cval`` outside.

    ``source_from_target`` is a rigid 4x4 matrix taking LPS points of the target's frame into the source's. Without
    rotation the source grid is only moved and :func:`resample` (the separable path every image takes) does the work;
    a rotation samples each target voxel's position, one axial plane at a time to bound the memory.
    """
    rotation, shift = np.asarray(source_from_target[:3, :3]), np.asarray(source_from_target[:3, 3])
    if np.allclose(rotation, np.eye(3), atol=1e-9):
        origin = tuple(float(v) for v in np.asarray(source.origin_mm) - shift)
        return resample(array, VolumeGrid(source.shape, source.spacing_mm, origin), target, order=1, cval=cval)
    values = np.asarray(array, dtype=np.float32)
    upper = np.asarray(source.shape, dtype=np.float64) - 1
    plane = np.stack(np.meshgrid(np.arange(target.shape[0]), np.arange(target.shape[1]), indexing="ij"), axis=-1)
    out = np.empty(target.shape, dtype=np.float32)
    for k in range(target.shape[2]):
        index = np.concatenate([plane, np.full((*plane.shape[:2], 1), k)], axis=-1)
        coords = source.to_index(target.to_mm(index) @ rotation.T + shift)
        coords = np.where(np.abs(coords - np.round(coords)) < SNAP, np.round(coords), coords)
        inside = np.all((coords >= 0) & (coords <= upper), axis=-1)
        sampled = ndimage.map_coordinates(values, np.moveaxis(coords, -1, 0), order=1, mode="nearest",
                                          output=np.float32)
        out[:, :, k] = np.where(inside, sampled, np.float32(cval))
    return out


@dataclass(frozen=True)
class SliceStack:
    """Image planes as stored: pixels (n, rows, cols), each plane's ImagePositionPatient, one orientation."""

    pixels: np.ndarray
    positions_mm: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    pixel_spacing_mm: tuple[float, float]  # DICOM PixelSpacing: (between rows, between columns)


ORIENTATION_TOLERANCE = 1e-4  # direction cosines this close to an axis count as that axis (about 0.8 deg)
POSITION_TOLERANCE_MM = 0.05


def stack_to_volume(stack: SliceStack, report: CaseReport, path: Path, what: str,
                    lone_plane_mm: float | None = None) -> tuple[np.ndarray, VolumeGrid] | None:
    """Turn image planes into a volume in case axis order on a uniform grid, or None after an ERROR finding.

    Checks what silently corrupts geometry: non-axial or rotated planes, gantry tilt, duplicate planes and
    missing planes; uneven but gap-free plane spacing is resampled to the median spacing (a WARNING). A single
    plane is a volume one voxel deep only when ``lone_plane_mm`` (its slice thickness) is given.
    """
    fix_resample = "resample the series to an axial, untilted grid (e.g. plastimatch convert) and re-export it"
    row, col = stack.row_direction, stack.column_direction
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        report.add(Severity.ERROR, "bad-orientation", f"{what}: ImageOrientationPatient {[*row, *col]} is not "
                   "two orthogonal unit vectors", path, "re-export the series from the scanner or TPS")
        return None
    row_axis, col_axis = int(np.argmax(np.abs(row))), int(np.argmax(np.abs(col)))
    if {row_axis, col_axis} != {0, 1} or 1 - abs(row[row_axis]) > ORIENTATION_TOLERANCE or 1 - abs(
            col[col_axis]) > ORIENTATION_TOLERANCE:
        report.add(Severity.ERROR, "non-axial", f"{what}: planes are not axial and aligned with the patient axes "
                   f"(ImageOrientationPatient {np.round([*row, *col], 5).tolist()})", path, fix_resample)
        return None
    positions = stack.positions_mm
    order = np.argsort(-positions[:, 2], kind="stable")  # superior first: case axis 2 is -z
    positions, pixels = positions[order], stack.pixels[order]
    if len(positions) < 2 and lone_plane_mm is None:
        report.add(Severity.ERROR, "too-few-slices", f"{what}: {len(positions)} plane(s); a volume needs at least "
                   "2", path, "export the whole series")
        return None
    drift = np.abs(positions[:, :2] - positions[0, :2]).max()
    if drift > POSITION_TOLERANCE_MM:
        report.add(Severity.ERROR, "gantry-tilt", f"{what}: plane positions drift {drift:.2f} mm sideways along "
                   "the stack (gantry tilt or sheared series)", path, fix_resample)
        return None
    z = positions[:, 2]
    steps = -np.diff(z)
    if np.any(steps < POSITION_TOLERANCE_MM):
        at = z[1:][steps < POSITION_TOLERANCE_MM]
        report.add(Severity.ERROR, "duplicate-slice", f"{what}: {at.size} plane(s) share a position with another "
                   f"(z = {', '.join(f'{v:g}' for v in at[:5])} mm)", path,
                   "remove the duplicate files or separate the acquisitions into their own series")
        return None
    spacing_z = float(np.median(steps)) if steps.size else float(lone_plane_mm)
    gaps = steps > 1.5 * spacing_z
    if gaps.any():
        where = ", ".join(f"{z[i]:g}..{z[i + 1]:g}" for i in np.flatnonzero(gaps)[:5])
        report.add(Severity.ERROR, "missing-slice", f"{what}: planes missing between z = {where} mm (spacing "
                   f"{spacing_z:g} mm)", path, "export the complete series (all slices)")
        return None
    if row_axis == 0:  # rows run along y, columns along x: pixels are already (y, x)
        volume, flips = pixels.transpose(1, 2, 0), (col[1] < 0, row[0] < 0)
        spacing_yx = stack.pixel_spacing_mm
        corner = (0 if row[0] > 0 else pixels.shape[2] - 1) * spacing_yx[1] * row + (
            0 if col[1] > 0 else pixels.shape[1] - 1) * spacing_yx[0] * col
    else:
        volume, flips = pixels.transpose(2, 1, 0), (row[1] < 0, col[0] < 0)
        spacing_yx = stack.pixel_spacing_mm[::-1]
        corner = (0 if row[1] > 0 else pixels.shape[2] - 1) * spacing_yx[0] * row + (
            0 if col[0] > 0 else pixels.shape[1] - 1) * spacing_yx[1] * col
    for axis, flip in enumerate(flips):
        if flip:
            volume = np.flip(volume, axis)
    origin = positions[0] + corner
    grid = VolumeGrid(tuple(volume.shape), (float(spacing_yx[0]), float(spacing_yx[1]), spacing_z),
                      (float(origin[0]), float(origin[1]), float(z[0])))
    if steps.size and np.abs(steps - spacing_z).max() > max(0.01 * spacing_z, 0.01):
        report.add(Severity.WARNING, "uneven-spacing", f"{what}: plane spacing varies ({steps.min():g}.."
                   f"{steps.max():g} mm); resampled to {spacing_z:g} mm", path,
                   "none needed; export with uniform slice spacing to avoid the interpolation")
        count = int(np.floor((z[0] - z[-1]) / spacing_z + 1e-6)) + 1
        grid = VolumeGrid((*grid.shape[:2], count), grid.spacing_mm, grid.origin_mm)
        volume = resample_to_positions(volume, 2, -z, -grid.axis_positions_mm(2), order=1)
    return np.ascontiguousarray(volume), grid
