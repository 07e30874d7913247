"""Contours <-> masks on one image plane, in pixel coordinates (x = column, y = row, centres at integers).

Polygons -> mask is our own even-odd scanline fill (numpy only): every crossing of a pixel-centre row by a
polygon edge flips the parity of the pixels to its right, so several contours of one ROI on one slice
combine by the even-odd rule (a contour inside another is a hole), as DICOM RT readers commonly do. Edges
are half-open in y, so a vertex on a row is counted once. Mask -> polygons traces the 0.5 iso-line of the
mask with ``contourpy`` (marching squares; it ships with matplotlib, so no scikit-image is needed): the
line runs half-way between inside and outside pixel centres, so filling it again gives back the mask.
"""

from __future__ import annotations

import contourpy
import numpy as np


def fill_polygons(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (rows, cols) mask of the pixel centres inside the polygons by the even-odd rule.

    Each polygon is an (N, 2) array of (x, y) = (column, row) vertices, closed implicitly.
    """
    rows, cols = shape
    edges = [np.concatenate([p, np.roll(p, -1, axis=0)], axis=1) for p in polygons if len(p) >= 3]
    if not edges:
        return np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = np.concatenate(edges).T
    low, high = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(low), 0, rows).astype(np.int64)  # rows j with low <= j < high
    last = np.clip(np.ceil(high), 0, rows).astype(np.int64)
    count = last - first
    keep = count > 0
    if not keep.any():
        return np.zeros(shape, dtype=bool)
    x0, y0, x1, y1, first, count = x0[keep], y0[keep], x1[keep], y1[keep], first[keep], count[keep]
    edge = np.repeat(np.arange(count.size), count)
    row = first[edge] + (np.arange(edge.size) - np.repeat(np.cumsum(count) - count, count))
    t = (row - y0[edge]) / (y1[edge] - y0[edge])
    x = x0[edge] + t * (x1[edge] - x0[edge])
    column = np.clip(np.ceil(x), 0, cols).astype(np.int64)  # first pixel centre at or right of the crossing
    top, left = int(row.min()), int(column.min())  # fill only the polygons' bounding box
    flips = np.zeros((int(row.max()) - top + 1, int(column.max()) - left + 1), dtype=np.int32)
    np.add.at(flips, (row - top, column - left), 1)
    mask = np.zeros(shape, dtype=bool)
    inside = (np.cumsum(flips, axis=1) % 2).astype(bool)
    mask[top:top + inside.shape[0], left:left + inside.shape[1]] = inside[:, : cols - left]
    return mask


def trace_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines (outer and hole rings) of a 2-D mask as (N, 2) arrays of (column, row) vertices."""
    padded = np.pad(mask.astype(np.float32), 1)
    lines = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.5)
    rings = []
    for line in lines:
        ring = np.asarray(line, dtype=np.float64)[:-1] - 1.0  # drop the repeated closing vertex, unpad
        ring = _drop_collinear(ring)
        if len(ring) >= 3:
            rings.append(ring)
    return rings


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove vertices that lie on the straight line between their neighbours (keeps files small)."""
    before, after = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    cross = (ring[:, 0] - before[:, 0]) * (after[:, 1] - ring[:, 1]) - (ring[:, 1] - before[:, 1]) * (
        after[:, 0] - ring[:, 0])
    return ring[np.abs(cross) > 1e-9]
