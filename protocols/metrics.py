"""Dose, contour and image metrics: DVH points, the OpenKBP scores, Dice and HD95, a protocol's clinical goals,
and the synthetic-CT scores of SynthRAD (MAE, PSNR, SSIM inside the body).

Pure numpy/scipy, so the server, the clients and the CLI can score doses without torch. Doses are evaluated
in float64 whatever their stored dtype, as the challenge's evaluator (which loads everything into float64)
does. Metric names follow the protocol YAML: ``Dmean``, ``D<x>cc`` (hottest x cc) and ``D<p>`` (p % of the
volume), so ``D0.1cc``, ``D99``, ``D95`` and ``D1`` are the OpenKBP DVH metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from protocols.errors import ConfigError, DataError
from protocols.protocol import METRIC_PATTERN, ClinicalGoal, Protocol

MM3_PER_CC = 1000.0
OPENKBP_OAR_METRICS = ("D0.1cc", "Dmean")
OPENKBP_TARGET_METRICS = ("D99", "D95", "D1")


def structure_dose(dose_gy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Return the doses of the voxels inside ``mask`` as float64; an empty structure is an error."""
    if dose_gy.shape != mask.shape:
        raise ValueError(f"dose shape {dose_gy.shape} does not match mask shape {mask.shape}")
    values = np.asarray(dose_gy[np.asarray(mask, dtype=bool)], dtype=np.float64)
    if values.size == 0:
        raise ValueError("the structure has no voxels: DVH metrics are undefined")
    return values


def _dose_at_percent(values: np.ndarray, percent: float) -> float:
    """D_p%: the dose received by at least ``percent`` % of the structure (linear percentile 100 - p)."""
    return float(np.percentile(values, 100.0 - percent))


def _dose_at_cc(values: np.ndarray, volume_cc: float, voxel_volume_mm3: float) -> float:
    """D_x cc: minimum dose to the hottest ``volume_cc``, as OpenKBP's D_0.1cc defines it.

    With k = max(1, round(x cc / voxel volume)) voxels out of n, the linear percentile 100 - k / n * 100
    (clamped at 0, the minimum dose, when the structure is smaller than x cc).
    """
    voxels = max(1.0, float(np.round(volume_cc * MM3_PER_CC / voxel_volume_mm3)))
    return float(np.percentile(values, max(0.0, 100.0 - voxels / values.size * 100.0)))


def _metric_from_values(values: np.ndarray, metric: str, voxel_volume_mm3: float) -> float:
    match = METRIC_PATTERN.match(metric)
    if match is None:
        raise ConfigError(f"unknown DVH metric {metric!r}: use Dmean, D<x>cc or D<p>")
    if metric == "Dmean":
        return float(values.mean())
    if match["cc"] is not None:
        return _dose_at_cc(values, float(match["cc"]), voxel_volume_mm3)
    return _dose_at_percent(values, float(match["pct"]))


def dvh_metric(dose_gy: np.ndarray, mask: np.ndarray, metric: str, voxel_volume_mm3: float) -> float:
    """One DVH point named as in the protocol: ``Dmean``, ``D<x>cc`` or ``D<p>``."""
    return _metric_from_values(structure_dose(dose_gy, mask), metric, voxel_volume_mm3)


@dataclass(frozen=True)
class DVHCurve:
    """A cumulative DVH: ``volume_fraction[i]`` of the structure receives at least ``dose_gy[i]``."""

    dose_gy: np.ndarray
    volume_fraction: np.ndarray


def dvh_curve(dose_gy: np.ndarray, mask: np.ndarray, bins: int | Sequence[float] = 100) -> DVHCurve:
    """Cumulative DVH of a structure at ``bins`` doses from 0 to its maximum, or at the given doses in Gy."""
    values = np.sort(structure_dose(dose_gy, mask))
    if isinstance(bins, int | np.integer):
        levels = np.linspace(0.0, values[-1], int(bins))
    else:
        levels = np.asarray(bins, dtype=np.float64)
    below = np.searchsorted(values, levels, side="left")
    return DVHCurve(dose_gy=levels, volume_fraction=1.0 - below / values.size)


@dataclass(frozen=True)
class DVHMetricError:
    """One OpenKBP DVH metric of one structure, on the reference and the predicted dose."""

    structure: str
    metric: str
    reference_gy: float
    predicted_gy: float

    @property
    def abs_error_gy(self) -> float:
        return abs(self.reference_gy - self.predicted_gy)


