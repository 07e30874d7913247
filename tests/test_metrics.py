"""Dose and contour metrics on hand-computable synthetic cases at anisotropic spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocols.metrics import (
    dice,
    dvh_curve,
    dvh_metric,
    evaluate_goals,
    hausdorff95_mm,
    openkbp_dose_error,
    openkbp_dvh_errors,
)
from protocols.protocol import protocol_from_dict

SPACING_MM = (3.906, 3.906, 2.5)
VOXEL_MM3 = float(np.prod(SPACING_MM))  # 38.14 mm^3: 0.1 cc is round(2.62) = 3 voxels


def ramp_case() -> tuple[np.ndarray, np.ndarray]:
    """Build a 4 x 5 x 5 structure whose 100 voxels hold the doses 1, 2, ..., 100 Gy, in a larger grid."""
    dose = np.zeros((8, 8, 8))
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[2:6, 1:6, 3:8] = True
    dose[mask] = np.arange(1.0, 101.0)
    return dose, mask


def box(shape, start, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = True
    return mask


def test_d01cc_on_ramp_uses_openkbp_voxel_count():
    dose, mask = ramp_case()
    # 3 voxels of 100 -> percentile 97 -> position 0.97 * 99 = 96.03 in the sorted doses 1..100.
    assert dvh_metric(dose, mask, "D0.1cc", VOXEL_MM3) == pytest.approx(97.03)
    # 10 mm^3 voxels: 0.1 cc is 10 voxels -> percentile 90 -> 90.1 Gy.
    assert dvh_metric(dose, mask, "D0.1cc", 10.0) == pytest.approx(90.1)


def test_a_cc_dose_for_more_than_the_structure_holds_is_its_minimum_dose():
    dose, mask = ramp_case()
    assert dvh_metric(dose, mask, "D50cc", VOXEL_MM3) == pytest.approx(1.0)


def test_percent_and_mean_metrics_on_ramp():
    dose, mask = ramp_case()
    assert dvh_metric(dose, mask, "D95", VOXEL_MM3) == pytest.approx(5.95)
    assert dvh_metric(dose, mask, "D99", VOXEL_MM3) == pytest.approx(1.99)
    assert dvh_metric(dose, mask, "D1", VOXEL_MM3) == pytest.approx(99.01)
    assert dvh_metric(dose, mask, "Dmean", VOXEL_MM3) == pytest.approx(50.5)


def test_metrics_of_float32_dose_are_computed_in_float64():
    dose = np.full((4, 4, 4), 70.1, dtype=np.float32)
    mask = np.ones((4, 4, 4), dtype=bool)
    assert dvh_metric(dose, mask, "Dmean", VOXEL_MM3) == float(np.float32(70.1))


def test_dvh_metric_rejects_empty_structure_and_unknown_metric():
    dose, mask = ramp_case()
    with pytest.raises(ValueError, match="no voxels"):
        dvh_metric(dose, np.zeros_like(mask), "Dmean", VOXEL_MM3)
    with pytest.raises(ValueError, match="unknown DVH metric"):
        dvh_metric(dose, mask, "V20", VOXEL_MM3)


def test_dvh_curve_is_cumulative_fraction_at_or_above_each_dose():
    dose, mask = ramp_case()
    curve = dvh_curve(dose, mask, [0.0, 50.0, 100.0, 101.0])
    np.testing.assert_allclose(curve.volume_fraction, [1.0, 0.51, 0.01, 0.0])
    default = dvh_curve(dose, mask, bins=11)
    np.testing.assert_allclose(default.dose_gy, np.linspace(0, 100, 11))
    assert default.volume_fraction[0] == 1.0
    assert np.all(np.diff(default.volume_fraction) <= 0)


def test_dose_error_sums_all_voxels_over_possible_dose_voxels():
    reference = np.zeros((4, 4, 4))
    predicted = np.zeros((4, 4, 4))
    possible = np.zeros((4, 4, 4), dtype=bool)
    possible[:2] = True  # 32 voxels
    predicted[0, 0, 0] = 8.0  # inside the mask
    reference[3, 3, 3] = 8.0  # outside the mask: still counted
    assert openkbp_dose_error(reference, predicted, possible) == pytest.approx(16.0 / 32.0)


def test_openkbp_dvh_errors_pick_metrics_by_role_and_skip_absent_structures(protocol):
    dose, mask = ramp_case()
    structures = {"SpinalCord": mask, "PTV70": mask, "Brainstem": np.zeros_like(mask)}
    errors = openkbp_dvh_errors(dose, dose + 2.0, structures, VOXEL_MM3, protocol)
    assert [(e.structure, e.metric) for e in errors] == [
        ("SpinalCord", "D0.1cc"), ("SpinalCord", "Dmean"),
        ("PTV70", "D99"), ("PTV70", "D95"), ("PTV70", "D1")]
    assert all(e.abs_error_gy == pytest.approx(2.0) for e in errors)
    assert errors[0].reference_gy == pytest.approx(97.03)


def test_dice_of_two_offset_boxes():
    a = box((20, 20, 20), (0, 0, 0), (10, 10, 10))
    b = box((20, 20, 20), (5, 0, 0), (10, 10, 10))
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))


@pytest.mark.parametrize(("axis", "k"), [(2, 1), (2, 2), (2, 3), (0, 2)])
def test_hd95_of_boxes_offset_along_one_axis_is_offset_in_mm(axis, k):
    size = [20, 20, 20]
    size[axis] = 6
    start = [4, 4, 4]
    shifted = list(start)
    shifted[axis] += k
    a = box((32, 32, 32), start, size)
    b = box((32, 32, 32), shifted, size)
    assert hausdorff95_mm(a, b, SPACING_MM) == pytest.approx(SPACING_MM[axis] * k)
    assert hausdorff95_mm(b, a, SPACING_MM) == pytest.approx(SPACING_MM[axis] * k)


def test_hd95_conventions_for_identical_and_empty_masks():
    a = box((16, 16, 16), (2, 2, 2), (5, 5, 5))
    empty = np.zeros_like(a)
    assert hausdorff95_mm(a, a, SPACING_MM) == 0.0
    assert math.isinf(hausdorff95_mm(a, empty, SPACING_MM))
    assert math.isnan(hausdorff95_mm(empty, empty, SPACING_MM))


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
def test_hd95_matches_monai_on_ellipsoids_at_anisotropic_spacing():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance

    grid = np.indices((48, 48, 40)).astype(float)

    def ellipsoid(center, radii):
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii, strict=True)) <= 1.0

    a = ellipsoid((22, 24, 20), (10, 8, 12))
    b = ellipsoid((25, 23, 17), (8, 9, 10)) | ellipsoid((10, 10, 30), (3, 3, 3))
    ours = hausdorff95_mm(a, b, SPACING_MM)
    theirs = compute_hausdorff_distance(torch.from_numpy(a[None, None]), torch.from_numpy(b[None, None]),
                                        percentile=95, spacing=list(SPACING_MM))
    assert ours == pytest.approx(float(theirs), rel=1e-5)
    assert ours > 0


def goal_protocol():
    return protocol_from_dict({
        "name": "goal-test", "fractions": 30,
        "grid": {"shape": [8, 8, 8], "spacing_mm": list(SPACING_MM)},
        "structures": [{"name": "Cord", "kind": "oar"}, {"name": "Parotid", "kind": "oar"},
                       {"name": "PTV60", "kind": "target", "prescription_gy": 60.0}],
        "goals": [{"structure": "Cord", "metric": "D0.1cc", "op": "<=", "limit_gy": 45.0},
                  {"structure": "PTV60", "metric": "D95", "op": ">=", "limit_rx": 0.95},
                  {"structure": "Parotid", "metric": "Dmean", "op": "<=", "limit_gy": 26.0}],
    })


def test_goals_pass_and_fail_both_ways_and_absent_structure_is_none():
    protocol = goal_protocol()
    cord = box((8, 8, 8), (0, 0, 0), (2, 8, 8))
    ptv = box((8, 8, 8), (4, 0, 0), (4, 8, 8))
    structures = {"Cord": cord, "PTV60": ptv}
    good = np.where(cord, 40.0, np.where(ptv, 60.0, 0.0))
    bad = np.where(cord, 50.0, np.where(ptv, 55.0, 0.0))

    results = evaluate_goals(good, structures, VOXEL_MM3, protocol)
    assert [r.goal.structure for r in results] == ["Cord", "PTV60", "Parotid"]
    assert [r.passed for r in results] == [True, True, None]
    assert results[0].value_gy == pytest.approx(40.0)
    assert results[1].limit_gy == pytest.approx(57.0)  # 0.95 x 60 Gy prescription
    assert results[2].value_gy is None

    assert [r.passed for r in evaluate_goals(bad, structures, VOXEL_MM3, protocol)] == [False, False, None]


def test_shipped_protocol_goals_are_all_evaluated(protocol):
    ptv70 = box((8, 8, 8), (0, 0, 0), (8, 8, 8))
    results = evaluate_goals(np.full((8, 8, 8), 70.0), {"PTV70": ptv70}, VOXEL_MM3, protocol)
    assert [r.goal for r in results] == list(protocol.goals)
    assert all(r.passed for r in results if r.goal.structure == "PTV70")
    assert all(r.passed is None for r in results if r.goal.structure != "PTV70")


def test_gamma_pass_rate_is_pymedphys_gamma_with_a_global_criterion_and_a_low_dose_cutoff():
    from protocols.metrics import gamma_pass_rate

    z, y, x = np.meshgrid(np.arange(20), np.arange(24), np.arange(22), indexing="ij")
    reference = 60.0 * np.exp(-((x - 11.0) ** 2 + (y - 12.0) ** 2 + (z - 10.0) ** 2) / 40.0)
    spacing = (2.0, 2.0, 2.0)
    assert gamma_pass_rate(reference, reference, spacing) == 1.0
    shifted = np.roll(reference, 1, axis=2)  # 2 mm off along one axis: passes 2%/2 mm, fails 1%/1 mm in the slope
    assert gamma_pass_rate(reference, shifted, spacing) == 1.0
    assert gamma_pass_rate(reference, shifted, spacing, dose_percent=1.0, distance_mm=1.0) < 0.7
    hot = reference * 1.03  # 3% of the maximum near the peak: fails 2%, passes 3%
    assert gamma_pass_rate(reference, hot, spacing, distance_mm=0.1) < 1.0
    assert gamma_pass_rate(reference, hot, spacing, dose_percent=3.0, distance_mm=0.1) == 1.0
