"""Dose mimicking: beamlet weights whose dose is closest to a target dose, OpenKBP-Opt style.

Each structure contributes terms normalised by its own sample count (so large regions do not drown small ones, the
known failure of per-voxel weighting): targets a lower tail at the prescription, an upper tail above the target dose
and a two-sided match; OARs an upper voxel term, their mean and their maximum relative to the target dose; rings and
the body an upper term. One-sided penalties push each protocol clinical goal inside its limit
(upper D<x> limits as max-DVH terms that exempt the allowed hottest share). Minimised with
L-BFGS-B (weights >= 0) on sampled voxels with the analytic gradient ``D.T @ dF/dd``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

import numpy as np
from scipy import optimize, sparse

from protocols.metrics import goal_limit_gy
from protocols.protocol import METRIC_PATTERN, Protocol
from runtime.planning.geometry import BeamletGrid
from runtime.planning.sampling import VoxelSample

GOAL_MARGIN = 0.08  # aim this fraction inside each clinical-goal limit (quadratic penalties stop short)
TARGET_HOT_FACTOR = 1.05  # targets may exceed the target dose up to this multiple of their prescription
TARGET_AIM = 1.02  # inside an OAR with a higher limit, target voxels aim this far above their prescription


class Influence(TypingProtocol):
    """Anything that maps beamlet weights to dose at the sampled voxels, with its adjoint."""

    shape: tuple[int, int]

    def dose(self, weights: np.ndarray) -> np.ndarray: ...

    def adjoint(self, values: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class MimickingWeights:
    """Relative importance of each kind of term (each already normalised per structure)."""

    target_under: float = 50.0
    target_over: float = 5.0
    target_match: float = 1.0
    oar_over: float = 1.0
    oar_mean: float = 2.0
    oar_max: float = 0.5
    ring_over: float = 0.5
    body_over: float = 0.5
    goal: float = 50.0  # target goals and maximum-dose goals
    goal_mean: float = 5.0  # mean-dose goals of parallel organs yield to target coverage
    smoothness: float = 0.05


@dataclass
class Term:
    """One objective term on the sampled dose: its kind, region positions and the reference it uses."""

    name: str
    kind: str  # under, over, match, mean_over, dvh_over
    index: np.ndarray
    reference: np.ndarray | float
    weight: float
    hot_fraction: float = 0.0  # dvh_over: share of the region allowed above the reference


@dataclass
class MimickingObjective:
    """Sum of weighted, per-structure normalised terms; value and gradient with respect to the sampled dose."""

    terms: list[Term]
    dose_scale_gy: float

    def __call__(self, dose: np.ndarray) -> tuple[float, np.ndarray]:
        """Objective value and its gradient with respect to the sampled dose (region indices are unique)."""
        value, grad = 0.0, np.zeros_like(dose)
        norm = 1.0 / self.dose_scale_gy**2
        for term in self.terms:
            d = dose[term.index]
            n = d.size
            if term.kind == "under":
                r = np.maximum(term.reference - d, 0.0)
                value += term.weight * norm * np.sum(r**2) / n
                grad[term.index] += -2.0 * term.weight * norm * r / n
            elif term.kind == "over":
                r = np.maximum(d - term.reference, 0.0)
                value += term.weight * norm * np.sum(r**2) / n
                grad[term.index] += 2.0 * term.weight * norm * r / n
            elif term.kind == "match":
                r = d - term.reference
                value += term.weight * norm * np.sum(r**2) / n
                grad[term.index] += 2.0 * term.weight * norm * r / n
            elif term.kind == "dvh_over":  # the hottest allowed share is exempt (a max-DVH objective)
                r = np.maximum(d - term.reference, 0.0)
                exempt = int(np.floor(term.hot_fraction * n))
                if exempt:
                    r[np.argpartition(d, n - exempt)[n - exempt:]] = 0.0
                value += term.weight * norm * np.sum(r**2) / n
                grad[term.index] += 2.0 * term.weight * norm * r / n
            elif term.kind == "mean_over":
                r = max(float(d.mean()) - float(term.reference), 0.0)
                value += term.weight * norm * r**2
                grad[term.index] += 2.0 * term.weight * norm * r / n
            else:
                raise ValueError(f"unknown term kind {term.kind!r}")
        return value, grad


def build_objective(sample: VoxelSample, target_dose_gy: np.ndarray, protocol: Protocol,
                    voxel_volume_mm3: float, weights: MimickingWeights = MimickingWeights()) -> MimickingObjective:
    """Terms for the sampled voxels; ``target_dose_gy`` is the dose to mimic at the sampled voxels."""
    t = np.asarray(target_dose_gy, dtype=np.float64)
    rx = sample.rx_gy
    terms: list[Term] = []
    for name, kind in sample.kinds.items():
        idx = sample.regions[name]
        if kind == "target":
            p = protocol.structure(name).prescription_gy
            terms += [Term(f"{name} under Rx", "under", idx, p, weights.target_under),
                      Term(f"{name} over", "over", idx, np.maximum(t[idx], TARGET_HOT_FACTOR * rx[idx]),
                           weights.target_over),
                      Term(f"{name} match", "match", idx, t[idx], weights.target_match)]
        elif kind == "oar":  # mimicked outside the targets: overlaps belong to the target, as planners optimise
            idx = idx[rx[idx] == 0] if np.any(rx[idx] == 0) else idx
            terms += [Term(f"{name} over", "over", idx, t[idx], weights.oar_over),
                      Term(f"{name} mean", "mean_over", idx, float(t[idx].mean()), weights.oar_mean),
                      Term(f"{name} max", "over", idx, float(t[idx].max()), weights.oar_max)]
        else:
            w = weights.ring_over if kind == "ring" else weights.body_over
            terms.append(Term(f"{name} over", "over", idx, t[idx], w))
    for goal in protocol.goals:
        if goal.structure not in sample.regions:
            continue
        idx = sample.regions[goal.structure]
        limit = goal_limit_gy(goal, protocol)
        if goal.op == "<=":  # an OAR limit never pulls target voxels below their prescription
            idx = idx[rx[idx] < limit]
            if idx.size == 0:
                continue
        if goal.op == ">=":
            terms.append(Term(f"goal {goal.label}", "under", idx, limit * (1 + GOAL_MARGIN), weights.goal))
        elif goal.metric == "Dmean":
            terms.append(Term(f"goal {goal.label}", "mean_over", idx, limit * (1 - GOAL_MARGIN), weights.goal_mean))
        else:  # D<x>cc and D<p> upper limits: all but the allowed hottest share under the limit
            match = METRIC_PATTERN.match(goal.metric)
            if match["cc"] is not None:
                share = float(match["cc"]) * 1000.0 / (voxel_volume_mm3 * sample.sizes[goal.structure])
            else:
                share = float(match["pct"]) / 100.0
            aim = np.maximum(limit * (1 - GOAL_MARGIN), np.minimum(limit, TARGET_AIM * rx[idx]))
            terms.append(Term(f"goal {goal.label}", "dvh_over", idx, aim, weights.goal, min(share, 1.0)))
    return MimickingObjective(terms, protocol.max_prescription_gy)


def smoothness_matrix(grids: list[BeamletGrid]) -> sparse.csr_matrix:
    """Differences of neighbouring active beamlets (along and across leaves), over all beams' stacked weights."""
    rows, cols, vals = [], [], []
    offset, pair = 0, 0
    for grid in grids:
        index = np.full(grid.shape, -1)
        index[grid.active] = offset + np.arange(grid.n_beamlets)
        for a, b in ((index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :])):
            both = (a >= 0) & (b >= 0)
            n = int(both.sum())
            rows += [np.arange(pair, pair + n)] * 2
            cols += [a[both], b[both]]
            vals += [np.ones(n), -np.ones(n)]
            pair += n
        offset += grid.n_beamlets
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(pair, offset))


