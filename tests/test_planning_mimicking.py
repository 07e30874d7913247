"""Dose mimicking: analytic gradient, a synthetic problem with a known optimum, per-structure normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import sparse

from protocols.protocol import protocol_from_dict
from runtime.planning.geometry import BeamletGrid
from runtime.planning.mimicking import (
    MimickingObjective,
    Term,
    build_objective,
    mimic,
    smoothness_matrix,
)
from runtime.planning.sampling import VoxelSample


@dataclass
class MatrixInfluence:
    """An explicit voxels x beamlets matrix as an :class:`~runtime.planning.mimicking.Influence`: a problem
    whose exact solution the test knows.
    """

    matrix: sparse.csr_matrix

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def dose(self, weights: np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix @ weights, dtype=np.float64)

    def adjoint(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix.T @ values, dtype=np.float64)


def small_protocol(rx: float, goals=()):
    return protocol_from_dict({
        "name": "synthetic", "fractions": 30, "grid": {"shape": [10, 10, 10], "spacing_mm": [1, 1, 1]},
        "structures": [{"name": "OAR", "kind": "oar"}, {"name": "PTV", "kind": "target", "prescription_gy": rx}],
        "goals": list(goals),
    })


def synthetic_problem(seed: int = 0):
    """200 voxels (120 target, 80 OAR) x 30 beamlets, and a target dose that some weights deliver exactly."""
    rng = np.random.default_rng(seed)
    matrix = sparse.random(200, 30, density=0.3, random_state=seed, format="csr") + sparse.eye(200, 30) * 0.5
    x_true = rng.uniform(0.5, 2.0, 30)
    target = matrix @ x_true
    rx = float(target[:120].min())  # the prescription every target voxel already reaches
    sample = VoxelSample(np.arange(200), {"PTV": np.arange(120), "OAR": np.arange(120, 200)},
                         {"PTV": "target", "OAR": "oar"}, {"PTV": 120, "OAR": 80},
                         np.where(np.arange(200) < 120, rx, 0.0))
    return MatrixInfluence(matrix.tocsr()), target, x_true, sample


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    sample = VoxelSample(np.arange(50), {"PTV": np.arange(30), "OAR": np.arange(30, 50)},
                         {"PTV": "target", "OAR": "oar"}, {"PTV": 30, "OAR": 20},
                         np.where(np.arange(50) < 30, 50.0, 0.0))
    goals = [{"structure": "OAR", "metric": "Dmean", "op": "<=", "limit_gy": 20.0},
             {"structure": "OAR", "metric": "D10", "op": "<=", "limit_gy": 30.0},
             {"structure": "PTV", "metric": "D95", "op": ">=", "limit_rx": 1.0}]
    objective = build_objective(sample, rng.uniform(10, 60, 50), small_protocol(50.0, goals), 1.0)
    dose = rng.uniform(0, 70, 50)
    value, grad = objective(dose)
    eps = 1e-5
    numeric = np.array([(objective(dose + eps * e)[0] - objective(dose - eps * e)[0]) / (2 * eps)
                        for e in np.eye(50)])
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-9)
    assert value > 0


def test_optimiser_finds_the_known_optimum():
    influence, target, _, sample = synthetic_problem()
    objective = build_objective(sample, target, small_protocol(float(sample.rx_gy.max())), 1.0)
    assert objective(target)[0] == pytest.approx(0.0, abs=1e-12)  # the target dose itself is optimal
    result = mimic(influence, objective, np.ones(30), max_iterations=500)
    assert result.objective < 1e-8
    np.testing.assert_allclose(influence.dose(result.weights), target, rtol=1e-2)
    assert result.history[-1] < result.history[0]


def test_weights_stay_non_negative_when_the_target_is_unreachable():
    influence, _, _, sample = synthetic_problem(2)
    objective = build_objective(sample, np.where(np.arange(200) < 120, 60.0, 0.0), small_protocol(60.0), 1.0)
    result = mimic(influence, objective, np.ones(30), max_iterations=200)
    assert np.all(result.weights >= 0)
    assert result.objective < objective(influence.dose(np.ones(30)))[0]


def test_terms_are_normalised_per_structure():
    """Doubling a structure's sample (same doses) leaves its terms unchanged: no per-voxel weighting."""
    small = MimickingObjective([Term("a", "over", np.arange(10), 1.0, 1.0)], 10.0)
    large = MimickingObjective([Term("a", "over", np.arange(20), 1.0, 1.0)], 10.0)
    dose = np.full(20, 3.0)
    assert small(dose[:10])[0] == pytest.approx(large(dose)[0])


def test_smoothness_pairs_neighbours_within_each_beam():
    active = np.array([[True, True, False], [True, True, True]])
    grid = BeamletGrid(np.arange(4.0) * 5, np.arange(3.0) * 5, active)
    pairs = smoothness_matrix([grid, grid])
    # per beam: 1 + 2 horizontal pairs, 2 vertical pairs
    assert pairs.shape == (10, 10)
    assert np.all(np.asarray(pairs.sum(axis=1)).ravel() == 0)
    assert pairs[:, :5].nnz == 10 and pairs[:, 5:].nnz == 10
