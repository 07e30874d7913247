"""Score dose predictions against the reference plans with the OpenKBP dose and DVH scores (both in Gy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocols.case import Case
from protocols.dataset import ProtocolDataset
from protocols.errors import DataError, DataNotFoundError
from protocols.metrics import DVHMetricError, openkbp_dose_error, openkbp_dvh_errors
from protocols.openkbp import read_prediction, source_file
from protocols.protocol import Protocol
from protocols.validation import DataValidationError, Policy


@dataclass
class PatientScore:
    """One patient's OpenKBP errors: the dose error and each DVH metric on reference and prediction."""

    patient: str
    dose_error: float
    dvh_errors: list[DVHMetricError]

    @property
    def n_metrics(self) -> int:
        return len(self.dvh_errors)

    @property
    def dvh_error(self) -> float:
        """Mean |reference - predicted| over this patient's DVH metrics."""
        return float(np.mean([e.abs_error_gy for e in self.dvh_errors])) if self.dvh_errors else float("nan")

    def to_dict(self) -> dict:
        return {"patient": self.patient, "dose_error": self.dose_error, "dvh_error": self.dvh_error,
                "n_metrics": self.n_metrics,
                "metrics": [{"structure": e.structure, "metric": e.metric, "reference_gy": e.reference_gy,
                             "predicted_gy": e.predicted_gy, "abs_error_gy": e.abs_error_gy}
                            for e in self.dvh_errors]}


@dataclass
class EvaluationResult:
    """Scores of a set of predictions; ``skipped`` lists reference patients that had no prediction."""

    patients: list[PatientScore]
    skipped: list[str] = field(default_factory=list)

    @property
    def dose_score(self) -> float:
        """OpenKBP dose score: the mean over patients of the per-patient dose errors."""
        return float(np.mean([p.dose_error for p in self.patients]))

    @property
    def dvh_score(self) -> float:
        """OpenKBP DVH score: mean |error| over the metrics of all patients pooled (not a mean of means)."""
        return float(np.mean([e.abs_error_gy for p in self.patients for e in p.dvh_errors]))

    def to_dict(self) -> dict:
        return {"dose_score": self.dose_score, "dvh_score": self.dvh_score,
                "n_patients": len(self.patients), "skipped": self.skipped,
                "patients": [p.to_dict() for p in self.patients]}


def evaluate_dose(case: Case, predicted_dose_gy: np.ndarray, protocol: Protocol) -> PatientScore:
    """Score one in-memory prediction against the case's reference dose (as if written and read back)."""
    if case.dose_gy is None or case.possible_dose_mask is None:
        raise DataError(f"patient {case.patient_id} ({case.source}): scoring needs the reference dose and "
                         "the possible-dose mask; load the case with require_dose=True")
    if predicted_dose_gy.shape != case.shape:
        raise DataError(f"patient {case.patient_id}: predicted dose shape {predicted_dose_gy.shape} differs "
                        f"from the case grid {case.shape}; predict on the reference patient's grid")
    if not np.all(np.isfinite(predicted_dose_gy)):
        raise DataError(f"patient {case.patient_id}: the predicted dose holds non-finite values; predict again, "
                        "or replace NaN and infinite values")
    return PatientScore(
        patient=case.patient_id,
        dose_error=openkbp_dose_error(case.dose_gy, predicted_dose_gy, case.possible_dose_mask),
        dvh_errors=openkbp_dvh_errors(case.dose_gy, predicted_dose_gy, case.structures, case.voxel_volume_mm3,
                                      protocol),
    )


def evaluate_predictions(
    reference_root: Path | str,
    predictions_dir: Path | str,
    protocol: Protocol,
    skip_missing: bool = False,
    cache_dir: Path | None = None,
) -> EvaluationResult:
    """Score ``pt_N.csv`` predictions against every reference patient under ``reference_root``.

    A reference patient without a prediction is an error naming the file, or, with ``skip_missing``, left
    out and listed in ``skipped``. An unusable reference patient is an error (see ``fedrt data check``).
    """
    predictions_dir = Path(predictions_dir)
    if not predictions_dir.is_dir():
        raise DataNotFoundError(f"predictions folder {predictions_dir} does not exist; write it with `fedrt predict`")
    dataset = ProtocolDataset(reference_root, protocol, Policy.WARN, require_dose=True, cache_dir=cache_dir)
    scores, skipped = [], []
    for patient_dir in dataset.patient_dirs:
        path = source_file(predictions_dir, patient_dir.name)
        if path is None:
            if not skip_missing:
                raise DataNotFoundError(
                    f"no prediction for reference patient {patient_dir.name}: "
                    f"{predictions_dir / (patient_dir.name + '.csv')} does not exist; write it, or pass "
                    "--skip-missing (skip_missing=True) to score only the patients that have a prediction")
            skipped.append(patient_dir.name)
            continue
        case, report = dataset.load(patient_dir)
        if case is None:
            raise DataValidationError(report)
        scores.append(evaluate_dose(case, read_prediction(path, case.shape), protocol))
    if not scores:
        raise DataNotFoundError(f"none of the {len(dataset)} reference patients under {reference_root} has a "
                                f"prediction (pt_N.csv) in {predictions_dir}; check the two folders belong together")
    return EvaluationResult(scores, skipped)
