"""The photon engine on water: depth dose, inverse square, symmetry, MU calibration, linearity, adjoint."""

from __future__ import annotations

import numpy as np
import pytest
from planning_phantoms import water_box

from runtime.planning.density import DensityTable
from runtime.planning.engine import DoseEngine
from runtime.planning.geometry import Beam, BeamletGrid, PatientFrame

FIELD = np.arange(-50.0, 50.1, 5.0)  # 10 x 10 cm of 5 mm beamlets


def open_field(half_mm: float = 50.0) -> BeamletGrid:
    edges = np.arange(-half_mm, half_mm + 0.1, 5.0)
    return BeamletGrid(edges, edges, np.ones((len(edges) - 1, len(edges) - 1), dtype=bool))


def surface_y(frame: PatientFrame, air_rows: int = 20) -> float:
    """LPS y of the water surface of :func:`water_box`."""
    return float(frame.to_lps(np.array([[air_rows - 0.5, 0, 0]]))[0, 1])


def engine_for(case, gantry=0.0, iso_depth_mm=0.0, grid=None, mu_scale=None):
    frame = PatientFrame.for_case(case)
    iso = (0.0, surface_y(frame) + iso_depth_mm, 0.0)
    grid = grid or open_field()
    return DoseEngine.build(DensityTable()(case.ct_hu), frame, [Beam(gantry, iso)], [grid], mu_scale=mu_scale), iso


def axis_dose(engine, depths_mm):
    """Dose of unit weights on the central axis of a gantry-0 beam at depths below the water surface."""
    surface = surface_y(engine.frame)
    points = np.stack([np.zeros_like(depths_mm), surface + depths_mm, np.zeros_like(depths_mm)], axis=1)
    return engine.dose_from_weights(np.ones(engine.n_beamlets), points)


@pytest.fixture(scope="module")
def water():
    return water_box()


@pytest.fixture(scope="module")
def ssd100(water):
    """10 x 10 cm field with the isocentre on the surface (SSD 100 cm)."""
    return engine_for(water)


def test_depth_dose_has_buildup_then_6mv_falloff(ssd100):
    engine, _ = ssd100
    depths = np.arange(1.0, 201.0, 1.0)
    dose = axis_dose(engine, depths)
    dmax = depths[np.argmax(dose)]
    assert 8.0 <= dmax <= 20.0
    assert dose[0] < 0.8 * dose.max()  # skin sparing
    pdd10 = dose[depths == 100.0][0] / dose.max()
    assert 0.62 <= pdd10 <= 0.70  # published 6 MV: about 67 % at 10 cm, 10 x 10, SSD 100
    assert np.all(np.diff(dose[depths >= 30]) < 0)  # monotone fall-off beyond the build-up


def test_one_mu_gives_one_centigray_at_dmax_reference(ssd100):
    engine, _ = ssd100
    dose = axis_dose(engine, np.arange(1.0, 40.0, 0.5))
    assert dose.max() == pytest.approx(0.01, rel=0.01)


def test_dose_follows_inverse_square_with_distance(water):
    near, _ = engine_for(water, iso_depth_mm=0.0)  # SSD 1000
    far, _ = engine_for(water, iso_depth_mm=-100.0, grid=open_field(50.0 * 1000 / 1100))  # SSD 1100
    depth = np.array([50.0])
    ratio = axis_dose(far, depth)[0] / axis_dose(near, depth)[0]
    # Same field size at the surface; only the distance to the source differs.
    assert ratio == pytest.approx((1050.0 / 1150.0) ** 2, rel=0.03)


def test_profile_is_symmetric_about_the_axis(ssd100):
    engine, _ = ssd100
    frame = engine.frame
    x = np.arange(-90.0, 90.1, 2.5)
    points = np.stack([x, np.full_like(x, surface_y(frame) + 100.0), np.zeros_like(x)], axis=1)
    profile = engine.dose_from_weights(np.ones(engine.n_beamlets), points)
    np.testing.assert_allclose(profile, profile[::-1], rtol=2e-3, atol=1e-6 * profile.max())
    edge = profile[np.argmin(np.abs(x - 55.0))] / profile.max()  # field edge at depth 100: 55 mm
    assert 0.3 < edge < 0.7


def test_opposed_lateral_beams_mirror_each_other(water):
    case = water
    frame = PatientFrame.for_case(case)
    iso = (0.0, surface_y(frame) + 120.0, 0.0)
    grid = open_field(30.0)
    engine = DoseEngine.build(DensityTable()(case.ct_hu), frame, [Beam(90.0, iso), Beam(270.0, iso)], [grid, grid])
    x = np.arange(-60.0, 60.1, 5.0)
    points = np.stack([x, np.full_like(x, iso[1]), np.zeros_like(x)], axis=1)
    n = grid.n_beamlets
    left = engine.dose_from_weights(np.concatenate([np.ones(n), np.zeros(n)]), points)
    right = engine.dose_from_weights(np.concatenate([np.zeros(n), np.ones(n)]), points)
    np.testing.assert_allclose(left, right[::-1], rtol=1e-3, atol=1e-6)
    assert left[-1] > left[0]  # gantry 90 enters from the patient's left (+x)


def test_dose_is_linear_in_fluence_and_adjoint_matches(ssd100):
    engine, _ = ssd100
    rng = np.random.default_rng(3)
    frame = engine.frame
    points = frame.to_lps(rng.uniform([20, 0, 0], [99, 39, 39], size=(300, 3)))
    influence = engine.influence(points)
    x, y = rng.uniform(0, 2, engine.n_beamlets), rng.uniform(0, 2, engine.n_beamlets)
    np.testing.assert_allclose(influence.dose(2.0 * x + 3.0 * y), 2.0 * influence.dose(x) + 3.0 * influence.dose(y),
                               rtol=1e-4, atol=1e-9)
    g = rng.normal(size=len(points))
    assert float(influence.dose(x) @ g) == pytest.approx(float(x @ influence.adjoint(g)), rel=1e-4)
    np.testing.assert_allclose(influence.dose(x), engine.dose_from_weights(x, points), rtol=1e-4, atol=1e-9)


def test_open_segment_image_equals_beamlet_image(ssd100):
    engine, _ = ssd100
    kernel = engine.kernels[0]
    grid = kernel.grid
    n_rows = grid.shape[0]
    segment = kernel.aperture_image(grid.row_edges_mm, np.full((1, n_rows), -50.0), np.full((1, n_rows), 50.0),
                                    np.array([2.0]), (-50.0, 50.0, -50.0, 50.0))
    np.testing.assert_allclose(segment, kernel.fluence_image(np.full(grid.n_beamlets, 2.0)), atol=1e-6)