def openkbp_metric_names(structure: str, protocol: Protocol) -> tuple[str, ...]:
    """Name the OpenKBP DVH metrics of a structure: D0.1cc and Dmean for OARs, D99, D95, D1 for targets."""
    return OPENKBP_TARGET_METRICS if protocol.structure(structure).is_target else OPENKBP_OAR_METRICS


def openkbp_dvh_errors(
    reference_dose_gy: np.ndarray,
    predicted_dose_gy: np.ndarray,
    structures: Mapping[str, np.ndarray],
    voxel_volume_mm3: float,
    protocol: Protocol,
) -> list[DVHMetricError]:
    """Every OpenKBP DVH metric of each protocol structure with voxels, on both doses (empty ones skipped)."""
    errors = []
    for name in protocol.structure_names:
        mask = structures.get(name)
        if mask is None or not mask.any():
            continue
        reference = structure_dose(reference_dose_gy, mask)
        predicted = structure_dose(predicted_dose_gy, mask)
        errors += [DVHMetricError(name, metric, _metric_from_values(reference, metric, voxel_volume_mm3),
                                  _metric_from_values(predicted, metric, voxel_volume_mm3))
                   for metric in openkbp_metric_names(name, protocol)]
    return errors


def openkbp_dose_error(
    reference_dose_gy: np.ndarray, predicted_dose_gy: np.ndarray, possible_dose_mask: np.ndarray
) -> float:
    """OpenKBP's per-patient dose error: sum of |R - P| over ALL voxels / number of possible-dose voxels."""
    if reference_dose_gy.shape != predicted_dose_gy.shape:
        raise ValueError(f"predicted dose shape {predicted_dose_gy.shape} does not match the reference "
                         f"{reference_dose_gy.shape}")
    voxels = int(np.count_nonzero(possible_dose_mask))
    if voxels == 0:
        raise DataError("the possible-dose mask is empty: the dose error is undefined; re-export the patient's "
                        "possible_dose_mask")
    difference = np.asarray(reference_dose_gy, np.float64) - np.asarray(predicted_dose_gy, np.float64)
    return float(np.abs(difference).sum() / voxels)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2|A and B| / (|A| + |B|); NaN when both masks are empty (nothing to compare: skip it)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a face-neighbour outside it (the grid border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask)


def _surface_distances_mm(from_surface: np.ndarray, to_surface: np.ndarray, spacing_mm) -> np.ndarray:
    return ndimage.distance_transform_edt(~to_surface, sampling=spacing_mm)[from_surface]


def hausdorff95_mm(a: np.ndarray, b: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm, as MONAI's ``compute_hausdorff_distance``.

    Surfaces are the voxels of each mask with a face-neighbour outside it; for each surface voxel of one mask
    the Euclidean distance (anisotropic ``spacing_mm``) to the nearest surface voxel of the other; the result
    is the larger of the two directed 95th percentiles (linear), as with ``percentile=95`` in MONAI. NaN when
    both masks are empty, inf when exactly one is.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} and {b.shape}")
    if not a.any() and not b.any():
        return float("nan")
    if not a.any() or not b.any():
        return float("inf")
    union = np.argwhere(a | b)
    box = tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(union.min(0), union.max(0), strict=True))
    surface_a, surface_b = _surface(a[box]), _surface(b[box])
    spacing = tuple(float(s) for s in spacing_mm)
    return float(max(np.percentile(_surface_distances_mm(surface_a, surface_b, spacing), 95),
                     np.percentile(_surface_distances_mm(surface_b, surface_a, spacing), 95)))


# Synthetic CT, as SynthRAD scores it: both images clipped to this HU range, whose width is PSNR's and SSIM's data
# range; SSIM with scikit-image's defaults (7-voxel uniform window, K1 0.01, K2 0.03, sample covariance).
SCT_HU_RANGE = (-1024.0, 3000.0)
_SSIM_WINDOW, _SSIM_K1, _SSIM_K2 = 7, 0.01, 0.03


def _clipped_hu(image: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(image, np.float64), *SCT_HU_RANGE)


