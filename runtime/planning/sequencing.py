"""Step-and-shoot leaf sequencing: each beam's fluence map -> MLC segments with monitor units.

The map is quantised to a bounded number of intensity levels, then each leaf pair's row is decomposed by the
unidirectional leaf sweep of Bortfeld, Kahler, Waldron & Boyer, "X-ray field compensation with multileaf
collimators", Int. J. Radiat. Oncol. Biol. Phys. 28(3):723-730 (1994): left leaves stop where the profile rises,
right leaves where it falls, which delivers each row in its minimum number of monitor-unit levels. Segment k opens
the k-th interval of every row (rows with fewer intervals are closed); identical consecutive segments merge.
The sum of the segments reproduces the quantised map exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.errors import ConfigError
from runtime.planning.geometry import BeamletGrid

DEFAULT_LEVELS = 10


@dataclass
class Segment:
    """One MLC aperture: per grid row the left (X1 side) and right (X2 side) leaf tips in mm, and its MU."""

    left_mm: np.ndarray
    right_mm: np.ndarray
    weight_mu: float

    @property
    def open_rows(self) -> np.ndarray:
        return self.right_mm > self.left_mm


@dataclass
class BeamSequence:
    """A beam's segments on its beamlet grid, the quantisation step and the integer level map."""

    grid: BeamletGrid
    segments: list[Segment]
    level_mu: float
    levels: np.ndarray  # (n_rows, n_cols) int

    @property
    def mu(self) -> float:
        return float(sum(s.weight_mu for s in self.segments))

    def fluence(self) -> np.ndarray:
        """The delivered fluence map (MU) on the beamlet grid, from the segments' leaf positions."""
        centres = (self.grid.col_edges_mm[:-1] + self.grid.col_edges_mm[1:]) / 2
        out = np.zeros(self.grid.shape)
        for s in self.segments:
            out += s.weight_mu * ((centres[None, :] > s.left_mm[:, None]) & (centres[None, :] < s.right_mm[:, None]))
        return out

    def jaws_mm(self) -> tuple[float, float, float, float]:
        """X1, X2, Y1, Y2 jaw positions: the smallest rectangle holding every open leaf pair."""
        rows = self.grid.row_edges_mm
        opened = np.zeros(self.grid.shape[0], dtype=bool)
        x1, x2 = np.inf, -np.inf
        for s in self.segments:
            o = s.open_rows
            opened |= o
            if o.any():
                x1, x2 = min(x1, float(s.left_mm[o].min())), max(x2, float(s.right_mm[o].max()))
        if not opened.any():
            return 0.0, 0.0, 0.0, 0.0
        first, last = np.flatnonzero(opened)[[0, -1]]
        return x1, x2, float(rows[first]), float(rows[last + 1])


def sweep_row(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leaf-sweep decomposition of one row of integer levels: interval k opens columns [left[k], right[k])."""
    steps = np.diff(np.concatenate([[0], np.asarray(levels, dtype=np.int64), [0]]))
    edges = np.arange(steps.size)
    left = np.repeat(edges, np.maximum(steps, 0))
    right = np.repeat(edges, np.maximum(-steps, 0))
    return left, right


def quantise(fluence: np.ndarray, n_levels: int) -> tuple[np.ndarray, float]:
    """Round a non-negative fluence map to integer multiples of max / n_levels; returns (levels, step)."""
    if n_levels < 1:
        raise ConfigError(f"need at least one intensity level, got {n_levels}; give --levels 1 or more")
    peak = float(np.max(fluence, initial=0.0))
    if peak <= 0:
        return np.zeros(fluence.shape, dtype=np.int64), 0.0
    step = peak / n_levels
    return np.clip(np.round(fluence / step), 0, n_levels).astype(np.int64), step


def sequence_beam(fluence: np.ndarray, grid: BeamletGrid, n_levels: int = DEFAULT_LEVELS) -> BeamSequence:
    """Quantise a beam's fluence map (MU, rows x cols) and decompose it into step-and-shoot segments."""
    if fluence.shape != grid.shape:
        raise ValueError(f"fluence map {fluence.shape} does not match the beamlet grid {grid.shape}")
    levels, step = quantise(np.where(grid.active, fluence, 0.0), n_levels)
    rows = [sweep_row(r) for r in levels]
    n_segments = max((len(left) for left, _ in rows), default=0)
    edges = grid.col_edges_mm
    closed = float(edges[0])
    segments: list[Segment] = []
    for k in range(n_segments):
        left = np.full(grid.shape[0], closed)
        right = np.full(grid.shape[0], closed)
        for r, (lo, hi) in enumerate(rows):
            if k < len(lo):
                left[r], right[r] = edges[lo[k]], edges[hi[k]]
        if segments and np.array_equal(segments[-1].left_mm, left) and np.array_equal(segments[-1].right_mm, right):
            segments[-1].weight_mu += step
        else:
            segments.append(Segment(left, right, step))
    return BeamSequence(grid, segments, step, levels)
