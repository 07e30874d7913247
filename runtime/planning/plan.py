"""The planning pipeline: geometry -> dose-influence -> dose mimicking -> leaf sequencing -> final dose.

``make_plan`` takes the dose to mimic as an array on the case grid (a model's prediction, or a given dose), so the
prediction stage plugs in ahead of it. Each stage reports progress and its wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from protocols.case import Case
from protocols.errors import DataError
from protocols.protocol import Protocol
from runtime.planning.density import DensityTable
from runtime.planning.engine import DoseEngine
from runtime.planning.geometry import (
    BEAMLET_WIDTH_MM,
    Beam,
    BeamletGrid,
    PatientFrame,
    beamlet_grid,
    coplanar_beams,
    isocenter_of,
)
from runtime.planning.mimicking import (
    MimickingResult,
    MimickingWeights,
    build_objective,
    initial_weights,
    mimic,
    smoothness_matrix,
)
from runtime.planning.sampling import SampleBudget, sample_voxels, target_union
from runtime.planning.sequencing import DEFAULT_LEVELS, BeamSequence, sequence_beam
from runtime.stages import Progress, StageClock


@dataclass(frozen=True)
class PlanConfig:
    """Planning choices: beams, beamlet margin, optimisation effort, intensity levels, density table."""

    n_beams: int = 9
    start_gantry_deg: float = 0.0
    margin_mm: float = BEAMLET_WIDTH_MM
    max_iterations: int = 150
    levels: int = DEFAULT_LEVELS
    budget: SampleBudget = field(default_factory=SampleBudget)
    weights: MimickingWeights = field(default_factory=MimickingWeights)
    density: DensityTable = field(default_factory=DensityTable)
    seed: int = 0


@dataclass
class PlanResult:
    """A deliverable plan and its dose: beams, their segments and MU, and the dose recomputed from the segments."""

    patient_id: str
    frame: PatientFrame
    isocenter_lps: tuple[float, float, float]
    beams: list[Beam]
    grids: list[BeamletGrid]
    sequences: list[BeamSequence]
    optimisation: MimickingResult
    dose_gy: np.ndarray
    fluence_dose_gy: np.ndarray  # optimiser's (unsequenced) fluence, at the sampled voxels
    sampled_flat_index: np.ndarray
    timings_s: dict[str, float]
    fractions: int

    @property
    def total_mu(self) -> float:
        return float(sum(s.mu for s in self.sequences))

    @property
    def n_segments(self) -> int:
        return sum(len(s.segments) for s in self.sequences)


def make_plan(case: Case, protocol: Protocol, target_dose_gy: np.ndarray, config: PlanConfig = PlanConfig(),
              progress: Progress | None = None, clock: StageClock | None = None,
              origin_lps: tuple[float, float, float] | None = None) -> PlanResult:
    """Plan a case to mimic ``target_dose_gy`` (Gy on the case grid, the whole course).

    ``origin_lps`` places voxel [0, 0, 0] in the patient's coordinates (default: the grid centred on the origin).
    """
    if target_dose_gy.shape != case.shape:
        raise ValueError(f"target dose shape {target_dose_gy.shape} does not match the case grid {case.shape}")
    clock = clock or StageClock(progress)
    with clock.stage("geometry"):
        frame = PatientFrame.for_case(case, origin_lps)
        targets = target_union(case, protocol)
        if not targets.any():
            raise DataError(f"{case.patient_id}: no target contoured ({', '.join(protocol.targets)}); contour a "
                            "target before planning")
        _, target_points = frame.mask_points(targets)
        iso = isocenter_of(target_points)
        beams = coplanar_beams(config.n_beams, iso, config.start_gantry_deg)
        grids = [beamlet_grid(b, target_points, config.margin_mm) for b in beams]
        engine = DoseEngine.build(config.density(case.ct_hu), frame, beams, grids, case.dose_region())
    with clock.stage("matrix"):
        sample = sample_voxels(case, protocol, config.budget, config.seed)
        points = frame.to_lps(np.stack(np.unravel_index(sample.flat_index, case.shape), axis=1))
        influence = engine.influence(points)
        if progress:
            progress("matrix", f"{influence.shape[0]} voxels x {influence.shape[1]} beamlets ({len(beams)} beams)")
    with clock.stage("optimisation"):
        target_at_samples = np.asarray(target_dose_gy, dtype=np.float64).ravel()[sample.flat_index]
        objective = build_objective(sample, target_at_samples, protocol, case.voxel_volume_mm3, config.weights)
        target_idx = np.concatenate([sample.regions[n] for n, k in sample.kinds.items() if k == "target"])
        rx = np.concatenate([np.full(len(sample.regions[n]), protocol.structure(n).prescription_gy)
                             for n, k in sample.kinds.items() if k == "target"])
        x0 = initial_weights(influence, rx, target_idx)

        def report(iteration: int, value: float) -> None:
            if progress and iteration % 25 == 0:
                progress("optimisation", f"iteration {iteration}: objective {value:.4g}")

        result = mimic(influence, objective, x0, smoothness_matrix(grids), config.weights.smoothness,
                       config.max_iterations, report)
        fluence_dose = influence.dose(result.weights)
        if progress:
            progress("optimisation", f"{result.iterations} iterations, objective {result.objective:.4g}")
    with clock.stage("sequencing"):
        off = engine.beamlet_offsets
        sequences = [sequence_beam(g.to_map(result.weights[off[i]: off[i + 1]]), g, config.levels)
                     for i, g in enumerate(grids)]
        if progress:
            progress("sequencing", f"{sum(len(s.segments) for s in sequences)} segments, "
                                   f"{sum(s.mu for s in sequences) / protocol.fractions:.0f} MU per fraction")
    with clock.stage("final dose"):
        dose = final_dose(engine, sequences, case, case.dose_region())
    return PlanResult(case.patient_id, frame, iso, beams, grids, sequences, result, dose, fluence_dose,
                      sample.flat_index, clock.timings, protocol.fractions)


def segment_images(engine: DoseEngine, sequences: list[BeamSequence]) -> list[np.ndarray]:
    """Each beam's fluence image rasterised from its segments' leaf and jaw positions."""
    images = []
    for kernel, seq in zip(engine.kernels, sequences, strict=True):
        if not seq.segments:
            images.append(np.zeros(kernel.shape, dtype=np.float32))
            continue
        left = np.stack([s.left_mm for s in seq.segments])
        right = np.stack([s.right_mm for s in seq.segments])
        weights = np.array([s.weight_mu for s in seq.segments])
        images.append(kernel.aperture_image(seq.grid.row_edges_mm, left, right, weights, seq.jaws_mm()))
    return images


def final_dose(engine: DoseEngine, sequences: list[BeamSequence], case: Case, mask: np.ndarray) -> np.ndarray:
    """The plan's dose (Gy) on the case grid, recomputed from the MLC segments, inside ``mask``."""
    flat, points = engine.frame.mask_points(mask)
    dose = np.zeros(int(np.prod(case.shape)), dtype=np.float32)
    dose[flat] = engine.dose_from_images(segment_images(engine, sequences), points)
    return dose.reshape(case.shape)


def recompute_dose(plan: PlanResult, case: Case, ct_hu: np.ndarray, config: PlanConfig = PlanConfig()) -> np.ndarray:
    """The plan's dose (Gy) with the same beams, segments and MU on another CT of the same patient (e.g. a
    synthetic CT, or a bulk-density one): what the plan delivers if those are the patient's densities.
    """
    if ct_hu.shape != case.shape:
        raise ValueError(f"CT shape {ct_hu.shape} does not match the case grid {case.shape}")
    engine = DoseEngine.build(config.density(ct_hu), plan.frame, plan.beams, plan.grids, case.dose_region())
    return final_dose(engine, plan.sequences, case, case.dose_region())
