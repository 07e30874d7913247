"""Contours <-> masks: even-odd filling with holes, and exact mask -> contour -> mask round trips."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from protocols.dicom.raster import fill_polygons, trace_polygons


def square(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def test_pixel_centres_inside_a_polygon_are_filled():
    mask = fill_polygons([square(1.5, 2.5, 4.5, 5.5)], (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[3:6, 2:5] = True  # rows 3..5 (y), columns 2..4 (x)
    np.testing.assert_array_equal(mask, expected)


def test_a_contour_inside_another_is_a_hole_and_one_inside_that_an_island():
    rings = [square(0.5, 0.5, 8.5, 8.5), square(2.5, 2.5, 6.5, 6.5), square(3.5, 3.5, 5.5, 5.5)]
    mask = fill_polygons(rings, (10, 10))
    assert mask[1, 1] and not mask[3, 3] and mask[4, 4]
    assert mask.sum() == 64 - 16 + 4


def test_vertices_on_pixel_rows_are_not_counted_twice():
    diamond = np.array([[5.0, 1.0], [9.0, 5.0], [5.0, 9.0], [1.0, 5.0]])
    mask = fill_polygons([diamond], (11, 11))
    assert mask[5].sum() == 8  # the row through the side vertices: x in [1, 9) -> centres 1..8
    assert not mask[1].any() and not mask[9].any()  # top and bottom vertices: edges are half-open in y
    assert mask[2].sum() == 2 and mask[8].sum() == 2


def test_tracing_then_filling_gives_back_random_masks_exactly():
    rng = np.random.default_rng(7)
    for trial in range(60):
        mask = rng.random((30, 40)) > 0.5
        if trial % 2:
            mask = ndimage.binary_opening(mask)
        np.testing.assert_array_equal(fill_polygons(trace_polygons(mask), mask.shape), mask)


def test_outlines_of_a_ring_are_an_outer_contour_and_a_hole():
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2:10] = True
    mask[5:7, 5:7] = False
    rings = trace_polygons(mask)
    assert len(rings) == 2
    assert all(len(r) == 4 or len(r) == 8 for r in rings)  # straight edges collapse to corners
    np.testing.assert_array_equal(fill_polygons(rings, mask.shape), mask)


def test_empty_inputs_give_empty_outputs():
    assert not fill_polygons([], (5, 5)).any()
    assert trace_polygons(np.zeros((5, 5), bool)) == []