@dataclass
class MimickingResult:
    """Optimised weights (MU), the objective's history and what the solver said."""

    weights: np.ndarray
    objective: float
    iterations: int
    evaluations: int
    message: str
    seconds: float
    history: list[float] = field(default_factory=list)


def mimic(influence: Influence, objective: MimickingObjective, x0: np.ndarray,
          smoothness: sparse.csr_matrix | None = None, smoothness_weight: float = 0.0,
          max_iterations: int = 200, progress=None) -> MimickingResult:
    """Minimise the objective over weights >= 0 with L-BFGS-B and the analytic gradient."""
    start = time.perf_counter()
    history: list[float] = []
    x_scale = max(float(np.mean(x0)), 1e-12)
    pairs = smoothness.shape[0] if smoothness is not None else 0
    smooth_norm = smoothness_weight / (max(pairs, 1) * x_scale**2)

    def fun(y: np.ndarray) -> tuple[float, np.ndarray]:
        x = y * x_scale  # the solver works on weights of order 1
        dose = influence.dose(x)
        value, grad_dose = objective(dose)
        grad = influence.adjoint(grad_dose)
        if pairs:
            diff = smoothness @ x
            value += smooth_norm * float(diff @ diff)
            grad = grad + 2.0 * smooth_norm * (smoothness.T @ diff)
        history.append(value)
        return value, grad * x_scale

    def callback(_x) -> None:
        if progress is not None:
            progress(len(history), history[-1])

    res = optimize.minimize(fun, x0 / x_scale, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * len(x0),
                            callback=callback, options={"maxiter": max_iterations, "maxcor": 20, "ftol": 1e-12,
                                                        "gtol": 1e-10})
    return MimickingResult(res.x * x_scale, float(res.fun), int(res.nit), int(res.nfev), str(res.message),
                           time.perf_counter() - start, history)


def initial_weights(influence: Influence, objective_rx_gy: np.ndarray, target_index: np.ndarray) -> np.ndarray:
    """Uniform weights scaled so that the median target sample receives its prescription."""
    ones = np.ones(influence.shape[1])
    dose = influence.dose(ones)[target_index]
    ratio = np.median(objective_rx_gy / np.maximum(dose, 1e-9))
    return ones * float(ratio)
