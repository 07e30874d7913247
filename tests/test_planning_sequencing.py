"""Leaf sequencing: the segments deliver the fluence within the level quantisation, with valid leaf positions."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.planning.geometry import MLC_BOUNDARIES_MM, BeamletGrid
from runtime.planning.sequencing import quantise, sequence_beam, sweep_row


def leaf_grid(n_rows: int = 12, n_cols: int = 16, first_leaf: int = 24) -> BeamletGrid:
    cols = -40.0 + 5.0 * np.arange(n_cols + 1)
    return BeamletGrid(cols, MLC_BOUNDARIES_MM[first_leaf: first_leaf + n_rows + 1], np.ones((n_rows, n_cols), bool))


def test_sweep_row_delivers_the_profile_in_its_minimum_mu():
    profile = np.array([0, 2, 3, 1, 1, 4, 0, 2])
    left, right = sweep_row(profile)
    delivered = np.zeros(len(profile), dtype=int)
    for lo, hi in zip(left, right, strict=True):
        assert lo < hi
        delivered[lo:hi] += 1
    np.testing.assert_array_equal(delivered, profile)
    assert len(left) == int(np.sum(np.maximum(np.diff(np.concatenate([[0], profile])), 0)))  # 2+1+3+2 = 8


@pytest.mark.parametrize("levels", [5, 10, 20])
def test_segments_reproduce_fluence_within_the_quantisation(levels):
    rng = np.random.default_rng(levels)
    grid = leaf_grid()
    fluence = np.clip(rng.gamma(2.0, 20.0, grid.shape) * (rng.uniform(size=grid.shape) > 0.2), 0, None)
    seq = sequence_beam(fluence, grid, levels)
    delivered = seq.fluence()
    q, step = quantise(fluence, levels)
    np.testing.assert_allclose(delivered, q * step, atol=1e-9)
    assert np.max(np.abs(delivered - fluence)) <= step / 2 + 1e-9
    assert seq.mu == pytest.approx(sum(s.weight_mu for s in seq.segments))
    assert len(seq.segments) <= levels * grid.shape[1]


def test_leaves_stay_within_the_jaws_and_never_cross():
    rng = np.random.default_rng(0)
    grid = leaf_grid()
    seq = sequence_beam(rng.uniform(0, 10, grid.shape), grid, 8)
    x1, x2, y1, y2 = seq.jaws_mm()
    assert (y1, y2) == (grid.row_edges_mm[0], grid.row_edges_mm[-1])
    for s in seq.segments:
        assert np.all(s.left_mm <= s.right_mm)
        o = s.open_rows
        assert np.all(s.left_mm[o] >= x1) and np.all(s.right_mm[o] <= x2)
        assert s.weight_mu > 0


def test_zero_fluence_gives_no_segment():
    grid = leaf_grid()
    seq = sequence_beam(np.zeros(grid.shape), grid)
    assert seq.segments == [] and seq.mu == 0.0