def sct_mae_hu(reference_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error in HU inside ``mask`` (the body), both images clipped to ``SCT_HU_RANGE``."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise DataError("the body mask is empty: synthetic CT metrics are undefined")
    return float(np.abs(_clipped_hu(reference_hu)[mask] - _clipped_hu(sct_hu)[mask]).mean())


def sct_psnr_db(reference_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB inside ``mask``, the peak being the width of ``SCT_HU_RANGE``."""
    mask = np.asarray(mask, bool)
    mse = float(((_clipped_hu(reference_hu)[mask] - _clipped_hu(sct_hu)[mask]) ** 2).mean())
    peak = SCT_HU_RANGE[1] - SCT_HU_RANGE[0]
    return float("inf") if mse == 0 else 10.0 * float(np.log10(peak ** 2 / mse))


def sct_ssim(reference_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> float:
    """Structural similarity averaged inside ``mask``: both images clipped, shifted to start at 0 and set to 0
    outside the mask, then the local SSIM map (SynthRAD's recipe with scikit-image's defaults) meaned over the mask.
    """
    mask = np.asarray(mask, bool)
    x = np.where(mask, _clipped_hu(reference_hu) - SCT_HU_RANGE[0], 0.0)
    y = np.where(mask, _clipped_hu(sct_hu) - SCT_HU_RANGE[0], 0.0)
    window = _SSIM_WINDOW
    covariance = window ** x.ndim / (window ** x.ndim - 1.0)  # unbiased, as scikit-image

    def mean(image: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(image, size=window, mode="reflect")

    ux, uy = mean(x), mean(y)
    vx, vy = covariance * (mean(x * x) - ux * ux), covariance * (mean(y * y) - uy * uy)
    vxy = covariance * (mean(x * y) - ux * uy)
    peak = SCT_HU_RANGE[1] - SCT_HU_RANGE[0]
    c1, c2 = (_SSIM_K1 * peak) ** 2, (_SSIM_K2 * peak) ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(ssim_map[mask].mean())


def gamma_pass_rate(reference_gy: np.ndarray, evaluated_gy: np.ndarray, spacing_mm: Sequence[float],
                    dose_percent: float = 2.0, distance_mm: float = 2.0, cutoff_percent: float = 10.0,
                    max_points: int | None = None, seed: int = 0) -> float:
    """Share (0..1) of the reference's voxels above ``cutoff_percent`` of its maximum whose gamma index is <= 1, with
    a global dose criterion (``dose_percent`` of the reference maximum) and ``distance_mm``: PyMedPhys's gamma
    (Low et al. 1998, with interpolation of the evaluated dose); ``max_points`` scores a random subset of them.
    """
    try:
        import pymedphys
    except ImportError as exc:
        raise ConfigError("the gamma index needs PyMedPhys and numba: pip install pymedphys numba") from exc
    reference, evaluated = np.asarray(reference_gy, np.float64), np.asarray(evaluated_gy, np.float64)
    if reference.shape != evaluated.shape:
        raise ValueError(f"dose shapes differ: {reference.shape} and {evaluated.shape}")
    axes = tuple(np.arange(n) * float(s) for n, s in zip(reference.shape, spacing_mm, strict=True))
    np.random.seed(seed)  # PyMedPhys draws its random subset from NumPy's global generator
    gamma = pymedphys.gamma(axes, reference, axes, evaluated, dose_percent_threshold=dose_percent,
                            distance_mm_threshold=distance_mm, lower_percent_dose_cutoff=cutoff_percent,
                            random_subset=max_points, max_gamma=2.0)
    scored = gamma[np.isfinite(gamma)]
    return float((scored <= 1.0).mean()) if scored.size else float("nan")


@dataclass(frozen=True)
class GoalResult:
    """A clinical goal evaluated on one dose; ``value_gy`` and ``passed`` are None for an absent structure."""

    goal: ClinicalGoal
    value_gy: float | None
    limit_gy: float
    passed: bool | None


def goal_limit_gy(goal: ClinicalGoal, protocol: Protocol) -> float:
    """Return the goal's limit in Gy: ``limit_gy``, or ``limit_rx`` times the structure's prescription."""
    if goal.limit_gy is not None:
        return float(goal.limit_gy)
    return float(goal.limit_rx) * float(protocol.structure(goal.structure).prescription_gy)


def evaluate_goals(
    dose_gy: np.ndarray, structures: Mapping[str, np.ndarray], voxel_volume_mm3: float, protocol: Protocol
) -> list[GoalResult]:
    """Evaluate every clinical goal of the protocol on a dose; goals of absent structures pass None."""
    results = []
    for goal in protocol.goals:
        limit = goal_limit_gy(goal, protocol)
        mask = structures.get(goal.structure)
        if mask is None or not mask.any():
            results.append(GoalResult(goal, None, limit, None))
            continue
        value = dvh_metric(dose_gy, mask, goal.metric, voxel_volume_mm3)
        passed = value <= limit if goal.op == "<=" else value >= limit
        results.append(GoalResult(goal, value, limit, bool(passed)))
    return results
